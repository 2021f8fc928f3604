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
use integration_tests::platform::{FakePlatform, Fault};
use integration_tests::{TestDb, unique};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod proxy;

#[derive(Parser)]
struct Cli {
    /// `worker-kills`, `controller-kill`, `bus-cut`, `postgres-restart`, `platform-faults`,
    /// `leader-kill` (comma-separated), or `all`.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// The short form (CI): fewer faults, shorter outages.
    #[arg(long)]
    short: bool,
    /// Where the controller and worker binaries are.
    #[arg(long, default_value = "target/debug")]
    bin_dir: PathBuf,
    /// The script that started the services (`postgres-restart` restarts PostgreSQL with it;
    /// `SERVICES_DIR` names the instance).
    #[arg(long, default_value = "scripts/services")]
    services_script: PathBuf,
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
    /// What went wrong besides lost or doubled runs (the fault was not what it should be).
    problem: Option<String>,
}

/// The services one scenario runs against, and its processes' common environment.
struct Env {
    bin_dir: PathBuf,
    dir: PathBuf,
    db: TestDb,
    project: String,
    jobs: String,
    tenants: Vec<String>,
    queries: usize,
    /// The catalog: a file, or the fake platform API.
    catalog: Catalog,
    bus: pubsub_bus::Connection,
    /// `host:port` the processes reach Pub/Sub at (a proxy, or the emulator itself).
    bus_host: String,
    results_tap: String,
}

enum Catalog {
    File(PathBuf),
    Platform(FakePlatform),
}

/// The platform token the fault suite's fake platform expects.
const PLATFORM_TOKEN: &str = "fault-suite-token";

/// `queries` schedules on `cron` in each tenant: `acme`, then `t1`, `t2`, ...
fn tenant_ids(tenants: usize) -> Vec<String> {
    (0..tenants).map(|i| if i == 0 { "acme".to_owned() } else { format!("t{i}") }).collect()
}

fn queries_doc(queries: usize, cron: &str) -> Vec<Value> {
    (0..queries)
        .map(|i| {
            json!({"id": format!("q{i}"), "schedule": cron, "engine": "warehouse", "destination": "out", "timeout": "30s",
                   "max_attempts": 10, "overlap": "allow",
                   "sql": "SELECT @scheduled_for AS scheduled_for, pg_sleep(0.2)::text AS slept"})
        })
        .collect()
}

/// How a scenario's environment is built.
struct Setup {
    tenants: usize,
    queries: usize,
    every: i64,
    /// Serve the catalog from the fake platform API instead of a file.
    platform: bool,
}

impl Setup {
    fn new(queries: usize, every: i64) -> Setup {
        Setup { tenants: 1, queries, every, platform: false }
    }
}

impl Env {
    async fn new(bin_dir: &Path, setup: &Setup) -> anyhow::Result<Env> {
        let dir = std::env::temp_dir().join(unique("faults"));
        std::fs::create_dir_all(&dir)?;
        let db = TestDb::create().await;
        let tenants = tenant_ids(setup.tenants);
        for t in &tenants {
            db.provision_tenant(t, "").await;
        }
        let queries = queries_doc(setup.queries, &format!("*/{} * * * * *", setup.every));
        let catalog = if setup.platform {
            let platform = FakePlatform::start(PLATFORM_TOKEN).await;
            platform.set_tenant_pages(vec![tenants.iter().map(|t| json!({"id": t, "status": "active"})).collect()]);
            for t in &tenants {
                platform.set_app_pages(t, vec![vec![json!({"id": "app", "queries": queries})]]);
            }
            Catalog::Platform(platform)
        } else {
            let path = dir.join("catalog.json");
            let doc = json!({"tenants": tenants.iter().map(|t| json!({"id": t, "status": "active",
                "apps": [{"id": "app", "queries": queries}]})).collect::<Vec<_>>()});
            std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
            Catalog::File(path)
        };
        let (project, jobs) = (unique("faults"), unique("jobs"));
        let bus = integration_tests::emulator(&project);
        let bus_host = std::env::var(pubsub_bus::EMULATOR_HOST_VAR).context("PUBSUB_EMULATOR_HOST is not set")?;
        // Read once, at the end (the emulator keeps feeding a cancelled stream for a while).
        let results_tap = integration_tests::tap(&bus, &format!("{jobs}-results")).await;
        Ok(Env {
            bin_dir: bin_dir.to_owned(),
            dir,
            db,
            project,
            jobs,
            tenants,
            queries: setup.queries,
            catalog,
            bus,
            bus_host,
            results_tap,
        })
    }

    fn spawn(&self, binary: &str, name: &str, env: &[(&str, String)]) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(self.bin_dir.join(binary));
        cmd.arg("run").stdout(Stdio::null()).stderr(log).env(pubsub_bus::EMULATOR_HOST_VAR, &self.bus_host);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().with_context(|| format!("cannot start {binary}: build it first (cargo build -p {binary})"))
    }

    fn controller(&self, name: &str, admin_port: u16) -> anyhow::Result<Child> {
        let mut env = vec![
            ("CONTROLLER_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}")),
            ("CONTROLLER_CATALOG__SYNC_INTERVAL", "2s".into()),
            ("CONTROLLER_PLACEMENT__STRATEGY", "none".into()),
            ("CONTROLLER_PUBSUB__PROJECT", self.project.clone()),
            ("CONTROLLER_PUBSUB__JOBS_TOPIC", self.jobs.clone()),
            ("CONTROLLER_PUBSUB__CREATE_TOPICS", "true".into()),
            ("CONTROLLER_STATE__URL", self.db.url.clone()),
            ("CONTROLLER_STATE__WATERMARK_INTERVAL", "1s".into()),
            ("CONTROLLER_STATE__LEADER_LEASE", "6s".into()),
        ];
        match &self.catalog {
            Catalog::File(path) => {
                env.push(("CONTROLLER_PLATFORM__SOURCE", "file".into()));
                env.push(("CONTROLLER_PLATFORM__CATALOG_FILE", path.display().to_string()));
            }
            Catalog::Platform(platform) => {
                env.extend([
                    ("CONTROLLER_PLATFORM__SOURCE", "api".into()),
                    ("CONTROLLER_PLATFORM__BASE_URL", platform.base_url()),
                    ("CONTROLLER_PLATFORM__MAX_ATTEMPTS", "2".into()),
                    ("CONTROLLER_PLATFORM__REQUEST_TIMEOUT", "2s".into()),
                    ("CONTROLLER_PLATFORM__INITIAL_BACKOFF", "200ms".into()),
                    ("CONTROLLER_CATALOG__REMOVAL_CONFIRMATIONS", "8".into()),
                    ("PLATFORM_API_TOKEN", PLATFORM_TOKEN.into()),
                ]);
            }
        }
        self.spawn("controller", name, &env)
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
                ("WORKER_LEDGER__REPUBLISH_AFTER", "25s".into()),
                ("WORKER_LEDGER__SWEEP_INTERVAL", "5s".into()),
                ("WORKER_ENGINES__WAREHOUSE__URL", self.db.url.clone()),
                ("WORKER_ENGINES__WAREHOUSE__ROLE_TEMPLATE", self.db.role_template()),
                ("WORKER_ENGINES__WAREHOUSE__TENANT_PASSWORD_KEY", integration_tests::TENANT_PASSWORD_KEY.into()),
            ],
        )
    }

    fn workers(&self, n: usize) -> anyhow::Result<Vec<Child>> {
        (0..n).map(|i| self.worker(&format!("worker-{i}"))).collect()
    }

    /// Distinct job ids written, and those with more than one row. A fresh connection each
    /// time: the database may have been restarted under the suite.
    async fn written(&self) -> (BTreeSet<String>, usize) {
        let Ok((client, connection)) = tokio_postgres::connect(&self.db.url, tokio_postgres::NoTls).await else {
            return (BTreeSet::new(), 0);
        };
        tokio::spawn(connection);
        let (mut ids, mut twice) = (BTreeSet::new(), 0);
        for t in &self.tenants {
            // The table is created by the tenant's first write.
            let Ok(rows) = client.query(&format!("SELECT _job_id, count(*) FROM tenant_{t}.out GROUP BY 1"), &[]).await
            else {
                continue;
            };
            twice += rows.iter().filter(|r| r.get::<_, i64>(1) > 1).count();
            ids.extend(rows.iter().map(|r| r.get::<_, String>(0)));
        }
        (ids, twice)
    }

    /// The job ids of every run of the catalog with a nominal time in `[from, to]`.
    fn expected(&self, every: i64, from: DateTime<Utc>, to: DateTime<Utc>) -> BTreeSet<String> {
        let mut t = DateTime::from_timestamp(from.timestamp().div_euclid(every) * every + every, 0).unwrap_or(from);
        let mut out = BTreeSet::new();
        while t <= to {
            for tenant in &self.tenants {
                for q in 0..self.queries {
                    out.insert(jobs_core::JobId::for_run(tenant, "app", &format!("q{q}"), t).to_string());
                }
            }
            t += chrono::Duration::seconds(every);
        }
        out
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
        problem: None,
    }
}

/// The end of every scenario: the controller stops (flushing what it has), every run due
/// up to a few seconds before gets `limit` to be written, the workers stop.
async fn finish(
    env: &Env,
    scenario: &'static str,
    every: i64,
    from: DateTime<Utc>,
    controllers: &mut [&mut Child],
    workers: &mut [Child],
    recover: Duration,
) -> Outcome {
    // Runs due in the last seconds may still be in the controller's hands.
    let to = Utc::now() - chrono::Duration::seconds(4);
    for c in controllers.iter_mut() {
        terminate(c, Duration::from_secs(20));
    }
    let expected = env.expected(every, from, to);
    settle(env, &expected, Duration::from_secs(90)).await;
    let result = outcome(env, scenario, expected, recover).await;
    for w in workers {
        terminate(w, Duration::from_secs(10));
    }
    result
}

/// Workers killed with SIGKILL at random while runs fall due, each restarted at once.
async fn worker_kills(bin: &Path, short: bool) -> anyhow::Result<Outcome> {
    let (queries, every, kills) = if short { (10, 2, 5) } else { (50, 2, 20) };
    let env = Env::new(bin, &Setup::new(queries, every)).await?;
    let mut workers = env.workers(3)?;
    let mut controller = env.controller("controller", free_port())?;
    tokio::time::sleep(Duration::from_secs(12)).await; // the emulator, the ledger, the first sync
    let from = Utc::now();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let i = fastrand::usize(..workers.len());
        kill9(&mut workers[i]);
        workers[i] = env.worker(&format!("worker-{i}-{k}"))?;
    }
    // Runs due in the last seconds may still be in the controller's hands.
    let to = Utc::now() - chrono::Duration::seconds(4);
    terminate(&mut controller, Duration::from_secs(20));
    // A killed worker's jobs come back when their ack deadline (10 s here) passes.
    let expected = env.expected(every, from, to);
    let recover = settle(&env, &expected, Duration::from_secs(120)).await;
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
    let env = Env::new(bin, &Setup::new(queries, every)).await?;
    let mut workers = env.workers(2)?;
    let mut controller = env.controller("controller-1", free_port())?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let from = Utc::now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    kill9(&mut controller);
    tokio::time::sleep(Duration::from_secs(down)).await;
    let mut controller = env.controller("controller-2", free_port())?;
    // Recovered when every run due before the restart is written.
    let restart = Utc::now();
    let recover = settle(&env, &env.expected(every, from, restart), Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let name = "controller kill -9, restart later";
    Ok(finish(&env, name, every, from, &mut [&mut controller], &mut workers, recover).await)
}

/// Every connection between the services and Pub/Sub cut (a proxy on loopback) for a while:
/// publishes and pulls fail and are retried; nothing is lost.
async fn bus_cut(bin: &Path, short: bool) -> anyhow::Result<Outcome> {
    let (queries, every, cut) = if short { (5, 2, 10) } else { (20, 2, 30) };
    let mut env = Env::new(bin, &Setup::new(queries, every)).await?;
    let upstream = env.bus_host.trim_start_matches("http://").parse().context("PUBSUB_EMULATOR_HOST host:port")?;
    let proxy = proxy::Proxy::start(upstream).await?;
    env.bus_host = proxy.addr.to_string();
    let mut workers = env.workers(3)?;
    let mut controller = env.controller("controller", free_port())?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let from = Utc::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(cut)).await;
    proxy.restore();
    eprintln!("fault-suite: bus restored after {cut} s ({} connections refused meanwhile)", proxy.refused());
    let restored = Utc::now();
    let recover = settle(&env, &env.expected(every, from, restored), Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let name = "Pub/Sub connection cut";
    Ok(finish(&env, name, every, from, &mut [&mut controller], &mut workers, recover).await)
}

/// PostgreSQL (the run ledger, the controller's state, the destination) stopped and started
/// again under load.
async fn postgres_restart(bin: &Path, script: &Path, short: bool) -> anyhow::Result<Outcome> {
    let (queries, every, down) = if short { (5, 2, 5) } else { (20, 2, 20) };
    let services =
        std::env::var("SERVICES_DIR").context("SERVICES_DIR is not set: start the services with scripts/services")?;
    let env = Env::new(bin, &Setup::new(queries, every)).await?;
    let mut workers = env.workers(3)?;
    let mut controller = env.controller("controller", free_port())?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let from = Utc::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let status = Command::new(script)
        .args(["restart-pg", &services, &down.to_string()])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    anyhow::ensure!(status.success(), "{} restart-pg failed: {status}", script.display());
    let restarted = Utc::now();
    let recover = settle(&env, &env.expected(every, from, restarted), Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let name = "PostgreSQL restarted";
    Ok(finish(&env, name, every, from, &mut [&mut controller], &mut workers, recover).await)
}

/// The platform API fails in every way the contract allows and some it does not: 500s,
/// malformed JSON, a page cut short, then a catalog that lost 90% of its tenants. The last
/// good catalog stays in force: every tenant's runs go on.
async fn platform_faults(bin: &Path, short: bool) -> anyhow::Result<Outcome> {
    let (queries, every, bad_answer) = if short { (1, 2, 8) } else { (2, 2, 12) };
    let env = Env::new(bin, &Setup { tenants: 10, queries, every, platform: true }).await?;
    let Catalog::Platform(platform) = &env.catalog else { anyhow::bail!("the scenario needs the fake platform") };
    let mut workers = env.workers(3)?;
    let port = free_port();
    let mut controller = env.controller("controller", port)?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let from = Utc::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let broken = [
        Fault::Status(500),
        Fault::Status(500),
        Fault::Status(503),
        Fault::Status(500),
        Fault::Body("{\"tenants\": [{\"id\": \"acme\", \"status\": \"act".into()),
        Fault::Body("<html>502 Bad Gateway</html>".into()),
        Fault::Body("{\"tenants\": [{\"id\": \"acme\", \"status\": \"active\"}], \"next_page_token\": 7}".into()),
    ];
    let faults = broken.len();
    platform.inject("/v1/tenants", broken);
    // Every fault answered (the controller retries and syncs every 2 s).
    let answered = |n: usize| platform.requests().iter().filter(|r| r.path == "/v1/tenants").count() >= n;
    let before = platform.requests().iter().filter(|r| r.path == "/v1/tenants").count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !answered(before + faults) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then 90% of the tenants vanish for a while (fewer syncs than the guard's confirmations).
    let full = vec![env.tenants.iter().map(|t| json!({"id": t, "status": "active"})).collect::<Vec<_>>()];
    platform.set_tenant_pages(vec![vec![json!({"id": "acme", "status": "active"})]]);
    tokio::time::sleep(Duration::from_secs(bad_answer)).await;
    platform.set_tenant_pages(full);
    let recovered = Utc::now();
    let held_back = metric(port, "controller_catalog_held_back_total").await;
    let failures = metric(port, "controller_catalog_syncs_total{outcome=\"failed\"}").await;
    eprintln!("fault-suite: platform back; syncs failed {failures}, held back by the mass-deletion guard {held_back}");
    let recover = settle(&env, &env.expected(every, from, recovered), Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let name = "platform 500s, bad JSON, 90% gone";
    let mut result = finish(&env, name, every, from, &mut [&mut controller], &mut workers, recover).await;
    if held_back < 1.0 || failures < 1.0 {
        result.problem =
            Some(format!("the faults did not reach the controller (failed syncs {failures}, held back {held_back})"));
    }
    Ok(result)
}

/// A counter or gauge from a controller's `/metrics` (0 when absent).
async fn metric(port: u16, name: &str) -> f64 {
    let text = integration_tests::get(([127, 0, 0, 1], port).into(), "/metrics").await.1;
    integration_tests::metric(&text, name).unwrap_or(0.0)
}

/// The leader killed with SIGKILL while a standby runs: the standby takes over when the
/// lease expires and publishes what the leader left.
async fn leader_kill(bin: &Path, short: bool) -> anyhow::Result<Outcome> {
    let (queries, every) = if short { (5, 2) } else { (20, 2) };
    let env = Env::new(bin, &Setup::new(queries, every)).await?;
    let mut workers = env.workers(2)?;
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
        if checks(port_b).await.contains("leader (") {
            handover = killed.elapsed();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let name = "leader kill -9 with a standby";
    Ok(finish(&env, name, every, from, &mut [&mut standby], &mut workers, handover).await)
}

/// `/v1/checks` of a controller on a loopback port, as text.
async fn checks(port: u16) -> String {
    integration_tests::get(([127, 0, 0, 1], port).into(), "/v1/checks").await.1
}

const SCENARIOS: [&str; 6] =
    ["worker-kills", "controller-kill", "bus-cut", "postgres-restart", "platform-faults", "leader-kill"];

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let chosen: Vec<&str> = if cli.scenario == "all" { SCENARIOS.to_vec() } else { cli.scenario.split(',').collect() };
    if let Some(unknown) = chosen.iter().find(|s| !SCENARIOS.contains(s)) {
        anyhow::bail!("--scenario {unknown:?}: one of {}, or all", SCENARIOS.join(", "));
    }
    let mut outcomes = Vec::new();
    for s in chosen {
        eprintln!("fault-suite: scenario {s}{}", if cli.short { " (short)" } else { "" });
        let started = Instant::now();
        let o = match s {
            "worker-kills" => worker_kills(&cli.bin_dir, cli.short).await?,
            "controller-kill" => controller_kill(&cli.bin_dir, cli.short).await?,
            "bus-cut" => bus_cut(&cli.bin_dir, cli.short).await?,
            "postgres-restart" => postgres_restart(&cli.bin_dir, &cli.services_script, cli.short).await?,
            "platform-faults" => platform_faults(&cli.bin_dir, cli.short).await?,
            _ => leader_kill(&cli.bin_dir, cli.short).await?,
        };
        eprintln!("fault-suite: {o:?} ({:.0} s)", started.elapsed().as_secs_f64());
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
    for o in &outcomes {
        if let Some(problem) = &o.problem {
            println!("{}: {problem}", o.scenario);
        }
    }
    let bad = outcomes.iter().any(|o| o.lost > 0 || o.twice > 0 || o.problem.is_some());
    Ok(if bad { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS })
}
