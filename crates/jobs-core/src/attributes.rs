//! Pub/Sub attribute names carried next to every message body, so that subscribers can
//! route, filter and dead-letter a message without decoding it.

pub const TENANT_ID: &str = "tenant_id";
pub const APP_ID: &str = "app_id";
pub const QUERY_ID: &str = "query_id";
pub const JOB_ID: &str = "job_id";
pub const SCHEMA_VERSION: &str = "schema_version";
/// W3C `traceparent` of the run (see [`crate::TraceParent`]): the worker continues the trace.
pub const TRACEPARENT: &str = "traceparent";
/// `scheduled` or `manual`, as in the body: lets a subscriber filter manual runs.
pub const TRIGGER: &str = "trigger";
/// Set on dead-lettered messages: a stable reason code (`decode_error`, `permanent_error`,
/// `attempts_exhausted`).
pub const DEAD_LETTER_REASON: &str = "dead_letter_reason";
/// Set on dead-lettered messages: the human-readable error.
pub const DEAD_LETTER_ERROR: &str = "dead_letter_error";
/// Set on dead-lettered messages: the delivery attempt that gave up.
pub const DEAD_LETTER_ATTEMPT: &str = "dead_letter_attempt";
