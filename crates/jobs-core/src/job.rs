//! Job message v1: one due run of one schedule, published by the controller to the jobs
//! topic and executed by exactly one worker (effectively: duplicates are deduplicated on
//! the job id).

use crate::JobId;
use crate::version::{DecodeError, decode_versioned};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a worker does when the previous run of the same schedule is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Do not start this run while the previous one still runs (the default).
    #[default]
    Skip,
    /// Run regardless.
    Allow,
}

/// Why the run was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    #[default]
    Scheduled,
    Manual,
}

/// The job message body (JSON). Unknown fields are ignored so that minor versions can add
/// fields without breaking older workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub schema_version: String,
    pub job_id: JobId,
    pub tenant_id: String,
    pub app_id: String,
    pub query_id: String,
    /// The cron instant this run stands for; query parameters derive from it.
    pub nominal_time: DateTime<Utc>,
    /// When the controller planned to publish it: nominal time plus the placement offset.
    pub placed_time: DateTime<Utc>,
    /// `@window_start`: the previous nominal fire time of the schedule.
    pub window_start: DateTime<Utc>,
    /// `@window_end`: this run's nominal time.
    pub window_end: DateTime<Utc>,
    pub engine: String,
    pub sql: String,
    /// Table name, relative to the tenant's own space.
    pub destination: String,
    pub timeout_secs: u64,
    pub max_attempts: u32,
    pub overlap: Overlap,
    #[serde(default)]
    pub trigger: Trigger,
    pub published_at: DateTime<Utc>,
}

impl JobMessage {
    pub const KIND: &'static str = "job message";
    pub const MAJOR: u32 = 1;
    pub const SCHEMA_VERSION: &'static str = "1.0";

    /// Decodes a job message body, refusing unknown major versions.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        decode_versioned(body, Self::KIND, Self::MAJOR)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job message always serializes")
    }

    /// The Pub/Sub attributes published with this message.
    pub fn attributes(&self, trace: Option<&crate::TraceParent>) -> Vec<(&'static str, String)> {
        use crate::attributes as a;
        let trigger = match self.trigger {
            Trigger::Scheduled => "scheduled",
            Trigger::Manual => "manual",
        };
        let mut attributes = vec![
            (a::TENANT_ID, self.tenant_id.clone()),
            (a::APP_ID, self.app_id.clone()),
            (a::QUERY_ID, self.query_id.clone()),
            (a::JOB_ID, self.job_id.to_string()),
            (a::SCHEMA_VERSION, self.schema_version.clone()),
            (a::TRIGGER, trigger.to_owned()),
        ];
        if let Some(trace) = trace {
            attributes.push((a::TRACEPARENT, trace.to_string()));
        }
        attributes
    }
}
