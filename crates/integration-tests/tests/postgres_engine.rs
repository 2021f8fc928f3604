//! The PostgreSQL engine against a real PostgreSQL: tenant schemas and roles (provisioned with
//! `deploy/sql/`), bound parameters, read-only queries, idempotent writes, result limits and
//! error classes.

use chrono::{DateTime, TimeZone, Utc};
use integration_tests::TestDb;
use jobs_core::{ErrorClass, JobId, JobMessage, Overlap, Trigger};
use service_kit::Secret;
use worker::engines::postgres::{PostgresEngine, TenantLogins, TenantScope};
use worker::engines::{Engine, ResultLimits};

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

const SALES: &str = "CREATE TABLE tenant_{t}.sales (store text, amount numeric(12,2), ts timestamptz);
     INSERT INTO tenant_{t}.sales VALUES
       ('north', {a}.25, '2026-12-04T09:10:00Z'), ('north', {b}, '2026-12-04T09:50:00Z'),
       ('south', {c}, '2026-12-04T09:30:00Z'), ('south', 1000, '2026-12-04T08:30:00Z')";

/// Provisions acme and globex (same table name, different data).
async fn provision_two(db: &TestDb) {
    for (tenant, amounts) in [("acme", [10, 20, 30]), ("globex", [1, 2, 3])] {
        let seed = SALES
            .replace("{t}", tenant)
            .replace("{a}", &amounts[0].to_string())
            .replace("{b}", &amounts[1].to_string())
            .replace("{c}", &amounts[2].to_string());
        db.provision_tenant(tenant, &seed).await;
    }
}

fn engine_at(url: &str, db: &TestDb, limits: ResultLimits) -> PostgresEngine {
    let scope = TenantScope { schema_template: "tenant_{tenant_id}".into(), logins: Some(db.tenant_logins()) };
    PostgresEngine::new(&Secret::new(url), 4, scope, limits).expect("engine")
}

/// Two tenants with the same table name and different data.
async fn two_tenants() -> (TestDb, PostgresEngine) {
    let db = TestDb::create().await;
    provision_two(&db).await;
    let engine = engine_at(&db.url, &db, ResultLimits { max_rows: 1000, max_bytes: 1 << 20 });
    (db, engine)
}

async fn rows(db: &TestDb, sql: &str) -> Vec<tokio_postgres::Row> {
    db.client.query(sql, &[]).await.expect("query")
}

#[tokio::test]
async fn a_query_reads_its_own_tenants_window_and_writes_into_its_schema() {
    let (db, engine) = two_tenants().await;
    let out = engine.run(&job("acme", REVENUE, at(10)), 1).await.expect("run");
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
        engine.run(&job("acme", REVENUE, at(10)), 1).await.expect("run");
    }
    let next = engine.run(&job("acme", REVENUE, at(11)), 1).await.expect("next run");
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
            tokio::spawn(async move { engine.run(&job("globex", REVENUE, at(10)), 1).await })
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
    let err = engine.run(&job("acme", "SELECT * FROM no_such_table", at(10)), 1).await.expect_err("fails");
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("no_such_table") && err.message.contains("42P01"), "{}", err.message);
    let err = engine.run(&job("acme", "SELEC 1", at(10)), 1).await.expect_err("fails");
    assert_eq!(err.class, ErrorClass::Permanent);
}

#[tokio::test]
async fn a_query_cannot_modify_data() {
    let (db, engine) = two_tenants().await;
    let err = engine.run(&job("acme", "DELETE FROM sales RETURNING store", at(10)), 1).await.expect_err("read-only");
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
    let err = engine.run(&slow, 1).await.expect_err("times out");
    assert_eq!(err.class, ErrorClass::Retryable, "{}", err.message);
    assert!(err.message.contains("57014"), "{}", err.message);
}

#[tokio::test]
async fn parameters_are_bound_not_spliced() {
    let (db, engine) = two_tenants().await;
    // A tenant id that would break out of a spliced string literal.
    let tenant = "x';DROP TABLE tenant_acme.sales;--";
    db.provision_tenant(tenant, "").await;
    let out =
        engine.run(&job(tenant, "SELECT @tenant_id AS tenant, length(@tenant_id) AS n", at(10)), 1).await.expect("run");
    assert_eq!(out.rows_written, 1);
    let n: i64 = rows(&db, "SELECT count(*) FROM tenant_acme.sales").await[0].get(0);
    assert_eq!(n, 4, "the sales table is still there");
}

#[tokio::test]
async fn unsupported_column_types_and_duplicate_names_are_explained() {
    let (_db, engine) = two_tenants().await;
    let err = engine.run(&job("acme", "SELECT '1 day'::interval AS span", at(10)), 1).await.expect_err("unsupported");
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("span") && err.message.contains("interval") && err.message.contains("cast"),
        "{}",
        err.message
    );
    let err = engine.run(&job("acme", "SELECT 1, 2", at(10)), 1).await.expect_err("duplicate");
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
        let err = engine.run(&j, 1).await.expect_err(destination);
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

#[tokio::test]
async fn a_tenants_query_cannot_read_or_become_another_tenant() {
    let (db, engine) = two_tenants().await;
    let globex = db.tenant_role("globex");
    for sql in [
        "SELECT count(*) AS n FROM tenant_globex.sales".to_owned(),
        // What a role switch (SET LOCAL ROLE) would let through: become the other tenant,
        // then read its table from a function that runs SQL.
        format!(
            "SELECT set_config('role', '{globex}', true) AS r, \
             query_to_xml('SELECT * FROM tenant_globex.sales', false, false, '')::text AS leak"
        ),
        "SELECT query_to_xml('SELECT * FROM tenant_globex.sales', false, false, '')::text AS leak".to_owned(),
        "SELECT count(*) AS n FROM pg_read_file('/etc/passwd')".to_owned(),
    ] {
        let err = engine.run(&job("acme", &sql, at(10)), 1).await.expect_err(&sql);
        assert_eq!(err.class, ErrorClass::Permanent, "{sql}: {}", err.message);
        assert!(err.message.contains("permission denied") && err.message.contains("42501"), "{sql}: {}", err.message);
    }
    // Its own schema it reads, and its result lands there, owned by its role.
    assert_eq!(engine.run(&job("acme", REVENUE, at(10)), 1).await.expect("own data").rows_written, 2);
    let owner =
        rows(&db, "SELECT tableowner::text FROM pg_tables WHERE schemaname = 'tenant_acme' AND tablename = 'revenue'")
            .await;
    assert_eq!(owner[0].get::<_, String>(0), db.tenant_role("acme"));
}

#[tokio::test]
async fn the_workers_own_role_reads_no_tenants_data_and_owns_only_its_ledger() {
    let db = TestDb::create().await;
    let worker_role = format!("{}_worker", db.name);
    let script = integration_tests::psql_script(
        integration_tests::WORKER_ROLE_SQL,
        &[("worker_role", &worker_role), ("worker_password", "worker-test-password")],
    );
    db.client.batch_execute(&script).await.expect("worker role");
    provision_two(&db).await;
    let url = db.url_as(&worker_role, "worker-test-password");
    let engine = engine_at(&url, &db, ResultLimits { max_rows: 1000, max_bytes: 1 << 20 });

    // Through the engine (the worker's URL for the host; each run logs in as its tenant),
    // each tenant reads its own data.
    assert_eq!(engine.run(&job("acme", REVENUE, at(10)), 1).await.expect("acme").rows_written, 2);
    assert_eq!(engine.run(&job("globex", REVENUE, at(10)), 1).await.expect("globex").rows_written, 2);
    engine.ping().await.expect("the worker's own login answers the readiness check");

    // The worker's own login reads no tenant's data, cannot become a tenant, creates nothing.
    let worker = integration_tests::connect(&url).await;
    for sql in [
        "SELECT count(*) FROM tenant_acme.sales".to_owned(),
        "SELECT count(*) FROM tenant_globex.revenue".to_owned(),
        format!("SET ROLE \"{}\"", db.tenant_role("acme")),
        "CREATE TABLE public.stash (x int)".to_owned(),
        "CREATE SCHEMA stash".to_owned(),
    ] {
        let err = worker.batch_execute(&sql).await.expect_err(&sql);
        let code = err.as_db_error().map(|e| e.code().code().to_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
    }
    // Its run ledger it does own.
    let ledger =
        worker::ledger::postgres::PostgresLedger::new(&Secret::new(url.clone()), "sqo_ledger", 2).expect("ledger");
    ledger.migrate().await.expect("the worker's role migrates its ledger");
}

#[tokio::test]
async fn a_tenant_without_a_provisioned_role_or_with_another_key_fails_permanently_saying_what_to_do() {
    let (db, engine) = two_tenants().await;
    db.client.batch_execute("CREATE SCHEMA tenant_initech").await.expect("schema only");
    let err = engine.run(&job("initech", "SELECT 1 AS one", at(10)), 1).await.expect_err("no role");
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(
        err.message.contains(&db.tenant_role("initech")) && err.message.contains("Tenant isolation"),
        "{}",
        err.message
    );
    let scope = TenantScope {
        schema_template: "tenant_{tenant_id}".into(),
        logins: Some(TenantLogins { password_key: Secret::new("another-key-0123456789"), ..db.tenant_logins() }),
    };
    let wrong_key =
        PostgresEngine::new(&Secret::new(db.url.clone()), 2, scope, ResultLimits::default()).expect("engine");
    let err = wrong_key.run(&job("acme", "SELECT 1 AS one", at(10)), 1).await.expect_err("wrong password");
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(err.message.contains("tenant-password"), "{}", err.message);
    assert!(!err.message.contains(db.tenant_logins().password_for(&db.tenant_role("acme")).expose()));
}

#[tokio::test]
async fn a_result_over_its_row_or_byte_limit_is_refused_naming_the_limit() {
    let db = TestDb::create().await;
    provision_two(&db).await;
    let engine = engine_at(&db.url, &db, ResultLimits { max_rows: 50, max_bytes: 10_000 });
    let err = engine.run(&job("acme", "SELECT generate_series(1, 51) AS n", at(10)), 1).await.expect_err("rows");
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("50 rows") && err.message.contains("engines.warehouse.max_rows"), "{}", err.message);
    let err = engine.run(&job("acme", "SELECT repeat('x', 10001) AS big", at(10)), 1).await.expect_err("bytes");
    assert!(err.message.contains("engines.warehouse.max_result_bytes"), "{}", err.message);
    let tables = rows(&db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant_acme'").await;
    assert_eq!(tables[0].get::<_, i64>(0), 1, "nothing was written: only the sales table");
    assert_eq!(
        engine
            .run(&job("acme", "SELECT generate_series(1, 50) AS n", at(10)), 1)
            .await
            .expect("at the limit")
            .rows_written,
        50
    );
}

#[tokio::test]
async fn a_password_key_rotation_keeps_runs_working_while_roles_get_their_new_passwords() {
    let (db, _) = two_tenants().await;
    let rotated = |previous: Option<&str>| {
        let logins = TenantLogins {
            password_key: Secret::new("the-new-key-0123456789"),
            previous_key: previous.map(Secret::new),
            ..db.tenant_logins()
        };
        let scope = TenantScope { schema_template: "tenant_{tenant_id}".into(), logins: Some(logins) };
        PostgresEngine::new(&Secret::new(db.url.clone()), 2, scope, ResultLimits::default()).expect("engine")
    };
    // 1. Workers get the new key and keep the old one as previous: the roles still have
    //    their old passwords, and runs go on.
    let during = rotated(Some(integration_tests::TENANT_PASSWORD_KEY));
    assert_eq!(during.run(&job("acme", "SELECT 1 AS one", at(10)), 1).await.expect("old password").rows_written, 1);
    // 2. Each role gets its new password (what `worker tenant-password` prints with the new key).
    let role = db.tenant_role("acme");
    let new_password =
        TenantLogins { password_key: Secret::new("the-new-key-0123456789"), ..db.tenant_logins() }.password_for(&role);
    db.client
        .batch_execute(&format!("ALTER ROLE \"{role}\" PASSWORD '{}'", new_password.expose()))
        .await
        .expect("new password");
    assert_eq!(during.run(&job("acme", "SELECT 1 AS one", at(11)), 1).await.expect("new password").rows_written, 1);
    // 3. The old key is dropped.
    let after = rotated(None);
    assert_eq!(after.run(&job("acme", "SELECT 1 AS one", at(12)), 1).await.expect("new key only").rows_written, 1);
    let err = after.run(&job("globex", "SELECT 1 AS one", at(12)), 1).await.expect_err("globex was not rotated");
    assert!(err.message.contains("tenant-password"), "{}", err.message);
}

/// `docker/provision-local.sql` (compose and `scripts/run-local`) derives the tenants'
/// passwords in SQL; the worker must derive the same ones, and the sample data must be
/// readable by the tenants' runs.
#[tokio::test]
async fn the_local_provisioning_and_sample_data_work_with_the_workers_logins() {
    let db = TestDb::create().await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for file in ["docker/provision-local.sql", "examples/seed.sql"] {
        let sql = std::fs::read_to_string(format!("{root}/{file}")).expect(file);
        db.client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let logins = TenantLogins {
        role_template: "tenant_{tenant_id}".into(),
        password_key: Secret::new("local-tenant-password-key"),
        previous_key: None,
    };
    let scope = TenantScope { schema_template: "tenant_{tenant_id}".into(), logins: Some(logins) };
    let engine = PostgresEngine::new(&Secret::new(db.url.clone()), 2, scope, ResultLimits::default()).expect("engine");
    let sql = "SELECT store, count(*) AS sales FROM sales GROUP BY store";
    assert_eq!(engine.run(&job("acme", sql, at(10)), 1).await.expect("acme").rows_written, 2);
    assert_eq!(engine.run(&job("globex", sql, at(10)), 1).await.expect("globex").rows_written, 1);
}
