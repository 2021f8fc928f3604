//! The whole pipeline on real parts: fake platform API → controller → Pub/Sub emulator →
//! worker → PostgreSQL tenant tables, plus the result events on their topic.

use integration_tests::platform::{FakePlatform, Fault};
use integration_tests::{
    TestDb, app_env, emulator, eventually, get, metric, read_until, start_controller, start_worker, tap, unique,
};
use jobs_core::{JobId, ResultEvent, RunStatus};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "pipeline-token-0123";

struct Topics {
    project: String,
    jobs: String,
    results: String,
    dead_letter: String,
}

fn worker_settings(t: &Topics, db: &TestDb) -> worker::Settings {
    let mut s = integration_tests::worker_settings(&t.project, &t.jobs, db);
    s.pubsub.results_topic = t.results.clone();
    s.pubsub.dead_letter_topic = t.dead_letter.clone();
    s.runner.max_in_flight = 4;
    s.runner.grace_period = Duration::from_secs(5);
    s
}

fn query(id: &str, schedule: &str, sql: &str) -> serde_json::Value {
    json!({"id": id, "schedule": schedule, "engine": "warehouse", "sql": sql, "destination": "order_counts", "timeout": "10s"})
}

const COUNT_SQL: &str = "SELECT @tenant_id AS tenant, COUNT(*) AS orders, @window_start AS window_start, \
                         @window_end AS window_end FROM orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_runs_travel_from_the_platform_to_each_tenants_table_exactly_once() {
    integration_tests::init_logs();
    let topics = Topics {
        project: unique("proj"),
        jobs: unique("jobs"),
        results: unique("results"),
        dead_letter: unique("dead"),
    };
    let bus = emulator(&topics.project);
    let results_tap = tap(&bus, &topics.results).await;
    let jobs_tap = tap(&bus, &topics.jobs).await;
    let db = TestDb::create().await;
    for (tenant, orders) in [("acme", 3), ("globex", 5)] {
        db.provision_tenant(
            tenant,
            &format!(
                "CREATE TABLE tenant_{tenant}.orders (id int);
                 INSERT INTO tenant_{tenant}.orders SELECT generate_series(1, {orders})"
            ),
        )
        .await;
    }

    // The platform: paged tenants (one page empty), a suspended tenant, invalid items,
    // a 429 with Retry-After and an apps request that fails twice.
    let platform = FakePlatform::start(TOKEN).await;
    platform.set_tenant_pages(vec![
        vec![json!({"id": "acme", "status": "active", "timezone": "America/Sao_Paulo"})],
        vec![],
        vec![
            json!({"id": "globex", "status": "active", "timezone": "Europe/Berlin"}),
            json!({"id": "initech", "status": "suspended"}),
        ],
    ]);
    let mut bad_engine = query("bad-engine", "* * * * * *", COUNT_SQL);
    bad_engine["engine"] = json!("oracle");
    platform.set_app_pages(
        "acme",
        vec![vec![json!({"id": "shop", "enabled": true, "queries": [
            query("every-2s", "*/2 * * * * *", COUNT_SQL),
            query("bad-cron", "61 * * * *", COUNT_SQL),
            bad_engine,
        ]})]],
    );
    platform.set_app_pages(
        "globex",
        vec![vec![json!({"id": "ops", "queries": [
            query("every-3s", "*/3 * * * * *", COUNT_SQL),
            query("every-3s", "*/5 * * * * *", "SELECT 2"),
            query("huge", "* * * * * *", &format!("SELECT '{}'", "x".repeat(2 * 1024 * 1024))),
        ]})]],
    );
    platform.inject("/v1/tenants", [Fault::TooManyRequests { retry_after: "1".into() }]);
    platform.inject("/v1/tenants/globex/apps", [Fault::Status(500), Fault::Status(500)]);

    // The worker first: it creates the subscription, so no published run is lost.
    let worker = start_worker(worker_settings(&topics, &db)).await;
    let worker_admin = worker.admin;

    let mut settings = controller::Settings::default();
    settings.admin.listen = "127.0.0.1:0".parse().expect("addr");
    settings.platform.base_url = platform.base_url();
    settings.platform.initial_backoff = Duration::from_millis(50);
    settings.pubsub.project = topics.project.clone();
    settings.pubsub.jobs_topic = topics.jobs.clone();
    settings.pubsub.create_topics = true;
    let mut env = app_env();
    env.insert("PLATFORM_API_TOKEN".into(), TOKEN.into());
    let controller = start_controller(settings, &env).await;
    let controller_admin = controller.admin;

    // Let the schedules fire for a while, then stop the controller.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (_, metrics_after) = get(controller_admin, "/metrics").await;
    controller.stop().await;
    let published_metric =
        metric(&metrics_after, "controller_runs_published_total").expect("published metric") as usize;

    // What was published, read from a tap on the jobs topic (deduplicated by job id).
    let job_messages = read_until(&bus, &jobs_tap, Duration::from_secs(5), |_| false).await;
    let published_ids: BTreeSet<String> = job_messages
        .iter()
        .map(|m| {
            let job = jobs_core::JobMessage::decode(&m.data).expect("job message decodes");
            assert_eq!(m.attributes.get("job_id"), Some(&job.job_id.to_string()), "attributes carry the job id");
            assert_eq!(m.attributes.get("tenant_id"), Some(&job.tenant_id));
            job.job_id.to_string()
        })
        .collect();
    let published = published_ids.len();
    assert!(
        published >= published_metric && published >= 4,
        "runs fired: {published} (metric said {published_metric} before the stop)"
    );

    for (field, n) in [("schedule", 1.0), ("engine", 1.0), ("sql", 1.0), ("id", 1.0)] {
        let line = format!("controller_catalog_problems_total{{kind=\"query\",field=\"{field}\"}}");
        assert_eq!(metric(&metrics_after, &line), Some(n), "{line} in\n{metrics_after}");
    }
    assert_eq!(metric(&metrics_after, "controller_schedules"), Some(2.0), "the two valid queries are scheduled");

    // One result event per published run, each succeeded.
    let events: Vec<ResultEvent> =
        read_until(&bus, &results_tap, Duration::from_secs(60), |got| got.len() >= published)
            .await
            .iter()
            .map(|r| ResultEvent::decode(&r.data).expect("result event decodes"))
            .collect();
    let extra = read_until(&bus, &results_tap, Duration::from_secs(2), |_| false).await;
    assert!(extra.is_empty(), "no second result event for any run: {} extra", extra.len());
    let ids: BTreeSet<String> = events.iter().map(|e| e.job_id.to_string()).collect();
    assert_eq!(ids, published_ids, "one result event per published run");
    assert!(events.iter().all(|e| e.status == RunStatus::Succeeded && e.rows_written == 1), "{events:#?}");

    // Every run's row landed exactly once, in its own tenant's table, with its own window.
    let mut runs_per_tenant: BTreeMap<String, usize> = BTreeMap::new();
    for (tenant, app, query, step, orders) in
        [("acme", "shop", "every-2s", 2, 3i64), ("globex", "ops", "every-3s", 3, 5)]
    {
        let rows = db
            .client
            .query(
                &format!("SELECT _job_id, tenant, orders, window_start, window_end FROM tenant_{tenant}.order_counts"),
                &[],
            )
            .await
            .expect("destination table exists");
        let mut seen = BTreeSet::new();
        for row in &rows {
            let job_id: String = row.get(0);
            let (row_tenant, n): (String, i64) = (row.get(1), row.get(2));
            let (start, end): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = (row.get(3), row.get(4));
            assert!(seen.insert(job_id.clone()), "run {job_id} written twice");
            assert_eq!((row_tenant.as_str(), n), (tenant, orders), "the tenant's own data");
            assert_eq!(
                job_id,
                JobId::for_run(tenant, app, query, end).to_string(),
                "the job id is derived from the nominal time"
            );
            assert_eq!(end.timestamp() % step, 0, "nominal times follow the cron");
            assert_eq!((end - start).num_seconds(), step, "windows are contiguous");
            assert!(ids.contains(&job_id), "a result event exists for {job_id}");
        }
        runs_per_tenant.insert(tenant.to_owned(), seen.len());
    }
    assert_eq!(
        runs_per_tenant.values().sum::<usize>(),
        published,
        "every published run is in a table: {runs_per_tenant:?}"
    );
    assert!(runs_per_tenant.values().all(|&n| n >= 2), "{runs_per_tenant:?}");

    let (_, worker_metrics) = get(worker_admin, "/metrics").await;
    assert_eq!(
        metric(&worker_metrics, "worker_jobs_total{outcome=\"succeeded\",error_class=\"none\"}"),
        Some(published as f64)
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resync_adds_changes_and_removes_schedules_without_a_restart() {
    integration_tests::init_logs();
    let project = unique("proj");
    let jobs = unique("jobs");
    let bus = emulator(&project);
    let jobs_tap = tap(&bus, &jobs).await;
    let dir = std::env::temp_dir().join(unique("catalog"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("catalog.yaml");
    let write_catalog = |queries: &[(&str, &str)]| {
        let qs: Vec<_> = queries.iter().map(|(id, cron)| query(id, cron, "SELECT 1 AS one")).collect();
        let doc = json!({"tenants": [{"id": "acme", "status": "active", "apps": [{"id": "shop", "queries": qs}]}]});
        // YAML is a superset of JSON; the .yaml extension exercises the YAML reader.
        std::fs::write(&file, serde_json::to_string_pretty(&doc).expect("json")).expect("write catalog");
    };
    write_catalog(&[("kept", "* * * * * *"), ("removed", "* * * * * *"), ("changed", "0 0 1 1 *")]);

    let mut settings = controller::Settings::default();
    settings.admin.listen = "127.0.0.1:0".parse().expect("addr");
    settings.platform.source = controller::settings::CatalogSource::File;
    settings.platform.catalog_file = Some(file.clone());
    settings.catalog.sync_interval = Duration::from_secs(1);
    settings.pubsub.project = project;
    settings.pubsub.jobs_topic = jobs;
    let results_topic = unique("results");
    settings.pubsub.results_topic = results_topic.clone();
    settings.pubsub.results_subscription = format!("{results_topic}-controller");
    settings.pubsub.create_topics = true;
    let app = controller::Application::build(settings, &app_env()).await.expect("builds");
    let admin = app.admin_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    eventually(Duration::from_secs(30), || async { (get(admin, "/readyz").await.0 == 200).then_some(()) })
        .await
        .expect("controller ready");
    // The schedule API: next fire times and placement, JSON errors for unknown ids.
    let (status, body) = get(admin, "/v1/schedules/acme/shop/kept?next=3").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let next = v["next"].as_array().expect("next");
    assert_eq!(next.len(), 3, "{body}");
    let nominal =
        |i: usize| chrono::DateTime::parse_from_rfc3339(next[i]["nominal"].as_str().expect("nominal")).expect("time");
    assert_eq!((nominal(1) - nominal(0)).num_seconds(), 1, "{body}");
    assert_eq!(v["schedule"], "* * * * * *");
    let (status, body) = get(admin, "/v1/tenants/acme/schedules").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["schedules"].as_array().map(Vec::len),
        Some(3)
    );
    let (status, body) = get(admin, "/v1/schedules/acme/shop/nope").await;
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).expect("json")["code"], "not_found");
    assert_eq!(get(admin, "/v1/schedules/acme/shop/kept?next=1000").await.0, 400);

    // Run durations are learned from the result events.
    let results = bus.publisher(&results_topic, Duration::from_secs(10)).await.expect("publisher");
    let started = chrono::Utc::now();
    let event = jobs_core::ResultEvent {
        schema_version: "1.0".into(),
        job_id: JobId::for_run("acme", "shop", "kept", started),
        tenant_id: "acme".into(),
        app_id: "shop".into(),
        query_id: "kept".into(),
        nominal_time: started,
        status: RunStatus::Succeeded,
        attempt: 1,
        rows_written: 1,
        bytes_processed: None,
        slot_millis: None,
        started_at: started,
        finished_at: started + chrono::Duration::seconds(42),
        error_class: None,
        error_message: None,
        trigger: jobs_core::Trigger::Scheduled,
        trace_id: None,
    };
    results.publish(event.encode(), [("job_id", event.job_id.to_string())]).await.expect("publish result");
    results.publish(b"not a result".to_vec(), [("job_id", "x")]).await.expect("publish garbage");
    let learned = eventually(Duration::from_secs(20), || async {
        let (_, body) = get(admin, "/v1/schedules/acme/shop/kept").await;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["observed_duration_s"].as_f64()
    })
    .await;
    assert_eq!(learned, Some(42.0), "the observed duration is learned");

    tokio::time::sleep(Duration::from_millis(2500)).await;
    write_catalog(&[("kept", "* * * * * *"), ("changed", "* * * * * *"), ("added", "* * * * * *")]);
    let changed_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    shutdown.cancel();
    task.await.expect("join").expect("stops cleanly");

    let jobs: Vec<jobs_core::JobMessage> = read_until(&bus, &jobs_tap, Duration::from_secs(3), |_| false)
        .await
        .iter()
        .map(|m| jobs_core::JobMessage::decode(&m.data).expect("decodes"))
        .collect();
    let nominal = |q: &str| -> Vec<chrono::DateTime<chrono::Utc>> {
        jobs.iter().filter(|j| j.query_id == q).map(|j| j.nominal_time).collect()
    };
    let grace = chrono::Duration::seconds(2);
    assert!(nominal("kept").len() >= 5, "kept keeps firing: {:?}", nominal("kept"));
    assert!(!nominal("removed").is_empty(), "removed fired before the change");
    assert!(nominal("removed").iter().all(|t| *t <= changed_at + grace), "removed stops after the re-sync");
    assert!(nominal("changed").len() >= 2, "the changed cron takes effect: {:?}", nominal("changed"));
    assert!(nominal("added").len() >= 2, "added starts firing: {:?}", nominal("added"));
    assert!(nominal("added").iter().all(|t| *t >= changed_at - chrono::Duration::seconds(1)));
    let ids: BTreeSet<_> = jobs.iter().map(|j| j.job_id.clone()).collect();
    assert_eq!(ids.len(), jobs.len(), "no run was published twice");
}
