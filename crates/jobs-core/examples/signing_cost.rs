//! What signing costs per job message: HMAC-SHA256 signing (the controller) and verifying
//! (the worker) of a typical job message, against decoding it, which the worker does anyway.
//! Prints the median of several rounds of N messages each.
//!
//! `cargo run --release -p jobs-core --example signing_cost -- 100000`

use chrono::{TimeZone, Utc};
use jobs_core::signing::KeyRing;
use jobs_core::{JobId, JobMessage, Overlap, Trigger};
use std::collections::HashMap;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let nominal = Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, 0).single().expect("valid");
    let job = JobMessage {
        schema_version: JobMessage::SCHEMA_VERSION.into(),
        job_id: JobId::for_run("acme", "sales-insights", "hourly-revenue", nominal),
        tenant_id: "acme".into(),
        app_id: "sales-insights".into(),
        query_id: "hourly-revenue".into(),
        nominal_time: nominal,
        placed_time: nominal,
        window_start: nominal - chrono::Duration::hours(1),
        window_end: nominal,
        engine: "warehouse".into(),
        sql: "SELECT store, SUM(amount) AS revenue FROM sales WHERE ts >= @window_start AND ts < @window_end GROUP BY store"
            .repeat(3),
        destination: "revenue_by_store".into(),
        timeout_secs: 300,
        max_attempts: 3,
        overlap: Overlap::Skip,
        trigger: Trigger::Scheduled,
        published_at: nominal,
    };
    let body = job.encode();
    let ring = KeyRing::parse("k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").expect("a valid key ring");
    let key = ring.signing_key().expect("a key");
    let mut attributes: HashMap<String, String> =
        job.attributes(None).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    for (k, v) in key.sign(&body, |name| attributes.get(name).map(String::as_str)) {
        attributes.insert(k.to_owned(), v);
    }

    let median = |f: &dyn Fn() -> usize| -> f64 {
        let mut rounds: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                let mut sink = 0usize;
                for _ in 0..n {
                    sink = sink.wrapping_add(f());
                }
                std::hint::black_box(sink);
                t.elapsed().as_nanos() as f64 / n as f64
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        rounds[rounds.len() / 2]
    };
    let sign = median(&|| key.sign(&body, |name| attributes.get(name).map(String::as_str))[1].1.len());
    let verify = median(&|| ring.verify(&body, &attributes).map_or(0, str::len));
    let decode = median(&|| JobMessage::decode(&body).map_or(0, |j| j.sql.len()));
    println!("job message of {} bytes, medians of 7 rounds of {n}:", body.len());
    println!("| step | ns per message |");
    println!("| --- | --- |");
    println!("| sign (controller) | {sign:.0} |");
    println!("| verify (worker) | {verify:.0} |");
    println!("| decode (worker, for comparison) | {decode:.0} |");
}
