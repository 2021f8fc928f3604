//! Service plumbing shared by the controller and the worker: layered configuration,
//! telemetry, the admin HTTP server (`/livez`, `/readyz`, `/metrics`), secrets that never
//! print, signal handling and named-task supervision.

pub mod admin;
pub mod launch;
pub mod secret;
pub mod settings;
pub mod supervisor;
pub mod telemetry;

pub use admin::{AdminState, Readiness};
pub use secret::Secret;
pub use supervisor::Supervisor;

/// `first`, then every source of `error` (not `error`'s own text), joined by ": ". For
/// errors whose own text must not be shown — an HTTP client's names the URL, which may carry
/// a page token — the caller says in `first` what happened instead.
pub fn with_sources(first: &str, error: &dyn std::error::Error) -> String {
    let mut text = first.to_owned();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether two secrets are equal, in time that does not depend on where they differ or on
/// their lengths (both are hashed first, then every byte compared).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

/// This process's identity in leases: the host (pod) name, the process id and a random
/// suffix, so that a restarted process never mistakes its predecessor's leases for its own.
pub fn process_identity(fallback_host: &str) -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| fallback_host.into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{host}-{}-{nanos:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(super::secrets_equal("s3cret-token-0123", "s3cret-token-0123"));
        assert!(!super::secrets_equal("s3cret-token-0123", "s3cret-token-0124"));
        assert!(!super::secrets_equal("s3cret-token-0123", "s3cret"));
        assert!(!super::secrets_equal("", "x"));
    }
}
