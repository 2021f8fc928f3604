use anyhow::Context;
use clap::{Parser, Subcommand};
use service_kit::settings::Validate;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use worker::settings::Settings;

/// Pulls job messages, runs the queries, writes the results.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (TOML, YAML or JSON); environment variables
    /// WORKER_SECTION__KEY override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker (the default).
    Run,
    /// Validate the configuration, print every problem, exit non-zero if there is any.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = service_kit::settings::process_env();
    let settings: Settings = match service_kit::settings::load(cli.config.as_deref(), &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let problems = settings.problems();
    if matches!(cli.command, Some(Command::CheckConfig)) {
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
    service_kit::telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings, env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "worker failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings, env: std::collections::HashMap<String, String>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    service_kit::supervisor::cancel_on_signals(shutdown.clone());
    let app = worker::Application::build(settings, &env).await.context("cannot start the worker")?;
    app.run_until_stopped(shutdown).await
}
