//! The fault suite: real controller and worker processes (the built binaries) on the Pub/Sub
//! emulator and a real PostgreSQL, with faults injected, each scenario bounded in time. It
//! prints, per scenario: runs expected, runs written, written twice, lost, and the time to
//! recover; it exits non-zero when a run is lost or written twice.
//!
//! Expected runs are counted from the calendar: every nominal time of every schedule between
//! the first and the last run the scenario lets fall due. Written runs are the distinct job ids
//! in the destination table; "written twice" counts job ids with more than one row there, and
//! a separate column the job ids with more than one `succeeded` result event (executed again
//! after a success: the effect is still once).
//!
//! Needs `PUBSUB_EMULATOR_HOST` and `TEST_DATABASE_URL` (`eval "$(scripts/services)"`) and
//! the binaries (`cargo build -p controller -p worker`).

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Parser;
use integration_tests::{TestDb, unique};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    /// `worker-kills`, `controller-kill`, `leader-kill` (comma-separated), or `all`.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// The short form (CI): fewer faults, shorter outages.
    #[arg(long)]
    short: bool,
    /// Where the controller and worker binaries are.
    #[arg(long, default_value = "target/debug")]
    bin_dir: PathBuf,
}

/// One scenario's figures.
#[derive(Debug)]
struct Outcome {
    scenario: &'static str,
    expected: usize,
    written: usize,
    /// Job ids with more than one row in the destination: an effect doubled.
    twice: usize,
    /// Job ids executed to success more than once (the effect still once).
    ran_twice: usize,
    lost: usize,
    recover: Duration,
}

/// The services one scenario runs against, and its processes' common environment.
struct Env {
    bin_dir: PathBuf,
    dir: PathBuf,
    db: TestDb,
    project: String,
    jobs: String,
    catalog: PathBuf,
    bus: pubsub_bus::Connection,
    results_tap: String,
}

impl Env {
    async fn new(bin_dir: &Path, queries: usize, cron: &str) -> anyhow::Result<Env> {
        let dir = std::env::temp_dir().join(unique("faults"));
        std::fs::create_dir_all(&dir)?;
        let db = TestDb::create().await;
        db.client.batch_execute("CREATE SCHEMA tenant_acme").await?;
        let catalog = dir.join("catalog.json");
        let qs: Vec<String> = (0..queries)
            .map(|i| {
                format!(
                    r#"{{"id": "q{i}", "schedule": "{cron}", "engine": "warehouse", "destination": "out", "timeout": "30s",
                        "max_attempts": 10, "overlap": "allow", "sql": "SELECT @scheduled_for AS scheduled_for, pg_sleep(0.2)::text AS slept"}}"#
                )
            })
            .collect();
        std::fs::write(
            &catalog,
            format!(
                r#"{{"tenants": [{{"id": "acme", "status": "active", "apps": [{{"id": "app", "queries": [{}]}}]}}]}}"#,
                qs.join(",")
            ),
        )?;
        let (project, jobs) = (unique("faults"), unique("jobs"));
        let bus = integration_tests::emulator(&project);
        // Read once, at the end (the emulator keeps feeding a cancelled stream for a while).
        let results_tap = integration_tests::tap(&bus, &format!("{jobs}-results")).await;
        Ok(Env { bin_dir: bin_dir.to_owned(), dir, db, project, jobs, catalog, bus, results_tap })
    }

    fn spawn(&self, binary: &str, name: &str, env: &[(&str, String)]) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(self.bin_dir.join(binary));
        cmd.arg("run").stdout(Stdio::null()).stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().with_context(|| format!("cannot start {binary}: build it first (cargo build -p {binary})"))
    }

    fn controller(&self, name: &str, admin_port: u16) -> anyhow::Result<Child> {
        self.spawn(
            "controller",
            name,
            &[
                ("CONTROLLER_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}")),
                ("CONTROLLER_PLATFORM__SOURCE", "file".into()),
                ("CONTROLLER_PLATFORM__CATALOG_FILE", self.catalog.display().to_string()),
                ("CONTROLLER_CATALOG__SYNC_INTERVAL", "2s".into()),
                ("CONTROLLER_PLACEMENT__STRATEGY", "none".into()),
                ("CONTROLLER_PUBSUB__PROJECT", self.project.clone()),
                ("CONTROLLER_PUBSUB__JOBS_TOPIC", self.jobs.clone()),
                ("CONTROLLER_PUBSUB__CREATE_TOPICS", "true".into()),
                ("CONTROLLER_STATE__URL", self.db.url.clone()),
                ("CONTROLLER_STATE__WATERMARK_INTERVAL", "1s".into()),
                ("CONTROLLER_STATE__LEADER_LEASE", "6s".into()),
            ],
        )
    }

    fn worker(&self, name: &str) -> anyhow::Result<Child> {
        self.spawn(
            "worker",
            name,
            &[
                ("WORKER_ADMIN__LISTEN", "127.0.0.1:0".into()),
                ("WORKER_PUBSUB__PROJECT", self.project.clone()),
                ("WORKER_PUBSUB__JOBS_TOPIC", self.jobs.clone()),
                ("WORKER_PUBSUB__JOBS_SUBSCRIPTION", format!("{}-workers", self.jobs)),
                ("WORKER_PUBSUB__RESULTS_TOPIC", format!("{}-results", self.jobs)),
                ("WORKER_PUBSUB__DEAD_LETTER_TOPIC", format!("{}-dead", self.jobs)),
                ("WORKER_PUBSUB__CREATE_RESOURCES", "true".into()),
                ("WORKER_PUBSUB__MIN_BACKOFF", "1s".into()),
                ("WORKER_PUBSUB__MAX_BACKOFF", "2s".into()),
                ("WORKER_PUBSUB__MAX_DELIVERY_ATTEMPTS", "100".into()),
                ("WORKER_PUBSUB__ACK_DEADLINE", "10s".into()),
                ("WORKER_RUNNER__MAX_IN_FLIGHT", "8".into()),
                ("WORKER_RUNNER__GRACE_PERIOD", "5s".into()),
                ("WORKER_LEDGER__URL", self.db.url.clone()),
                ("WORKER_LEDGER__LEASE", "6s".into()),
                ("WORKER_ENGINES__WAREHOUSE__URL", self.db.url.clone()),
            ],
        )
    }

    /// Distinct job ids written, and those with more than one row.
    async fn written(&self) -> (BTreeSet<String>, usize) {
        let rows = match self.db.client.query("SELECT _job_id, count(*) FROM tenant_acme.out GROUP BY 1", &[]).await {
            Ok(rows) => rows,
            Err(_) => return (BTreeSet::new(), 0), // the table is created by the first write
        };
        let twice = rows.iter().filter(|r| r.get::<_, i64>(1) > 1).count();
        (rows.iter().map(|r| r.get::<_, String>(0)).collect(), twice)
    }

    /// Job ids with more than one `succeeded` result event: executed again after a success
    /// (a worker killed between its result event and its ledger record). The effect is still
    /// once — the write replaces the run's own rows — so this is reported, not failed on.
    async fn ran_twice(&self) -> usize {
        let events =
            integration_tests::read_until(&self.bus, &self.results_tap, Duration::from_secs(8), |_| false).await;
        let mut succeeded: BTreeMap<String, usize> = BTreeMap::new();
        for e in events {
            if let Ok(ev) = jobs_core::ResultEvent::decode(&e.data)
                && ev.status == jobs_core::RunStatus::Succeeded
            {
                *succeeded.entry(ev.job_id.to_string()).or_default() += 1;
            }
        }
        succeeded.values().filter(|&&n| n > 1).count()
    }
}

/// A free loopback port for an admin server.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Sends SIGTERM to a child by its PID and waits (bounded) for it.
fn terminate(child: &mut Child, within: Duration) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILL, by PID.
fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The job ids of every run of the catalog's `queries` schedules with a nominal time in
/// `[from, to]`, stepping `every`.
fn expected_ids(queries: usize, every: i64, from: DateTime<Utc>, to: DateTime<Utc>) -> BTreeSet<String> {
    let mut t = DateTime::from_timestamp(from.timestamp().div_euclid(every) * every + every, 0).unwrap_or(from);
    let mut out = BTreeSet::new();
    while t <= to {
        for q in 0..queries {
            out.insert(jobs_core::JobId::for_run("acme", "app", &format!("q{q}"), t).to_string());
        }
        t += chrono::Duration::seconds(every);
    }
    out
}

/// Waits until every expected run is written (or `limit` passes); the time it took.
async fn settle(env: &Env, expected: &BTreeSet<String>, limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        let (written, _) = env.written().await;
        if expected.is_subset(&written) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    started.elapsed()
}

async fn outcome(env: &Env, scenario: &'static str, expected: BTreeSet<String>, recover: Duration) -> Outcome {
    let (written, twice) = env.written().await;
    let ran_twice = env.ran_twice().await;
    let lost = expected.difference(&written).count();
    Outcome {
        scenario,
        expected: expected.len(),
        written: written.intersection(&expected).count(),
        twice,
        ran_twice,
        lost,
        recover,
    }
}

/// Workers killed with SIGKILL at random while runs fall due, each restarted at once.
async fn worker_kills(bin: &Path, short: bool) -> anyhow::Result<Outcome> {
    let (queries, every, kills) = if short { (10, 2, 5) } else { (50, 2, 20) };
    let env = Env::new(bin, queries, &format!("*/{every} * * * * *")).await?;
    let mut workers: Vec<Child> = (0..3).map(|i| env.worker(&format!("worker-{i}"))).collect::<Result<_, _>>()?;
    let mut controller = env.controller("controller", free_port())?;
    tokio::time::sleep(Duration::from_secs(12)).await; // the emulator, the ledger, the first sync
    let from = Utc::now();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let i = fastrand::usize(..workers.len());
        kill9(&mut workers[i]);
        workers[i] = env.worker(&format!("worker-{i}-{k}"))?;
    }
    let to = Utc::now();
    terminate(&mut controller, Duration::from_secs(20));
    let expected = expected_ids(queries, every, from, to);
    // The emulator hands a killed worker's buffered messages to another stream only after an
    // unpredictable delay (see the README); real Pub/Sub does so after the ack deadline.
    let recover = settle(&env, &expected, Duration::from_secs(if short { 180 } else { 400 })).await;
    let result = outcome(&env, "worker kill -9", expected, recover).await;
    for w in &mut workers {
        terminate(w, Duration::from_secs(10));
    }
    Ok(result)
}

/// The controller killed with SIGKILL and restarted later: the runs due meanwhile are
/// published by the catch-up.
async fn controller_kill(bin: &Path, short: bool) -> anyhow::Result<Outcome> {
    let (queries, every, down) = if short { (5, 10, 15) } else { (20, 10, 120) };
    let env = Env::new(bin, queries, &format!("*/{every} * * * * *")).await?;
    let mut workers: Vec<Child> = (0..2).map(|i| env.worker(&format!("worker-{i}"))).collect::<Result<_, _>>()?;
    let mut controller = env.controller("controller-1", free_port())?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let from = Utc::now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    kill9(&mut controller);
    tokio::time::sleep(Duration::from_secs(down)).await;
    let mut controller = env.controller("controller-2", free_port())?;
    // Recovered when every run due before the restart is written.
    let restart = Utc::now();
    let recover = settle(&env, &expected_ids(queries, every, from, restart), Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let to = Utc::now() - chrono::Duration::seconds(5);
    terminate(&mut controller, Duration::from_secs(20));
    let expected = expected_ids(queries, every, from, to);
    settle(&env, &expected, Duration::from_secs(60)).await;
    let result = outcome(&env, "controller kill -9, restart later", expected, recover).await;
    for w in &mut workers {
        terminate(w, Duration::from_secs(10));
    }
    Ok(result)
}

/// The leader killed with SIGKILL while a standby runs: the standby takes over when the
/// lease expires and publishes what the leader left.
async fn leader_kill(bin: &Path, short: bool) -> anyhow::Result<Outcome> {
    let (queries, every) = if short { (5, 2) } else { (20, 2) };
    let env = Env::new(bin, queries, &format!("*/{every} * * * * *")).await?;
    let mut workers: Vec<Child> = (0..2).map(|i| env.worker(&format!("worker-{i}"))).collect::<Result<_, _>>()?;
    let (port_a, port_b) = (free_port(), free_port());
    let mut leader = env.controller("controller-a", port_a)?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut standby = env.controller("controller-b", port_b)?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let from = Utc::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    kill9(&mut leader);
    let killed = Instant::now();
    // The hand-over: the standby's /readyz names itself leader.
    let mut handover = Duration::from_secs(60);
    while killed.elapsed() < Duration::from_secs(60) {
        if readyz(port_b).await.contains("leader (") {
            handover = killed.elapsed();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let to = Utc::now() - chrono::Duration::seconds(4);
    terminate(&mut standby, Duration::from_secs(20));
    let expected = expected_ids(queries, every, from, to);
    settle(&env, &expected, Duration::from_secs(60)).await;
    let result = outcome(&env, "leader kill -9 with a standby", expected, handover).await;
    for w in &mut workers {
        terminate(w, Duration::from_secs(10));
    }
    Ok(result)
}

/// `/readyz` of a controller on a loopback port, as text.
async fn readyz(port: u16) -> String {
    integration_tests::get(([127, 0, 0, 1], port).into(), "/readyz").await.1
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let all = ["worker-kills", "controller-kill", "leader-kill"];
    let chosen: Vec<&str> = if cli.scenario == "all" { all.to_vec() } else { cli.scenario.split(',').collect() };
    let mut outcomes = Vec::new();
    for s in chosen {
        eprintln!("fault-suite: scenario {s}{}", if cli.short { " (short)" } else { "" });
        let o = match s {
            "worker-kills" => worker_kills(&cli.bin_dir, cli.short).await?,
            "controller-kill" => controller_kill(&cli.bin_dir, cli.short).await?,
            "leader-kill" => leader_kill(&cli.bin_dir, cli.short).await?,
            other => anyhow::bail!("--scenario {other:?}: one of {}, or all", all.join(", ")),
        };
        eprintln!("fault-suite: {o:?}");
        outcomes.push(o);
    }
    println!(
        "| scenario | runs expected | runs written | written twice | lost | ran again after success | time to recover |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for o in &outcomes {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} s |",
            o.scenario,
            o.expected,
            o.written,
            o.twice,
            o.lost,
            o.ran_twice,
            o.recover.as_secs_f64()
        );
    }
    let bad = outcomes.iter().any(|o| o.lost > 0 || o.twice > 0);
    Ok(if bad { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS })
}
