//! The PostgreSQL engine. Each tenant's data lives in its own schema (name from a template
//! such as `tenant_{tenant_id}`), owned by the tenant's own login role (`tenant_{tenant_id}`
//! too by default). A run connects *as that role*, with a password derived from the engine's
//! `tenant_password_key` and the role's name, so that everything it does, it does with the
//! tenant's privileges and no one else's. The query runs with the tenant's schema as
//! `search_path`, in a read-only transaction, with `statement_timeout` from the job's timeout
//! and the named parameters bound as typed parameters; the rows are read up to the run's
//! result limits. They are then written to the destination table in the same schema, in one
//! transaction: delete the rows tagged with this job id, insert the new ones. The table is
//! created from the result's columns when it does not exist.
//!
//! Why a login per tenant rather than one worker login that switches roles (`SET LOCAL ROLE`):
//! a role switch can be undone by the query itself, since what a session may switch to is
//! decided by its login. Under a switched role, one statement such as
//! `SELECT set_config('role', 'tenant_b', true), query_to_xml('SELECT * FROM tenant_b.t', ...)`
//! reads another tenant's table (shown on PostgreSQL 15 while building this). A tenant's
//! login role is a member of nothing, so there is nothing to switch to.

use super::{Engine, ResultLimits, RunError, RunOutput};
use crate::params;
use async_trait::async_trait;
use base64::Engine as _;
use bytes::BytesMut;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::TryStreamExt;
use hmac::{Hmac, KeyInit, Mac};
use jobs_core::JobMessage;
use service_kit::Secret;
use sha2::Sha256;
use std::error::Error as StdError;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_postgres::NoTls;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

/// Metadata columns every destination table carries.
pub const JOB_ID_COLUMN: &str = "_job_id";
pub const SCHEDULED_FOR_COLUMN: &str = "_scheduled_for";

/// Types of the six named parameters, in [`params::NAMES`] order.
const PARAM_TYPES: [Type; 6] =
    [Type::TEXT, Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ];

/// Where a tenant's queries run: its schema and the role they log in as. `{tenant_id}` in
/// either template is replaced by the tenant's id.
#[derive(Debug, Clone)]
pub struct TenantScope {
    pub schema_template: String,
    /// `None`: runs use the engine's own login (no isolation between tenants beyond
    /// `search_path`; the worker warns at start).
    pub logins: Option<TenantLogins>,
}

/// Per-tenant logins: the role's name from a template, its password derived from a key.
#[derive(Debug, Clone)]
pub struct TenantLogins {
    pub role_template: String,
    pub password_key: Secret,
    /// During a rotation, the key before `password_key`: a login refused with the new
    /// password is tried again with the old one, until every role has its new password.
    pub previous_key: Option<Secret>,
}

impl TenantLogins {
    /// The role `tenant_id` logs in as.
    pub fn role_for(&self, tenant_id: &str) -> String {
        self.role_template.replace("{tenant_id}", tenant_id)
    }

    /// The password of `role`: HMAC-SHA256 of the role's name under the key, in URL-safe
    /// base64 (43 characters). What `worker tenant-password` prints for provisioning.
    pub fn password_for(&self, role: &str) -> Secret {
        derive_password(&self.password_key, role)
    }
}

fn derive_password(key: &Secret, role: &str) -> Secret {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose().as_bytes()).expect("any key length");
    mac.update(b"sqo tenant login\n");
    mac.update(role.as_bytes());
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

pub struct PostgresEngine {
    /// The engine's own login: `ping`, and the runs when there are no tenant logins.
    pool: Pool,
    /// The connection string, for the tenant logins (user and password replaced).
    config: tokio_postgres::Config,
    /// Tenant connections open at once (`pool_size`).
    tenant_connections: Semaphore,
    scope: TenantScope,
    limits: ResultLimits,
}

impl PostgresEngine {
    /// A pool of at most `pool_size` connections; connections open on first use. With tenant
    /// logins, each run opens its own connection as its tenant, at most `pool_size` at once.
    pub fn new(url: &Secret, pool_size: usize, scope: TenantScope, limits: ResultLimits) -> Result<Self, String> {
        Ok(PostgresEngine {
            pool: pool(url, pool_size)?,
            config: parse_url(url)?,
            tenant_connections: Semaphore::new(pool_size.max(1)),
            scope,
            limits,
        })
    }

    /// The tenant's schema name.
    pub fn schema_for(&self, tenant_id: &str) -> String {
        self.scope.schema_template.replace("{tenant_id}", tenant_id)
    }

    /// A connection for `tenant_id`'s run: logged in as the tenant's role, or from the pool.
    async fn connect(&self, tenant_id: &str) -> Result<Connection<'_>, RunError> {
        let Some(logins) = &self.scope.logins else {
            let client = self
                .pool
                .get()
                .await
                .map_err(|e| RunError::retryable(format!("cannot get a database connection: {e}")))?;
            return Ok(Connection::Pooled(client));
        };
        let role = logins.role_for(tenant_id);
        check_identifier("role", &role)?;
        let permit =
            self.tenant_connections.acquire().await.map_err(|_| RunError::retryable("the engine is shutting down"))?;
        let login = |key: &Secret| {
            let mut config = self.config.clone();
            config.user(&role).password(derive_password(key, &role).expose()).connect_timeout(Duration::from_secs(10));
            async move { config.connect(NoTls).await }
        };
        let attempt = match (login(&logins.password_key).await, &logins.previous_key) {
            (Err(e), Some(previous)) if sqlstate(&e) == Some("28P01") => {
                let old = login(previous).await;
                if old.is_ok() {
                    tracing::info!(role = %role, "tenant logged in with the previous password key; give it its new password");
                }
                old
            }
            (result, _) => result,
        };
        let (client, connection) = attempt.map_err(|e| login_error(e, &role))?;
        tokio::spawn(async move {
            // Ends when the client is dropped.
            let _ = connection.await;
        });
        Ok(Connection::Tenant(client, permit))
    }
}

/// A run's connection.
enum Connection<'a> {
    Pooled(deadpool_postgres::Object),
    Tenant(tokio_postgres::Client, #[allow(dead_code)] tokio::sync::SemaphorePermit<'a>),
}

impl Connection<'_> {
    fn client(&mut self) -> &mut tokio_postgres::Client {
        match self {
            Connection::Pooled(object) => object,
            Connection::Tenant(client, _) => client,
        }
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// A refused tenant login says what to provision; anything else is classified as usual.
fn login_error(e: tokio_postgres::Error, role: &str) -> RunError {
    match sqlstate(&e) {
        Some("28P01" | "28000") => RunError::permanent(format!(
            "cannot log in as the tenant's role {role:?} ({}): provision it with the password \
             `worker tenant-password` prints (README: Tenant isolation)",
            e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned())
        )),
        _ => classify(e, "connect as the tenant's role"),
    }
}

fn parse_url(url: &Secret) -> Result<tokio_postgres::Config, String> {
    tokio_postgres::Config::from_str(url.expose()).map_err(|e| format!("invalid PostgreSQL connection string: {e}"))
}

/// A pool of at most `size` connections to `url`, opened on first use (the engine's and the
/// run ledger's).
pub fn pool(url: &Secret, size: usize) -> Result<Pool, String> {
    let config = parse_url(url)?;
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(10)))
        .wait_timeout(Some(Duration::from_secs(30)))
        .build()
        .map_err(|e| format!("cannot build the PostgreSQL pool: {e}"))
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `Err` unless `name` can be a PostgreSQL identifier (1 to 63 bytes, no NUL).
fn check_identifier(what: &str, name: &str) -> Result<(), RunError> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(RunError::permanent(format!("{what} name {name:?} is not a valid PostgreSQL identifier")));
    }
    Ok(())
}

#[async_trait]
impl Engine for PostgresEngine {
    async fn run(&self, job: &JobMessage, _attempt: u32) -> Result<RunOutput, RunError> {
        let schema = self.schema_for(&job.tenant_id);
        check_identifier("schema", &schema)?;
        let mut connection = self.connect(&job.tenant_id).await?;
        let client = connection.client();

        // 1. The query, read-only, in the tenant's schema.
        let result = {
            let tx = client
                .build_transaction()
                .read_only(true)
                .start()
                .await
                .map_err(|e| classify(e, "begin read-only transaction"))?;
            let timeout_ms = job.timeout_secs.saturating_mul(1000).to_string();
            tx.execute(
                "SELECT set_config('search_path', $1, true), set_config('statement_timeout', $2, true), \
                 set_config('TimeZone', 'UTC', true)",
                &[&quote_ident(&schema), &timeout_ms],
            )
            .await
            .map_err(|e| classify(e, "set the session scope"))?;
            let sql = params::rewrite(&job.sql, |i| format!("${}", i + 1));
            let statement = tx.prepare_typed(&sql, &PARAM_TYPES).await.map_err(|e| classify(e, "query"))?;
            let columns: Vec<(String, Type)> =
                statement.columns().iter().map(|c| (c.name().to_owned(), c.type_().clone())).collect();
            check_columns(&columns)?;
            let values = params::values(job);
            let bound: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|v| match v {
                    params::ParamValue::Text(s) => s as &(dyn ToSql + Sync),
                    params::ParamValue::Timestamp(t) => t as &(dyn ToSql + Sync),
                })
                .collect();
            // Read row by row, so a result over the limits stops at the first row past them.
            let stream = tx.query_raw(&statement, bound).await.map_err(|e| classify(e, "query"))?;
            futures::pin_mut!(stream);
            let mut rows = Vec::new();
            let mut bytes = 0usize;
            while let Some(row) = stream.try_next().await.map_err(|e| classify(e, "query"))? {
                let cells = read_row(&row, &columns)?;
                bytes = bytes.saturating_add(cells.iter().map(Value::size).sum::<usize>());
                rows.push(cells);
                self.limits.check(&job.engine, rows.len(), bytes)?;
            }
            tx.rollback().await.map_err(|e| classify(e, "end read-only transaction"))?;
            Table { columns, rows }
        };

        // 2. The idempotent write.
        let written = write(client, &schema, job, &result).await?;
        Ok(RunOutput::rows(written))
    }

    async fn ping(&self) -> Result<(), RunError> {
        let client =
            self.pool.get().await.map_err(|e| RunError::retryable(format!("cannot get a database connection: {e}")))?;
        client.simple_query("SELECT 1").await.map_err(|e| classify(e, "ping"))?;
        Ok(())
    }
}

/// A result set held between the read and the write.
#[derive(Debug)]
struct Table {
    columns: Vec<(String, Type)>,
    rows: Vec<Vec<Value>>,
}

/// One cell, typed as the query produced it.
#[derive(Debug, Clone)]
enum Value {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Numeric(String),
    Text(String),
    Timestamptz(DateTime<Utc>),
    Timestamp(NaiveDateTime),
    Date(NaiveDate),
    Json(serde_json::Value),
}

impl Value {
    /// The bytes this value counts for against `max_result_bytes`.
    fn size(&self) -> usize {
        match self {
            Value::Null | Value::Bool(_) => 1,
            Value::Numeric(s) | Value::Text(s) => s.len(),
            Value::Json(v) => serde_json::to_vec(v).map_or(0, |b| b.len()),
            _ => 8,
        }
    }
}

/// The DDL type a result column is stored as, or `None` when unsupported.
fn storage_type(ty: &Type) -> Option<&'static str> {
    Some(match *ty {
        Type::BOOL => "boolean",
        Type::INT2 => "smallint",
        Type::INT4 => "integer",
        Type::INT8 => "bigint",
        Type::FLOAT4 => "real",
        Type::FLOAT8 => "double precision",
        Type::NUMERIC => "numeric",
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => "text",
        Type::TIMESTAMPTZ => "timestamptz",
        Type::TIMESTAMP => "timestamp",
        Type::DATE => "date",
        Type::JSON => "json",
        Type::JSONB => "jsonb",
        _ => return None,
    })
}

/// `Err` when the result cannot be stored: an unsupported type, a reserved or repeated name.
fn check_columns(columns: &[(String, Type)]) -> Result<(), RunError> {
    let mut seen = std::collections::HashSet::new();
    for (name, ty) in columns {
        if storage_type(ty).is_none() {
            return Err(RunError::permanent(format!(
                "column {name:?} has type {ty}, which the worker cannot store; cast it (e.g. {name}::text)"
            )));
        }
        if name == JOB_ID_COLUMN || name == SCHEDULED_FOR_COLUMN {
            return Err(RunError::permanent(format!("column name {name:?} is reserved for the worker's metadata")));
        }
        if !seen.insert(name.as_str()) {
            return Err(RunError::permanent(format!("the query returns two columns named {name:?}; alias them")));
        }
    }
    Ok(())
}

fn read_row(row: &tokio_postgres::Row, columns: &[(String, Type)]) -> Result<Vec<Value>, RunError> {
    columns
        .iter()
        .enumerate()
        .map(|(i, (name, ty))| {
            read_cell(row, i, ty).map_err(|e| RunError::permanent(format!("cannot read column {name:?} ({ty}): {e}")))
        })
        .collect()
}

fn read_cell(row: &tokio_postgres::Row, i: usize, ty: &Type) -> Result<Value, tokio_postgres::Error> {
    fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
        v.map_or(Value::Null, f)
    }
    Ok(match *ty {
        Type::BOOL => opt(row.try_get(i)?, Value::Bool),
        Type::INT2 => opt(row.try_get(i)?, Value::I16),
        Type::INT4 => opt(row.try_get(i)?, Value::I32),
        Type::INT8 => opt(row.try_get(i)?, Value::I64),
        Type::FLOAT4 => opt(row.try_get(i)?, Value::F32),
        Type::FLOAT8 => opt(row.try_get(i)?, Value::F64),
        Type::NUMERIC => opt(row.try_get::<_, Option<NumericText>>(i)?, |n| Value::Numeric(n.0)),
        Type::TIMESTAMPTZ => opt(row.try_get(i)?, Value::Timestamptz),
        Type::TIMESTAMP => opt(row.try_get(i)?, Value::Timestamp),
        Type::DATE => opt(row.try_get(i)?, Value::Date),
        Type::JSON | Type::JSONB => opt(row.try_get(i)?, Value::Json),
        _ => opt(row.try_get(i)?, Value::Text),
    })
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        fn checked<T: ToSql>(v: &T, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
            if !T::accepts(ty) {
                return Err(format!(
                    "the destination column has type {ty}, which does not match the query's {}",
                    std::any::type_name::<T>()
                )
                .into());
            }
            v.to_sql(ty, out)
        }
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Bool(v) => checked(v, ty, out),
            Value::I16(v) => checked(v, ty, out),
            Value::I32(v) => checked(v, ty, out),
            Value::I64(v) => checked(v, ty, out),
            Value::F32(v) => checked(v, ty, out),
            Value::F64(v) => checked(v, ty, out),
            // Sent as text and cast in SQL (`$n::text::numeric`): exact, any precision.
            Value::Numeric(v) | Value::Text(v) => checked(v, ty, out),
            Value::Timestamptz(v) => checked(v, ty, out),
            Value::Timestamp(v) => checked(v, ty, out),
            Value::Date(v) => checked(v, ty, out),
            Value::Json(v) => checked(v, ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A `numeric` decoded from PostgreSQL's binary format into its exact decimal text.
struct NumericText(String);

impl<'a> FromSql<'a> for NumericText {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        numeric_to_string(raw).map(NumericText)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

fn numeric_to_string(raw: &[u8]) -> Result<String, Box<dyn StdError + Sync + Send>> {
    let word = |i: usize| -> Result<u16, Box<dyn StdError + Sync + Send>> {
        raw.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or_else(|| "truncated numeric".into())
    };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<u16> = (0..ndigits).map(|i| word(8 + 2 * i)).collect::<Result<_, _>>()?;
    let digit_at =
        |index: i32| -> u16 { if index >= 0 { digits.get(index as usize).copied().unwrap_or(0) } else { 0 } };
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                text.push_str(&digit_at(i).to_string());
            } else {
                text.push_str(&format!("{:04}", digit_at(i)));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut index = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit_at(index)));
            index += 1;
        }
        frac.truncate(dscale);
        text.push('.');
        text.push_str(&frac);
    }
    Ok(text)
}

async fn write(
    client: &mut tokio_postgres::Client,
    schema: &str,
    job: &JobMessage,
    table: &Table,
) -> Result<u64, RunError> {
    let (destination, job_id, scheduled_for) = (job.destination.as_str(), job.job_id.as_str(), job.nominal_time);
    jobs_core::names::check_destination(destination)
        .map_err(|r| RunError::permanent(format!("destination {destination:?} {r}")))?;
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(destination));
    let tx = client.transaction().await.map_err(|e| classify(e, "begin write transaction"))?;
    // Serialises writers of one table: two deliveries of the same run cannot both insert,
    // and concurrent CREATE TABLE IF NOT EXISTS cannot collide.
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&qualified])
        .await
        .map_err(|e| classify(e, "lock the destination"))?;
    let column_ddl: Vec<String> = table
        .columns
        .iter()
        .map(|(name, ty)| format!("{} {}", quote_ident(name), storage_type(ty).unwrap_or("text")))
        .collect();
    let mut ddl = format!(
        "CREATE TABLE IF NOT EXISTS {qualified} ({} text NOT NULL, {} timestamptz NOT NULL",
        quote_ident(JOB_ID_COLUMN),
        quote_ident(SCHEDULED_FOR_COLUMN)
    );
    for c in &column_ddl {
        ddl.push_str(", ");
        ddl.push_str(c);
    }
    ddl.push(')');
    tx.batch_execute(&ddl).await.map_err(|e| classify(e, "create the destination table"))?;
    let index_name = quote_ident(&format!("{}__job_id_idx", &destination[..destination.len().min(50)]));
    tx.batch_execute(&format!(
        "CREATE INDEX IF NOT EXISTS {index_name} ON {qualified} ({})",
        quote_ident(JOB_ID_COLUMN)
    ))
    .await
    .map_err(|e| classify(e, "index the destination table"))?;
    tx.execute(&format!("DELETE FROM {qualified} WHERE {} = $1", quote_ident(JOB_ID_COLUMN)), &[&job_id])
        .await
        .map_err(|e| classify(e, "delete the previous rows of this run"))?;

    let per_row = table.columns.len() + 2;
    let chunk_rows = (60_000 / per_row).clamp(1, 1000);
    let column_list: Vec<String> = [JOB_ID_COLUMN, SCHEDULED_FOR_COLUMN]
        .iter()
        .map(|c| quote_ident(c))
        .chain(table.columns.iter().map(|(name, _)| quote_ident(name)))
        .collect();
    let mut written = 0u64;
    for chunk in table.rows.chunks(chunk_rows) {
        let mut sql = format!("INSERT INTO {qualified} ({}) VALUES ", column_list.join(", "));
        let mut bound: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(chunk.len() * per_row);
        for (r, row) in chunk.iter().enumerate() {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..per_row {
                let n = bound.len() + 1;
                if c > 0 {
                    sql.push_str(", ");
                }
                let numeric = c >= 2 && table.columns[c - 2].1 == Type::NUMERIC;
                if numeric {
                    sql.push_str(&format!("${n}::text::numeric"));
                } else {
                    sql.push_str(&format!("${n}"));
                }
                match c {
                    0 => bound.push(&job_id),
                    1 => bound.push(&scheduled_for),
                    _ => bound.push(&row[c - 2]),
                }
            }
            sql.push(')');
        }
        written += tx.execute(&sql, &bound).await.map_err(|e| classify(e, "insert the result rows"))?;
    }
    tx.commit().await.map_err(|e| classify(e, "commit the result rows"))?;
    Ok(written)
}

/// Connection trouble, timeouts, serialization failures and resource exhaustion are worth
/// another attempt; everything else (syntax, missing relations, permissions, data) is not.
fn classify(e: tokio_postgres::Error, step: &str) -> RunError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let message = format!("{step}: {} (SQLSTATE {code})", db.message());
        let retryable = code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || matches!(code, "57014" | "40001" | "40P01" | "55P03");
        return if retryable { RunError::retryable(message) } else { RunError::permanent(message) };
    }
    let mut io = e.is_closed();
    let mut source = e.source();
    while let Some(s) = source {
        io |= s.downcast_ref::<std::io::Error>().is_some();
        source = s.source();
    }
    if io {
        RunError::retryable(format!("{step}: connection lost: {e}"))
    } else {
        RunError::permanent(format!("{step}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = vec![];
        for w in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_decode_to_exact_text() {
        assert_eq!(numeric_to_string(&encode(2, 1, 0, 0, &[12, 3456])).expect("ok"), "123456");
        assert_eq!(numeric_to_string(&encode(2, 0, 0, 2, &[7, 5000])).expect("ok"), "7.50");
        assert_eq!(numeric_to_string(&encode(1, -1, 0x4000, 3, &[120])).expect("ok"), "-0.012");
        assert_eq!(numeric_to_string(&encode(1, -2, 0, 6, &[500])).expect("ok"), "0.000005");
        assert_eq!(numeric_to_string(&encode(0, 0, 0, 0, &[])).expect("ok"), "0");
        assert_eq!(numeric_to_string(&encode(1, 2, 0, 0, &[1])).expect("ok"), "100000000");
        assert_eq!(numeric_to_string(&encode(0, 0, 0xC000, 0, &[])).expect("ok"), "NaN");
        assert!(numeric_to_string(&[0, 1]).is_err());
    }

    #[test]
    fn tenant_passwords_are_stable_distinct_and_keyed() {
        let logins = TenantLogins {
            role_template: "tenant_{tenant_id}".into(),
            password_key: Secret::new("k1"),
            previous_key: None,
        };
        let acme = logins.password_for(&logins.role_for("acme"));
        assert_eq!(acme.expose(), logins.password_for("tenant_acme").expose(), "stable");
        assert_eq!(acme.expose().len(), 43);
        assert_ne!(acme.expose(), logins.password_for("tenant_globex").expose(), "one per role");
        let other = TenantLogins { password_key: Secret::new("k2"), ..logins };
        assert_ne!(acme.expose(), other.password_for("tenant_acme").expose(), "depends on the key");
    }

    #[test]
    fn identifiers_are_quoted_safely() {
        assert_eq!(quote_ident("tenant_acme"), "\"tenant_acme\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
