//! The controller application: build it from settings (binding the admin port), then run
//! it until the shutdown token is cancelled.

use crate::catchup::{Progress, missed_runs};
use crate::metrics::Metrics;
use crate::platform::{ApiSettings, PlatformClient, TokenSource};
use crate::publisher::{JobSink, PublishSettings, run_publisher};
use crate::settings::{CatalogSource, Settings};
use crate::state::{MemoryState, PostgresState, StateError, StateStore};
use crate::sync::{RemovalGuard, Source, SyncError, Syncer};
use crate::timer::{DueRun, Timer};
use anyhow::Context;
use prometheus_client::registry::Registry;
use service_kit::Secret;
use service_kit::admin::{self, AdminServer, AdminState, Readiness};
use service_kit::supervisor::Supervisor;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

const CHECK_CATALOG: &str = "catalog";
const CHECK_PUBSUB: &str = "pubsub";
const CHECK_STATE: &str = "state";
const CHECK_LEADER: &str = "leader";

pub struct Application {
    settings: Settings,
    admin: AdminServer,
    readiness: Arc<Readiness>,
    registry: Arc<Registry>,
    metrics: Metrics,
    source: Source,
    connection: pubsub_bus::Connection,
    sink: Option<Arc<dyn JobSink>>,
}

impl Application {
    /// Checks the settings, binds the admin port and prepares the catalog source. `env` is
    /// the process environment (passed in so tests control it).
    pub async fn build(settings: Settings, env: &HashMap<String, String>) -> anyhow::Result<Self> {
        let source = match settings.platform.source {
            CatalogSource::File => Source::File(
                settings
                    .platform
                    .catalog_file
                    .clone()
                    .context("platform.catalog_file is required for source = file")?,
            ),
            CatalogSource::Api => {
                let p = &settings.platform;
                let token = match &p.token_file {
                    Some(path) => TokenSource::File(path.clone()),
                    None => {
                        TokenSource::Env { var: p.token_env.clone(), value: env.get(&p.token_env).map(Secret::new) }
                    }
                };
                Source::Api(PlatformClient::new(ApiSettings {
                    base_url: p.base_url.clone(),
                    token,
                    page_size: p.page_size,
                    request_timeout: p.request_timeout,
                    max_attempts: p.max_attempts,
                    initial_backoff: p.initial_backoff,
                    max_backoff: p.max_backoff,
                    concurrency: p.concurrency,
                    max_body_bytes: p.max_body_bytes,
                    max_pages: p.max_pages,
                })?)
            }
        };
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let readiness = Arc::new(Readiness::default());
        readiness.register(CHECK_CATALOG, "first catalog not loaded yet");
        readiness.register(CHECK_PUBSUB, "Pub/Sub not checked yet");
        readiness.register(CHECK_STATE, "controller state not opened yet");
        readiness.register(CHECK_LEADER, "leadership not sought yet");
        let admin = AdminServer::bind(settings.admin.listen).await?;
        let connection = pubsub_bus::Connection::from_env(settings.pubsub.project.clone(), env);
        Ok(Application {
            settings,
            admin,
            readiness,
            registry: Arc::new(registry),
            metrics,
            source,
            connection,
            sink: None,
        })
    }

    /// Replaces the Pub/Sub publisher with another sink (the standalone mode's bus).
    pub fn with_sink(mut self, sink: Arc<dyn JobSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// Runs until `shutdown` is cancelled or a critical task fails. Shutdown order: stop
    /// the catalog sync and the timer, drain in-flight publishes, stop the admin server.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application { settings, admin, readiness, registry, metrics, source, connection, sink } = self;
        let uses_pubsub = sink.is_none();
        if uses_pubsub {
            tracing::info!(
                admin = %admin.local_addr(),
                pubsub_endpoint = connection.emulator_endpoint.as_deref().unwrap_or("google"),
                project = %connection.project,
                jobs_topic = %settings.pubsub.jobs_topic,
                "controller starting"
            );
        } else {
            tracing::info!(admin = %admin.local_addr(), "controller starting on an in-process bus");
        }
        let sink: Arc<dyn JobSink> = match sink {
            Some(sink) => {
                readiness.set(CHECK_PUBSUB, true, "in-process bus");
                sink
            }
            None => {
                let ps = &settings.pubsub;
                if ps.create_topics {
                    connection.ensure_topic(&ps.jobs_topic).await?;
                }
                let ring = settings.signing.load(jobs_core::signing::KeyRing::parse).map_err(anyhow::Error::msg)?;
                match ring.signing_key() {
                    Some(key) => tracing::info!(key_id = %key.id, "job messages are signed"),
                    None => tracing::warn!("job messages are not signed: set signing.keyring or signing.keyring_file"),
                }
                Arc::new(crate::publisher::SignedPublisher {
                    topic: connection.publisher(&ps.jobs_topic, ps.publish_timeout).await?,
                    key: ring.signing_key().cloned(),
                })
            }
        };

        let timer = Arc::new(Mutex::new(Timer::new(settings.placement.strategy)));
        let timer_changed = Arc::new(Notify::new());
        // The state (watermark, last good catalog, lease, pauses); opened below, once the
        // admin server answers, and /readyz says what the controller waits for.
        let store: Arc<dyn StateStore> = if settings.state.url.expose().is_empty() {
            Arc::new(MemoryState::default())
        } else {
            Arc::new(PostgresState::new(&settings.state.url, &settings.state.schema).context("state.url")?)
        };
        // What outlives a leader's term: the admin API's view of the schedules, the syncs'
        // status, the pauses and the run durations learned so far.
        let (view, observed): (crate::admin_api::CatalogView, Arc<crate::durations::Observed>) = Default::default();
        let status: crate::sync::StatusView = Arc::default();
        let pauses: Arc<crate::pauses::Pauses> = Arc::default();
        let schedule_api = crate::admin_api::ScheduleApi {
            catalog: view.clone(),
            timer: timer.clone(),
            observed: observed.clone(),
            status: status.clone(),
            pauses: pauses.clone(),
            store: store.clone(),
            sink: sink.clone(),
            metrics: metrics.clone(),
            token: settings.admin.token().map_err(anyhow::Error::msg)?,
        };
        if schedule_api.token.is_empty() {
            tracing::warn!("operator API: trigger, pause and resume are refused until admin.token is set");
        }
        let router = admin::router(AdminState { readiness: readiness.clone(), registry })
            .merge(crate::admin_api::router(schedule_api))
            .fallback(crate::admin_api::no_route);
        let admin = admin.spawn(router);

        // One replica leads (publishes); the others wait for its lease. The watermark is
        // read once leading, after the previous leader's last save.
        let identity = service_kit::process_identity("controller");
        let lease = settings.state.leader_lease;
        // Each pass is one term as leader: wait for the lease, catch up from the watermark,
        // schedule and publish until shutdown or until the lease cannot be kept (the database
        // unreachable, another replica took it); then back to standby.
        let result = loop {
            match open_state(&*store, &readiness, &shutdown).await {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
            match lead(&*store, &identity, lease, &readiness, &shutdown).await {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
            // The watermark after the previous leader's last save, and the pauses taken while
            // this replica was not leading (a standby answers the API too). A database that
            // fails right now delays the term; it does not stop the controller.
            let (watermark, all_pauses) =
                match async { Ok::<_, StateError>((store.watermark().await?, store.pauses().await?)) }.await {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the state to start leading, retrying in 2s");
                        readiness.set(CHECK_LEADER, false, format!("cannot read the state to start leading: {e}"));
                        tokio::select! {
                            _ = shutdown.cancelled() => break Ok(()),
                            _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                        }
                    }
                };
            pauses.replace(all_pauses);
            // A term starts from nothing, like a fresh process: the first sync fills the timer
            // and the catch-up replays what was missed since the watermark.
            *timer.lock().unwrap_or_else(|p| p.into_inner()) = Timer::new(settings.placement.strategy);
            let mut syncer = Syncer::new(
                source.clone(),
                settings.catalog.policy(),
                timer.clone(),
                timer_changed.clone(),
                metrics.clone(),
            );
            (syncer.view, syncer.observed, syncer.status) = (view.clone(), observed.clone(), status.clone());
            syncer.placement = settings.placement.clone();
            syncer.guard =
                RemovalGuard::new(settings.catalog.max_removal_share, settings.catalog.removal_confirmations);
            let (runs_tx, runs_rx) = mpsc::channel::<DueRun>(10_000);
            tracing::info!(identity = %identity, watermark = ?watermark, "leading: scheduling and publishing");
            let progress = Arc::new(Progress::new(watermark));
            let work = shutdown.child_token();
            let mut tasks = Supervisor::new(work.clone());

            if uses_pubsub && !settings.pubsub.results_subscription.is_empty() {
                let ps = &settings.pubsub;
                if ps.create_topics {
                    if let Err(e) = connection.ensure_topic(&ps.results_topic).await {
                        break Err(e.into());
                    }
                    let spec = pubsub_bus::SubscriptionSpec::plain(&ps.results_subscription, &ps.results_topic);
                    if let Err(e) = connection.ensure_subscription(&spec).await {
                        break Err(e.into());
                    }
                }
                tasks.spawn(
                    "learn-durations",
                    learn_durations(
                        connection.clone(),
                        ps.results_subscription.clone(),
                        syncer.observed.clone(),
                        work.clone(),
                    ),
                );
            }
            tasks.spawn(
                "due-forecast",
                forecast_due(
                    timer.clone(),
                    syncer.observed.clone(),
                    settings.placement.default_duration,
                    metrics.clone(),
                    work.clone(),
                ),
            );
            let startup = Startup {
                store: store.clone(),
                watermark,
                progress: progress.clone(),
                runs: runs_tx.clone(),
                catchup: settings.catchup.clone(),
            };
            tasks.spawn(
                "catalog-sync",
                run_sync(syncer, startup, settings.catalog.sync_interval, readiness.clone(), work.clone()),
            );
            tasks.spawn(
                "timer",
                crate::timer::drive(
                    timer.clone(),
                    timer_changed.clone(),
                    runs_tx,
                    progress.clone(),
                    metrics.clone(),
                    work.clone(),
                ),
            );
            let publisher_done = CancellationToken::new();
            let done = publisher_done.clone();
            let publisher = run_publisher(
                sink.clone(),
                PublishSettings {
                    max_in_flight: settings.pubsub.max_in_flight,
                    initial_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(30),
                    drain_timeout: settings.pubsub.drain_timeout,
                },
                runs_rx,
                progress.clone(),
                pauses.clone(),
                metrics.clone(),
                work.clone(),
            );
            tasks.spawn("publisher", async move {
                let result = publisher.await;
                done.cancel();
                result
            });
            tasks.spawn("pauses", refresh_pauses(store.clone(), pauses.clone(), work.clone()));
            let watermark_saved = CancellationToken::new();
            tasks.spawn(
                "watermark",
                keep_watermark(
                    store.clone(),
                    progress,
                    settings.state.watermark_interval,
                    ShutdownOrder {
                        drain: settings.pubsub.drain_timeout + Duration::from_secs(5),
                        publisher_done,
                        watermark_saved: watermark_saved.clone(),
                    },
                    metrics.clone(),
                    work.clone(),
                ),
            );
            tasks.spawn(
                "leadership",
                keep_leading(
                    store.clone(),
                    identity.clone(),
                    lease,
                    settings.pubsub.drain_timeout + Duration::from_secs(10),
                    watermark_saved,
                    readiness.clone(),
                    work.clone(),
                ),
            );
            if uses_pubsub {
                tasks.spawn(
                    "pubsub-check",
                    check_pubsub(
                        connection.clone(),
                        settings.pubsub.jobs_topic.clone(),
                        readiness.clone(),
                        work.clone(),
                    ),
                );
            }

            match tasks.join().await {
                Err(e) if e.downcast_ref::<SteppedDown>().is_some() && !shutdown.is_cancelled() => {
                    metrics.leadership_lost.inc();
                    tracing::warn!(error = format!("{e:#}"), "stepped down; back to standby");
                    readiness.set(CHECK_LEADER, false, format!("stepped down: {e}"));
                }
                other => break other,
            }
        };
        admin.stop().await;
        tracing::info!("controller stopped");
        result
    }
}

/// Marks Pub/Sub ready once the jobs topic answers, then waits for shutdown (the supervisor
/// treats an early end as a failure).
async fn check_pubsub(
    connection: pubsub_bus::Connection,
    topic: String,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    connection.report_readiness(&topic, &stop, |ok, detail| readiness.set(CHECK_PUBSUB, ok, detail)).await;
    Ok(())
}

/// Opens the state store (migrations), retrying while its database does not answer; a
/// schema newer than this build stops the controller. `Ok(None)`: stopped while waiting;
/// `Ok(Some(watermark))` otherwise.
async fn open_state(store: &dyn StateStore, readiness: &Readiness, stop: &CancellationToken) -> anyhow::Result<bool> {
    loop {
        match store.open().await {
            Ok(what) => {
                tracing::info!(state = %what, "controller state opened");
                readiness.set(CHECK_STATE, true, what);
                return Ok(true);
            }
            Err(StateError::Newer(reason)) => {
                tracing::error!(reason = %reason, "refusing to start");
                anyhow::bail!("{reason}");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the controller state yet, retrying in 5s");
                readiness.set(CHECK_STATE, false, e.to_string());
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Waits until this replica holds the leader's lease (`Ok(false)`: stopped while waiting).
/// A standby is ready — it is where it should be — and `/readyz` names the leader.
async fn lead(
    store: &dyn StateStore,
    identity: &str,
    lease: Duration,
    readiness: &Readiness,
    stop: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut announced = None;
    loop {
        match store.lead(identity, lease).await {
            Ok(crate::state::Leadership::Leader { until }) => {
                readiness.set(CHECK_LEADER, true, format!("leader ({identity}) until {until}"));
                if announced.is_some() {
                    readiness.set(CHECK_CATALOG, false, "first catalog not loaded yet");
                    readiness.set(CHECK_PUBSUB, false, "Pub/Sub not checked yet");
                }
                return Ok(true);
            }
            Ok(crate::state::Leadership::Standby { holder, until }) => {
                if announced.as_ref() != Some(&holder) {
                    tracing::info!(leader = %holder, until = %until, "standby: another replica leads");
                    announced = Some(holder.clone());
                }
                // A standby is where it should be: ready, and it says who leads.
                readiness.set(CHECK_LEADER, true, format!("standby: {holder} leads until {until}"));
                readiness.set(CHECK_CATALOG, true, "standby: the leader syncs the catalog");
                readiness.set(CHECK_PUBSUB, true, "standby: the leader publishes");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the leader's lease");
                readiness.set(CHECK_LEADER, false, e.to_string());
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            _ = tokio::time::sleep((lease / 5).max(Duration::from_millis(500))) => {}
        }
    }
}

/// Re-reads the pauses every 5 s: a pause taken through another replica's API reaches the
/// leader within that time.
async fn refresh_pauses(
    store: Arc<dyn StateStore>,
    pauses: Arc<crate::pauses::Pauses>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        match store.pauses().await {
            Ok(all) => pauses.replace(all),
            Err(e) => tracing::warn!(error = %e, "cannot re-read the pauses; keeping the ones in force"),
        }
    }
}

/// Why a term as leader ended before shutdown: the process goes back to standby.
#[derive(Debug, thiserror::Error)]
enum SteppedDown {
    #[error("lost the leader's lease to {0}")]
    Lost(String),
    #[error("cannot renew the leader's lease: {0}")]
    CannotRenew(String),
}

/// Renews the lease every third of it. Losing it — another replica took it, or it could not
/// be renewed for two thirds of its length — ends this term (a [`SteppedDown`] error: the
/// term's tasks stop and the controller waits as a standby) before the lease can expire
/// under it. At shutdown, once the watermark is saved, it gives the lease up so that a
/// standby takes over at once.
async fn keep_leading(
    store: Arc<dyn StateStore>,
    identity: String,
    lease: Duration,
    drain: Duration,
    watermark_saved: CancellationToken,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(lease / 3) => {}
        }
        match store.lead(&identity, lease).await {
            Ok(crate::state::Leadership::Leader { until }) => {
                renewed = tokio::time::Instant::now();
                readiness.set(CHECK_LEADER, true, format!("leader ({identity}) until {until}"));
            }
            Ok(crate::state::Leadership::Standby { holder, .. }) => {
                tracing::error!(leader = %holder, "lost the leader's lease; stepping down");
                return Err(SteppedDown::Lost(holder).into());
            }
            Err(e) if renewed.elapsed() > lease * 2 / 3 => {
                tracing::error!(error = %e, "cannot renew the leader's lease; stepping down before it expires");
                return Err(SteppedDown::CannotRenew(e.to_string()).into());
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the leader's lease, retrying"),
        }
    }
    if tokio::time::timeout(drain, watermark_saved.cancelled()).await.is_err() {
        tracing::warn!("the watermark was not saved in time; giving the lease up anyway");
    }
    match store.resign(&identity).await {
        Ok(()) => tracing::info!("leader's lease given up"),
        Err(e) => tracing::warn!(error = %e, "cannot give the lease up; a standby takes over when it expires"),
    }
    Ok(())
}

/// What the first sync needs besides the syncer: the saved watermark and catalog, and where
/// the catch-up goes.
struct Startup {
    store: Arc<dyn StateStore>,
    watermark: Option<chrono::DateTime<chrono::Utc>>,
    progress: Arc<Progress>,
    runs: mpsc::Sender<DueRun>,
    catchup: crate::settings::CatchupSettings,
}

impl Startup {
    /// Hands the runs missed since the saved watermark to the publisher, then lets the
    /// watermark move on.
    async fn catch_up(&self, syncer: &Syncer, metrics: &Metrics) {
        let Some(watermark) = self.watermark else {
            self.progress.release();
            return;
        };
        let now = chrono::Utc::now();
        let schedules = syncer.view.read().unwrap_or_else(|p| p.into_inner()).clone();
        let (runs, counts) = {
            let timer = syncer.timer.lock().unwrap_or_else(|p| p.into_inner());
            missed_runs(&schedules, &timer, watermark, now, self.catchup.window, self.catchup.missed)
        };
        for (outcome, n) in [
            ("replayed", counts.replayed),
            ("dropped_by_policy", counts.dropped_by_policy),
            ("beyond_window", counts.beyond_window),
        ] {
            metrics.missed_runs.get_or_create(&crate::metrics::OutcomeLabels { outcome }).inc_by(n);
        }
        tracing::info!(
            watermark = %watermark,
            gap_secs = (now - watermark).num_seconds(),
            policy = ?self.catchup.missed,
            replayed = counts.replayed,
            dropped_by_policy = counts.dropped_by_policy,
            beyond_window = counts.beyond_window,
            "catch-up after a restart"
        );
        self.progress.queued(runs.iter().map(|r| r.placed));
        self.progress.release();
        for run in runs {
            if self.runs.send(run).await.is_err() {
                return; // stopping: the watermark keeps the rest for the next start
            }
        }
    }

    /// Saves the catalog in force as the last good one (in the catalog file's form).
    async fn save_catalog(&self, catalog: &crate::catalog::Catalog) {
        let schedules = catalog.schedules.clone();
        let n = schedules.len();
        let json = match tokio::task::spawn_blocking(move || crate::catalog::to_catalog_file(&schedules)).await {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise the last good catalog");
                return;
            }
        };
        match self.store.save_catalog(&json, n).await {
            Ok(()) => tracing::debug!(schedules = n, bytes = json.len(), "last good catalog saved"),
            Err(e) => tracing::warn!(error = %e, "cannot save the last good catalog"),
        }
    }

    /// The last good catalog, if one was saved and still reads.
    async fn saved_catalog(&self) -> Option<(crate::catalog::RawCatalog, chrono::DateTime<chrono::Utc>, i64)> {
        let saved = match self.store.catalog().await {
            Ok(saved) => saved?,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the last good catalog");
                return None;
            }
        };
        match serde_json::from_slice::<crate::catalog::CatalogFile>(&saved.json) {
            Ok(file) => Some((file.into(), saved.saved_at, saved.schedules)),
            Err(e) => {
                tracing::error!(error = %e, "the saved catalog does not read; ignoring it");
                None
            }
        }
    }
}

/// The first sync is retried with backoff until it succeeds — or, when the platform does not
/// answer, the controller starts from the last good catalog and keeps retrying the platform
/// on the sync cadence. Then the catch-up. Later syncs run on the configured cadence (a
/// tokio-cron-scheduler job) and a failure keeps the running schedules.
async fn run_sync(
    mut syncer: Syncer,
    startup: Startup,
    interval: Duration,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = syncer.metrics.clone();
    // A fresh start has no schedules in force to compare the platform's first answer with:
    // the mass-deletion guard compares it with the last good catalog instead.
    if syncer.view.read().unwrap_or_else(|p| p.into_inner()).is_empty()
        && let Ok(Some(saved)) = startup.store.catalog().await
        && let Some(n) = syncer.guard.set_baseline(&saved.json)
    {
        tracing::info!(schedules = n, saved_at = %saved.saved_at, "mass-deletion guard: comparing the first answer with the last good catalog");
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match syncer.sync_once().await {
            Ok((_, catalog)) => {
                readiness.set(
                    CHECK_CATALOG,
                    true,
                    format!("{} schedules, {} skipped items", catalog.schedules.len(), catalog.problems.len()),
                );
                startup.save_catalog(&catalog).await;
                startup.catch_up(&syncer, &metrics).await;
                syncer.place_and_install(&catalog).await;
                break;
            }
            Err(e) => {
                tracing::error!(attempt, error = %e, "first catalog sync failed");
                if attempt == 1
                    && let Some((raw, saved_at, n)) = startup.saved_catalog().await
                    && let Ok((_, catalog)) = syncer.apply(raw, "last_good_catalog").await
                {
                    let detail = format!(
                        "running from the last good catalog saved at {saved_at} ({n} schedules); the platform did \
                         not answer: {e}"
                    );
                    tracing::warn!(saved_at = %saved_at, schedules = n, error = %e, "starting from the last good catalog");
                    readiness.set(CHECK_CATALOG, true, detail);
                    startup.catch_up(&syncer, &metrics).await;
                    syncer.place_and_install(&catalog).await;
                    break;
                }
                readiness.set(CHECK_CATALOG, false, e.to_string());
            }
        }
        let wait =
            crate::platform::backoff_with_jitter(attempt, Duration::from_secs(1), interval.max(Duration::from_secs(2)));
        tokio::select! {
            _ = stop.cancelled() => {
                startup.progress.release();
                return Ok(());
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }

    let (tick_tx, mut ticks) = mpsc::channel::<()>(1);
    let mut cadence = tokio_cron_scheduler::JobScheduler::new().await.context("cannot start the sync cadence")?;
    let job = tokio_cron_scheduler::Job::new_repeated_async(interval, move |_, _| {
        let tick_tx = tick_tx.clone();
        Box::pin(async move {
            // A full channel means a sync is already pending: coalesce.
            let _ = tick_tx.try_send(());
        })
    })
    .context("cannot schedule the catalog sync")?;
    cadence.add(job).await.context("cannot schedule the catalog sync")?;
    cadence.start().await.context("cannot start the sync cadence")?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            tick = ticks.recv() => if tick.is_none() { break },
        }
        match syncer.sync_once().await {
            Ok((diff, catalog)) => {
                readiness.set(
                    CHECK_CATALOG,
                    true,
                    format!("{} schedules, {} skipped items", catalog.schedules.len(), catalog.problems.len()),
                );
                if diff.added + diff.changed + diff.removed > 0 {
                    startup.save_catalog(&catalog).await;
                }
                syncer.place_and_install(&catalog).await;
            }
            Err(e @ SyncError::HeldBack { .. }) => {
                readiness.set(CHECK_CATALOG, true, format!("running on the previous catalog: {e}"));
            }
            Err(e) => {
                // Keep the running schedules: still ready, but say so.
                readiness.set(CHECK_CATALOG, true, format!("last sync failed, running on the previous catalog: {e}"));
                tracing::error!(error = %e, "catalog sync failed, keeping the running schedules");
            }
        }
    }
    if let Err(e) = cadence.shutdown().await {
        tracing::warn!(error = %e, "sync cadence did not stop cleanly");
    }
    Ok(())
}

/// Saves the watermark every `interval` when it moved; at shutdown, waits (at most `drain`)
/// for the publisher to drain and saves it a last time.
/// The shutdown order between the publisher, the watermark and the leader's lease: the
/// watermark is saved after the publisher drains, the lease given up after that.
struct ShutdownOrder {
    /// How long to wait for the step before.
    drain: Duration,
    publisher_done: CancellationToken,
    watermark_saved: CancellationToken,
}

async fn keep_watermark(
    store: Arc<dyn StateStore>,
    progress: Arc<Progress>,
    interval: Duration,
    order: ShutdownOrder,
    metrics: Metrics,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let ShutdownOrder { drain, publisher_done, watermark_saved } = order;
    let mut saved: Option<chrono::DateTime<chrono::Utc>> = None;
    let save = |saved: &mut Option<chrono::DateTime<chrono::Utc>>| {
        let w = progress.watermark();
        let (store, metrics) = (store.clone(), metrics.clone());
        let previous = *saved;
        async move {
            let w = w.filter(|w| previous.is_none_or(|p| *w > p))?;
            match store.save_watermark(w).await {
                Ok(()) => {
                    metrics.watermark_lag_seconds.set((chrono::Utc::now() - w).num_milliseconds() as f64 / 1000.0);
                    Some(w)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot save the watermark");
                    None
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Some(w) = save(&mut saved).await {
            saved = Some(w);
        }
    }
    if tokio::time::timeout(drain, publisher_done.cancelled()).await.is_err() {
        tracing::warn!("the publisher did not drain in time; saving the watermark as it stands");
    }
    if let Some(w) = save(&mut saved).await {
        saved = Some(w);
    }
    tracing::info!(watermark = ?saved, in_flight = progress.in_flight(), "watermark saved at shutdown");
    watermark_saved.cancel();
    Ok(())
}

/// Every 15 s, the runs and the expected work-seconds due in the next 1, 5 and 15 minutes:
/// a scaling signal that leads the subscription backlog (which lags by minutes).
async fn forecast_due(
    timer: Arc<Mutex<Timer>>,
    observed: Arc<crate::durations::Observed>,
    default_duration: Duration,
    metrics: Metrics,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    const WINDOWS: [(&str, Duration); 3] =
        [("1m", Duration::from_secs(60)), ("5m", Duration::from_secs(300)), ("15m", Duration::from_secs(900))];
    let windows: Vec<Duration> = WINDOWS.iter().map(|(_, d)| *d).collect();
    loop {
        // Walk the timer in chunks, releasing its lock in between, so the forecast never
        // holds back a due run for long.
        const CHUNK: usize = 20_000;
        let now = chrono::Utc::now();
        let mut due = vec![(0u64, 0.0f64); WINDOWS.len()];
        let mut start = 0;
        loop {
            let (part, slots) = {
                let timer = timer.lock().unwrap_or_else(|p| p.into_inner());
                let part =
                    timer.due_within(now, &windows, |s| observed.expected(s, default_duration), start..start + CHUNK);
                (part, timer.slot_count())
            };
            for (total, (runs, work)) in due.iter_mut().zip(part) {
                total.0 += runs;
                total.1 += work;
            }
            start += CHUNK;
            if start >= slots {
                break;
            }
            tokio::task::yield_now().await;
        }
        for ((label, _), (runs, work)) in WINDOWS.iter().zip(due) {
            let l = crate::metrics::WindowLabels { window: label };
            metrics.due_runs.get_or_create(&l).set(runs as i64);
            metrics.due_work_seconds.get_or_create(&l).set(work);
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
    }
}

/// Reads the workers' result events and learns each schedule's run time. Every message is
/// acked: these are observations, and a bad one is only logged. The learning is optional:
/// if the subscription fails (missing, no permission) it says so and retries every 30 s
/// instead of stopping the controller.
async fn learn_durations(
    connection: pubsub_bus::Connection,
    subscription: String,
    observed: Arc<crate::durations::Observed>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let subscriber = connection.subscriber().await?;
    loop {
        let mut stream = subscriber.subscribe(connection.subscription_path(&subscription)).build();
        let failure = loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break None,
                next = stream.next() => next,
            };
            match next {
                Some(Ok((message, handler))) => {
                    match jobs_core::ResultEvent::decode(&message.data) {
                        Ok(event) => observed.record(&event),
                        Err(e) => tracing::warn!(error = %e, "undecodable result event ignored"),
                    }
                    handler.ack();
                }
                Some(Err(e)) => break Some(e.to_string()),
                None => break Some("the stream ended".to_owned()),
            }
        };
        stream.shutdown_token().shutdown().await;
        let Some(error) = failure else { return Ok(()) };
        tracing::warn!(subscription = %subscription, error = %error, "cannot read result events; run durations are not learned, retrying in 30 s");
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}
