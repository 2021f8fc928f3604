//! The admin HTTP server every binary runs on its own port: `/livez` (the process
//! answers), `/readyz` (every readiness check passes: the status and nothing more, since
//! probes and load balancers may reach it), `/v1/checks` (each check with its detail, for
//! operators) and `/metrics` (Prometheus text). Binaries merge their own routes into it.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Named readiness checks; ready when every registered check is ok.
#[derive(Debug, Default)]
pub struct Readiness {
    checks: Mutex<BTreeMap<&'static str, (bool, String)>>,
}

impl Readiness {
    /// Registers a check in the not-ready state.
    pub fn register(&self, name: &'static str, detail: impl Into<String>) {
        self.lock().insert(name, (false, detail.into()));
    }

    pub fn set(&self, name: &'static str, ok: bool, detail: impl Into<String>) {
        self.lock().insert(name, (ok, detail.into()));
    }

    pub fn is_ready(&self) -> bool {
        self.lock().values().all(|(ok, _)| *ok)
    }

    fn snapshot(&self) -> BTreeMap<&'static str, (bool, String)> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, (bool, String)>> {
        self.checks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the admin routes share.
#[derive(Clone)]
pub struct AdminState {
    pub readiness: Arc<Readiness>,
    pub registry: Arc<Registry>,
}

/// The standard routes; merge a binary's own routes with `Router::merge`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/v1/checks", get(checks))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `{"status": "ready"}` or `{"status": "not ready"}`, with 200 or 503: no detail (an
/// error text may name hosts or carry a server's message).
async fn readyz(State(state): State<AdminState>) -> Response {
    let ready = state.readiness.is_ready();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(serde_json::json!({"status": if ready { "ready" } else { "not ready" }}))).into_response()
}

/// Every readiness check with its detail; 200 or 503 as `/readyz`.
async fn checks(State(state): State<AdminState>) -> Response {
    let checks = state.readiness.snapshot();
    let ready = checks.values().all(|(ok, _)| *ok);
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": checks.iter().map(|(name, (ok, detail))| {
            (name.to_string(), serde_json::json!({"ok": ok, "detail": detail}))
        }).collect::<serde_json::Map<_, _>>(),
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}\n")).into_response(),
    }
}

/// A bound admin listener; bind early so a port clash fails start-up, not later.
pub struct AdminServer {
    listener: tokio::net::TcpListener,
}

impl AdminServer {
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on admin address {addr}: {e}"))?;
        Ok(AdminServer { listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self, app: Router, stop: CancellationToken) -> anyhow::Result<()> {
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(|e| anyhow::anyhow!("admin server failed: {e}"))
    }

    /// Serves in the background until [`RunningAdmin::stop`]; the admin server is the last
    /// thing a service stops, so health checks answer while it drains.
    pub fn spawn(self, app: Router) -> RunningAdmin {
        let stop = CancellationToken::new();
        let task = tokio::spawn(self.serve(app, stop.clone()));
        RunningAdmin { stop, task }
    }
}

/// A background admin server.
pub struct RunningAdmin {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningAdmin {
    /// Stops it and waits, logging a failure.
    pub async fn stop(self) {
        self.stop.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "admin server failed"),
            Err(e) => tracing::error!(error = %e, "admin server panicked"),
        }
    }
}
