//! Placement: where inside its spread window each run is published, so that queries
//! sharing a cron instant do not all start in the same second. A run is placed at its
//! nominal time plus an offset in `[0, window)`; parameters keep using nominal times.

use crate::catalog::ScheduleKey;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Every run at its nominal time.
    None,
    /// A stable pseudo-random offset from the schedule's identity (like Jenkins' `H`).
    #[default]
    Hash,
}

/// The offset of a run of `key`. The window is the schedule's spread, capped by the
/// interval since its previous run so that runs of one schedule never swap order.
pub fn offset(
    strategy: Strategy,
    key: &ScheduleKey,
    spread: Duration,
    interval: Duration,
) -> Duration {
    let window = spread.min(interval).as_millis() as u64;
    match strategy {
        Strategy::None => Duration::ZERO,
        Strategy::Hash if window == 0 => Duration::ZERO,
        Strategy::Hash => Duration::from_millis(identity_hash(key) % window),
    }
}

/// FNV-1a over the schedule identity: stable across processes and versions.
fn identity_hash(key: &ScheduleKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [&*key.tenant_id, &*key.app_id, &*key.query_id] {
        for b in part.bytes().chain(std::iter::once(0x1f)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(q: &str) -> ScheduleKey {
        ScheduleKey {
            tenant_id: Arc::from("t"),
            app_id: Arc::from("a"),
            query_id: Arc::from(q),
        }
    }

    #[test]
    fn hash_offsets_are_stable_and_inside_the_window() {
        let (spread, hour) = (Duration::from_secs(600), Duration::from_secs(3600));
        for i in 0..1000 {
            let k = key(&format!("q{i}"));
            let o = offset(Strategy::Hash, &k, spread, hour);
            assert!(o < spread);
            assert_eq!(o, offset(Strategy::Hash, &k, spread, hour));
        }
    }

    #[test]
    fn hash_offsets_spread_a_thousand_schedules_over_the_window() {
        let spread = Duration::from_secs(600);
        let mut buckets = [0u32; 10];
        for i in 0..1000 {
            let o = offset(
                Strategy::Hash,
                &key(&format!("q{i}")),
                spread,
                Duration::from_secs(3600),
            );
            buckets[(o.as_secs() / 60) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (50..=150).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn the_window_never_exceeds_the_interval_and_none_means_zero() {
        let k = key("q");
        assert!(
            offset(
                Strategy::Hash,
                &k,
                Duration::from_secs(600),
                Duration::from_secs(5)
            ) < Duration::from_secs(5)
        );
        assert_eq!(
            offset(
                Strategy::None,
                &k,
                Duration::from_secs(600),
                Duration::from_secs(3600)
            ),
            Duration::ZERO
        );
        assert_eq!(
            offset(
                Strategy::Hash,
                &k,
                Duration::ZERO,
                Duration::from_secs(3600)
            ),
            Duration::ZERO
        );
    }
}
