//! The worker application: build it from settings (binding the admin port), then run it
//! until the shutdown token is cancelled.

use crate::consumer::{ConsumerSettings, run_consumer};
use crate::engines::bigquery::{BigQueryConfig, BigQueryEngine};
use crate::engines::postgres::PostgresEngine;
use crate::engines::postgres::{TenantLogins, TenantScope};
use crate::engines::{Engine, ResultLimits};
use crate::ledger::postgres::{MigrateError, PostgresLedger};
use crate::ledger::{Ledger, worker_identity};
use crate::metrics::Metrics;
use crate::runner::{LedgerAccess, Outputs, Runner};
use crate::settings::{EngineKind, Settings};
use anyhow::Context;
use async_trait::async_trait;
use jobs_core::ResultEvent;
use prometheus_client::registry::Registry;
use pubsub_bus::pull::LeaseSettings;
use pubsub_bus::{Connection, DeadLetterSpec, SubscriptionSpec, TopicPublisher};
use service_kit::admin::{self, AdminServer, AdminState, Readiness};
use service_kit::supervisor::Supervisor;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const CHECK_ENGINES: &str = "engines";
const CHECK_PUBSUB: &str = "pubsub";
const CHECK_LEDGER: &str = "ledger";

/// Results and dead letters on Pub/Sub.
struct PubsubOutputs {
    results: TopicPublisher,
    dead_letters: TopicPublisher,
}

#[async_trait]
impl Outputs for PubsubOutputs {
    async fn publish_result(&self, event: &ResultEvent) -> anyhow::Result<()> {
        use jobs_core::attributes as a;
        let attributes = [
            (a::TENANT_ID, event.tenant_id.clone()),
            (a::APP_ID, event.app_id.clone()),
            (a::QUERY_ID, event.query_id.clone()),
            (a::JOB_ID, event.job_id.to_string()),
            (a::SCHEMA_VERSION, event.schema_version.clone()),
        ];
        self.results.publish(event.encode(), attributes).await?;
        Ok(())
    }

    async fn dead_letter(&self, data: Vec<u8>, attributes: HashMap<String, String>) -> anyhow::Result<()> {
        self.dead_letters.publish(data, attributes).await?;
        Ok(())
    }
}

pub struct Application {
    settings: Settings,
    admin: AdminServer,
    readiness: Arc<Readiness>,
    registry: Arc<Registry>,
    metrics: Metrics,
    engines: BTreeMap<String, Arc<dyn Engine>>,
    ledger: Arc<PostgresLedger>,
    connection: Connection,
}

impl Application {
    pub async fn build(settings: Settings, env: &HashMap<String, String>) -> anyhow::Result<Self> {
        let mut engines: BTreeMap<String, Arc<dyn Engine>> = BTreeMap::new();
        for (name, e) in &settings.engines {
            let engine = match e.kind {
                EngineKind::Postgres => {
                    if e.role_template.is_empty() {
                        tracing::warn!(
                            engine = %name,
                            "engines.{name}.role_template is empty: every tenant's queries log in as the engine's own \
                             role, so one tenant's query can read what that role can read of other tenants"
                        );
                    }
                    let scope = TenantScope {
                        schema_template: e.schema_template.clone(),
                        logins: (!e.role_template.is_empty()).then(|| TenantLogins {
                            role_template: e.role_template.clone(),
                            password_key: e.tenant_password_key.clone(),
                            previous_key: (!e.tenant_password_key_previous.is_empty())
                                .then(|| e.tenant_password_key_previous.clone()),
                        }),
                    };
                    let limits = ResultLimits { max_rows: e.max_rows, max_bytes: e.max_result_bytes };
                    Arc::new(
                        PostgresEngine::new(&e.url, e.pool_size, scope, limits)
                            .map_err(|err| anyhow::anyhow!("engines.{name}: {err}"))?,
                    ) as Arc<dyn Engine>
                }
                EngineKind::Bigquery => {
                    let (endpoint, auth) = BigQueryConfig::connection(&e.endpoint, env)
                        .map_err(|err| anyhow::anyhow!("engines.{name}: {err}"))?;
                    tracing::info!(engine = %name, endpoint = %endpoint, project = %e.project, "BigQuery engine");
                    let config = BigQueryConfig {
                        endpoint,
                        auth,
                        project: e.project.clone(),
                        location: e.location.clone(),
                        dataset_template: e.dataset_template.clone(),
                        partition: e.partition,
                        maximum_bytes_billed: e.maximum_bytes_billed,
                    };
                    Arc::new(BigQueryEngine::new(config).map_err(|err| anyhow::anyhow!("engines.{name}: {err}"))?)
                }
            };
            engines.insert(name.clone(), engine);
        }
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let readiness = Arc::new(Readiness::default());
        readiness.register(CHECK_ENGINES, "engines not checked yet");
        readiness.register(CHECK_PUBSUB, "Pub/Sub not checked yet");
        readiness.register(CHECK_LEDGER, "run ledger not migrated yet");
        let l = &settings.ledger;
        let ledger = Arc::new(
            PostgresLedger::new(&l.url, &l.schema, l.pool_size).map_err(|e| anyhow::anyhow!("ledger.url: {e}"))?,
        );
        let admin = AdminServer::bind(settings.admin.listen).await?;
        let connection = Connection::from_env(settings.pubsub.project.clone(), env);
        Ok(Application {
            settings,
            admin,
            readiness,
            registry: Arc::new(registry),
            metrics,
            engines,
            ledger,
            connection,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// Runs until `shutdown` is cancelled or a critical task fails. Shutdown order: stop
    /// pulling, finish or hand back in-flight runs, flush acks, stop the admin server.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application { settings, admin, readiness, registry, metrics, engines, ledger, connection } = self;
        let ps = &settings.pubsub;
        tracing::info!(
            admin = %admin.local_addr(),
            pubsub_endpoint = connection.emulator_endpoint.as_deref().unwrap_or("google"),
            project = %connection.project,
            subscription = %ps.jobs_subscription,
            engines = ?engines.keys().collect::<Vec<_>>(),
            "worker starting"
        );
        if ps.create_resources {
            for topic in [&ps.jobs_topic, &ps.results_topic, &ps.dead_letter_topic] {
                connection.ensure_topic(topic).await?;
            }
            connection
                .ensure_subscription(&SubscriptionSpec {
                    name: ps.jobs_subscription.clone(),
                    topic: ps.jobs_topic.clone(),
                    ack_deadline_secs: ps.ack_deadline.as_secs() as i32,
                    min_backoff: ps.min_backoff,
                    max_backoff: ps.max_backoff,
                    dead_letter: Some(DeadLetterSpec {
                        topic: ps.dead_letter_topic.clone(),
                        max_delivery_attempts: ps.max_delivery_attempts,
                    }),
                })
                .await?;
        }
        let outputs = Arc::new(PubsubOutputs {
            results: connection.publisher(&ps.results_topic, ps.publish_timeout).await?,
            dead_letters: connection.publisher(&ps.dead_letter_topic, ps.publish_timeout).await?,
        });
        let puller = connection.puller(&ps.jobs_subscription).context("cannot open the jobs subscription")?;

        // The admin server answers while the ledger is migrated (its /readyz says so).
        let router = admin::router(AdminState { readiness: readiness.clone(), registry })
            .merge(crate::runs_api::router(ledger.clone()))
            .fallback(crate::runs_api::no_route);
        let admin = admin.spawn(router);
        if let Err(e) = migrate(&ledger, &readiness, &shutdown).await {
            admin.stop().await;
            return Err(e);
        }
        if shutdown.is_cancelled() {
            admin.stop().await;
            return Ok(());
        }
        let worker = worker_identity();
        tracing::info!(worker = %worker, lease_secs = settings.ledger.lease.as_secs(), "run ledger ready");
        let access = LedgerAccess { ledger: ledger.clone(), worker, lease: settings.ledger.lease };
        let keys = settings.signing.load(jobs_core::signing::KeyRing::parse).map_err(anyhow::Error::msg)?;
        if keys.is_empty() {
            tracing::warn!("job messages are not verified: set signing.keyring or signing.keyring_file");
        } else {
            tracing::info!(key_ids = ?keys.ids(), "job messages must be signed with one of these keys");
        }
        let runner = Arc::new(
            Runner::new(engines.clone(), outputs, metrics.clone(), settings.runner.max_timeout, access)
                .with_keys(keys.clone())
                .with_max_message_bytes(settings.runner.max_message_bytes),
        );
        let work = shutdown.child_token();
        let mut tasks = Supervisor::new(work.clone());
        tasks.spawn(
            "consumer",
            run_consumer(
                puller,
                runner,
                ConsumerSettings {
                    max_in_flight: settings.runner.max_in_flight,
                    grace_period: settings.runner.grace_period,
                    lease: LeaseSettings {
                        ack_deadline: ps.ack_deadline,
                        max_lease: settings.runner.max_lease,
                        flush_every: Duration::from_millis(50),
                    },
                },
                metrics.clone(),
                work.clone(),
            ),
        );
        tasks.spawn(
            "ledger-sweeper",
            sweep(
                ledger.clone(),
                connection.publisher(&ps.jobs_topic, ps.publish_timeout).await?,
                keys.signing_key().cloned(),
                settings.ledger.republish_after,
                settings.ledger.sweep_interval,
                metrics.clone(),
                work.clone(),
            ),
        );
        tasks.spawn("engine-check", check_engines(engines, ledger, readiness.clone(), work.clone()));
        let (pubsub_readiness, stop, topic) = (readiness.clone(), work.clone(), ps.results_topic.clone());
        tasks.spawn("pubsub-check", async move {
            connection
                .report_readiness(&topic, &stop, |ok, detail| pubsub_readiness.set(CHECK_PUBSUB, ok, detail))
                .await;
            Ok(())
        });
        let result = tasks.join().await;
        admin.stop().await;
        tracing::info!("worker stopped");
        result
    }
}

/// Applies the ledger's migrations, retrying while the database does not answer; a schema
/// newer than this build stops the worker.
async fn migrate(ledger: &PostgresLedger, readiness: &Readiness, stop: &CancellationToken) -> anyhow::Result<()> {
    loop {
        match ledger.migrate().await {
            Ok((before, after)) => {
                tracing::info!(schema_version_before = before, schema_version = after, "run ledger migrated");
                readiness.set(CHECK_LEDGER, true, format!("run ledger at schema version {after}"));
                return Ok(());
            }
            Err(MigrateError::Newer(reason)) => {
                tracing::error!(reason = %reason, "refusing to start");
                anyhow::bail!("{reason}");
            }
            Err(MigrateError::Ledger(e)) => {
                tracing::warn!(error = %e, "cannot migrate the run ledger yet, retrying in 5s");
                readiness.set(CHECK_LEDGER, false, e.to_string());
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// The safety net under Pub/Sub's redelivery: every `every`, publishes again the runs left
/// `running` under a lease expired more than `after` ago that no worker claimed since — their
/// message did not come back (seen on the emulator after a worker holding a redelivered
/// message was killed). The republished message has the same job id: the ledger runs it once.
async fn sweep(
    ledger: Arc<PostgresLedger>,
    jobs: TopicPublisher,
    key: Option<jobs_core::signing::SigningKey>,
    after: Duration,
    every: Duration,
    metrics: Metrics,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        let stale = match ledger.take_stale(after, 100).await {
            Ok(stale) => stale,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for runs to publish again");
                continue;
            }
        };
        for (job_id, body) in stale {
            let mut attributes: Vec<(&str, String)> = match jobs_core::JobMessage::decode(&body) {
                Ok(job) => job.attributes(None),
                Err(_) => vec![(jobs_core::attributes::JOB_ID, job_id.clone())],
            };
            if let Some(key) = &key {
                let signature =
                    key.sign(&body, |name| attributes.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str()));
                attributes.extend(signature);
            }
            attributes.push(("republished_by", "ledger-sweeper".into()));
            match jobs.publish(body, attributes).await {
                Ok(_) => {
                    metrics.runs_republished.inc();
                    tracing::warn!(
                        job_id = %job_id,
                        stale_secs = after.as_secs(),
                        "run left running under an expired lease and never claimed again: published again"
                    );
                }
                Err(e) => {
                    tracing::warn!(job_id = %job_id, error = %e, "cannot publish the run again; next sweep retries")
                }
            }
        }
    }
}

/// Pings every engine and the ledger every 10 s and reports them in `/readyz`.
async fn check_engines(
    engines: BTreeMap<String, Arc<dyn Engine>>,
    ledger: Arc<PostgresLedger>,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        match ledger.ping().await {
            Ok(()) => readiness.set(CHECK_LEDGER, true, "run ledger answers"),
            Err(e) => {
                tracing::warn!(error = %e, "run ledger check failed");
                readiness.set(CHECK_LEDGER, false, e.to_string());
            }
        }
        let mut failures = Vec::new();
        for (name, engine) in &engines {
            if let Err(e) = engine.ping().await {
                failures.push(format!("{name}: {e}"));
            }
        }
        if failures.is_empty() {
            readiness.set(CHECK_ENGINES, true, format!("{} engines answer", engines.len()));
        } else {
            tracing::warn!(failures = %failures.join("; "), "engine check failed");
            readiness.set(CHECK_ENGINES, false, failures.join("; "));
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}
