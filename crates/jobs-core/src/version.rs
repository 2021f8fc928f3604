//! Schema versions: `MAJOR.MINOR`. A reader accepts every minor version of the majors it
//! knows (new fields are ignored) and refuses an unknown major with a typed error.

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Why a message body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message is not valid JSON for {kind}: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("{kind} schema_version {found:?} is not supported (this build reads major version {supported})")]
    UnsupportedVersion { kind: &'static str, found: String, supported: u32 },
}

#[derive(Deserialize)]
struct VersionProbe {
    schema_version: Option<String>,
}

/// Decodes `body` as `T` after checking that its `schema_version` has major `major`.
pub(crate) fn decode_versioned<T: DeserializeOwned>(
    body: &[u8],
    kind: &'static str,
    major: u32,
) -> Result<T, DecodeError> {
    let malformed = |e: serde_json::Error| DecodeError::Malformed { kind, reason: e.to_string() };
    let probe: VersionProbe = serde_json::from_slice(body).map_err(malformed)?;
    let found = probe
        .schema_version
        .ok_or_else(|| DecodeError::Malformed { kind, reason: "missing field `schema_version`".to_owned() })?;
    let found_major = found.split('.').next().and_then(|m| m.parse::<u32>().ok());
    if found_major != Some(major) {
        return Err(DecodeError::UnsupportedVersion { kind, found, supported: major });
    }
    serde_json::from_slice(body).map_err(malformed)
}
