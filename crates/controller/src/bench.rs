//! `controller bench timer`: the project's timer and tokio-cron-scheduler (the baseline) on
//! the same schedules, in one run. For each size it prints adds per second, bytes per
//! schedule, idle CPU, fire lateness p50/p99/max, missed and duplicate fires.
//!
//! The schedules fire at second `i mod 60` every minute, or every k minutes when there are
//! more schedules than `--fires-per-minute` (default 100,000: a million schedules fire every
//! 10 minutes), so the timer sees at most that many fires per minute, spread over the
//! seconds. Idle CPU is
//! measured on N schedules that fire once a year. Memory is the net growth of live heap
//! bytes (a counting allocator) while the schedules are added; for our timer it is the
//! timer's own structures, the schedule definitions (shared with the catalog) are reported
//! separately.

use crate::catalog::{Schedule, ScheduleKey};
use crate::metrics::Metrics;
use crate::placement::Strategy;
use crate::schedule::Cadence;
use crate::timer::{DueRun, Timer};
use chrono::{DateTime, Utc};
use std::alloc::System;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The process allocator, instrumented: the controller binary installs it.
pub type Allocator = stats_alloc::StatsAlloc<System>;

#[derive(Debug, Clone)]
pub struct TimerBench {
    pub sizes: Vec<usize>,
    /// How long each implementation is driven per size.
    pub duration: Duration,
    /// How long idle CPU is measured.
    pub idle: Duration,
    /// The baseline stops at a size whose adds take longer than this.
    pub baseline_add_limit: Duration,
    pub baseline: bool,
    /// Fires per minute: each schedule fires every `max(1, n / fires_per_minute)` minutes.
    pub fires_per_minute: usize,
}

/// Minutes between fires of one schedule at size `n`: the smallest divisor of 60 that
/// keeps the total at or under `fires_per_minute`.
pub fn period_minutes(n: usize, fires_per_minute: usize) -> i64 {
    let want = n.div_ceil(fires_per_minute.max(1)).max(1) as i64;
    [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60].into_iter().find(|d| *d >= want).unwrap_or(60)
}

/// The cron of schedule `i` firing every `period` minutes, at second `i mod 60` and a
/// minute phase `(i / 60) mod period`.
fn cron_of(i: usize, period: i64) -> String {
    if period == 1 {
        format!("{} * * * * *", i % 60)
    } else {
        format!("{} {}/{period} * * * *", i % 60, (i / 60) as i64 % period)
    }
}

/// One implementation at one size.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub name: &'static str,
    pub schedules: usize,
    pub add_secs: f64,
    pub bytes_per_schedule: f64,
    pub idle_cpu_percent: f64,
    pub fires: u64,
    pub lateness_ms: [f64; 3],
    pub missed: u64,
    pub duplicates: u64,
    pub note: String,
}

impl Figures {
    pub fn line(&self) -> String {
        if !self.note.is_empty() && self.fires == 0 {
            return format!("{:<22} {:>9}  {}", self.name, self.schedules, self.note);
        }
        format!(
            "{:<22} {:>9} {:>12.0} {:>9.1} {:>8.3} {:>9} {:>8.2} {:>8.2} {:>9.2} {:>7} {:>6}  {}",
            self.name,
            self.schedules,
            self.schedules as f64 / self.add_secs.max(1e-9),
            self.bytes_per_schedule,
            self.idle_cpu_percent,
            self.fires,
            self.lateness_ms[0],
            self.lateness_ms[1],
            self.lateness_ms[2],
            self.missed,
            self.duplicates,
            self.note
        )
    }

    pub const HEADER: &'static str = "implementation         schedules     adds/s   bytes/sch  idle%cpu     fires   p50 ms   p99 ms    max ms  missed   dups";
}

/// CPU time of the whole process (all threads), from `/proc/self/task/*/schedstat` (ns).
pub fn process_cpu() -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                total += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(total)
}

/// The process's resident set size and its peak, from `/proc/self/status`, in bytes.
pub fn rss() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn live_bytes(alloc: &'static Allocator) -> i64 {
    let s = alloc.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

/// Synthetic schedules for the benches: schedule i is query `q{i}` of tenant `t{i / 100}`
/// (app `app`), with the cron and spread `of(i)` gives; identical crons share one cadence and
/// all share one SQL text.
pub fn synthetic(n: usize, of: impl Fn(usize) -> (String, Duration)) -> impl Iterator<Item = Arc<Schedule>> {
    let mut cadences: std::collections::HashMap<String, Arc<Cadence>> = std::collections::HashMap::new();
    let sql: Arc<str> = Arc::from(
        "SELECT store, SUM(amount) AS revenue FROM sales WHERE ts >= @window_start AND ts < @window_end GROUP BY store"
            .repeat(3),
    );
    let (engine, destination, app): (Arc<str>, Arc<str>, Arc<str>) =
        (Arc::from("warehouse"), Arc::from("out"), Arc::from("app"));
    let mut tenant: Arc<str> = Arc::from("t0");
    (0..n).map(move |i| {
        if i % 100 == 0 {
            tenant = Arc::from(format!("t{}", i / 100));
        }
        let (cron, spread) = of(i);
        Arc::new(Schedule {
            key: ScheduleKey { tenant_id: tenant.clone(), app_id: app.clone(), query_id: Arc::from(format!("q{i}")) },
            expression: Arc::from(""),
            timezone: chrono_tz::Tz::UTC,
            cadence: cadences
                .entry(cron)
                .or_insert_with_key(|c| Arc::new(Cadence::parse(c, chrono_tz::Tz::UTC).expect("valid bench cron")))
                .clone(),
            spread,
            engine: engine.clone(),
            sql: sql.clone(),
            destination: destination.clone(),
            timeout: Duration::from_secs(60),
            max_attempts: 3,
            overlap: jobs_core::Overlap::Skip,
            estimated_duration: None,
            tenant_weight: 1.0,
        })
    })
}

/// N schedules: schedule i uses the cron `cron(i)` and no spread (see [`synthetic`]).
pub fn schedules(n: usize, cron: impl Fn(usize) -> String) -> BTreeMap<ScheduleKey, Arc<Schedule>> {
    synthetic(n, |i| (cron(i), Duration::ZERO)).map(|s| (s.key.clone(), s)).collect()
}

/// Lateness samples in microseconds → p50, p99, max in milliseconds.
fn percentiles(mut us: Vec<u64>) -> [f64; 3] {
    if us.is_empty() {
        return [0.0; 3];
    }
    us.sort_unstable();
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    [at(0.5), at(0.99), *us.last().unwrap_or(&0) as f64 / 1000.0]
}

/// Fires in (from, to] of schedule `i` (see [`cron_of`]).
fn expected_fires(i: usize, period: i64, from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    let step = 60 * period;
    let phase = (i % 60) as i64 + 60 * ((i / 60) as i64 % period);
    let count_le = |t: i64| -> i64 { (t - phase).div_euclid(step) };
    (count_le(to.timestamp()) - count_le(from.timestamp())).max(0) as u64
}

/// Records every fire (schedule index, nominal second) and its lateness.
struct Recorder {
    start: std::sync::atomic::AtomicI64,
    fires: Mutex<Vec<(u32, i64)>>,
    lateness_us: Mutex<Vec<u64>>,
}

/// What a run of one implementation amounted to.
struct Tally {
    fires: u64,
    missed: u64,
    duplicates: u64,
    lateness_ms: [f64; 3],
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            start: std::sync::atomic::AtomicI64::new(0),
            fires: Mutex::new(Vec::new()),
            lateness_us: Mutex::new(Vec::new()),
        }
    }

    fn begin(&self, at: DateTime<Utc>) {
        self.start.store(at.timestamp(), Ordering::Relaxed);
    }

    fn record(&self, i: usize, nominal: DateTime<Utc>, placed: DateTime<Utc>, now: DateTime<Utc>) {
        let late = (now - placed).num_microseconds().unwrap_or(i64::MAX).max(0) as u64;
        self.lateness_us.lock().unwrap_or_else(|p| p.into_inner()).push(late);
        self.fires.lock().unwrap_or_else(|p| p.into_inner()).push((i as u32, nominal.timestamp()));
    }

    /// Compares the fires with the calendar of (start, until] for `n` schedules firing at
    /// second `i mod 60` of every minute.
    fn tally(&self, n: usize, period: i64, until: DateTime<Utc>) -> Tally {
        let start = self.start.load(Ordering::Relaxed);
        let mut fires = std::mem::take(&mut *self.fires.lock().unwrap_or_else(|p| p.into_inner()));
        let total = fires.len() as u64;
        fires.sort_unstable();
        let before = fires.len();
        fires.dedup();
        let duplicates = (before - fires.len()) as u64;
        let mut got = vec![0u64; n];
        for &(i, nominal) in &fires {
            if nominal > start && nominal <= until.timestamp() {
                got[i as usize] += 1;
            }
        }
        let from = DateTime::from_timestamp(start, 0).unwrap_or_default();
        let missed = (0..n).map(|i| expected_fires(i, period, from, until).saturating_sub(got[i])).sum();
        let lateness = std::mem::take(&mut *self.lateness_us.lock().unwrap_or_else(|p| p.into_inner()));
        Tally { fires: total, missed, duplicates, lateness_ms: percentiles(lateness) }
    }
}

async fn idle_cpu(duration: Duration) -> f64 {
    let (c0, t0) = (process_cpu(), Instant::now());
    tokio::time::sleep(duration).await;
    (process_cpu() - c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0
}

/// Our timer, driven by the controller's own timer task.
pub async fn ours(n: usize, cfg: &TimerBench, alloc: &'static Allocator) -> Figures {
    let mut f = Figures { name: "controller timer", schedules: n, ..Figures::default() };
    let catalog_before = live_bytes(alloc);
    let period = period_minutes(n, cfg.fires_per_minute);
    let every_minute = schedules(n, |i| cron_of(i, period));
    let catalog_bytes = (live_bytes(alloc) - catalog_before) as f64 / n as f64;
    let index: std::collections::HashMap<usize, usize> = every_minute
        .values()
        .map(|s| (Arc::as_ptr(s) as usize, s.key.query_id[1..].parse::<usize>().unwrap_or(0)))
        .collect();

    let before = live_bytes(alloc);
    let started = Instant::now();
    let mut timer = Timer::new(Strategy::None);
    let now = Utc::now();
    timer.apply(&every_minute, now);
    f.add_secs = started.elapsed().as_secs_f64();
    f.bytes_per_schedule = (live_bytes(alloc) - before) as f64 / n as f64;

    let recorder = Arc::new(Recorder::new());
    recorder.begin(now);
    let timer = Arc::new(Mutex::new(timer));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<DueRun>(100_000);
    let stop = CancellationToken::new();
    let mut registry = prometheus_client::registry::Registry::default();
    let driver = tokio::spawn(crate::timer::drive(
        timer.clone(),
        Arc::new(tokio::sync::Notify::new()),
        tx,
        Arc::new(crate::catchup::Progress::disabled()),
        Metrics::register(&mut registry),
        stop.clone(),
    ));
    let consumer = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            while let Some(run) = rx.recv().await {
                let i = index.get(&(Arc::as_ptr(&run.schedule) as usize)).copied().unwrap_or(0);
                recorder.record(i, run.nominal, run.placed, Utc::now());
            }
        })
    };
    tokio::time::sleep(cfg.duration).await;
    let until = Utc::now() - chrono::Duration::seconds(1);
    stop.cancel();
    let _ = driver.await;
    let _ = consumer.await;
    let t = recorder.tally(n, period, until);
    (f.fires, f.missed, f.duplicates, f.lateness_ms) = (t.fires, t.missed, t.duplicates, t.lateness_ms);
    drop(timer);
    drop(every_minute);

    // Idle: the same number of schedules, due once a year.
    let yearly = schedules(n, |i| format!("{} 0 0 1 1 *", i % 60));
    let idle_timer = Arc::new(Mutex::new(Timer::new(Strategy::None)));
    idle_timer.lock().unwrap_or_else(|p| p.into_inner()).apply(&yearly, Utc::now());
    let (tx, _rx) = tokio::sync::mpsc::channel::<DueRun>(1);
    let stop = CancellationToken::new();
    let driver = tokio::spawn(crate::timer::drive(
        idle_timer,
        Arc::new(tokio::sync::Notify::new()),
        tx,
        Arc::new(crate::catchup::Progress::disabled()),
        Metrics::register(&mut registry),
        stop.clone(),
    ));
    f.idle_cpu_percent = idle_cpu(cfg.idle).await;
    stop.cancel();
    let _ = driver.await;
    f.note = format!("+{catalog_bytes:.0} B/schedule of definitions, shared with the catalog");
    f
}

/// tokio-cron-scheduler with one job per schedule (in-memory store). `None` when adding
/// the jobs takes longer than the limit.
async fn add_baseline_jobs(
    n: usize,
    cron: impl Fn(usize) -> String,
    recorder: &Arc<Recorder>,
    limit: Duration,
) -> Result<(tokio_cron_scheduler::JobScheduler, Duration), String> {
    use tokio_cron_scheduler::{Job, JobScheduler};
    let started = Instant::now();
    let scheduler = JobScheduler::new().await.map_err(|e| format!("could not start: {e}"))?;
    for i in 0..n {
        let expression = cron(i);
        let cadence =
            Arc::new(Cadence::parse(&expression, chrono_tz::Tz::UTC).map_err(|e| format!("cron {expression}: {e}"))?);
        let recorder = recorder.clone();
        let job = Job::new_async(expression, move |_, _| {
            let (recorder, cadence) = (recorder.clone(), cadence.clone());
            Box::pin(async move {
                let now = Utc::now();
                let nominal = cadence.prev_before(now + chrono::Duration::milliseconds(1)).unwrap_or(now);
                recorder.record(i, nominal, nominal, now);
            })
        })
        .map_err(|e| format!("job {i}: {e}"))?;
        scheduler.add(job).await.map_err(|e| format!("add {i}: {e}"))?;
        if started.elapsed() > limit {
            let mut s = scheduler;
            let _ = s.shutdown().await;
            return Err(format!(
                "stopped: adding took over {}s ({} of {n} added, {:.0}/s), not driven",
                limit.as_secs(),
                i + 1,
                (i + 1) as f64 / started.elapsed().as_secs_f64()
            ));
        }
    }
    Ok((scheduler, started.elapsed()))
}

pub async fn baseline(n: usize, cfg: &TimerBench, alloc: &'static Allocator) -> Figures {
    let mut f = Figures { name: "tokio-cron-scheduler", schedules: n, ..Figures::default() };
    let recorder = Arc::new(Recorder::new());
    let before = live_bytes(alloc);
    let period = period_minutes(n, cfg.fires_per_minute);
    let (scheduler, took) = match add_baseline_jobs(n, |i| cron_of(i, period), &recorder, cfg.baseline_add_limit).await
    {
        Ok(v) => v,
        Err(note) => {
            f.note = note;
            return f;
        }
    };
    f.add_secs = took.as_secs_f64();
    f.bytes_per_schedule = (live_bytes(alloc) - before) as f64 / n as f64;
    recorder.begin(Utc::now());
    if let Err(e) = scheduler.start().await {
        f.note = format!("could not start: {e}");
        return f;
    }
    tokio::time::sleep(cfg.duration).await;
    let until = Utc::now() - chrono::Duration::seconds(1);
    let mut s = scheduler;
    let _ = s.shutdown().await;
    let t = recorder.tally(n, period, until);
    (f.fires, f.missed, f.duplicates, f.lateness_ms) = (t.fires, t.missed, t.duplicates, t.lateness_ms);
    drop(s);

    let idle_recorder = Arc::new(Recorder::new());
    match add_baseline_jobs(n, |i| format!("{} 0 0 1 1 *", i % 60), &idle_recorder, cfg.baseline_add_limit).await {
        Ok((scheduler, _)) => {
            if scheduler.start().await.is_ok() {
                f.idle_cpu_percent = idle_cpu(cfg.idle).await;
            }
            let mut s = scheduler;
            let _ = s.shutdown().await;
        }
        Err(note) => f.note = format!("idle not measured: {note}"),
    }
    f
}

/// Runs every size through both implementations and prints a table.
pub async fn run_timer_bench(cfg: TimerBench, alloc: &'static Allocator) {
    println!(
        "timer bench: up to {} fires per minute spread over the seconds of the minute (schedules fire every minute, or every k minutes when there are more); driven {}s each; idle CPU over {}s on yearly schedules",
        cfg.fires_per_minute,
        cfg.duration.as_secs(),
        cfg.idle.as_secs()
    );
    println!("{}", Figures::HEADER);
    let mut baseline_stopped = false;
    for &n in &cfg.sizes {
        eprintln!("bench: controller timer, {n} schedules, each every {} min", period_minutes(n, cfg.fires_per_minute));
        println!("{}", ours(n, &cfg, alloc).await.line());
        if cfg.baseline {
            if baseline_stopped {
                println!("{:<22} {:>9}  skipped: stopped at a smaller size", "tokio-cron-scheduler", n);
                continue;
            }
            eprintln!("bench: tokio-cron-scheduler, {n} schedules");
            let f = baseline(n, &cfg, alloc).await;
            baseline_stopped = f.note.starts_with("stopped");
            println!("{}", f.line());
        }
    }
}

/// Writes a catalog file of `n` schedules: 100 queries per tenant (two apps of 50), SQL texts
/// of about `sql_bytes` bytes from 100 app templates shared across tenants (as when many
/// tenants install the same app), 70% hourly, 20% every 15 minutes, 10% daily.
pub fn write_sync_catalog(path: &std::path::Path, n: usize, sql_bytes: usize) -> std::io::Result<u64> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let templates: Vec<String> = (0..100)
        .map(|t| {
            let mut sql = format!(
                "SELECT store, SUM(amount) AS revenue, COUNT(*) AS sales FROM sales_{t} \
                 WHERE ts >= @window_start AND ts < @window_end GROUP BY store"
            );
            while sql.len() < sql_bytes {
                sql.push_str(" -- padding");
            }
            sql
        })
        .collect();
    write!(out, "{{\"tenants\":[")?;
    let tenants = n.div_ceil(100);
    let mut written = 0;
    for t in 0..tenants {
        if t > 0 {
            write!(out, ",")?;
        }
        write!(out, "{{\"id\":\"tenant-{t}\",\"status\":\"active\",\"timezone\":\"Europe/Berlin\",\"apps\":[")?;
        for a in 0..2 {
            if a > 0 {
                write!(out, ",")?;
            }
            write!(out, "{{\"id\":\"app-{a}\",\"queries\":[")?;
            for q in 0..50 {
                if written == n {
                    break;
                }
                if q > 0 {
                    write!(out, ",")?;
                }
                let (schedule, spread) = match q % 10 {
                    0..=6 => ("0 * * * *", "30m"),
                    7 | 8 => ("*/15 * * * *", "10m"),
                    _ => ("0 0 * * *", "2h"),
                };
                let query = serde_json::json!({
                    "id": format!("q{q}"),
                    "schedule": schedule,
                    "spread": spread,
                    "engine": "warehouse",
                    "sql": templates[(t * 2 + a) % templates.len()],
                    "destination": format!("out_{a}"),
                    "estimated_duration": "20s",
                });
                write!(out, "{query}")?;
                written += 1;
            }
            write!(out, "]}}")?;
        }
        write!(out, "]}}")?;
    }
    write!(out, "]}}")?;
    out.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// `controller bench sync`: a full catalog sync (read the file, validate, diff into the
/// timer) of `n` schedules, twice — the first adds everything, the second is a re-sync that
/// changes nothing — with the process's RSS after each.
pub async fn run_sync_bench(
    n: usize,
    sql_bytes: usize,
    fresh_placement: bool,
    alloc: &'static Allocator,
) -> anyhow::Result<()> {
    use crate::catalog::{CatalogPolicy, validate};
    let dir = std::env::temp_dir().join(format!("sync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("catalog.json");
    let started = Instant::now();
    let bytes = write_sync_catalog(&path, n, sql_bytes)?;
    eprintln!("bench: wrote {} ({} MB) in {:.1}s", path.display(), bytes >> 20, started.elapsed().as_secs_f64());
    let mut policy = CatalogPolicy::for_tests();
    policy.max_spread = Duration::from_secs(3 * 3600);
    policy.max_sql_bytes = sql_bytes * 2;
    let mut timer = Timer::new(Strategy::Hash);
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "sync bench: {n} schedules, SQL texts of ~{sql_bytes} bytes from 100 shared templates, catalog file {:.0} MB",
        mb(bytes)
    );
    println!(
        "pass      read+parse   validate   timer diff   total   schedules  added  unchanged  heap MiB  RSS MiB  peak RSS MiB"
    );
    let mut current = None;
    for pass in ["first", "re-sync"] {
        let t0 = Instant::now();
        let path2 = path.clone();
        let raw = tokio::task::spawn_blocking(move || crate::platform::read_catalog_file(&path2)).await??;
        let t_read = t0.elapsed();
        let t1 = Instant::now();
        let catalog = validate(raw, &policy);
        let t_validate = t1.elapsed();
        anyhow::ensure!(catalog.problems.is_empty(), "generated catalog has problems: {:?}", &catalog.problems[..1]);
        let t2 = Instant::now();
        let diff = timer.apply(&catalog.schedules, Utc::now());
        let t_diff = t2.elapsed();
        // The previous catalog is released once the new one is in force.
        current = Some(catalog);
        let (rss, peak) = rss();
        println!(
            "{pass:<8} {:>10.2}s {:>9.2}s {:>11.2}s {:>6.2}s {:>11} {:>6} {:>10} {:>9.0} {:>8.0} {:>13.0}",
            t_read.as_secs_f64(),
            t_validate.as_secs_f64(),
            t_diff.as_secs_f64(),
            t0.elapsed().as_secs_f64(),
            current.as_ref().map_or(0, |c| c.schedules.len()),
            diff.added,
            diff.unchanged,
            mb(live_bytes(alloc).max(0) as u64),
            mb(rss),
            mb(peak)
        );
    }
    // What a re-sync adds with load-aware placement: the 24 h profile of every run, with
    // the offsets in force kept (no schedule is new).
    if let Some(catalog) = &current {
        let t = Instant::now();
        let items =
            crate::plan::items(&catalog.schedules, Utc::now(), Duration::from_secs(24 * 3600), Duration::from_secs(30));
        let prior: Vec<Option<u32>> = items
            .iter()
            .map(|i| Some(crate::placement::offset(Strategy::Hash, &i.key, i.window, i.window).as_secs() as u32))
            .collect();
        let placer = crate::placement::LoadAware { rebalance: false, ..Default::default() };
        let placed = placer.place(&items, Some(&prior), Duration::from_secs(24 * 3600));
        let (rss, peak) = rss();
        println!(
            "load-aware re-placement keeping {} offsets: {:.2}s, heap {:.0} MiB, RSS {:.0} MiB, peak {:.0} MiB",
            placed.offsets.len(),
            t.elapsed().as_secs_f64(),
            mb(live_bytes(alloc).max(0) as u64),
            mb(rss),
            mb(peak)
        );
        drop(placed);
        if fresh_placement {
            let t = Instant::now();
            let placed = placer.place(&items, None, Duration::from_secs(24 * 3600));
            let (rss, peak) = self::rss();
            println!(
                "fresh load-aware placement of {} schedules: {:.1}s, expected peak {:.0}, heap {:.0} MiB, RSS {:.0} MiB, peak {:.0} MiB",
                placed.offsets.len(),
                t.elapsed().as_secs_f64(),
                placed.peak,
                mb(live_bytes(alloc).max(0) as u64),
                mb(rss),
                mb(peak)
            );
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
