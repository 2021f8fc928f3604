//! What the worker does with one job message: decode it, run it on its engine, publish the
//! result event, and decide ack, nack or dead-letter. Independent of the bus so it can be
//! driven by Pub/Sub in production and by an in-process bus in the standalone mode.

use crate::engines::{Engine, RunError, RunOutput};
use crate::ledger::{Claim, Ledger, Outcome};
use crate::metrics::{EngineLabels, Metrics, OutcomeLabels};
use async_trait::async_trait;
use chrono::Utc;
use jobs_core::{ErrorClass, JobMessage, ResultEvent, RunStatus, TraceParent, attributes as attr};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Where the worker's outputs go: the results and dead-letter topics in production.
#[async_trait]
pub trait Outputs: Send + Sync + 'static {
    async fn publish_result(&self, event: &ResultEvent) -> anyhow::Result<()>;
    async fn dead_letter(&self, data: Vec<u8>, attributes: HashMap<String, String>) -> anyhow::Result<()>;
}

/// What to tell the bus about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done (succeeded, or dead-lettered with its reason).
    Ack,
    /// Hand it back for another attempt after the subscription's backoff.
    Nack,
}

/// The run ledger as the runner uses it: where, under which identity, with which lease.
#[derive(Clone)]
pub struct LedgerAccess {
    pub ledger: Arc<dyn Ledger>,
    /// This worker's identity in leases.
    pub worker: String,
    /// How long a claim holds without being extended; the runner extends it every third.
    pub lease: Duration,
}

/// Bytes a job message may have unless configured otherwise (`runner.max_message_bytes`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

pub struct Runner {
    engines: BTreeMap<String, Arc<dyn Engine>>,
    outputs: Arc<dyn Outputs>,
    metrics: Metrics,
    max_timeout: Duration,
    ledger: LedgerAccess,
    /// The keys job messages must be signed with; `None`: not verified.
    keys: Option<Arc<jobs_core::signing::KeyRing>>,
    max_message_bytes: usize,
}

/// Aborts a task when dropped (the lease heartbeat ends with its run, however that ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Runner {
    pub fn new(
        engines: BTreeMap<String, Arc<dyn Engine>>,
        outputs: Arc<dyn Outputs>,
        metrics: Metrics,
        max_timeout: Duration,
        ledger: LedgerAccess,
    ) -> Self {
        Runner {
            engines,
            outputs,
            metrics,
            max_timeout,
            ledger,
            keys: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Dead-letters job messages over `bytes` without reading them.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Verifies every message against `keys` before anything else (an empty ring: no check).
    pub fn with_keys(mut self, keys: jobs_core::signing::KeyRing) -> Self {
        self.keys = (!keys.is_empty()).then(|| Arc::new(keys));
        self
    }

    /// Handles one delivery. `delivery` is Pub/Sub's delivery attempt (1 for the first);
    /// the attempts that count against `max_attempts` are the runs the ledger saw start.
    pub async fn handle(&self, data: &[u8], attributes: &HashMap<String, String>, delivery: u32) -> Disposition {
        // The run continues the controller's trace (W3C traceparent in the attributes).
        let trace = attributes.get(attr::TRACEPARENT).and_then(|v| TraceParent::parse(v));
        let trace_id = trace.map(|t| t.trace_id_hex());
        let span = tracing::info_span!(
            "run",
            job_id = attributes.get(attr::JOB_ID).map(String::as_str).unwrap_or(""),
            trace_id = trace_id.as_deref().unwrap_or(""),
        );
        if let Some(t) = trace {
            service_kit::telemetry::set_remote_parent(&span, t.trace_id, t.span_id, t.sampled);
        }
        self.handle_traced(data, attributes, delivery, trace_id.as_deref()).instrument(span).await
    }

    async fn handle_traced(
        &self,
        data: &[u8],
        attributes: &HashMap<String, String>,
        delivery: u32,
        trace_id: Option<&str>,
    ) -> Disposition {
        let attempt = delivery;
        if data.len() > self.max_message_bytes {
            let reason = format!(
                "the message has {} bytes, over the limit of {} bytes (runner.max_message_bytes)",
                data.len(),
                self.max_message_bytes
            );
            tracing::warn!(
                message_job_id = attributes.get(attr::JOB_ID).map(String::as_str).unwrap_or(""),
                bytes = data.len(),
                limit = self.max_message_bytes,
                "job message too large, dead-lettering it without reading it"
            );
            self.metrics.jobs.get_or_create(&OutcomeLabels { outcome: "rejected", error_class: "too_large" }).inc();
            return self.dead_letter(data, attributes, "too_large", &reason, attempt).await;
        }
        // Before anything else: a message not signed with a known key is never executed.
        if let Some(keys) = &self.keys
            && let Err(rejection) = keys.verify(data, attributes)
        {
            tracing::warn!(
                message_job_id = attributes.get(attr::JOB_ID).map(String::as_str).unwrap_or(""),
                reason = rejection.code(),
                error = %rejection,
                "job message refused, dead-lettering it without running it"
            );
            self.metrics.jobs.get_or_create(&OutcomeLabels { outcome: "rejected", error_class: "signature" }).inc();
            return self.dead_letter(data, attributes, rejection.code(), &rejection.to_string(), attempt).await;
        }
        let job = match JobMessage::decode(data) {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(
                    message_job_id = attributes.get(attr::JOB_ID).map(String::as_str).unwrap_or(""),
                    attempt,
                    error = %e,
                    "undecodable job message, dead-lettering"
                );
                self.count("undecodable", ErrorClass::Decode);
                return self.dead_letter(data, attributes, "decode_error", &e.to_string(), attempt).await;
            }
        };
        let attempt = match self.claim(&job, delivery, trace_id).await {
            Ok(attempt) => attempt,
            Err(disposition) => return disposition,
        };
        let started_at = Utc::now();
        let heartbeat = AbortOnDrop(tokio::spawn(heartbeat(self.ledger.clone(), job.job_id.clone())));
        let result = self.run(&job, attempt).await;
        drop(heartbeat);
        let finished_at = Utc::now();
        let elapsed = (finished_at - started_at).to_std().unwrap_or_default();
        self.metrics
            .run_duration
            .get_or_create(&EngineLabels { engine: self.engine_label(&job.engine) })
            .observe(elapsed.as_secs_f64());

        let event = |status, output: RunOutput, error: Option<&RunError>| ResultEvent {
            rows_written: output.rows_written,
            bytes_processed: output.bytes_processed,
            slot_millis: output.slot_millis,
            error_class: error.map(|e| e.class),
            error_message: error.map(|e| e.message.clone()),
            ..result_event(&job, trace_id, status, attempt, started_at, finished_at)
        };
        match result {
            Ok(output) => {
                if let Err(e) = self.outputs.publish_result(&event(RunStatus::Succeeded, output, None)).await {
                    return self.output_failed(&job, "result", e);
                }
                // Recorded after the event, so that a crash in between repeats the
                // (idempotent) run rather than losing its event.
                self.record(&job, &Outcome::Succeeded { rows_written: output.rows_written }).await;
                self.metrics.rows_written.inc_by(output.rows_written);
                self.count("succeeded", None);
                tracing::info!(
                    job_id = %job.job_id,
                    tenant_id = %job.tenant_id,
                    app_id = %job.app_id,
                    query_id = %job.query_id,
                    nominal = %job.nominal_time,
                    attempt,
                    rows = output.rows_written,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "run succeeded"
                );
                Disposition::Ack
            }
            Err(e) if e.class == ErrorClass::Retryable && attempt < job.max_attempts => {
                self.count("retried", e.class);
                self.record(&job, &Outcome::Failed { class: e.class, message: e.message.clone() }).await;
                tracing::warn!(
                    job_id = %job.job_id,
                    tenant_id = %job.tenant_id,
                    query_id = %job.query_id,
                    attempt,
                    max_attempts = job.max_attempts,
                    error = %e,
                    "run failed, will retry"
                );
                Disposition::Nack
            }
            Err(e) => {
                let reason = if e.class == ErrorClass::Retryable { "attempts_exhausted" } else { "permanent_error" };
                tracing::error!(
                    job_id = %job.job_id,
                    tenant_id = %job.tenant_id,
                    app_id = %job.app_id,
                    query_id = %job.query_id,
                    attempt,
                    reason,
                    error = %e,
                    "run failed, dead-lettering"
                );
                if let Err(err) =
                    self.outputs.publish_result(&event(RunStatus::Failed, RunOutput::default(), Some(&e))).await
                {
                    return self.output_failed(&job, "result", err);
                }
                self.record(&job, &Outcome::Failed { class: e.class, message: e.message.clone() }).await;
                self.count("failed", e.class);
                self.dead_letter(data, attributes, reason, &e.message, attempt).await
            }
        }
    }

    /// Claims the job in the ledger: `Ok(attempt)` to run it, else what to tell the bus.
    async fn claim(&self, job: &JobMessage, delivery: u32, trace_id: Option<&str>) -> Result<u32, Disposition> {
        let l = &self.ledger;
        let claim = match l.ledger.claim(job, &l.worker, l.lease).await {
            Ok(claim) => claim,
            Err(e) => {
                self.metrics.ledger_failures.inc();
                tracing::warn!(job_id = %job.job_id, error = %e, "cannot claim the run, handing the message back");
                return Err(Disposition::Nack);
            }
        };
        match claim {
            Claim::Run { attempt } => Ok(attempt),
            Claim::Succeeded { rows_written, finished_at } => {
                self.count("duplicate", None);
                tracing::info!(
                    job_id = %job.job_id,
                    tenant_id = %job.tenant_id,
                    query_id = %job.query_id,
                    delivery,
                    rows_written,
                    finished_at = ?finished_at,
                    "run already succeeded, acked without running it again"
                );
                Err(Disposition::Ack)
            }
            Claim::Skipped => {
                self.count("duplicate", None);
                tracing::info!(job_id = %job.job_id, delivery, "run already skipped, acked");
                Err(Disposition::Ack)
            }
            Claim::RunningElsewhere { owner, lease_expires_at } => {
                self.count("running_elsewhere", None);
                tracing::info!(
                    job_id = %job.job_id,
                    owner = %owner,
                    lease_expires_at = %lease_expires_at,
                    delivery,
                    "run is running on another worker, handing the message back"
                );
                Err(Disposition::Nack)
            }
            Claim::PreviousRunning { previous } => Err(self.skip(job, trace_id, &previous, delivery).await),
        }
    }

    /// Overlap `skip`: a result event says the run was skipped and why, then the ledger.
    async fn skip(
        &self,
        job: &JobMessage,
        trace_id: Option<&str>,
        previous: &jobs_core::JobId,
        delivery: u32,
    ) -> Disposition {
        let reason = format!("skipped: the previous run {previous} of this schedule is still running (overlap: skip)");
        let now = Utc::now();
        let event = ResultEvent {
            error_message: Some(reason.clone()),
            ..result_event(job, trace_id, RunStatus::Skipped, delivery, now, now)
        };
        if let Err(e) = self.outputs.publish_result(&event).await {
            return self.output_failed(job, "result", e);
        }
        self.record(job, &Outcome::Skipped { reason }).await;
        self.count("skipped", None);
        tracing::info!(
            job_id = %job.job_id,
            tenant_id = %job.tenant_id,
            app_id = %job.app_id,
            query_id = %job.query_id,
            nominal = %job.nominal_time,
            previous = %previous,
            "run skipped: the previous run of its schedule is still running"
        );
        Disposition::Ack
    }

    /// Records an outcome; a failure is logged and counted (the lease then expires, and the
    /// job id can be claimed again, which the idempotent write makes harmless).
    async fn record(&self, job: &JobMessage, outcome: &Outcome) {
        if let Err(e) = self.ledger.ledger.finish(job, &self.ledger.worker, outcome).await {
            self.metrics.ledger_failures.inc();
            tracing::warn!(job_id = %job.job_id, error = %e, "cannot record the outcome in the run ledger");
        }
    }

    async fn run(&self, job: &JobMessage, attempt: u32) -> Result<RunOutput, RunError> {
        jobs_core::names::check_destination(&job.destination)
            .map_err(|r| RunError::permanent(format!("destination {:?} {r}", job.destination)))?;
        let engine = self
            .engines
            .get(&job.engine)
            .ok_or_else(|| RunError::permanent(format!("engine {:?} is not configured on this worker", job.engine)))?;
        let limit = Duration::from_secs(job.timeout_secs).min(self.max_timeout);
        // The engine enforces the timeout itself (statement_timeout); this bound also
        // covers connecting and writing.
        match tokio::time::timeout(limit + Duration::from_secs(5), engine.run(job, attempt)).await {
            Ok(result) => result,
            Err(_) => {
                Err(RunError::retryable(format!("the run did not finish within its timeout of {}s", limit.as_secs())))
            }
        }
    }

    async fn dead_letter(
        &self,
        data: &[u8],
        attributes: &HashMap<String, String>,
        reason: &str,
        error: &str,
        attempt: u32,
    ) -> Disposition {
        let mut attrs = attributes.clone();
        attrs.insert(attr::DEAD_LETTER_REASON.into(), reason.into());
        attrs.insert(attr::DEAD_LETTER_ERROR.into(), crate::truncate(error, 1024));
        attrs.insert(attr::DEAD_LETTER_ATTEMPT.into(), attempt.to_string());
        match self.outputs.dead_letter(data.to_vec(), attrs).await {
            Ok(()) => {
                self.metrics.dead_lettered.inc();
                Disposition::Ack
            }
            Err(e) => {
                self.metrics.output_failures.inc();
                tracing::error!(
                    reason,
                    error = format!("{e:#}"),
                    "dead-letter publish failed, handing the message back"
                );
                Disposition::Nack
            }
        }
    }

    fn output_failed(&self, job: &JobMessage, what: &'static str, e: anyhow::Error) -> Disposition {
        self.metrics.output_failures.inc();
        tracing::error!(job_id = %job.job_id, output = what, error = format!("{e:#}"), "publish failed, handing the message back");
        Disposition::Nack
    }

    fn count(&self, outcome: &'static str, class: impl Into<Option<ErrorClass>>) {
        let error_class = class.into().map_or("none", ErrorClass::as_str);
        self.metrics.jobs.get_or_create(&OutcomeLabels { outcome, error_class }).inc();
    }

    /// Engine label for metrics: configured names only, so a hostile message cannot mint series.
    fn engine_label(&self, engine: &str) -> String {
        if self.engines.contains_key(engine) { engine.to_owned() } else { "unknown".to_owned() }
    }
}

/// The result event of `job` with no rows and no error; callers fill in the rest.
fn result_event(
    job: &JobMessage,
    trace_id: Option<&str>,
    status: RunStatus,
    attempt: u32,
    started_at: chrono::DateTime<Utc>,
    finished_at: chrono::DateTime<Utc>,
) -> ResultEvent {
    ResultEvent {
        schema_version: ResultEvent::SCHEMA_VERSION.to_owned(),
        job_id: job.job_id.clone(),
        tenant_id: job.tenant_id.clone(),
        app_id: job.app_id.clone(),
        query_id: job.query_id.clone(),
        nominal_time: job.nominal_time,
        status,
        attempt,
        rows_written: 0,
        bytes_processed: None,
        slot_millis: None,
        started_at,
        finished_at,
        error_class: None,
        error_message: None,
        trigger: job.trigger,
        trace_id: trace_id.map(str::to_owned),
    }
}

/// Extends the run's lease every third of it until aborted.
async fn heartbeat(l: LedgerAccess, job_id: jobs_core::JobId) {
    let every = (l.lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        match l.ledger.extend(&job_id, &l.worker, l.lease).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(job_id = %job_id, "this worker no longer holds the run's lease"),
            Err(e) => tracing::warn!(job_id = %job_id, error = %e, "cannot extend the run's lease"),
        }
    }
}
