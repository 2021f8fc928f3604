//! No secret in logs, errors, metrics or messages. The real `controller` and `worker`
//! binaries run at `debug` level (every crate's), every secret set to a value this test can
//! look for, through failing platform calls (500s, a body that is not JSON, a 401), failing
//! publishes (the jobs and results topics deleted under them), a tenant whose login is
//! refused and a wrong operator token; then their logs, `/metrics`, `/v1/checks`, the
//! operator API's answers, the result events and the dead letters are searched.

use base64::Engine as _;
use integration_tests::platform::{FakePlatform, Fault};
use integration_tests::{Received, TestDb, emulator, eventually, get, post_as, read_until, tap, unique};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PLATFORM_TOKEN: &str = "canary-platform-token-7f3a9c";
const ADMIN_TOKEN: &str = "canary-admin-token-51c2e8d4";
const SIGNING_SECRET: &str = "canary-signing-secret-0123456789abcdef";
const TENANT_KEY: &str = "canary-tenant-key-9d8e7f6a5b";

/// The directory the workspace's binaries are built into (next to this test's `deps/`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    exe.parent().and_then(Path::parent).expect("target/debug").to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A service process, its output in a file; killed by its PID if the test ends early.
struct Process {
    child: Child,
    log: PathBuf,
    admin: SocketAddr,
}

impl Process {
    fn start(binary: &str, dir: &Path, env: &[(&str, String)]) -> Process {
        let log = dir.join(format!("{binary}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let port = free_port();
        let prefix = binary.to_uppercase();
        let mut cmd = Command::new(bin_dir().join(binary));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(pubsub_bus::EMULATOR_HOST_VAR, std::env::var(pubsub_bus::EMULATOR_HOST_VAR).expect("emulator"))
            .env(format!("{prefix}_ADMIN__LISTEN"), format!("127.0.0.1:{port}"))
            .env(format!("{prefix}_LOG__LEVEL"), "debug")
            .env(format!("{prefix}_LOG__FORMAT"), "json")
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} ({e}): build it first (cargo build -p {binary})"));
        Process { child, log, admin: ([127, 0, 0, 1], port).into() }
    }

    async fn ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        eventually(Duration::from_secs(60), || async {
            // Not listening yet is not ready yet.
            let status = reqwest::get(&url).await.map(|r| r.status().as_u16());
            (status.ok() == Some(200)).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("not ready; log:\n{}", self.log_text()));
    }

    /// SIGTERM by PID, then wait (bounded) for it to exit.
    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        for _ in 0..300 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Deletes a topic on the emulator, so that publishing to it fails.
async fn delete_topic(project: &str, topic: &str) {
    let host = std::env::var(pubsub_bus::EMULATOR_HOST_VAR).expect("emulator");
    let url = format!("http://{host}/v1/projects/{project}/topics/{topic}");
    let status = reqwest::Client::new().delete(url).send().await.expect("delete topic").status();
    assert!(status.is_success(), "delete {topic}: {status}");
}

fn text_of(messages: &[Received]) -> String {
    messages.iter().map(|m| format!("{} {:?}\n", String::from_utf8_lossy(&m.data), m.attributes)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_errors_metrics_or_messages_through_failures() {
    integration_tests::init_logs();
    let dir = std::env::temp_dir().join(unique("secrets"));
    std::fs::create_dir_all(&dir).expect("dir");
    let project = unique("proj");
    let jobs = unique("jobs");
    let bus = emulator(&project);
    let results_tap = tap(&bus, &format!("{jobs}-results")).await;
    let dead_tap = tap(&bus, &format!("{jobs}-dead")).await;
    let db = TestDb::create().await;
    let db_password =
        db.url.split_once("://").and_then(|(_, r)| r.split_once('@')).and_then(|(u, _)| u.split_once(':'));
    let db_password = db_password.map(|(_, p)| p.to_owned()).expect("TEST_DATABASE_URL carries a password");
    let keyring = format!("k1:{}", base64::engine::general_purpose::STANDARD.encode(SIGNING_SECRET));

    // The worker's tenant passwords come from the canary key; acme is provisioned with its
    // own, globex is not provisioned at all (its login is refused).
    let logins = worker::engines::postgres::TenantLogins {
        role_template: db.role_template(),
        password_key: service_kit::Secret::new(TENANT_KEY),
        previous_key: None,
    };
    let acme_password = logins.password_for(&logins.role_for("acme")).expose().to_owned();
    let script = integration_tests::psql_script(
        integration_tests::PROVISION_TENANT_SQL,
        &[
            ("tenant_role", &logins.role_for("acme")),
            ("tenant_schema", "tenant_acme"),
            ("tenant_password", &acme_password),
        ],
    );
    db.client.batch_execute(&script).await.expect("provision acme");
    db.client.batch_execute("CREATE SCHEMA tenant_globex").await.expect("globex schema");

    // The platform: two tenants, a query each every second; its first answers fail.
    let platform = FakePlatform::start(PLATFORM_TOKEN).await;
    platform.set_tenant_pages(vec![vec![
        json!({"id": "acme", "status": "active"}),
        json!({"id": "globex", "status": "active"}),
    ]]);
    for t in ["acme", "globex"] {
        platform.set_app_pages(
            t,
            vec![vec![json!({"id": "shop", "queries": [
                {"id": "tick", "schedule": "* * * * * *", "engine": "warehouse", "sql": "SELECT 1 AS one", "destination": "out"}
            ]})]],
        );
    }
    platform.inject(
        "/v1/tenants",
        [Fault::Status(500), Fault::Status(500), Fault::Body("<html>not json</html>".into()), Fault::Status(401)],
    );

    let mut controller = Process::start(
        "controller",
        &dir,
        &[
            ("CONTROLLER_PLATFORM__SOURCE", "api".into()),
            ("CONTROLLER_PLATFORM__BASE_URL", platform.base_url()),
            ("CONTROLLER_PLATFORM__MAX_ATTEMPTS", "2".into()),
            ("CONTROLLER_PLATFORM__INITIAL_BACKOFF", "100ms".into()),
            ("CONTROLLER_CATALOG__SYNC_INTERVAL", "1s".into()),
            ("CONTROLLER_PUBSUB__PROJECT", project.clone()),
            ("CONTROLLER_PUBSUB__JOBS_TOPIC", jobs.clone()),
            ("CONTROLLER_PUBSUB__CREATE_TOPICS", "true".into()),
            ("CONTROLLER_STATE__URL", db.url.clone()),
            ("CONTROLLER_SIGNING__KEYRING", keyring.clone()),
            ("CONTROLLER_ADMIN__TOKEN", ADMIN_TOKEN.into()),
            ("PLATFORM_API_TOKEN", PLATFORM_TOKEN.into()),
        ],
    );
    let mut worker = Process::start(
        "worker",
        &dir,
        &[
            ("WORKER_PUBSUB__PROJECT", project.clone()),
            ("WORKER_PUBSUB__JOBS_TOPIC", jobs.clone()),
            ("WORKER_PUBSUB__JOBS_SUBSCRIPTION", format!("{jobs}-workers")),
            ("WORKER_PUBSUB__RESULTS_TOPIC", format!("{jobs}-results")),
            ("WORKER_PUBSUB__DEAD_LETTER_TOPIC", format!("{jobs}-dead")),
            ("WORKER_PUBSUB__CREATE_RESOURCES", "true".into()),
            ("WORKER_PUBSUB__MIN_BACKOFF", "1s".into()),
            ("WORKER_PUBSUB__MAX_BACKOFF", "2s".into()),
            ("WORKER_LEDGER__URL", db.url.clone()),
            ("WORKER_SIGNING__KEYRING", keyring.clone()),
            ("WORKER_ENGINES__WAREHOUSE__URL", db.url.clone()),
            ("WORKER_ENGINES__WAREHOUSE__ROLE_TEMPLATE", db.role_template()),
            ("WORKER_ENGINES__WAREHOUSE__TENANT_PASSWORD_KEY", TENANT_KEY.into()),
        ],
    );
    worker.ready().await;
    controller.ready().await;

    // Runs flow: acme's succeed, globex's fail at the login and are dead-lettered.
    let results = read_until(&bus, &results_tap, Duration::from_secs(40), |got| {
        let text = text_of(got);
        text.contains("\"succeeded\"") && text.contains("\"failed\"")
    })
    .await;
    let dead = read_until(&bus, &dead_tap, Duration::from_secs(20), |got| !got.is_empty()).await;

    // The operator API with a wrong token, then the right one.
    let wrong = post_as(controller.admin, "/v1/schedules/acme/shop/tick:trigger", Some("not-the-token")).await;
    let right = post_as(controller.admin, "/v1/schedules/acme/shop/tick:trigger", Some(ADMIN_TOKEN)).await;
    assert_eq!((wrong.0, right.0), (401, 202), "{wrong:?} {right:?}");

    // Publishes fail: both topics go away under the services.
    delete_topic(&project, &jobs).await;
    delete_topic(&project, &format!("{jobs}-results")).await;
    let controller_log = eventually(Duration::from_secs(20), || async {
        let log = controller.log_text();
        log.contains("publish failed, retrying").then_some(log)
    })
    .await;
    assert!(controller_log.is_some(), "the controller's publishes failed:\n{}", controller.log_text());

    let mut answers = String::new();
    for (process, paths) in [
        (&controller, &["/metrics", "/v1/checks", "/readyz", "/v1/catalog/status", "/v1/tenants/acme/schedules"][..]),
        (&worker, &["/metrics", "/v1/checks", "/readyz", "/v1/runs?limit=500"][..]),
    ] {
        for path in paths {
            answers.push_str(&get(process.admin, path).await.1);
        }
    }
    controller.stop();
    worker.stop();
    let logs = format!("{}\n{}", controller.log_text(), worker.log_text());

    // The failures did happen, and were reported.
    for expected in [
        "HTTP 500",
        "is not a tenants page",
        "refused the token",
        "publish failed, retrying",
        "cannot log in as the tenant's role",
    ] {
        assert!(logs.contains(expected), "no {expected:?} in the logs");
    }
    assert!(answers.contains("cannot log in as the tenant"), "the run history has the refused login");
    assert!(text_of(&dead).contains("permanent_error"), "{}", text_of(&dead));

    // And no secret appears anywhere.
    let everything = format!("{logs}\n{answers}\n{}\n{}\n{wrong:?}", text_of(&results), text_of(&dead));
    let secrets = [
        ("the platform token", PLATFORM_TOKEN.to_owned()),
        ("the operator token", ADMIN_TOKEN.to_owned()),
        ("the signing secret", SIGNING_SECRET.to_owned()),
        ("the signing secret in base64", keyring["k1:".len()..].to_owned()),
        ("the database password", db_password),
        ("the tenant password key", TENANT_KEY.to_owned()),
        ("acme's login password", acme_password),
    ];
    for (what, secret) in secrets {
        if let Some(at) = everything.find(&secret) {
            let from = everything[..at].rfind('\n').map_or(0, |i| i + 1);
            let line = everything[from..].lines().next().unwrap_or_default();
            panic!("{what} appears in the output: {line}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
