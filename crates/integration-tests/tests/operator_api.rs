//! The operator's surface, black-box on real parts (emulator, PostgreSQL; job messages signed
//! by the controller and verified by the worker): the controller's
//! tenants, schedules, catalog status, pause/resume (surviving a restart) and manual trigger;
//! the worker's run history; one run's trace id followed from the controller's publish to the
//! worker's result event; and both OpenAPI documents checked against the served routes.

use integration_tests::{TestDb, app_env, emulator, eventually, get, metric, post, post_as, read_until, tap, unique};
use jobs_core::{ResultEvent, RunStatus, Trigger};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The operator token of the mutating endpoints.
const TOKEN: &str = "operator-token-0123456789";

const KEYRING: &str =
    "k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\nk2:ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

struct Service {
    admin: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Service {
    async fn ready(&self) {
        eventually(Duration::from_secs(40), || async { (get(self.admin, "/readyz").await.0 == 200).then_some(()) })
            .await
            .expect("ready");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("join").expect("stops cleanly");
    }
}

async fn start_controller(project: &str, jobs: &str, file: &Path, db: &TestDb) -> Service {
    let mut s = integration_tests::controller_settings(project, jobs, file, db);
    // Job messages signed by the controller, verified by the worker (rotation: two keys).
    s.signing.keyring = service_kit::Secret::new(KEYRING);
    s.admin.token = service_kit::Secret::new(TOKEN);
    let app = controller::Application::build(s, &app_env()).await.expect("controller builds");
    let admin = app.admin_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Service { admin, shutdown, task }
}

async fn start_worker(project: &str, jobs: &str, db: &TestDb) -> Service {
    let mut s = integration_tests::worker_settings(project, jobs, db);
    s.signing.keyring = service_kit::Secret::new(KEYRING);
    let app = worker::Application::build(s, &app_env()).await.expect("worker builds");
    let admin = app.admin_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Service { admin, shutdown, task }
}

fn write_catalog(file: &Path) {
    let q = |id: &str, cron: &str| json!({"id": id, "schedule": cron, "engine": "warehouse", "sql": "SELECT 1 AS one", "destination": "out"});
    let doc = json!({"tenants": [
        {"id": "acme", "status": "active", "apps": [{"id": "shop", "queries": [
            q("yearly", "0 0 1 1 *"), q("every-second", "* * * * * *"), q("bad-cron", "61 * * * *"),
        ]}]},
        {"id": "globex", "status": "active", "apps": [{"id": "ops", "queries": [q("yearly", "0 0 1 1 *")]}]},
    ]});
    std::fs::write(file, serde_json::to_vec(&doc).expect("json")).expect("write catalog");
}

fn body(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// GET and parse, asserting the status.
async fn get_json(addr: SocketAddr, path: &str, status: u16) -> Value {
    let (got, text) = get(addr, path).await;
    assert_eq!(got, status, "GET {path}: {text}");
    body(&text)
}

async fn post_json(addr: SocketAddr, path: &str, status: u16) -> Value {
    let (got, text) = post_as(addr, path, Some(TOKEN)).await;
    assert_eq!(got, status, "POST {path}: {text}");
    body(&text)
}

fn tenant<'a>(tenants: &'a Value, id: &str) -> &'a Value {
    tenants["tenants"].as_array().expect("array").iter().find(|t| t["tenant_id"] == id).expect("tenant listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_list_pause_resume_and_trigger_runs_and_follow_one_runs_trace() {
    integration_tests::init_logs();
    let (project, jobs) = (unique("proj"), unique("jobs"));
    let bus = emulator(&project);
    let results_tap = tap(&bus, &format!("{jobs}-results")).await;
    let db = TestDb::create().await;
    db.provision_tenant("acme", "").await;
    db.provision_tenant("globex", "").await;
    let file = std::env::temp_dir().join(unique("catalog")).with_extension("json");
    write_catalog(&file);
    let worker = start_worker(&project, &jobs, &db).await;
    worker.ready().await;
    let controller = start_controller(&project, &jobs, &file, &db).await;
    controller.ready().await;
    let c = controller.admin;

    // What is scheduled, and what was skipped and why.
    let tenants = get_json(c, "/v1/tenants", 200).await;
    assert_eq!(tenant(&tenants, "acme")["schedules"], 2);
    assert_eq!(tenant(&tenants, "acme")["skipped_items"], 1);
    assert_eq!(tenant(&tenants, "globex")["schedules"], 1);
    let acme = get_json(c, "/v1/tenants/acme/schedules?next=2", 200).await;
    assert_eq!(acme["schedules"].as_array().map(Vec::len), Some(2));
    assert_eq!(acme["skipped_items"][0]["query_id"], "bad-cron");
    assert_eq!(acme["skipped_items"][0]["field"], "schedule");
    let status = get_json(c, "/v1/catalog/status", 200).await;
    assert_eq!(
        (&status["last_outcome"], &status["source"], &status["schedules"]),
        (&json!("ok"), &json!("file"), &json!(3))
    );
    assert_eq!(status["items"]["query"]["skipped"], 1);
    assert!(status["held_back"].is_null());

    // Pause the tenant: its every-second schedule publishes nothing, and says so.
    let paused = post_json(c, "/v1/tenants/acme:pause", 200).await;
    assert_eq!(paused["paused"], true);
    let held = eventually(Duration::from_secs(10), || async {
        metric(&get(c, "/metrics").await.1, "controller_runs_paused_total").filter(|n| *n >= 2.0)
    })
    .await;
    assert!(held.is_some(), "paused runs are counted");
    let acme = get_json(c, "/v1/tenants/acme/schedules", 200).await;
    assert!(acme["schedules"].as_array().expect("array").iter().all(|s| s["paused"] == true));
    assert_eq!(tenant(&get_json(c, "/v1/tenants", 200).await, "globex")["paused"], false, "globex is not paused");

    // A manual run: published at once, run by the worker, its trace followed end to end.
    let triggered = post_json(c, "/v1/schedules/globex/ops/yearly:trigger", 202).await;
    assert_eq!(triggered["trigger"], "manual");
    let (job_id, trace_id) =
        (triggered["job_id"].as_str().expect("job id"), triggered["trace_id"].as_str().expect("trace"));
    assert_eq!(trace_id.len(), 32);
    let events = read_until(&bus, &results_tap, Duration::from_secs(30), |got| {
        got.iter().any(|m| ResultEvent::decode(&m.data).is_ok_and(|e| e.job_id.to_string() == job_id))
    })
    .await;
    let event = events
        .iter()
        .filter_map(|m| ResultEvent::decode(&m.data).ok())
        .find(|e| e.job_id.to_string() == job_id)
        .expect("the manual run's result event");
    assert_eq!(event.status, RunStatus::Succeeded, "{event:?}");
    assert_eq!(event.trigger, Trigger::Manual);
    assert_eq!(event.trace_id.as_deref(), Some(trace_id), "the worker continued the controller's trace");

    // The worker's run history has it.
    let w = worker.admin;
    let runs = get_json(w, "/v1/runs?tenant=globex&query=yearly&status=succeeded", 200).await;
    let run = &runs["runs"][0];
    assert_eq!((&run["job_id"], &run["attempts"], &run["rows_written"]), (&json!(job_id), &json!(1), &json!(1)));
    assert!(run["duration_s"].as_f64().is_some_and(|d| d >= 0.0), "{run}");
    let bad = get_json(w, "/v1/runs?status=done", 400).await;
    assert_eq!(bad["code"], "invalid_argument");
    assert!(bad["message"].as_str().is_some_and(|m| m.contains("status=\"done\"")), "{bad}");

    // The pause survives a restart of the controller.
    controller.stop().await;
    let controller = start_controller(&project, &jobs, &file, &db).await;
    controller.ready().await;
    let c = controller.admin;
    assert_eq!(tenant(&get_json(c, "/v1/tenants", 200).await, "acme")["paused"], true);
    // Resumed: the every-second schedule's runs are written again.
    let resumed_at = chrono::Utc::now();
    assert_eq!(post_json(c, "/v1/tenants/acme:resume", 200).await["paused"], false);
    let since = resumed_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let path = format!("/v1/runs?tenant=acme&query=every-second&status=succeeded&since={since}&limit=1");
    let page = eventually(Duration::from_secs(20), || async {
        let page = get_json(w, &path, 200).await;
        page["next_page_token"].is_string().then_some(page)
    })
    .await
    .expect("runs again after resume, more than one");
    let token = page["next_page_token"].as_str().expect("token");
    let next = get_json(w, &format!("{path}&page_token={token}"), 200).await;
    assert_ne!(next["runs"][0]["job_id"], page["runs"][0]["job_id"], "the next page moves on");

    // The mutating endpoints need the operator token; the token never shows in an answer.
    for path in ["/v1/tenants/acme:pause", "/v1/schedules/acme/shop/yearly:trigger"] {
        let (status, text) = post(c, path).await;
        assert_eq!((status, body(&text)["code"].clone()), (401, json!("unauthenticated")), "{path}: {text}");
        let (status, text) = post_as(c, path, Some("operator-token-0123456788")).await;
        assert_eq!(status, 401, "a wrong token: {text}");
        assert!(!text.contains(TOKEN));
    }
    assert_eq!(tenant(&get_json(c, "/v1/tenants", 200).await, "acme")["paused"], false, "nothing changed");

    // Errors: JSON with a code; unknown ids and routes answer 404.
    for (method, path, status, code) in [
        ("GET", "/v1/tenants/nope/schedules", 404, "not_found"),
        ("GET", "/v1/schedules/acme/shop/nope", 404, "not_found"),
        ("GET", "/v1/tenants/acme/schedules?next=101", 400, "invalid_argument"),
        ("POST", "/v1/tenants/nope:pause", 404, "not_found"),
        ("POST", "/v1/schedules/acme/shop/yearly:explode", 404, "not_found"),
        ("POST", "/v1/tenants/acme", 405, "method_not_allowed"),
        ("GET", "/v1/nothing", 404, "no_route"),
    ] {
        let v = if method == "GET" { get_json(c, path, status).await } else { post_json(c, path, status).await };
        assert_eq!(v["code"], code, "{method} {path}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // Health says the status and nothing more; the details are the operator's, at /v1/checks.
    for addr in [c, w] {
        assert_eq!(get_json(addr, "/readyz", 200).await, json!({"status": "ready"}));
        let checks = get_json(addr, "/v1/checks", 200).await;
        assert!(checks["checks"]["pubsub"]["detail"].as_str().is_some_and(|d| !d.is_empty()), "{checks}");
    }

    // Every documented operation is served and answers one of its documented statuses.
    check_openapi(c, "controller.yaml").await;
    check_openapi(w, "worker.yaml").await;

    controller.stop().await;
    worker.stop().await;
}

/// Calls every operation of `docs/openapi/{doc}` with its example parameters and checks the
/// answer: a route that exists (not `no_route`) and a documented status.
async fn check_openapi(addr: SocketAddr, doc: &str) {
    let path = format!("{}/../../docs/openapi/{doc}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let spec: Value = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"));
    let paths = spec["paths"].as_object().expect("paths");
    assert!(!paths.is_empty());
    for (template, operations) in paths {
        let url = template.replace("{tenant}", "globex").replace("{app}", "ops").replace("{query}", "yearly");
        for (method, operation) in operations.as_object().expect("operations") {
            let (status, text) = match method.as_str() {
                "get" => get(addr, &url).await,
                "post" => post_as(addr, &url, Some(TOKEN)).await,
                other => panic!("{doc}: method {other} not exercised"),
            };
            let documented: Vec<&String> = operation["responses"].as_object().expect("responses").keys().collect();
            assert!(
                documented.iter().any(|s| s.as_str() == status.to_string()),
                "{doc}: {method} {url} answered {status}, documented {documented:?}: {text}"
            );
            assert!(!text.contains("\"no_route\""), "{doc}: {method} {url} is not served: {text}");
        }
    }
}
