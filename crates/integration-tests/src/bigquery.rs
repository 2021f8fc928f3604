//! The BigQuery emulator as the tests use it: datasets of their own, seed tables, and reads
//! of what the engine wrote, over the same REST API the engine calls.

use serde_json::{Value, json};
use worker::engines::bigquery::{Auth, BigQueryConfig, BigQueryEngine};
use worker::settings::Partitioning;

/// The project `scripts/services` starts the emulator with.
pub const PROJECT: &str = "sqo-test";

/// The emulator is not safe under concurrent requests (one DuckDB connection behind a Python
/// server: requests at once answered 500 `internalError`, and once a dry run returned another
/// query's schema): the tests that use it hold this for their whole run.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until no other test of this binary uses the emulator.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

/// The emulator at `BIGQUERY_EMULATOR_HOST`.
pub struct Emulator {
    pub endpoint: String,
    http: reqwest::Client,
}

impl Default for Emulator {
    fn default() -> Self {
        Emulator {
            endpoint: format!("http://{}", crate::required_env("BIGQUERY_EMULATOR_HOST")),
            http: reqwest::Client::new(),
        }
    }
}

impl Emulator {
    fn url(&self, path: &str) -> String {
        format!("{}/bigquery/v2/projects/{PROJECT}{path}", self.endpoint)
    }

    /// An engine on the emulator whose tenants' datasets are `{prefix}_{tenant_id}`.
    pub fn engine(&self, prefix: &str) -> BigQueryEngine {
        BigQueryEngine::new(self.config(prefix)).expect("engine")
    }

    pub fn config(&self, prefix: &str) -> BigQueryConfig {
        BigQueryConfig {
            endpoint: self.endpoint.clone(),
            auth: Auth::Anonymous,
            project: PROJECT.into(),
            location: String::new(),
            dataset_template: format!("{prefix}_{{tenant_id}}"),
            partition: Partitioning::Day,
            maximum_bytes_billed: 0,
        }
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Value {
        let response = request.send().await.expect("the BigQuery emulator answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "BigQuery emulator: {status} {body}");
        body
    }

    pub async fn create_dataset(&self, dataset: &str) {
        let body = json!({"datasetReference": {"projectId": PROJECT, "datasetId": dataset}});
        self.call(self.http.post(self.url("/datasets")).json(&body)).await;
    }

    /// Runs `sql` (DDL or DML) as a query job and panics if it fails.
    pub async fn execute(&self, sql: &str) {
        let body = json!({"configuration": {"query": {"query": sql, "useLegacySql": false}}});
        let job = self.call(self.http.post(self.url("/jobs")).json(&body)).await;
        assert!(job["status"]["errorResult"].is_null(), "{sql}: {}", job["status"]);
    }

    /// The table's resource, or `None` when it does not exist.
    pub async fn table(&self, dataset: &str, table: &str) -> Option<Value> {
        let response =
            self.http.get(self.url(&format!("/datasets/{dataset}/tables/{table}"))).send().await.expect("answers");
        if response.status() == 404 {
            return None;
        }
        Some(response.json().await.expect("json"))
    }

    /// Every row of a table, each as its cells' values (`None` for NULL), in column order.
    pub async fn rows(&self, dataset: &str, table: &str) -> Vec<Vec<Option<String>>> {
        let body = self.call(self.http.get(self.url(&format!("/datasets/{dataset}/tables/{table}/data")))).await;
        body["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        r["f"].as_array().expect("cells").iter().map(|c| c["v"].as_str().map(str::to_owned)).collect()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
