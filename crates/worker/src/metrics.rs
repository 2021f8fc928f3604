//! Every metric the worker exports. Labels are bounded: outcomes, error classes and the
//! configured engine names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `succeeded`, `retried`, `failed` (dead-lettered), `undecodable`, `rejected` (not signed
    /// with a known key: dead-lettered unrun), `skipped` (overlap),
    /// `duplicate` (the ledger says it already succeeded or was skipped: acked without
    /// running), `running_elsewhere` (another worker holds its lease: handed back).
    pub outcome: &'static str,
    /// `none`, `retryable`, `permanent`, `decode`, `signature`.
    pub error_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabels {
    pub engine: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub jobs: Family<OutcomeLabels, Counter>,
    pub run_duration: Family<EngineLabels, Histogram>,
    pub rows_written: Counter,
    pub in_flight: Gauge,
    pub dead_lettered: Counter,
    /// Results or dead letters that could not be published (the job is nacked and retried).
    pub output_failures: Counter,
    /// Run-ledger calls that failed (claims: the message is handed back).
    pub ledger_failures: Counter,
    /// Pulls from the jobs subscription that failed (retried with backoff).
    pub pull_failures: Counter,
    /// Runs published again from the ledger: left running under an expired lease and never
    /// claimed again (their message was lost).
    pub runs_republished: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            jobs: Family::default(),
            run_duration: Family::new_with_constructor(|| {
                Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 3600.0])
            }),
            rows_written: Counter::default(),
            in_flight: Gauge::default(),
            dead_lettered: Counter::default(),
            output_failures: Counter::default(),
            ledger_failures: Counter::default(),
            pull_failures: Counter::default(),
            runs_republished: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("worker");
        r.register("jobs", "Job messages handled, by outcome and error class", m.jobs.clone());
        r.register("run_duration_seconds", "Time to run a query and write its rows, by engine", m.run_duration.clone());
        r.register("rows_written", "Result rows written to destination tables", m.rows_written.clone());
        r.register("jobs_in_flight", "Jobs running now", m.in_flight.clone());
        r.register("dead_lettered", "Messages sent to the dead-letter topic", m.dead_lettered.clone());
        r.register("output_failures", "Result or dead-letter publishes that failed", m.output_failures.clone());
        r.register("ledger_failures", "Run-ledger calls that failed", m.ledger_failures.clone());
        r.register("pull_failures", "Pulls from the jobs subscription that failed", m.pull_failures.clone());
        r.register(
            "runs_republished",
            "Runs published again from the ledger after their message was lost",
            m.runs_republished.clone(),
        );
        m
    }
}
