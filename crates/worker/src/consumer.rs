//! The pull loop: the worker asks Pub/Sub for exactly as many jobs as it has free slots
//! (`runner.max_in_flight`), so nothing waits in one worker's buffer while another is idle
//! and the backlog the autoscaler reads is the real one. Each job is handled by the
//! [`Runner`]; its lease is extended while it runs. On shutdown it stops pulling, lets
//! in-flight runs finish within the grace period, hands the rest back (nack) and flushes the
//! acks.

use crate::metrics::Metrics;
use crate::runner::{Disposition, Runner};
use pubsub_bus::pull::{LeaseKeeper, LeaseSettings, Puller};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct ConsumerSettings {
    pub max_in_flight: usize,
    pub grace_period: Duration,
    pub lease: LeaseSettings,
}

/// Waits between pulls that found nothing (a pull answers at once: see
/// [`pubsub_bus::pull::Puller::pull`]).
const IDLE_WAIT: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(500));
/// Waits after a failed pull (the bus unreachable).
const FAILURE_WAIT: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(15));

pub async fn run_consumer(
    puller: Puller,
    runner: Arc<Runner>,
    settings: ConsumerSettings,
    metrics: Metrics,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (keeper, keeper_task) = LeaseKeeper::start(puller.clone(), settings.lease);
    let permits = Arc::new(Semaphore::new(settings.max_in_flight));
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut idle_wait = IDLE_WAIT.0;
    let mut failure_wait = FAILURE_WAIT.0;
    let outcome: anyhow::Result<()> = loop {
        // Reap finished tasks so the set does not grow.
        while in_flight.try_join_next().is_some() {}
        let first = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            p = permits.clone().acquire_owned() => p?,
        };
        let mut slots = vec![first];
        while let Ok(p) = permits.clone().try_acquire_owned() {
            slots.push(p);
        }
        let pulled = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            pulled = puller.pull(slots.len()) => pulled,
        };
        let messages = match pulled {
            Ok(messages) => {
                failure_wait = FAILURE_WAIT.0;
                messages
            }
            Err(e) if e.permanent => break Err(anyhow::anyhow!("{e}")),
            Err(e) => {
                metrics.pull_failures.inc();
                tracing::warn!(error = %e, retry_in_ms = failure_wait.as_millis() as u64, "pull failed, retrying");
                if pause(&stop, &mut failure_wait, FAILURE_WAIT.1).await {
                    break Ok(());
                }
                continue;
            }
        };
        if messages.is_empty() {
            drop(slots);
            if pause(&stop, &mut idle_wait, IDLE_WAIT.1).await {
                break Ok(());
            }
            continue;
        }
        idle_wait = IDLE_WAIT.0;
        for message in messages {
            // Pub/Sub never hands over more than asked for; if it did, the extra goes back.
            let Some(permit) = slots.pop() else {
                keeper.hold(&message).nack();
                continue;
            };
            tracing::debug!(
                message_id = %message.message_id,
                ack_id = %message.ack_id,
                job_id = message.attributes.get(jobs_core::attributes::JOB_ID).map(String::as_str).unwrap_or(""),
                delivery_attempt = message.delivery_attempt,
                "pulled"
            );
            let lease = keeper.hold(&message);
            let runner = runner.clone();
            let metrics = metrics.clone();
            in_flight.spawn(async move {
                metrics.in_flight.inc();
                let attempt = message.delivery_attempt.unwrap_or(1).max(1);
                match runner.handle(&message.data, &message.attributes, attempt).await {
                    Disposition::Ack => lease.ack(),
                    Disposition::Nack => lease.nack(),
                }
                metrics.in_flight.dec();
                drop(permit);
            });
        }
    };

    // Drain: no more pulls; in-flight runs get the grace period.
    while in_flight.try_join_next().is_some() {}
    let running = in_flight.len();
    if running > 0 {
        tracing::info!(running, grace_secs = settings.grace_period.as_secs(), "waiting for in-flight runs");
    }
    let drained =
        tokio::time::timeout(settings.grace_period, async { while in_flight.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        let handed_back = in_flight.len();
        // Aborting a run drops its lease, which nacks the message: Pub/Sub redelivers it to
        // another worker, and the run ledger and the idempotent write make that harmless.
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
        metrics.in_flight.set(0);
        tracing::warn!(handed_back, "grace period over, handing in-flight runs back");
    }
    // The keeper flushes the last acks and nacks once its last handle is gone.
    drop(keeper);
    match tokio::time::timeout(Duration::from_secs(30), keeper_task).await {
        Ok(Ok(report)) => {
            tracing::info!(acked = report.acked, nacked = report.nacked, acks_lost = report.acks_lost, "acks flushed")
        }
        Ok(Err(e)) => tracing::error!(error = %e, "the lease keeper failed"),
        Err(_) => tracing::warn!("acks not flushed within 30s: those jobs are redelivered and the ledger acks them"),
    }
    outcome
}

/// Sleeps `wait` (doubling it up to `max` for next time); true when `stop` came first.
async fn pause(stop: &CancellationToken, wait: &mut Duration, max: Duration) -> bool {
    let stopped = tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(*wait) => false,
    };
    *wait = (*wait * 2).min(max);
    stopped
}
