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
    /// Print the password of a tenant's login role, derived from
    /// engines.<ENGINE>.tenant_password_key, as `role<TAB>password` lines: what
    /// deploy/sql/provision-tenant.sql takes. It prints secrets; run it where only the
    /// operator sees the output.
    TenantPassword {
        /// The engine whose key and role template to use.
        #[arg(long, default_value = "warehouse")]
        engine: String,
        /// Tenant ids.
        #[arg(required = true)]
        tenants: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::TenantPassword { engine, tenants }) = &cli.command {
        return match tenant_passwords(cli.config.as_deref(), engine, tenants) {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
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

fn tenant_passwords(config: Option<&std::path::Path>, engine: &str, tenants: &[String]) -> anyhow::Result<Vec<String>> {
    let env = service_kit::settings::process_env();
    let settings: Settings = service_kit::settings::load(config, &env)?;
    let e = settings.engines.get(engine).with_context(|| format!("no engine named {engine:?} in engines"))?;
    anyhow::ensure!(!e.role_template.is_empty(), "engines.{engine}.role_template is empty: tenants have no logins");
    anyhow::ensure!(
        e.tenant_password_key.expose().len() >= 16,
        "engines.{engine}.tenant_password_key is not set (or shorter than 16 characters)"
    );
    let logins = worker::engines::postgres::TenantLogins {
        role_template: e.role_template.clone(),
        password_key: e.tenant_password_key.clone(),
        previous_key: None,
    };
    Ok(tenants
        .iter()
        .map(|t| {
            let role = logins.role_for(t);
            format!("{role}\t{}", logins.password_for(&role).expose())
        })
        .collect())
}
