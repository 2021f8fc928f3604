//! The `controller` binary as an operator runs it: `check-config`, JSON logs, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn controller() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_controller"));
    c.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn check_config_prints_every_problem_and_exits_non_zero() {
    let out = controller()
        .arg("check-config")
        .env("CONTROLLER_PLATFORM__PAGE_SIZE", "0")
        .env("CONTROLLER_PUBSUB__JOBS_TOPIC", "x")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for key in ["platform.base_url", "platform.page_size", "pubsub.jobs_topic"] {
        assert!(stdout.contains(key), "{key} not reported:\n{stdout}");
    }
}

#[test]
fn check_config_accepts_the_shipped_configurations() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for file in ["config/controller.toml", "deploy/base/config/controller.toml"] {
        let out = controller().current_dir(root).args(["--config", file, "check-config"]).output().expect("runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{file}: {text}");
    }
}

#[test]
fn a_typo_in_a_key_is_named() {
    let out = controller().arg("check-config").env("CONTROLLER_CATALOG__SYNC_INTERVALL", "5s").output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sync_intervall"));
}

#[test]
fn sigterm_stops_the_controller_cleanly_and_logs_are_json() {
    let emulator = std::env::var("PUBSUB_EMULATOR_HOST")
        .expect("PUBSUB_EMULATOR_HOST is not set: run the tests with scripts/test");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut child = controller()
        .current_dir(root)
        .env("PUBSUB_EMULATOR_HOST", emulator)
        .env("CONTROLLER_PLATFORM__SOURCE", "file")
        .env("CONTROLLER_PLATFORM__CATALOG_FILE", "examples/catalog.yaml")
        .env("CONTROLLER_PUBSUB__PROJECT", format!("binary-{}", std::process::id()))
        .env("CONTROLLER_PUBSUB__CREATE_TOPICS", "true")
        .env("CONTROLLER_ADMIN__LISTEN", "127.0.0.1:0")
        .env("CONTROLLER_LOG__FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    // Wait for the first sync, then ask it to stop.
    let started = Instant::now();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        seen.push(json.clone());
        if json["message"] == "catalog synced" {
            assert_eq!(json["schedules"], 3, "{json}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no sync within a minute: {seen:#?}");
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().expect("exits");
    assert_eq!(exit.code(), Some(0), "{rest:#?}");
    assert!(rest.iter().any(|l| l.contains("controller stopped")), "{rest:#?}");
    let skipped = seen.iter().find(|j| j["message"] == "catalog item skipped").expect("the broken cron is reported");
    assert_eq!((skipped["tenant_id"].as_str(), skipped["field"].as_str()), (Some("globex"), Some("schedule")));
}
