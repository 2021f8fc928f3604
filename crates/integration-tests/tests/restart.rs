//! The controller across restarts, on the Pub/Sub emulator and a real PostgreSQL: the runs it
//! missed while down are published once it is back (the watermark and the catch-up), it
//! starts from the last good catalog when the platform does not answer, and a catalog that
//! would remove most schedules is held back until it is confirmed.

use integration_tests::{TestDb, app_env, emulator, eventually, get, metric, read_until, tap, unique};
use jobs_core::JobMessage;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Controller {
    admin: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Controller {
    async fn start(settings: controller::Settings) -> Controller {
        let app = controller::Application::build(settings, &app_env()).await.expect("builds");
        let admin = app.admin_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Controller { admin, shutdown, task }
    }

    /// Waits for `/readyz` to say ready; returns the checks' details (`/v1/checks`).
    async fn ready(&self) -> String {
        eventually(Duration::from_secs(30), || async { (get(self.admin, "/readyz").await.0 == 200).then_some(()) })
            .await
            .expect("controller ready");
        get(self.admin, "/v1/checks").await.1
    }

    async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.1
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("join").expect("stops cleanly");
    }
}

fn write_catalog(file: &Path, queries: &[(&str, &str)]) {
    let qs: Vec<_> = queries
        .iter()
        .map(|(id, cron)| {
            json!({"id": id, "schedule": cron, "engine": "warehouse", "sql": "SELECT 1 AS one", "destination": "out"})
        })
        .collect();
    let doc = json!({"tenants": [{"id": "acme", "status": "active", "apps": [{"id": "shop", "queries": qs}]}]});
    std::fs::write(file, serde_json::to_vec(&doc).expect("json")).expect("write catalog");
}

fn settings(project: &str, jobs: &str, file: &Path, db: &TestDb) -> controller::Settings {
    integration_tests::controller_settings(project, jobs, file, db)
}

fn catalog_file() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("catalog"));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("catalog.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_controller_publishes_every_run_it_missed_while_down() {
    integration_tests::init_logs();
    let (project, jobs) = (unique("proj"), unique("jobs"));
    let bus = emulator(&project);
    let jobs_tap = tap(&bus, &jobs).await;
    let db = TestDb::create().await;
    let file = catalog_file();
    write_catalog(&file, &[("every-2s", "*/2 * * * * *"), ("every-3s", "*/3 * * * * *")]);

    let first = Controller::start(settings(&project, &jobs, &file, &db)).await;
    first.ready().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    first.stop().await;
    // Down for 7 seconds: three or four runs of each schedule fall due meanwhile.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let second = Controller::start(settings(&project, &jobs, &file, &db)).await;
    second.ready().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let replayed = metric(&second.metrics().await, "controller_missed_runs_total{outcome=\"replayed\"}").unwrap_or(0.0);
    second.stop().await;

    let published = read_until(&bus, &jobs_tap, Duration::from_secs(10), |_| false).await;
    let mut nominal: BTreeMap<String, BTreeSet<chrono::DateTime<chrono::Utc>>> = BTreeMap::new();
    for m in &published {
        let job = JobMessage::decode(&m.data).expect("a job message");
        nominal.entry(job.query_id).or_default().insert(job.nominal_time);
    }
    for (query, step) in [("every-2s", 2), ("every-3s", 3)] {
        let times: Vec<_> = nominal.get(query).map(|t| t.iter().copied().collect()).unwrap_or_default();
        // From before the stop to after the restart, 7 s of downtime in between...
        let span = times.last().zip(times.first()).map_or(0, |(l, f)| (*l - *f).num_seconds());
        assert!(span >= 12, "{query}: {times:?}");
        // ...and not one run missing.
        for pair in times.windows(2) {
            assert_eq!((pair[1] - pair[0]).num_seconds(), step, "{query}: a run is missing between {pair:?}");
        }
    }
    assert!(replayed >= 5.0, "the catch-up replayed the runs missed while down: {replayed}");
    let saved: chrono::DateTime<chrono::Utc> =
        db.client.query_one("SELECT at FROM sqo_controller.watermark", &[]).await.expect("a saved watermark").get(0);
    assert!(chrono::Utc::now() - saved < chrono::Duration::seconds(15), "saved at shutdown: {saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_platform_the_controller_starts_from_the_last_good_catalog() {
    integration_tests::init_logs();
    let (project, jobs) = (unique("proj"), unique("jobs"));
    let bus = emulator(&project);
    let db = TestDb::create().await;
    let file = catalog_file();
    write_catalog(&file, &[("every-second", "* * * * * *")]);
    let first = Controller::start(settings(&project, &jobs, &file, &db)).await;
    first.ready().await;
    first.stop().await;
    // A tap made now sees only what the second controller publishes. (Not a second reader
    // on an older tap: the emulator keeps pushing to a cancelled stream for a while.)
    let jobs_tap = format!("{jobs}-after");
    bus.ensure_subscription(&pubsub_bus::SubscriptionSpec::plain(&jobs_tap, &jobs)).await.expect("tap");

    // The platform does not answer (nothing listens on its port).
    let mut s = settings(&project, &jobs, &file, &db);
    s.platform.source = controller::settings::CatalogSource::Api;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    s.platform.base_url = format!("http://{closed}");
    s.platform.max_attempts = 1;
    s.platform.request_timeout = Duration::from_secs(1);
    let second = Controller::start(s).await;
    let checks = second.ready().await;
    assert!(checks.contains("last good catalog"), "/v1/checks says so: {checks}");
    let published = read_until(&bus, &jobs_tap, Duration::from_secs(15), |got| got.len() >= 3).await;
    let m = second.metrics().await;
    assert!(
        published.len() >= 3,
        "the saved schedule runs: {} read; due {:?}, published {:?}; {}",
        published.len(),
        metric(&m, "controller_runs_due_total"),
        metric(&m, "controller_runs_published_total"),
        get(second.admin, "/v1/checks").await.1
    );
    let (status, body) = get(second.admin, "/v1/tenants/acme/schedules").await;
    assert_eq!(status, 200, "{body}");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catalog_that_removes_most_schedules_is_held_back_until_confirmed() {
    integration_tests::init_logs();
    let (project, jobs) = (unique("proj"), unique("jobs"));
    let db = TestDb::create().await;
    let file = catalog_file();
    let ten: Vec<(String, &str)> = (0..10).map(|i| (format!("q{i}"), "0 0 1 1 *")).collect();
    let refs: Vec<(&str, &str)> = ten.iter().map(|(q, c)| (q.as_str(), *c)).collect();
    write_catalog(&file, &refs);
    let c = Controller::start(settings(&project, &jobs, &file, &db)).await;
    c.ready().await;
    let count = |body: String| {
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["schedules"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(count(get(c.admin, "/v1/tenants/acme/schedules").await.1), 10);
    // The platform suddenly answers with 2 of the 10: held back twice, applied the third time.
    write_catalog(&file, &refs[..2]);
    let held = eventually(Duration::from_secs(10), || async {
        let m = c.metrics().await;
        metric(&m, "controller_catalog_held_back_total").filter(|n| *n >= 1.0)
    })
    .await
    .expect("held back");
    assert!(held >= 1.0);
    assert_eq!(count(get(c.admin, "/v1/tenants/acme/schedules").await.1), 10, "still in force while held back");
    eventually(Duration::from_secs(15), || async {
        (count(get(c.admin, "/v1/tenants/acme/schedules").await.1) == 2).then_some(())
    })
    .await
    .expect("applied once confirmed");
    assert_eq!(metric(&c.metrics().await, "controller_catalog_held_back_total"), Some(2.0));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_start_holds_back_a_first_answer_that_removes_most_of_the_last_good_catalog() {
    integration_tests::init_logs();
    let (project, jobs) = (unique("proj"), unique("jobs"));
    let db = TestDb::create().await;
    let file = catalog_file();
    let ten: Vec<(String, &str)> = (0..10).map(|i| (format!("q{i}"), "0 0 1 1 *")).collect();
    let refs: Vec<(&str, &str)> = ten.iter().map(|(q, c)| (q.as_str(), *c)).collect();
    write_catalog(&file, &refs);
    let first = Controller::start(settings(&project, &jobs, &file, &db)).await;
    first.ready().await;
    // The last good catalog is saved after the first sync.
    eventually(Duration::from_secs(10), || async {
        let n: Option<i64> = db
            .client
            .query_opt("SELECT schedules FROM sqo_controller.last_good_catalog", &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        (n == Some(10)).then_some(())
    })
    .await
    .expect("last good catalog saved");
    first.stop().await;

    // While it is down the platform starts answering with 1 of the 10. The restarted
    // controller starts from the last good catalog and holds the answer back until confirmed.
    write_catalog(&file, &refs[..1]);
    let second = Controller::start(settings(&project, &jobs, &file, &db)).await;
    second.ready().await;
    let count = |body: String| {
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["schedules"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(count(get(second.admin, "/v1/tenants/acme/schedules").await.1), 10, "the last good catalog is in force");
    let status: serde_json::Value =
        serde_json::from_str(&get(second.admin, "/v1/catalog/status").await.1).expect("json");
    assert_eq!(status["source"], "last_good_catalog", "{status}");
    eventually(Duration::from_secs(15), || async {
        (count(get(second.admin, "/v1/tenants/acme/schedules").await.1) == 1).then_some(())
    })
    .await
    .expect("applied once confirmed");
    assert!(metric(&second.metrics().await, "controller_catalog_held_back_total").is_some_and(|n| n >= 2.0));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_takes_over_when_the_leader_stops_and_no_run_is_lost() {
    integration_tests::init_logs();
    let (project, jobs) = (unique("proj"), unique("jobs"));
    let bus = emulator(&project);
    let jobs_tap = tap(&bus, &jobs).await;
    let db = TestDb::create().await;
    let file = catalog_file();
    write_catalog(&file, &[("every-second", "* * * * * *")]);
    let ha = || {
        let mut s = settings(&project, &jobs, &file, &db);
        s.state.leader_lease = Duration::from_secs(3);
        s
    };
    let leader = Controller::start(ha()).await;
    assert!(leader.ready().await.contains("leader ("));
    let standby = Controller::start(ha()).await;
    let ready = standby.ready().await;
    assert!(ready.contains("standby:"), "{ready}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let published = |m: &str| metric(m, "controller_runs_published_total").unwrap_or(0.0);
    assert_eq!(published(&standby.metrics().await), 0.0, "only the leader publishes");
    assert!(published(&leader.metrics().await) >= 2.0);

    let stopped_at = chrono::Utc::now();
    leader.stop().await;
    let stopped = std::time::Instant::now();
    eventually(Duration::from_secs(10), || async {
        get(standby.admin, "/v1/checks").await.1.contains("leader (").then_some(())
    })
    .await
    .expect("the standby takes over");
    let handover = stopped.elapsed();
    assert!(handover < Duration::from_secs(4), "a clean stop hands over at once: {handover:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(published(&standby.metrics().await) >= 2.0, "the new leader publishes");
    standby.stop().await;

    let runs = read_until(&bus, &jobs_tap, Duration::from_secs(5), |_| false).await;
    let times: BTreeSet<_> =
        runs.iter().map(|m| JobMessage::decode(&m.data).expect("a job message").nominal_time).collect();
    let times: Vec<_> = times.into_iter().collect();
    // From before the hand-over to after it, every second once.
    let (first, last) = (times.first().copied(), times.last().copied());
    assert!(first.is_some_and(|f| f < stopped_at - chrono::Duration::seconds(2)), "{times:?}");
    assert!(last.is_some_and(|l| l > stopped_at + chrono::Duration::seconds(1)), "{times:?} (stopped at {stopped_at})");
    for pair in times.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_seconds(), 1, "a run is missing between {pair:?}");
    }
}
