use anyhow::Context;
use clap::{Parser, Subcommand};
use controller::settings::Settings;
use std::path::PathBuf;
use std::process::ExitCode;

/// The system allocator with live-byte counters (a few atomic adds per allocation), so
/// `bench` can report memory per schedule.
#[global_allocator]
static ALLOCATOR: &controller::bench::Allocator = &stats_alloc::INSTRUMENTED_SYSTEM;

/// Schedules every tenant's queries and publishes one job message per due run.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (TOML, YAML or JSON); environment variables
    /// CONTROLLER_SECTION__KEY override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run,
    /// Validate the configuration, print every problem, exit non-zero if there is any.
    CheckConfig,
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(Bench),
    /// Forecast the load of a catalog under each placement strategy.
    Plan(PlanArgs),
}

#[derive(clap::Args)]
struct PlanArgs {
    /// The catalog file (the one-file form of the platform documents).
    #[arg(long, required_unless_present = "generate")]
    catalog: Option<PathBuf>,
    /// `none`, `hash`, `load-aware` or `all`.
    #[arg(long, default_value = "all")]
    strategy: String,
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    horizon: std::time::Duration,
    /// Start of the horizon (RFC 3339); by default the coming midnight UTC.
    #[arg(long)]
    start: Option<chrono::DateTime<chrono::Utc>>,
    /// Run time assumed for queries without `estimated_duration`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    default_duration: std::time::Duration,
    /// `text`, `json` or `svg`.
    #[arg(long, default_value = "text")]
    format: String,
    /// Report how many load-aware placements move when this catalog replaces --catalog.
    #[arg(long)]
    against: Option<PathBuf>,
    /// Print a generated catalog instead (`reference`).
    #[arg(long)]
    generate: Option<String>,
    /// Size of the generated catalog.
    #[arg(long, default_value_t = 100_000)]
    schedules: usize,
    /// Seed of the generated catalog.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Median run time of the generated catalog (log-normal, p99 30 times the median, at
    /// most an hour).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    median_duration: std::time::Duration,
    /// Runs one worker holds at once (the workers' `runner.max_in_flight`), for the
    /// recommended worker count and HPA bounds.
    #[arg(long, default_value_t = 8)]
    worker_slots: usize,
    /// Capacity above the forecast peak for the HPA's `maxReplicas` (0.25: 25%).
    #[arg(long, default_value_t = 0.25)]
    headroom: f64,
    /// Queries added to the generated catalog, drawn the same way: `--schedules 100000
    /// --extra 1000` is the 100,000-query catalog plus 1% more, for `--against`.
    #[arg(long, default_value_t = 0)]
    extra: usize,
}

#[derive(Subcommand)]
enum Bench {
    /// The timer against tokio-cron-scheduler (one job per schedule) on the same schedules.
    Timer {
        /// Comma-separated sizes.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        schedules: Vec<usize>,
        /// How long each implementation is driven per size.
        #[arg(long, default_value = "65s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// How long idle CPU is measured.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        idle: std::time::Duration,
        /// The baseline stops at a size whose adds take longer than this.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        baseline_add_limit: std::time::Duration,
        /// Skip the tokio-cron-scheduler baseline.
        #[arg(long)]
        no_baseline: bool,
        /// Fires per minute; larger sizes fire every k minutes to stay at or under it.
        #[arg(long, default_value_t = 100_000)]
        fires_per_minute: usize,
    },
    /// A full catalog sync (read, validate, diff) of a generated catalog, with the RSS.
    Sync {
        #[arg(long, default_value_t = 1_000_000)]
        schedules: usize,
        /// Approximate size of each SQL text.
        #[arg(long, default_value_t = 300)]
        sql_bytes: usize,
        /// Also time a fresh load-aware placement (no offsets in force, as at start-up):
        /// minutes for a million schedules.
        #[arg(long)]
        fresh_placement: bool,
    },
    /// The sharded controller's timers on a virtual clock, with a re-shard half-way:
    /// fires, misses, duplicates and memory per shard (README: Past one controller).
    Shards {
        #[arg(long, default_value_t = 10_000_000)]
        schedules: usize,
        #[arg(long, default_value_t = 8)]
        shards: u32,
        /// Shards after the re-shard.
        #[arg(long, default_value_t = 12)]
        reshard_to: u32,
        /// Hours of virtual time.
        #[arg(long, default_value_t = 4)]
        hours: u32,
        /// The latest a replica learns of the new shard map.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        skew: std::time::Duration,
        /// How far ahead of its announcement the new map takes effect.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        margin: std::time::Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Bench(Bench::Sync { schedules, sql_bytes, fresh_placement })) = cli.command {
        let result = tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| {
            rt.block_on(controller::bench::run_sync_bench(schedules, sql_bytes, fresh_placement, ALLOCATOR))
        });
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Bench(Bench::Shards { schedules, shards, reshard_to, hours, skew, margin, seed })) =
        cli.command
    {
        let cfg = controller::shards::ShardBench { schedules, shards, reshard_to, hours, skew, margin, seed };
        let live = || {
            let s = ALLOCATOR.stats();
            s.bytes_allocated as i64 - s.bytes_deallocated as i64
        };
        controller::shards::run_shard_bench(&cfg, &live);
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Bench(Bench::Timer {
        schedules,
        duration,
        idle,
        baseline_add_limit,
        no_baseline,
        fires_per_minute,
    })) = cli.command
    {
        let cfg = controller::bench::TimerBench {
            sizes: schedules,
            duration,
            idle,
            baseline_add_limit,
            baseline: !no_baseline,
            fires_per_minute,
        };
        return match tokio::runtime::Runtime::new() {
            Ok(rt) => {
                rt.block_on(controller::bench::run_timer_bench(cfg, ALLOCATOR));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let env = service_kit::settings::process_env();
    if let Some(Command::Plan(args)) = &cli.command {
        return match run_plan(args, cli.config.as_deref(), &env) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    service_kit::launch::main::<Settings, _, _>(
        "controller",
        cli.config.as_deref(),
        matches!(cli.command, Some(Command::CheckConfig)),
        |s| &s.log,
        |settings, env, shutdown| async move {
            let app = controller::Application::build(settings, &env).await.context("cannot start the controller")?;
            app.run_until_stopped(shutdown).await
        },
    )
}

fn run_plan(
    args: &PlanArgs,
    config: Option<&std::path::Path>,
    env: &std::collections::HashMap<String, String>,
) -> anyhow::Result<()> {
    use controller::placement::Strategy;
    use controller::plan;
    if let Some(kind) = &args.generate {
        anyhow::ensure!(kind == "reference", "--generate {kind:?}: the only generator is `reference`");
        println!("{}", plan::reference_catalog(args.schedules, args.extra, args.seed, args.median_duration));
        return Ok(());
    }
    let settings: Settings = service_kit::settings::load(config, env)?;
    let mut policy = settings.catalog.policy();
    policy.max_spread = policy.max_spread.max(std::time::Duration::from_secs(24 * 3600));
    let strategies: Vec<Strategy> = match args.strategy.as_str() {
        "all" => Strategy::ALL.to_vec(),
        "none" => vec![Strategy::None],
        "hash" => vec![Strategy::Hash],
        "load-aware" => vec![Strategy::LoadAware],
        other => anyhow::bail!("--strategy {other:?}: use none, hash, load-aware or all"),
    };
    anyhow::ensure!(
        ["text", "json", "svg"].contains(&args.format.as_str()),
        "--format {:?}: use text, json or svg",
        args.format
    );
    let start = args.start.unwrap_or_else(|| {
        let today = chrono::Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
        today + chrono::Duration::days(1)
    });
    let progress = |what: &str| eprintln!("plan: {what}");
    anyhow::ensure!(args.worker_slots >= 1, "--worker-slots {} must be at least 1", args.worker_slots);
    anyhow::ensure!(
        (0.0..=10.0).contains(&args.headroom),
        "--headroom {} must be between 0 and 10 (0.25 is 25%)",
        args.headroom
    );
    // The placer's items and the catalog's mean SQL size.
    let load = |path: &std::path::Path| -> anyhow::Result<(Vec<controller::placement::Item>, f64)> {
        progress(&format!("reading {}", path.display()));
        let raw = controller::platform::read_catalog_file(path)?;
        let catalog = controller::catalog::validate(raw, &policy);
        if !catalog.problems.is_empty() {
            eprintln!("plan: {} invalid items skipped (first: {:?})", catalog.problems.len(), catalog.problems[0]);
        }
        let sql_bytes: usize = catalog.schedules.values().map(|s| s.sql.len()).sum();
        let mean_sql = sql_bytes as f64 / catalog.schedules.len().max(1) as f64;
        Ok((plan::items(&catalog.schedules, start, args.horizon, args.default_duration), mean_sql))
    };
    let catalog = args.catalog.as_deref().ok_or_else(|| anyhow::anyhow!("--catalog is required"))?;
    let (items, mean_sql) = load(catalog)?;
    let started = std::time::Instant::now();
    let mut result = plan::plan(&items, &strategies, args.horizon, progress);
    result.capacity = Some(plan::capacity(&result, args.worker_slots, args.headroom, mean_sql));
    if let Some(other) = &args.against {
        let (after, _) = load(other)?;
        progress("placing the new catalog around the existing placements");
        result.stability = Some(plan::stability(&items, &after, args.horizon));
    }
    progress(&format!("done in {:.1}s", started.elapsed().as_secs_f64()));
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&result)?),
        "svg" => print!("{}", plan::svg(&result)),
        _ => print!("{}", plan::text(&result)),
    }
    Ok(())
}
