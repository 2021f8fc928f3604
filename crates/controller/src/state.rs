//! The controller's persistent state: the **watermark** (every run placed at or before it is
//! confirmed published), the **last good catalog** (in the catalog file's form), the leader's
//! lease and the **pauses**. In
//! PostgreSQL (`state.url`, schema `state.schema`) in production; in memory — nothing survives
//! a restart — when no database is configured (development, standalone).
//!
//! Migrations run at start-up in a transaction under an advisory lock; a schema newer than
//! this build is refused.

use crate::pauses::PauseKey;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use service_kit::Secret;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;
use tokio_postgres::NoTls;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The schema is newer than this build: refuse to start.
    #[error("{0}")]
    Newer(String),
    #[error("controller state: {0}")]
    Db(String),
}

/// A saved catalog: its catalog-file JSON and when it was saved.
#[derive(Debug, Clone)]
pub struct SavedCatalog {
    pub json: Vec<u8>,
    pub saved_at: DateTime<Utc>,
    pub schedules: i64,
}

/// Who leads.
#[derive(Debug, Clone, PartialEq)]
pub enum Leadership {
    /// This replica holds the lease until then.
    Leader { until: DateTime<Utc> },
    /// Another replica does.
    Standby { holder: String, until: DateTime<Utc> },
}

#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Takes or renews the leader's lease for `holder` when it is free, expired or already
    /// `holder`'s.
    async fn lead(&self, holder: &str, ttl: Duration) -> Result<Leadership, StateError>;
    /// Gives the lease up (at shutdown), so a standby takes over at once.
    async fn resign(&self, holder: &str) -> Result<(), StateError>;
    /// Prepares the store (migrations); returns a description for the log.
    async fn open(&self) -> Result<String, StateError>;
    async fn watermark(&self) -> Result<Option<DateTime<Utc>>, StateError>;
    async fn save_watermark(&self, at: DateTime<Utc>) -> Result<(), StateError>;
    async fn catalog(&self) -> Result<Option<SavedCatalog>, StateError>;
    async fn save_catalog(&self, json: &[u8], schedules: usize) -> Result<(), StateError>;
    /// Every pause in force, with when it was taken.
    async fn pauses(&self) -> Result<BTreeMap<PauseKey, DateTime<Utc>>, StateError>;
    /// Pauses `key` (`paused`) or resumes it; returns when it was paused, if it is.
    async fn set_paused(&self, key: &PauseKey, paused: bool) -> Result<Option<DateTime<Utc>>, StateError>;
}

/// Nothing persisted: a restart starts from now and from the platform.
#[derive(Default)]
pub struct MemoryState {
    watermark: Mutex<Option<DateTime<Utc>>>,
    catalog: Mutex<Option<SavedCatalog>>,
    pauses: Mutex<BTreeMap<PauseKey, DateTime<Utc>>>,
}

#[async_trait]
impl StateStore for MemoryState {
    async fn lead(&self, _holder: &str, ttl: Duration) -> Result<Leadership, StateError> {
        Ok(Leadership::Leader { until: Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default() })
    }
    async fn resign(&self, _holder: &str) -> Result<(), StateError> {
        Ok(())
    }
    async fn open(&self) -> Result<String, StateError> {
        Ok("in memory (state.url is not set): no catch-up or last good catalog across restarts".into())
    }
    async fn watermark(&self) -> Result<Option<DateTime<Utc>>, StateError> {
        Ok(*self.watermark.lock().unwrap_or_else(|p| p.into_inner()))
    }
    async fn save_watermark(&self, at: DateTime<Utc>) -> Result<(), StateError> {
        *self.watermark.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
        Ok(())
    }
    async fn catalog(&self) -> Result<Option<SavedCatalog>, StateError> {
        Ok(self.catalog.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    async fn save_catalog(&self, json: &[u8], schedules: usize) -> Result<(), StateError> {
        *self.catalog.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(SavedCatalog { json: json.to_vec(), saved_at: Utc::now(), schedules: schedules as i64 });
        Ok(())
    }
    async fn pauses(&self) -> Result<BTreeMap<PauseKey, DateTime<Utc>>, StateError> {
        Ok(self.pauses.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    async fn set_paused(&self, key: &PauseKey, paused: bool) -> Result<Option<DateTime<Utc>>, StateError> {
        let mut pauses = self.pauses.lock().unwrap_or_else(|p| p.into_inner());
        if paused {
            Ok(Some(*pauses.entry(key.clone()).or_insert_with(Utc::now)))
        } else {
            pauses.remove(key);
            Ok(None)
        }
    }
}

/// The migrations, in order. `{schema}` is the quoted schema.
pub const MIGRATIONS: &[&str] = &[
    // 1: watermark and last good catalog, one row each.
    "CREATE TABLE {schema}.watermark (
        id integer PRIMARY KEY CHECK (id = 1),
        at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE {schema}.last_good_catalog (
        id integer PRIMARY KEY CHECK (id = 1),
        body bytea NOT NULL,
        schedules bigint NOT NULL,
        saved_at timestamptz NOT NULL DEFAULT now()
    );",
    // 2: the leader's lease (one row).
    "CREATE TABLE {schema}.leader (
        id integer PRIMARY KEY CHECK (id = 1),
        holder text NOT NULL,
        expires_at timestamptz NOT NULL,
        acquired_at timestamptz NOT NULL DEFAULT now()
    );",
    // 3: pauses (a tenant: app_id and query_id empty).
    "CREATE TABLE {schema}.pauses (
        tenant_id text NOT NULL,
        app_id text NOT NULL DEFAULT '',
        query_id text NOT NULL DEFAULT '',
        paused_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, app_id, query_id)
    );",
];

pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

pub struct PostgresState {
    pool: Pool,
    schema: String,
}

fn db(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StateError {
    move |e| StateError::Db(format!("{what}: {e}"))
}

impl PostgresState {
    pub fn new(url: &Secret, schema: &str) -> Result<Self, StateError> {
        let config = tokio_postgres::Config::from_str(url.expose())
            .map_err(|e| StateError::Db(format!("invalid PostgreSQL connection string: {e}")))?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(2)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(10)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| StateError::Db(format!("cannot build the pool: {e}")))?;
        Ok(PostgresState { pool, schema: format!("\"{}\"", schema.replace('"', "\"\"")) })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StateError> {
        self.pool.get().await.map_err(|e| StateError::Db(format!("cannot get a connection: {e}")))
    }
}

#[async_trait]
impl StateStore for PostgresState {
    async fn lead(&self, holder: &str, ttl: Duration) -> Result<Leadership, StateError> {
        let s = &self.schema;
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO {s}.leader AS l (id, holder, expires_at) VALUES (1, $1, now() + make_interval(secs => $2))
                     ON CONFLICT (id) DO UPDATE SET
                         holder = $1,
                         expires_at = now() + make_interval(secs => $2),
                         acquired_at = CASE WHEN l.holder = $1 THEN l.acquired_at ELSE now() END
                     WHERE l.holder = $1 OR l.expires_at < now()
                     RETURNING holder, expires_at"
                ),
                &[&holder, &ttl.as_secs_f64()],
            )
            .await
            .map_err(db("take the leader's lease"))?;
        if let Some(row) = row {
            return Ok(Leadership::Leader { until: row.get(1) });
        }
        // The conditional update matched nothing: another replica holds a live lease.
        let row = client
            .query_one(&format!("SELECT holder, expires_at FROM {s}.leader WHERE id = 1"), &[])
            .await
            .map_err(db("read the leader"))?;
        Ok(Leadership::Standby { holder: row.get(0), until: row.get(1) })
    }

    async fn resign(&self, holder: &str) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                &format!("UPDATE {}.leader SET expires_at = now() WHERE id = 1 AND holder = $1", self.schema),
                &[&holder],
            )
            .await
            .map_err(db("give the lease up"))?;
        Ok(())
    }

    async fn open(&self) -> Result<String, StateError> {
        let s = &self.schema;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db("begin"))?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('sqo-controller-migrations'))", &[])
            .await
            .map_err(db("lock the migrations"))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_version (version integer NOT NULL);"
        ))
        .await
        .map_err(db("create the state schema"))?;
        let before: i32 = match tx
            .query_opt(&format!("SELECT version FROM {s}.schema_version"), &[])
            .await
            .map_err(db("read the schema version"))?
        {
            Some(row) => row.get(0),
            None => {
                tx.execute(&format!("INSERT INTO {s}.schema_version VALUES (0)"), &[])
                    .await
                    .map_err(db("initialise the schema version"))?;
                0
            }
        };
        if before > SCHEMA_VERSION {
            return Err(StateError::Newer(format!(
                "the controller state schema {s} is at version {before}, newer than this controller knows \
                 ({SCHEMA_VERSION}); run a newer controller"
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(before as usize) {
            tx.batch_execute(&m.replace("{schema}", s))
                .await
                .map_err(|e| StateError::Db(format!("migration {}: {e}", i + 1)))?;
        }
        tx.execute(&format!("UPDATE {s}.schema_version SET version = $1"), &[&SCHEMA_VERSION])
            .await
            .map_err(db("record the schema version"))?;
        tx.commit().await.map_err(db("commit the migrations"))?;
        Ok(format!("PostgreSQL schema {s} at version {SCHEMA_VERSION} (was {before})"))
    }

    async fn watermark(&self) -> Result<Option<DateTime<Utc>>, StateError> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("SELECT at FROM {}.watermark WHERE id = 1", self.schema), &[])
            .await
            .map_err(db("read the watermark"))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn save_watermark(&self, at: DateTime<Utc>) -> Result<(), StateError> {
        // Never backwards: a slower writer cannot undo a newer watermark.
        self.client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {s}.watermark (id, at) VALUES (1, $1)
                     ON CONFLICT (id) DO UPDATE SET at = GREATEST({s}.watermark.at, $1), updated_at = now()",
                    s = self.schema
                ),
                &[&at],
            )
            .await
            .map_err(db("save the watermark"))?;
        Ok(())
    }

    async fn catalog(&self) -> Result<Option<SavedCatalog>, StateError> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT body, saved_at, schedules FROM {}.last_good_catalog WHERE id = 1", self.schema),
                &[],
            )
            .await
            .map_err(db("read the last good catalog"))?;
        Ok(row.map(|r| SavedCatalog { json: r.get(0), saved_at: r.get(1), schedules: r.get(2) }))
    }

    async fn save_catalog(&self, json: &[u8], schedules: usize) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {}.last_good_catalog (id, body, schedules) VALUES (1, $1, $2)
                     ON CONFLICT (id) DO UPDATE SET body = $1, schedules = $2, saved_at = now()",
                    self.schema
                ),
                &[&json, &(schedules as i64)],
            )
            .await
            .map_err(db("save the last good catalog"))?;
        Ok(())
    }

    async fn pauses(&self) -> Result<BTreeMap<PauseKey, DateTime<Utc>>, StateError> {
        let rows = self
            .client()
            .await?
            .query(&format!("SELECT tenant_id, app_id, query_id, paused_at FROM {}.pauses", self.schema), &[])
            .await
            .map_err(db("read the pauses"))?;
        Ok(rows
            .iter()
            .map(|r| (PauseKey { tenant_id: r.get(0), app_id: r.get(1), query_id: r.get(2) }, r.get(3)))
            .collect())
    }

    async fn set_paused(&self, key: &PauseKey, paused: bool) -> Result<Option<DateTime<Utc>>, StateError> {
        let client = self.client().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&key.tenant_id, &key.app_id, &key.query_id];
        if paused {
            // A second pause keeps the first one's time.
            let row = client
                .query_one(
                    &format!(
                        "INSERT INTO {s}.pauses (tenant_id, app_id, query_id) VALUES ($1, $2, $3)
                         ON CONFLICT (tenant_id, app_id, query_id) DO UPDATE SET paused_at = {s}.pauses.paused_at
                         RETURNING paused_at",
                        s = self.schema
                    ),
                    &params,
                )
                .await
                .map_err(db("save a pause"))?;
            Ok(Some(row.get(0)))
        } else {
            client
                .execute(
                    &format!(
                        "DELETE FROM {}.pauses WHERE tenant_id = $1 AND app_id = $2 AND query_id = $3",
                        self.schema
                    ),
                    &params,
                )
                .await
                .map_err(db("remove a pause"))?;
            Ok(None)
        }
    }
}
