//! What a login per run costs: the median time of `SELECT 1` on a fresh connection (connect,
//! SCRAM authentication, query) against `SELECT 1` on a connection already open, which is
//! what a pooled login pays.
//!
//!   cargo run --release -p worker --example login_cost -- 'postgres://tenant_acme:PASSWORD@127.0.0.1:5432/db' [N]

use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or_else(|| anyhow::anyhow!("usage: login_cost URL [N]"))?;
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let mut fresh = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        let task = tokio::spawn(connection);
        client.simple_query("SELECT 1").await?;
        fresh.push(start.elapsed());
        drop(client);
        let _ = task.await;
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        client.simple_query("SELECT 1").await?;
        open.push(start.elapsed());
    }
    let (fresh, open) = (median(fresh), median(open));
    println!("{n} runs: fresh connection + SELECT 1: median {fresh:?}; open connection: median {open:?}");
    println!("a login per run costs {:?} more per run (median)", fresh.saturating_sub(open));
    Ok(())
}
