//! Query engines. An engine runs a job's query in the tenant's own scope with the named
//! parameters bound, and writes the result rows to the destination idempotently by job id
//! (a re-run replaces its own rows and never appends a second copy).

pub mod bigquery;
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use async_trait::async_trait;
use jobs_core::{ErrorClass, JobMessage};

/// What a successful run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunOutput {
    pub rows_written: u64,
    /// Bytes the engine read to answer the query, when it reports them (BigQuery).
    pub bytes_processed: Option<u64>,
    /// Slot time the query took, in milliseconds, when the engine reports it (BigQuery).
    pub slot_millis: Option<u64>,
}

impl RunOutput {
    pub fn rows(rows_written: u64) -> Self {
        RunOutput { rows_written, ..Default::default() }
    }
}

/// A failed run, with the class that decides retry or dead-letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RunError {
    pub class: ErrorClass,
    pub message: String,
}

impl RunError {
    pub fn retryable(message: impl Into<String>) -> Self {
        RunError { class: ErrorClass::Retryable, message: message.into() }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        RunError { class: ErrorClass::Permanent, message: message.into() }
    }
}

/// How much one run's result may hold, so that one query cannot exhaust a worker's memory:
/// the engines stop reading at the first row past either limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultLimits {
    pub max_rows: usize,
    /// The result's size, counted as the bytes of its values (text and JSON at their length,
    /// numbers and times at 8 bytes, NULL at 1).
    pub max_bytes: usize,
}

impl Default for ResultLimits {
    fn default() -> Self {
        ResultLimits { max_rows: 1_000_000, max_bytes: 256 * 1024 * 1024 }
    }
}

impl ResultLimits {
    /// `Err` once `rows` rows of `bytes` bytes in all are over a limit; the message names
    /// the setting (`engines.<engine>.max_rows` / `.max_result_bytes`).
    pub fn check(&self, engine: &str, rows: usize, bytes: usize) -> Result<(), RunError> {
        if rows > self.max_rows {
            return Err(RunError::permanent(format!(
                "the query returned more than {} rows, the limit engines.{engine}.max_rows",
                self.max_rows
            )));
        }
        if bytes > self.max_bytes {
            return Err(RunError::permanent(format!(
                "the query's result is over {} bytes, the limit engines.{engine}.max_result_bytes (after {rows} rows)",
                self.max_bytes
            )));
        }
        Ok(())
    }
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Runs `job` and writes its rows. `attempt` counts the runs of this job id (1 for the
    /// first). The caller bounds the time it may take.
    async fn run(&self, job: &JobMessage, attempt: u32) -> Result<RunOutput, RunError>;

    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> Result<(), RunError>;
}
