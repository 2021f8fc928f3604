//! The controller's configuration: defaults, then `--config FILE`, then environment
//! variables `CONTROLLER_SECTION__KEY` (e.g. `CONTROLLER_PLATFORM__BASE_URL`).

use crate::catalog::CatalogPolicy;
use crate::placement::Strategy;
use serde::{Deserialize, Serialize};
use service_kit::settings::{Layered, Validate};
use service_kit::telemetry::LogSettings;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub admin: AdminSettings,
    pub log: LogSettings,
    pub platform: PlatformSettings,
    pub catalog: CatalogSettings,
    pub placement: PlacementSettings,
    pub pubsub: PubsubSettings,
    pub state: StateSettings,
    pub catchup: CatchupSettings,
    /// The keys job messages are signed with: the last one signs (none: unsigned).
    pub signing: service_kit::settings::KeyRingSettings,
}

/// Where the watermark and the last good catalog are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSettings {
    /// PostgreSQL connection string; a secret, never logged. Empty: kept in memory only, so a
    /// restart neither catches up nor starts from the last good catalog.
    pub url: service_kit::Secret,
    /// The controller's own schema (created and migrated at start-up).
    pub schema: String,
    /// How often the watermark is saved (and at shutdown, after the publishes drain).
    #[serde(with = "humantime_serde")]
    pub watermark_interval: Duration,
    /// The leader's lease: one replica publishes; a standby takes over at most this long
    /// after the leader dies (at once when it shuts down cleanly). Needs `state.url`.
    #[serde(with = "humantime_serde")]
    pub leader_lease: Duration,
}

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings {
            url: service_kit::Secret::new(""),
            schema: "sqo_controller".into(),
            watermark_interval: Duration::from_secs(5),
            leader_lease: Duration::from_secs(15),
        }
    }
}

/// What a restarted controller does with the runs it missed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatchupSettings {
    /// Missed runs older than this (by nominal time) are not replayed (counted as
    /// `beyond_window`).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// `all`, `latest` (the most recent of each schedule) or `skip`.
    pub missed: crate::catchup::Missed,
}

impl Default for CatchupSettings {
    fn default() -> Self {
        CatchupSettings { window: Duration::from_secs(6 * 3600), missed: crate::catchup::Missed::All }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address of the admin HTTP server (`/livez`, `/readyz`, `/metrics`, the operator API).
    pub listen: SocketAddr,
    /// The bearer token the operator API's mutating endpoints (trigger, pause, resume)
    /// require; a secret, never logged. Empty: those endpoints are refused (403).
    pub token: service_kit::Secret,
    /// The same from a file (a mounted Secret); wins over `token`.
    pub token_file: Option<std::path::PathBuf>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings { listen: SocketAddr::from(([127, 0, 0, 1], 9090)), token: Default::default(), token_file: None }
    }
}

impl AdminSettings {
    /// The operator token (empty when none is configured); an error names the file.
    pub fn token(&self) -> Result<service_kit::Secret, String> {
        match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|t| service_kit::Secret::new(t.trim()))
                .map_err(|e| format!("admin.token_file {}: {e}", path.display())),
            None => Ok(self.token.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogSource {
    /// The platform HTTP API.
    Api,
    /// A catalog file with the same documents.
    File,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformSettings {
    pub source: CatalogSource,
    /// Base URL of the platform API, e.g. `https://platform.example.com/api`.
    pub base_url: String,
    /// Environment variable holding the bearer token (used when `token_file` is unset).
    pub token_env: String,
    /// A file holding the bearer token (a mounted secret); read at every sync.
    pub token_file: Option<PathBuf>,
    /// The catalog file, when `source = "file"` (JSON, or YAML by extension).
    pub catalog_file: Option<PathBuf>,
    pub page_size: u32,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Attempts per request before the sync fails (429, 5xx, timeouts, connection errors).
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Tenants whose apps are fetched concurrently.
    pub concurrency: usize,
    /// Bytes one page's body may have; a bigger page fails the sync.
    pub max_body_bytes: usize,
    /// Pages one listing (the tenants, one tenant's apps) may have; more fails the sync (a
    /// platform that keeps answering with a next page token would otherwise never end it).
    pub max_pages: usize,
}

impl Default for PlatformSettings {
    fn default() -> Self {
        PlatformSettings {
            source: CatalogSource::Api,
            base_url: String::new(),
            token_env: "PLATFORM_API_TOKEN".into(),
            token_file: None,
            catalog_file: None,
            page_size: 100,
            request_timeout: Duration::from_secs(30),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            concurrency: 8,
            max_body_bytes: 32 * 1024 * 1024,
            max_pages: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogSettings {
    /// How often the catalog is re-read and diffed against the running schedules.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Engine names queries may use; any other is an invalid item.
    pub engines: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub default_spread: Duration,
    #[serde(with = "humantime_serde")]
    pub max_spread: Duration,
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    pub default_max_attempts: u32,
    pub max_sql_bytes: usize,
    /// Schedules one tenant may have; past it, the tenant's further queries are skipped.
    pub max_schedules_per_tenant: usize,
    /// A sync that would remove more than this share of the schedules in force is held back
    /// until the same answer comes `removal_confirmations` times in a row.
    pub max_removal_share: f64,
    pub removal_confirmations: u32,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        CatalogSettings {
            sync_interval: Duration::from_secs(60),
            engines: vec!["warehouse".into()],
            default_spread: Duration::ZERO,
            max_spread: Duration::from_secs(3600),
            default_timeout: Duration::from_secs(300),
            max_timeout: Duration::from_secs(3600),
            default_max_attempts: 3,
            max_sql_bytes: 256 * 1024,
            max_schedules_per_tenant: 10_000,
            max_removal_share: 0.5,
            removal_confirmations: 3,
        }
    }
}

impl CatalogSettings {
    pub fn policy(&self) -> CatalogPolicy {
        CatalogPolicy {
            known_engines: self.engines.iter().cloned().collect(),
            default_spread: self.default_spread,
            max_spread: self.max_spread,
            default_timeout: self.default_timeout,
            max_timeout: self.max_timeout,
            default_max_attempts: self.default_max_attempts,
            max_sql_bytes: self.max_sql_bytes,
            max_schedules_per_tenant: self.max_schedules_per_tenant,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementSettings {
    /// `load-aware` (default), `hash` or `none`.
    pub strategy: Strategy,
    /// Run time assumed for queries without `estimated_duration`.
    #[serde(with = "humantime_serde")]
    pub default_duration: Duration,
    /// Share by which a fresh load-aware placement must lower the peak before existing
    /// placements move.
    pub rebalance_margin: f64,
    /// The horizon load-aware placement plans over.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// Share of a minute's starts a tenant of weight 1 may take while other tenants' runs
    /// are due in that minute (a tenant of weight w: w times as much). 1 turns the rule off.
    pub max_tenant_share: f64,
}

impl Default for PlacementSettings {
    fn default() -> Self {
        PlacementSettings {
            strategy: Strategy::LoadAware,
            default_duration: Duration::from_secs(30),
            rebalance_margin: 0.05,
            horizon: Duration::from_secs(24 * 3600),
            max_tenant_share: 0.5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubsubSettings {
    /// Google Cloud project of the topics. `PUBSUB_EMULATOR_HOST` selects the emulator.
    pub project: String,
    pub jobs_topic: String,
    /// Create the jobs topic (and the results subscription, when set) at start-up if
    /// missing (emulator and development).
    pub create_topics: bool,
    /// The workers' result events topic, read for observed run durations.
    pub results_topic: String,
    /// A subscription of the controller's own on `results_topic`; empty turns the learning
    /// of run durations off.
    pub results_subscription: String,
    /// Bound on the client's own publish retries; the controller retries beyond it.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Publishes in flight at once.
    pub max_in_flight: usize,
    /// Time given to in-flight publishes at shutdown.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for PubsubSettings {
    fn default() -> Self {
        PubsubSettings {
            project: "local-project".into(),
            jobs_topic: "jobs".into(),
            create_topics: false,
            results_topic: "job-results".into(),
            results_subscription: String::new(),
            publish_timeout: Duration::from_secs(30),
            max_in_flight: 256,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

fn check_name(key: &str, name: &str, problems: &mut Vec<String>) {
    if let Err(e) = pubsub_bus::check_resource_name(name) {
        problems.push(format!("{key} {e}"));
    }
}

impl Layered for Settings {
    const ENV_PREFIX: &'static str = "CONTROLLER";
    const LIST_KEYS: &'static [&'static str] = &["catalog.engines"];
}

impl Validate for Settings {
    fn problems(&self) -> Vec<String> {
        let mut p = self.log.problems();
        match self.admin.token() {
            Ok(t) if !t.is_empty() && t.expose().len() < 16 => {
                p.push(format!("admin.token has {} characters, at least 16 are needed", t.expose().len()))
            }
            Ok(_) => {}
            Err(e) => p.push(e),
        }
        if let Err(e) = self.signing.load(jobs_core::signing::KeyRing::parse) {
            p.push(e);
        }
        let c = &self.catalog;
        if !(c.max_removal_share > 0.0 && c.max_removal_share <= 1.0) {
            p.push(format!("catalog.max_removal_share {} must be in (0, 1]", c.max_removal_share));
        }
        if c.removal_confirmations == 0 {
            p.push("catalog.removal_confirmations must be at least 1".into());
        }
        let st = &self.state;
        if !st.url.expose().is_empty() && st.url.expose().parse::<tokio_postgres::Config>().is_err() {
            p.push("state.url is not a valid PostgreSQL connection string".into());
        }
        if st.schema.is_empty()
            || st.schema.len() > 63
            || !st.schema.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            p.push(format!("state.schema {:?} must be 1 to 63 letters, digits or underscores", st.schema));
        }
        if st.leader_lease < Duration::from_secs(3) {
            p.push(format!("state.leader_lease ({}) must be at least 3s", humantime::format_duration(st.leader_lease)));
        }
        if st.watermark_interval.is_zero() {
            p.push("state.watermark_interval must be above 0".into());
        }
        if self.catchup.window.is_zero() {
            p.push("catchup.window must be above 0 (use catchup.missed = \"skip\" to replay nothing)".into());
        }
        let pl = &self.platform;
        match pl.source {
            CatalogSource::Api => {
                if !(pl.base_url.starts_with("http://") || pl.base_url.starts_with("https://")) {
                    p.push(format!(
                        "platform.base_url {:?} must be an http:// or https:// URL when platform.source = \"api\"",
                        pl.base_url
                    ));
                }
                if pl.token_file.is_none() && pl.token_env.trim().is_empty() {
                    p.push(
                        "platform.token_env is empty and platform.token_file is unset: no way to get the token".into(),
                    );
                }
            }
            CatalogSource::File => match &pl.catalog_file {
                None => p.push("platform.catalog_file must be set when platform.source = \"file\"".into()),
                Some(path) if !path.exists() => {
                    p.push(format!("platform.catalog_file {} does not exist", path.display()))
                }
                Some(_) => {}
            },
        }
        if !(1..=1000).contains(&pl.page_size) {
            p.push(format!("platform.page_size {} must be between 1 and 1000", pl.page_size));
        }
        if pl.request_timeout.is_zero() {
            p.push("platform.request_timeout must be above 0".into());
        }
        if pl.max_body_bytes < 1024 {
            p.push(format!("platform.max_body_bytes {} must be at least 1024", pl.max_body_bytes));
        }
        if pl.max_pages == 0 {
            p.push("platform.max_pages must be above 0".into());
        }
        if pl.max_attempts == 0 {
            p.push("platform.max_attempts must be at least 1".into());
        }
        if pl.initial_backoff > pl.max_backoff {
            p.push("platform.initial_backoff must not exceed platform.max_backoff".into());
        }
        if pl.concurrency == 0 {
            p.push("platform.concurrency must be at least 1".into());
        }
        let c = &self.catalog;
        if c.sync_interval < Duration::from_secs(1) {
            p.push(format!("catalog.sync_interval {:?} must be at least 1s", c.sync_interval));
        }
        if c.engines.is_empty() {
            p.push("catalog.engines is empty: no query could ever be scheduled".into());
        }
        if c.default_spread > c.max_spread {
            p.push("catalog.default_spread must not exceed catalog.max_spread".into());
        }
        if c.default_timeout.is_zero() || c.default_timeout > c.max_timeout {
            p.push("catalog.default_timeout must be above 0 and at most catalog.max_timeout".into());
        }
        if !(1..=100).contains(&c.default_max_attempts) {
            p.push(format!("catalog.default_max_attempts {} must be between 1 and 100", c.default_max_attempts));
        }
        if c.max_sql_bytes == 0 {
            p.push("catalog.max_sql_bytes must be above 0".into());
        }
        if c.max_schedules_per_tenant == 0 {
            p.push("catalog.max_schedules_per_tenant must be above 0".into());
        }
        let pl = &self.placement;
        if pl.default_duration.is_zero() {
            p.push("placement.default_duration must be above 0".into());
        }
        if !(0.0..1.0).contains(&pl.rebalance_margin) {
            p.push(format!("placement.rebalance_margin {} must be in [0, 1)", pl.rebalance_margin));
        }
        if pl.horizon < Duration::from_secs(3600) || pl.horizon > Duration::from_secs(7 * 24 * 3600) {
            p.push("placement.horizon must be between 1h and 7d".into());
        }
        if !(pl.max_tenant_share > 0.0 && pl.max_tenant_share <= 1.0) {
            p.push(format!("placement.max_tenant_share {} must be in (0, 1]", pl.max_tenant_share));
        }
        let ps = &self.pubsub;
        if ps.project.trim().is_empty() {
            p.push("pubsub.project is empty".into());
        }
        check_name("pubsub.jobs_topic", &ps.jobs_topic, &mut p);
        if !ps.results_subscription.is_empty() {
            check_name("pubsub.results_topic", &ps.results_topic, &mut p);
            check_name("pubsub.results_subscription", &ps.results_subscription, &mut p);
        }
        if ps.publish_timeout.is_zero() {
            p.push("pubsub.publish_timeout must be above 0".into());
        }
        if ps.max_in_flight == 0 {
            p.push("pubsub.max_in_flight must be at least 1".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn environment_variables_override_nested_keys() {
        let env: HashMap<String, String> = [
            ("CONTROLLER_PLATFORM__BASE_URL", "http://127.0.0.1:1"),
            ("CONTROLLER_CATALOG__SYNC_INTERVAL", "5s"),
            ("CONTROLLER_CATALOG__ENGINES", "warehouse,lake"),
            ("CONTROLLER_PUBSUB__CREATE_TOPICS", "true"),
            ("UNRELATED", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s: Settings = service_kit::settings::load(None, &env).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(s.platform.base_url, "http://127.0.0.1:1");
        assert_eq!(s.catalog.sync_interval, Duration::from_secs(5));
        assert_eq!(s.catalog.engines, vec!["warehouse", "lake"]);
        assert!(s.pubsub.create_topics);
        assert!(s.problems().is_empty(), "{:?}", s.problems());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut s = Settings::default();
        s.platform.page_size = 0;
        s.catalog.engines.clear();
        s.pubsub.jobs_topic = "j".into();
        let problems = s.problems();
        for needle in ["platform.base_url", "platform.page_size", "catalog.engines", "pubsub.jobs_topic"] {
            assert!(problems.iter().any(|p| p.contains(needle)), "{needle} missing from {problems:#?}");
        }
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let env: HashMap<String, String> =
            [("CONTROLLER_PLATFORM__BASE_ULR".to_owned(), "x".to_owned())].into_iter().collect();
        let err = service_kit::settings::load::<Settings>(None, &env).expect_err("typo");
        assert!(err.to_string().contains("base_ulr"), "{err}");
    }
}
