//! The run ledger in PostgreSQL: table `runs` in its own schema (`ledger.schema`, default
//! `sqo_ledger`), one row per job id.
//!
//! Migrations run at start-up, in order, each in a transaction under an advisory lock (so
//! that workers starting together apply them once); the schema's version is kept in
//! `schema_version`. A worker refuses to start against a schema newer than it knows.
//!
//! A claim is one transaction: it locks the schedule (a transaction-scoped advisory lock on
//! the schedule's identity, so that two runs of one schedule are never both admitted under
//! overlap `skip`), reads the job id's row, checks the previous run of the schedule, and
//! takes the lease.

use super::{Claim, Ledger, LedgerError, Outcome};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use jobs_core::{JobId, JobMessage, Overlap};
use service_kit::Secret;
use std::time::Duration;

/// The migrations, in order; the schema's version is the number applied. `{schema}` is the
/// ledger's schema, quoted.
pub const MIGRATIONS: &[&str] = &[
    // 1: the runs.
    "CREATE TABLE {schema}.runs (
        job_id text PRIMARY KEY,
        tenant_id text NOT NULL,
        app_id text NOT NULL,
        query_id text NOT NULL,
        nominal_time timestamptz NOT NULL,
        state text NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'skipped')),
        attempts integer NOT NULL DEFAULT 0,
        lease_owner text,
        lease_expires_at timestamptz,
        started_at timestamptz,
        finished_at timestamptz,
        rows_written bigint,
        error_class text,
        error_message text,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX runs_running_by_schedule ON {schema}.runs (tenant_id, app_id, query_id, nominal_time)
        WHERE state = 'running';
    CREATE INDEX runs_by_tenant_recent ON {schema}.runs (tenant_id, updated_at DESC);",
    // 2: run history across tenants, newest first (`GET /v1/runs`).
    "CREATE INDEX runs_recent ON {schema}.runs (updated_at DESC, job_id DESC);",
    // 3: a copy of the job message while the run is running, to publish it again if its
    // message is lost (the sweeper), and when that was last done.
    "ALTER TABLE {schema}.runs ADD COLUMN job_body bytea, ADD COLUMN republished_at timestamptz;
    CREATE INDEX runs_running_by_lease ON {schema}.runs (lease_expires_at) WHERE state = 'running';",
];

/// The schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

pub struct PostgresLedger {
    pool: Pool,
    /// The schema's name, quoted for SQL text.
    schema: String,
    /// The schema's name as the catalog has it.
    schema_name: String,
}

fn err(what: &str) -> impl Fn(tokio_postgres::Error) -> LedgerError + '_ {
    move |e| LedgerError(service_kit::with_sources(&format!("{what}: {e}"), &e))
}

impl PostgresLedger {
    /// Connects (lazily) with a pool of `pool_size` connections.
    pub fn new(url: &Secret, schema: &str, pool_size: usize) -> Result<Self, LedgerError> {
        let pool = crate::engines::postgres::pool(url, pool_size).map_err(LedgerError)?;
        Ok(PostgresLedger {
            pool,
            schema: crate::engines::postgres::quote_ident(schema),
            schema_name: schema.to_owned(),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, LedgerError> {
        self.pool.get().await.map_err(|e| LedgerError(format!("cannot get a connection: {e}")))
    }

    /// Runs matching `filter`, most recently updated first, at most `filter.limit`; the
    /// cursor of the last one when there may be more.
    pub async fn list(&self, filter: &RunFilter) -> Result<(Vec<RunRecord>, Option<Cursor>), LedgerError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = Vec::new();
        let mut bind = |clause: &str, value: Box<dyn tokio_postgres::types::ToSql + Sync + Send>| {
            params.push(value);
            clauses.push(clause.replace('?', &format!("${}", params.len())));
        };
        if let Some(v) = &filter.tenant_id {
            bind("tenant_id = ?", Box::new(v.clone()));
        }
        if let Some(v) = &filter.app_id {
            bind("app_id = ?", Box::new(v.clone()));
        }
        if let Some(v) = &filter.query_id {
            bind("query_id = ?", Box::new(v.clone()));
        }
        if let Some(v) = &filter.status {
            bind("state = ?", Box::new(v.clone()));
        }
        if let Some(v) = filter.since {
            bind("updated_at >= ?", Box::new(v));
        }
        if let Some(c) = &filter.after {
            // Keyset: strictly older than the last row of the previous page.
            params.push(Box::new(c.updated_at));
            params.push(Box::new(c.job_id.clone()));
            clauses.push(format!("(updated_at, job_id) < (${}, ${})", params.len() - 1, params.len()));
        }
        let filter_sql = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
        let sql = format!(
            "SELECT job_id, tenant_id, app_id, query_id, nominal_time, state, attempts, lease_owner, lease_expires_at,
                    started_at, finished_at, rows_written, error_class, error_message, updated_at
             FROM {}.runs {filter_sql} ORDER BY updated_at DESC, job_id DESC LIMIT {}",
            self.schema,
            filter.limit + 1
        );
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let rows = self.client().await?.query(&sql, &refs).await.map_err(err("list runs"))?;
        let mut runs: Vec<RunRecord> = rows
            .iter()
            .map(|r| RunRecord {
                job_id: r.get(0),
                tenant_id: r.get(1),
                app_id: r.get(2),
                query_id: r.get(3),
                nominal_time: r.get(4),
                status: r.get(5),
                attempts: r.get::<_, i32>(6) as u32,
                lease_owner: r.get(7),
                lease_expires_at: r.get(8),
                started_at: r.get(9),
                finished_at: r.get(10),
                rows_written: r.get::<_, Option<i64>>(11).map(|n| n.max(0) as u64),
                error_class: r.get(12),
                error_message: r.get(13),
                updated_at: r.get(14),
            })
            .collect();
        let more = runs.len() > filter.limit;
        runs.truncate(filter.limit);
        let cursor =
            more.then(|| runs.last().map(|r| Cursor { updated_at: r.updated_at, job_id: r.job_id.clone() })).flatten();
        Ok((runs, cursor))
    }

    /// Runs left `running` with a lease expired more than `older_than` ago (and not published
    /// again within that time): marks them published again and returns their job messages,
    /// at most `limit`. Workers running this at once each get different runs.
    pub async fn take_stale(&self, older_than: Duration, limit: i64) -> Result<Vec<(String, Vec<u8>)>, LedgerError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "UPDATE {s}.runs SET republished_at = now()
                     WHERE job_id IN (
                         SELECT job_id FROM {s}.runs
                         WHERE state = 'running' AND job_body IS NOT NULL
                           AND lease_expires_at < now() - make_interval(secs => $1)
                           AND (republished_at IS NULL OR republished_at < now() - make_interval(secs => $1))
                         ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                     RETURNING job_id, job_body",
                    s = self.schema
                ),
                &[&secs(older_than), &limit],
            )
            .await
            .map_err(err("take stale runs"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Applies the missing migrations; refuses a schema newer than [`SCHEMA_VERSION`].
    /// Returns the version before and after.
    pub async fn migrate(&self) -> Result<(i32, i32), MigrateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err("begin"))?;
        // One migrator at a time, whatever the schema's name.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('sqo-ledger-migrations'))", &[])
            .await
            .map_err(err("lock the migrations"))?;
        // Created only when missing: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege
        // on the database even when the schema exists, and a worker's role that was given
        // its schema (deploy/sql/worker-role.sql) has none.
        let exists = tx
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&self.schema_name])
            .await
            .map_err(err("look for the ledger schema"))?
            .is_some();
        if !exists {
            tx.batch_execute(&format!("CREATE SCHEMA {}", self.schema))
                .await
                .map_err(err("create the ledger schema"))?;
        }
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {}.schema_version (version integer NOT NULL);",
            self.schema
        ))
        .await
        .map_err(err("create the ledger schema"))?;
        let rows = tx
            .query(&format!("SELECT version FROM {}.schema_version", self.schema), &[])
            .await
            .map_err(err("read the schema version"))?;
        let before: i32 = match rows.first() {
            Some(row) => row.get(0),
            None => {
                tx.execute(&format!("INSERT INTO {}.schema_version (version) VALUES (0)", self.schema), &[])
                    .await
                    .map_err(err("initialise the schema version"))?;
                0
            }
        };
        if before > SCHEMA_VERSION {
            return Err(MigrateError::Newer(format!(
                "the ledger schema {} is at version {before}, newer than this worker knows ({SCHEMA_VERSION}); \
                 run a newer worker",
                self.schema
            )));
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(before as usize) {
            tx.batch_execute(&migration.replace("{schema}", &self.schema))
                .await
                .map_err(|e| LedgerError(format!("migration {}: {e}", i + 1)))?;
        }
        tx.execute(&format!("UPDATE {}.schema_version SET version = $1", self.schema), &[&SCHEMA_VERSION])
            .await
            .map_err(err("record the schema version"))?;
        tx.commit().await.map_err(err("commit the migrations"))?;
        Ok((before, SCHEMA_VERSION))
    }
}

/// What `GET /v1/runs` asks for.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub tenant_id: Option<String>,
    pub app_id: Option<String>,
    pub query_id: Option<String>,
    /// `running`, `succeeded`, `failed` or `skipped`.
    pub status: Option<String>,
    /// Runs updated at or after this time.
    pub since: Option<DateTime<Utc>>,
    pub limit: usize,
    /// The page after this one.
    pub after: Option<Cursor>,
}

/// Where a page ended: the last row's update time and job id.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub updated_at: DateTime<Utc>,
    pub job_id: String,
}

/// One row of the ledger as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    pub job_id: String,
    pub tenant_id: String,
    pub app_id: String,
    pub query_id: String,
    pub nominal_time: DateTime<Utc>,
    pub status: String,
    pub attempts: u32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub rows_written: Option<u64>,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Why the migrations did not run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MigrateError {
    /// The schema is newer than this build: refuse to start.
    #[error("{0}")]
    Newer(String),
    /// The database did not answer or refused a statement: worth retrying.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[async_trait]
impl Ledger for PostgresLedger {
    async fn claim(&self, job: &JobMessage, worker: &str, lease: Duration) -> Result<Claim, LedgerError> {
        let s = &self.schema;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err("begin"))?;
        let schedule = format!("{}\u{1f}{}\u{1f}{}", job.tenant_id, job.app_id, job.query_id);
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&schedule])
            .await
            .map_err(err("lock the schedule"))?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT state, lease_owner, lease_expires_at, lease_expires_at > now() AS live, rows_written,
                            finished_at
                     FROM {s}.runs WHERE job_id = $1 FOR UPDATE"
                ),
                &[&job.job_id.as_str()],
            )
            .await
            .map_err(err("read the run"))?;
        if let Some(row) = &row {
            let state: &str = row.get("state");
            let owner: Option<String> = row.get("lease_owner");
            let live: Option<bool> = row.get("live");
            match state {
                "succeeded" => {
                    let rows: Option<i64> = row.get("rows_written");
                    return Ok(Claim::Succeeded {
                        rows_written: rows.unwrap_or(0).max(0) as u64,
                        finished_at: row.get("finished_at"),
                    });
                }
                "skipped" => return Ok(Claim::Skipped),
                // Live anywhere, this worker included: a duplicate delivery never runs beside the
                // first (a restarted worker has a new identity, so its old leases just expire).
                "running" if live == Some(true) => {
                    return Ok(Claim::RunningElsewhere {
                        owner: owner.unwrap_or_default(),
                        lease_expires_at: row.get("lease_expires_at"),
                    });
                }
                _ => {}
            }
        }
        if job.overlap == Overlap::Skip {
            let previous = tx
                .query_opt(
                    &format!(
                        "SELECT job_id FROM {s}.runs
                         WHERE tenant_id = $1 AND app_id = $2 AND query_id = $3 AND state = 'running'
                           AND nominal_time < $4 AND lease_expires_at > now() AND job_id <> $5
                         ORDER BY nominal_time DESC LIMIT 1"
                    ),
                    &[&job.tenant_id, &job.app_id, &job.query_id, &job.nominal_time, &job.job_id.as_str()],
                )
                .await
                .map_err(err("look for the previous run"))?;
            if let Some(previous) = previous {
                let id: &str = previous.get(0);
                let previous = id.parse().map_err(LedgerError)?;
                tx.commit().await.map_err(err("commit"))?;
                return Ok(Claim::PreviousRunning { previous });
            }
        }
        let attempt: i32 = tx
            .query_one(
                &format!(
                    "INSERT INTO {s}.runs AS r (job_id, tenant_id, app_id, query_id, nominal_time, state, attempts,
                                               lease_owner, lease_expires_at, started_at, job_body)
                     VALUES ($1, $2, $3, $4, $5, 'running', 1, $6, now() + make_interval(secs => $7), now(), $8)
                     ON CONFLICT (job_id) DO UPDATE SET
                         state = 'running', attempts = r.attempts + 1, lease_owner = $6,
                         lease_expires_at = now() + make_interval(secs => $7), started_at = now(),
                         finished_at = NULL, error_class = NULL, error_message = NULL, updated_at = now(),
                         job_body = $8, republished_at = NULL
                     RETURNING attempts"
                ),
                &[
                    &job.job_id.as_str(),
                    &job.tenant_id,
                    &job.app_id,
                    &job.query_id,
                    &job.nominal_time,
                    &worker,
                    &secs(lease),
                    &job.encode(),
                ],
            )
            .await
            .map_err(err("take the lease"))?
            .get(0);
        tx.commit().await.map_err(err("commit the claim"))?;
        Ok(Claim::Run { attempt: attempt.max(1) as u32 })
    }

    async fn extend(&self, job_id: &JobId, worker: &str, lease: Duration) -> Result<bool, LedgerError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &format!(
                    "UPDATE {}.runs SET lease_expires_at = now() + make_interval(secs => $3), updated_at = now()
                     WHERE job_id = $1 AND state = 'running' AND lease_owner = $2",
                    self.schema
                ),
                &[&job_id.as_str(), &worker, &secs(lease)],
            )
            .await
            .map_err(err("extend the lease"))?;
        Ok(n == 1)
    }

    async fn finish(&self, job: &JobMessage, _worker: &str, outcome: &Outcome) -> Result<(), LedgerError> {
        let (rows, class, message): (Option<i64>, Option<&str>, Option<String>) = match outcome {
            Outcome::Succeeded { rows_written } => (Some(*rows_written as i64), None, None),
            Outcome::Failed { class, message } => (None, Some(class.as_str()), Some(crate::truncate(message, 4096))),
            Outcome::Skipped { reason } => (None, None, Some(crate::truncate(reason, 4096))),
        };
        let client = self.client().await?;
        client
            .execute(
                &format!(
                    "INSERT INTO {}.runs AS r (job_id, tenant_id, app_id, query_id, nominal_time, state, attempts,
                                              rows_written, error_class, error_message, finished_at)
                     VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, now())
                     ON CONFLICT (job_id) DO UPDATE SET
                         state = $6, rows_written = $7, error_class = $8, error_message = $9, finished_at = now(),
                         lease_owner = NULL, lease_expires_at = NULL, updated_at = now(), job_body = NULL",
                    self.schema
                ),
                &[
                    &job.job_id.as_str(),
                    &job.tenant_id,
                    &job.app_id,
                    &job.query_id,
                    &job.nominal_time,
                    &outcome.state(),
                    &rows,
                    &class,
                    &message,
                ],
            )
            .await
            .map_err(err("record the outcome"))?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        self.client().await?.simple_query("SELECT 1").await.map_err(err("ping"))?;
        Ok(())
    }
}
