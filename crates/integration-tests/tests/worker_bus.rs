//! The worker on the Pub/Sub emulator: bad input never crashes it and never spins; it ends
//! in the dead-letter topic with its reason, and a result event says what happened.

use chrono::{Timelike, Utc};
use integration_tests::{Received, TestDb, app_env, emulator, eventually, get, metric, read_until, tap, unique};
use jobs_core::{JobId, JobMessage, Overlap, ResultEvent, RunStatus, Trigger, attributes as attr};
use pubsub_bus::TopicPublisher;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Harness {
    bus: pubsub_bus::Connection,
    jobs: TopicPublisher,
    results_tap: String,
    dead_tap: String,
    admin: std::net::SocketAddr,
    db: TestDb,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_worker() -> Harness {
    start_worker_with(|_| {}).await
}

async fn start_worker_with(tweak: impl FnOnce(&mut worker::Settings)) -> Harness {
    integration_tests::init_logs();
    let project = unique("proj");
    let bus = emulator(&project);
    let jobs = unique("jobs");
    let results_tap = tap(&bus, &format!("{jobs}-results")).await;
    let dead_tap = tap(&bus, &format!("{jobs}-dead")).await;
    let db = TestDb::create().await;
    db.provision_tenant(
        "acme",
        "CREATE TABLE tenant_acme.orders (id int); INSERT INTO tenant_acme.orders VALUES (1), (2)",
    )
    .await;
    let mut s = integration_tests::worker_settings(&project, &jobs, &db);
    s.pubsub.max_backoff = Duration::from_secs(1);
    s.runner.grace_period = Duration::from_secs(2);
    // The sweeper quickly, for the lost-message test.
    s.ledger.republish_after = Duration::from_secs(2);
    s.ledger.sweep_interval = Duration::from_secs(1);
    tweak(&mut s);
    let app = worker::Application::build(s, &app_env()).await.expect("worker builds");
    let admin = app.admin_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    eventually(Duration::from_secs(30), || async { (get(admin, "/readyz").await.0 == 200).then_some(()) })
        .await
        .expect("worker ready");
    let jobs = bus.publisher(&jobs, Duration::from_secs(10)).await.expect("publisher");
    Harness { bus, jobs, results_tap, dead_tap, admin, db, shutdown, task }
}

fn job(query_id: &str, sql: &str) -> JobMessage {
    job_at(query_id, sql, Utc::now())
}

fn job_at(query_id: &str, sql: &str, nominal: chrono::DateTime<Utc>) -> JobMessage {
    JobMessage {
        schema_version: JobMessage::SCHEMA_VERSION.into(),
        job_id: JobId::for_run("acme", "shop", query_id, nominal),
        tenant_id: "acme".into(),
        app_id: "shop".into(),
        query_id: query_id.into(),
        nominal_time: nominal,
        placed_time: nominal,
        window_start: nominal - chrono::Duration::minutes(1),
        window_end: nominal,
        engine: "warehouse".into(),
        sql: sql.into(),
        destination: "out".into(),
        timeout_secs: 1,
        max_attempts: 2,
        overlap: Overlap::Skip,
        trigger: Trigger::Scheduled,
        published_at: nominal,
    }
}

async fn publish(h: &Harness, job: &JobMessage) {
    h.jobs.publish(job.encode(), job.attributes(None)).await.expect("publish");
}

fn by_job_id<'a>(msgs: &'a [Received], id: &str) -> Option<&'a Received> {
    msgs.iter().find(|m| m.attributes.get(attr::JOB_ID).map(String::as_str) == Some(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_and_failing_messages_end_in_the_dead_letter_topic_with_their_reason() {
    let h = start_worker().await;

    // Two undecodable messages, a permanent SQL error, an unknown engine, a run that times
    // out on both of its attempts, and one good run.
    h.jobs.publish(b"{not json".to_vec(), [(attr::JOB_ID, "garbage")]).await.expect("publish");
    let mut future = serde_json::to_value(job("future", "SELECT 1 AS x")).expect("json");
    future["schema_version"] = "9.0".into();
    h.jobs.publish(serde_json::to_vec(&future).expect("json"), [(attr::JOB_ID, "future")]).await.expect("publish");
    let bad_sql = job("bad-sql", "SELECT * FROM missing_table");
    publish(&h, &bad_sql).await;
    let mut bad_engine = job("bad-engine", "SELECT 1 AS x");
    bad_engine.engine = "oracle".into();
    publish(&h, &bad_engine).await;
    let slow = job("slow", "SELECT pg_sleep(5)::text AS slept");
    publish(&h, &slow).await;
    let good = job("good", "SELECT count(*) AS n FROM orders");
    publish(&h, &good).await;

    let dead = read_until(&h.bus, &h.dead_tap, Duration::from_secs(60), |got| got.len() >= 5).await;
    let reason = |id: &str| {
        let m = by_job_id(&dead, id).unwrap_or_else(|| panic!("{id} was not dead-lettered: {dead:#?}"));
        (m.attributes[attr::DEAD_LETTER_REASON].clone(), m.attributes[attr::DEAD_LETTER_ERROR].clone(), m)
    };
    let (r, e, m) = reason("garbage");
    assert_eq!(r, "decode_error");
    assert!(e.contains("not valid JSON"), "{e}");
    assert_eq!(m.data, b"{not json", "the original body is kept for inspection");
    let (r, e, _) = reason("future");
    assert_eq!(r, "decode_error");
    assert!(e.contains("schema_version \"9.0\""), "{e}");
    let (r, e, _) = reason(bad_sql.job_id.as_str());
    assert_eq!(r, "permanent_error");
    assert!(e.contains("missing_table"), "{e}");
    let (r, e, _) = reason(bad_engine.job_id.as_str());
    assert_eq!(r, "permanent_error");
    assert!(e.contains("oracle"), "{e}");
    let (r, e, m) = reason(slow.job_id.as_str());
    assert_eq!(r, "attempts_exhausted", "{e}");
    assert_eq!(m.attributes[attr::DEAD_LETTER_ATTEMPT], "2", "dead-lettered at max_attempts, not before");
    assert!(by_job_id(&dead, good.job_id.as_str()).is_none(), "the good run is not dead-lettered");

    // Result events: failed for the runs that ran and failed, succeeded for the good one.
    let results: HashMap<String, ResultEvent> =
        read_until(&h.bus, &h.results_tap, Duration::from_secs(30), |got| got.len() >= 4)
            .await
            .iter()
            .map(|r| ResultEvent::decode(&r.data).expect("decodes"))
            .map(|e| (e.job_id.to_string(), e))
            .collect();
    let ok = &results[good.job_id.as_str()];
    assert_eq!((ok.status, ok.rows_written, ok.attempt), (RunStatus::Succeeded, 1, 1));
    let failed = &results[bad_sql.job_id.as_str()];
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.error_class, Some(jobs_core::ErrorClass::Permanent));
    assert_eq!(results[slow.job_id.as_str()].attempt, 2);
    let n: i64 = h.db.client.query_one("SELECT n FROM tenant_acme.out", &[]).await.expect("row").get(0);
    assert_eq!(n, 2);

    // Still alive, and the outcomes are counted.
    assert_eq!(get(h.admin, "/livez").await.0, 200);
    let (_, m) = get(h.admin, "/metrics").await;
    assert_eq!(metric(&m, "worker_jobs_total{outcome=\"undecodable\",error_class=\"decode\"}"), Some(2.0), "{m}");
    assert_eq!(metric(&m, "worker_jobs_total{outcome=\"failed\",error_class=\"permanent\"}"), Some(2.0), "{m}");
    assert_eq!(metric(&m, "worker_jobs_total{outcome=\"retried\",error_class=\"retryable\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "worker_dead_lettered_total"), Some(5.0), "{m}");
    h.shutdown.cancel();
    h.task.await.expect("join").expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_shutdown_a_run_in_flight_finishes_within_the_grace_period() {
    let h = start_worker().await;
    let job = job("finishing", "SELECT pg_sleep(1)::text AS slept, count(*) AS n FROM orders");
    let mut job = job;
    job.timeout_secs = 10;
    publish(&h, &job).await;
    eventually(Duration::from_secs(20), || async {
        let (_, m) = get(h.admin, "/metrics").await;
        (metric(&m, "worker_jobs_in_flight") == Some(1.0)).then_some(())
    })
    .await
    .expect("the run starts");
    h.shutdown.cancel();
    h.task.await.expect("join").expect("stops cleanly");
    let results = read_until(&h.bus, &h.results_tap, Duration::from_secs(10), |got| !got.is_empty()).await;
    assert_eq!(results.len(), 1, "the in-flight run finished and reported");
    let n: i64 = h.db.client.query_one("SELECT n FROM tenant_acme.out", &[]).await.expect("row").get(0);
    assert_eq!(n, 2);
}

async fn jobs_metric(h: &Harness, outcome: &str) -> f64 {
    let (_, m) = get(h.admin, "/metrics").await;
    metric(&m, &format!("worker_jobs_total{{outcome=\"{outcome}\",error_class=\"none\"}}")).unwrap_or(0.0)
}

/// (state, attempts, rows_written, error_message) of a job id in the run ledger.
async fn ledger_row(h: &Harness, job: &JobMessage) -> (String, i32, Option<i64>, Option<String>) {
    let row =
        h.db.client
            .query_one(
                "SELECT state, attempts, rows_written, error_message FROM sqo_ledger.runs WHERE job_id = $1",
                &[&job.job_id.as_str()],
            )
            .await
            .expect("a ledger row");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_delivered_again_after_it_succeeded_is_acked_without_running_again() {
    let h = start_worker().await;
    let mut once = job("once", "SELECT count(*) AS n FROM orders");
    once.timeout_secs = 10;
    publish(&h, &once).await;
    eventually(Duration::from_secs(30), || async { (jobs_metric(&h, "succeeded").await == 1.0).then_some(()) })
        .await
        .expect("the run succeeds");
    // The same run again: the controller republishing after a restart, or a redelivery.
    publish(&h, &once).await;
    publish(&h, &once).await;
    eventually(Duration::from_secs(30), || async { (jobs_metric(&h, "duplicate").await == 2.0).then_some(()) })
        .await
        .expect("both copies acked as duplicates");
    let results = read_until(&h.bus, &h.results_tap, Duration::from_secs(3), |got| got.len() > 1).await;
    assert_eq!(results.len(), 1, "one result event for the run");
    assert_eq!(ledger_row(&h, &once).await, ("succeeded".into(), 1, Some(1), None));
    assert_eq!(jobs_metric(&h, "succeeded").await, 1.0, "it ran once");
    h.shutdown.cancel();
    h.task.await.expect("join").expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_never_runs_twice_at_once_and_overlap_skip_records_the_skipped_run() {
    let h = start_worker().await;
    let t0 = Utc::now().with_nanosecond(0).expect("whole second") - chrono::Duration::minutes(2);
    let sql = "SELECT pg_sleep(3)::text AS slept, count(*) AS n FROM orders";
    let mut first = job_at("hourly", sql, t0);
    first.timeout_secs = 20;
    let mut next = job_at("hourly", sql, t0 + chrono::Duration::minutes(1));
    next.timeout_secs = 20;
    // The first run twice at once (a duplicate delivery), then the next run while it runs.
    publish(&h, &first).await;
    publish(&h, &first).await;
    eventually(Duration::from_secs(20), || async {
        let (_, m) = get(h.admin, "/metrics").await;
        (metric(&m, "worker_jobs_in_flight") == Some(1.0) || jobs_metric(&h, "running_elsewhere").await >= 1.0)
            .then_some(())
    })
    .await
    .expect("the first run starts");
    publish(&h, &next).await;

    let results: HashMap<String, ResultEvent> =
        read_until(&h.bus, &h.results_tap, Duration::from_secs(30), |got| got.len() >= 2)
            .await
            .iter()
            .map(|r| ResultEvent::decode(&r.data).expect("decodes"))
            .map(|e| (e.job_id.to_string(), e))
            .collect();
    assert_eq!(results.len(), 2, "{results:#?}");
    assert_eq!(results[first.job_id.as_str()].status, RunStatus::Succeeded);
    let skipped = &results[next.job_id.as_str()];
    assert_eq!(skipped.status, RunStatus::Skipped);
    let reason = skipped.error_message.as_deref().unwrap_or("");
    assert!(reason.contains(first.job_id.as_str()) && reason.contains("overlap"), "{reason}");
    // The duplicate copy of the first run is acked once the first has succeeded.
    eventually(Duration::from_secs(30), || async { (jobs_metric(&h, "duplicate").await >= 1.0).then_some(()) })
        .await
        .expect("the duplicate is acked");
    assert_eq!(ledger_row(&h, &first).await, ("succeeded".into(), 1, Some(1), None), "started once");
    let (state, attempts, _, message) = ledger_row(&h, &next).await;
    assert_eq!((state.as_str(), attempts), ("skipped", 0));
    assert!(message.is_some_and(|m| m.contains("overlap")));
    h.shutdown.cancel();
    h.task.await.expect("join").expect("stops cleanly");
}

#[tokio::test]
async fn ledger_migrations_are_idempotent_and_a_newer_schema_is_refused() {
    use worker::ledger::postgres::{MigrateError, PostgresLedger, SCHEMA_VERSION};
    let db = TestDb::create().await;
    let url = service_kit::Secret::new(db.url.clone());
    let a = PostgresLedger::new(&url, "ledger_test", 2).expect("ledger");
    let b = PostgresLedger::new(&url, "ledger_test", 2).expect("ledger");
    // Two workers starting together: the migrations run once.
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let mut outcomes = [ra.expect("migrates"), rb.expect("migrates")];
    outcomes.sort();
    assert_eq!(outcomes, [(0, SCHEMA_VERSION), (SCHEMA_VERSION, SCHEMA_VERSION)]);
    assert_eq!(a.migrate().await.expect("again"), (SCHEMA_VERSION, SCHEMA_VERSION));
    db.client.batch_execute("UPDATE ledger_test.schema_version SET version = 99").await.expect("update");
    match a.migrate().await {
        Err(MigrateError::Newer(reason)) => {
            assert!(reason.contains("version 99") && reason.contains(&format!("({SCHEMA_VERSION})")), "{reason}")
        }
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_message_was_lost_after_its_worker_died_is_published_again_and_runs_once() {
    let h = start_worker().await;
    // A worker claimed the run and died; its message never comes back. No message is
    // published here: only the ledger knows the run.
    let lost = job("lost", "SELECT 7 AS seven");
    let ledger =
        worker::ledger::postgres::PostgresLedger::new(&service_kit::Secret::new(h.db.url.clone()), "sqo_ledger", 1)
            .expect("ledger");
    use worker::ledger::Ledger;
    let claim = ledger.claim(&lost, "a-worker-that-died", Duration::from_secs(1)).await.expect("claim");
    assert_eq!(claim, worker::ledger::Claim::Run { attempt: 1 });

    let results = read_until(&h.bus, &h.results_tap, Duration::from_secs(30), |got| {
        got.iter().any(|m| ResultEvent::decode(&m.data).is_ok_and(|e| e.job_id == lost.job_id))
    })
    .await;
    let events: Vec<ResultEvent> =
        results.iter().filter_map(|m| ResultEvent::decode(&m.data).ok()).filter(|e| e.job_id == lost.job_id).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].status, events[0].attempt, events[0].rows_written), (RunStatus::Succeeded, 2, 1));
    let written: i64 =
        h.db.client
            .query_one("SELECT count(*) FROM tenant_acme.out WHERE _job_id = $1", &[&lost.job_id.as_str()])
            .await
            .expect("count")
            .get(0);
    assert_eq!(written, 1);
    let metrics = get(h.admin, "/metrics").await.1;
    assert_eq!(metric(&metrics, "worker_runs_republished_total"), Some(1.0), "published again once");
    h.shutdown.cancel();
    h.task.await.expect("join").expect("stops cleanly");
}

const OLD_KEY: &str = "k2026a:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const NEW_KEY: &str = "k2026b:ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

/// Publishes `job` signed with the newest key of `ring`, after `tamper` changed body or
/// attributes.
async fn publish_signed(
    h: &Harness,
    job: &JobMessage,
    ring: &str,
    tamper: impl FnOnce(&mut Vec<u8>, &mut Vec<(&'static str, String)>),
) {
    let ring = jobs_core::signing::KeyRing::parse(ring).expect("ring");
    let mut body = job.encode();
    let mut attributes = job.attributes(None);
    let key = ring.signing_key().expect("key");
    let signature = key.sign(&body, |n| attributes.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str()));
    attributes.extend(signature);
    tamper(&mut body, &mut attributes);
    h.jobs.publish(body, attributes).await.expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsigned_forged_tampered_unknown_key_and_oversized_messages_are_dead_lettered_and_never_run() {
    // The worker accepts both keys of a rotation.
    let h = start_worker_with(|s| {
        s.signing.keyring = service_kit::Secret::new(format!("{OLD_KEY},{NEW_KEY}"));
        s.runner.max_message_bytes = 8192;
    })
    .await;
    // Signed properly, but over runner.max_message_bytes.
    let oversized = job("oversized", &format!("SELECT 1 AS x -- {}", "x".repeat(9000)));
    publish_signed(&h, &oversized, NEW_KEY, |_, _| {}).await;
    let unsigned = job("unsigned", "SELECT 1 AS x");
    publish(&h, &unsigned).await;
    let unknown = job("unknown-key", "SELECT 1 AS x");
    publish_signed(&h, &unknown, "k-other:YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=", |_, _| {}).await;
    // Forged: the right key id, a wrong secret.
    let forged = job("forged", "SELECT 1 AS x");
    publish_signed(&h, &forged, "k2026b:YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=", |_, _| {}).await;
    // Tampered: signed properly, then the SQL changed.
    let tampered = job("tampered", "SELECT 1 AS x");
    publish_signed(&h, &tampered, NEW_KEY, |body, _| {
        *body = String::from_utf8(body.clone()).expect("utf-8").replace("SELECT 1 AS x", "SELECT 2 AS x").into_bytes();
    })
    .await;
    // Moved to another tenant after signing.
    let moved = job("moved", "SELECT 1 AS x");
    publish_signed(&h, &moved, NEW_KEY, |_, attrs| {
        attrs.iter_mut().filter(|(k, _)| *k == attr::TENANT_ID).for_each(|(_, v)| *v = "globex".into());
    })
    .await;
    // Good ones, signed with either key of the ring.
    let good_old = job("good-old", "SELECT 1 AS x");
    publish_signed(&h, &good_old, OLD_KEY, |_, _| {}).await;
    let good_new = job("good-new", "SELECT 1 AS x");
    publish_signed(&h, &good_new, &format!("{OLD_KEY}\n{NEW_KEY}"), |_, _| {}).await;

    let dead = read_until(&h.bus, &h.dead_tap, Duration::from_secs(30), |got| got.len() >= 6).await;
    for (job, reason) in [
        (&oversized, "too_large"),
        (&unsigned, "unsigned"),
        (&unknown, "unknown_key"),
        (&forged, "bad_signature"),
        (&tampered, "bad_signature"),
        (&moved, "bad_signature"),
    ] {
        let m = by_job_id(&dead, job.job_id.as_str()).unwrap_or_else(|| panic!("{} not dead-lettered", job.query_id));
        assert_eq!(m.attributes[attr::DEAD_LETTER_REASON], reason, "{}", job.query_id);
    }
    let results = read_until(&h.bus, &h.results_tap, Duration::from_secs(20), |got| got.len() >= 2).await;
    let ran: Vec<String> =
        results.iter().filter_map(|m| ResultEvent::decode(&m.data).ok()).map(|e| e.query_id).collect();
    assert!(ran.contains(&"good-old".to_string()) && ran.contains(&"good-new".to_string()), "{ran:?}");
    for refused in ["oversized", "unsigned", "unknown-key", "forged", "tampered", "moved"] {
        assert!(!ran.contains(&refused.to_string()), "{refused} must never run");
    }
    let rows: i64 = h
        .db
        .client
        .query_one("SELECT count(*) FROM sqo_ledger.runs WHERE query_id IN ('oversized','unsigned','unknown-key','forged','tampered','moved')", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "refused messages never reach the ledger");
    let metrics = get(h.admin, "/metrics").await.1;
    assert_eq!(metric(&metrics, r#"worker_jobs_total{outcome="rejected",error_class="signature"}"#), Some(5.0));
    assert_eq!(metric(&metrics, r#"worker_jobs_total{outcome="rejected",error_class="too_large"}"#), Some(1.0));
    h.shutdown.cancel();
    h.task.await.expect("join").expect("stops cleanly");
}
