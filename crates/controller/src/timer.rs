//! The timer: every schedule's next run in one min-heap ordered by placed time, driven by
//! one task that sleeps until the earliest. Adding, changing or removing a schedule is
//! O(log n); a changed or removed schedule's old heap entry is skipped lazily (each slot
//! carries a generation). Built for a million schedules: a slot is 24 bytes, a heap entry
//! 16, an index entry about 10 (`controller bench timer` measures it); schedules sharing a
//! cadence share its cron arithmetic. One tokio-cron-scheduler job per schedule was measured
//! missing and doubling fires at 100,000.

use crate::catalog::{Schedule, ScheduleKey};
use crate::placement::{self, Strategy};
use crate::schedule::Cadence;
use chrono::{DateTime, Utc};
use hashbrown::HashTable;
use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::BuildHasher;
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

/// [`Slot::placement_s`] of a schedule the load-aware placer has not placed.
const NOT_PLACED: u32 = u32::MAX;

/// Seconds are stored from this epoch (2020-01-01T00:00:00Z) in 32 bits: good until 2156.
const EPOCH_S: i64 = 1_577_836_800;

/// One schedule's pending run and its load-aware placement, 32 bytes.
#[derive(Debug)]
struct Slot {
    schedule: Option<Arc<Schedule>>,
    /// The load-aware placer's offset in seconds, [`NOT_PLACED`] until it has placed the
    /// schedule (the hash offset is used meanwhile).
    placement_s: u32,
    /// Nominal time of the pending run, seconds since [`EPOCH_S`].
    nominal_s: u32,
    /// Seconds from the previous nominal time to this one (`@window_start`).
    prev_delta_s: u32,
    /// Placement offset of the pending run.
    offset_ms: u32,
    generation: u32,
}

impl Slot {
    fn nominal(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(EPOCH_S + i64::from(self.nominal_s), 0).unwrap_or_default()
    }
}

fn to_epoch_s(t: DateTime<Utc>) -> u32 {
    (t.timestamp() - EPOCH_S).clamp(0, i64::from(u32::MAX)) as u32
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
    /// Slot indices, found by their schedule's key.
    index: HashTable<u32>,
    hasher: RandomState,
    strategy: Strategy,
}

/// A cadence's fire times around one instant, shared by every schedule using it.
#[derive(Clone, Copy)]
struct Around {
    /// The last fire at or before the instant, and the one before it.
    last: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The first fire after the instant.
    next: Option<DateTime<Utc>>,
}

impl Timer {
    pub fn new(strategy: Strategy) -> Self {
        Timer {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
            strategy,
        }
    }

    /// Slots allocated (held schedules and free slots).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Installs load-aware offsets for schedules the timer holds (others are ignored). A
    /// pending run that is not due yet moves to its new placed time if that is still ahead
    /// of `now`; later runs all use the new offset. Returns how many schedules it found.
    pub fn set_placements<'a>(
        &mut self,
        now: DateTime<Utc>,
        placements: impl IntoIterator<Item = (&'a ScheduleKey, Duration)>,
    ) -> usize {
        let mut found = 0;
        let now_ms = now.timestamp_millis();
        for (key, offset) in placements {
            let Some(slot) = self.find(key) else { continue };
            found += 1;
            let placement_s = offset.as_secs().min(u64::from(NOT_PLACED - 1)) as u32;
            let s = &mut self.slots[slot as usize];
            if s.placement_s == placement_s {
                continue;
            }
            s.placement_s = placement_s;
            let Some(schedule) = s.schedule.clone() else { continue };
            let nominal = s.nominal();
            let (old_ms, prev) = (
                (nominal + chrono::Duration::milliseconds(i64::from(s.offset_ms))).timestamp_millis(),
                nominal - chrono::Duration::seconds(i64::from(s.prev_delta_s)),
            );
            let offset = self.offset(&schedule, placement_s, prev, nominal);
            let new_ms = (nominal + offset).timestamp_millis();
            if old_ms > now_ms && new_ms > now_ms && new_ms != old_ms {
                let s = &mut self.slots[slot as usize];
                s.offset_ms = offset.num_milliseconds().clamp(0, i64::from(u32::MAX)) as u32;
                s.generation = s.generation.wrapping_add(1);
                self.heap.push(Reverse(Entry { at_ms: new_ms, slot, generation: s.generation }));
            }
        }
        found
    }

    /// The load-aware offset in force for `key`, if the placer has placed it.
    pub fn placement(&self, key: &ScheduleKey) -> Option<Duration> {
        let slot = &self.slots[self.find(key)? as usize];
        (slot.placement_s != NOT_PLACED).then(|| Duration::from_secs(u64::from(slot.placement_s)))
    }

    /// The runs due in `(now, now + window]` for each window, and their expected work in
    /// seconds (`duration` of each schedule): the autoscaling signal.
    ///
    /// Only the slots in `slots` are counted, so a caller can walk a large timer in chunks
    /// without holding its lock for long (see [`Timer::slot_count`]).
    pub fn due_within(
        &self,
        now: DateTime<Utc>,
        windows: &[Duration],
        duration: impl Fn(&Schedule) -> Duration,
        slots: std::ops::Range<usize>,
    ) -> Vec<(u64, f64)> {
        let mut out = vec![(0u64, 0.0f64); windows.len()];
        let Some(longest) = windows.iter().max().and_then(|w| chrono::Duration::from_std(*w).ok()) else {
            return out;
        };
        let horizon = now + longest;
        // Schedules sharing a cadence and a pending nominal time share their calendar.
        let mut calendars: HashMap<(*const Cadence, u32), Vec<DateTime<Utc>>> = HashMap::new();
        let slots = slots.start.min(self.slots.len())..slots.end.min(self.slots.len());
        for slot in &self.slots[slots] {
            let Some(schedule) = &slot.schedule else {
                continue;
            };
            let offset = chrono::Duration::milliseconds(i64::from(slot.offset_ms));
            let first = slot.nominal();
            if first + offset > horizon {
                continue;
            }
            let calendar = calendars.entry((Arc::as_ptr(&schedule.cadence), slot.nominal_s)).or_insert_with(|| {
                let mut times = vec![first];
                let mut t = first;
                while let Some(n) = schedule.cadence.next_after(t) {
                    if n > horizon {
                        break;
                    }
                    times.push(n);
                    t = n;
                }
                times
            });
            let work = duration(schedule).as_secs_f64();
            for nominal in calendar.iter() {
                let placed = *nominal + offset;
                if placed <= now {
                    continue;
                }
                for (i, w) in windows.iter().enumerate() {
                    if placed <= now + chrono::Duration::from_std(*w).unwrap_or_default() {
                        out[i].0 += 1;
                        out[i].1 += work;
                    }
                }
            }
        }
        out
    }

    /// Schedules held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn find(&self, key: &ScheduleKey) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        self.index.find(hash, |&i| slots[i as usize].schedule.as_ref().is_some_and(|s| s.key == *key)).copied()
    }

    /// Makes the timer hold exactly `schedules`: new ones are added, changed ones restart
    /// from `now`, missing ones are removed; unchanged ones keep their pending run.
    pub fn apply(&mut self, schedules: &BTreeMap<ScheduleKey, Arc<Schedule>>, now: DateTime<Utc>) -> Diff {
        let mut diff = Diff::default();
        let gone: Vec<ScheduleKey> = self
            .slots
            .iter()
            .filter_map(|s| s.schedule.as_ref())
            .filter(|s| !schedules.contains_key(&s.key))
            .map(|s| s.key.clone())
            .collect();
        for key in gone {
            self.remove(&key);
            diff.removed += 1;
        }
        let growth = schedules.len().saturating_sub(self.len());
        self.slots.reserve_exact(growth.saturating_sub(self.free.len()));
        self.heap.reserve(growth);
        let hasher = self.hasher.clone();
        let slots = &self.slots;
        self.index.reserve(growth, |&i| slots[i as usize].schedule.as_ref().map_or(0, |s| hasher.hash_one(&s.key)));
        let mut around: HashMap<*const Cadence, Around> = HashMap::new();
        for (key, schedule) in schedules {
            match self.find(key) {
                Some(slot) => {
                    let same = self.slots[slot as usize]
                        .schedule
                        .as_ref()
                        .is_some_and(|old| Arc::ptr_eq(old, schedule) || **old == **schedule);
                    if same {
                        // Hold the new catalog's copy so that the old catalog is freed.
                        self.slots[slot as usize].schedule = Some(schedule.clone());
                        diff.unchanged += 1;
                    } else {
                        // A changed schedule keeps its placement (capped by its new window).
                        let placement_s = self.slots[slot as usize].placement_s;
                        self.remove(key);
                        self.insert(schedule.clone(), now, &mut around, placement_s);
                        diff.changed += 1;
                    }
                }
                None => {
                    self.insert(schedule.clone(), now, &mut around, NOT_PLACED);
                    diff.added += 1;
                }
            }
        }
        diff
    }

    fn insert(
        &mut self,
        schedule: Arc<Schedule>,
        now: DateTime<Utc>,
        memo: &mut HashMap<*const Cadence, Around>,
        placement_s: u32,
    ) {
        let cadence = &schedule.cadence;
        let a = *memo.entry(Arc::as_ptr(cadence)).or_insert_with(|| {
            let last = cadence
                .prev_before(now + chrono::Duration::milliseconds(1))
                .and_then(|n| cadence.prev_before(n).map(|p| (p, n)));
            Around { last, next: cadence.next_after(now) }
        });
        // A run whose nominal time has passed but whose placed time has not is still
        // pending (it sits inside its spread window): keep it.
        let pending = a.last.and_then(|(prev, nominal)| {
            let offset = self.offset(&schedule, placement_s, prev, nominal);
            (nominal + offset >= now).then_some((prev, nominal, offset))
        });
        let run = pending.or_else(|| {
            let nominal = a.next?;
            let prev = a.last.map_or_else(|| cadence.prev_before(nominal), |(_, n)| Some(n))?;
            Some((prev, nominal, self.offset(&schedule, placement_s, prev, nominal)))
        });
        let hash = self.hasher.hash_one(&schedule.key);
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    schedule: None,
                    placement_s: NOT_PLACED,
                    nominal_s: 0,
                    prev_delta_s: 0,
                    offset_ms: 0,
                    generation: 0,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.schedule = Some(schedule);
        s.placement_s = placement_s;
        s.generation = s.generation.wrapping_add(1);
        let generation = s.generation;
        if let Some((prev, nominal, offset)) = run {
            s.nominal_s = to_epoch_s(nominal);
            s.prev_delta_s = (nominal - prev).num_seconds().clamp(0, i64::from(u32::MAX)) as u32;
            s.offset_ms = offset.num_milliseconds().clamp(0, i64::from(u32::MAX)) as u32;
            self.heap.push(Reverse(Entry { at_ms: (nominal + offset).timestamp_millis(), slot, generation }));
        }
        let hasher = &self.hasher;
        let slots = &self.slots;
        self.index
            .insert_unique(hash, slot, |&i| slots[i as usize].schedule.as_ref().map_or(0, |s| hasher.hash_one(&s.key)));
    }

    fn remove(&mut self, key: &ScheduleKey) {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        if let Ok(entry) =
            self.index.find_entry(hash, |&i| slots[i as usize].schedule.as_ref().is_some_and(|s| s.key == *key))
        {
            let (slot, _) = entry.remove();
            let s = &mut self.slots[slot as usize];
            s.schedule = None;
            s.generation = s.generation.wrapping_add(1);
            self.free.push(slot);
        }
    }

    /// The offset of the run at `nominal` (after `prev`): the placer's `placement_s` under
    /// load-aware placement when it lies inside the window, else the strategy's own.
    fn offset(
        &self,
        schedule: &Schedule,
        placement_s: u32,
        prev: DateTime<Utc>,
        nominal: DateTime<Utc>,
    ) -> chrono::Duration {
        let interval = (nominal - prev).to_std().unwrap_or(Duration::ZERO);
        let window = schedule.spread.min(interval);
        let placement = (placement_s != NOT_PLACED).then(|| Duration::from_secs(u64::from(placement_s)));
        let placed = match (self.strategy, placement) {
            // A run never starts after nominal + window, whatever the placer said.
            (Strategy::LoadAware, Some(o)) if o <= window => o,
            _ => placement::offset(self.strategy, &schedule.key, schedule.spread, interval),
        };
        chrono::Duration::from_std(placed).unwrap_or_default()
    }

    /// Where the run of `schedule` at `nominal` (after `prev`) is placed, with the offsets this
    /// timer gives it now.
    pub fn placed_time(&self, schedule: &Schedule, prev: DateTime<Utc>, nominal: DateTime<Utc>) -> DateTime<Utc> {
        let placement_s = self.find(&schedule.key).map_or(NOT_PLACED, |i| self.slots[i as usize].placement_s);
        nominal + self.offset(schedule, placement_s, prev, nominal)
    }

    /// The next `n` runs of `schedule` placed after `now`, as (nominal, placed) times, with
    /// the offsets this timer would give them.
    pub fn next_runs(&self, schedule: &Schedule, now: DateTime<Utc>, n: usize) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let mut out = Vec::with_capacity(n);
        // A run whose nominal time has passed may still be pending inside its window.
        let back = chrono::Duration::from_std(schedule.spread).unwrap_or_default();
        let placement_s = self.find(&schedule.key).map_or(NOT_PLACED, |i| self.slots[i as usize].placement_s);
        let mut prev = schedule.cadence.prev_before(now - back);
        let mut t = now - back;
        while out.len() < n {
            let Some(nominal) = schedule.cadence.next_after(t) else {
                break;
            };
            let placed =
                nominal + prev.map_or(chrono::Duration::zero(), |p| self.offset(schedule, placement_s, p, nominal));
            if placed > now {
                out.push((nominal, placed));
            }
            prev = Some(nominal);
            t = nominal;
        }
        out
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
    /// each schedule's following run. Schedules sharing a cadence and a nominal time share
    /// the computation of the next one.
    pub fn pop_due(&mut self, now: DateTime<Utc>, out: &mut Vec<DueRun>) {
        let now_ms = now.timestamp_millis();
        let mut next_of: HashMap<(*const Cadence, u32), Option<DateTime<Utc>>> = HashMap::new();
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
            let nominal = slot.nominal();
            out.push(DueRun {
                schedule: schedule.clone(),
                nominal,
                placed: nominal + chrono::Duration::milliseconds(i64::from(slot.offset_ms)),
                window_start: nominal - chrono::Duration::seconds(i64::from(slot.prev_delta_s)),
            });
            let next = *next_of
                .entry((Arc::as_ptr(&schedule.cadence), slot.nominal_s))
                .or_insert_with(|| schedule.cadence.next_after(nominal));
            if let Some(next) = next {
                let offset = self.offset(&schedule, slot.placement_s, nominal, next);
                let slot = &mut self.slots[top.slot as usize];
                slot.nominal_s = to_epoch_s(next);
                slot.prev_delta_s = (next - nominal).num_seconds().clamp(0, i64::from(u32::MAX)) as u32;
                slot.offset_ms = offset.num_milliseconds().clamp(0, i64::from(u32::MAX)) as u32;
                self.heap.push(Reverse(Entry {
                    at_ms: (next + offset).timestamp_millis(),
                    slot: top.slot,
                    generation: top.generation,
                }));
            }
        }
    }
}

/// Upper bound on one timer sleep, so a wall-clock jump is noticed within a second.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

/// Sleeps until the earliest placed run, hands every due run to the publisher, repeats.
pub async fn drive(
    timer: Arc<std::sync::Mutex<Timer>>,
    changed: Arc<tokio::sync::Notify>,
    runs: tokio::sync::mpsc::Sender<DueRun>,
    progress: Arc<crate::catchup::Progress>,
    metrics: crate::metrics::Metrics,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut due = Vec::new();
    loop {
        let deadline = timer.lock().unwrap_or_else(|p| p.into_inner()).next_deadline();
        let wait = deadline
            .map(|d| (d - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(MAX_TIMER_SLEEP)
            .min(MAX_TIMER_SLEEP);
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = changed.notified() => continue,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = Utc::now();
        timer.lock().unwrap_or_else(|p| p.into_inner()).pop_due(now, &mut due);
        progress.handed_over(due.iter().map(|r| r.placed), now);
        for run in due.drain(..) {
            metrics.runs_due.inc();
            let late = (now - run.placed).to_std().unwrap_or(Duration::ZERO);
            metrics.fire_lateness.observe(late.as_secs_f64());
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                sent = runs.send(run) => if sent.is_err() { return Ok(()) },
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
        DateTime::parse_from_rfc3339(s).expect("rfc3339").with_timezone(&Utc)
    }

    fn catalog(queries: &[(&str, &str, Option<&str>)]) -> BTreeMap<ScheduleKey, Arc<Schedule>> {
        let qs: Vec<_> = queries
            .iter()
            .map(|(id, cron, spread)| {
                let mut q =
                    json!({"id": id, "schedule": cron, "engine": "warehouse", "sql": "SELECT 1", "destination": "t"});
                if let Some(s) = spread {
                    q["spread"] = json!(s);
                }
                q
            })
            .collect();
        let raw = RawCatalog {
            tenants: vec![RawTenant::json(
                json!({"id": "t", "status": "active"}),
                vec![json!({"id": "a", "queries": qs})],
            )],
        };
        let c = validate(raw, &CatalogPolicy::for_tests());
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        c.schedules
    }

    fn drive(timer: &mut Timer, from: DateTime<Utc>, until: DateTime<Utc>, step_ms: i64) -> Vec<DueRun> {
        let mut out = vec![];
        let mut now = from;
        while now <= until {
            timer.pop_due(now, &mut out);
            now += chrono::Duration::milliseconds(step_ms);
        }
        out
    }

    #[test]
    fn load_aware_offsets_are_used_inside_the_window_and_ignored_outside() {
        let schedules = catalog(&[("a", "0 * * * *", Some("10m")), ("b", "0 * * * *", Some("10m"))]);
        let keys: Vec<ScheduleKey> = schedules.keys().cloned().collect();
        let mut timer = Timer::new(Strategy::LoadAware);
        let start = utc("2026-12-04T09:30:00Z");
        timer.apply(&schedules, start);
        let placements = [(&keys[0], Duration::from_secs(120)), (&keys[1], Duration::from_secs(3600))];
        assert_eq!(timer.set_placements(start, placements), 2);
        assert_eq!(timer.placement(&keys[0]), Some(Duration::from_secs(120)));
        let runs = drive(&mut timer, start, utc("2026-12-04T10:15:00Z"), 1000);
        let placed = |q: &str| runs.iter().find(|r| &*r.schedule.key.query_id == q).map(|r| r.placed).expect("fired");
        assert_eq!(placed("a"), utc("2026-12-04T10:02:00Z"), "the placer's offset");
        let b = placed("b");
        assert!(b >= utc("2026-12-04T10:00:00Z") && b < utc("2026-12-04T10:10:00Z"), "outside the window: hash {b}");
        let next = timer.next_runs(&schedules[&keys[0]], utc("2026-12-04T10:01:00Z"), 2);
        assert_eq!(next[0], (utc("2026-12-04T10:00:00Z"), utc("2026-12-04T10:02:00Z")), "a pending run is listed");
        assert_eq!(next[1].1, utc("2026-12-04T11:02:00Z"));
    }

    #[test]
    fn the_forecast_counts_the_runs_due_and_their_work_in_any_chunking() {
        let schedules =
            catalog(&[("ten", "*/10 * * * * *", None), ("hourly", "0 * * * *", None), ("later", "0 12 * * *", None)]);
        let mut timer = Timer::new(Strategy::None);
        let now = utc("2026-12-04T09:58:00.5Z");
        timer.apply(&schedules, now);
        let windows = [Duration::from_secs(60), Duration::from_secs(300)];
        let thirty = |_: &Schedule| Duration::from_secs(30);
        let all = timer.due_within(now, &windows, thirty, 0..timer.slot_count());
        // Next minute: 6 runs of "ten"; next 5 minutes: 30 of "ten" and the 10:00 "hourly".
        assert_eq!(all, vec![(6, 180.0), (31, 930.0)]);
        let mut chunked = vec![(0, 0.0); 2];
        for i in 0..timer.slot_count() {
            for (t, p) in chunked.iter_mut().zip(timer.due_within(now, &windows, thirty, i..i + 1)) {
                t.0 += p.0;
                t.1 += p.1;
            }
        }
        assert_eq!(chunked, all);
    }

    #[test]
    fn a_resync_releases_the_old_catalog_and_keeps_the_placements_in_force() {
        let first = catalog(&[("a", "0 * * * *", Some("10m"))]);
        let key = first.keys().next().expect("one schedule").clone();
        let mut timer = Timer::new(Strategy::LoadAware);
        let start = utc("2026-12-04T09:30:00Z");
        timer.apply(&first, start);
        assert_eq!(timer.placement(&key), None, "not placed yet");
        assert_eq!(timer.set_placements(start, [(&key, Duration::from_secs(180))]), 1);
        let second = catalog(&[("a", "0 * * * *", Some("10m"))]);
        assert_eq!(timer.apply(&second, start).unchanged, 1);
        assert_eq!(Arc::strong_count(&first[&key]), 1, "the timer holds the new catalog's copy");
        assert_eq!(timer.placement(&key), Some(Duration::from_secs(180)));
        // A changed schedule keeps its placement, and its runs use it.
        let third = catalog(&[("a", "0 * * * *", Some("20m"))]);
        assert_eq!(timer.apply(&third, start).changed, 1);
        assert_eq!(timer.placement(&key), Some(Duration::from_secs(180)));
        let next = timer.next_runs(&third[&key], start, 1);
        assert_eq!(next[0], (utc("2026-12-04T10:00:00Z"), utc("2026-12-04T10:03:00Z")));
    }

    #[test]
    fn a_new_placement_moves_a_pending_run_that_is_not_due_yet() {
        let schedules = catalog(&[("a", "0 * * * *", Some("10m"))]);
        let key = schedules.keys().next().expect("one schedule").clone();
        let mut timer = Timer::new(Strategy::LoadAware);
        let start = utc("2026-12-04T09:30:00Z");
        timer.apply(&schedules, start);
        timer.set_placements(start, [(&key, Duration::from_secs(420))]);
        let runs = drive(&mut timer, start, utc("2026-12-04T11:15:00Z"), 1000);
        let placed: Vec<_> = runs.iter().map(|r| r.placed).collect();
        assert_eq!(placed, [utc("2026-12-04T10:07:00Z"), utc("2026-12-04T11:07:00Z")], "once each, at the new offset");
    }

    #[test]
    fn the_per_schedule_structures_stay_small() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        assert_eq!(std::mem::size_of::<Reverse<Entry>>(), 16);
    }

    #[test]
    fn every_run_fires_once_in_order_with_its_window() {
        let mut timer = Timer::new(Strategy::None);
        let start = utc("2026-12-04T10:00:00.500Z");
        timer.apply(&catalog(&[("a", "*/10 * * * * *", None), ("b", "*/15 * * * * *", None)]), start);
        let runs = drive(&mut timer, start, utc("2026-12-04T10:01:00Z"), 250);
        let a: Vec<_> = runs.iter().filter(|r| &*r.schedule.key.query_id == "a").map(|r| r.nominal).collect();
        let b: Vec<_> = runs.iter().filter(|r| &*r.schedule.key.query_id == "b").collect();
        assert_eq!(a.len(), 6, "{a:?}");
        assert_eq!(a[0], utc("2026-12-04T10:00:10Z"));
        assert_eq!(b.len(), 4);
        for w in b.windows(2) {
            assert_eq!(w[1].window_start, w[0].nominal, "windows chain without gaps");
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
        let secs: Vec<_> = out.iter().map(|r| r.nominal.timestamp() - start.timestamp()).collect();
        assert_eq!(secs, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn spread_runs_are_placed_inside_their_window_and_keep_nominal_times() {
        let mut timer = Timer::new(Strategy::Hash);
        let start = utc("2026-12-04T09:59:00Z");
        let names: Vec<String> = (0..50).map(|i| format!("q{i}")).collect();
        let qs: Vec<_> = names.iter().map(|n| (n.as_str(), "0 * * * *", Some("10m"))).collect();
        timer.apply(&catalog(&qs), start);
        let runs = drive(&mut timer, start, utc("2026-12-04T10:15:00Z"), 1000);
        assert_eq!(runs.len(), 50);
        let mut distinct = std::collections::HashSet::new();
        for r in &runs {
            assert_eq!(r.nominal, utc("2026-12-04T10:00:00Z"));
            assert!(r.placed >= r.nominal && r.placed < r.nominal + chrono::Duration::minutes(10));
            distinct.insert(r.placed.timestamp() / 60);
        }
        assert!(distinct.len() >= 8, "runs spread over the window: {distinct:?}");
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
        assert!(offset > chrono::Duration::zero(), "this key has a non-zero offset");
        // Start between the nominal time and the placed time: the run is still pending.
        timer.apply(&spread, utc("2026-12-04T10:00:00Z") + offset / 2);
        assert_eq!(timer.next_deadline(), Some(placed_first));
    }

    #[test]
    fn a_resync_adds_changes_and_removes_without_touching_the_rest() {
        let mut timer = Timer::new(Strategy::None);
        let now = utc("2026-12-04T10:00:00.5Z");
        let d = timer.apply(&catalog(&[("a", "*/10 * * * * *", None), ("b", "*/10 * * * * *", None)]), now);
        assert_eq!((d.added, d.changed, d.removed), (2, 0, 0));
        let d = timer.apply(&catalog(&[("a", "*/10 * * * * *", None), ("c", "*/5 * * * * *", None)]), now);
        assert_eq!((d.added, d.removed, d.unchanged), (1, 1, 1));
        let d = timer.apply(&catalog(&[("a", "*/20 * * * * *", None), ("c", "*/5 * * * * *", None)]), now);
        assert_eq!((d.changed, d.unchanged), (1, 1));
        assert_eq!(timer.len(), 2);
        let runs = drive(&mut timer, now, utc("2026-12-04T10:00:20Z"), 100);
        let names: Vec<_> =
            runs.iter().map(|r| format!("{}@{}", r.schedule.key.query_id, r.nominal.timestamp() % 60)).collect();
        assert_eq!(names, vec!["c@5", "c@10", "c@15", "a@20", "c@20"]);
    }
}
