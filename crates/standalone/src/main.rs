use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The whole orchestrator in one process: the controller and the worker over an in-process
/// bus, with an embedded catalog and per-tenant SQLite databases seeded with sample data.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Where the catalog, the tenant databases and the dead letters live.
    #[arg(long, default_value = "standalone-data")]
    data_dir: PathBuf,
    /// The controller's admin address (`/livez`, `/readyz`, `/metrics`).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// How often a progress line is printed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    summary_every: Duration,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run (the default).
    Run,
    /// Print the latest rows of a tenant's destination table.
    Show {
        tenant: String,
        table: String,
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Show { tenant, table, limit }) = &cli.command {
        return match standalone::show(&cli.data_dir, tenant, table, *limit) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    service_kit::telemetry::init(&service_kit::telemetry::LogSettings {
        format: service_kit::telemetry::LogFormat::Text,
        level: "info,tokio_cron_scheduler=warn".into(),
        gcp_project: String::new(),
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = standalone::Options {
        data_dir: cli.data_dir.clone(),
        admin: cli.admin,
        summary_every: cli.summary_every,
        ..standalone::Options::default()
    };
    let dir = cli.data_dir.display().to_string();
    tracing::info!(
        data_dir = %dir,
        "standalone starting; results: cargo run -p standalone -- show acme revenue_by_store (Ctrl-C stops)"
    );
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        service_kit::supervisor::cancel_on_signals(shutdown.clone());
        standalone::run(options, shutdown).await
    });
    match result {
        Ok(counters) => {
            tracing::info!(summary = %counters.line(), "final");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "standalone failed");
            ExitCode::FAILURE
        }
    }
}
