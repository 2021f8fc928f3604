//! Unary pull over Pub/Sub's REST API (`subscriptions.pull`, `acknowledge`,
//! `modifyAckDeadline`), and a lease keeper that extends the deadlines of the messages in
//! hand, batches acks and nacks, and hands back what is dropped.
//!
//! Why not the crate's streaming pull: a stream takes messages the worker cannot start yet
//! (flow control is only advisory and the emulator ignores it), and a stream whose process
//! dies leaves its messages with the emulator for minutes or for good (measured: 485 of 1,000
//! runs never came back within 400 s after 20 `kill -9`s). A unary pull takes exactly what the
//! worker can start, and what it took comes back when the ack deadline passes, whatever
//! happened to the process.

use crate::{BusError, Connection};
use base64::Engine as _;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Google's REST endpoint (the emulator's comes from `PUBSUB_EMULATOR_HOST`).
const GOOGLE_ENDPOINT: &str = "https://pubsub.googleapis.com";
/// Pub/Sub's limit on ack ids per request is by size (512 KiB); ids are ~200 bytes.
const ACK_BATCH: usize = 1000;
/// How long one call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// One message as a pull hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub ack_id: String,
    pub message_id: String,
    pub data: Vec<u8>,
    pub attributes: HashMap<String, String>,
    /// Filled by Pub/Sub when the subscription has a dead-letter policy.
    pub delivery_attempt: Option<u32>,
}

/// A failed pull, ack or deadline change: `permanent` when retrying cannot help (the
/// subscription does not exist, or this identity may not read it).
#[derive(Debug, thiserror::Error)]
#[error("{call} on {subscription} failed: {message}")]
pub struct PullError {
    pub call: &'static str,
    pub subscription: String,
    pub message: String,
    pub permanent: bool,
}

/// Unary pull on one subscription.
#[derive(Clone)]
pub struct Puller {
    http: reqwest::Client,
    /// `{endpoint}/v1/projects/P/subscriptions/S`
    url: String,
    subscription: String,
    /// `None` for the emulator (anonymous).
    credentials: Option<google_cloud_auth::credentials::Credentials>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Connection {
    /// A unary puller for `subscription`: the emulator's endpoint anonymously, or Google's
    /// with Application Default Credentials.
    pub fn puller(&self, subscription: &str) -> Result<Puller, BusError> {
        let (endpoint, credentials) = match &self.emulator_endpoint {
            Some(endpoint) => (endpoint.trim_end_matches('/').to_owned(), None),
            None => {
                let credentials = google_cloud_auth::credentials::Builder::default()
                    .build()
                    .map_err(|e| BusError::Build { client: "puller", source: e.into() })?;
                (GOOGLE_ENDPOINT.to_owned(), Some(credentials))
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| BusError::Build { client: "puller", source: e.into() })?;
        let path = self.subscription_path(subscription);
        Ok(Puller { http, url: format!("{endpoint}/v1/{path}"), subscription: path, credentials })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PullResponse {
    #[serde(default)]
    received_messages: Vec<WireReceived>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReceived {
    ack_id: String,
    message: WireMessage,
    #[serde(default)]
    delivery_attempt: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMessage {
    #[serde(default)]
    data: String,
    #[serde(default)]
    attributes: HashMap<String, String>,
    #[serde(default)]
    message_id: String,
}

impl Puller {
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// Takes up to `max` messages, or none, at once: the pull never waits on the server
    /// (`returnImmediately`), the caller polls. A pull left waiting and then abandoned —
    /// by a client timeout or a killed worker — keeps taking messages on the emulator: they
    /// go to the dead request and come back only after their ack deadline, again and again
    /// (measured: one message handed to abandoned pulls 10 times in 130 s). Google discourages
    /// `returnImmediately` for throughput, which jobs of seconds to hours do not need.
    pub async fn pull(&self, max: usize) -> Result<Vec<Received>, PullError> {
        let body = serde_json::json!({ "maxMessages": max.max(1), "returnImmediately": true });
        let text = self.call("pull", &body).await?;
        let response: PullResponse =
            serde_json::from_str(&text).map_err(|e| self.error("pull", format!("unreadable answer: {e}"), false))?;
        response
            .received_messages
            .into_iter()
            .map(|r| {
                let data =
                    base64::engine::general_purpose::STANDARD.decode(r.message.data.as_bytes()).map_err(|e| {
                        self.error("pull", format!("message {}: data is not base64: {e}", r.message.message_id), false)
                    })?;
                Ok(Received {
                    ack_id: r.ack_id,
                    message_id: r.message.message_id,
                    data,
                    attributes: r.message.attributes,
                    delivery_attempt: r.delivery_attempt,
                })
            })
            .collect()
    }

    /// Acknowledges `ack_ids` (at most [`ACK_BATCH`] per request).
    pub async fn acknowledge(&self, ack_ids: &[String]) -> Result<(), PullError> {
        for chunk in ack_ids.chunks(ACK_BATCH) {
            let body = serde_json::json!({ "ackIds": chunk });
            self.call("acknowledge", &body).await?;
        }
        Ok(())
    }

    /// Sets the ack deadline of `ack_ids` to `seconds` from now (0 hands them back at once).
    pub async fn modify_ack_deadline(&self, ack_ids: &[String], seconds: u32) -> Result<(), PullError> {
        for chunk in ack_ids.chunks(ACK_BATCH) {
            let body = serde_json::json!({ "ackIds": chunk, "ackDeadlineSeconds": seconds });
            self.call("modifyAckDeadline", &body).await?;
        }
        Ok(())
    }

    /// POSTs `body` to `{subscription}:{call}`; the answer's text.
    async fn call(&self, call: &'static str, body: &serde_json::Value) -> Result<String, PullError> {
        let mut request = self.http.post(format!("{}:{call}", self.url)).json(body).timeout(CALL_TIMEOUT);
        if let Some(credentials) = &self.credentials {
            use google_cloud_auth::credentials::CacheableResource;
            match credentials.headers(Default::default()).await {
                Ok(CacheableResource::New { data, .. }) => request = request.headers(data),
                Ok(CacheableResource::NotModified) => {}
                Err(e) => return Err(self.error(call, format!("no credentials: {e}"), false)),
            }
        }
        let failed = |e: reqwest::Error| self.error(call, transport_error(&e), false);
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let text = response.text().await.map_err(failed)?;
        if status.is_success() {
            return Ok(text);
        }
        let permanent = matches!(status.as_u16(), 400 | 401 | 403 | 404);
        let detail: String = text.chars().take(300).collect();
        Err(self.error(call, format!("HTTP {status}: {}", detail.trim()), permanent))
    }

    fn error(&self, call: &'static str, message: String, permanent: bool) -> PullError {
        PullError { call, subscription: self.subscription.clone(), message, permanent }
    }
}

/// A transport error without its URL, with its causes (reqwest's own line says little).
fn transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    service_kit::with_sources(kind, e)
}

enum Command {
    Hold(String),
    Ack(String),
    Nack(String),
}

/// How the lease keeper extends and settles messages.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// The deadline each extension asks for (the subscription's ack deadline).
    pub ack_deadline: Duration,
    /// A message in hand longer than this is no longer extended (Pub/Sub redelivers it).
    pub max_lease: Duration,
    /// How often acks and nacks are sent.
    pub flush_every: Duration,
}

/// Counts the keeper reports when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeeperReport {
    pub acked: u64,
    pub nacked: u64,
    /// Acks that could not be sent before their deadline passed (Pub/Sub redelivers those
    /// messages; the run ledger acks them without running again).
    pub acks_lost: u64,
}

/// Extends the deadline of every message in hand (every third of the ack deadline), and
/// sends acks and nacks in batches. Cheap to clone; the task ends when every handle is
/// dropped, after a last flush.
#[derive(Clone)]
pub struct LeaseKeeper {
    tx: mpsc::UnboundedSender<Command>,
}

impl LeaseKeeper {
    pub fn start(puller: Puller, settings: LeaseSettings) -> (LeaseKeeper, tokio::task::JoinHandle<KeeperReport>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(keep(puller, settings, rx));
        (LeaseKeeper { tx }, task)
    }

    /// Takes `message` in hand: its deadline is extended until the returned lease is acked,
    /// nacked or dropped (dropping nacks, so a cancelled run is handed back).
    pub fn hold(&self, message: &Received) -> Lease {
        let _ = self.tx.send(Command::Hold(message.ack_id.clone()));
        Lease { ack_id: Some(message.ack_id.clone()), tx: self.tx.clone() }
    }
}

/// One message in hand.
pub struct Lease {
    ack_id: Option<String>,
    tx: mpsc::UnboundedSender<Command>,
}

impl Lease {
    pub fn ack(mut self) {
        if let Some(id) = self.ack_id.take() {
            let _ = self.tx.send(Command::Ack(id));
        }
    }

    pub fn nack(mut self) {
        if let Some(id) = self.ack_id.take() {
            let _ = self.tx.send(Command::Nack(id));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(id) = self.ack_id.take() {
            let _ = self.tx.send(Command::Nack(id));
        }
    }
}

async fn keep(puller: Puller, settings: LeaseSettings, mut rx: mpsc::UnboundedReceiver<Command>) -> KeeperReport {
    let deadline_secs = settings.ack_deadline.as_secs().clamp(10, 600) as u32;
    let mut held: HashMap<String, Instant> = HashMap::new();
    // Acks not yet sent, with the time they were asked for (dropped once their deadline is
    // past: the message has been redelivered by then).
    let mut acks: Vec<(String, Instant)> = Vec::new();
    let mut nacks: Vec<String> = Vec::new();
    let mut report = KeeperReport::default();
    let mut flush = tokio::time::interval(settings.flush_every);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut extend = tokio::time::interval(settings.ack_deadline / 3);
    extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    extend.tick().await;
    loop {
        tokio::select! {
            command = rx.recv() => match command {
                Some(Command::Hold(id)) => { held.insert(id, Instant::now()); }
                Some(Command::Ack(id)) => { held.remove(&id); acks.push((id, Instant::now())); }
                Some(Command::Nack(id)) => { held.remove(&id); nacks.push(id); }
                None => break,
            },
            _ = flush.tick() => send(&puller, &mut acks, &mut nacks, settings.ack_deadline, &mut report).await,
            _ = extend.tick() => {
                let now = Instant::now();
                held.retain(|id, since| {
                    let keep = now.duration_since(*since) < settings.max_lease;
                    if !keep {
                        tracing::warn!(ack_id = %id, max_lease_secs = settings.max_lease.as_secs(), "message held longer than the maximum lease, no longer extended");
                    }
                    keep
                });
                let ids: Vec<String> = held.keys().cloned().collect();
                if !ids.is_empty() && let Err(e) = puller.modify_ack_deadline(&ids, deadline_secs).await {
                    tracing::warn!(error = %e, messages = ids.len(), "cannot extend ack deadlines");
                }
            }
        }
    }
    // Every handle is gone: whatever is still held was neither acked nor nacked.
    nacks.extend(held.into_keys());
    send(&puller, &mut acks, &mut nacks, settings.ack_deadline, &mut report).await;
    report.acks_lost += acks.len() as u64;
    report
}

async fn send(
    puller: &Puller,
    acks: &mut Vec<(String, Instant)>,
    nacks: &mut Vec<String>,
    ack_deadline: Duration,
    report: &mut KeeperReport,
) {
    if !acks.is_empty() {
        let ids: Vec<String> = acks.iter().map(|(id, _)| id.clone()).collect();
        match puller.acknowledge(&ids).await {
            Ok(()) => {
                tracing::debug!(ack_ids = ?ids, "acknowledged");
                report.acked += ids.len() as u64;
                acks.clear();
            }
            Err(e) => {
                let before = acks.len();
                acks.retain(|(_, at)| at.elapsed() < ack_deadline);
                let expired = (before - acks.len()) as u64;
                report.acks_lost += expired;
                tracing::warn!(error = %e, pending = acks.len(), expired, "cannot acknowledge, retrying");
            }
        }
    }
    if !nacks.is_empty() {
        match puller.modify_ack_deadline(nacks, 0).await {
            Ok(()) => {
                tracing::debug!(ack_ids = ?nacks, "handed back");
                report.nacked += nacks.len() as u64
            }
            // A nack that does not arrive is a redelivery after the deadline instead.
            Err(e) => tracing::warn!(error = %e, messages = nacks.len(), "cannot hand messages back"),
        }
        nacks.clear();
    }
}
