//! The controller's schedule API on the admin port: each schedule with its cron, time zone,
//! spread, and its next fire times with their placement.
//!
//! - `GET /v1/tenants/{tenant}/schedules?next=N`
//! - `GET /v1/schedules/{tenant}/{app}/{query}?next=N`
//!
//! Errors are JSON `{"code": …, "message": …}`; unknown ids answer 404.

use crate::catalog::{Schedule, ScheduleKey};
use crate::timer::Timer;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// The schedules in force, as the last successful sync left them.
pub type CatalogView = Arc<RwLock<Arc<BTreeMap<ScheduleKey, Arc<Schedule>>>>>;

#[derive(Clone)]
pub struct ScheduleApi {
    pub catalog: CatalogView,
    pub timer: Arc<Mutex<Timer>>,
    pub observed: Arc<crate::durations::Observed>,
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<usize>,
}

const MAX_NEXT: usize = 100;

pub fn router(api: ScheduleApi) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/schedules", get(tenant_schedules))
        .route("/v1/schedules/{tenant}/{app}/{query}", get(one_schedule))
        .with_state(api)
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

fn next_count(q: &NextQuery) -> Result<usize, String> {
    match q.next {
        None => Ok(5),
        Some(n) if n <= MAX_NEXT => Ok(n),
        Some(n) => Err(format!("next={n} is over the maximum of {MAX_NEXT}")),
    }
}

fn describe(api: &ScheduleApi, s: &Schedule, next: usize) -> Value {
    let runs = api.timer.lock().unwrap_or_else(|p| p.into_inner()).next_runs(s, Utc::now(), next);
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
        "observed_duration_s": api.observed.get(&s.key).map(|d| d.as_secs_f64()),
        "next": runs.iter().map(|(nominal, placed)| json!({
            "nominal": nominal,
            "placed": placed,
            "offset_ms": (*placed - *nominal).num_milliseconds(),
        })).collect::<Vec<_>>(),
    })
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
    let catalog = api.catalog.read().unwrap_or_else(|p| p.into_inner()).clone();
    let schedules: Vec<Value> =
        catalog.values().filter(|s| *s.key.tenant_id == *tenant).map(|s| describe(&api, s, next)).collect();
    if schedules.is_empty() {
        return error(StatusCode::NOT_FOUND, "not_found", format!("tenant {tenant:?} has no schedules"));
    }
    Json(json!({"tenant_id": tenant, "schedules": schedules})).into_response()
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
    let key = ScheduleKey {
        tenant_id: Arc::from(tenant.as_str()),
        app_id: Arc::from(app.as_str()),
        query_id: Arc::from(query.as_str()),
    };
    let catalog = api.catalog.read().unwrap_or_else(|p| p.into_inner()).clone();
    match catalog.get(&key) {
        Some(s) => Json(describe(&api, s, next)).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", format!("no schedule {key}")),
    }
}
