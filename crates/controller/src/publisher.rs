//! Publishes due runs as job messages. A failed publish is counted and retried with
//! backoff until it succeeds or the controller stops; nothing is dropped silently. The runs
//! of a paused tenant or schedule are counted and let go.

use crate::metrics::Metrics;
use crate::platform::backoff_with_jitter;
use crate::timer::DueRun;
use async_trait::async_trait;
use chrono::Utc;
use jobs_core::{JobId, JobMessage, TraceParent, Trigger};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Where job messages go: the Pub/Sub jobs topic in production. `trace` goes with the
/// message as its `traceparent` attribute.
#[async_trait]
pub trait JobSink: Send + Sync + 'static {
    async fn send(&self, job: &JobMessage, trace: &TraceParent) -> anyhow::Result<()>;
}

/// The jobs topic; each message signed with the newest key of the ring (`signing.*`), or
/// unsigned when no key is configured.
pub struct SignedPublisher {
    pub topic: pubsub_bus::TopicPublisher,
    pub key: Option<jobs_core::signing::SigningKey>,
}

#[async_trait]
impl JobSink for SignedPublisher {
    async fn send(&self, job: &JobMessage, trace: &TraceParent) -> anyhow::Result<()> {
        let body = job.encode();
        let mut attributes = job.attributes(Some(trace));
        if let Some(key) = &self.key {
            let signature =
                key.sign(&body, |name| attributes.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str()));
            attributes.extend(signature);
        }
        self.topic.publish(body, attributes).await?;
        Ok(())
    }
}

/// The trace of a run published inside `span`: the span's own ids when spans are exported
/// (so the worker's span joins it), else new random ids.
pub fn trace_of(span: &tracing::Span) -> TraceParent {
    match service_kit::telemetry::span_trace(span) {
        Some((trace_id, span_id)) => TraceParent::new(trace_id, span_id),
        None => TraceParent::new(fastrand::u128(..), fastrand::u64(..)),
    }
}

/// Builds the job message of a due run.
pub fn job_message(run: &DueRun, trigger: Trigger) -> JobMessage {
    let s = &run.schedule;
    JobMessage {
        schema_version: JobMessage::SCHEMA_VERSION.to_owned(),
        job_id: JobId::for_run(&s.key.tenant_id, &s.key.app_id, &s.key.query_id, run.nominal),
        tenant_id: s.key.tenant_id.to_string(),
        app_id: s.key.app_id.to_string(),
        query_id: s.key.query_id.to_string(),
        nominal_time: run.nominal,
        placed_time: run.placed,
        window_start: run.window_start,
        window_end: run.nominal,
        engine: s.engine.to_string(),
        sql: s.sql.to_string(),
        destination: s.destination.to_string(),
        timeout_secs: s.timeout.as_secs().max(1),
        max_attempts: s.max_attempts,
        overlap: s.overlap,
        trigger,
        published_at: Utc::now(),
    }
}

#[derive(Debug, Clone)]
pub struct PublishSettings {
    pub max_in_flight: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long in-flight publishes may take to finish once shutdown starts.
    pub drain_timeout: Duration,
}

/// Takes due runs from `runs` and publishes them until `stop` is cancelled, then drains.
pub async fn run_publisher(
    sink: Arc<dyn JobSink>,
    settings: PublishSettings,
    mut runs: mpsc::Receiver<DueRun>,
    progress: Arc<crate::catchup::Progress>,
    pauses: Arc<crate::pauses::Pauses>,
    metrics: Metrics,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut in_flight: JoinSet<bool> = JoinSet::new();
    // Retries stop when `retry_stop` is cancelled: at the end of the drain.
    let retry_stop = CancellationToken::new();
    let publish = |run: DueRun| {
        publish_until_done(sink.clone(), run, settings.clone(), progress.clone(), metrics.clone(), retry_stop.clone())
    };
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            run = runs.recv(), if in_flight.len() < settings.max_in_flight => match run {
                Some(run) if paused(&run, &pauses, &progress, &metrics) => {}
                Some(run) => {
                    metrics.publish_queue.set(runs.len() as i64);
                    in_flight.spawn(publish(run));
                }
                None => break,
            },
        }
    }
    // Drain: the runs already handed over are published too, and every publish gets the
    // drain timeout to finish.
    runs.close();
    let mut queued = 0u64;
    while let Ok(run) = runs.try_recv() {
        if !paused(&run, &pauses, &progress, &metrics) {
            queued += 1;
            in_flight.spawn(publish(run));
        }
    }
    if queued > 0 {
        tracing::info!(runs = queued, "publishing the runs already due before stopping");
    }
    let drained = tokio::time::timeout(settings.drain_timeout, async {
        let mut failed = 0u64;
        while let Some(done) = in_flight.join_next().await {
            if !matches!(done, Ok(true)) {
                failed += 1;
            }
        }
        failed
    })
    .await;
    retry_stop.cancel();
    let unfinished = match drained {
        Ok(failed) => failed,
        Err(_) => {
            let n = in_flight.len() as u64;
            in_flight.abort_all();
            n
        }
    };
    let lost = unfinished;
    metrics.runs_unpublished_at_shutdown.inc_by(lost);
    if lost > 0 {
        tracing::warn!(runs = lost, "runs not published at shutdown; a restart's catch-up replays them");
    }
    Ok(())
}

/// Lets `run` go when its tenant or schedule is paused (counted; the watermark moves past
/// it); true if it did.
fn paused(
    run: &DueRun,
    pauses: &crate::pauses::Pauses,
    progress: &crate::catchup::Progress,
    metrics: &Metrics,
) -> bool {
    if !pauses.holds(&run.schedule.key) {
        return false;
    }
    progress.published(run.placed);
    metrics.runs_paused.inc();
    tracing::debug!(schedule = %run.schedule.key, nominal = %run.nominal, "run not published: paused");
    true
}

async fn publish_until_done(
    sink: Arc<dyn JobSink>,
    run: DueRun,
    settings: PublishSettings,
    progress: Arc<crate::catchup::Progress>,
    metrics: Metrics,
    stop: CancellationToken,
) -> bool {
    let span = tracing::info_span!("publish run", schedule = %run.schedule.key, nominal = %run.nominal);
    let trace = trace_of(&span);
    publish_with_retries(sink, run, trace, settings, progress, metrics, stop).instrument(span).await
}

async fn publish_with_retries(
    sink: Arc<dyn JobSink>,
    run: DueRun,
    trace: TraceParent,
    settings: PublishSettings,
    progress: Arc<crate::catchup::Progress>,
    metrics: Metrics,
    stop: CancellationToken,
) -> bool {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let job = job_message(&run, Trigger::Scheduled);
        match sink.send(&job, &trace).await {
            Ok(()) => {
                progress.published(run.placed);
                metrics.runs_published.inc();
                tracing::debug!(
                    job_id = %job.job_id,
                    trace_id = %trace.trace_id_hex(),
                    schedule = %run.schedule.key,
                    nominal = %run.nominal,
                    "run published"
                );
                return true;
            }
            Err(e) => {
                metrics.publish_failures.inc();
                tracing::warn!(
                    job_id = %job.job_id,
                    schedule = %run.schedule.key,
                    attempt,
                    error = format!("{e:#}"),
                    "publish failed, retrying"
                );
            }
        }
        let wait = backoff_with_jitter(attempt, settings.initial_backoff, settings.max_backoff);
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
