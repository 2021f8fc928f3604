//! Receive-and-ack rate of the worker's unary pull against the emulator named by
//! `PUBSUB_EMULATOR_HOST`, for several pull sizes (the worker asks for its free slots, so
//! `runner.max_in_flight` bounds the size). Publishes N messages of 300 bytes, then pulls
//! them, acking through the lease keeper, and prints messages per second.
//!
//! `cargo run --release -p pubsub-bus --example pull_rate -- 20000 8,100`

use pubsub_bus::pull::{LeaseKeeper, LeaseSettings};
use pubsub_bus::{Connection, SubscriptionSpec};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(Ok(20_000), |a| a.parse())?;
    let sizes: Vec<usize> = match args.get(2) {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![8, 100],
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    anyhow::ensure!(env.contains_key(pubsub_bus::EMULATOR_HOST_VAR), "set PUBSUB_EMULATOR_HOST");
    let stamp = std::process::id();
    let bus = Connection::from_env(format!("pull-rate-{stamp}"), &env);
    println!("| pull size | messages | seconds | messages/s |");
    println!("| --- | --- | --- | --- |");
    for size in sizes {
        let topic = format!("rate-{stamp}-{size}");
        bus.ensure_topic(&topic).await?;
        let spec = SubscriptionSpec::plain(format!("{topic}-sub"), topic.clone());
        bus.ensure_subscription(&spec).await?;
        let publisher = bus.publisher(&topic, Duration::from_secs(30)).await?;
        let body = vec![b'x'; 300];
        let sends: Vec<_> = (0..n).map(|_| publisher.publish(body.clone(), [("k", "v")])).collect();
        for r in futures::future::join_all(sends).await {
            r?;
        }
        let puller = bus.puller(&spec.name)?;
        let settings = LeaseSettings {
            ack_deadline: Duration::from_secs(60),
            max_lease: Duration::from_secs(600),
            flush_every: Duration::from_millis(50),
        };
        let (keeper, task) = LeaseKeeper::start(puller.clone(), settings);
        let started = Instant::now();
        let mut got = 0;
        while got < n && started.elapsed() < Duration::from_secs(300) {
            for m in puller.pull(size).await? {
                keeper.hold(&m).ack();
                got += 1;
            }
        }
        drop(keeper);
        let report = task.await?;
        let secs = started.elapsed().as_secs_f64();
        println!("| {size} | {got} (acked {}) | {secs:.2} | {:.0} |", report.acked, got as f64 / secs);
    }
    Ok(())
}
