//! `controller plan`: forecasts, for each placement strategy, the starts per second and per
//! minute and the expected concurrent work over a horizon, next to a lower bound on the
//! peak that any placement within the windows could reach. Pure computation on a catalog.
//!
//! Concurrency is "runs in progress" at each second, from each run's duration estimate
//! (`estimated_duration`, else the default). Runs placed before the horizon's start are not
//! counted, so the first minutes read slightly low.

use crate::catalog::{Schedule, ScheduleKey};
use crate::placement::{self, Item, LoadAware, Strategy};
use crate::schedule::Cadence;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The placer's view of every schedule over `[start, start + horizon)`.
pub fn items(
    schedules: &BTreeMap<ScheduleKey, Arc<Schedule>>,
    start: DateTime<Utc>,
    horizon: Duration,
    default_duration: Duration,
) -> Vec<Item> {
    items_with(schedules, start, horizon, |s| s.estimated_duration.unwrap_or(default_duration))
}

/// As [`items`], with each schedule's expected run time from `duration`.
pub fn items_with(
    schedules: &BTreeMap<ScheduleKey, Arc<Schedule>>,
    start: DateTime<Utc>,
    horizon: Duration,
    duration: impl Fn(&Schedule) -> Duration,
) -> Vec<Item> {
    let end = start + chrono::Duration::from_std(horizon).unwrap_or_default();
    // Schedules sharing a cadence share its calendar and shortest interval.
    let mut calendars: HashMap<*const Cadence, (Arc<Vec<u32>>, Duration)> = HashMap::new();
    schedules
        .values()
        .map(|s| {
            let (nominal_s, min_interval) =
                calendars.entry(Arc::as_ptr(&s.cadence)).or_insert_with(|| calendar(&s.cadence, start, end)).clone();
            Item {
                key: s.key.clone(),
                nominal_s,
                window: s.spread.min(min_interval),
                duration: duration(s).max(Duration::from_secs(1)),
                weight: s.tenant_weight,
            }
        })
        .collect()
}

fn calendar(cadence: &Cadence, start: DateTime<Utc>, end: DateTime<Utc>) -> (Arc<Vec<u32>>, Duration) {
    let mut times = Vec::new();
    let mut min_interval = Duration::MAX;
    let mut prev = cadence.prev_before(start);
    let mut t = start - chrono::Duration::milliseconds(1);
    while let Some(n) = cadence.next_after(t) {
        if let Some(p) = prev {
            min_interval = min_interval.min((n - p).to_std().unwrap_or_default());
        }
        if n >= end {
            break;
        }
        times.push((n - start).num_seconds().max(0) as u32);
        prev = Some(n);
        t = n;
    }
    (Arc::new(times), min_interval)
}

/// The offsets (whole seconds, in the order of `items`) a strategy gives every item.
pub fn offsets(strategy: Strategy, items: &[Item], horizon: Duration) -> Vec<u32> {
    match strategy {
        Strategy::LoadAware => LoadAware::default().place(items, None, horizon).offsets,
        _ => items.iter().map(|i| placement::offset(strategy, &i.key, i.window, i.window).as_secs() as u32).collect(),
    }
}

/// What one strategy's placement amounts to over the horizon.
#[derive(Debug, Clone, Serialize)]
pub struct Forecast {
    pub peak: f64,
    pub mean: f64,
    pub p99: f64,
    pub peak_to_mean: f64,
    pub peak_to_bound: f64,
    pub max_starts_per_second: u64,
    pub max_starts_per_minute: u64,
    /// (tenant, minute) pairs where one tenant took more than its share of the minute's
    /// starts while another tenant's run was due (the default rule: share 0.5 × weight).
    pub fairness_violations: usize,
    /// The highest share of a minute's starts (minutes with 10 or more) one tenant took while
    /// another tenant's run was due.
    pub max_tenant_share: f64,
    /// Highest concurrency of each minute (for the picture).
    #[serde(skip)]
    pub per_minute_peak: Vec<f64>,
}

/// Concurrency and starts, second by second.
pub fn forecast(items: &[Item], offsets: &[u32], horizon: Duration, bound: f64) -> Forecast {
    let h = horizon.as_secs() as usize;
    let mut delta = vec![0i64; h + 1];
    let mut starts = vec![0u64; h];
    let mut work = 0.0;
    for (item, &o) in items.iter().zip(offsets) {
        let o = o as usize;
        let d = item.duration.as_secs().max(1) as usize;
        for &n in item.nominal_s.iter() {
            let s = n as usize + o;
            if s >= h {
                continue;
            }
            let e = (s + d).min(h);
            delta[s] += 1;
            delta[e] -= 1;
            starts[s] += 1;
            work += (e - s) as f64;
        }
    }
    let mut level = 0i64;
    let mut concurrency = Vec::with_capacity(h);
    for d in &delta[..h] {
        level += d;
        concurrency.push(level as f64);
    }
    let peak = concurrency.iter().copied().fold(0.0, f64::max);
    let mean = work / h.max(1) as f64;
    let mut sorted = concurrency.clone();
    sorted.sort_unstable_by(f64::total_cmp);
    let p99 = sorted.get(((sorted.len().max(1) - 1) as f64 * 0.99) as usize).copied().unwrap_or(0.0);
    let max_starts_per_minute = starts.chunks(60).map(|c| c.iter().sum::<u64>()).max().unwrap_or(0);
    let fairness = crate::fairness::audit(&crate::fairness::Fairness::default(), items, offsets);
    Forecast {
        peak,
        mean,
        p99,
        peak_to_mean: if mean > 0.0 { peak / mean } else { 0.0 },
        peak_to_bound: if bound > 0.0 { peak / bound } else { 0.0 },
        max_starts_per_second: starts.iter().copied().max().unwrap_or(0),
        max_starts_per_minute,
        fairness_violations: fairness.violations,
        max_tenant_share: fairness.max_tenant_share,
        per_minute_peak: concurrency.chunks(60).map(|c| c.iter().copied().fold(0.0, f64::max)).collect(),
    }
}

/// A lower bound on the peak concurrency any placement inside the windows could reach
/// (energetic reasoning): over every minute-aligned interval [a, b) of the lengths in
/// [`BOUND_LENGTHS_MIN`], each run must spend at least min(its overlap if started at its
/// window's start, its overlap if started at the window's end) inside it; the total over
/// (b − a) bounds the peak from below, and so does the mean. Runs with the same nominal
/// time, window and duration are counted together.
pub fn lower_bound(items: &[Item], horizon: Duration) -> f64 {
    let h = horizon.as_secs() as i64;
    let minutes = (h / 60).max(1) as usize;
    let mut groups: HashMap<(u32, u32, u32), f64> = HashMap::new();
    for item in items {
        let w = item.window.as_secs() as u32;
        let d = item.duration.as_secs().max(1) as u32;
        for &n in item.nominal_s.iter() {
            *groups.entry((n, w, d)).or_default() += 1.0;
        }
    }
    let mean_work: f64 =
        groups.iter().map(|(&(n, _, d), c)| c * (i64::from(d).min(h - i64::from(n))).max(0) as f64).sum();
    let mut best = mean_work / h.max(1) as f64;
    for len_min in BOUND_LENGTHS_MIN {
        let len = (len_min * 60) as i64;
        if len > h {
            continue;
        }
        let mut energy = vec![0.0f64; minutes];
        for (&(n, w, d), &count) in &groups {
            let (s0, s1, d) = (i64::from(n), i64::from(n) + i64::from(w), i64::from(d));
            let first = ((s0 - len + 1).max(0) / 60) as usize;
            let last = (((s1 + d).min(h) - 1).max(0) / 60) as usize;
            for (m, slot) in energy.iter_mut().enumerate().take(last + 1).skip(first) {
                let a = (m * 60) as i64;
                let b = a + len;
                if b > h {
                    break;
                }
                let overlap = |s: i64| ((s + d).min(b) - s.max(a)).max(0);
                *slot += count * overlap(s0).min(overlap(s1)) as f64;
            }
        }
        best = best.max(energy.iter().copied().fold(0.0, f64::max) / len as f64);
    }
    best
}

/// Interval lengths (minutes) the lower bound examines.
pub const BOUND_LENGTHS_MIN: [usize; 30] = [
    1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 31, 32, 33, 34, 35, 37, 40, 42, 45, 50, 55, 60, 75, 90, 120, 180, 240,
];

/// The whole forecast, as `--format json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub horizon_s: u64,
    pub schedules: usize,
    pub runs: usize,
    pub lower_bound: f64,
    pub strategies: BTreeMap<&'static str, Forecast>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stability: Option<Stability>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

/// The controller's resident memory per schedule, from `controller bench sync --schedules
/// 1000000 --sql-bytes 300` (docs/benchmarks.md): a peak of 842 MiB through a re-sync and a
/// load-aware re-placement of a million schedules with SQL texts of about 300 bytes.
pub const CONTROLLER_BYTES_PER_SCHEDULE: f64 = 842.0 * 1024.0 * 1024.0 / 1_000_000.0;
/// The SQL size behind [`CONTROLLER_BYTES_PER_SCHEDULE`]; each byte more costs a byte.
pub const BENCH_SQL_BYTES: f64 = 300.0;
/// A full re-sync (read, validate, diff) per schedule: 4.75 s per million, the same bench.
pub const RESYNC_SECS_PER_SCHEDULE: f64 = 4.75e-6;
/// Schedules one controller replica is sized for: about 4 GiB and 25 s per re-sync at
/// 300-byte SQL. Past it, shard the controller (README: Past one controller).
pub const SCHEDULES_PER_CONTROLLER: usize = 5_000_000;

/// How many workers and what controller a catalog needs.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// Runs one worker holds at once (`runner.max_in_flight`).
    pub worker_slots: usize,
    /// Capacity above the forecast peak for `hpa_max`.
    pub headroom: f64,
    pub workers: BTreeMap<&'static str, Workers>,
    pub mean_sql_bytes: f64,
    pub controller_memory_mib: f64,
    pub controller_resync_s: f64,
    /// Controller shards: one per [`SCHEDULES_PER_CONTROLLER`] schedules.
    pub controller_shards: usize,
}

/// Workers for one placement strategy.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Workers {
    /// Enough slots for the forecast peak of runs in progress.
    pub at_peak: u64,
    /// HPA `minReplicas`: enough slots for the mean.
    pub hpa_min: u64,
    /// HPA `maxReplicas`: the peak with the headroom.
    pub hpa_max: u64,
}

/// Workers and controller for `plan`'s forecasts, at `worker_slots` runs per worker.
pub fn capacity(plan: &Plan, worker_slots: usize, headroom: f64, mean_sql_bytes: f64) -> Capacity {
    let slots = worker_slots.max(1) as f64;
    let workers = plan
        .strategies
        .iter()
        .map(|(name, f)| {
            let at_peak = (f.peak / slots).ceil().max(1.0) as u64;
            let hpa_min = (f.mean / slots).ceil().max(1.0) as u64;
            let hpa_max = ((f.peak * (1.0 + headroom)) / slots).ceil().max(at_peak as f64) as u64;
            (*name, Workers { at_peak, hpa_min, hpa_max })
        })
        .collect();
    let per_schedule = CONTROLLER_BYTES_PER_SCHEDULE + (mean_sql_bytes - BENCH_SQL_BYTES).max(0.0);
    Capacity {
        worker_slots,
        headroom,
        workers,
        mean_sql_bytes,
        controller_memory_mib: plan.schedules as f64 * per_schedule / (1024.0 * 1024.0),
        controller_resync_s: plan.schedules as f64 * RESYNC_SECS_PER_SCHEDULE,
        controller_shards: plan.schedules.div_ceil(SCHEDULES_PER_CONTROLLER).max(1),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Stability {
    /// Share of the placements of schedules present in both catalogs that moved.
    pub moved_share: f64,
    pub moved: usize,
    pub kept: usize,
    pub added: usize,
}

/// Forecasts every strategy in `strategies` for `items`.
pub fn plan(items: &[Item], strategies: &[Strategy], horizon: Duration, progress: impl Fn(&str)) -> Plan {
    progress("computing the lower bound");
    let bound = lower_bound(items, horizon);
    let mut out = BTreeMap::new();
    for &s in strategies {
        progress(&format!("placing with {}", s.name()));
        let offsets = offsets(s, items, horizon);
        out.insert(s.name(), forecast(items, &offsets, horizon, bound));
    }
    Plan {
        horizon_s: horizon.as_secs(),
        schedules: items.len(),
        runs: items.iter().map(|i| i.nominal_s.len()).sum(),
        lower_bound: bound,
        strategies: out,
        stability: None,
        capacity: None,
    }
}

/// How many load-aware placements of `before` move when `after` replaces it.
pub fn stability(before: &[Item], after: &[Item], horizon: Duration) -> Stability {
    let placer = LoadAware::default();
    let first = placer.place(before, None, horizon);
    let in_force: HashMap<&ScheduleKey, u32> = before.iter().map(|i| &i.key).zip(first.offsets).collect();
    let prior: Vec<Option<u32>> = after.iter().map(|i| in_force.get(&i.key).copied()).collect();
    let second = placer.place(after, Some(&prior), horizon);
    let common = prior.iter().filter(|p| p.is_some()).count();
    Stability {
        moved_share: if common == 0 { 0.0 } else { second.moved as f64 / common as f64 },
        moved: second.moved,
        kept: common - second.moved,
        added: after.len() - common,
    }
}

/// A text table of the plan.
pub fn text(plan: &Plan) -> String {
    let mut out = format!(
        "{} schedules, {} runs over {} h; lower bound on the peak concurrency: {:.1}\n",
        plan.schedules,
        plan.runs,
        plan.horizon_s / 3600,
        plan.lower_bound
    );
    out.push_str(
        "strategy      peak     mean      p99  peak/mean  peak/bound  max starts/s  max starts/min  tenant share  unfair minutes\n",
    );
    for (name, f) in &plan.strategies {
        out.push_str(&format!(
            "{name:<11} {:>6.1} {:>8.1} {:>8.1} {:>10.2} {:>11.2} {:>13} {:>15} {:>13.2} {:>15}\n",
            f.peak,
            f.mean,
            f.p99,
            f.peak_to_mean,
            f.peak_to_bound,
            f.max_starts_per_second,
            f.max_starts_per_minute,
            f.max_tenant_share,
            f.fairness_violations
        ));
    }
    if let Some(c) = &plan.capacity {
        out.push_str(&format!(
            "capacity at {} runs per worker (runner.max_in_flight), {:.0}% headroom over the peak:\n\
             strategy    workers at peak  HPA minReplicas  HPA maxReplicas\n",
            c.worker_slots,
            c.headroom * 100.0
        ));
        for (name, w) in &c.workers {
            out.push_str(&format!("{name:<11} {:>15} {:>16} {:>16}\n", w.at_peak, w.hpa_min, w.hpa_max));
        }
        out.push_str(&format!(
            "controller: about {:.0} MiB for the catalog, above the process's own, and {:.2} s per re-sync for {} \
             schedules (SQL {:.0} bytes on average; controller bench sync: 842 MiB and 4.75 s per million at 300 \
             bytes); {}\n",
            c.controller_memory_mib,
            c.controller_resync_s,
            plan.schedules,
            c.mean_sql_bytes,
            if c.controller_shards > 1 {
                format!("{} controller shards of at most {SCHEDULES_PER_CONTROLLER} schedules", c.controller_shards)
            } else {
                "one controller (a leader and a standby)".to_owned()
            }
        ));
    }
    if let Some(s) = &plan.stability {
        out.push_str(&format!(
            "stability (load-aware): {:.2}% of existing placements moved ({} moved, {} kept, {} added)\n",
            s.moved_share * 100.0,
            s.moved,
            s.kept,
            s.added
        ));
    }
    out
}

/// The strategies' per-minute peak concurrency side by side, as an SVG line chart.
pub fn svg(plan: &Plan) -> String {
    let (w, h, pad) = (960.0, 360.0, 40.0);
    let max = plan.strategies.values().map(|f| f.peak).fold(1.0, f64::max);
    let colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    out.push_str(&format!(
        "<text x=\"{pad}\" y=\"20\">Peak concurrent runs per minute over {} h ({} schedules); lower bound {:.1}</text>\n",
        plan.horizon_s / 3600,
        plan.schedules,
        plan.lower_bound
    ));
    let y = |v: f64| h - pad - (v / max) * (h - 2.0 * pad);
    out.push_str(&format!(
        "<line x1=\"{pad}\" x2=\"{}\" y1=\"{b:.1}\" y2=\"{b:.1}\" stroke=\"#888\" stroke-dasharray=\"4 4\"/>\n",
        w - pad,
        b = y(plan.lower_bound)
    ));
    for (i, (name, f)) in plan.strategies.iter().enumerate() {
        let n = f.per_minute_peak.len().max(2) as f64;
        let points: Vec<String> = f
            .per_minute_peak
            .iter()
            .enumerate()
            .map(|(m, v)| format!("{:.1},{:.1}", pad + m as f64 / (n - 1.0) * (w - 2.0 * pad), y(*v)))
            .collect();
        let color = colors[i % colors.len()];
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1\" points=\"{}\"/>\n",
            points.join(" ")
        ));
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}: peak {:.0}</text>\n",
            w - 200.0,
            40 + 16 * i,
            f.peak
        ));
    }
    out.push_str("</svg>\n");
    out
}

/// The reference catalog: 70% hourly at minute 0 (spread 30 min), 20% every 15 minutes
/// (spread 10 min), 10% daily at 00:00 (spread 2 h), across 5 time zones; durations
/// log-normal (median `median_duration`, 20 s by default, p99 30 times it, at most an hour);
/// tenants of very different sizes (the largest holds
/// 10% of the schedules). Deterministic for a given seed; `extra` more queries are drawn
/// after the first `n` over the same tenants, so the result holds the `n`-query catalog.
pub fn reference_catalog(n: usize, extra: usize, seed: u64, median_duration: Duration) -> serde_json::Value {
    use serde_json::json;
    let mut rng = fastrand::Rng::with_seed(seed);
    let zones = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo", "America/Sao_Paulo"];
    let tenants_n = (n / 50).max(2);
    // Tenant 0 takes 10%; the rest follow a power law over the other tenants.
    let mut per_tenant: Vec<Vec<serde_json::Value>> = vec![Vec::new(); tenants_n];
    let sigma = (600.0f64 / 20.0).ln() / 2.326_347_9;
    for i in 0..n + extra {
        let tenant = if i % 10 == 0 { 0 } else { 1 + ((tenants_n - 1) as f64 * rng.f64().powi(3)) as usize };
        let kind = rng.f64();
        let (schedule, spread) = if kind < 0.7 {
            ("0 * * * *", "30m")
        } else if kind < 0.9 {
            ("*/15 * * * *", "10m")
        } else {
            ("0 0 * * *", "2h")
        };
        // Box-Muller for a standard normal.
        let z = (-2.0 * rng.f64().max(1e-12).ln()).sqrt() * (2.0 * std::f64::consts::PI * rng.f64()).cos();
        let median = median_duration.as_secs_f64().max(1.0);
        let secs = (median * (sigma * z).exp()).clamp(1.0, 3600.0).round() as u64;
        per_tenant[tenant.min(tenants_n - 1)].push(json!({
            "id": format!("q{i}"),
            "schedule": schedule,
            "spread": spread,
            "engine": "warehouse",
            "sql": "SELECT store, SUM(amount) AS revenue FROM sales WHERE ts >= @window_start AND ts < @window_end GROUP BY store",
            "destination": "revenue",
            "estimated_duration": format!("{secs}s"),
        }));
    }
    let tenants: Vec<serde_json::Value> = per_tenant
        .into_iter()
        .enumerate()
        .filter(|(_, qs)| !qs.is_empty())
        .map(|(t, qs)| {
            let apps: Vec<serde_json::Value> = qs
                .chunks(50)
                .enumerate()
                .map(|(a, chunk)| json!({"id": format!("app-{a}"), "enabled": true, "queries": chunk}))
                .collect();
            json!({"id": format!("tenant-{t}"), "status": "active", "timezone": zones[t % zones.len()], "apps": apps})
        })
        .collect();
    json!({ "tenants": tenants })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CatalogPolicy, validate};
    use crate::platform::read_catalog_file;

    fn reference(n: usize, seed: u64) -> BTreeMap<ScheduleKey, Arc<Schedule>> {
        let dir = std::env::temp_dir().join(format!("plan-{}-{seed}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("catalog.json");
        std::fs::write(&path, reference_catalog(n, 0, seed, Duration::from_secs(20)).to_string()).expect("write");
        let mut policy = CatalogPolicy::for_tests();
        policy.max_spread = Duration::from_secs(4 * 3600);
        let c = validate(read_catalog_file(&path).expect("read"), &policy);
        assert!(c.problems.is_empty(), "{:?}", &c.problems[..c.problems.len().min(3)]);
        c.schedules
    }

    fn start() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-07T00:00:00Z").expect("t").with_timezone(&Utc)
    }

    #[test]
    fn capacity_covers_the_peak_with_headroom_and_shards_past_five_million() {
        let horizon = Duration::from_secs(6 * 3600);
        let schedules = reference(2000, 7);
        let items = items(&schedules, start(), horizon, Duration::from_secs(30));
        let mut p = plan(&items, &[Strategy::Hash, Strategy::LoadAware], horizon, |_| {});
        let c = capacity(&p, 8, 0.25, 300.0);
        for (name, f) in &p.strategies {
            let w = c.workers[name];
            assert!(w.at_peak as f64 * 8.0 >= f.peak && (w.at_peak as f64 - 1.0) * 8.0 < f.peak, "{name}: {w:?}");
            assert!(w.hpa_min as f64 * 8.0 >= f.mean && w.hpa_min <= w.at_peak, "{name}: {w:?}");
            assert!(w.hpa_max as f64 * 8.0 >= f.peak * 1.25 && w.hpa_max >= w.at_peak, "{name}: {w:?}");
        }
        assert!(c.workers["load-aware"].at_peak <= c.workers["hash"].at_peak, "{c:?}");
        assert_eq!(c.controller_shards, 1);
        assert!((c.controller_memory_mib - 2000.0 * 842.0 / 1e6).abs() < 0.01, "{c:?}");
        p.schedules = 12_000_000;
        let big = capacity(&p, 8, 0.25, 1300.0);
        assert_eq!(big.controller_shards, 3);
        assert!(big.controller_memory_mib > 12.0 * 842.0 + 11_000.0, "1,000 SQL bytes more each: {big:?}");
        assert!(text(&Plan { capacity: Some(big), ..p }).contains("3 controller shards"));
    }

    #[test]
    fn the_bound_is_never_above_any_placement_and_load_aware_beats_hash_and_none() {
        let horizon = Duration::from_secs(6 * 3600);
        let schedules = reference(2000, 7);
        let items = items(&schedules, start(), horizon, Duration::from_secs(30));
        let p = plan(&items, &Strategy::ALL, horizon, |_| {});
        let (none, hash, la) = (&p.strategies["none"], &p.strategies["hash"], &p.strategies["load-aware"]);
        for f in [none, hash, la] {
            assert!(f.peak + 1e-9 >= p.lower_bound, "bound {} above a peak {}", p.lower_bound, f.peak);
            assert!(p.lower_bound + 1e-9 >= f.mean);
        }
        assert!(hash.peak < none.peak / 3.0, "hash spreads: {} vs {}", hash.peak, none.peak);
        assert!(
            hash.max_starts_per_second * 20 < none.max_starts_per_second,
            "hash spreads starts: {} vs {}",
            hash.max_starts_per_second,
            none.max_starts_per_second
        );
        assert!(la.peak <= hash.peak, "load-aware never worse than hash: {} vs {}", la.peak, hash.peak);
        assert!(none.max_starts_per_second > la.max_starts_per_second);
    }

    #[test]
    fn windows_are_the_spread_capped_by_the_interval() {
        let horizon = Duration::from_secs(3 * 3600);
        let items = items(&reference(300, 5), start(), horizon, Duration::from_secs(30));
        for i in &items {
            assert!(
                [Duration::from_secs(1800), Duration::from_secs(600), Duration::from_secs(7200)].contains(&i.window),
                "{:?}",
                i.window
            );
        }
    }

    #[test]
    fn placements_stay_inside_their_windows() {
        let horizon = Duration::from_secs(3 * 3600);
        let items = items(&reference(500, 3), start(), horizon, Duration::from_secs(30));
        for s in Strategy::ALL {
            let offsets = offsets(s, &items, horizon);
            for (i, &o) in items.iter().zip(&offsets) {
                assert!(u64::from(o) <= i.window.as_secs(), "{} {o} > {:?}", s.name(), i.window);
            }
        }
    }

    #[test]
    fn adding_one_percent_moves_no_existing_placement() {
        let horizon = Duration::from_secs(6 * 3600);
        let before = items(&reference(1000, 11), start(), horizon, Duration::from_secs(30));
        let mut after = before.clone();
        let extra = items(&reference(1010, 11), start(), horizon, Duration::from_secs(30));
        after.extend(extra.into_iter().filter(|i| !before.iter().any(|b| b.key == i.key)));
        let s = stability(&before, &after, horizon);
        assert_eq!(s.added, 10);
        assert!(s.moved_share <= 0.02, "{s:?}");
    }

    #[test]
    fn the_reference_catalog_has_the_documented_shape() {
        let schedules = reference(5000, 1);
        let hourly = schedules.values().filter(|s| &*s.expression == "0 * * * *").count();
        let quarter = schedules.values().filter(|s| &*s.expression == "*/15 * * * *").count();
        assert!((3300..3700).contains(&hourly), "{hourly}");
        assert!((800..1200).contains(&quarter), "{quarter}");
        let biggest = schedules.keys().filter(|k| &*k.tenant_id == "tenant-0").count();
        assert_eq!(biggest, 500, "one tenant holds 10%");
        let mut d: Vec<u64> = schedules.values().filter_map(|s| s.estimated_duration).map(|d| d.as_secs()).collect();
        d.sort_unstable();
        let median = d[d.len() / 2];
        assert!((15..=26).contains(&median), "median {median}");
    }
}
