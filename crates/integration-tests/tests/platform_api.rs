//! The controller's platform client against a fake platform over real HTTP, with the
//! awkward cases of `shared/platform-api.md`.

use controller::catalog::{CatalogPolicy, ItemKind, validate};
use controller::platform::{ApiSettings, PlatformClient, PlatformError, TokenSource};
use integration_tests::platform::{FakePlatform, Fault};
use serde_json::{Value, json};
use service_kit::Secret;
use std::time::Duration;

const TOKEN: &str = "s3cret-platform-token";

fn client(platform: &FakePlatform, token: TokenSource) -> PlatformClient {
    client_with(platform, token, |_| {})
}

fn client_with(platform: &FakePlatform, token: TokenSource, tweak: impl FnOnce(&mut ApiSettings)) -> PlatformClient {
    let mut settings = ApiSettings {
        base_url: platform.base_url(),
        token,
        page_size: 2,
        request_timeout: Duration::from_secs(5),
        max_attempts: 5,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        concurrency: 4,
        max_body_bytes: 1024 * 1024,
        max_pages: 100,
    };
    tweak(&mut settings);
    PlatformClient::new(settings).expect("client")
}

fn env_token(value: &str) -> TokenSource {
    TokenSource::Env { var: "PLATFORM_API_TOKEN".into(), value: Some(Secret::new(value)) }
}

fn tenant(id: &str, status: &str) -> Value {
    json!({"id": id, "name": id, "status": status, "timezone": "Europe/Berlin", "weight": 1, "labels": {"region": "eu"}})
}

fn query(id: &str, schedule: &str) -> Value {
    json!({"id": id, "schedule": schedule, "engine": "warehouse", "sql": "SELECT 1 AS one", "destination": "out"})
}

#[tokio::test]
async fn the_catalog_is_read_across_pages_through_500s_and_a_429() {
    let platform = FakePlatform::start(TOKEN).await;
    platform.set_tenant_pages(vec![
        vec![tenant("acme", "active"), tenant("globex", "active")],
        vec![],
        vec![tenant("initech", "suspended"), tenant("umbrella", "active")],
    ]);
    platform.set_app_pages(
        "acme",
        vec![vec![json!({"id": "sales", "enabled": true, "queries": [query("hourly", "0 * * * *")]})]],
    );
    platform.set_app_pages(
        "globex",
        vec![
            vec![
                json!({"id": "ops", "queries": [query("every-5s", "*/5 * * * * *"), query("bad-cron", "61 * * * *")]}),
            ],
            vec![json!({"id": "bi", "queries": [query("daily", "@daily")]})],
        ],
    );
    platform.set_app_pages("umbrella", vec![vec![json!({"id": "x", "queries": [query("every", "@every 1h")]})]]);
    platform.inject("/v1/tenants/globex/apps", [Fault::Status(500), Fault::Status(503), Fault::Status(500)]);
    platform.inject("/v1/tenants", [Fault::TooManyRequests { retry_after: "1".into() }]);

    let raw = client(&platform, env_token(TOKEN)).fetch().await.expect("fetch succeeds after retries");
    let catalog = validate(raw, &CatalogPolicy::for_tests());

    let keys: Vec<String> = catalog.schedules.keys().map(|k| k.to_string()).collect();
    assert_eq!(keys, vec!["acme/sales/hourly", "globex/bi/daily", "globex/ops/every-5s", "umbrella/x/every"]);
    assert_eq!(catalog.problems.len(), 1);
    assert_eq!((catalog.problems[0].kind, catalog.problems[0].field), (ItemKind::Query, "schedule"));
    assert_eq!(catalog.tenants.inactive, 1, "the suspended tenant is not scheduled");

    let requests = platform.requests();
    assert!(!requests.iter().any(|r| r.path.contains("initech")), "no apps are fetched for a suspended tenant");
    let first_429 = requests.iter().position(|r| r.status == 429).expect("the 429 was served");
    let retry = &requests[first_429 + 1];
    assert_eq!(retry.path, "/v1/tenants");
    assert!(
        retry.at.duration_since(requests[first_429].at) >= Duration::from_millis(950),
        "Retry-After: 1 is honoured"
    );
    let globex: Vec<u16> = requests.iter().filter(|r| r.path.contains("globex")).map(|r| r.status).collect();
    assert_eq!(globex, vec![500, 503, 500, 200, 200], "three failures, then both pages");
}

#[tokio::test]
async fn a_wrong_token_is_a_configuration_error_not_a_retry_loop() {
    let platform = FakePlatform::start(TOKEN).await;
    platform.set_tenant_pages(vec![vec![tenant("acme", "active")]]);
    let err = client(&platform, env_token("wrong-token-value")).fetch().await.expect_err("refused");
    assert!(matches!(err, PlatformError::Unauthorized { status: 401, .. }), "{err:?}");
    assert_eq!(platform.requests().len(), 1, "no retries on 401");
    let text = format!("{err} {err:?}");
    assert!(text.contains("token"), "the error points at the token: {text}");
    assert!(!text.contains("wrong-token-value"), "the token never appears in errors");
}

#[tokio::test]
async fn the_token_can_come_from_a_mounted_file() {
    let platform = FakePlatform::start(TOKEN).await;
    platform.set_tenant_pages(vec![vec![]]);
    let path = std::env::temp_dir().join(integration_tests::unique("token"));
    std::fs::write(&path, format!("{TOKEN}\n")).expect("write token");
    let raw = client(&platform, TokenSource::File(path.clone())).fetch().await.expect("fetch");
    assert!(raw.tenants.is_empty());
    std::fs::remove_file(&path).expect("cleanup");
    let err = client(&platform, TokenSource::File(path)).fetch().await.expect_err("missing file");
    assert!(matches!(err, PlatformError::Token(_)), "{err:?}");
}

#[tokio::test]
async fn persistent_server_errors_fail_the_fetch_after_the_configured_attempts() {
    let platform = FakePlatform::start(TOKEN).await;
    platform.set_tenant_pages(vec![vec![tenant("acme", "active")]]);
    platform.inject("/v1/tenants/acme/apps", std::iter::repeat_n(Fault::Status(502), 10));
    let err = client(&platform, env_token(TOKEN)).fetch().await.expect_err("gives up");
    assert!(matches!(err, PlatformError::Exhausted { attempts: 5, .. }), "{err:?}");
    assert!(err.to_string().contains("HTTP 502"), "{err}");
}

#[tokio::test]
async fn a_page_over_the_body_limit_or_a_listing_past_the_page_limit_fails_naming_the_limit() {
    let platform = FakePlatform::start(TOKEN).await;
    platform.set_tenant_pages(vec![vec![tenant("acme", "active")]]);
    let big = format!(r#"{{"apps": [], "padding": "{}", "next_page_token": null}}"#, "x".repeat(5000));
    platform.inject("/v1/tenants/acme/apps", [Fault::Body(big)]);
    let small = client_with(&platform, env_token(TOKEN), |s| s.max_body_bytes = 4096);
    let err = small.fetch().await.expect_err("too large");
    assert!(matches!(err, PlatformError::TooLarge { limit: 4096, .. }), "{err:?}");
    assert!(err.to_string().contains("platform.max_body_bytes"), "{err}");
    assert_eq!(platform.requests().len(), 2, "a page over the limit is not retried");

    // Five pages of tenants, at most three allowed.
    platform.set_tenant_pages((0..5).map(|i| vec![tenant(&format!("t{i}"), "active")]).collect());
    let few = client_with(&platform, env_token(TOKEN), |s| s.max_pages = 3);
    let err = few.fetch().await.expect_err("too many pages");
    assert!(matches!(err, PlatformError::TooManyPages { limit: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("platform.max_pages") && err.to_string().contains("/v1/tenants"), "{err}");
    // Within the limits, the same platform reads whole.
    let raw = client(&platform, env_token(TOKEN)).fetch().await.expect("fetch");
    assert_eq!(raw.tenants.len(), 5);
}
