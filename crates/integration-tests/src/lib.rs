//! The harness of the black-box tests: the real parts they run against and helpers to
//! drive them. `scripts/test` starts the Pub/Sub emulator, PostgreSQL and the BigQuery
//! emulator and exports `PUBSUB_EMULATOR_HOST`, `TEST_DATABASE_URL` and
//! `BIGQUERY_EMULATOR_HOST`; a test without them fails and says so.

pub mod bigquery;
pub mod platform;

use pubsub_bus::{Connection, SubscriptionSpec};
use std::collections::HashMap;
use std::time::Duration;

/// Installs a test log subscriber once (`RUST_LOG` to see more).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub(crate) fn required_env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run the tests with scripts/test, which starts the Pub/Sub emulator, PostgreSQL and \
             the BigQuery emulator"
        )
    })
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// The process environment the applications see: only the emulators' hosts.
pub fn app_env() -> HashMap<String, String> {
    [
        (pubsub_bus::EMULATOR_HOST_VAR.to_owned(), required_env("PUBSUB_EMULATOR_HOST")),
        (worker::engines::bigquery::EMULATOR_HOST_VAR.to_owned(), required_env("BIGQUERY_EMULATOR_HOST")),
    ]
    .into()
}

/// A connection to the emulator in a project of its own.
pub fn emulator(project: &str) -> Connection {
    Connection::from_env(project, &app_env())
}

/// Creates `topic` and a plain subscription on it, so a test can read what is published.
pub async fn tap(conn: &Connection, topic: &str) -> String {
    conn.ensure_topic(topic).await.expect("create topic");
    let sub = format!("{topic}-tap");
    conn.ensure_subscription(&SubscriptionSpec::plain(&sub, topic)).await.expect("create tap subscription");
    sub
}

/// A message read from a subscription.
#[derive(Debug, Clone)]
pub struct Received {
    pub data: Vec<u8>,
    pub attributes: HashMap<String, String>,
}

/// Reads from `subscription` (acking everything) until `done` holds for what was read or
/// `timeout` passes; returns what was read either way.
pub async fn read_until(
    conn: &Connection,
    subscription: &str,
    timeout: Duration,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let subscriber = conn.subscriber().await.expect("subscriber");
    let mut stream = subscriber.subscribe(conn.subscription_path(subscription)).build();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = Vec::new();
    while !done(&got) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok((m, h)))) => {
                h.ack();
                got.push(Received { data: m.data.to_vec(), attributes: m.attributes.clone() });
            }
            Ok(Some(Err(e))) => panic!("reading {subscription} failed: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    stream.shutdown_token().shutdown().await;
    got
}

/// A fresh database on the test PostgreSQL.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: tokio_postgres::Client,
}

/// `deploy/sql/provision-tenant.sql`: what the tests provision tenants with is what the README
/// tells operators to run.
pub const PROVISION_TENANT_SQL: &str = include_str!("../../../deploy/sql/provision-tenant.sql");
/// `deploy/sql/worker-role.sql`.
pub const WORKER_ROLE_SQL: &str = include_str!("../../../deploy/sql/worker-role.sql");

/// `script` with psql's variables substituted as psql does: `:"name"` as an identifier,
/// `:'name'` as a literal.
pub fn psql_script(script: &str, vars: &[(&str, &str)]) -> String {
    let mut out = script.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!(":\"{name}\""), &format!("\"{}\"", value.replace('"', "\"\"")));
        out = out.replace(&format!(":'{name}'"), &format!("'{}'", value.replace('\'', "''")));
    }
    out
}

impl TestDb {
    pub async fn create() -> TestDb {
        let admin_url = required_env("TEST_DATABASE_URL");
        let name = unique("db").replace('-', "_");
        let admin = connect(&admin_url).await;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("TEST_DATABASE_URL {admin_url:?} has no database part"),
        };
        let client = connect(&url).await;
        TestDb { name, url, client }
    }

    /// `engines.<name>.role_template` for this database. Roles belong to the whole cluster,
    /// so each test database has tenant roles of its own.
    pub fn role_template(&self) -> String {
        format!("{}_tenant_{{tenant_id}}", self.name)
    }

    /// The logins of this database's tenants (their passwords from [`TENANT_PASSWORD_KEY`]).
    pub fn tenant_logins(&self) -> worker::engines::postgres::TenantLogins {
        worker::engines::postgres::TenantLogins {
            role_template: self.role_template(),
            password_key: service_kit::Secret::new(TENANT_PASSWORD_KEY),
            previous_key: None,
        }
    }

    /// The role `tenant`'s runs log in as.
    pub fn tenant_role(&self, tenant: &str) -> String {
        self.tenant_logins().role_for(tenant)
    }

    /// Provisions `tenant` with `deploy/sql/provision-tenant.sql` (its login role, with the
    /// password the worker derives, and its schema `tenant_{tenant}` owned by the role), then
    /// runs `seed` as that role, so the tables it creates are the tenant's.
    pub async fn provision_tenant(&self, tenant: &str, seed: &str) {
        let logins = self.tenant_logins();
        let role = logins.role_for(tenant);
        let password = logins.password_for(&role);
        let script = psql_script(
            PROVISION_TENANT_SQL,
            &[
                ("tenant_role", &role),
                ("tenant_schema", &format!("tenant_{tenant}")),
                ("tenant_password", password.expose()),
            ],
        );
        self.client.batch_execute(&script).await.unwrap_or_else(|e| panic!("provision tenant {tenant}: {e}"));
        let seed = format!("SET ROLE \"{}\"; {seed}; RESET ROLE;", role.replace('"', "\"\""));
        self.client.batch_execute(&seed).await.unwrap_or_else(|e| panic!("seed tenant {tenant}: {e}"));
    }

    /// This database's URL logged in as `user` with `password`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        let (scheme, rest) = self.url.split_once("://").expect("a URL");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{user}:{password}@{host}")
    }
}

/// The key the tests' tenant passwords are derived from.
pub const TENANT_PASSWORD_KEY: &str = "test-tenant-password-key-0123456789";

/// Connects and drives the connection in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An application running in this test's process: its admin address, and how to stop it.
pub struct Running {
    pub admin: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops it (as SIGTERM would) and asserts that it stopped cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("join").expect("stops cleanly");
    }

    async fn ready(self, what: &str) -> Self {
        let admin = self.admin;
        eventually(Duration::from_secs(30), || async { (get(admin, "/readyz").await.0 == 200).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("{what} not ready within 30 s"));
        self
    }
}

/// Builds and runs a worker with [`app_env`] and waits until it is ready.
pub async fn start_worker(settings: worker::Settings) -> Running {
    let app = worker::Application::build(settings, &app_env()).await.expect("worker builds");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let admin = app.admin_addr();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Running { admin, shutdown, task }.ready("the worker").await
}

/// Builds and runs a controller with `env` and waits until it is ready.
pub async fn start_controller(settings: controller::Settings, env: &HashMap<String, String>) -> Running {
    let app = controller::Application::build(settings, env).await.expect("controller builds");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let admin = app.admin_addr();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Running { admin, shutdown, task }.ready("the controller").await
}

/// POSTs (no body) to an admin endpoint and returns the status and body.
pub async fn post(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    post_as(addr, path, None).await
}

/// POSTs (no body) with `Authorization: Bearer <token>` when given.
pub async fn post_as(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().post(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().await.expect("admin endpoint answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// GETs an admin endpoint and returns the status and body.
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.expect("admin endpoint answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// The value of a metric line (`name{labels} value`) in Prometheus text, if present.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A controller on the emulator's `project`, publishing to `jobs`, reading the catalog file
/// `file` every second, its state in `db`, its admin server on a free loopback port.
pub fn controller_settings(project: &str, jobs: &str, file: &std::path::Path, db: &TestDb) -> controller::Settings {
    let mut s = controller::Settings::default();
    s.admin.listen = "127.0.0.1:0".parse().expect("addr");
    s.platform.source = controller::settings::CatalogSource::File;
    s.platform.catalog_file = Some(file.to_owned());
    s.catalog.sync_interval = Duration::from_secs(1);
    s.pubsub.project = project.into();
    s.pubsub.jobs_topic = jobs.into();
    s.pubsub.create_topics = true;
    s.state.url = service_kit::Secret::new(db.url.clone());
    s.state.watermark_interval = Duration::from_millis(500);
    s
}

/// A worker on the emulator's `project` pulling `jobs` (subscription `{jobs}-workers`,
/// results to `{jobs}-results`, dead letters to `{jobs}-dead`), the `warehouse` engine and
/// the run ledger in `db`, its admin server on a free loopback port.
pub fn worker_settings(project: &str, jobs: &str, db: &TestDb) -> worker::Settings {
    let mut s = worker::Settings::default();
    s.admin.listen = "127.0.0.1:0".parse().expect("addr");
    s.pubsub.project = project.into();
    s.pubsub.jobs_topic = jobs.into();
    s.pubsub.jobs_subscription = format!("{jobs}-workers");
    s.pubsub.results_topic = format!("{jobs}-results");
    s.pubsub.dead_letter_topic = format!("{jobs}-dead");
    s.pubsub.create_resources = true;
    s.pubsub.min_backoff = Duration::from_secs(1);
    s.pubsub.max_backoff = Duration::from_secs(2);
    s.engines.insert(
        "warehouse".into(),
        worker::settings::EngineSettings {
            url: service_kit::Secret::new(db.url.clone()),
            role_template: db.role_template(),
            tenant_password_key: service_kit::Secret::new(TENANT_PASSWORD_KEY),
            ..Default::default()
        },
    );
    s.ledger.url = service_kit::Secret::new(db.url.clone());
    s
}
