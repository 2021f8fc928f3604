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
        let out = worker().current_dir(root).args(["--config", file, "check-config"]).output().expect("runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{file}: {text}");
    }
}
