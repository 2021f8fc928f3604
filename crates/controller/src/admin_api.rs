//! The controller's operator API on the admin port (JSON; the OpenAPI document is
//! `docs/openapi/controller.yaml`):
//!
//! - `GET /v1/tenants`: every tenant with schedules, its counts, whether it is paused.
//! - `GET /v1/tenants/{tenant}/schedules?next=N`: its schedules (cron, time zone, spread,
//!   placement, next N fire times, paused or not) and the items of it that were skipped.
//! - `GET /v1/schedules/{tenant}/{app}/{query}?next=N`: one schedule.
//! - `POST /v1/schedules/{tenant}/{app}/{query}:trigger`: publish a run now (manual).
//! - `POST /v1/tenants/{tenant}:pause` / `:resume`, and the same per schedule.
//! - `GET /v1/catalog/status`: the last syncs, items by outcome, what the guard holds back.
//!
//! The mutating endpoints (trigger, pause, resume) need `Authorization: Bearer <admin.token>`
//! (401 without it; 403 when no token is configured). Errors are JSON `{"code": …,
//! "message": …}`; unknown ids answer 404, unknown routes too (`no_route`).

use crate::catalog::{Problem, Schedule, ScheduleKey};
use crate::metrics::Metrics;
use crate::pauses::{PauseKey, Pauses};
use crate::publisher::{JobSink, job_message, trace_of};
use crate::state::StateStore;
use crate::sync::StatusView;
use crate::timer::{DueRun, Timer};
use axum::extract::{Path, Query, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use jobs_core::Trigger;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use tracing::Instrument;

/// The schedules in force, as the last successful sync left them.
pub type CatalogView = Arc<RwLock<Arc<BTreeMap<ScheduleKey, Arc<Schedule>>>>>;

#[derive(Clone)]
pub struct ScheduleApi {
    pub catalog: CatalogView,
    pub timer: Arc<Mutex<Timer>>,
    pub observed: Arc<crate::durations::Observed>,
    pub status: StatusView,
    pub pauses: Arc<Pauses>,
    pub store: Arc<dyn StateStore>,
    pub sink: Arc<dyn JobSink>,
    pub metrics: Metrics,
    /// The bearer token of the mutating endpoints; empty: they are refused.
    pub token: service_kit::Secret,
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<usize>,
}

const MAX_NEXT: usize = 100;

pub fn router(api: ScheduleApi) -> Router {
    Router::new()
        .route("/v1/tenants", get(tenants))
        .route("/v1/tenants/{tenant}", axum::routing::post(tenant_action))
        .route("/v1/tenants/{tenant}/schedules", get(tenant_schedules))
        .route("/v1/schedules/{tenant}/{app}/{query}", get(one_schedule).post(schedule_action))
        .route("/v1/catalog/status", get(catalog_status))
        .with_state(api)
}

/// The answer for a route this API does not have (JSON like every other error).
pub async fn no_route(uri: axum::http::Uri) -> Response {
    error(StatusCode::NOT_FOUND, "no_route", format!("no route {}", uri.path()))
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

fn not_found(message: String) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", message)
}

fn next_count(q: &NextQuery) -> Result<usize, String> {
    match q.next {
        None => Ok(5),
        Some(n) if n <= MAX_NEXT => Ok(n),
        Some(n) => Err(format!("next={n} is over the maximum of {MAX_NEXT}")),
    }
}

/// `name:verb` → (`name`, `verb`); the ids never contain `:`.
fn split_action(segment: &str) -> Option<(&str, &str)> {
    segment.rsplit_once(':')
}

impl ScheduleApi {
    fn schedules(&self) -> Arc<BTreeMap<ScheduleKey, Arc<Schedule>>> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn describe(&self, s: &Schedule, next: usize) -> Value {
        let runs = self.timer.lock().unwrap_or_else(|p| p.into_inner()).next_runs(s, Utc::now(), next);
        let own = self.pauses.since(&PauseKey::schedule(&s.key));
        let tenant = self.pauses.since(&PauseKey::tenant(&s.key.tenant_id));
        json!({
            "tenant_id": &*s.key.tenant_id,
            "app_id": &*s.key.app_id,
            "query_id": &*s.key.query_id,
            "schedule": &*s.expression,
            "timezone": s.timezone.name(),
            "spread_s": s.spread.as_secs(),
            "engine": &*s.engine,
            "destination": &*s.destination,
            "timeout_s": s.timeout.as_secs(),
            "estimated_duration_s": s.estimated_duration.map(|d| d.as_secs()),
            "observed_duration_s": self.observed.get(&s.key).map(|d| d.as_secs_f64()),
            "paused": own.is_some() || tenant.is_some(),
            "paused_at": own.or(tenant),
            "next": runs.iter().map(|(nominal, placed)| json!({
                "nominal": nominal,
                "placed": placed,
                "offset_ms": (*placed - *nominal).num_milliseconds(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Skipped items of `tenant` in the last applied catalog.
    fn problems(&self, tenant: &str) -> Vec<Value> {
        let status = self.status.read().unwrap_or_else(|p| p.into_inner());
        status.problems.iter().filter(|p| p.tenant_id == tenant).map(problem).collect()
    }

    /// Stores a pause or resume, then applies it here at once (the leader re-reads them).
    async fn set_paused(&self, key: PauseKey, paused: bool) -> Response {
        match self.store.set_paused(&key, paused).await {
            Ok(at) => {
                self.pauses.set(key.clone(), at);
                tracing::info!(what = %key, paused, "pause changed through the admin API");
                let mut body = json!({"tenant_id": key.tenant_id, "paused": at.is_some(), "paused_at": at});
                if !key.is_tenant() {
                    body["app_id"] = json!(key.app_id);
                    body["query_id"] = json!(key.query_id);
                }
                Json(body).into_response()
            }
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("cannot store the pause: {e}")),
        }
    }

    /// Publishes a manual run of `s` now: nominal time now (milliseconds), window from the
    /// schedule's previous fire time.
    async fn trigger(&self, s: Arc<Schedule>) -> Response {
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now);
        let window_start = s.cadence.prev_before(now).unwrap_or(now);
        let run = DueRun { schedule: s, nominal: now, placed: now, window_start };
        let job = job_message(&run, Trigger::Manual);
        let span = tracing::info_span!("trigger run", schedule = %run.schedule.key, job_id = %job.job_id);
        let trace = trace_of(&span);
        match self.sink.send(&job, &trace).instrument(span).await {
            Ok(()) => {
                self.metrics.runs_triggered.inc();
                tracing::info!(
                    job_id = %job.job_id,
                    trace_id = %trace.trace_id_hex(),
                    schedule = %run.schedule.key,
                    "manual run published"
                );
                (
                    StatusCode::ACCEPTED,
                    Json(json!({
                        "job_id": job.job_id.to_string(),
                        "tenant_id": job.tenant_id,
                        "app_id": job.app_id,
                        "query_id": job.query_id,
                        "nominal_time": job.nominal_time,
                        "trigger": "manual",
                        "trace_id": trace.trace_id_hex(),
                    })),
                )
                    .into_response()
            }
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("cannot publish the run: {e:#}")),
        }
    }
}

fn problem(p: &Problem) -> Value {
    json!({
        "kind": p.kind.as_str(),
        "tenant_id": p.tenant_id,
        "app_id": p.app_id,
        "query_id": p.query_id,
        "field": p.field,
        "value": p.value,
        "reason": p.reason,
    })
}

async fn tenants(State(api): State<ScheduleApi>) -> Response {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let catalog = api.schedules();
    for key in catalog.keys() {
        *counts.entry(&key.tenant_id).or_default() += 1;
    }
    let problems: BTreeMap<String, usize> = {
        let status = api.status.read().unwrap_or_else(|p| p.into_inner());
        let mut m = BTreeMap::new();
        for p in &status.problems {
            *m.entry(p.tenant_id.clone()).or_default() += 1;
        }
        m
    };
    let pauses = api.pauses.all();
    let tenants: Vec<Value> = counts
        .iter()
        .map(|(tenant, n)| {
            let paused_at = pauses.get(&PauseKey::tenant(tenant));
            let paused_schedules = pauses.keys().filter(|k| !k.is_tenant() && k.tenant_id == *tenant).count();
            json!({
                "tenant_id": tenant,
                "schedules": n,
                "paused": paused_at.is_some(),
                "paused_at": paused_at,
                "paused_schedules": paused_schedules,
                "skipped_items": problems.get(*tenant).copied().unwrap_or(0),
            })
        })
        .collect();
    Json(json!({"tenants": tenants})).into_response()
}

async fn tenant_schedules(
    State(api): State<ScheduleApi>,
    Path(tenant): Path<String>,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = match next_count(&q) {
        Ok(n) => n,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_argument", message),
    };
    let catalog = api.schedules();
    let schedules: Vec<Value> =
        catalog.values().filter(|s| *s.key.tenant_id == *tenant).map(|s| api.describe(s, next)).collect();
    let problems = api.problems(&tenant);
    if schedules.is_empty() && problems.is_empty() {
        return not_found(format!("tenant {tenant:?} has no schedules"));
    }
    let paused_at = api.pauses.since(&PauseKey::tenant(&tenant));
    Json(json!({
        "tenant_id": tenant,
        "paused": paused_at.is_some(),
        "paused_at": paused_at,
        "schedules": schedules,
        "skipped_items": problems,
    }))
    .into_response()
}

fn schedule_key(tenant: &str, app: &str, query: &str) -> ScheduleKey {
    ScheduleKey { tenant_id: Arc::from(tenant), app_id: Arc::from(app), query_id: Arc::from(query) }
}

async fn one_schedule(
    State(api): State<ScheduleApi>,
    Path((tenant, app, query)): Path<(String, String, String)>,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = match next_count(&q) {
        Ok(n) => n,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_argument", message),
    };
    let key = schedule_key(&tenant, &app, &query);
    match api.schedules().get(&key) {
        Some(s) => Json(api.describe(s, next)).into_response(),
        None => not_found(format!("no schedule {key}")),
    }
}

/// Mutating endpoints need `Authorization: Bearer <admin.token>`, compared in constant time:
/// the refusal, or `None` when the request may go on.
fn refusal(api: &ScheduleApi, headers: &HeaderMap) -> Option<Response> {
    if api.token.is_empty() {
        return Some(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "mutating endpoints are disabled: set admin.token (or admin.token_file)".into(),
        ));
    }
    let given = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if service_kit::secrets_equal(token.trim(), api.token.expose()) => None,
        _ => {
            tracing::warn!(
                authorization = if given.is_some() { "wrong" } else { "missing" },
                "operator API request refused"
            );
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this endpoint needs Authorization: Bearer <admin.token>".into(),
            );
            response.headers_mut().insert(WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
            Some(response)
        }
    }
}

async fn schedule_action(
    State(api): State<ScheduleApi>,
    headers: HeaderMap,
    Path((tenant, app, segment)): Path<(String, String, String)>,
) -> Response {
    if let Some(response) = refusal(&api, &headers) {
        return response;
    }
    let Some((query, verb)) = split_action(&segment) else {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("POST needs an action: /v1/schedules/{tenant}/{app}/{segment}:trigger, :pause or :resume"),
        );
    };
    let key = schedule_key(&tenant, &app, query);
    let catalog = api.schedules();
    // A standby that has never led has no catalog: it stores pauses without checking the ids
    // (the leader applies them), and cannot build a run to trigger.
    let schedule = catalog.get(&key).cloned();
    if schedule.is_none() && !catalog.is_empty() {
        return not_found(format!("no schedule {key}"));
    }
    match (verb, schedule) {
        ("trigger", Some(schedule)) => api.trigger(schedule).await,
        ("trigger", None) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_catalog",
            "this replica has no catalog yet (a standby that has not led): retry, another replica answers".into(),
        ),
        ("pause", _) => api.set_paused(PauseKey::schedule(&key), true).await,
        ("resume", _) => api.set_paused(PauseKey::schedule(&key), false).await,
        (other, _) => not_found(format!("no action {other:?} on a schedule: trigger, pause or resume")),
    }
}

async fn tenant_action(State(api): State<ScheduleApi>, headers: HeaderMap, Path(segment): Path<String>) -> Response {
    if let Some(response) = refusal(&api, &headers) {
        return response;
    }
    let Some((tenant, verb)) = split_action(&segment) else {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("POST needs an action: /v1/tenants/{segment}:pause or :resume"),
        );
    };
    let catalog = api.schedules();
    // A standby that has never led has no catalog: it stores the pause without checking.
    if !catalog.is_empty() && !catalog.keys().any(|k| *k.tenant_id == *tenant) {
        return not_found(format!("tenant {tenant:?} has no schedules"));
    }
    match verb {
        "pause" => api.set_paused(PauseKey::tenant(tenant), true).await,
        "resume" => api.set_paused(PauseKey::tenant(tenant), false).await,
        other => not_found(format!("no action {other:?} on a tenant: pause or resume")),
    }
}

async fn catalog_status(State(api): State<ScheduleApi>) -> Response {
    let status = api.status.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut body = serde_json::to_value(&status).unwrap_or_else(|_| json!({}));
    body["skipped_items"] = json!(status.problems.len());
    body["paused"] = json!(api.pauses.all().len());
    Json(body).into_response()
}
