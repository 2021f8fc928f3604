//! Result event v1: what happened to one run, published by the worker to the results topic
//! before it acks the job message.

use crate::version::{DecodeError, decode_versioned};
use crate::{JobId, Trigger};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Succeeded,
    Failed,
    Skipped,
}

/// The class of a failure; it decides what the worker does with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Worth another attempt (connection lost, timeout): nack, Pub/Sub redelivers.
    Retryable,
    /// Will fail the same way again (SQL error, permission denied): dead-letter.
    Permanent,
    /// The message itself cannot be read: dead-letter.
    Decode,
}

impl ErrorClass {
    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Decode => "decode",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultEvent {
    pub schema_version: String,
    pub job_id: JobId,
    pub tenant_id: String,
    pub app_id: String,
    pub query_id: String,
    pub nominal_time: DateTime<Utc>,
    pub status: RunStatus,
    /// 1 for the first delivery.
    pub attempt: u32,
    pub rows_written: u64,
    /// Bytes the engine read to answer the query, when it reports them (1.2; BigQuery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_processed: Option<u64>,
    /// Slot time of the query in milliseconds, when the engine reports it (1.2; BigQuery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_millis: Option<u64>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Why the run was published (1.1; absent in 1.0 events: scheduled).
    #[serde(default)]
    pub trigger: Trigger,
    /// The W3C trace id (32 hex digits) of the run, from its message's `traceparent`
    /// attribute (1.1; absent when the message carried none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl ResultEvent {
    pub const KIND: &'static str = "result event";
    pub const MAJOR: u32 = 1;
    /// 1.1 added `trigger` and `trace_id`; 1.2 `bytes_processed` and `slot_millis`.
    pub const SCHEMA_VERSION: &'static str = "1.2";

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        decode_versioned(body, Self::KIND, Self::MAJOR)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a result event always serializes")
    }
}
