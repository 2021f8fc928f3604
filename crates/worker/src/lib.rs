//! The worker: pulls job messages, runs each query on the tenant's engine with its
//! parameters bound, writes the rows idempotently, publishes a result event, then acks.
//! Retryable failures nack; permanent ones and exhausted attempts are dead-lettered.

pub mod app;
pub mod consumer;
pub mod engines;
pub mod ledger;
pub mod metrics;
pub mod params;
pub mod runner;
pub mod runs_api;
pub mod settings;

pub use app::Application;
pub use settings::Settings;

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s[..cut].to_owned()
}
