//! The timer: every schedule's next run in one min-heap ordered by placed time, driven by
//! one task that sleeps until the earliest. Adding, changing or removing a schedule is
//! O(log n); a changed or removed schedule's old heap entry is skipped lazily (each slot
//! carries a generation). Built for a million schedules; one tokio-cron-scheduler job per
//! schedule was measured missing and doubling fires at 100,000.

use crate::catalog::{Schedule, ScheduleKey};
use crate::placement::{self, Strategy};
use chrono::{DateTime, Utc};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// One run that is due.
#[derive(Debug, Clone)]
pub struct DueRun {
    pub schedule: Arc<Schedule>,
    pub nominal: DateTime<Utc>,
    pub placed: DateTime<Utc>,
    /// The previous nominal time (`@window_start`).
    pub window_start: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at_ms: i64,
    slot: u32,
    generation: u32,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    schedule: Option<Arc<Schedule>>,
    prev: DateTime<Utc>,
    nominal: DateTime<Utc>,
    placed: DateTime<Utc>,
}

/// What applying a catalog changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

#[derive(Debug)]
pub struct Timer {
    heap: BinaryHeap<Reverse<Entry>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: HashMap<ScheduleKey, u32>,
    strategy: Strategy,
}

impl Timer {
    pub fn new(strategy: Strategy) -> Self {
        Timer {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            strategy,
        }
    }

    /// Schedules held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Makes the timer hold exactly `schedules`: new ones are added, changed ones restart
    /// from `now`, missing ones are removed; unchanged ones keep their pending run.
    pub fn apply(
        &mut self,
        schedules: &BTreeMap<ScheduleKey, Arc<Schedule>>,
        now: DateTime<Utc>,
    ) -> Diff {
        let mut diff = Diff::default();
        let gone: Vec<ScheduleKey> = self
            .index
            .keys()
            .filter(|k| !schedules.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove(&key);
            diff.removed += 1;
        }
        for (key, schedule) in schedules {
            match self.index.get(key).copied() {
                Some(slot) => {
                    let same = self.slots[slot as usize]
                        .schedule
                        .as_ref()
                        .is_some_and(|old| Arc::ptr_eq(old, schedule) || **old == **schedule);
                    if same {
                        diff.unchanged += 1;
                    } else {
                        self.remove(key);
                        self.insert(schedule.clone(), now);
                        diff.changed += 1;
                    }
                }
                None => {
                    self.insert(schedule.clone(), now);
                    diff.added += 1;
                }
            }
        }
        diff
    }

    fn insert(&mut self, schedule: Arc<Schedule>, now: DateTime<Utc>) {
        // A run whose nominal time has passed but whose placed time has not is still
        // pending (it sits inside its spread window): keep it.
        let pending = schedule
            .cadence
            .prev_before(now + chrono::Duration::milliseconds(1))
            .and_then(|nominal| {
                let prev = schedule.cadence.prev_before(nominal)?;
                let placed = nominal + self.offset(&schedule, prev, nominal);
                (placed >= now).then_some((prev, nominal, placed))
            });
        let next = pending.or_else(|| {
            let nominal = schedule.cadence.next_after(now)?;
            let prev = schedule.cadence.prev_before(nominal)?;
            Some((
                prev,
                nominal,
                nominal + self.offset(&schedule, prev, nominal),
            ))
        });
        let key = schedule.key.clone();
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    schedule: None,
                    prev: DateTime::UNIX_EPOCH,
                    nominal: DateTime::UNIX_EPOCH,
                    placed: DateTime::UNIX_EPOCH,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.schedule = Some(schedule);
        s.generation = s.generation.wrapping_add(1);
        self.index.insert(key, slot);
        if let Some((prev, nominal, placed)) = next {
            s.prev = prev;
            s.nominal = nominal;
            s.placed = placed;
            self.heap.push(Reverse(Entry {
                at_ms: placed.timestamp_millis(),
                slot,
                generation: s.generation,
            }));
        }
    }

    fn remove(&mut self, key: &ScheduleKey) {
        if let Some(slot) = self.index.remove(key) {
            let s = &mut self.slots[slot as usize];
            s.schedule = None;
            s.generation = s.generation.wrapping_add(1);
            self.free.push(slot);
        }
    }

    fn offset(
        &self,
        schedule: &Schedule,
        prev: DateTime<Utc>,
        nominal: DateTime<Utc>,
    ) -> chrono::Duration {
        let interval = (nominal - prev).to_std().unwrap_or(Duration::ZERO);
        let o = placement::offset(self.strategy, &schedule.key, schedule.spread, interval);
        chrono::Duration::from_std(o).unwrap_or_default()
    }

    /// When the earliest pending run is placed.
    pub fn next_deadline(&mut self) -> Option<DateTime<Utc>> {
        while let Some(Reverse(top)) = self.heap.peek().copied() {
            if self.slots[top.slot as usize].generation == top.generation {
                return DateTime::from_timestamp_millis(top.at_ms);
            }
            self.heap.pop();
        }
        None
    }

    /// Moves every run placed at or before `now` into `out`, in placed order, and queues
    /// each schedule's following run.
    pub fn pop_due(&mut self, now: DateTime<Utc>, out: &mut Vec<DueRun>) {
        let now_ms = now.timestamp_millis();
        while let Some(Reverse(top)) = self.heap.peek().copied() {
            if top.at_ms > now_ms {
                break;
            }
            self.heap.pop();
            let slot = &self.slots[top.slot as usize];
            if slot.generation != top.generation {
                continue;
            }
            let Some(schedule) = slot.schedule.clone() else {
                continue;
            };
            out.push(DueRun {
                schedule: schedule.clone(),
                nominal: slot.nominal,
                placed: slot.placed,
                window_start: slot.prev,
            });
            let prev = slot.nominal;
            if let Some(nominal) = schedule.cadence.next_after(prev) {
                let placed = nominal + self.offset(&schedule, prev, nominal);
                let slot = &mut self.slots[top.slot as usize];
                slot.prev = prev;
                slot.nominal = nominal;
                slot.placed = placed;
                self.heap.push(Reverse(Entry {
                    at_ms: placed.timestamp_millis(),
                    slot: top.slot,
                    generation: top.generation,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CatalogPolicy, RawCatalog, RawTenant, validate};
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    fn catalog(queries: &[(&str, &str, Option<&str>)]) -> BTreeMap<ScheduleKey, Arc<Schedule>> {
        let qs: Vec<_> = queries
            .iter()
            .map(|(id, cron, spread)| {
                let mut q = json!({"id": id, "schedule": cron, "engine": "warehouse", "sql": "SELECT 1", "destination": "t"});
                if let Some(s) = spread {
                    q["spread"] = json!(s);
                }
                q
            })
            .collect();
        let raw = RawCatalog {
            tenants: vec![RawTenant {
                doc: json!({"id": "t", "status": "active"}),
                apps: vec![json!({"id": "a", "queries": qs})],
            }],
        };
        let c = validate(&raw, &CatalogPolicy::for_tests());
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        c.schedules
    }

    fn drive(
        timer: &mut Timer,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        step_ms: i64,
    ) -> Vec<DueRun> {
        let mut out = vec![];
        let mut now = from;
        while now <= until {
            timer.pop_due(now, &mut out);
            now += chrono::Duration::milliseconds(step_ms);
        }
        out
    }

    #[test]
    fn every_run_fires_once_in_order_with_its_window() {
        let mut timer = Timer::new(Strategy::None);
        let start = utc("2026-12-04T10:00:00.500Z");
        timer.apply(
            &catalog(&[("a", "*/10 * * * * *", None), ("b", "*/15 * * * * *", None)]),
            start,
        );
        let runs = drive(&mut timer, start, utc("2026-12-04T10:01:00Z"), 250);
        let a: Vec<_> = runs
            .iter()
            .filter(|r| &*r.schedule.key.query_id == "a")
            .map(|r| r.nominal)
            .collect();
        let b: Vec<_> = runs
            .iter()
            .filter(|r| &*r.schedule.key.query_id == "b")
            .collect();
        assert_eq!(a.len(), 6, "{a:?}");
        assert_eq!(a[0], utc("2026-12-04T10:00:10Z"));
        assert_eq!(b.len(), 4);
        for w in b.windows(2) {
            assert_eq!(
                w[1].window_start, w[0].nominal,
                "windows chain without gaps"
            );
        }
        assert_eq!(b[0].window_start, utc("2026-12-04T10:00:00Z"));
    }

    #[test]
    fn a_late_timer_fires_every_missed_run_once() {
        let mut timer = Timer::new(Strategy::None);
        let start = utc("2026-12-04T10:00:00.5Z");
        timer.apply(&catalog(&[("a", "* * * * * *", None)]), start);
        let mut out = vec![];
        timer.pop_due(utc("2026-12-04T10:00:05Z"), &mut out);
        let secs: Vec<_> = out
            .iter()
            .map(|r| r.nominal.timestamp() - start.timestamp())
            .collect();
        assert_eq!(secs, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn spread_runs_are_placed_inside_their_window_and_keep_nominal_times() {
        let mut timer = Timer::new(Strategy::Hash);
        let start = utc("2026-12-04T09:59:00Z");
        let names: Vec<String> = (0..50).map(|i| format!("q{i}")).collect();
        let qs: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), "0 * * * *", Some("10m")))
            .collect();
        timer.apply(&catalog(&qs), start);
        let runs = drive(&mut timer, start, utc("2026-12-04T10:15:00Z"), 1000);
        assert_eq!(runs.len(), 50);
        let mut distinct = std::collections::HashSet::new();
        for r in &runs {
            assert_eq!(r.nominal, utc("2026-12-04T10:00:00Z"));
            assert!(r.placed >= r.nominal && r.placed < r.nominal + chrono::Duration::minutes(10));
            distinct.insert(r.placed.timestamp() / 60);
        }
        assert!(
            distinct.len() >= 8,
            "runs spread over the window: {distinct:?}"
        );
    }

    #[test]
    fn a_pending_run_inside_its_window_survives_a_restart() {
        let mut timer = Timer::new(Strategy::Hash);
        let spread = catalog(&[("q", "0 * * * *", Some("59m"))]);
        let placed_first = {
            let mut t = Timer::new(Strategy::Hash);
            t.apply(&spread, utc("2026-12-04T09:59:00Z"));
            t.next_deadline().expect("deadline")
        };
        let offset = placed_first - utc("2026-12-04T10:00:00Z");
        assert!(
            offset > chrono::Duration::zero(),
            "this key has a non-zero offset"
        );
        // Start between the nominal time and the placed time: the run is still pending.
        timer.apply(&spread, utc("2026-12-04T10:00:00Z") + offset / 2);
        assert_eq!(timer.next_deadline(), Some(placed_first));
    }

    #[test]
    fn a_resync_adds_changes_and_removes_without_touching_the_rest() {
        let mut timer = Timer::new(Strategy::None);
        let now = utc("2026-12-04T10:00:00.5Z");
        let d = timer.apply(
            &catalog(&[("a", "*/10 * * * * *", None), ("b", "*/10 * * * * *", None)]),
            now,
        );
        assert_eq!((d.added, d.changed, d.removed), (2, 0, 0));
        let d = timer.apply(
            &catalog(&[("a", "*/10 * * * * *", None), ("c", "*/5 * * * * *", None)]),
            now,
        );
        assert_eq!((d.added, d.removed, d.unchanged), (1, 1, 1));
        let d = timer.apply(
            &catalog(&[("a", "*/20 * * * * *", None), ("c", "*/5 * * * * *", None)]),
            now,
        );
        assert_eq!((d.changed, d.unchanged), (1, 1));
        assert_eq!(timer.len(), 2);
        let runs = drive(&mut timer, now, utc("2026-12-04T10:00:20Z"), 100);
        let names: Vec<_> = runs
            .iter()
            .map(|r| format!("{}@{}", r.schedule.key.query_id, r.nominal.timestamp() % 60))
            .collect();
        assert_eq!(names, vec!["c@5", "c@10", "c@15", "a@20", "c@20"]);
    }
}
