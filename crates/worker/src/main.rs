use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
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
    service_kit::launch::main::<Settings, _, _>(
        "worker",
        cli.config.as_deref(),
        matches!(cli.command, Some(Command::CheckConfig)),
        |s| &s.log,
        |settings, env, shutdown| async move {
            let app = worker::Application::build(settings, &env).await.context("cannot start the worker")?;
            app.run_until_stopped(shutdown).await
        },
    )
}
