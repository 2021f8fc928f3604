//! The deterministic job id: the same run of the same schedule always has the same id,
//! whoever publishes it and however often, so everything downstream can dedup on it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// 32 lowercase hex characters: the first 128 bits of
/// `SHA-256("v1" US tenant US app US query US nominal-time-RFC3339-UTC)`, where US is the
/// ASCII unit separator (0x1F), which cannot appear in ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub fn for_run(tenant_id: &str, app_id: &str, query_id: &str, nominal: DateTime<Utc>) -> Self {
        let mut hasher = Sha256::new();
        for part in ["v1", tenant_id, app_id, query_id, &nominal.to_rfc3339_opts(SecondsFormat::Millis, true)] {
            hasher.update(part.as_bytes());
            hasher.update([0x1f]);
        }
        let digest = hasher.finalize();
        let mut hex = String::with_capacity(32);
        for byte in &digest[..16] {
            hex.push_str(&format!("{byte:02x}"));
        }
        JobId(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for JobId {
    type Err = String;

    /// A job id as stored or printed: 32 lowercase hex characters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(JobId(s.to_owned()))
        } else {
            Err(format!("{s:?} is not a job id (32 lowercase hex characters)"))
        }
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 29, h, 0, 0).single().expect("valid time")
    }

    #[test]
    fn the_same_run_always_has_the_same_id() {
        assert_eq!(JobId::for_run("acme", "sales", "hourly", at(1)), JobId::for_run("acme", "sales", "hourly", at(1)));
    }

    #[test]
    fn the_id_is_pinned_so_old_and_new_builds_agree() {
        // Cross-checked with Python: sha256("v1\x1facme\x1fsales\x1fhourly\x1f2026-03-29T01:00:00.000Z\x1f")[:32].
        assert_eq!(JobId::for_run("acme", "sales", "hourly", at(1)).as_str(), "7eed184f3c986dba9fc9cb9af001b138");
    }

    #[test]
    fn any_identity_change_changes_the_id() {
        let base = JobId::for_run("acme", "sales", "hourly", at(1));
        assert_ne!(base, JobId::for_run("acme", "sales", "hourly", at(2)));
        assert_ne!(base, JobId::for_run("acme2", "sales", "hourly", at(1)));
        assert_ne!(base, JobId::for_run("acme", "sales2", "hourly", at(1)));
        assert_ne!(base, JobId::for_run("acme", "sales", "hourly2", at(1)));
        // Moving a character across a boundary must not collide.
        assert_ne!(JobId::for_run("ab", "c", "q", at(1)), JobId::for_run("a", "bc", "q", at(1)));
    }

    #[test]
    fn ids_are_32_lowercase_hex_characters() {
        let id = JobId::for_run("t", "a", "q", at(3));
        assert_eq!(id.as_str().len(), 32);
        assert!(id.as_str().chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
