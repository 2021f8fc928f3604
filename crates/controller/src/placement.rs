//! Placement: where inside its spread window each run is published, so that queries
//! sharing a cron instant do not all start in the same second. A run is placed at its
//! nominal time plus an offset in `[0, window)`; parameters keep using nominal times.

use crate::catalog::ScheduleKey;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Every run at its nominal time.
    None,
    /// A stable pseudo-random offset from the schedule's identity (like Jenkins' `H`).
    Hash,
    /// Offsets chosen to flatten the expected concurrent work, from duration estimates
    /// (see [`LoadAware`]); schedules it has not placed fall back to `hash`.
    #[default]
    LoadAware,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Strategy::None, Strategy::Hash, Strategy::LoadAware];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::None => "none",
            Strategy::Hash => "hash",
            Strategy::LoadAware => "load-aware",
        }
    }
}

/// The offset of a run of `key`. The window is the schedule's spread, capped by the
/// interval since its previous run so that runs of one schedule never swap order.
pub fn offset(strategy: Strategy, key: &ScheduleKey, spread: Duration, interval: Duration) -> Duration {
    let window = spread.min(interval).as_millis() as u64;
    match strategy {
        Strategy::None => Duration::ZERO,
        _ if window == 0 => Duration::ZERO,
        Strategy::Hash | Strategy::LoadAware => Duration::from_millis(identity_hash(key) % window),
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

/// A schedule as the load-aware placer sees it.
#[derive(Debug, Clone)]
pub struct Item {
    pub key: ScheduleKey,
    /// Nominal times over the planning horizon, seconds since the horizon's start
    /// (schedules sharing a cadence share this list).
    pub nominal_s: std::sync::Arc<Vec<u32>>,
    /// The placement window: the spread, capped by the shortest interval between runs.
    pub window: Duration,
    /// Expected run time (observed, else the catalog's estimate, else the default).
    pub duration: Duration,
}

/// Load-aware placement: a fixed offset per schedule inside its window. Starting from the
/// hash offsets, each schedule — heaviest first, over a few passes — moves to the candidate
/// offset where its runs meet the lowest expected concurrency (ties: the lowest total).
/// Existing offsets are kept unless a fresh placement lowers the peak by more than
/// `margin`.
#[derive(Debug, Clone)]
pub struct LoadAware {
    /// Profile resolution.
    pub bin: Duration,
    /// Candidate offsets per window.
    pub candidates: u32,
    /// Share by which a fresh placement must lower the peak before existing placements move.
    pub margin: f64,
    /// Improvement passes over the movable schedules.
    pub passes: u32,
    /// With prior offsets, also compute a fresh placement and adopt it when it lowers the
    /// peak by more than `margin` (costs a full placement).
    pub rebalance: bool,
}

impl Default for LoadAware {
    fn default() -> Self {
        LoadAware { bin: Duration::from_secs(10), candidates: 60, margin: 0.05, passes: 3, rebalance: true }
    }
}

/// The outcome of a placement.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub offsets: std::collections::HashMap<ScheduleKey, Duration>,
    /// Existing placements that moved.
    pub moved: usize,
    /// Peak of the binned concurrency profile (runs in progress).
    pub peak: f64,
}

/// Expected concurrency over the horizon in bins.
struct Profile {
    bin_s: f64,
    bins: Vec<f64>,
}

impl Profile {
    fn new(horizon: Duration, bin: Duration, tail: Duration) -> Self {
        let bin_s = bin.as_secs_f64().max(1.0);
        let n = ((horizon + tail).as_secs_f64() / bin_s).ceil() as usize + 1;
        Profile { bin_s, bins: vec![0.0; n] }
    }

    /// Bins covered by a run starting at `start_s` lasting `dur_s`, with the covered share.
    fn cover(&self, start_s: f64, dur_s: f64, mut f: impl FnMut(usize, f64)) {
        let end = start_s + dur_s.max(1.0);
        let mut b = (start_s / self.bin_s) as usize;
        while (b as f64) * self.bin_s < end && b < self.bins.len() {
            let lo = (b as f64 * self.bin_s).max(start_s);
            let hi = ((b + 1) as f64 * self.bin_s).min(end);
            f(b, (hi - lo) / self.bin_s);
            b += 1;
        }
    }

    fn add(&mut self, item: &Item, offset: Duration, sign: f64) {
        let (o, d) = (offset.as_secs_f64(), item.duration.as_secs_f64());
        let mut adds = Vec::new();
        for &n in item.nominal_s.iter() {
            self.cover(f64::from(n) + o, d, |b, share| adds.push((b, share)));
        }
        for (b, share) in adds {
            self.bins[b] += sign * share;
        }
    }

    /// (highest concurrency met, total) if `item` were placed at `offset`.
    fn cost(&self, item: &Item, offset: Duration) -> (f64, f64) {
        let (o, d) = (offset.as_secs_f64(), item.duration.as_secs_f64());
        let (mut max, mut sum) = (0.0f64, 0.0f64);
        for &n in item.nominal_s.iter() {
            self.cover(f64::from(n) + o, d, |b, share| {
                let level = self.bins[b] + share;
                max = max.max(level);
                sum += self.bins[b] * share;
            });
        }
        (max, sum)
    }

    fn peak(&self) -> f64 {
        self.bins.iter().copied().fold(0.0, f64::max)
    }
}

impl LoadAware {
    /// Places `items` over `horizon`. With `prior`, those offsets are kept (new items are
    /// placed around them) unless a fresh placement's peak is lower by more than `margin`.
    pub fn place(
        &self,
        items: &[Item],
        prior: Option<&std::collections::HashMap<ScheduleKey, Duration>>,
        horizon: Duration,
    ) -> Placement {
        let tail = items.iter().map(|i| i.window + i.duration).max().unwrap_or_default();
        let Some(prior) = prior else { return self.greedy(items, None, horizon, tail) };
        let kept = self.greedy(items, Some(prior), horizon, tail);
        if !self.rebalance {
            return kept;
        }
        let fresh = self.greedy(items, None, horizon, tail);
        if fresh.peak < kept.peak * (1.0 - self.margin) {
            let moved = items
                .iter()
                .filter(|i| prior.get(&i.key).is_some_and(|o| fresh.offsets.get(&i.key) != Some(o)))
                .count();
            Placement { moved, ..fresh }
        } else {
            kept
        }
    }

    /// Starts from the prior offset (or the hash offset), then moves each item — heaviest
    /// first, in a few passes — to the candidate offset where its runs meet the lowest
    /// concurrency. Items in `prior` are not moved. The result is compared with plain hash
    /// placement and the flatter of the two is returned, so load-aware is never worse than
    /// hash on its own measure.
    fn greedy(
        &self,
        items: &[Item],
        prior: Option<&std::collections::HashMap<ScheduleKey, Duration>>,
        horizon: Duration,
        tail: Duration,
    ) -> Placement {
        let hash_offset = |item: &Item| offset(Strategy::Hash, &item.key, item.window, item.window);
        let mut profile = Profile::new(horizon, self.bin, tail);
        let mut current: Vec<Duration> = Vec::with_capacity(items.len());
        let mut movable: Vec<usize> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let (o, fixed) = match prior.and_then(|p| p.get(&item.key)) {
                Some(&o) if o <= item.window => (o, true),
                _ => (hash_offset(item), false),
            };
            profile.add(item, o, 1.0);
            current.push(o);
            if !fixed {
                movable.push(i);
            }
        }
        let hash_peak = if prior.is_none() { Some(profile.peak()) } else { None };
        // Heaviest first: total expected work, then the longest run, then the identity.
        movable.sort_by(|&a, &b| {
            let (a, b) = (&items[a], &items[b]);
            let wa = a.duration.as_secs_f64() * a.nominal_s.len() as f64;
            let wb = b.duration.as_secs_f64() * b.nominal_s.len() as f64;
            wb.total_cmp(&wa).then(b.duration.cmp(&a.duration)).then(a.key.cmp(&b.key))
        });
        for _pass in 0..self.passes {
            let mut changed = 0usize;
            for &i in &movable {
                let item = &items[i];
                let window = item.window.as_millis() as u64;
                if window == 0 || item.nominal_s.is_empty() {
                    continue;
                }
                profile.add(item, current[i], -1.0);
                let n = u64::from(self.candidates.max(1)).min(window.div_ceil(1000).max(1));
                let phase = identity_hash(&item.key) % window;
                let candidates = std::iter::once(current[i])
                    .chain((0..n).map(|k| Duration::from_millis((phase + k * window / n) % window)));
                let best = candidates
                    .map(|o| (profile.cost(item, o), o))
                    .min_by(|(a, _), (b, _)| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)))
                    .map_or(current[i], |(_, o)| o);
                if best != current[i] {
                    changed += 1;
                }
                profile.add(item, best, 1.0);
                current[i] = best;
            }
            if changed == 0 {
                break;
            }
        }
        let peak = profile.peak();
        if let Some(hash_peak) = hash_peak.filter(|h| *h < peak) {
            let offsets = items.iter().map(|i| (i.key.clone(), hash_offset(i))).collect();
            return Placement { offsets, moved: 0, peak: hash_peak };
        }
        let offsets = items.iter().zip(current).map(|(i, o)| (i.key.clone(), o)).collect();
        Placement { offsets, moved: 0, peak }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(q: &str) -> ScheduleKey {
        ScheduleKey { tenant_id: Arc::from("t"), app_id: Arc::from("a"), query_id: Arc::from(q) }
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
            let o = offset(Strategy::Hash, &key(&format!("q{i}")), spread, Duration::from_secs(3600));
            buckets[(o.as_secs() / 60) as usize] += 1;
        }
        assert!(buckets.iter().all(|&n| (50..=150).contains(&n)), "{buckets:?}");
    }

    #[test]
    fn the_window_never_exceeds_the_interval_and_none_means_zero() {
        let k = key("q");
        assert!(offset(Strategy::Hash, &k, Duration::from_secs(600), Duration::from_secs(5)) < Duration::from_secs(5));
        assert_eq!(offset(Strategy::None, &k, Duration::from_secs(600), Duration::from_secs(3600)), Duration::ZERO);
        assert_eq!(offset(Strategy::Hash, &k, Duration::ZERO, Duration::from_secs(3600)), Duration::ZERO);
    }
}
