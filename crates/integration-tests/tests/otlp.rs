//! Span export over OTLP/HTTP (the standard `OTEL_EXPORTER_OTLP_ENDPOINT`), to a fake
//! collector on loopback: a manual run's spans — the controller's publish and the worker's
//! run — arrive as one trace, the worker's span a child of the controller's, with the trace id
//! the trigger endpoint and the result event name. Its own test binary: the subscriber with
//! the exporter is process-wide.

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use integration_tests::{TestDb, app_env, emulator, eventually, get, post_as as post_to, read_until, tap, unique};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

type Received = Arc<Mutex<Vec<Span>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn collect(State(received): State<Received>, body: Bytes) -> &'static str {
    if let Ok(request) = ExportTraceServiceRequest::decode(body) {
        let mut spans = received.lock().unwrap_or_else(|p| p.into_inner());
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                for s in scope.spans {
                    spans.push(Span {
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                    });
                }
            }
        }
    }
    ""
}

#[test]
fn a_manual_runs_spans_reach_the_collector_as_one_trace() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let received: Received = Arc::default();
    let collector = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route("/v1/traces", post(collect)).with_state(received.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });
    // The exporter is built outside the runtime, as the binaries do.
    let env: HashMap<String, String> =
        [("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), format!("http://{collector}"))].into_iter().collect();
    assert!(service_kit::telemetry::span_export_wanted(&env));
    let settings = service_kit::telemetry::LogSettings { level: "info,worker=debug".into(), ..Default::default() };
    let telemetry = service_kit::telemetry::init_with_export(&settings, "sqo-test", &env);
    assert!(telemetry.exports_spans());

    let (job_id, trace_id, event_trace) = runtime.block_on(run_one_manual_run());
    assert_eq!(event_trace.as_deref(), Some(trace_id.as_str()), "the result event names the trace");
    drop(telemetry); // flushes the exporter

    let spans = runtime.block_on(async {
        eventually(Duration::from_secs(10), || async {
            let spans = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let trace: Vec<Span> = spans.into_iter().filter(|s| s.trace_id == trace_id).collect();
            (trace.iter().any(|s| s.name == "run")).then_some(trace)
        })
        .await
    });
    let all = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let trace = spans.unwrap_or_else(|| {
        panic!(
            "no spans of trace {trace_id} (job {job_id}) reached the collector; it got {} spans: {:?}",
            all.len(),
            all.iter().take(5).collect::<Vec<_>>()
        )
    });
    let trigger = trace.iter().find(|s| s.name == "trigger run").expect("the controller's span");
    let run = trace.iter().find(|s| s.name == "run").expect("the worker's span");
    assert_eq!(run.parent_span_id, trigger.span_id, "the worker's span continues the controller's: {trace:?}");
}

/// Starts a worker and a controller, triggers one run, and returns its job id, the trace id
/// the trigger answered and the one its result event carries.
async fn run_one_manual_run() -> (String, String, Option<String>) {
    let (project, jobs) = (unique("proj"), unique("jobs"));
    let bus = emulator(&project);
    let results_tap = tap(&bus, &format!("{jobs}-results")).await;
    let db = TestDb::create().await;
    db.provision_tenant("acme", "").await;
    let file = std::env::temp_dir().join(unique("catalog")).with_extension("json");
    let doc = serde_json::json!({"tenants": [{"id": "acme", "status": "active", "apps": [{"id": "shop", "queries": [
        {"id": "yearly", "schedule": "0 0 1 1 *", "engine": "warehouse", "sql": "SELECT 1 AS one", "destination": "out"}
    ]}]}]});
    std::fs::write(&file, serde_json::to_vec(&doc).expect("json")).expect("catalog");

    let w = integration_tests::worker_settings(&project, &jobs, &db);
    let worker_app = worker::Application::build(w, &app_env()).await.expect("worker");
    let worker_admin = worker_app.admin_addr();
    let stop = CancellationToken::new();
    let worker_task = tokio::spawn(worker_app.run_until_stopped(stop.clone()));
    let mut c = integration_tests::controller_settings(&project, &jobs, &file, &db);
    c.admin.token = service_kit::Secret::new("operator-token-0123456789");
    let controller_app = controller::Application::build(c, &app_env()).await.expect("controller");
    let controller_admin = controller_app.admin_addr();
    let controller_task = tokio::spawn(controller_app.run_until_stopped(stop.clone()));
    for admin in [worker_admin, controller_admin] {
        eventually(Duration::from_secs(40), || async { (get(admin, "/readyz").await.0 == 200).then_some(()) })
            .await
            .expect("ready");
    }

    let (status, body) =
        post_to(controller_admin, "/v1/schedules/acme/shop/yearly:trigger", Some("operator-token-0123456789")).await;
    assert_eq!(status, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    let job_id = answer["job_id"].as_str().expect("job id").to_owned();
    let trace_id = answer["trace_id"].as_str().expect("trace id").to_owned();
    let events = read_until(&bus, &results_tap, Duration::from_secs(30), |got| {
        got.iter().any(|m| jobs_core::ResultEvent::decode(&m.data).is_ok_and(|e| e.job_id.to_string() == job_id))
    })
    .await;
    let event = events
        .iter()
        .filter_map(|m| jobs_core::ResultEvent::decode(&m.data).ok())
        .find(|e| e.job_id.to_string() == job_id)
        .expect("the run's result event");
    stop.cancel();
    controller_task.await.expect("join").expect("controller stops");
    worker_task.await.expect("join").expect("worker stops");
    (job_id, trace_id, event.trace_id)
}
