//! The standalone mode: the controller and the worker in one process, over an in-process
//! bus, with everything embedded: the catalog from a file, SQLite as the query engine (one
//! database file per tenant, seeded with sample data on first start). The catalog
//! validation, the timer, the job messages, the parameter binding and the idempotent writes
//! are the production code paths; only the bus and the engine differ.

pub mod bus;

use anyhow::Context;
use bus::{BusSink, Counters, LocalOutputs};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use worker::engines::Engine;
use worker::engines::ResultLimits;
use worker::engines::sqlite::SqliteEngine;
use worker::runner::Runner;

/// The embedded catalog, copied to the data directory on first start.
pub const CATALOG: &str = include_str!("../../../examples/standalone/catalog.yaml");
/// The sample data each tenant's database is seeded with.
pub const SEED_SQL: &str = include_str!("../../../examples/standalone/seed.sql");
/// The engine name the catalog uses.
pub const ENGINE: &str = "warehouse";

#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub admin: SocketAddr,
    pub summary_every: Duration,
    pub sync_interval: Duration,
    pub max_in_flight: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            data_dir: PathBuf::from("standalone-data"),
            admin: SocketAddr::from(([127, 0, 0, 1], 9090)),
            summary_every: Duration::from_secs(10),
            sync_interval: Duration::from_secs(10),
            max_in_flight: 4,
        }
    }
}

/// Prepares the data directory: the catalog (kept if already there, so edits survive) and
/// one seeded database per active tenant that has none yet. Returns the tenants seeded now.
pub fn prepare(data_dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let catalog = data_dir.join("catalog.yaml");
    if !catalog.exists() {
        std::fs::write(&catalog, CATALOG).with_context(|| format!("cannot write {}", catalog.display()))?;
    }
    let raw = controller::platform::read_catalog_file(&catalog)?;
    let mut seeded = Vec::new();
    for tenant in &raw.tenants {
        let controller::catalog::Lenient::Ok(controller::catalog::TenantDoc { id: Some(id), .. }) = &tenant.doc else {
            continue;
        };
        if jobs_core::names::check_entity_id(id).is_err() {
            continue;
        }
        let path = data_dir.join(format!("{id}.sqlite3"));
        if path.exists() {
            continue;
        }
        let partial = path.with_extension("sqlite3.partial");
        let _ = std::fs::remove_file(&partial);
        let conn =
            rusqlite::Connection::open(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
        conn.execute_batch(SEED_SQL).with_context(|| format!("cannot seed {}", partial.display()))?;
        drop(conn);
        // Renamed only when complete: an interrupted seed is redone on the next start.
        std::fs::rename(&partial, &path)?;
        seeded.push(id.to_owned());
    }
    Ok(seeded)
}

/// The controller's settings in the standalone mode.
pub fn controller_settings(options: &Options) -> controller::Settings {
    let mut s = controller::Settings::default();
    s.admin.listen = options.admin;
    s.platform.source = controller::settings::CatalogSource::File;
    s.platform.catalog_file = Some(options.data_dir.join("catalog.yaml"));
    s.catalog.sync_interval = options.sync_interval;
    s.catalog.engines = vec![ENGINE.to_owned()];
    s
}

/// Runs both halves until `shutdown` is cancelled; returns the final counters.
pub async fn run(options: Options, shutdown: CancellationToken) -> anyhow::Result<Arc<Counters>> {
    let seeded = prepare(&options.data_dir)?;
    if !seeded.is_empty() {
        tracing::info!(tenants = ?seeded, dir = %options.data_dir.display(), "seeded sample tenant databases");
    }
    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::unbounded_channel();

    let controller_app = controller::Application::build(controller_settings(&options), &Default::default())
        .await?
        .with_sink(Arc::new(BusSink { tx: tx.clone(), counters: counters.clone() }));
    tracing::info!(admin = %controller_app.admin_addr(), "controller admin (/readyz, /metrics)");

    let mut registry = prometheus_registry();
    let worker_metrics = worker::metrics::Metrics::register(&mut registry);
    let engines: BTreeMap<String, Arc<dyn Engine>> = [(
        ENGINE.to_owned(),
        Arc::new(SqliteEngine::new(&options.data_dir, ResultLimits::default())) as Arc<dyn Engine>,
    )]
    .into();
    let outputs = Arc::new(LocalOutputs {
        counters: counters.clone(),
        dead_letter_file: options.data_dir.join("dead-letters.jsonl"),
        file_lock: Mutex::new(()),
    });
    // One process: the run ledger is in memory (the dedup and overlap rules hold while it runs).
    let ledger = worker::runner::LedgerAccess {
        ledger: Arc::new(worker::ledger::memory::MemoryLedger::default()),
        worker: "standalone".into(),
        lease: Duration::from_secs(60),
    };
    let runner = Arc::new(Runner::new(engines, outputs, worker_metrics, Duration::from_secs(3600), ledger));

    let work = shutdown.child_token();
    let mut tasks = service_kit::Supervisor::new(work.clone());
    tasks.spawn("controller", controller_app.run_until_stopped(work.clone()));
    tasks.spawn(
        "worker",
        bus::consume(rx, tx, runner, counters.clone(), options.max_in_flight, Duration::from_secs(10), work.clone()),
    );
    let (progress, stop, every) = (counters.clone(), work.clone(), options.summary_every);
    tasks.spawn("progress", async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tick.tick() => tracing::info!(summary = %progress.line(), "progress"),
            }
        }
    });
    tasks.join().await?;
    Ok(counters)
}

/// The latest `limit` rows of `table` in `tenant`'s database, as aligned text.
pub fn show(data_dir: &Path, tenant: &str, table: &str, limit: u32) -> anyhow::Result<String> {
    jobs_core::names::check_entity_id(tenant).map_err(|r| anyhow::anyhow!("tenant {tenant:?} {r}"))?;
    jobs_core::names::check_destination(table).map_err(|r| anyhow::anyhow!("table {table:?} {r}"))?;
    let path = data_dir.join(format!("{tenant}.sqlite3"));
    if !path.exists() {
        anyhow::bail!("no database for tenant {tenant:?} at {} (has standalone run yet?)", path.display());
    }
    let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM \"{table}\" ORDER BY \"_scheduled_for\" DESC LIMIT {limit}"))
        .with_context(|| format!("cannot read table {table:?} of tenant {tenant:?}"))?;
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let mut rows: Vec<Vec<String>> = vec![columns.clone()];
    let mut cursor = stmt.raw_query();
    while let Some(row) = cursor.next()? {
        let mut cells = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            cells.push(match row.get_ref(i)? {
                rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                rusqlite::types::ValueRef::Real(v) => v.to_string(),
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                rusqlite::types::ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
            });
        }
        rows.push(cells);
    }
    let widths: Vec<usize> =
        (0..columns.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    Ok(out)
}

fn prometheus_registry() -> prometheus_client::registry::Registry {
    prometheus_client::registry::Registry::default()
}
