//! The run ledger: one row per job id, so that every run's effect happens once although
//! Pub/Sub delivers at least once and workers die.
//!
//! Before a run starts, the worker *claims* its job id: the claim either hands it a lease
//! (the job id is not running anywhere, or its previous holder's lease expired), or says why
//! not — it already succeeded or was skipped (ack, do nothing), another worker holds a live
//! lease (hand the message back), or, under overlap `skip`, the previous run of the same
//! schedule still runs (record the run as skipped). A running worker extends its lease; the
//! outcome is recorded when the run ends. PostgreSQL in production ([`postgres`]); an
//! in-memory ledger for the standalone mode and unit tests ([`memory`]).

pub mod memory;
pub mod postgres;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jobs_core::{ErrorClass, JobId, JobMessage};
use std::time::Duration;

/// What a claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This worker holds the lease: run it. `attempt` counts the runs of this job id that
    /// started, this one included.
    Run { attempt: u32 },
    /// The job id already succeeded: ack without running.
    Succeeded { rows_written: u64, finished_at: Option<DateTime<Utc>> },
    /// The job id was skipped before (overlap): ack without running.
    Skipped,
    /// Another worker holds a live lease on this job id: do not start it a second time.
    RunningElsewhere { owner: String, lease_expires_at: DateTime<Utc> },
    /// Overlap `skip`: the previous run of the same schedule still runs under a live lease.
    PreviousRunning { previous: JobId },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded { rows_written: u64 },
    Failed { class: ErrorClass, message: String },
    Skipped { reason: String },
}

impl Outcome {
    fn state(&self) -> &'static str {
        match self {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Skipped { .. } => "skipped",
        }
    }
}

/// A ledger error (the database is unreachable, say): the message is handed back.
#[derive(Debug, Clone, thiserror::Error)]
#[error("run ledger: {0}")]
pub struct LedgerError(pub String);

#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Claims `job` for `worker` with a lease of `lease` (see [`Claim`]).
    async fn claim(&self, job: &JobMessage, worker: &str, lease: Duration) -> Result<Claim, LedgerError>;

    /// Extends `worker`'s lease on `job_id`; `false` when the worker no longer holds it.
    async fn extend(&self, job_id: &JobId, worker: &str, lease: Duration) -> Result<bool, LedgerError>;

    /// Records how `job`'s run ended (a skip is recorded without a claim).
    async fn finish(&self, job: &JobMessage, worker: &str, outcome: &Outcome) -> Result<(), LedgerError>;

    /// Answers when the ledger is reachable (for `/readyz`).
    async fn ping(&self) -> Result<(), LedgerError>;
}

/// The worker's identity in leases (see [`service_kit::process_identity`]).
pub fn worker_identity() -> String {
    service_kit::process_identity("worker")
}
