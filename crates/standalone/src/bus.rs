//! The in-process bus that replaces Pub/Sub in the standalone mode: job messages travel as
//! the same encoded bytes and attributes, a nacked message comes back after a backoff with
//! its delivery attempt increased, and dead letters are appended to a JSON-lines file so
//! nothing is lost.

use async_trait::async_trait;
use jobs_core::{JobMessage, ResultEvent, RunStatus};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use worker::runner::{Disposition, Outputs, Runner};

/// One delivery of a message.
#[derive(Debug)]
pub struct Delivery {
    pub data: Vec<u8>,
    pub attributes: HashMap<String, String>,
    pub attempt: u32,
}

/// What the standalone mode counts for its progress lines.
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub rows_written: AtomicU64,
    pub in_flight: AtomicU64,
}

impl Counters {
    pub fn line(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "runs published {}, succeeded {}, failed {}, skipped {}, retried {}, dead-lettered {}, in flight {}, rows written {}",
            g(&self.published),
            g(&self.succeeded),
            g(&self.failed),
            g(&self.skipped),
            g(&self.retried),
            g(&self.dead_lettered),
            g(&self.in_flight),
            g(&self.rows_written)
        )
    }
}

/// The controller's side: publishes job messages onto the bus.
pub struct BusSink {
    pub tx: mpsc::UnboundedSender<Delivery>,
    pub counters: Arc<Counters>,
}

#[async_trait]
impl controller::publisher::JobSink for BusSink {
    async fn send(&self, job: &JobMessage, trace: &jobs_core::TraceParent) -> anyhow::Result<()> {
        let attributes = job.attributes(Some(trace)).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        self.tx
            .send(Delivery { data: job.encode(), attributes, attempt: 1 })
            .map_err(|_| anyhow::anyhow!("the in-process bus is closed"))?;
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The worker's outputs: a progress line per result, dead letters to a file.
pub struct LocalOutputs {
    pub counters: Arc<Counters>,
    pub dead_letter_file: PathBuf,
    pub file_lock: Mutex<()>,
}

#[async_trait]
impl Outputs for LocalOutputs {
    async fn publish_result(&self, event: &ResultEvent) -> anyhow::Result<()> {
        let counter = match event.status {
            RunStatus::Succeeded => &self.counters.succeeded,
            RunStatus::Failed => &self.counters.failed,
            RunStatus::Skipped => &self.counters.skipped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.counters.rows_written.fetch_add(event.rows_written, Ordering::Relaxed);
        Ok(())
    }

    async fn dead_letter(&self, data: Vec<u8>, attributes: HashMap<String, String>) -> anyhow::Result<()> {
        let line = serde_json::json!({
            "attributes": attributes,
            "data": String::from_utf8_lossy(&data),
        });
        let _guard = self.file_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.dead_letter_file)?;
        writeln!(file, "{line}")?;
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Delivers messages to the runner, at most `max_in_flight` at once; a nack comes back after
/// `1 s × 2^(attempt-1)` (at most 30 s). Stops taking messages when `stop` is cancelled and
/// lets in-flight runs finish within `grace`.
pub async fn consume(
    mut rx: mpsc::UnboundedReceiver<Delivery>,
    redeliver: mpsc::UnboundedSender<Delivery>,
    runner: Arc<Runner>,
    counters: Arc<Counters>,
    max_in_flight: usize,
    grace: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => p?,
        };
        let delivery = tokio::select! {
            _ = stop.cancelled() => break,
            d = rx.recv() => match d { Some(d) => d, None => break },
        };
        let (runner, counters, redeliver, stop) = (runner.clone(), counters.clone(), redeliver.clone(), stop.clone());
        tasks.spawn(async move {
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let disposition = runner.handle(&delivery.data, &delivery.attributes, delivery.attempt).await;
            counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            if disposition == Disposition::Nack {
                counters.retried.fetch_add(1, Ordering::Relaxed);
                let backoff =
                    Duration::from_secs(1u64 << delivery.attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30));
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {
                            let _ = redeliver.send(Delivery { attempt: delivery.attempt + 1, ..delivery });
                        }
                    }
                });
            }
        });
    }
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(running = tasks.len(), "grace period over, stopping in-flight runs");
        tasks.abort_all();
    }
    let pending = rx.len();
    if pending > 0 {
        tracing::warn!(
            pending,
            "job messages still queued at shutdown (the standalone bus keeps nothing across restarts)"
        );
    }
    Ok(())
}
