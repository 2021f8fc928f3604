//! Named long-lived tasks under one cancellation tree. When a critical task ends before
//! shutdown was asked for, the supervisor says which one and why, and cancels the rest.

use std::future::Future;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct Supervisor {
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    shutdown: CancellationToken,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken) -> Self {
        Supervisor { tasks: JoinSet::new(), shutdown }
    }

    /// Spawns a named task. Every task is critical: if it ends while the service should
    /// still be running, the whole service stops.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.spawn(async move { (name, task.await) });
    }

    /// Waits for every task. Returns the first failure (a task that erred, panicked or
    /// ended before shutdown was asked for).
    pub async fn join(mut self) -> anyhow::Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        while let Some(joined) = self.tasks.join_next().await {
            let failure = match joined {
                Ok((name, Ok(()))) if self.shutdown.is_cancelled() => {
                    tracing::debug!(task = name, "task stopped");
                    None
                }
                Ok((name, Ok(()))) => Some(anyhow::anyhow!("task {name} ended unexpectedly")),
                Ok((name, Err(e))) => Some(e.context(format!("task {name} failed"))),
                Err(e) => Some(anyhow::anyhow!("a task panicked: {e}")),
            };
            if let Some(e) = failure {
                tracing::error!(error = format!("{e:#}"), "critical task stopped, shutting down the rest");
                self.shutdown.cancel();
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
            _ = term => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        }
        token.cancel();
    });
}
