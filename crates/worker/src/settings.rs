//! The worker's configuration: defaults, then `--config FILE`, then environment variables
//! `WORKER_SECTION__KEY` (e.g. `WORKER_ENGINES__WAREHOUSE__URL`).

use crate::engines::ResultLimits;
use serde::{Deserialize, Serialize};
use service_kit::Secret;
use service_kit::settings::{Layered, Validate};
use service_kit::telemetry::LogSettings;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub admin: AdminSettings,
    pub log: LogSettings,
    pub pubsub: PubsubSettings,
    pub runner: RunnerSettings,
    pub ledger: LedgerSettings,
    /// The keys job messages must be signed with (none: messages are not verified).
    pub signing: service_kit::settings::KeyRingSettings,
    /// Engines by the name queries use in their `engine` field (none by default: each is
    /// configured, e.g. `[engines.warehouse]` or `WORKER_ENGINES__WAREHOUSE__URL`).
    pub engines: BTreeMap<String, EngineSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub listen: SocketAddr,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings { listen: SocketAddr::from(([127, 0, 0, 1], 9091)) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubsubSettings {
    /// Google Cloud project. `PUBSUB_EMULATOR_HOST` selects the emulator.
    pub project: String,
    pub jobs_topic: String,
    pub jobs_subscription: String,
    pub results_topic: String,
    pub dead_letter_topic: String,
    /// Create the topics and the subscription at start-up if missing (emulator and
    /// development; production provisions them with the infrastructure).
    pub create_resources: bool,
    /// Bound on the client's own publish retries (results and dead letters).
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Redelivery backoff of the subscription this worker creates.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Pub/Sub's own dead-letter bound (5..=100), a backstop behind each job's `max_attempts`.
    pub max_delivery_attempts: i32,
    /// Ack deadline of the subscription this worker creates (10 s to 600 s): how soon a
    /// message held by a worker that died is delivered again. The client extends it while a
    /// run goes on (up to `runner.max_lease`).
    #[serde(with = "humantime_serde")]
    pub ack_deadline: Duration,
}

impl Default for PubsubSettings {
    fn default() -> Self {
        PubsubSettings {
            project: "local-project".into(),
            jobs_topic: "jobs".into(),
            jobs_subscription: "jobs-workers".into(),
            results_topic: "job-results".into(),
            dead_letter_topic: "jobs-dead-letter".into(),
            create_resources: false,
            publish_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
            max_delivery_attempts: 20,
            ack_deadline: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerSettings {
    /// Jobs run at once by this worker (the client does not enforce flow control).
    pub max_in_flight: usize,
    /// On SIGTERM, how long in-flight runs may take to finish before they are handed back.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// The longest a job may run, whatever its message says.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// How long the client keeps extending a message's lease; must exceed `max_timeout`.
    #[serde(with = "humantime_serde")]
    pub max_lease: Duration,
    /// Bytes a job message may have; a bigger one is dead-lettered (`too_large`) unread.
    /// Keep it above the controller's `catalog.max_sql_bytes` plus 4 KiB.
    pub max_message_bytes: usize,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        RunnerSettings {
            max_in_flight: 8,
            grace_period: Duration::from_secs(30),
            max_timeout: Duration::from_secs(3600),
            max_lease: Duration::from_secs(2 * 3600),
            max_message_bytes: crate::runner::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// The run ledger (PostgreSQL): one row per job id, so each run's effect happens once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSettings {
    /// Connection string; a secret, never logged.
    pub url: Secret,
    /// The ledger's own schema (created, and migrated, at start-up).
    pub schema: String,
    pub pool_size: usize,
    /// How long a claim on a run holds without being extended (the runner extends it every
    /// third): after a worker dies, its runs can be claimed again this much later.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// A run whose lease expired this long ago and that no worker claimed again is published
    /// again from the ledger's copy of its job message (its message was lost on the way
    /// back). Must exceed `pubsub.ack_deadline` + `pubsub.max_backoff`.
    #[serde(with = "humantime_serde")]
    pub republish_after: Duration,
    /// How often a worker looks for such runs.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/postgres"),
            schema: "sqo_ledger".into(),
            pool_size: 4,
            lease: Duration::from_secs(60),
            republish_after: Duration::from_secs(15 * 60),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Postgres,
    /// Google BigQuery (REST API v2): the query runs in BigQuery and writes there.
    Bigquery,
}

/// The time unit of a BigQuery destination table's partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitioning {
    Hour,
    Day,
    Month,
    Year,
}

impl Partitioning {
    /// BigQuery's name of the partitioning type.
    pub fn as_bigquery(self) -> &'static str {
        match self {
            Partitioning::Hour => "HOUR",
            Partitioning::Day => "DAY",
            Partitioning::Month => "MONTH",
            Partitioning::Year => "YEAR",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    pub kind: EngineKind,
    /// Connection string (`postgres://user:password@host:port/db`); a secret, never logged.
    pub url: Secret,
    /// The tenant's schema; `{tenant_id}` is replaced.
    pub schema_template: String,
    /// The role a tenant's runs log in as; `{tenant_id}` is replaced. Empty: runs use the
    /// login of `url`, which then reads whatever that login may read of every tenant (a
    /// warning at start).
    pub role_template: String,
    /// The key tenant passwords are derived from (`worker tenant-password`); a secret, never
    /// logged. Needed when `role_template` is set.
    pub tenant_password_key: Secret,
    /// During a rotation, the key before `tenant_password_key` (empty: none): a login
    /// refused with the new password is tried with the old one.
    pub tenant_password_key_previous: Secret,
    pub pool_size: usize,
    /// Result rows a run may produce.
    pub max_rows: usize,
    /// Result bytes a run may produce (the values' sizes, see the README).
    pub max_result_bytes: usize,
    /// BigQuery: the project the jobs run in and are billed to, and where the tenants'
    /// datasets are.
    pub project: String,
    /// BigQuery: the location of the datasets and jobs (e.g. `US`, `europe-west1`); empty:
    /// BigQuery's default.
    pub location: String,
    /// BigQuery: the tenant's dataset; `{tenant_id}` is replaced.
    pub dataset_template: String,
    /// BigQuery: the API's base URL. `BIGQUERY_EMULATOR_HOST` (host:port) overrides it and
    /// selects anonymous credentials, as `PUBSUB_EMULATOR_HOST` does for Pub/Sub.
    pub endpoint: String,
    /// BigQuery: the partitioning of destination tables by `_scheduled_for`.
    pub partition: Partitioning,
    /// BigQuery: the most bytes one run may bill (`maximumBytesBilled`); 0: no limit.
    pub maximum_bytes_billed: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            kind: EngineKind::Postgres,
            url: Secret::new("postgres://postgres@127.0.0.1:5432/postgres"),
            schema_template: "tenant_{tenant_id}".into(),
            role_template: "tenant_{tenant_id}".into(),
            tenant_password_key: Secret::new(""),
            tenant_password_key_previous: Secret::new(""),
            pool_size: 8,
            max_rows: ResultLimits::default().max_rows,
            max_result_bytes: ResultLimits::default().max_bytes,
            project: String::new(),
            location: String::new(),
            dataset_template: "tenant_{tenant_id}".into(),
            endpoint: crate::engines::bigquery::DEFAULT_ENDPOINT.into(),
            partition: Partitioning::Day,
            maximum_bytes_billed: 0,
        }
    }
}

impl Layered for Settings {
    const ENV_PREFIX: &'static str = "WORKER";
}

fn check_name(key: &str, name: &str, problems: &mut Vec<String>) {
    if let Err(e) = pubsub_bus::check_resource_name(name) {
        problems.push(format!("{key} {e}"));
    }
}

impl Validate for Settings {
    fn problems(&self) -> Vec<String> {
        let mut p = self.log.problems();
        if let Err(e) = self.signing.load(jobs_core::signing::KeyRing::parse) {
            p.push(e);
        }
        let ps = &self.pubsub;
        if ps.project.trim().is_empty() {
            p.push("pubsub.project is empty".into());
        }
        check_name("pubsub.jobs_topic", &ps.jobs_topic, &mut p);
        check_name("pubsub.jobs_subscription", &ps.jobs_subscription, &mut p);
        check_name("pubsub.results_topic", &ps.results_topic, &mut p);
        check_name("pubsub.dead_letter_topic", &ps.dead_letter_topic, &mut p);
        if ps.min_backoff > ps.max_backoff || ps.max_backoff > Duration::from_secs(600) {
            p.push("pubsub.min_backoff must not exceed pubsub.max_backoff, which is at most 600s".into());
        }
        if !(Duration::from_secs(10)..=Duration::from_secs(600)).contains(&ps.ack_deadline) {
            p.push(format!(
                "pubsub.ack_deadline {} must be between 10s and 600s",
                humantime::format_duration(ps.ack_deadline)
            ));
        }
        if !(5..=100).contains(&ps.max_delivery_attempts) {
            p.push(format!("pubsub.max_delivery_attempts {} must be between 5 and 100", ps.max_delivery_attempts));
        }
        let r = &self.runner;
        if r.max_in_flight == 0 {
            p.push("runner.max_in_flight must be at least 1".into());
        }
        if r.max_timeout.is_zero() {
            p.push("runner.max_timeout must be above 0".into());
        }
        if r.max_message_bytes < 4096 {
            p.push(format!("runner.max_message_bytes {} must be at least 4096", r.max_message_bytes));
        }
        if r.max_lease <= r.max_timeout {
            p.push(format!(
                "runner.max_lease ({}) must exceed runner.max_timeout ({}), or a long run is handed to a second worker",
                humantime::format_duration(r.max_lease),
                humantime::format_duration(r.max_timeout)
            ));
        }
        let l = &self.ledger;
        if let Err(err) = l.url.expose().parse::<tokio_postgres::Config>() {
            p.push(format!("ledger.url is not a valid PostgreSQL connection string ({err})"));
        }
        if l.schema.is_empty()
            || l.schema.len() > 63
            || !l.schema.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            p.push(format!("ledger.schema {:?} must be 1 to 63 letters, digits or underscores", l.schema));
        }
        if l.pool_size == 0 {
            p.push("ledger.pool_size must be at least 1".into());
        }
        if l.lease < Duration::from_secs(3) {
            p.push(format!("ledger.lease ({}) must be at least 3s", humantime::format_duration(l.lease)));
        }
        if l.republish_after <= ps.ack_deadline + ps.max_backoff {
            p.push(format!(
                "ledger.republish_after ({}) must exceed pubsub.ack_deadline + pubsub.max_backoff ({}), or runs whose \
                 message is on its way back are published twice",
                humantime::format_duration(l.republish_after),
                humantime::format_duration(ps.ack_deadline + ps.max_backoff)
            ));
        }
        if l.sweep_interval.is_zero() {
            p.push("ledger.sweep_interval must be above 0".into());
        }
        if self.engines.is_empty() {
            p.push("engines is empty: no job could ever run".into());
        }
        for (name, e) in &self.engines {
            if e.kind == EngineKind::Bigquery {
                bigquery_problems(name, e, &mut p);
                continue;
            }
            if let Err(err) = e.url.expose().parse::<tokio_postgres::Config>() {
                p.push(format!("engines.{name}.url is not a valid PostgreSQL connection string ({err})"));
            }
            if !e.schema_template.contains("{tenant_id}") {
                p.push(format!(
                    "engines.{name}.schema_template {:?} must contain {{tenant_id}}: every tenant needs its own schema",
                    e.schema_template
                ));
            }
            if e.pool_size == 0 {
                p.push(format!("engines.{name}.pool_size must be at least 1"));
            }
            if !e.role_template.is_empty() && !e.role_template.contains("{tenant_id}") {
                p.push(format!(
                    "engines.{name}.role_template {:?} must contain {{tenant_id}} (or be empty): every tenant needs its own role",
                    e.role_template
                ));
            }
            if !e.role_template.is_empty() && e.tenant_password_key.expose().len() < 16 {
                p.push(format!(
                    "engines.{name}.tenant_password_key must be at least 16 characters when role_template is set \
                     (env WORKER_ENGINES__{}__TENANT_PASSWORD_KEY); or set role_template = \"\" to run every tenant \
                     under the engine's own login",
                    name.to_uppercase()
                ));
            }
            if e.max_rows == 0 {
                p.push(format!("engines.{name}.max_rows must be at least 1"));
            }
            if e.max_result_bytes == 0 {
                p.push(format!("engines.{name}.max_result_bytes must be at least 1"));
            }
        }
        p
    }
}

/// The settings a `bigquery` engine reads (the PostgreSQL ones do not apply to it).
fn bigquery_problems(name: &str, e: &EngineSettings, p: &mut Vec<String>) {
    let project_ok = !e.project.is_empty()
        && e.project.len() <= 100
        && e.project.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b':'));
    if !project_ok {
        p.push(format!(
            "engines.{name}.project {:?} must be a Google Cloud project id (lowercase letters, digits, '-', '.', ':'; \
             env WORKER_ENGINES__{}__PROJECT)",
            e.project,
            name.to_uppercase()
        ));
    }
    if !e.dataset_template.contains("{tenant_id}") {
        p.push(format!(
            "engines.{name}.dataset_template {:?} must contain {{tenant_id}}: every tenant needs its own dataset",
            e.dataset_template
        ));
    } else if crate::engines::bigquery::check_dataset(&e.dataset_template.replace("{tenant_id}", "t")).is_err() {
        p.push(format!(
            "engines.{name}.dataset_template {:?} must make dataset names of letters, digits and underscores",
            e.dataset_template
        ));
    }
    if !(e.endpoint.starts_with("https://") || e.endpoint.starts_with("http://")) {
        p.push(format!("engines.{name}.endpoint {:?} must be an http(s) URL", e.endpoint));
    }
    if !e.location.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        p.push(format!(
            "engines.{name}.location {:?} must be a BigQuery location such as US or europe-west1",
            e.location
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn engines_are_configured_from_the_environment() {
        let env: HashMap<String, String> = [
            ("WORKER_ENGINES__WAREHOUSE__URL", "postgres://u:hunter2@db:5432/d"),
            ("WORKER_ENGINES__WAREHOUSE__POOL_SIZE", "3"),
            ("WORKER_ENGINES__WAREHOUSE__TENANT_PASSWORD_KEY", "tenant-key-swordfish"),
            ("WORKER_RUNNER__GRACE_PERIOD", "5s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s: Settings = service_kit::settings::load(None, &env).unwrap_or_else(|e| panic!("{e:#}"));
        let e = &s.engines["warehouse"];
        assert_eq!((e.url.expose(), e.pool_size), ("postgres://u:hunter2@db:5432/d", 3));
        assert_eq!(s.runner.grace_period, Duration::from_secs(5));
        assert!(!format!("{s:?}").contains("hunter2"), "the password never prints");
        assert!(!format!("{s:?}").contains("swordfish"), "the tenant password key never prints");
        assert!(s.problems().is_empty(), "{:?}", s.problems());
    }

    #[test]
    fn a_lease_shorter_than_the_longest_run_is_refused() {
        let mut s = Settings::default();
        s.runner.max_lease = Duration::from_secs(60);
        s.engines.insert(
            "warehouse".into(),
            EngineSettings { schema_template: "shared".into(), role_template: "reader".into(), ..Default::default() },
        );
        let problems = s.problems();
        assert!(problems.iter().any(|p| p.contains("runner.max_lease")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("schema_template \"shared\"")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("role_template \"reader\"")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("engines.warehouse.tenant_password_key")), "{problems:?}");
    }
}
