//! `controller bench shards`: the design for catalogs past one controller, simulated. The
//! catalog is split across N shards by a stable hash of the tenant (jump consistent hash of
//! FNV-1a), each shard runs the controller's own [`Timer`] over its tenants' schedules, and
//! a virtual clock drives every shard second by second for a few hours. Half-way, the catalog
//! is re-sharded from N to M shards, with the replicas learning the new shard map at
//! different moments (up to `skew` apart), and the fires are compared with the calendar:
//! missed runs, duplicate runs, fires and memory per shard.
//!
//! Two hand-overs are simulated:
//!
//! - **cutover** (the design): a shard map takes effect at a *cutover instant* C set `margin`
//!   ahead of its announcement, and a run belongs to the map in force at its **nominal
//!   time**. An old shard keeps firing its runs whose nominal time is before C (they may be
//!   placed after C, inside their spread window) and drops the rest; a new shard, started
//!   whenever its replica learns the map, drops runs whose nominal time is before C. When
//!   every replica learns the map before C, no run is fired twice or lost, whatever the order.
//! - **naive**: a replica switches maps the moment it learns of the new one: an old shard
//!   stops, a new shard starts from its start time. Replicas learning at different moments
//!   leave runs to nobody (missed) or to two shards at once (duplicates).

use crate::catalog::{Schedule, ScheduleKey};
use crate::placement::Strategy;
use crate::schedule::Cadence;
use crate::timer::{DueRun, Timer};
use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// FNV-1a of the tenant id: stable across processes, versions and machines.
pub fn tenant_hash(tenant_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Jump consistent hash (Lamping and Veach, 2014): the shard of `key` among `shards`. Going
/// from N to M > N shards moves only the keys that land on the new shards (1 − N/M of them).
pub fn jump(mut key: u64, shards: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(shards.max(1)) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The shard that owns `tenant_id` among `shards`.
pub fn shard_of(tenant_id: &str, shards: u32) -> u32 {
    jump(tenant_hash(tenant_id), shards)
}

#[derive(Debug, Clone)]
pub struct ShardBench {
    pub schedules: usize,
    pub shards: u32,
    /// Shards after the re-shard.
    pub reshard_to: u32,
    /// Virtual time simulated.
    pub hours: u32,
    /// The latest a replica learns of the new shard map, after its announcement.
    pub skew: Duration,
    /// How far ahead of its announcement the new map's cutover instant is.
    pub margin: Duration,
    pub seed: u64,
}

/// The synthetic catalog ([`crate::bench::synthetic`]): 100 queries per tenant; 70% hourly
/// (10-minute spread), 20% every 15 minutes (3-minute spread), 10% daily (30-minute spread),
/// at minutes and seconds spread by the query's index.
pub fn catalog(n: usize) -> Vec<Arc<Schedule>> {
    crate::bench::synthetic(n, |i| {
        let (second, minute) = (i % 60, (i / 60) % 60);
        let (cron, spread_min) = match i % 10 {
            0..=6 => (format!("{second} {minute} * * * *"), 10),
            7 | 8 => (format!("{second} {}/15 * * * *", minute % 15), 3),
            _ => (format!("{second} {minute} {} * * *", (i / 3600) % 24), 30),
        };
        (cron, Duration::from_secs(spread_min * 60))
    })
    .collect()
}

/// The longest spread window of the catalog: a run may be placed this long after its
/// nominal time.
const MAX_WINDOW: ChronoDuration = ChronoDuration::minutes(30);

/// How a shard's timer treats the runs it pops.
#[derive(Debug, Clone, Copy)]
enum Keep {
    All,
    /// Only runs whose nominal time is before the instant (an old shard draining).
    Before(DateTime<Utc>),
    /// Only runs whose nominal time is at or after the instant (a new shard).
    From(DateTime<Utc>),
}

/// One shard's timer over a span of virtual time.
struct ShardRun {
    timer: Timer,
    keep: Keep,
    schedules: usize,
    timer_bytes: i64,
    fires: u64,
    max_fires_per_second: u64,
}

impl ShardRun {
    fn new(schedules: &[Arc<Schedule>], start: DateTime<Utc>, keep: Keep, live: &dyn Fn() -> i64) -> Self {
        let map: BTreeMap<ScheduleKey, Arc<Schedule>> = schedules.iter().map(|s| (s.key.clone(), s.clone())).collect();
        let before = live();
        let mut timer = Timer::new(Strategy::Hash);
        timer.apply(&map, start);
        let timer_bytes = live() - before;
        ShardRun { timer, keep, schedules: schedules.len(), timer_bytes, fires: 0, max_fires_per_second: 0 }
    }

    /// Drives the timer second by second over (from, to] and records what it fires.
    fn drive(&mut self, from: DateTime<Utc>, to: DateTime<Utc>, out: &mut Vec<(u32, u32)>) {
        let mut due: Vec<DueRun> = Vec::new();
        let mut now = from;
        while now < to {
            now += ChronoDuration::seconds(1);
            due.clear();
            self.timer.pop_due(now, &mut due);
            let mut fired = 0;
            for run in &due {
                let keep = match self.keep {
                    Keep::All => true,
                    Keep::Before(c) => run.nominal < c,
                    Keep::From(c) => run.nominal >= c,
                };
                if keep {
                    let index: u32 = run.schedule.key.query_id[1..].parse().unwrap_or(u32::MAX);
                    out.push((index, run.nominal.timestamp() as u32));
                    fired += 1;
                }
            }
            self.fires += fired;
            self.max_fires_per_second = self.max_fires_per_second.max(fired);
        }
    }
}

/// What one simulated hand-over amounted to.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub protocol: &'static str,
    pub fires: u64,
    pub expected: u64,
    pub missed: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    pub wall: Duration,
}

/// Per-shard figures of one shard map.
#[derive(Debug, Clone)]
pub struct ShardLine {
    pub map: &'static str,
    pub shard: u32,
    pub schedules: usize,
    pub timer_bytes_per_schedule: f64,
    pub fires: u64,
    pub max_fires_per_second: u64,
}

/// Splits `catalog` across `shards`.
fn split(catalog: &[Arc<Schedule>], shards: u32) -> Vec<Vec<Arc<Schedule>>> {
    let mut out = vec![Vec::new(); shards as usize];
    for s in catalog {
        out[shard_of(&s.key.tenant_id, shards) as usize].push(s.clone());
    }
    out
}

/// When each of `n` replicas learns of the new map: spread evenly over [0, skew], in an
/// order shuffled by `seed`.
fn learn_delays(n: u32, skew: Duration, seed: u64) -> Vec<Duration> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut delays: Vec<Duration> =
        (0..n).map(|i| skew.mul_f64(if n <= 1 { 1.0 } else { f64::from(i) / f64::from(n - 1) })).collect();
    rng.shuffle(&mut delays);
    delays
}

/// Runs the simulation for one protocol and checks every fire against the calendar.
fn simulate(
    cfg: &ShardBench,
    catalog: &[Arc<Schedule>],
    protocol: &'static str,
    live: &dyn Fn() -> i64,
    lines: &mut Vec<ShardLine>,
) -> Outcome {
    let t0 = Instant::now();
    let start = Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).single().expect("valid start");
    let end = start + ChronoDuration::hours(i64::from(cfg.hours));
    let announced = start + ChronoDuration::hours(i64::from(cfg.hours)) / 2;
    let cutover = announced + ChronoDuration::from_std(cfg.margin).unwrap_or_default();
    // Replica r runs old shard r and new shard r: it learns the new map once, at its delay.
    let delays = learn_delays(cfg.shards.max(cfg.reshard_to), cfg.skew, cfg.seed);
    let skew = |d: Duration| ChronoDuration::from_std(d).unwrap_or_default();
    let mut fires: Vec<(u32, u32)> = Vec::new();

    for (i, part) in split(catalog, cfg.shards).iter().enumerate() {
        let (keep, stop) = match protocol {
            "cutover" => (Keep::Before(cutover), cutover + MAX_WINDOW + ChronoDuration::seconds(1)),
            _ => (Keep::All, announced + skew(delays[i])),
        };
        let mut shard = ShardRun::new(part, start, Keep::All, live);
        shard.drive(start, announced, &mut fires);
        shard.keep = keep;
        shard.drive(announced, stop.min(end), &mut fires);
        lines.push(line("old", i as u32, &shard));
    }
    for (j, part) in split(catalog, cfg.reshard_to).iter().enumerate() {
        let learned = announced + skew(delays[j]);
        let keep = if protocol == "cutover" { Keep::From(cutover) } else { Keep::All };
        let mut shard = ShardRun::new(part, learned, keep, live);
        shard.drive(learned, end, &mut fires);
        lines.push(line("new", j as u32, &shard));
    }

    // The calendar: every nominal time in [start, end − the longest window) must have fired
    // exactly once (later ones may still sit in their window when the simulation ends).
    let window_end = end - MAX_WINDOW - ChronoDuration::seconds(1);
    let mut calendars: HashMap<*const Cadence, u64> = HashMap::new();
    let mut expected_of = |s: &Schedule| -> u64 {
        *calendars.entry(Arc::as_ptr(&s.cadence)).or_insert_with(|| {
            let mut count = 0;
            let mut t = start - ChronoDuration::milliseconds(1);
            while let Some(n) = s.cadence.next_after(t) {
                if n > window_end {
                    break;
                }
                count += 1;
                t = n;
            }
            count
        })
    };
    let total = fires.len() as u64;
    fires.sort_unstable();
    let before = fires.len();
    fires.dedup();
    let duplicates = (before - fires.len()) as u64;
    let mut got = vec![0u64; catalog.len()];
    let (lo, hi) = (start.timestamp() as u32, window_end.timestamp() as u32);
    for &(index, nominal) in &fires {
        if (lo..=hi).contains(&nominal)
            && let Some(g) = got.get_mut(index as usize)
        {
            *g += 1;
        }
    }
    let (mut expected, mut missed, mut unexpected) = (0u64, 0u64, 0u64);
    for (i, s) in catalog.iter().enumerate() {
        let e = expected_of(s);
        expected += e;
        missed += e.saturating_sub(got[i]);
        unexpected += got[i].saturating_sub(e);
    }
    Outcome { protocol, fires: total, expected, missed, duplicates, unexpected, wall: t0.elapsed() }
}

fn line(map: &'static str, shard: u32, run: &ShardRun) -> ShardLine {
    ShardLine {
        map,
        shard,
        schedules: run.schedules,
        timer_bytes_per_schedule: run.timer_bytes as f64 / run.schedules.max(1) as f64,
        fires: run.fires,
        max_fires_per_second: run.max_fires_per_second,
    }
}

/// Runs both protocols and prints the figures.
pub fn run_shard_bench(cfg: &ShardBench, live: &dyn Fn() -> i64) {
    let t0 = Instant::now();
    let before = live();
    let catalog = catalog(cfg.schedules);
    let catalog_bytes = live() - before;
    let tenants = cfg.schedules.div_ceil(100);
    let moved = (0..tenants)
        .filter(|t| {
            let id = format!("t{t}");
            shard_of(&id, cfg.shards) != shard_of(&id, cfg.reshard_to)
        })
        .count();
    println!(
        "{} schedules of {} tenants built in {:.1} s ({:.0} bytes each for the definitions); {} h of virtual time, \
         re-shard {} -> {} at {} h (tenants moved: {} of {}, {:.1}%), replicas learn the new map within {} s, \
         cutover {} s after the announcement",
        cfg.schedules,
        tenants,
        t0.elapsed().as_secs_f64(),
        catalog_bytes as f64 / cfg.schedules.max(1) as f64,
        cfg.hours,
        cfg.shards,
        cfg.reshard_to,
        cfg.hours as f64 / 2.0,
        moved,
        tenants,
        moved as f64 * 100.0 / tenants.max(1) as f64,
        cfg.skew.as_secs(),
        cfg.margin.as_secs(),
    );
    for protocol in ["cutover", "naive"] {
        let mut lines = Vec::new();
        let outcome = simulate(cfg, &catalog, protocol, live, &mut lines);
        println!(
            "\nprotocol {protocol}: fires {}, expected {}, missed {}, duplicates {}, unexpected {} ({:.1} s)",
            outcome.fires,
            outcome.expected,
            outcome.missed,
            outcome.duplicates,
            outcome.unexpected,
            outcome.wall.as_secs_f64()
        );
        println!("map  shard  schedules  timer bytes/schedule      fires  max fires/s");
        for l in &lines {
            println!(
                "{:<4} {:>5} {:>10} {:>21.1} {:>10} {:>12}",
                l.map, l.shard, l.schedules, l.timer_bytes_per_schedule, l.fires, l.max_fires_per_second
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_is_balanced_and_moves_only_what_it_must() {
        let tenants: Vec<String> = (0..20_000).map(|t| format!("t{t}")).collect();
        let mut counts = [0usize; 6];
        let mut moved = 0;
        for t in &tenants {
            let (four, six) = (shard_of(t, 4), shard_of(t, 6));
            counts[six as usize] += 1;
            if four != six {
                moved += 1;
                assert!(six >= 4, "a moved tenant goes to a new shard, never between old ones");
            }
        }
        let mean = tenants.len() as f64 / 6.0;
        assert!(counts.iter().all(|&c| (c as f64 - mean).abs() < mean * 0.1), "{counts:?}");
        let share = moved as f64 / tenants.len() as f64;
        assert!((share - 1.0 / 3.0).abs() < 0.03, "4 -> 6 moves a third: {share}");
        assert_eq!(shard_of("acme", 1), 0);
    }

    #[test]
    fn the_cutover_hands_over_without_loss_or_duplicates_and_the_naive_switch_does_not() {
        let cfg = ShardBench {
            schedules: 20_000,
            shards: 2,
            reshard_to: 3,
            hours: 2,
            skew: Duration::from_secs(30),
            margin: Duration::from_secs(120),
            seed: 7,
        };
        let catalog = catalog(cfg.schedules);
        let live = || 0i64;
        let cutover = simulate(&cfg, &catalog, "cutover", &live, &mut Vec::new());
        assert!(cutover.expected > 40_000, "{cutover:?}");
        assert_eq!((cutover.missed, cutover.duplicates, cutover.unexpected), (0, 0, 0), "{cutover:?}");
        let naive = simulate(&cfg, &catalog, "naive", &live, &mut Vec::new());
        assert!(naive.missed + naive.duplicates > 0, "{naive:?}");
    }
}
