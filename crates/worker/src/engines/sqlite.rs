//! The embedded SQLite engine of the standalone mode. Each tenant has its own database file
//! `<dir>/<tenant_id>.sqlite3`; a query runs on that file only, with `PRAGMA query_only` on,
//! the named parameters bound, and an interrupt at its timeout. An authorizer lets a query
//! read and call functions and nothing else: `ATTACH` (also disabled by a limit of 0
//! attached databases), `VACUUM INTO`, `PRAGMA`, `load_extension`, any write or schema
//! change is refused while it is prepared, naming what was refused. The
//! rows are then written to the destination table in the same file, in one transaction:
//! delete the rows of this job id, insert the new ones (the same idempotent write as the
//! PostgreSQL engine). Timestamps are bound as RFC 3339 UTC text with milliseconds
//! (`2026-12-04T10:00:00.000Z`), the format `strftime('%Y-%m-%dT%H:%M:%fZ')` produces.

use super::{Engine, ResultLimits, RunError, RunOutput};
use crate::params::{self, ParamValue};
use async_trait::async_trait;
use chrono::SecondsFormat;
use jobs_core::JobMessage;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct SqliteEngine {
    dir: PathBuf,
    limits: ResultLimits,
}

impl SqliteEngine {
    pub fn new(dir: impl Into<PathBuf>, limits: ResultLimits) -> Self {
        SqliteEngine { dir: dir.into(), limits }
    }

    /// The tenant's database file.
    pub fn database_for(&self, tenant_id: &str) -> PathBuf {
        self.dir.join(format!("{tenant_id}.sqlite3"))
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn classify(e: rusqlite::Error, step: &str) -> RunError {
    let retryable = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::OperationInterrupted)
    );
    let message = format!("{step}: {e}");
    if retryable { RunError::retryable(message) } else { RunError::permanent(message) }
}

/// Opens the tenant's file (which must exist: the tenant's data lives there).
fn open(path: &Path) -> Result<Connection, RunError> {
    if !path.exists() {
        return Err(RunError::permanent(format!("no database for this tenant at {}", path.display())));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| classify(e, "open the tenant database"))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| classify(e, "configure"))?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0).map_err(|e| classify(e, "configure"))?;
    Ok(conn)
}

struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

/// What a tenant's query may do: read the tenant's own database (`main`, and `temp` for the
/// query's own temporary results), call functions other than `load_extension`, recurse.
fn allowed(ctx: &AuthContext<'_>) -> Result<(), String> {
    match ctx.action {
        AuthAction::Select | AuthAction::Recursive => Ok(()),
        AuthAction::Read { .. } if matches!(ctx.database_name, Some("main" | "temp")) => Ok(()),
        AuthAction::Function { function_name } if !function_name.eq_ignore_ascii_case("load_extension") => Ok(()),
        AuthAction::Function { function_name } => Err(format!("the function {function_name}()")),
        AuthAction::Attach { .. } => Err("ATTACH".into()),
        AuthAction::Pragma { pragma_name, .. } => Err(format!("PRAGMA {pragma_name}")),
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. } => Err(format!("writing to {table_name}")),
        other => Err(format!("{other:?}")),
    }
}

/// The SQLite refusal as the run's error, naming what the query tried.
fn refused(e: rusqlite::Error, denied: &Mutex<Option<String>>) -> RunError {
    match denied.lock().ok().and_then(|mut d| d.take()) {
        Some(what) => RunError::permanent(format!(
            "query: {what} is refused: a query may only read its tenant's own database ({e})"
        )),
        None => classify(e, "query"),
    }
}

fn query(conn: &mut Connection, job: &JobMessage, limits: ResultLimits) -> Result<Table, RunError> {
    conn.pragma_update(None, "query_only", true).map_err(|e| classify(e, "configure"))?;
    let denied = Arc::new(Mutex::new(None::<String>));
    let record = denied.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| match allowed(&ctx) {
        Ok(()) => Authorization::Allow,
        Err(what) => {
            if let Ok(mut slot) = record.lock() {
                slot.get_or_insert(what);
            }
            Authorization::Deny
        }
    }))
    .map_err(|e| classify(e, "configure"))?;
    let sql = params::rewrite(&job.sql, |i| format!("?{}", i + 1));
    let values = params::values(job);
    let result = (|| {
        let mut stmt = conn.prepare(&sql).map_err(|e| refused(e, &denied))?;
        for i in 1..=stmt.parameter_count() {
            // Only our own `?N` placeholders are bound; anything else stays NULL.
            let Some(n) =
                stmt.parameter_name(i).and_then(|name| name.strip_prefix('?')).and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let Some(value) = values.get(n - 1) else {
                continue;
            };
            let bound = match value {
                ParamValue::Text(s) => stmt.raw_bind_parameter(i, s),
                ParamValue::Timestamp(t) => stmt.raw_bind_parameter(i, t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            };
            bound.map_err(|e| classify(e, "bind parameters"))?;
        }
        let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        let mut seen = std::collections::HashSet::new();
        for c in &columns {
            if c == "_job_id" || c == "_scheduled_for" {
                return Err(RunError::permanent(format!("column name {c:?} is reserved for the worker's metadata")));
            }
            if !seen.insert(c.as_str()) {
                return Err(RunError::permanent(format!("the query returns two columns named {c:?}; alias them")));
            }
        }
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = stmt.raw_query();
        while let Some(row) = cursor.next().map_err(|e| refused(e, &denied))? {
            let mut cells = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                let cell = row.get_ref(i).map_err(|e| classify(e, "read a row"))?;
                cells.push(Value::try_from(cell).map_err(|e| RunError::permanent(format!("read a row: {e}")))?);
            }
            bytes = bytes.saturating_add(cells.iter().map(size).sum::<usize>());
            rows.push(cells);
            limits.check(&job.engine, rows.len(), bytes)?;
        }
        Ok(Table { columns, rows })
    })();
    let reset = conn
        .authorizer(None::<fn(AuthContext<'_>) -> Authorization>)
        .and_then(|()| conn.pragma_update(None, "query_only", false))
        .map_err(|e| classify(e, "configure"));
    result.and_then(|table| reset.map(|()| table))
}

/// The bytes a value counts for against `max_result_bytes`.
fn size(value: &Value) -> usize {
    match value {
        Value::Null => 1,
        Value::Integer(_) | Value::Real(_) => 8,
        Value::Text(s) => s.len(),
        Value::Blob(b) => b.len(),
    }
}

fn write(conn: &mut Connection, job: &JobMessage, table: &Table) -> Result<u64, RunError> {
    jobs_core::names::check_destination(&job.destination)
        .map_err(|r| RunError::permanent(format!("destination {:?} {r}", job.destination)))?;
    let dest = quote_ident(&job.destination);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| classify(e, "begin write transaction"))?;
    let mut ddl =
        format!("CREATE TABLE IF NOT EXISTS {dest} (\"_job_id\" TEXT NOT NULL, \"_scheduled_for\" TEXT NOT NULL");
    for c in &table.columns {
        ddl.push_str(", ");
        ddl.push_str(&quote_ident(c));
    }
    ddl.push(')');
    tx.execute_batch(&ddl).map_err(|e| classify(e, "create the destination table"))?;
    tx.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {dest} (\"_job_id\")",
        quote_ident(&format!("{}__job_id_idx", job.destination))
    ))
    .map_err(|e| classify(e, "index the destination table"))?;
    tx.execute(&format!("DELETE FROM {dest} WHERE \"_job_id\" = ?1"), [job.job_id.as_str()])
        .map_err(|e| classify(e, "delete the previous rows of this run"))?;
    let columns: Vec<String> = ["_job_id", "_scheduled_for"]
        .iter()
        .map(|c| quote_ident(c))
        .chain(table.columns.iter().map(|c| quote_ident(c)))
        .collect();
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let insert = format!("INSERT INTO {dest} ({}) VALUES ({})", columns.join(", "), placeholders.join(", "));
    let scheduled_for = job.nominal_time.to_rfc3339_opts(SecondsFormat::Millis, true);
    let job_id = job.job_id.as_str();
    let mut written = 0u64;
    {
        let mut stmt = tx.prepare(&insert).map_err(|e| classify(e, "insert the result rows"))?;
        for row in &table.rows {
            let mut values: Vec<&dyn rusqlite::ToSql> = vec![&job_id, &scheduled_for];
            values.extend(row.iter().map(|v| v as &dyn rusqlite::ToSql));
            written += stmt.execute(values.as_slice()).map_err(|e| classify(e, "insert the result rows"))? as u64;
        }
    }
    tx.commit().map_err(|e| classify(e, "commit the result rows"))?;
    Ok(written)
}

#[async_trait]
impl Engine for SqliteEngine {
    async fn run(&self, job: &JobMessage, _attempt: u32) -> Result<RunOutput, RunError> {
        jobs_core::names::check_entity_id(&job.tenant_id)
            .map_err(|r| RunError::permanent(format!("tenant id {:?} {r}", job.tenant_id)))?;
        let path = self.database_for(&job.tenant_id);
        let mut conn = tokio::task::spawn_blocking(move || open(&path))
            .await
            .map_err(|e| RunError::retryable(format!("open task failed: {e}")))??;
        // Interrupt the query at its timeout.
        let interrupt = conn.get_interrupt_handle();
        let timeout = Duration::from_secs(job.timeout_secs.max(1));
        let watchdog = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            interrupt.interrupt();
        });
        let job = job.clone();
        let limits = self.limits;
        let result = tokio::task::spawn_blocking(move || {
            let table = query(&mut conn, &job, limits)?;
            let rows = write(&mut conn, &job, &table)?;
            Ok::<_, RunError>(rows)
        })
        .await
        .map_err(|e| RunError::retryable(format!("run task failed: {e}")))?;
        watchdog.abort();
        Ok(RunOutput::rows(result?))
    }

    async fn ping(&self) -> Result<(), RunError> {
        if self.dir.is_dir() {
            Ok(())
        } else {
            Err(RunError::retryable(format!("data directory {} is missing", self.dir.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use jobs_core::{ErrorClass, JobId, Overlap, Trigger};

    fn job(sql: &str) -> JobMessage {
        let nominal = Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, 0).single().expect("valid");
        JobMessage {
            schema_version: "1.0".into(),
            job_id: JobId::for_run("acme", "a", "q", nominal),
            tenant_id: "acme".into(),
            app_id: "a".into(),
            query_id: "q".into(),
            nominal_time: nominal,
            placed_time: nominal,
            window_start: nominal - chrono::Duration::hours(1),
            window_end: nominal,
            engine: "embedded".into(),
            sql: sql.into(),
            destination: "out".into(),
            timeout_secs: 2,
            max_attempts: 3,
            overlap: Overlap::Skip,
            trigger: Trigger::Scheduled,
            published_at: nominal,
        }
    }

    fn engine() -> (SqliteEngine, PathBuf) {
        let dir = std::env::temp_dir().join(format!("sqlite-engine-{}-{}", std::process::id(), fastrand_suffix()));
        std::fs::create_dir_all(&dir).expect("dir");
        let conn = Connection::open(dir.join("acme.sqlite3")).expect("create");
        conn.execute_batch(
            "CREATE TABLE sales (store TEXT, amount REAL, ts TEXT);
             INSERT INTO sales VALUES ('north', 10.5, '2026-12-04T09:10:00.000Z'), ('north', 2, '2026-12-04T09:59:59.999Z'),
                                      ('south', 7, '2026-12-04T10:00:00.000Z'), ('south', 1, '2026-12-04T08:59:00.000Z');",
        )
        .expect("seed");
        (SqliteEngine::new(&dir, ResultLimits { max_rows: 100, max_bytes: 10_000 }), dir)
    }

    fn fastrand_suffix() -> u64 {
        use std::time::{SystemTime, UNIX_EPOCH};
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    }

    const SQL: &str = "SELECT store, SUM(amount) AS revenue, @tenant_id AS tenant FROM sales \
                       WHERE ts >= @window_start AND ts < @window_end GROUP BY store";

    #[tokio::test]
    async fn a_run_reads_its_window_and_a_rerun_replaces_its_rows() {
        let (engine, dir) = engine();
        for _ in 0..3 {
            assert_eq!(engine.run(&job(SQL), 1).await.expect("run").rows_written, 1);
        }
        let conn = Connection::open(dir.join("acme.sqlite3")).expect("open");
        let (n, revenue, tenant): (i64, f64, String) = conn
            .query_row("SELECT count(*), SUM(revenue), MAX(tenant) FROM out", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("row");
        assert_eq!((n, revenue, tenant.as_str()), (1, 12.5, "acme"));
    }

    #[tokio::test]
    async fn queries_cannot_write_or_attach_other_files() {
        let (engine, dir) = engine();
        let err = engine.run(&job("DELETE FROM sales RETURNING store"), 1).await.expect_err("read-only");
        assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
        let other = dir.join("globex.sqlite3");
        Connection::open(&other).expect("other tenant");
        let err = engine
            .run(&job(&format!("ATTACH DATABASE '{}' AS other", other.display())), 1)
            .await
            .expect_err("attach refused");
        assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
        for (sql, named) in [
            // VACUUM INTO attaches its target file, and that is what is refused.
            (format!("VACUUM INTO '{}'", dir.join("copy.sqlite3").display()), "ATTACH"),
            ("PRAGMA query_only = false".to_owned(), "PRAGMA query_only"),
            ("SELECT load_extension('/tmp/x.so') AS x".to_owned(), "load_extension()"),
            ("CREATE TABLE other (x)".to_owned(), "writing to sqlite_master"),
        ] {
            let err = engine.run(&job(&sql), 1).await.expect_err(&sql);
            assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
            assert!(err.message.contains(named) && err.message.contains("refused"), "{sql}: {}", err.message);
        }
        assert!(!dir.join("copy.sqlite3").exists(), "VACUUM INTO wrote nothing");
        let conn = Connection::open(dir.join("acme.sqlite3")).expect("open");
        let n: i64 = conn.query_row("SELECT count(*) FROM sales", [], |r| r.get(0)).expect("count");
        assert_eq!(n, 4);
        // The refusals are the query's only: the run after them still writes its rows.
        assert_eq!(engine.run(&job(SQL), 1).await.expect("run").rows_written, 1);
    }

    #[tokio::test]
    async fn a_result_over_its_row_or_byte_limit_is_refused_naming_the_limit() {
        let (engine, _dir) = engine();
        let rows = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 101) SELECT x FROM c";
        let err = engine.run(&job(rows), 1).await.expect_err("rows");
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(err.message.contains("engines.embedded.max_rows"), "{}", err.message);
        let err = engine.run(&job("SELECT printf('%.20000c', 'x') AS big"), 1).await.expect_err("bytes");
        assert!(err.message.contains("engines.embedded.max_result_bytes"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_missing_tenant_database_and_bad_sql_are_permanent() {
        let (engine, _dir) = engine();
        let mut j = job("SELECT 1 AS x");
        j.tenant_id = "nobody".into();
        assert_eq!(engine.run(&j, 1).await.expect_err("missing").class, ErrorClass::Permanent);
        assert_eq!(engine.run(&job("SELEC 1"), 1).await.expect_err("syntax").class, ErrorClass::Permanent);
    }

    #[tokio::test]
    async fn a_query_past_its_timeout_is_interrupted_and_retryable() {
        let (engine, _dir) = engine();
        let mut j = job("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT MAX(x) AS m FROM c");
        j.timeout_secs = 1;
        let err = engine.run(&j, 1).await.expect_err("interrupted");
        assert_eq!(err.class, ErrorClass::Retryable, "{}", err.message);
    }
}
