//! What a service's `main` does: load the layered settings, answer `check-config` (print
//! every problem, exit 2 if there is any), or start telemetry and a runtime and run the
//! service until SIGTERM/SIGINT.

use crate::settings::{Layered, Validate, load, process_env};
use crate::telemetry::{self, LogSettings};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Runs `service` with the settings of `config` and the process environment. `run` gets the
/// settings, the environment and the shutdown token (cancelled by SIGTERM or SIGINT).
pub fn main<T, F, Fut>(
    service: &'static str,
    config: Option<&Path>,
    check_only: bool,
    log: impl Fn(&T) -> &LogSettings,
    run: F,
) -> ExitCode
where
    T: Layered + Validate,
    F: FnOnce(T, HashMap<String, String>, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let env = process_env();
    let settings: T = match load(config, &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let problems = settings.problems();
    if check_only {
        if problems.is_empty() {
            println!("configuration is valid");
            return ExitCode::SUCCESS;
        }
        for p in &problems {
            println!("problem: {p}");
        }
        return ExitCode::from(2);
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("configuration problem: {p}");
        }
        return ExitCode::from(2);
    }
    let _telemetry = telemetry::init_with_export(log(&settings), service, &env);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        crate::supervisor::cancel_on_signals(shutdown.clone());
        run(settings, env, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(service, error = format!("{e:#}"), "service failed");
            ExitCode::FAILURE
        }
    }
}
