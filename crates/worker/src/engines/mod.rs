//! Query engines. An engine runs a job's query in the tenant's own scope with the named
//! parameters bound, and writes the result rows to the destination idempotently by job id
//! (a re-run replaces its own rows and never appends a second copy).

pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use async_trait::async_trait;
use jobs_core::{ErrorClass, JobMessage};

/// What a successful run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutput {
    pub rows_written: u64,
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

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Runs `job` and writes its rows. The caller bounds the time it may take.
    async fn run(&self, job: &JobMessage) -> Result<RunOutput, RunError>;

    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> Result<(), RunError>;
}
