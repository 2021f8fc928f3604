//! The whole pipeline with the `bigquery` engine: fake platform API → controller → Pub/Sub
//! emulator → worker → BigQuery emulator. Rows land once per run in the right tenant's
//! dataset, a run published again after its worker died replaces its rows, and a query
//! BigQuery refuses is dead-lettered with BigQuery's message.

use integration_tests::bigquery::{Emulator, PROJECT};
use integration_tests::platform::FakePlatform;
use integration_tests::{TestDb, app_env, emulator, read_until, start_controller, start_worker, tap, unique};
use jobs_core::{JobMessage, ResultEvent, RunStatus};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const TOKEN: &str = "bigquery-pipeline-token";

fn query(id: &str, schedule: &str, sql: &str) -> serde_json::Value {
    json!({"id": id, "schedule": schedule, "engine": "lake", "sql": sql, "destination": "order_counts", "timeout": "20s"})
}

const COUNT_SQL: &str = "SELECT @tenant_id AS tenant, COUNT(*) AS orders, @window_end AS window_end FROM orders";

/// (job id → (tenant, orders)) of a tenant's destination table; panics on a run written twice.
async fn runs_in(bq: &Emulator, dataset: &str) -> BTreeMap<String, (String, i64)> {
    let mut runs = BTreeMap::new();
    for row in bq.rows(dataset, "order_counts").await {
        let cell = |i: usize| row[i].clone().unwrap_or_default();
        let previous = runs.insert(cell(0), (cell(2), cell(3).parse().expect("orders")));
        assert!(previous.is_none(), "run {} written twice in {dataset}", cell(0));
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_runs_land_once_in_each_tenants_bigquery_dataset() {
    integration_tests::init_logs();
    let (project, jobs) = (unique("proj"), unique("jobs"));
    let bus = emulator(&project);
    let jobs_tap = tap(&bus, &jobs).await;
    let results_tap = tap(&bus, &format!("{jobs}-results")).await;
    let dead_tap = tap(&bus, &format!("{jobs}-dead")).await;
    let db = TestDb::create().await;

    // Each tenant's dataset and its orders.
    let bq = Emulator::default();
    let prefix = unique("p").replace('-', "_");
    for (tenant, orders) in [("acme", 3), ("globex", 5)] {
        let dataset = format!("{prefix}_{tenant}");
        bq.create_dataset(&dataset).await;
        bq.execute(&format!(
            "CREATE TABLE `{dataset}.orders` AS SELECT id FROM UNNEST(GENERATE_ARRAY(1, {orders})) AS id"
        ))
        .await;
    }

    let platform = FakePlatform::start(TOKEN).await;
    platform.set_tenant_pages(vec![vec![
        json!({"id": "acme", "status": "active"}),
        json!({"id": "globex", "status": "active"}),
    ]]);
    platform.set_app_pages(
        "acme",
        vec![vec![json!({"id": "shop", "queries": [
            query("every-2s", "*/2 * * * * *", COUNT_SQL),
            query("broken", "*/3 * * * * *", "SELECT COUNT(*) AS n FROM no_such_table"),
        ]})]],
    );
    platform.set_app_pages(
        "globex",
        vec![vec![json!({"id": "ops", "queries": [query("every-3s", "*/3 * * * * *", COUNT_SQL)]})]],
    );

    // The worker, with the `lake` engine on the BigQuery emulator (BIGQUERY_EMULATOR_HOST).
    let mut settings = integration_tests::worker_settings(&project, &jobs, &db);
    settings.engines.clear();
    settings.engines.insert(
        "lake".into(),
        worker::settings::EngineSettings {
            kind: worker::settings::EngineKind::Bigquery,
            project: PROJECT.into(),
            dataset_template: format!("{prefix}_{{tenant_id}}"),
            ..Default::default()
        },
    );
    // One run at a time: the emulator is not safe under concurrent requests (see `exclusive`).
    settings.runner.max_in_flight = 1;
    let worker = start_worker(settings).await;

    let mut c = controller::Settings::default();
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.platform.base_url = platform.base_url();
    c.pubsub.project = project.clone();
    c.pubsub.jobs_topic = jobs.clone();
    c.pubsub.create_topics = true;
    c.catalog.engines = vec!["lake".into()];
    let mut env = app_env();
    env.insert("PLATFORM_API_TOKEN".into(), TOKEN.into());
    let controller = start_controller(c, &env).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    controller.stop().await;

    // What was published, by job id.
    let published: BTreeMap<String, (JobMessage, std::collections::HashMap<String, String>)> =
        read_until(&bus, &jobs_tap, Duration::from_secs(5), |_| false)
            .await
            .into_iter()
            .map(|m| {
                let job = JobMessage::decode(&m.data).expect("job message decodes");
                (job.job_id.to_string(), (job, m.attributes))
            })
            .collect();
    let broken: BTreeSet<&String> =
        published.iter().filter(|(_, (j, _))| j.query_id == "broken").map(|(id, _)| id).collect();
    assert!(published.len() >= 6 && !broken.is_empty(), "runs fired: {}", published.len());

    // One result event per run: the broken query's failed, the others succeeded.
    let events: Vec<ResultEvent> =
        read_until(&bus, &results_tap, Duration::from_secs(90), |got| got.len() >= published.len())
            .await
            .iter()
            .map(|r| ResultEvent::decode(&r.data).expect("result event decodes"))
            .collect();
    assert_eq!(
        events.iter().map(|e| e.job_id.to_string()).collect::<BTreeSet<_>>(),
        published.keys().cloned().collect()
    );
    for e in &events {
        if broken.contains(&e.job_id.to_string()) {
            assert_eq!(e.status, RunStatus::Failed, "{e:?}");
        } else {
            assert_eq!((e.status, e.rows_written), (RunStatus::Succeeded, 1), "{e:?}");
            assert!(e.bytes_processed.is_some(), "BigQuery's statistics are in the event: {e:?}");
        }
    }

    // Each run's row is in its own tenant's dataset, once, with that tenant's count.
    let mut in_tables = BTreeSet::new();
    for (tenant, orders) in [("acme", 3), ("globex", 5)] {
        for (job_id, (row_tenant, n)) in runs_in(&bq, &format!("{prefix}_{tenant}")).await {
            assert_eq!((row_tenant.as_str(), n), (tenant, orders), "run {job_id}");
            assert_eq!(published[&job_id].0.tenant_id, tenant, "run {job_id} is in its tenant's dataset");
            in_tables.insert(job_id);
        }
    }
    let succeeded: BTreeSet<String> = published.keys().filter(|id| !broken.contains(id)).cloned().collect();
    assert_eq!(in_tables, succeeded, "every succeeded run, and only those, wrote its rows");

    // The broken query: dead-lettered with BigQuery's message, not retried.
    let dead = read_until(&bus, &dead_tap, Duration::from_secs(30), |got| got.len() >= broken.len()).await;
    assert_eq!(dead.len(), broken.len());
    for d in &dead {
        assert_eq!(d.attributes.get("dead_letter_reason").map(String::as_str), Some("permanent_error"));
        let error = d.attributes.get("dead_letter_error").cloned().unwrap_or_default();
        assert!(error.contains("BigQuery") && error.contains("no_such_table"), "{error}");
    }

    // A worker that died after BigQuery committed a run, before the ledger heard of it: the
    // run is published again, runs as its second attempt and replaces its own rows.
    let (again, attributes) = published
        .values()
        .find(|(j, _)| j.tenant_id == "acme" && j.query_id == "every-2s")
        .cloned()
        .expect("an acme run");
    let acme = format!("{prefix}_acme");
    bq.execute(&format!("INSERT INTO `{acme}.orders` (id) VALUES (4), (5)")).await;
    db.client
        .execute(
            "UPDATE sqo_ledger.runs SET state = 'running', lease_expires_at = now() - interval '1 second' WHERE job_id = $1",
            &[&again.job_id.as_str()],
        )
        .await
        .expect("ledger row");
    // A subscription of its own for the re-run's event: the emulator may hand the first tap's
    // next message to the stream `read_until` closed, and release it only minutes later.
    let rerun_tap = format!("{jobs}-results-rerun");
    bus.ensure_subscription(&pubsub_bus::SubscriptionSpec::plain(&rerun_tap, format!("{jobs}-results")))
        .await
        .expect("subscription");
    let publisher = bus.publisher(&jobs, Duration::from_secs(10)).await.expect("publisher");
    publisher.publish(again.encode(), attributes).await.expect("publish again");
    let rerun = read_until(&bus, &rerun_tap, Duration::from_secs(30), |got| !got.is_empty()).await;
    assert_eq!(rerun.len(), 1, "one result event for the re-published run");
    let rerun = ResultEvent::decode(&rerun[0].data).expect("decodes");
    assert_eq!((rerun.job_id.clone(), rerun.status, rerun.attempt), (again.job_id.clone(), RunStatus::Succeeded, 2));
    let after = runs_in(&bq, &acme).await;
    assert_eq!(after[again.job_id.as_str()], ("acme".to_owned(), 5), "the run's row was replaced with the new count");
    assert_eq!(after.len(), in_tables.iter().filter(|id| published[*id].0.tenant_id == "acme").count(), "no extra row");
    assert!(after.iter().filter(|(id, _)| *id != again.job_id.as_str()).all(|(_, (_, n))| *n == 3), "others untouched");

    worker.stop().await;
}
