//! The PostgreSQL engine against a real PostgreSQL: tenant schemas, bound parameters,
//! read-only queries, idempotent writes and error classes.

use chrono::{DateTime, TimeZone, Utc};
use integration_tests::TestDb;
use jobs_core::{ErrorClass, JobId, JobMessage, Overlap, Trigger};
use service_kit::Secret;
use worker::engines::Engine;
use worker::engines::postgres::PostgresEngine;

fn at(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 4, h, 0, 0).single().expect("valid")
}

fn job(tenant: &str, sql: &str, nominal: DateTime<Utc>) -> JobMessage {
    JobMessage {
        schema_version: JobMessage::SCHEMA_VERSION.into(),
        job_id: JobId::for_run(tenant, "sales", "hourly", nominal),
        tenant_id: tenant.into(),
        app_id: "sales".into(),
        query_id: "hourly".into(),
        nominal_time: nominal,
        placed_time: nominal,
        window_start: nominal - chrono::Duration::hours(1),
        window_end: nominal,
        engine: "warehouse".into(),
        sql: sql.into(),
        destination: "revenue".into(),
        timeout_secs: 5,
        max_attempts: 3,
        overlap: Overlap::Skip,
        trigger: Trigger::Scheduled,
        published_at: nominal,
    }
}

const REVENUE: &str = "SELECT store, SUM(amount) AS revenue, COUNT(*)::int AS sales, @tenant_id AS tenant, \
     @window_start AS window_start FROM sales WHERE ts >= @window_start AND ts < @window_end GROUP BY store ORDER BY store";

/// Two tenants with the same table name and different data.
async fn two_tenants() -> (TestDb, PostgresEngine) {
    let db = TestDb::create().await;
    for (tenant, amounts) in [("acme", [10, 20, 30]), ("globex", [1, 2, 3])] {
        db.client
            .batch_execute(&format!(
                "CREATE SCHEMA tenant_{tenant};
                 CREATE TABLE tenant_{tenant}.sales (store text, amount numeric(12,2), ts timestamptz);
                 INSERT INTO tenant_{tenant}.sales VALUES
                   ('north', {a}.25, '2026-12-04T09:10:00Z'), ('north', {b}, '2026-12-04T09:50:00Z'),
                   ('south', {c}, '2026-12-04T09:30:00Z'), ('south', 1000, '2026-12-04T08:30:00Z');",
                a = amounts[0],
                b = amounts[1],
                c = amounts[2]
            ))
            .await
            .expect("seed");
    }
    let engine = PostgresEngine::new(&Secret::new(db.url.clone()), 4, "tenant_{tenant_id}", 1000).expect("engine");
    (db, engine)
}

async fn rows(db: &TestDb, sql: &str) -> Vec<tokio_postgres::Row> {
    db.client.query(sql, &[]).await.expect("query")
}

#[tokio::test]
async fn a_query_reads_its_own_tenants_window_and_writes_into_its_schema() {
    let (db, engine) = two_tenants().await;
    let out = engine.run(&job("acme", REVENUE, at(10))).await.expect("run");
    assert_eq!(out.rows_written, 2);
    let got = rows(
        &db,
        "SELECT store, revenue::text, sales, tenant, window_start, _job_id FROM tenant_acme.revenue ORDER BY store",
    )
    .await;
    let summary: Vec<(String, String, i32, String)> =
        got.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(
        summary,
        vec![("north".into(), "30.25".into(), 2, "acme".into()), ("south".into(), "30.00".into(), 1, "acme".into())],
        "only the 09:00-10:00 window of acme, exact numerics"
    );
    assert_eq!(got[0].get::<_, DateTime<Utc>>(4), at(9));
    assert_eq!(got[0].get::<_, String>(5), job("acme", REVENUE, at(10)).job_id.to_string());
    let globex = rows(
        &db,
        "SELECT 1 FROM information_schema.tables WHERE table_schema = 'tenant_globex' AND table_name = 'revenue'",
    )
    .await;
    assert!(globex.is_empty(), "nothing is written into another tenant's schema");
}

#[tokio::test]
async fn a_redelivered_run_replaces_its_rows_instead_of_appending() {
    let (db, engine) = two_tenants().await;
    for _ in 0..3 {
        engine.run(&job("acme", REVENUE, at(10))).await.expect("run");
    }
    let next = engine.run(&job("acme", REVENUE, at(11))).await.expect("next run");
    assert_eq!(next.rows_written, 0, "the 10:00-11:00 window has no sales");
    let per_run = rows(&db, "SELECT _job_id, count(*) FROM tenant_acme.revenue GROUP BY _job_id").await;
    let counts: Vec<(String, i64)> = per_run.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(counts, vec![(job("acme", REVENUE, at(10)).job_id.to_string(), 2)], "one copy of the run's rows");
}

#[tokio::test]
async fn concurrent_deliveries_of_one_run_write_it_once() {
    let (db, engine) = two_tenants().await;
    let engine = std::sync::Arc::new(engine);
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.run(&job("globex", REVENUE, at(10))).await })
        })
        .collect();
    for h in handles {
        h.await.expect("join").expect("run");
    }
    let n: i64 = rows(&db, "SELECT count(*) FROM tenant_globex.revenue").await[0].get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn sql_errors_are_permanent_and_name_the_problem() {
    let (_db, engine) = two_tenants().await;
    let err = engine.run(&job("acme", "SELECT * FROM no_such_table", at(10))).await.expect_err("fails");
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("no_such_table") && err.message.contains("42P01"), "{}", err.message);
    let err = engine.run(&job("acme", "SELEC 1", at(10))).await.expect_err("fails");
    assert_eq!(err.class, ErrorClass::Permanent);
}

#[tokio::test]
async fn a_query_cannot_modify_data() {
    let (db, engine) = two_tenants().await;
    let err = engine.run(&job("acme", "DELETE FROM sales RETURNING store", at(10))).await.expect_err("read-only");
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("read-only"), "{}", err.message);
    let n: i64 = rows(&db, "SELECT count(*) FROM tenant_acme.sales").await[0].get(0);
    assert_eq!(n, 4, "nothing was deleted");
}

#[tokio::test]
async fn a_statement_timeout_is_retryable() {
    let (_db, engine) = two_tenants().await;
    let mut slow = job("acme", "SELECT pg_sleep(3)::text AS slept", at(10));
    slow.timeout_secs = 1;
    let err = engine.run(&slow).await.expect_err("times out");
    assert_eq!(err.class, ErrorClass::Retryable, "{}", err.message);
    assert!(err.message.contains("57014"), "{}", err.message);
}

#[tokio::test]
async fn parameters_are_bound_not_spliced() {
    let (db, engine) = two_tenants().await;
    // A tenant id that would break out of a spliced string literal.
    db.client.batch_execute("CREATE SCHEMA \"tenant_x'; DROP TABLE tenant_acme.sales; --\"").await.expect("schema");
    let out = engine
        .run(&job(
            "x'; DROP TABLE tenant_acme.sales; --",
            "SELECT @tenant_id AS tenant, length(@tenant_id) AS n",
            at(10),
        ))
        .await
        .expect("run");
    assert_eq!(out.rows_written, 1);
    let n: i64 = rows(&db, "SELECT count(*) FROM tenant_acme.sales").await[0].get(0);
    assert_eq!(n, 4, "the sales table is still there");
}

#[tokio::test]
async fn unsupported_column_types_and_duplicate_names_are_explained() {
    let (_db, engine) = two_tenants().await;
    let err = engine.run(&job("acme", "SELECT '1 day'::interval AS span", at(10))).await.expect_err("unsupported");
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("span") && err.message.contains("interval") && err.message.contains("cast"),
        "{}",
        err.message
    );
    let err = engine.run(&job("acme", "SELECT 1, 2", at(10))).await.expect_err("duplicate");
    assert!(err.message.contains("alias"), "{}", err.message);
}

#[tokio::test]
async fn a_destination_that_names_another_schema_or_plays_quoting_tricks_is_refused_and_nothing_is_written() {
    let (db, engine) = two_tenants().await;
    for destination in [
        "tenant_globex.revenue",
        "\"tenant_globex\".\"revenue\"",
        "revenue\"; DROP TABLE sales; --",
        "pg_catalog_copy",
        "",
    ] {
        let mut j = job("acme", REVENUE, at(10));
        j.destination = destination.into();
        let err = engine.run(&j).await.expect_err(destination);
        assert_eq!(err.class, ErrorClass::Permanent, "{destination:?}: {}", err.message);
        assert!(err.message.contains("destination"), "the error names the field: {}", err.message);
    }
    let written = rows(
        &db,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema IN ('tenant_acme', 'tenant_globex') \
         AND table_name <> 'sales'",
    )
    .await;
    assert_eq!(written[0].get::<_, i64>(0), 0, "no table was created anywhere");
    let sales = rows(&db, "SELECT count(*) FROM tenant_acme.sales").await;
    assert_eq!(sales[0].get::<_, i64>(0), 4, "the tenant's data is untouched");
}
