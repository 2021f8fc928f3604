//! The standalone mode end to end: embedded catalog, seeded tenant databases, the real
//! controller and runner over the in-process bus, results in each tenant's SQLite file.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_runs_the_sample_catalog_and_writes_each_run_once() {
    let dir = std::env::temp_dir().join(format!("standalone-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = standalone::Options {
        data_dir: dir.clone(),
        admin: "127.0.0.1:0".parse().expect("addr"),
        summary_every: Duration::from_secs(60),
        ..standalone::Options::default()
    };
    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(12)).await;
        stopper.cancel();
    });
    let counters = standalone::run(options, shutdown).await.expect("runs and stops cleanly");
    let published = counters.published.load(Ordering::Relaxed);
    let succeeded = counters.succeeded.load(Ordering::Relaxed);
    assert!(published >= 5, "{}", counters.line());
    assert!(succeeded >= published - 2, "all but the last in-flight runs finished: {}", counters.line());
    assert_eq!(counters.failed.load(Ordering::Relaxed), 0, "{}", counters.line());
    assert_eq!(counters.dead_lettered.load(Ordering::Relaxed), 0, "{}", counters.line());

    // The 3-second heartbeat of umbrella: each run once, windows chained, its own tenant.
    let conn = rusqlite::Connection::open(dir.join("umbrella.sqlite3")).expect("umbrella db");
    let mut stmt = conn
        .prepare("SELECT _job_id, tenant, window_start, window_end FROM heartbeats ORDER BY window_end")
        .expect("heartbeats table");
    let rows: Vec<(String, String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(rows.len() >= 2, "{rows:?}");
    let ids: BTreeSet<_> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(ids.len(), rows.len(), "no run written twice");
    for pair in rows.windows(2) {
        assert_eq!(pair[1].2, pair[0].3, "windows chain without gaps");
    }
    assert!(rows.iter().all(|r| r.1 == "umbrella"));

    // The tabular view the README points at.
    let text = standalone::show(&dir, "acme", "revenue_by_store", 5).expect("show");
    assert!(text.starts_with("_job_id"), "{text}");
    assert!(text.lines().count() >= 2, "{text}");
    assert!(standalone::show(&dir, "acme", "no_such_table", 5).is_err());
    assert!(standalone::show(&dir, "../etc", "t", 5).is_err(), "tenant ids cannot escape the data directory");

    // A second start keeps the data and does not re-seed.
    assert!(standalone::prepare(&dir).expect("prepare").is_empty());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
