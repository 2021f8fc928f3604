//! Catalog sync: read the documents, validate them, diff them into the timer. A failed
//! read keeps the running schedules; new problems are logged once and counted.

use crate::catalog::{self, Catalog, CatalogPolicy, Problem, RawCatalog};
use crate::metrics::{ItemLabels, Metrics, OutcomeLabels, ProblemLabels};
use crate::platform::{self, PlatformClient, PlatformError};
use crate::timer::{Diff, Timer};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::Notify;

/// Where the catalog documents come from.
#[derive(Debug, Clone)]
pub enum Source {
    Api(PlatformClient),
    File(PathBuf),
}

impl Source {
    pub async fn read(&self) -> Result<RawCatalog, PlatformError> {
        match self {
            Source::Api(client) => {
                let raw = client.fetch().await;
                crate::catalog::forget_texts();
                raw
            }
            Source::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || platform::read_catalog_file(&path))
                    .await
                    .map_err(|e| PlatformError::File { path: PathBuf::new(), reason: e.to_string() })?
            }
        }
    }
}

/// Why a sync did not change the schedules in force.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Read(#[from] PlatformError),
    /// The mass-deletion guard: the answer would remove too many schedules.
    #[error(
        "held back: this catalog would remove {removed} of the {current} schedules in force; it is applied once \
         the same answer has come {needed} times in a row (seen {seen})"
    )]
    HeldBack { removed: usize, current: usize, seen: u32, needed: u32 },
}

/// What the catalog syncs did, for `GET /v1/catalog/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CatalogStatus {
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    /// `ok`, `failed` or `held_back`.
    pub last_outcome: Option<&'static str>,
    /// Why the last sync failed or was held back.
    pub last_error: Option<String>,
    /// Where the schedules in force came from: `platform`, `file`, or `last_good_catalog`.
    pub source: Option<&'static str>,
    pub schedules: usize,
    /// Items of the last applied catalog, by kind and outcome.
    pub items: BTreeMap<&'static str, BTreeMap<&'static str, usize>>,
    /// What the mass-deletion guard holds back, if anything.
    pub held_back: Option<HeldBack>,
    /// The items of the last applied catalog that were skipped as invalid.
    #[serde(skip)]
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldBack {
    pub would_remove: usize,
    pub schedules_in_force: usize,
    pub seen: u32,
    pub needed: u32,
    pub since: DateTime<Utc>,
}

/// Shared between the syncer and the admin API; outlives a leader's term.
pub type StatusView = Arc<RwLock<CatalogStatus>>;

/// The mass-deletion guard's settings and memory.
#[derive(Debug, Clone, Default)]
pub struct RemovalGuard {
    pub max_share: f64,
    pub confirmations: u32,
    /// The held-back answer (a fingerprint of its schedule keys) and how often it came.
    held: Option<(u64, u32)>,
    /// Before the first catalog is applied: the schedule keys (hashed) of the last good
    /// catalog, so that a fresh start compares the platform's answer with them.
    baseline: Option<std::collections::HashSet<u64>>,
}

impl RemovalGuard {
    pub fn new(max_share: f64, confirmations: u32) -> Self {
        RemovalGuard { max_share, confirmations, held: None, baseline: None }
    }

    /// Takes the schedule keys of a saved catalog (the catalog file's JSON) as the schedules
    /// in force until the first catalog is applied. Unreadable JSON leaves no baseline.
    pub fn set_baseline(&mut self, catalog_file_json: &[u8]) -> Option<usize> {
        #[derive(serde::Deserialize)]
        struct File {
            tenants: Vec<Tenant>,
        }
        #[derive(serde::Deserialize)]
        struct Tenant {
            id: String,
            #[serde(default)]
            apps: Vec<App>,
        }
        #[derive(serde::Deserialize)]
        struct App {
            id: String,
            #[serde(default)]
            queries: Vec<Query>,
        }
        #[derive(serde::Deserialize)]
        struct Query {
            id: String,
        }
        let file: File = serde_json::from_slice(catalog_file_json).ok()?;
        let keys: std::collections::HashSet<u64> = file
            .tenants
            .iter()
            .flat_map(|t| t.apps.iter().flat_map(move |a| a.queries.iter().map(move |q| key_hash(&t.id, &a.id, &q.id))))
            .collect();
        let n = keys.len();
        self.baseline = Some(keys);
        Some(n)
    }
}

fn key_hash(tenant: &str, app: &str, query: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (tenant, app, query).hash(&mut h);
    h.finish()
}

pub struct Syncer {
    pub guard: RemovalGuard,
    pub source: Source,
    pub policy: CatalogPolicy,
    pub placement: crate::settings::PlacementSettings,
    pub timer: Arc<Mutex<Timer>>,
    pub timer_changed: Arc<Notify>,
    pub metrics: Metrics,
    /// The schedules in force, for the admin API.
    pub view: crate::admin_api::CatalogView,
    /// When a fresh placement was last weighed against the one in force.
    last_rebalance: Option<std::time::Instant>,
    /// Run durations learned from the result events.
    pub observed: Arc<crate::durations::Observed>,
    /// What the syncs did, for the admin API.
    pub status: StatusView,
    known_problems: BTreeSet<Problem>,
}

impl Syncer {
    pub fn new(
        source: Source,
        policy: CatalogPolicy,
        timer: Arc<Mutex<Timer>>,
        timer_changed: Arc<Notify>,
        metrics: Metrics,
    ) -> Self {
        Syncer {
            guard: RemovalGuard::new(1.0, 1),
            source,
            policy,
            placement: crate::settings::PlacementSettings::default(),
            timer,
            timer_changed,
            metrics,
            view: Arc::default(),
            last_rebalance: None,
            observed: Arc::default(),
            status: Arc::default(),
            known_problems: BTreeSet::new(),
        }
    }

    /// One sync: read, validate, apply. On error the running schedules stay as they are.
    pub async fn sync_once(&mut self) -> Result<(Diff, Catalog), SyncError> {
        let raw = match self.source.read().await {
            Ok(raw) => raw,
            Err(e) => {
                self.metrics.catalog_syncs.get_or_create(&OutcomeLabels { outcome: "failed" }).inc();
                let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
                (status.last_attempt_at, status.last_outcome) = (Some(Utc::now()), Some("failed"));
                status.last_error = Some(e.to_string());
                return Err(SyncError::Read(e));
            }
        };
        let source = match self.source {
            Source::Api(_) => "platform",
            Source::File(_) => "file",
        };
        self.apply(raw, source).await
    }

    /// Validates `raw` and applies it, unless the mass-deletion guard holds it back.
    /// `source` says where it came from (`platform`, `file`, `last_good_catalog`).
    pub async fn apply(&mut self, raw: RawCatalog, source: &'static str) -> Result<(Diff, Catalog), SyncError> {
        let started = std::time::Instant::now();
        let policy = self.policy.clone();
        let catalog = tokio::task::spawn_blocking(move || catalog::validate(raw, &policy))
            .await
            .map_err(|e| SyncError::Read(PlatformError::Token(format!("validation task failed: {e}"))))?;
        self.report_problems(&catalog);
        if let Err(e) = self.guard_removals(&catalog) {
            let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
            (status.last_attempt_at, status.last_outcome) = (Some(Utc::now()), Some("held_back"));
            status.last_error = Some(e.to_string());
            if let SyncError::HeldBack { removed, current, seen, needed } = e {
                let since = status.held_back.as_ref().map_or_else(Utc::now, |h| h.since);
                status.held_back =
                    Some(HeldBack { would_remove: removed, schedules_in_force: current, seen, needed, since });
            }
            return Err(e);
        }
        let diff = {
            let mut timer = self.timer.lock().unwrap_or_else(|p| p.into_inner());
            let diff = timer.apply(&catalog.schedules, Utc::now());
            self.metrics.schedules.set(timer.len() as i64);
            diff
        };
        self.timer_changed.notify_one();
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog.schedules.clone());
        self.guard.baseline = None;
        self.observed.retain(|k| catalog.schedules.contains_key(k));
        self.metrics.catalog_syncs.get_or_create(&OutcomeLabels { outcome: "ok" }).inc();
        let now = Utc::now();
        self.metrics.catalog_last_sync.set(now.timestamp() as f64);
        let mut items = BTreeMap::new();
        for (kind, o) in [("tenant", catalog.tenants), ("app", catalog.apps), ("query", catalog.queries)] {
            for (outcome, n) in [("scheduled", o.scheduled), ("skipped", o.skipped), ("inactive", o.inactive)] {
                self.metrics.catalog_items.get_or_create(&ItemLabels { kind, outcome }).set(n as i64);
                items.entry(kind).or_insert_with(BTreeMap::new).insert(outcome, n);
            }
        }
        *self.status.write().unwrap_or_else(|p| p.into_inner()) = CatalogStatus {
            last_attempt_at: Some(now),
            last_success_at: Some(now),
            last_outcome: Some("ok"),
            last_error: None,
            source: Some(source),
            schedules: catalog.schedules.len(),
            items,
            held_back: None,
            problems: catalog.problems.clone(),
        };
        tracing::info!(
            schedules = catalog.schedules.len(),
            added = diff.added,
            changed = diff.changed,
            removed = diff.removed,
            unchanged = diff.unchanged,
            problems = catalog.problems.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "catalog synced"
        );
        Ok((diff, catalog))
    }

    /// Places `catalog` (load-aware only) and installs the offsets in the timer. Called
    /// after a sync is applied, so new schedules run on their hash offsets meanwhile; a new
    /// offset applies from each schedule's pending run if that is not due yet. The offsets
    /// in force live in the timer's slots only; the timer's lock is taken in chunks so that
    /// fires are not held up by a million lookups.
    pub async fn place_and_install(&mut self, catalog: &Catalog) {
        if self.placement.strategy != crate::placement::Strategy::LoadAware {
            return;
        }
        const CHUNK: usize = 50_000;
        let settings = self.placement.clone();
        let items = crate::plan::items_with(&catalog.schedules, Utc::now(), settings.horizon, |s| {
            self.observed.expected(s, settings.default_duration)
        });
        let mut prior: Vec<Option<u32>> = Vec::with_capacity(items.len());
        for chunk in items.chunks(CHUNK) {
            let timer = self.timer.lock().unwrap_or_else(|p| p.into_inner());
            prior.extend(chunk.iter().map(|i| timer.placement(&i.key).map(|o| o.as_secs() as u32)));
        }
        // Weigh a full re-placement at most once an hour; in between, new schedules are
        // placed around the offsets in force.
        let rebalance = self.last_rebalance.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(3600));
        if rebalance {
            self.last_rebalance = Some(std::time::Instant::now());
        }
        let started = std::time::Instant::now();
        let placing = tokio::task::spawn_blocking(move || {
            let fairness = crate::fairness::Fairness { max_share: settings.max_tenant_share, ..Default::default() };
            let placer = crate::placement::LoadAware {
                margin: settings.rebalance_margin,
                rebalance,
                fairness: (settings.max_tenant_share < 1.0).then_some(fairness),
                ..Default::default()
            };
            let prior = prior.iter().any(Option::is_some).then_some(&prior[..]);
            let placed = placer.place(&items, prior, settings.horizon);
            (items, placed)
        });
        let Ok((items, placed)) = placing.await else { return };
        tracing::info!(
            schedules = placed.offsets.len(),
            moved = placed.moved,
            expected_peak = placed.peak,
            fairness_violations_found = placed.fairness_before.violations,
            fairness_violations_left = placed.fairness.violations,
            max_tenant_share = placed.fairness.max_tenant_share,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "load-aware placement"
        );
        for (chunk, offsets) in items.chunks(CHUNK).zip(placed.offsets.chunks(CHUNK)) {
            let placements =
                chunk.iter().zip(offsets).map(|(i, &o)| (&i.key, std::time::Duration::from_secs(u64::from(o))));
            self.timer.lock().unwrap_or_else(|p| p.into_inner()).set_placements(Utc::now(), placements);
        }
        self.timer_changed.notify_one();
    }

    /// Holds back a catalog that would remove more than the guard's share of the schedules
    /// in force, until the same answer has come `confirmations` times in a row.
    fn guard_removals(&mut self, catalog: &Catalog) -> Result<(), SyncError> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner()).clone();
        let (removed, in_force) = match &self.guard.baseline {
            Some(baseline) if view.is_empty() => {
                let new: std::collections::HashSet<u64> =
                    catalog.schedules.keys().map(|k| key_hash(&k.tenant_id, &k.app_id, &k.query_id)).collect();
                (baseline.iter().filter(|h| !new.contains(h)).count(), baseline.len())
            }
            _ => (view.keys().filter(|k| !catalog.schedules.contains_key(*k)).count(), view.len()),
        };
        let share = if in_force == 0 { 0.0 } else { removed as f64 / in_force as f64 };
        if share <= self.guard.max_share || self.guard.confirmations <= 1 {
            self.guard.held = None;
            return Ok(());
        }
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            catalog.schedules.len().hash(&mut h);
            for k in catalog.schedules.keys() {
                k.hash(&mut h);
            }
            h.finish()
        };
        let seen = match self.guard.held {
            Some((f, n)) if f == fingerprint => n + 1,
            _ => 1,
        };
        if seen >= self.guard.confirmations {
            tracing::warn!(removed, current = in_force, seen, "applying a large removal confirmed by repeated answers");
            self.guard.held = None;
            return Ok(());
        }
        self.guard.held = Some((fingerprint, seen));
        self.metrics.catalog_held_back.inc();
        let e = SyncError::HeldBack { removed, current: in_force, seen, needed: self.guard.confirmations };
        tracing::warn!(
            removed,
            current = in_force,
            seen,
            needed = self.guard.confirmations,
            "catalog sync held back: {e}"
        );
        Err(e)
    }

    /// Logs and counts each problem the first time it appears.
    fn report_problems(&mut self, catalog: &Catalog) {
        let current: BTreeSet<Problem> = catalog.problems.iter().cloned().collect();
        for p in current.difference(&self.known_problems) {
            self.metrics.catalog_problems.get_or_create(&ProblemLabels { kind: p.kind.as_str(), field: p.field }).inc();
            tracing::warn!(
                kind = p.kind.as_str(),
                tenant_id = %p.tenant_id,
                app_id = p.app_id.as_deref().unwrap_or(""),
                query_id = p.query_id.as_deref().unwrap_or(""),
                field = p.field,
                value = %p.value,
                reason = %p.reason,
                "catalog item skipped"
            );
        }
        self.known_problems = current;
    }
}
