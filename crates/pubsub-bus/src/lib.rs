//! The Pub/Sub adapter both binaries use: connection settings (Google's endpoint with
//! Application Default Credentials, or the emulator named by `PUBSUB_EMULATOR_HOST`),
//! resource creation for development, a publisher whose retries are bounded, and (in
//! [`pull`]) the unary pull the worker takes its jobs with.
//!
//! The official `google-cloud-pubsub` crate does not read `PUBSUB_EMULATOR_HOST` itself;
//! [`Connection::from_env`] does, the way the other Google client libraries do.

use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_pubsub::client::{Publisher, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, Message, RetryPolicy};
use google_cloud_pubsub::retry_policy::RetryableErrors;
use std::collections::HashMap;
use std::time::Duration;

pub mod pull;

pub use google_cloud_pubsub::client::Subscriber;
pub use google_cloud_pubsub::model::Message as PubsubMessage;
pub use google_cloud_pubsub::subscriber::handler::Handler;
pub use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior, ShutdownToken};

/// Points a client builder at the emulator (anonymous credentials) when one is configured;
/// every client builder of the crate has the same two methods but no common trait.
macro_rules! emulator {
    ($conn:expr, $builder:expr) => {
        match &$conn.emulator_endpoint {
            Some(endpoint) => $builder
                .with_endpoint(endpoint.clone())
                .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build()),
            None => $builder,
        }
    };
}

/// The environment variable the Google client libraries read to find the emulator.
pub const EMULATOR_HOST_VAR: &str = "PUBSUB_EMULATOR_HOST";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot build the Pub/Sub {client} client: {source}")]
    Build { client: &'static str, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("cannot create {kind} {name}: {source}")]
    Create { kind: &'static str, name: String, source: google_cloud_pubsub::Error },
    #[error("publish to {topic} failed: {source}")]
    Publish { topic: String, source: google_cloud_pubsub::error::PublishError },
    #[error("{kind} {name} is not reachable: {source}")]
    Check { kind: &'static str, name: String, source: google_cloud_pubsub::Error },
    #[error("publish to {topic} did not complete within {timeout:?}")]
    PublishTimeout { topic: String, timeout: Duration },
}

/// Where the clients connect and how they authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub project: String,
    /// `Some("http://host:port")` for the emulator (anonymous credentials); `None` for
    /// Google's endpoint with Application Default Credentials.
    pub emulator_endpoint: Option<String>,
}

impl Connection {
    /// Reads `PUBSUB_EMULATOR_HOST` (`host:port`, with or without `http://`) from `env`.
    pub fn from_env(project: impl Into<String>, env: &HashMap<String, String>) -> Self {
        let emulator_endpoint = env.get(EMULATOR_HOST_VAR).filter(|v| !v.trim().is_empty()).map(|host| {
            let host = host.trim();
            if host.starts_with("http://") || host.starts_with("https://") {
                host.to_owned()
            } else {
                format!("http://{host}")
            }
        });
        Connection { project: project.into(), emulator_endpoint }
    }

    pub fn topic_path(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.project)
    }

    pub fn subscription_path(&self, subscription: &str) -> String {
        format!("projects/{}/subscriptions/{subscription}", self.project)
    }

    /// A publisher for `topic` whose internal retries stop after `retry_limit` (the crate
    /// default keeps retrying for ten minutes). Callers own the retry beyond that.
    pub async fn publisher(&self, topic: &str, retry_limit: Duration) -> Result<TopicPublisher, BusError> {
        let path = self.topic_path(topic);
        let builder = emulator!(
            self,
            Publisher::builder(path.clone())
                .with_retry_policy(RetryableErrors.with_time_limit(retry_limit))
                .set_delay_threshold(Duration::from_millis(5))
        );
        let inner = builder.build().await.map_err(|e| BusError::Build { client: "publisher", source: e.into() })?;
        Ok(TopicPublisher { inner, topic: path, timeout: retry_limit + Duration::from_secs(5) })
    }

    pub async fn subscriber(&self) -> Result<Subscriber, BusError> {
        let builder = emulator!(self, Subscriber::builder());
        builder.build().await.map_err(|e| BusError::Build { client: "subscriber", source: e.into() })
    }

    async fn topic_admin(&self) -> Result<TopicAdmin, BusError> {
        let builder = emulator!(self, TopicAdmin::builder());
        builder.build().await.map_err(|e| BusError::Build { client: "topic admin", source: e.into() })
    }

    async fn subscription_admin(&self) -> Result<SubscriptionAdmin, BusError> {
        let builder = emulator!(self, SubscriptionAdmin::builder());
        builder.build().await.map_err(|e| BusError::Build { client: "subscription admin", source: e.into() })
    }

    /// Checks that `topic` exists and the service answers (needs `pubsub.topics.get`).
    pub async fn check_topic(&self, topic: &str) -> Result<(), BusError> {
        let admin = self.topic_admin().await?;
        let name = self.topic_path(topic);
        admin.get_topic().set_topic(name.clone()).send().await.map(|_| ()).map_err(|source| BusError::Check {
            kind: "topic",
            name,
            source,
        })
    }

    /// Checks `topic` until it answers or `stop` is cancelled, reporting every outcome to
    /// `report` (for readiness). Retries with backoff from 500 ms up to 30 s.
    pub async fn wait_for_topic(
        &self,
        topic: &str,
        stop: &tokio_util::sync::CancellationToken,
        mut report: impl FnMut(Result<(), &BusError>),
    ) {
        let mut wait = Duration::from_millis(500);
        loop {
            match self.check_topic(topic).await {
                Ok(()) => {
                    report(Ok(()));
                    return;
                }
                Err(e) => {
                    tracing::warn!(topic, error = %e, "Pub/Sub check failed, retrying");
                    report(Err(&e));
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    /// A readiness task: reports whether `topic` answers to `set` (ok, detail) until it
    /// does, then waits for `stop`, so that it ends only at shutdown.
    pub async fn report_readiness(
        &self,
        topic: &str,
        stop: &tokio_util::sync::CancellationToken,
        set: impl Fn(bool, String),
    ) {
        self.wait_for_topic(topic, stop, |outcome| match outcome {
            Ok(()) => set(true, format!("topic {topic} answered")),
            Err(e) => set(false, e.to_string()),
        })
        .await;
        stop.cancelled().await;
    }

    /// Creates `topic` unless it exists. Meant for the emulator and development; production
    /// topics are provisioned with the infrastructure.
    pub async fn ensure_topic(&self, topic: &str) -> Result<(), BusError> {
        let admin = self.topic_admin().await?;
        let name = self.topic_path(topic);
        match admin.create_topic().set_name(name.clone()).send().await {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => Ok(()),
            Err(source) => Err(BusError::Create { kind: "topic", name, source }),
        }
    }

    /// Creates `subscription` on `topic` unless it exists, with a redelivery backoff and,
    /// when given, a dead-letter topic (which also makes Pub/Sub count delivery attempts).
    pub async fn ensure_subscription(&self, spec: &SubscriptionSpec) -> Result<(), BusError> {
        let admin = self.subscription_admin().await?;
        let name = self.subscription_path(&spec.name);
        let mut request = admin
            .create_subscription()
            .set_name(name.clone())
            .set_topic(self.topic_path(&spec.topic))
            .set_ack_deadline_seconds(spec.ack_deadline_secs)
            .set_retry_policy(
                RetryPolicy::new()
                    .set_minimum_backoff(wkt_duration(spec.min_backoff))
                    .set_maximum_backoff(wkt_duration(spec.max_backoff)),
            );
        if let Some(dead_letter) = &spec.dead_letter {
            request = request.set_dead_letter_policy(
                DeadLetterPolicy::new()
                    .set_dead_letter_topic(self.topic_path(&dead_letter.topic))
                    .set_max_delivery_attempts(dead_letter.max_delivery_attempts),
            );
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => Ok(()),
            Err(source) => Err(BusError::Create { kind: "subscription", name, source }),
        }
    }
}

/// Checks a topic or subscription id against Pub/Sub's rules: 3 to 255 characters of
/// `[A-Za-z0-9-_.~+%]`, starting with a letter, not starting with `goog`. The error says so.
pub fn check_resource_name(name: &str) -> Result<(), String> {
    let ok = name.len() >= 3
        && name.len() <= 255
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
        && !name.starts_with("goog");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid Pub/Sub name (3-255 characters of [A-Za-z0-9-_.~+%], starting with a letter, not with goog)"
        ))
    }
}

/// A subscription as `ensure_subscription` creates it.
#[derive(Debug, Clone)]
pub struct SubscriptionSpec {
    pub name: String,
    pub topic: String,
    pub ack_deadline_secs: i32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub dead_letter: Option<DeadLetterSpec>,
}

impl SubscriptionSpec {
    /// A plain subscription (no dead-letter policy), e.g. for reading results in tests.
    pub fn plain(name: impl Into<String>, topic: impl Into<String>) -> Self {
        SubscriptionSpec {
            name: name.into(),
            topic: topic.into(),
            ack_deadline_secs: 60,
            min_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
            dead_letter: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeadLetterSpec {
    pub topic: String,
    /// Pub/Sub's own bound (5..=100); the worker dead-letters earlier by the job's
    /// `max_attempts`.
    pub max_delivery_attempts: i32,
}

fn wkt_duration(d: Duration) -> google_cloud_wkt::Duration {
    google_cloud_wkt::Duration::clamp(d.as_secs() as i64, d.subsec_nanos() as i32)
}

fn already_exists(e: &google_cloud_pubsub::Error) -> bool {
    use google_cloud_gax::error::rpc::Code;
    e.status().is_some_and(|s| s.code == Code::AlreadyExists) || e.http_status_code() == Some(409)
}

/// A publisher bound to one topic.
#[derive(Debug, Clone)]
pub struct TopicPublisher {
    inner: Publisher,
    topic: String,
    timeout: Duration,
}

impl TopicPublisher {
    /// Publishes one message and waits for the server's message id. Bounded in time: the
    /// client's own retries stop at the configured limit, and this call stops shortly after.
    pub async fn publish(
        &self,
        data: Vec<u8>,
        attributes: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
    ) -> Result<String, BusError> {
        let attributes: HashMap<String, String> = attributes.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let message = Message::new().set_data(data).set_attributes(attributes);
        match tokio::time::timeout(self.timeout, self.inner.publish(message)).await {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(source)) => Err(BusError::Publish { topic: self.topic.clone(), source }),
            Err(_) => Err(BusError::PublishTimeout { topic: self.topic.clone(), timeout: self.timeout }),
        }
    }

    /// Waits until every message handed to the publisher has been sent (or failed).
    pub async fn flush(&self) {
        self.inner.flush().await;
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_emulator_host_becomes_an_http_endpoint() {
        let c = Connection::from_env("p", &env(&[(EMULATOR_HOST_VAR, "127.0.0.1:8085")]));
        assert_eq!(c.emulator_endpoint.as_deref(), Some("http://127.0.0.1:8085"));
        let c = Connection::from_env("p", &env(&[(EMULATOR_HOST_VAR, "http://localhost:1")]));
        assert_eq!(c.emulator_endpoint.as_deref(), Some("http://localhost:1"));
    }

    #[test]
    fn without_the_variable_google_is_used() {
        assert_eq!(Connection::from_env("p", &env(&[])).emulator_endpoint, None);
        assert_eq!(Connection::from_env("p", &env(&[(EMULATOR_HOST_VAR, " ")])).emulator_endpoint, None);
    }

    #[test]
    fn resource_names_follow_pubsub_rules() {
        for ok in ["jobs", "job-results", "a.b~c+d%e_f"] {
            assert!(check_resource_name(ok).is_ok(), "{ok}");
        }
        for bad in ["j", "1jobs", "google-jobs", "jobs/x", &"x".repeat(256)] {
            assert!(check_resource_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resource_paths_are_fully_qualified() {
        let c = Connection::from_env("proj", &env(&[]));
        assert_eq!(c.topic_path("jobs"), "projects/proj/topics/jobs");
        assert_eq!(c.subscription_path("jobs-sub"), "projects/proj/subscriptions/jobs-sub");
    }
}
