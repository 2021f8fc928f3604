//! A fake platform API speaking `shared/platform-api.md`: paged tenants and apps, a bearer
//! token, and scripted faults (a status N times, a 429 with `Retry-After`, a broken body). It records every
//! request so tests can check what the controller did.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A scripted answer given instead of the real one.
#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16),
    TooManyRequests {
        retry_after: String,
    },
    /// A 200 with this body as it is (malformed JSON, a page cut short).
    Body(String),
}

/// A recorded request.
#[derive(Debug, Clone)]
pub struct Request {
    pub at: Instant,
    pub path: String,
    pub page_token: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    token: String,
    tenant_pages: Vec<Vec<Value>>,
    app_pages: HashMap<String, Vec<Vec<Value>>>,
    faults: HashMap<String, VecDeque<Fault>>,
    requests: Vec<Request>,
}

#[derive(Clone)]
pub struct FakePlatform {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl FakePlatform {
    /// Starts the server on 127.0.0.1 with an empty catalog; it stops with the runtime.
    pub async fn start(token: &str) -> FakePlatform {
        let inner = Arc::new(Mutex::new(Inner { token: token.to_owned(), ..Inner::default() }));
        let app = Router::new()
            .route("/v1/tenants", get(tenants))
            .route("/v1/tenants/{tenant}/apps", get(apps))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake platform");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakePlatform { addr, inner }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the tenants, split into the given pages (each a list of tenant documents).
    pub fn set_tenant_pages(&self, pages: Vec<Vec<Value>>) {
        self.lock().tenant_pages = pages;
    }

    /// Replaces one tenant's apps, split into pages.
    pub fn set_app_pages(&self, tenant: &str, pages: Vec<Vec<Value>>) {
        self.lock().app_pages.insert(tenant.to_owned(), pages);
    }

    /// The next requests to `path` get these faults, in order, before the real answer.
    pub fn inject(&self, path: &str, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.entry(path.to_owned()).or_default().extend(faults);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Shared = Arc<Mutex<Inner>>;

fn answer(
    inner: &Shared,
    headers: &HeaderMap,
    path: String,
    page_token: Option<String>,
    key: &str,
    pages: impl FnOnce(&Inner) -> Vec<Vec<Value>>,
) -> Response {
    let mut s = inner.lock().unwrap_or_else(|p| p.into_inner());
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {}", s.token));
    let fault = s.faults.get_mut(&path).and_then(VecDeque::pop_front);
    let (status, response) = if !authorized {
        (401, (StatusCode::UNAUTHORIZED, Json(json!({"error": "bad token"}))).into_response())
    } else if let Some(fault) = fault {
        match fault {
            Fault::Status(code) => {
                let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (code.as_u16(), (code, "scripted failure").into_response())
            }
            Fault::TooManyRequests { retry_after } => {
                (429, (StatusCode::TOO_MANY_REQUESTS, [("retry-after", retry_after)], "slow down").into_response())
            }
            Fault::Body(body) => (200, (StatusCode::OK, [("content-type", "application/json")], body).into_response()),
        }
    } else {
        let pages = pages(&s);
        let index: usize = page_token.as_deref().and_then(|t| t.parse().ok()).unwrap_or(0);
        let page = pages.get(index).cloned().unwrap_or_default();
        // The last page says "" (an awkward case of the contract); the others point on.
        let next = if index + 1 < pages.len() { json!((index + 1).to_string()) } else { json!("") };
        (200, Json(json!({ key: page, "next_page_token": next, "a_future_field": 1 })).into_response())
    };
    s.requests.push(Request { at: Instant::now(), path, page_token, status });
    response
}

async fn tenants(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let token = q.get("page_token").cloned();
    answer(&inner, &headers, "/v1/tenants".into(), token, "tenants", |s| s.tenant_pages.clone())
}

async fn apps(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let token = q.get("page_token").cloned();
    let path = format!("/v1/tenants/{tenant}/apps");
    answer(&inner, &headers, path, token, "apps", |s| s.app_pages.get(&tenant).cloned().unwrap_or_default())
}
