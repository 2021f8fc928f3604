//! The BigQuery engine, over the REST API v2. Each tenant's data lives in its own dataset
//! (name from a template such as `tenant_{tenant_id}`); a run goes in three steps:
//!
//! 1. **Dry run** of the tenant's query with its dataset as the default dataset and the
//!    named parameters bound as BigQuery query parameters. It costs nothing and tells the
//!    result's schema, the statement type (anything but one `SELECT` is refused, so the query
//!    cannot be a script or DML) and the tables it reads (any outside the tenant's dataset is
//!    refused).
//! 2. The **destination table** is created when missing, from that schema plus the two
//!    metadata columns `_job_id` and `_scheduled_for`, partitioned by `_scheduled_for`.
//! 3. One **`MERGE` job** replaces this run's rows, atomically, in the partition of the run's
//!    nominal time: it deletes the rows tagged with the job id and inserts the query's. A
//!    re-run of the same job therefore replaces its rows and never adds a second copy. The job
//!    id is `sqo_{job_id}_{attempt}`, so an insert retried after a lost answer finds the job
//!    it started (409) instead of starting a second one. The engine polls `jobs.get` with
//!    backoff and cancels the job when the run's timeout passes or the run is abandoned.
//!
//! Why a `MERGE` rather than a query job with a destination table and `WRITE_TRUNCATE` on
//! the partition: the `MERGE` replaces exactly the run's rows, so several queries may share a
//! table and a schedule may fire more often than its table's partitions; and the BigQuery
//! emulator the tests run on (bqemulator 1.4.0) does not write query results to a
//! `destinationTable` at all, while it runs `MERGE` as BigQuery does.
//!
//! Credentials: Application Default Credentials (Workload Identity on GKE) through
//! `google-cloud-auth`; `BIGQUERY_EMULATOR_HOST` selects the emulator and anonymous
//! credentials, the pattern of `PUBSUB_EMULATOR_HOST`.

use super::{Engine, RunError, RunOutput};
use crate::params::{self, ParamValue};
use crate::settings::Partitioning;
use async_trait::async_trait;
use google_cloud_auth::credentials::AccessTokenCredentials;
use jobs_core::JobMessage;
use jobs_core::names::check_destination;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// BigQuery's API, unless `engines.<name>.endpoint` or `BIGQUERY_EMULATOR_HOST` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://bigquery.googleapis.com";
/// `host:port` of a BigQuery emulator; selects it with anonymous credentials.
pub const EMULATOR_HOST_VAR: &str = "BIGQUERY_EMULATOR_HOST";
/// The OAuth scope the engine's credentials ask for.
const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// The metadata columns every destination table carries (as in the PostgreSQL engine).
pub const JOB_ID_COLUMN: &str = "_job_id";
pub const SCHEDULED_FOR_COLUMN: &str = "_scheduled_for";
/// The query parameter carrying the run's job id into the `MERGE`.
const JOB_ID_PARAM: &str = "sqo_job_id";

/// How the engine authenticates.
#[derive(Clone)]
pub enum Auth {
    /// Application Default Credentials.
    Google(AccessTokenCredentials),
    /// No credentials (the emulator).
    Anonymous,
}

impl Auth {
    /// Application Default Credentials with the BigQuery scope.
    pub fn application_default() -> Result<Self, String> {
        google_cloud_auth::credentials::Builder::default()
            .with_scopes([SCOPE])
            .build_access_token_credentials()
            .map(Auth::Google)
            .map_err(|e| format!("cannot load Google Application Default Credentials: {e}"))
    }
}

/// Where and how an engine runs its jobs.
#[derive(Clone)]
pub struct BigQueryConfig {
    /// The API's base URL (`https://bigquery.googleapis.com` or the emulator's).
    pub endpoint: String,
    pub auth: Auth,
    /// The project jobs run in and the tenants' datasets belong to.
    pub project: String,
    /// Empty: BigQuery's default location.
    pub location: String,
    pub dataset_template: String,
    pub partition: Partitioning,
    /// 0: no limit.
    pub maximum_bytes_billed: u64,
}

impl BigQueryConfig {
    /// The endpoint and credentials for `endpoint` (from the settings), unless
    /// `BIGQUERY_EMULATOR_HOST` in `env` names an emulator.
    pub fn connection(endpoint: &str, env: &HashMap<String, String>) -> Result<(String, Auth), String> {
        match env.get(EMULATOR_HOST_VAR).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            Some(host) if host.starts_with("http://") || host.starts_with("https://") => {
                Ok((host.trim_end_matches('/').to_owned(), Auth::Anonymous))
            }
            Some(host) => Ok((format!("http://{host}"), Auth::Anonymous)),
            None => Ok((endpoint.trim_end_matches('/').to_owned(), Auth::application_default()?)),
        }
    }
}

pub struct BigQueryEngine {
    api: Arc<Api>,
    config: BigQueryConfig,
}

/// The REST client: base URL, credentials, HTTP connection pool.
struct Api {
    http: reqwest::Client,
    auth: Auth,
    /// `{endpoint}/bigquery/v2/projects/{project}`.
    base: String,
    location: String,
}

/// A failed API call: BigQuery's HTTP status and first error reason, or no answer at all.
#[derive(Debug)]
enum ApiError {
    Status { status: u16, reason: String, message: String },
    Transport(String),
    Credentials(String),
}

impl ApiError {
    fn into_run_error(self, step: &str) -> RunError {
        match self {
            ApiError::Status { status, reason, message } => {
                let text = format!("{step}: BigQuery answered {status} {reason}: {message}");
                if status == 429 || status == 401 || status >= 500 || is_retryable_reason(&reason) {
                    RunError::retryable(text)
                } else {
                    RunError::permanent(text)
                }
            }
            ApiError::Transport(e) => RunError::retryable(format!("{step}: BigQuery did not answer: {e}")),
            ApiError::Credentials(e) => RunError::retryable(format!("{step}: {e}")),
        }
    }
}

/// Reasons worth another attempt: BigQuery's own trouble, rate limits and quotas, and a job
/// stopped by someone else. Everything else (invalid query, not found, access denied, bytes
/// billed over the limit) fails the same way again.
fn is_retryable_reason(reason: &str) -> bool {
    matches!(
        reason,
        "backendError"
            | "internalError"
            | "jobBackendError"
            | "jobInternalError"
            | "rateLimitExceeded"
            | "jobRateLimitExceeded"
            | "quotaExceeded"
            | "tableUnavailable"
            | "stopped"
    )
}

impl Api {
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ApiError> {
        let request = match &self.auth {
            Auth::Anonymous => request,
            Auth::Google(credentials) => {
                let token = credentials
                    .access_token()
                    .await
                    .map_err(|e| ApiError::Credentials(format!("cannot get a Google access token: {e}")))?;
                request.bearer_auth(token.token)
            }
        };
        let response = request.send().await.map_err(|e| ApiError::Transport(without_url(&e)))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| ApiError::Transport(without_url(&e)))?;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let error = &value["error"];
        let reason = error["errors"][0]["reason"].as_str().or(error["status"].as_str()).unwrap_or("unknown");
        let message = error["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| crate::truncate(&String::from_utf8_lossy(&body), 300));
        Err(ApiError::Status { status, reason: reason.to_owned(), message })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn with_location(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.location.is_empty() { request } else { request.query(&[("location", &self.location)]) }
    }

    async fn get_job(&self, job_id: &str) -> Result<Value, ApiError> {
        self.send(self.with_location(self.http.get(self.url(&format!("/jobs/{job_id}"))))).await
    }

    async fn cancel_job(&self, job_id: &str) -> Result<Value, ApiError> {
        self.send(self.with_location(self.http.post(self.url(&format!("/jobs/{job_id}/cancel"))))).await
    }
}

/// reqwest's error without its URL (which names the project and the job), with its causes.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the answer could not be read"
    } else {
        "the request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Cancels a started job when dropped before [`CancelOnDrop::disarm`]: the run was abandoned
/// (its timeout passed in the runner, or the worker is shutting down).
struct CancelOnDrop {
    api: Arc<Api>,
    job_id: Option<String>,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.job_id = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let (Some(job_id), Ok(runtime)) = (self.job_id.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let api = self.api.clone();
        runtime.spawn(async move {
            match api.cancel_job(&job_id).await {
                Ok(_) => tracing::info!(bigquery_job = %job_id, "abandoned BigQuery job cancelled"),
                Err(e) => tracing::warn!(bigquery_job = %job_id, error = ?e, "cannot cancel an abandoned BigQuery job"),
            }
        });
    }
}

/// `Err` unless `name` can be a BigQuery dataset id: 1 to 1024 letters, digits, underscores.
pub fn check_dataset(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 1024 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("dataset name {name:?} is not a valid BigQuery dataset id (letters, digits, underscores)"));
    }
    Ok(())
}

/// A label value: lowercase letters, digits, `_` and `-`, at most 63 characters.
fn label(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '_' })
        .take(63)
        .collect()
}

/// A name in backquotes, as BigQuery quotes identifiers.
fn quote(name: &str) -> String {
    format!("`{name}`")
}

/// The run's query parameters: the six names every query may use and the job id.
fn query_parameters(job: &JobMessage) -> Value {
    let mut parameters: Vec<Value> = params::NAMES
        .iter()
        .zip(params::values(job))
        .map(|(name, value)| {
            let (ty, text) = match value {
                ParamValue::Text(s) => ("STRING", s),
                ParamValue::Timestamp(t) => ("TIMESTAMP", t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            };
            json!({"name": name, "parameterType": {"type": ty}, "parameterValue": {"value": text}})
        })
        .collect();
    parameters.push(json!({
        "name": JOB_ID_PARAM,
        "parameterType": {"type": "STRING"},
        "parameterValue": {"value": job.job_id.as_str()},
    }));
    Value::Array(parameters)
}

/// The tenant's SQL as it goes into the `MERGE`: trimmed, without trailing semicolons.
fn statement(sql: &str) -> &str {
    sql.trim().trim_end_matches(|c: char| c == ';' || c.is_whitespace())
}

impl BigQueryEngine {
    pub fn new(config: BigQueryConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let api = Api {
            http,
            auth: config.auth.clone(),
            base: format!("{}/bigquery/v2/projects/{}", config.endpoint.trim_end_matches('/'), config.project),
            location: config.location.clone(),
        };
        Ok(BigQueryEngine { api: Arc::new(api), config })
    }

    /// The tenant's dataset.
    pub fn dataset_for(&self, tenant_id: &str) -> String {
        self.config.dataset_template.replace("{tenant_id}", tenant_id)
    }

    /// The BigQuery job id of `job`'s attempt.
    pub fn job_id_for(job: &JobMessage, attempt: u32) -> String {
        format!("sqo_{}_{attempt}", job.job_id)
    }

    fn default_dataset(&self, dataset: &str) -> Value {
        json!({"projectId": self.config.project, "datasetId": dataset})
    }

    /// Step 1: the dry run. Returns the result's columns (BigQuery schema fields).
    async fn dry_run(&self, job: &JobMessage, dataset: &str, sql: &str) -> Result<Vec<Value>, RunError> {
        let mut body = json!({
            "configuration": {
                "dryRun": true,
                "query": {
                    "query": sql,
                    "useLegacySql": false,
                    "defaultDataset": self.default_dataset(dataset),
                    "parameterMode": "NAMED",
                    "queryParameters": query_parameters(job),
                },
            },
        });
        if !self.config.location.is_empty() {
            body["jobReference"] = json!({"projectId": self.config.project, "location": self.config.location});
        }
        let answer = self
            .api
            .send(self.api.http.post(self.api.url("/jobs")).json(&body))
            .await
            .map_err(|e| e.into_run_error("check the query"))?;
        job_error(&answer, "the query")?;
        let statistics = &answer["statistics"]["query"];
        let statement_type = statistics["statementType"].as_str().unwrap_or("SELECT");
        if statement_type != "SELECT" {
            return Err(RunError::permanent(format!(
                "the query must be one SELECT statement; BigQuery reads it as {statement_type}"
            )));
        }
        if let Some(tables) = statistics["referencedTables"].as_array() {
            for t in tables {
                let (project, ds, table) = (
                    t["projectId"].as_str().unwrap_or(""),
                    t["datasetId"].as_str().unwrap_or(""),
                    t["tableId"].as_str().unwrap_or(""),
                );
                if project != self.config.project || ds != dataset {
                    return Err(RunError::permanent(format!(
                        "the query reads {project}.{ds}.{table}, outside the tenant's dataset {dataset}"
                    )));
                }
            }
        }
        let fields = statistics["schema"]["fields"].as_array().cloned().unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        for f in &fields {
            let name = f["name"].as_str().unwrap_or("");
            if name.eq_ignore_ascii_case(JOB_ID_COLUMN) || name.eq_ignore_ascii_case(SCHEDULED_FOR_COLUMN) {
                return Err(RunError::permanent(format!("column name {name:?} is reserved for the worker's metadata")));
            }
            if name.is_empty() || name.contains(['`', '\\', '\n']) {
                return Err(RunError::permanent(format!("column name {name:?} cannot be written; alias it")));
            }
            if !seen.insert(name.to_ascii_lowercase()) {
                return Err(RunError::permanent(format!("the query returns two columns named {name:?}; alias them")));
            }
        }
        if fields.is_empty() {
            return Err(RunError::permanent("the query returns no columns"));
        }
        Ok(fields)
    }

    /// Step 2: creates the destination table when it does not exist.
    async fn ensure_table(&self, dataset: &str, table: &str, fields: &[Value]) -> Result<(), RunError> {
        let path = format!("/datasets/{dataset}/tables/{table}");
        match self.api.send(self.api.http.get(self.api.url(&path))).await {
            Ok(_) => return Ok(()),
            Err(ApiError::Status { status: 404, .. }) => {}
            Err(e) => return Err(e.into_run_error("look up the destination table")),
        }
        let mut schema = vec![
            json!({"name": JOB_ID_COLUMN, "type": "STRING", "mode": "REQUIRED"}),
            json!({"name": SCHEDULED_FOR_COLUMN, "type": "TIMESTAMP", "mode": "REQUIRED"}),
        ];
        schema.extend(fields.iter().map(|f| {
            let mut f = f.clone();
            if f["mode"] != "REPEATED" {
                f["mode"] = json!("NULLABLE");
            }
            f
        }));
        let body = json!({
            "tableReference": {"projectId": self.config.project, "datasetId": dataset, "tableId": table},
            "schema": {"fields": schema},
            "timePartitioning": {"type": self.config.partition.as_bigquery(), "field": SCHEDULED_FOR_COLUMN},
            "description": "Written by the scheduled-query worker: one set of rows per run, tagged with _job_id.",
            "labels": {"sqo_destination": "true"},
        });
        match self.api.send(self.api.http.post(self.api.url(&format!("/datasets/{dataset}/tables"))).json(&body)).await
        {
            // 409: another run created it meanwhile.
            Ok(_) | Err(ApiError::Status { status: 409, .. }) => Ok(()),
            Err(e) => Err(e.into_run_error("create the destination table")),
        }
    }

    /// The `MERGE` that replaces the run's rows.
    fn merge_sql(&self, dataset: &str, table: &str, sql: &str, fields: &[Value]) -> String {
        let columns: Vec<String> = [JOB_ID_COLUMN, SCHEDULED_FOR_COLUMN]
            .into_iter()
            .map(quote)
            .chain(fields.iter().map(|f| quote(f["name"].as_str().unwrap_or(""))))
            .collect();
        let values: Vec<String> = columns.iter().map(|c| format!("s.{c}")).collect();
        format!(
            "MERGE {target} AS d\n\
             USING (SELECT @{JOB_ID_PARAM} AS {job_col}, @scheduled_for AS {sched_col}, q.* FROM (\n{sql}\n) AS q) AS s\n\
             ON FALSE\n\
             WHEN NOT MATCHED BY SOURCE AND d.{sched_col} = @scheduled_for AND d.{job_col} = @{JOB_ID_PARAM} THEN DELETE\n\
             WHEN NOT MATCHED THEN INSERT ({}) VALUES ({})",
            columns.join(", "),
            values.join(", "),
            target = quote(&format!("{}.{dataset}.{table}", self.config.project)),
            job_col = quote(JOB_ID_COLUMN),
            sched_col = quote(SCHEDULED_FOR_COLUMN),
        )
    }

    /// Step 3: inserts the `MERGE` job (retrying an insert whose answer was lost; a 409 says
    /// the job exists, and it is the one to follow), then polls it to the end.
    async fn merge(&self, job: &JobMessage, attempt: u32, dataset: &str, merge_sql: &str) -> Result<Value, RunError> {
        let job_id = Self::job_id_for(job, attempt);
        let deadline = Instant::now() + Duration::from_secs(job.timeout_secs.max(1));
        let mut reference = json!({"projectId": self.config.project, "jobId": job_id});
        if !self.config.location.is_empty() {
            reference["location"] = json!(self.config.location);
        }
        let mut query = json!({
            "query": merge_sql,
            "useLegacySql": false,
            "defaultDataset": self.default_dataset(dataset),
            "parameterMode": "NAMED",
            "queryParameters": query_parameters(job),
        });
        if self.config.maximum_bytes_billed > 0 {
            query["maximumBytesBilled"] = json!(self.config.maximum_bytes_billed.to_string());
        }
        let body = json!({
            "jobReference": reference,
            "configuration": {
                "query": query,
                "jobTimeoutMs": (job.timeout_secs.max(1) * 1000).to_string(),
                "labels": {
                    "sqo_tenant": label(&job.tenant_id),
                    "sqo_app": label(&job.app_id),
                    "sqo_query": label(&job.query_id),
                    "sqo_job_id": label(job.job_id.as_str()),
                },
            },
        });
        let guard = CancelOnDrop { api: self.api.clone(), job_id: Some(job_id.clone()) };
        let mut backoff = Duration::from_millis(250);
        let mut state = loop {
            match self.api.send(self.api.http.post(self.api.url("/jobs")).json(&body)).await {
                Ok(answer) => break answer,
                Err(ApiError::Status { status: 409, .. }) => {
                    tracing::info!(bigquery_job = %job_id, "the BigQuery job exists already (an earlier insert got through); following it");
                    break self.api.get_job(&job_id).await.map_err(|e| e.into_run_error("look up the job"))?;
                }
                Err(e) => {
                    let error = e.into_run_error("start the job");
                    if error.class != jobs_core::ErrorClass::Retryable || Instant::now() + backoff >= deadline {
                        guard.disarm();
                        return Err(error);
                    }
                    tracing::warn!(bigquery_job = %job_id, error = %error, "cannot start the BigQuery job, trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let mut backoff = Duration::from_millis(200);
        while state["status"]["state"] != "DONE" {
            if Instant::now() >= deadline {
                drop(guard); // cancels the job
                return Err(RunError::retryable(format!(
                    "the BigQuery job {job_id} did not finish within the run's timeout of {}s; it was cancelled",
                    job.timeout_secs
                )));
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match self.api.get_job(&job_id).await {
                Ok(answer) => state = answer,
                Err(e) => {
                    let error = e.into_run_error("poll the job");
                    if error.class != jobs_core::ErrorClass::Retryable {
                        return Err(error);
                    }
                    tracing::warn!(bigquery_job = %job_id, error = %error, "cannot poll the BigQuery job, trying again");
                }
            }
        }
        guard.disarm();
        job_error(&state, &format!("the job {job_id}"))?;
        Ok(state)
    }
}

/// `Err` when a job resource reports a failure, classified by BigQuery's reason.
fn job_error(job: &Value, what: &str) -> Result<(), RunError> {
    let error = &job["status"]["errorResult"];
    if error.is_null() {
        return Ok(());
    }
    let reason = error["reason"].as_str().unwrap_or("unknown");
    let message = error["message"].as_str().unwrap_or("no message");
    let text = if reason == "bytesBilledLimitExceeded" {
        format!("{what} failed: BigQuery {reason}: {message} (the limit is engines.<name>.maximum_bytes_billed)")
    } else {
        format!("{what} failed: BigQuery {reason}: {message}")
    };
    Err(if is_retryable_reason(reason) { RunError::retryable(text) } else { RunError::permanent(text) })
}

/// A count BigQuery sends as a decimal string (int64 in JSON).
fn count(value: &Value) -> Option<u64> {
    value.as_str().and_then(|s| s.parse().ok()).or_else(|| value.as_u64())
}

#[async_trait]
impl Engine for BigQueryEngine {
    async fn run(&self, job: &JobMessage, attempt: u32) -> Result<RunOutput, RunError> {
        let dataset = self.dataset_for(&job.tenant_id);
        check_dataset(&dataset).map_err(|e| RunError::permanent(format!("tenant {:?}: {e}", job.tenant_id)))?;
        let table = job.destination.as_str();
        check_destination(table).map_err(|r| RunError::permanent(format!("destination {table:?} {r}")))?;
        let sql = statement(&job.sql);
        let fields = self.dry_run(job, &dataset, sql).await?;
        self.ensure_table(&dataset, table, &fields).await?;
        let done = self.merge(job, attempt, &dataset, &self.merge_sql(&dataset, table, sql, &fields)).await?;
        let statistics = &done["statistics"];
        let query = &statistics["query"];
        // BigQuery's dmlStats count the inserted rows; without them (the emulator) the
        // affected rows are the inserted plus the deleted ones of an earlier attempt.
        let rows_written =
            count(&query["dmlStats"]["insertedRowCount"]).or_else(|| count(&query["numDmlAffectedRows"])).unwrap_or(0);
        Ok(RunOutput {
            rows_written,
            bytes_processed: count(&query["totalBytesProcessed"]).or_else(|| count(&statistics["totalBytesProcessed"])),
            slot_millis: count(&statistics["totalSlotMs"]).or_else(|| count(&query["totalSlotMs"])),
        })
    }

    /// A dry run of `SELECT 1`: free, and it needs what runs need (credentials, the right
    /// to create jobs in the project), nothing more.
    async fn ping(&self) -> Result<(), RunError> {
        let body = json!({"configuration": {"dryRun": true, "query": {"query": "SELECT 1", "useLegacySql": false}}});
        let answer = self
            .api
            .send(self.api.http.post(self.api.url("/jobs")).json(&body))
            .await
            .map_err(|e| e.into_run_error("dry-run SELECT 1"))?;
        job_error(&answer, "a dry run of SELECT 1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_bigquery_reason() {
        let job =
            |reason: &str| json!({"status": {"state": "DONE", "errorResult": {"reason": reason, "message": "m"}}});
        for retryable in ["backendError", "rateLimitExceeded", "quotaExceeded", "jobInternalError"] {
            assert_eq!(job_error(&job(retryable), "q").expect_err(retryable).class, jobs_core::ErrorClass::Retryable);
        }
        for permanent in ["invalidQuery", "notFound", "accessDenied", "invalid", "bytesBilledLimitExceeded"] {
            assert_eq!(job_error(&job(permanent), "q").expect_err(permanent).class, jobs_core::ErrorClass::Permanent);
        }
        let limit = job_error(&job("bytesBilledLimitExceeded"), "q").expect_err("limit");
        assert!(limit.message.contains("maximum_bytes_billed"), "{}", limit.message);
        assert!(job_error(&json!({"status": {"state": "DONE"}}), "q").is_ok());

        let http = |status: u16, reason: &str| {
            ApiError::Status { status, reason: reason.into(), message: "m".into() }.into_run_error("s").class
        };
        assert_eq!(http(503, "backendError"), jobs_core::ErrorClass::Retryable);
        assert_eq!(http(429, "rateLimitExceeded"), jobs_core::ErrorClass::Retryable);
        assert_eq!(http(403, "quotaExceeded"), jobs_core::ErrorClass::Retryable);
        assert_eq!(http(403, "accessDenied"), jobs_core::ErrorClass::Permanent);
        assert_eq!(http(404, "notFound"), jobs_core::ErrorClass::Permanent);
        assert_eq!(http(400, "invalidQuery"), jobs_core::ErrorClass::Permanent);
    }

    #[test]
    fn names_and_labels_follow_bigquery_rules() {
        assert!(check_dataset("tenant_acme").is_ok());
        for bad in ["", "tenant-acme", "tenant.acme", "a`b", "t e"] {
            assert!(check_dataset(bad).is_err(), "{bad}");
        }
        assert_eq!(label("Acme.Corp-1"), "acme_corp-1");
        assert_eq!(label(&"x".repeat(80)).len(), 63);
        assert_eq!(statement("  SELECT 1 ;; \n"), "SELECT 1");
        assert_eq!(statement("SELECT 1 -- trailing comment"), "SELECT 1 -- trailing comment");
    }

    #[test]
    fn the_emulator_host_selects_anonymous_credentials() {
        let env: HashMap<String, String> = [(EMULATOR_HOST_VAR.to_owned(), "127.0.0.1:9050".to_owned())].into();
        let (endpoint, auth) = BigQueryConfig::connection(DEFAULT_ENDPOINT, &env).expect("emulator");
        assert_eq!(endpoint, "http://127.0.0.1:9050");
        assert!(matches!(auth, Auth::Anonymous));
    }
}
