//! Run history on the worker's admin port, from the run ledger (the OpenAPI document is
//! `docs/openapi/worker.yaml`):
//!
//! `GET /v1/runs?tenant=&app=&query=&status=&since=&limit=&page_token=`: runs most recently
//! updated first, with status, attempts, duration, rows and error; `next_page_token` when
//! there are more. Errors are JSON `{"code": …, "message": …}`.

use crate::ledger::postgres::{Cursor, PostgresLedger, RunFilter};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
const STATUSES: [&str; 4] = ["running", "succeeded", "failed", "skipped"];

#[derive(Deserialize)]
struct RunsQuery {
    tenant: Option<String>,
    app: Option<String>,
    query: Option<String>,
    status: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    page_token: Option<String>,
}

pub fn router(ledger: Arc<PostgresLedger>) -> Router {
    Router::new().route("/v1/runs", get(runs)).with_state(ledger)
}

/// The answer for a route this API does not have.
pub async fn no_route(uri: axum::http::Uri) -> Response {
    error(StatusCode::NOT_FOUND, "no_route", format!("no route {}", uri.path()))
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

fn invalid(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_argument", message)
}

/// A page token is the last row's update time (microseconds) and job id.
fn encode_token(c: &Cursor) -> String {
    format!("{}.{}", c.updated_at.timestamp_micros(), c.job_id)
}

fn decode_token(token: &str) -> Option<Cursor> {
    let (micros, job_id) = token.split_once('.')?;
    let updated_at = DateTime::<Utc>::from_timestamp_micros(micros.parse().ok()?)?;
    (!job_id.is_empty()).then(|| Cursor { updated_at, job_id: job_id.to_owned() })
}

fn filter(q: RunsQuery) -> Result<RunFilter, String> {
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(format!("limit={v:?} must be a number from 1 to {MAX_LIMIT}")),
        },
    };
    if let Some(s) = q.status.as_deref()
        && !STATUSES.contains(&s)
    {
        return Err(format!("status={s:?} must be one of {}", STATUSES.join(", ")));
    }
    let since = match q.since.as_deref() {
        None => None,
        Some(v) => match DateTime::parse_from_rfc3339(v) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => return Err(format!("since={v:?} is not an RFC 3339 time: {e}")),
        },
    };
    let after = match q.page_token.as_deref() {
        None | Some("") => None,
        Some(t) => match decode_token(t) {
            Some(c) => Some(c),
            None => return Err(format!("page_token={t:?} is not a token this API gave out")),
        },
    };
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    Ok(RunFilter {
        tenant_id: non_empty(q.tenant),
        app_id: non_empty(q.app),
        query_id: non_empty(q.query),
        status: q.status,
        since,
        limit,
        after,
    })
}

async fn runs(State(ledger): State<Arc<PostgresLedger>>, Query(q): Query<RunsQuery>) -> Response {
    let filter = match filter(q) {
        Ok(f) => f,
        Err(message) => return invalid(message),
    };
    match ledger.list(&filter).await {
        Ok((runs, cursor)) => {
            let runs: Vec<serde_json::Value> = runs
                .into_iter()
                .map(|r| {
                    let duration =
                        r.started_at.zip(r.finished_at).map(|(s, f)| (f - s).num_milliseconds() as f64 / 1000.0);
                    let mut v = serde_json::to_value(&r).unwrap_or_default();
                    v["duration_s"] = json!(duration);
                    v
                })
                .collect();
            Json(json!({"runs": runs, "next_page_token": cursor.as_ref().map(encode_token)})).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            updated_at: DateTime::from_timestamp_micros(1_764_842_400_123_456).expect("t"),
            job_id: "ab12".into(),
        };
        assert_eq!(decode_token(&encode_token(&c)), Some(c));
        for bad in ["", "x.y", "123", "123.", "1e9.ab"] {
            assert_eq!(decode_token(bad), None, "{bad:?}");
        }
    }

    fn q(pairs: &[(&str, &str)]) -> RunsQuery {
        let get = |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        RunsQuery {
            tenant: get("tenant"),
            app: get("app"),
            query: get("query"),
            status: get("status"),
            since: get("since"),
            limit: get("limit"),
            page_token: get("page_token"),
        }
    }

    #[test]
    fn bad_parameters_name_the_parameter_and_the_value() {
        for (pairs, needle) in [
            (vec![("limit", "0")], "limit=\"0\""),
            (vec![("limit", "501")], "limit=\"501\""),
            (vec![("status", "done")], "status=\"done\""),
            (vec![("since", "yesterday")], "since=\"yesterday\""),
            (vec![("page_token", "nope")], "page_token=\"nope\""),
        ] {
            let Err(message) = filter(q(&pairs)) else { panic!("{pairs:?} accepted") };
            assert!(message.contains(needle), "{message}");
        }
        let f = filter(q(&[("tenant", "acme"), ("status", "failed"), ("limit", "10")])).expect("valid");
        assert_eq!((f.tenant_id.as_deref(), f.status.as_deref(), f.limit), (Some("acme"), Some("failed"), 10));
    }
}
