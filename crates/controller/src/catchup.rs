//! Nothing lost across a restart: the **watermark** and the **catch-up**.
//!
//! [`Progress`] tracks the runs the timer handed over and the publisher has not confirmed yet;
//! the watermark is the instant before the earliest of them (or, with none in flight, the
//! last time the timer looked): every run placed at or before it is confirmed published. It
//! is saved every few seconds and at shutdown, after the publisher has drained.
//!
//! After a restart, [`missed_runs`] lists the runs that may not have gone out: every run
//! whose nominal time is past, whose window (nominal + spread) ends after the saved
//! watermark, and whose placed time is past (a run placed in the future is the timer's).
//! Placement offsets may differ between two lifetimes, so a run is only taken as published
//! when its whole window lies before the watermark; a run published twice this way has the
//! same job id and the worker's run ledger acks the copy without running it. Each run
//! follows the missed-run policy — `all` (within the catch-up window), `latest` (only the
//! most recent of its schedule), `skip` — and is counted by outcome.

use crate::catalog::{Schedule, ScheduleKey};
use crate::timer::{DueRun, Timer};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What happens to the runs a controller missed while it was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// Publish every missed run within the catch-up window.
    #[default]
    All,
    /// Publish only the most recent missed run of each schedule.
    Latest,
    /// Publish none.
    Skip,
}

/// Runs handed over and not yet confirmed published, and how far the timer has looked.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Placed time (ms) → runs in flight placed then.
    pending: BTreeMap<i64, u32>,
    /// The timer has handed over every run placed at or before this.
    looked_until: Option<DateTime<Utc>>,
    /// Until the catch-up is handed over, the watermark stays at or below the saved one.
    hold: Option<DateTime<Utc>>,
}

impl Progress {
    /// Tracking, with the watermark held at `hold` until [`Progress::release`].
    pub fn new(hold: Option<DateTime<Utc>>) -> Self {
        Progress { enabled: true, inner: Mutex::new(Inner { hold, ..Default::default() }) }
    }

    /// No tracking (benchmarks).
    pub fn disabled() -> Self {
        Progress { enabled: false, inner: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The timer handed over runs placed at `placed`, having looked up to `now`.
    pub fn handed_over(&self, placed: impl Iterator<Item = DateTime<Utc>>, now: DateTime<Utc>) {
        if !self.enabled {
            return;
        }
        self.queued(placed);
        let mut inner = self.lock();
        inner.looked_until = Some(inner.looked_until.map_or(now, |l| l.max(now)));
    }

    /// Runs handed over outside the timer (the catch-up).
    pub fn queued(&self, placed: impl Iterator<Item = DateTime<Utc>>) {
        if !self.enabled {
            return;
        }
        let mut inner = self.lock();
        for p in placed {
            *inner.pending.entry(p.timestamp_millis()).or_default() += 1;
        }
    }

    /// The run placed at `placed` is confirmed published.
    pub fn published(&self, placed: DateTime<Utc>) {
        if !self.enabled {
            return;
        }
        let mut inner = self.lock();
        let key = placed.timestamp_millis();
        if let Some(n) = inner.pending.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                inner.pending.remove(&key);
            }
        }
    }

    /// The catch-up is handed over: the watermark may pass the saved one.
    pub fn release(&self) {
        self.lock().hold = None;
    }

    /// Every run placed at or before this is confirmed published.
    pub fn watermark(&self) -> Option<DateTime<Utc>> {
        let inner = self.lock();
        let mut w = inner.looked_until?;
        if let Some((&first, _)) = inner.pending.first_key_value() {
            w = w.min(DateTime::from_timestamp_millis(first - 1).unwrap_or(w));
        }
        if let Some(h) = inner.hold {
            w = w.min(h);
        }
        Some(w)
    }

    /// Runs in flight (for logs).
    pub fn in_flight(&self) -> u64 {
        self.lock().pending.values().map(|&n| u64::from(n)).sum()
    }
}

/// What the catch-up found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Missed runs published again.
    pub replayed: u64,
    /// Missed runs the policy dropped (`latest`: all but the newest; `skip`: all).
    pub dropped_by_policy: u64,
    /// Missed runs older than the catch-up window.
    pub beyond_window: u64,
}

/// The runs of `schedules` that may have been missed between `watermark` and `now`, under
/// `policy`, at most `window` old (by nominal time), in placed order.
pub fn missed_runs(
    schedules: &BTreeMap<ScheduleKey, Arc<Schedule>>,
    timer: &Timer,
    watermark: DateTime<Utc>,
    now: DateTime<Utc>,
    window: Duration,
    policy: Missed,
) -> (Vec<DueRun>, CatchUp) {
    let oldest = now - chrono::Duration::from_std(window).unwrap_or_default();
    let mut counts = CatchUp::default();
    let mut out = Vec::new();
    // Schedules sharing a cadence share its calendar around the gap.
    let mut calendars: HashMap<(*const crate::schedule::Cadence, i64), Vec<DateTime<Utc>>> = HashMap::new();
    for schedule in schedules.values() {
        let spread = chrono::Duration::from_std(schedule.spread).unwrap_or_default();
        // A run whose window ends after the watermark may not have been published.
        let from = watermark - spread;
        let calendar =
            calendars.entry((Arc::as_ptr(&schedule.cadence), spread.num_milliseconds())).or_insert_with(|| {
                let mut times = Vec::new();
                let mut t = from;
                if let Some(p) = schedule.cadence.prev_before(from + chrono::Duration::milliseconds(1)) {
                    times.push(p);
                }
                while let Some(n) = schedule.cadence.next_after(t) {
                    if n > now {
                        break;
                    }
                    times.push(n);
                    t = n;
                }
                times
            });
        let mut missed: Vec<DueRun> = Vec::new();
        for pair in calendar.windows(2) {
            let (prev, nominal) = (pair[0], pair[1]);
            if nominal <= from {
                continue;
            }
            let placed = timer.placed_time(schedule, prev, nominal);
            if placed > now {
                continue; // the timer holds it
            }
            if nominal < oldest {
                counts.beyond_window += 1;
                continue;
            }
            missed.push(DueRun { schedule: schedule.clone(), nominal, placed, window_start: prev });
        }
        match policy {
            Missed::All => {}
            Missed::Latest => {
                let keep = missed.len().saturating_sub(1);
                counts.dropped_by_policy += keep as u64;
                missed.drain(..keep);
            }
            Missed::Skip => {
                counts.dropped_by_policy += missed.len() as u64;
                missed.clear();
            }
        }
        counts.replayed += missed.len() as u64;
        out.extend(missed);
    }
    out.sort_by_key(|r| r.placed);
    (out, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CatalogPolicy, RawCatalog, RawTenant, validate};
    use crate::placement::Strategy;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    fn catalog(queries: &[(&str, &str, &str)]) -> BTreeMap<ScheduleKey, Arc<Schedule>> {
        let qs: Vec<_> = queries
            .iter()
            .map(|(id, cron, spread)| {
                json!({"id": id, "schedule": cron, "spread": spread, "engine": "warehouse", "sql": "SELECT 1", "destination": "t"})
            })
            .collect();
        let raw = RawCatalog {
            tenants: vec![RawTenant::json(
                json!({"id": "t", "status": "active"}),
                vec![json!({"id": "a", "queries": qs})],
            )],
        };
        let mut policy = CatalogPolicy::for_tests();
        policy.max_spread = Duration::from_secs(3600);
        validate(raw, &policy).schedules
    }

    #[test]
    fn the_watermark_stops_before_the_first_unconfirmed_run_and_at_the_hold() {
        let p = Progress::new(Some(utc("2026-12-04T10:00:00Z")));
        assert_eq!(p.watermark(), None, "nothing looked at yet");
        let (a, b) = (utc("2026-12-04T10:00:05Z"), utc("2026-12-04T10:00:07Z"));
        p.handed_over([a, b].into_iter(), utc("2026-12-04T10:00:08Z"));
        assert_eq!(p.watermark(), Some(utc("2026-12-04T10:00:00Z")), "held");
        p.release();
        assert_eq!(p.watermark(), Some(a - chrono::Duration::milliseconds(1)));
        p.published(a);
        assert_eq!(p.watermark(), Some(b - chrono::Duration::milliseconds(1)));
        p.published(b);
        assert_eq!(p.watermark(), Some(utc("2026-12-04T10:00:08Z")), "all confirmed: as far as the timer looked");
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn missed_runs_follow_the_policy_and_the_window() {
        let schedules = catalog(&[("every-minute", "* * * * *", "0s"), ("hourly", "0 * * * *", "10m")]);
        let mut timer = Timer::new(Strategy::None);
        let now = utc("2026-12-04T10:30:30Z");
        timer.apply(&schedules, now);
        let watermark = utc("2026-12-04T10:25:10Z");
        let (runs, counts) = missed_runs(&schedules, &timer, watermark, now, Duration::from_secs(3600), Missed::All);
        let minutes: Vec<String> = runs.iter().map(|r| r.nominal.format("%H:%M").to_string()).collect();
        // Every minute from 10:26 to 10:30; the 10:00 hourly run's window ended at 10:10.
        assert_eq!(minutes, ["10:26", "10:27", "10:28", "10:29", "10:30"]);
        assert_eq!(counts, CatchUp { replayed: 5, ..Default::default() });
        assert!(runs.iter().all(|r| r.window_start == r.nominal - chrono::Duration::minutes(1)));

        let (runs, counts) = missed_runs(&schedules, &timer, watermark, now, Duration::from_secs(3600), Missed::Latest);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].nominal, utc("2026-12-04T10:30:00Z"));
        assert_eq!(counts, CatchUp { replayed: 1, dropped_by_policy: 4, beyond_window: 0 });

        let (runs, counts) = missed_runs(&schedules, &timer, watermark, now, Duration::from_secs(3600), Missed::Skip);
        assert!(runs.is_empty());
        assert_eq!(counts.dropped_by_policy, 5);

        // A two-minute catch-up window.
        let (runs, counts) = missed_runs(&schedules, &timer, watermark, now, Duration::from_secs(120), Missed::All);
        assert_eq!(runs.len(), 2, "10:29 and 10:30");
        assert_eq!(counts.beyond_window, 3);
    }

    #[test]
    fn a_run_whose_window_reaches_past_the_watermark_is_replayed_whatever_its_offset() {
        // Hourly with a 10-minute spread: the 10:00 run may have been placed up to 10:10.
        let schedules = catalog(&[("hourly", "0 * * * *", "10m")]);
        let mut timer = Timer::new(Strategy::None);
        let now = utc("2026-12-04T10:30:00Z");
        timer.apply(&schedules, now);
        let (runs, _) =
            missed_runs(&schedules, &timer, utc("2026-12-04T10:05:00Z"), now, Duration::from_secs(3600), Missed::All);
        assert_eq!(runs.len(), 1, "replayed: the ledger absorbs it if it had gone out");
        assert_eq!(runs[0].nominal, utc("2026-12-04T10:00:00Z"));
        assert_eq!(runs[0].window_start, utc("2026-12-04T09:00:00Z"));
    }
}
