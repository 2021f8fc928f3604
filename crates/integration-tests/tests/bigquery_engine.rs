//! The BigQuery engine against the BigQuery emulator (bqemulator): each tenant's query runs
//! in its own dataset with the named parameters bound, its rows land in the tenant's
//! partitioned destination table once per run, a re-run replaces them, and BigQuery's
//! failures are classified with BigQuery's own message.

use chrono::{DateTime, TimeZone, Utc};
use integration_tests::bigquery::{Emulator, exclusive};
use integration_tests::unique;
use jobs_core::{ErrorClass, JobId, JobMessage, Overlap, Trigger};
use std::collections::BTreeMap;
use worker::engines::Engine;
use worker::engines::bigquery::BigQueryEngine;

fn at(hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 4, hour, 0, 0).single().expect("valid")
}

fn job(tenant: &str, sql: &str, nominal: DateTime<Utc>) -> JobMessage {
    JobMessage {
        schema_version: JobMessage::SCHEMA_VERSION.into(),
        job_id: JobId::for_run(tenant, "shop", "hourly-revenue", nominal),
        tenant_id: tenant.into(),
        app_id: "shop".into(),
        query_id: "hourly-revenue".into(),
        nominal_time: nominal,
        placed_time: nominal,
        window_start: nominal - chrono::Duration::hours(1),
        window_end: nominal,
        engine: "lake".into(),
        sql: sql.into(),
        destination: "revenue_by_store".into(),
        timeout_secs: 30,
        max_attempts: 3,
        overlap: Overlap::Skip,
        trigger: Trigger::Scheduled,
        published_at: nominal,
    }
}

const REVENUE: &str = "SELECT store, SUM(amount) AS revenue, @tenant_id AS tenant, @window_end AS window_end \
                       FROM orders WHERE ordered_at >= @window_start AND ordered_at < @window_end GROUP BY store;";

/// A dataset prefix of this test's own, and its tenants' datasets with an `orders` table.
async fn tenants(bq: &Emulator, orders: &[(&str, &str)]) -> String {
    let prefix = unique("t").replace('-', "_");
    let mut by_tenant: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tenant, row) in orders {
        by_tenant.entry(tenant).or_default().push(row);
    }
    for (tenant, rows) in by_tenant {
        let dataset = format!("{prefix}_{tenant}");
        bq.create_dataset(&dataset).await;
        bq.execute(&format!(
            "CREATE TABLE `{dataset}.orders` AS SELECT * FROM UNNEST([{}])",
            rows.iter().map(|r| format!("STRUCT({r})")).collect::<Vec<_>>().join(", ")
        ))
        .await;
    }
    prefix
}

/// `STRUCT` fields of one order.
fn order(store: &str, amount: i64, at: &str) -> String {
    format!("'{store}' AS store, {amount} AS amount, TIMESTAMP '{at}' AS ordered_at")
}

/// The destination's rows as (job id, store, revenue, tenant), sorted.
async fn written(bq: &Emulator, dataset: &str) -> Vec<(String, String, i64, String)> {
    let mut rows: Vec<_> = bq
        .rows(dataset, "revenue_by_store")
        .await
        .into_iter()
        .map(|r| {
            let cell = |i: usize| r[i].clone().unwrap_or_default();
            (cell(0), cell(2), cell(3).parse().expect("revenue"), cell(4))
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn runs_write_their_rows_once_into_the_tenants_partitioned_table_and_a_rerun_replaces_them() {
    integration_tests::init_logs();
    let _emulator = exclusive().await;
    let bq = Emulator::default();
    let acme = [
        ("acme", order("north", 10, "2026-12-04 09:10:00")),
        ("acme", order("north", 5, "2026-12-04 09:20:00")),
        ("acme", order("south", 7, "2026-12-04 09:30:00")),
        ("acme", order("south", 100, "2026-12-04 10:30:00")),
    ];
    let seed: Vec<(&str, &str)> = acme.iter().map(|(t, r)| (*t, r.as_str())).collect();
    let prefix = tenants(&bq, &seed).await;
    let dataset = format!("{prefix}_acme");
    let engine = bq.engine(&prefix);

    let ten = job("acme", REVENUE, at(10));
    let out = engine.run(&ten, 1).await.expect("run");
    assert_eq!(out.rows_written, 2, "two stores");
    assert!(out.bytes_processed.is_some(), "BigQuery reports the bytes processed (0 on the emulator)");
    let table = bq.table(&dataset, "revenue_by_store").await.expect("the destination table was created");
    assert_eq!(table["timePartitioning"]["field"], "_scheduled_for", "{table}");
    assert_eq!(table["timePartitioning"]["type"], "DAY", "{table}");
    let names: Vec<&str> =
        table["schema"]["fields"].as_array().expect("fields").iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, ["_job_id", "_scheduled_for", "store", "revenue", "tenant", "window_end"]);
    let id10 = ten.job_id.to_string();
    assert_eq!(
        written(&bq, &dataset).await,
        [(id10.clone(), "north".into(), 15, "acme".into()), (id10.clone(), "south".into(), 7, "acme".into())],
        "the parameters were bound: only 09:00-10:00, the tenant's id"
    );
    let scheduled_for = &bq.rows(&dataset, "revenue_by_store").await[0][1];
    let micros: i64 = scheduled_for.as_deref().and_then(|v| v.parse().ok()).expect("a timestamp");
    assert_eq!(micros, at(10).timestamp_micros(), "_scheduled_for is the run's nominal time");

    // The next run adds its own rows.
    let eleven = job("acme", REVENUE, at(11));
    assert_eq!(engine.run(&eleven, 1).await.expect("next run").rows_written, 1);
    let id11 = eleven.job_id.to_string();

    // New data for 09:00-10:00, then the 10:00 run again (a second attempt): its rows are
    // replaced, the 11:00 run's are untouched, nothing is doubled.
    bq.execute(&format!(
        "INSERT INTO `{dataset}.orders` (store, amount, ordered_at) VALUES ('north', 1, TIMESTAMP '2026-12-04 09:59:00')"
    ))
    .await;
    engine.run(&ten, 2).await.expect("re-run");
    engine.run(&ten, 3).await.expect("and again");
    assert_eq!(
        written(&bq, &dataset).await,
        [
            (id10.clone(), "north".into(), 16, "acme".into()),
            (id10, "south".into(), 7, "acme".into()),
            (id11, "south".into(), 100, "acme".into()),
        ]
    );
}

#[tokio::test]
async fn each_tenant_reads_and_writes_its_own_dataset_only() {
    integration_tests::init_logs();
    let _emulator = exclusive().await;
    let bq = Emulator::default();
    let seed = [
        ("acme", order("north", 10, "2026-12-04 09:10:00")),
        ("globex", order("east", 1000, "2026-12-04 09:10:00")),
        ("globex", order("west", 2000, "2026-12-04 09:20:00")),
    ];
    let seed: Vec<(&str, &str)> = seed.iter().map(|(t, r)| (*t, r.as_str())).collect();
    let prefix = tenants(&bq, &seed).await;
    let engine = bq.engine(&prefix);

    assert_eq!(engine.run(&job("globex", REVENUE, at(10)), 1).await.expect("globex").rows_written, 2);
    assert!(bq.table(&format!("{prefix}_acme"), "revenue_by_store").await.is_none(), "nothing in acme's dataset");
    let globex = written(&bq, &format!("{prefix}_globex")).await;
    assert_eq!(
        globex.iter().map(|r| (r.1.as_str(), r.2, r.3.as_str())).collect::<Vec<_>>(),
        [("east", 1000, "globex"), ("west", 2000, "globex")]
    );
    assert_eq!(engine.run(&job("acme", REVENUE, at(10)), 1).await.expect("acme").rows_written, 1);
    assert_eq!(written(&bq, &format!("{prefix}_acme")).await.len(), 1);
    assert_eq!(written(&bq, &format!("{prefix}_globex")).await, globex, "globex's rows untouched");

    // A tenant id that cannot name a dataset is refused before anything runs.
    let err = engine.run(&job("acme-eu", REVENUE, at(10)), 1).await.expect_err("bad dataset name");
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains(&format!("{prefix}_acme-eu")), "{}", err.message);
}

#[tokio::test]
async fn bad_queries_fail_permanently_with_bigquerys_message_and_change_nothing() {
    integration_tests::init_logs();
    let _emulator = exclusive().await;
    let bq = Emulator::default();
    let row = order("north", 10, "2026-12-04 09:10:00");
    let prefix = tenants(&bq, &[("acme", row.as_str())]).await;
    let dataset = format!("{prefix}_acme");
    let engine = bq.engine(&prefix);

    for (sql, expected) in [
        ("SELEC 1", "invalidQuery"),
        ("SELECT * FROM no_such_table", "no_such_table"),
        ("SELECT 1 AS _job_id", "reserved"),
        ("DELETE FROM orders WHERE TRUE", "one SELECT statement"),
        ("CREATE TABLE stolen AS SELECT 1 AS x", "one SELECT statement"),
        // Closing the MERGE's parentheses to smuggle a second statement in.
        ("SELECT 1 AS x) AS q) AS s ON FALSE WHEN NOT MATCHED THEN INSERT ROW; DROP TABLE orders; SELECT (1", ""),
    ] {
        let err = engine.run(&job("acme", sql, at(10)), 1).await.expect_err(sql);
        assert_eq!(err.class, ErrorClass::Permanent, "{sql}: {}", err.message);
        assert!(err.message.contains(expected), "{sql}: {}", err.message);
        assert!(
            err.message.contains("BigQuery") || expected == "reserved" || expected.starts_with("one"),
            "{sql}: {}",
            err.message
        );
    }
    assert_eq!(bq.rows(&dataset, "orders").await.len(), 1, "the tenant's table is intact");
    assert!(bq.table(&dataset, "stolen").await.is_none());
    assert!(bq.table(&dataset, "revenue_by_store").await.is_none(), "no destination for failed runs");
}

#[tokio::test]
async fn an_unreachable_bigquery_is_a_retryable_error() {
    let _emulator = exclusive().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = listener.local_addr().expect("addr");
    drop(listener);
    let mut config = Emulator::default().config("nowhere");
    config.endpoint = format!("http://{closed}");
    let engine = BigQueryEngine::new(config).expect("engine");
    let err = engine.run(&job("acme", "SELECT 1 AS one", at(10)), 1).await.expect_err("unreachable");
    assert_eq!(err.class, ErrorClass::Retryable, "{}", err.message);
    assert!(err.message.contains("did not answer"), "{}", err.message);
    assert!(!err.message.contains(&closed.port().to_string()), "no URL in the error: {}", err.message);
    assert!(engine.ping().await.is_err());
    assert!(Emulator::default().engine("any").ping().await.is_ok(), "the emulator answers the ping");
}
