//! The streaming-pull loop: at most `max_in_flight` jobs in hand at once (the client does
//! not enforce flow control and the emulator ignores it), each handled by the [`Runner`].
//! On shutdown it stops pulling, lets in-flight runs finish within the grace period, hands
//! the rest back (nack) and flushes the acks.

use crate::metrics::Metrics;
use crate::runner::{Disposition, Runner};
use pubsub_bus::{Handler, MessageStream};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct ConsumerSettings {
    pub max_in_flight: usize,
    pub grace_period: Duration,
}

pub async fn run_consumer(
    mut stream: MessageStream,
    runner: Arc<Runner>,
    settings: ConsumerSettings,
    metrics: Metrics,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(settings.max_in_flight));
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let outcome: anyhow::Result<()> = loop {
        // Reap finished tasks so the set does not grow.
        while in_flight.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            p = permits.clone().acquire_owned() => p?,
        };
        let next = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            next = stream.next() => next,
        };
        let (message, handler) = match next {
            Some(Ok(pair)) => pair,
            Some(Err(e)) => break Err(anyhow::anyhow!("the subscription stream failed: {e}")),
            None => break Err(anyhow::anyhow!("the subscription stream ended")),
        };
        let runner = runner.clone();
        let metrics = metrics.clone();
        in_flight.spawn(async move {
            metrics.in_flight.inc();
            let attempt = handler.delivery_attempt().map_or(1, |a| a.max(1) as u32);
            let disposition = runner.handle(&message.data, &message.attributes, attempt).await;
            settle(handler, disposition);
            metrics.in_flight.dec();
            drop(permit);
        });
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
        // Dropping a handler nacks its message: Pub/Sub redelivers it to another worker,
        // and the idempotent write makes a second run harmless.
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
        metrics.in_flight.set(0);
        tracing::warn!(handed_back, "grace period over, handing in-flight runs back");
    }
    stream.shutdown_token().shutdown().await;
    outcome
}

fn settle(handler: Handler, disposition: Disposition) {
    match disposition {
        Disposition::Ack => handler.ack(),
        Disposition::Nack => handler.nack(),
    }
}
