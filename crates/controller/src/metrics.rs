//! Every metric the controller exports, declared in one place. Labels are bounded: item
//! kinds, field names and outcomes, never tenant ids.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ItemLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProblemLabels {
    pub kind: &'static str,
    pub field: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabels {
    pub window: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    /// Runs placed in the next 1, 5, 15 minutes.
    pub due_runs: Family<WindowLabels, Gauge>,
    /// Expected work-seconds of those runs.
    pub due_work_seconds: Family<WindowLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Catalog items of the last successful sync, by kind and outcome.
    pub catalog_items: Family<ItemLabels, Gauge>,
    /// Catalog items skipped as invalid, counted when a problem first appears.
    pub catalog_problems: Family<ProblemLabels, Counter>,
    pub catalog_syncs: Family<OutcomeLabels, Counter>,
    pub schedules: Gauge,
    pub runs_due: Counter,
    pub runs_published: Counter,
    pub publish_failures: Counter,
    /// Due runs not published because the controller stopped first.
    pub runs_unpublished_at_shutdown: Counter,
    pub publish_queue: Gauge,
    /// Seconds between a run's placed time and the moment the timer handed it over.
    pub fire_lateness: Histogram,
    /// Runs missed while the controller was down, by what the catch-up did with them
    /// (`replayed`, `dropped_by_policy`, `beyond_window`).
    pub missed_runs: Family<OutcomeLabels, Counter>,
    /// Seconds between now and the saved watermark.
    pub watermark_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Syncs held back by the mass-deletion guard.
    pub catalog_held_back: Counter,
    /// Terms as leader that ended before shutdown (the lease could not be kept).
    pub leadership_lost: Counter,
    /// Unix time of the last successful catalog sync.
    pub catalog_last_sync: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Due runs let go because their tenant or schedule is paused.
    pub runs_paused: Counter,
    /// Runs published by hand (the admin API's trigger).
    pub runs_triggered: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            due_runs: Family::default(),
            due_work_seconds: Family::default(),
            catalog_items: Family::default(),
            catalog_problems: Family::default(),
            catalog_syncs: Family::default(),
            schedules: Gauge::default(),
            runs_due: Counter::default(),
            runs_published: Counter::default(),
            publish_failures: Counter::default(),
            runs_unpublished_at_shutdown: Counter::default(),
            publish_queue: Gauge::default(),
            fire_lateness: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]),
            missed_runs: Family::default(),
            watermark_lag_seconds: Gauge::default(),
            catalog_held_back: Counter::default(),
            leadership_lost: Counter::default(),
            catalog_last_sync: Gauge::default(),
            runs_paused: Counter::default(),
            runs_triggered: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("controller");
        r.register(
            "catalog_items",
            "Catalog items of the last successful sync by kind and outcome",
            m.catalog_items.clone(),
        );
        r.register("catalog_problems", "Invalid catalog items skipped, by kind and field", m.catalog_problems.clone());
        r.register("catalog_syncs", "Catalog syncs by outcome", m.catalog_syncs.clone());
        r.register("schedules", "Schedules held by the timer", m.schedules.clone());
        r.register("runs_due", "Runs handed over by the timer", m.runs_due.clone());
        r.register("runs_published", "Job messages confirmed published", m.runs_published.clone());
        r.register("publish_failures", "Failed publish attempts (each is retried)", m.publish_failures.clone());
        r.register(
            "runs_unpublished_at_shutdown",
            "Due runs not published because the controller stopped",
            m.runs_unpublished_at_shutdown.clone(),
        );
        r.register("publish_queue", "Due runs waiting to be published", m.publish_queue.clone());
        r.register("due_runs", "Runs placed in the next minutes (window 1m, 5m, 15m)", m.due_runs.clone());
        r.register(
            "due_work_seconds",
            "Expected work-seconds of the runs placed in the next minutes (window 1m, 5m, 15m)",
            m.due_work_seconds.clone(),
        );
        r.register(
            "fire_lateness_seconds",
            "Delay between a run's placed time and its hand-over",
            m.fire_lateness.clone(),
        );
        r.register("missed_runs", "Runs missed while the controller was down, by outcome", m.missed_runs.clone());
        r.register(
            "watermark_lag_seconds",
            "Seconds between now and the saved watermark (every run placed before it is published)",
            m.watermark_lag_seconds.clone(),
        );
        r.register(
            "catalog_held_back",
            "Syncs held back because they would remove too many schedules",
            m.catalog_held_back.clone(),
        );
        r.register(
            "leadership_lost",
            "Terms as leader that ended before shutdown: the lease could not be kept, back to standby",
            m.leadership_lost.clone(),
        );
        r.register(
            "catalog_last_sync_timestamp_seconds",
            "Unix time of the last successful catalog sync",
            m.catalog_last_sync.clone(),
        );
        r.register("runs_paused", "Due runs let go because their tenant or schedule is paused", m.runs_paused.clone());
        r.register("runs_triggered", "Runs published by hand through the admin API", m.runs_triggered.clone());
        m
    }
}
