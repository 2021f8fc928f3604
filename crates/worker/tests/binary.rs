//! The `worker` binary as an operator runs it: `check-config` and secrets.

use std::process::Command;

fn worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_worker"));
    c.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn check_config_reports_every_problem_without_printing_the_password() {
    let out = worker()
        .arg("check-config")
        .env("WORKER_RUNNER__MAX_LEASE", "1m")
        .env("WORKER_ENGINES__WAREHOUSE__URL", "postgres://app:hunter2-secret@db:notaport/x")
        .env("WORKER_ENGINES__WAREHOUSE__SCHEMA_TEMPLATE", "shared")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for key in ["runner.max_lease", "engines.warehouse.url", "engines.warehouse.schema_template"] {
        assert!(text.contains(key), "{key} not reported:\n{text}");
    }
    assert!(!text.contains("hunter2"), "the password leaked:\n{text}");
}

#[test]
fn check_config_accepts_the_shipped_configurations() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for file in ["config/worker.toml", "deploy/base/config/worker.toml"] {
        // The tenant password key comes from a Secret in deploy/, from the environment.
        let out = worker()
            .current_dir(root)
            .args(["--config", file, "check-config"])
            .env("WORKER_ENGINES__WAREHOUSE__TENANT_PASSWORD_KEY", "a-key-of-at-least-16-chars")
            .output()
            .expect("runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{file}: {text}");
    }
}

#[test]
fn tenant_password_prints_each_tenants_role_and_derived_password_and_needs_the_key() {
    let key = "tenant-key-0123456789abcdef";
    let out = worker()
        .args(["tenant-password", "acme", "globex"])
        .env("WORKER_ENGINES__WAREHOUSE__TENANT_PASSWORD_KEY", key)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let logins = worker::engines::postgres::TenantLogins {
        role_template: "tenant_{tenant_id}".into(),
        password_key: service_kit::Secret::new(key),
        previous_key: None,
    };
    let expected: String = ["acme", "globex"]
        .iter()
        .map(|t| format!("tenant_{t}\t{}\n", logins.password_for(&format!("tenant_{t}")).expose()))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);

    let out = worker()
        .args(["tenant-password", "acme"])
        .env("WORKER_ENGINES__WAREHOUSE__URL", "postgres://sqo_worker@db/warehouse")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("engines.warehouse.tenant_password_key"));
    let out = worker().args(["tenant-password", "--engine", "lake", "acme"]).output().expect("runs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no engine named \"lake\""));
}
