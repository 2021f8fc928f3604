//! The catalog: the platform's documents (tenants, their apps, the apps' queries) turned
//! into validated schedules, item by item. An invalid item is skipped with a [`Problem`]
//! naming the tenant, app, query, field, value and reason; every valid item is kept.
//! Pure: no I/O, the same rules for the platform API and the catalog file.

use chrono_tz::Tz;
use jobs_core::Overlap;
use jobs_core::names::{check_destination, check_entity_id, check_query_id};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::schedule::Cadence;

/// A tenant as the platform sends it. Fields are optional here so that a missing one is
/// reported as a problem with its name rather than failing the whole page.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct TenantDoc {
    pub id: Option<String>,
    pub status: Option<String>,
    pub timezone: Option<String>,
    pub weight: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct AppDoc {
    pub id: Option<String>,
    pub enabled: Option<bool>,
    #[serde(default)]
    pub queries: Vec<Lenient<QueryDoc>>,
}

/// An item decoded on its own: a malformed one (a field of the wrong type, say) becomes an
/// error naming it instead of failing its whole page or file. Decoding first takes the item's
/// raw JSON text (a scan, no values built) and then parses that text into `T`, so a large
/// catalog is never held as JSON values. JSON input only: YAML files are converted to JSON
/// text first.
#[derive(Debug, Clone)]
pub enum Lenient<T> {
    Ok(T),
    Bad { id: Option<String>, error: String },
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Just the id of a malformed item, if it has a string one.
        #[derive(Deserialize)]
        struct Id {
            id: Option<serde_json::Value>,
        }
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        Ok(match serde_json::from_str::<T>(raw.get()) {
            Ok(item) => Lenient::Ok(item),
            Err(e) => Lenient::Bad {
                id: serde_json::from_str::<Id>(raw.get()).ok().and_then(|i| i.id?.as_str().map(str::to_owned)),
                error: e.to_string(),
            },
        })
    }
}

/// A tenant of the catalog file: the tenant document with its apps inline. (Not a
/// `#[serde(flatten)]` of [`TenantDoc`]: flattening buffers the fields, and the apps' raw
/// texts cannot be taken from a buffer.)
#[derive(Debug, Clone, Deserialize)]
pub struct FileTenant {
    pub id: Option<String>,
    pub status: Option<String>,
    pub timezone: Option<String>,
    pub weight: Option<f64>,
    #[serde(default)]
    pub apps: Vec<Lenient<AppDoc>>,
}

/// The catalog file (`shared/platform-api.md`, "The catalog file").
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogFile {
    pub tenants: Vec<Lenient<FileTenant>>,
}

impl From<CatalogFile> for RawCatalog {
    fn from(file: CatalogFile) -> Self {
        let tenants = file
            .tenants
            .into_iter()
            .map(|t| match t {
                Lenient::Ok(FileTenant { id, status, timezone, weight, apps }) => {
                    RawTenant { doc: Lenient::Ok(TenantDoc { id, status, timezone, weight }), apps }
                }
                Lenient::Bad { id, error } => RawTenant { doc: Lenient::Bad { id, error }, apps: Vec::new() },
            })
            .collect();
        RawCatalog { tenants }
    }
}

impl RawCatalog {
    /// The catalog of a JSON value in the catalog file's form.
    pub fn from_json(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<CatalogFile>(&value.to_string()).map(Into::into)
    }
}

impl RawTenant {
    /// A tenant from JSON documents (for tests and tools).
    pub fn json(doc: serde_json::Value, apps: Vec<serde_json::Value>) -> Self {
        fn lenient<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Lenient<T> {
            serde_json::from_str(&v.to_string()).unwrap_or_else(|e| Lenient::Bad { id: None, error: e.to_string() })
        }
        RawTenant { doc: lenient(doc), apps: apps.into_iter().map(lenient).collect() }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct QueryDoc {
    pub id: Option<String>,
    #[serde(default, deserialize_with = "interned")]
    pub schedule: Option<Arc<str>>,
    #[serde(default, deserialize_with = "interned")]
    pub timezone: Option<Arc<str>>,
    #[serde(default, deserialize_with = "interned")]
    pub spread: Option<Arc<str>>,
    #[serde(default, deserialize_with = "interned")]
    pub engine: Option<Arc<str>>,
    #[serde(default, deserialize_with = "interned")]
    pub sql: Option<Arc<str>>,
    #[serde(default, deserialize_with = "interned")]
    pub destination: Option<Arc<str>>,
    #[serde(default, deserialize_with = "interned")]
    pub timeout: Option<Arc<str>>,
    pub max_attempts: Option<i64>,
    #[serde(default, deserialize_with = "interned")]
    pub overlap: Option<Arc<str>>,
    #[serde(default, deserialize_with = "interned")]
    pub estimated_duration: Option<Arc<str>>,
}

/// Texts seen while decoding a catalog, so that a million queries of the same hundred apps
/// hold a hundred SQL texts, not a million. Cleared after each read ([`forget_texts`]).
static TEXTS: std::sync::LazyLock<std::sync::Mutex<HashSet<Arc<str>>>> = std::sync::LazyLock::new(Default::default);

fn interned<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
    let Some(text) = Option::<std::borrow::Cow<'de, str>>::deserialize(d)? else { return Ok(None) };
    let mut texts = TEXTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(shared) = texts.get(&*text) {
        return Ok(Some(shared.clone()));
    }
    let shared: Arc<str> = Arc::from(&*text);
    texts.insert(shared.clone());
    Ok(Some(shared))
}

/// Drops the decoder's table of texts (the decoded documents keep theirs).
pub fn forget_texts() {
    let mut texts = TEXTS.lock().unwrap_or_else(|p| p.into_inner());
    *texts = HashSet::new();
}

/// The documents of one sync, before validation: each tenant with its apps.
#[derive(Debug, Clone, Default)]
pub struct RawCatalog {
    pub tenants: Vec<RawTenant>,
}

#[derive(Debug, Clone)]
pub struct RawTenant {
    pub doc: Lenient<TenantDoc>,
    pub apps: Vec<Lenient<AppDoc>>,
}

/// `(tenant_id, app_id, query_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScheduleKey {
    pub tenant_id: Arc<str>,
    pub app_id: Arc<str>,
    pub query_id: Arc<str>,
}

impl fmt::Display for ScheduleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant_id, self.app_id, self.query_id)
    }
}

/// One valid scheduled query.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub key: ScheduleKey,
    pub expression: Arc<str>,
    pub timezone: Tz,
    pub cadence: Arc<Cadence>,
    pub spread: Duration,
    pub engine: Arc<str>,
    pub sql: Arc<str>,
    pub destination: Arc<str>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub overlap: Overlap,
    pub estimated_duration: Option<Duration>,
    /// The tenant's `weight` (default 1): its relative share for per-tenant fairness.
    pub tenant_weight: f32,
}

/// The schedules in the catalog file's form (`platform-api.md`), so that a saved catalog is
/// read back — and validated — like any catalog file. Each query carries its effective
/// time zone, spread, timeout and attempts, so the defaults of a later configuration do not
/// change it.
pub fn to_catalog_file(schedules: &BTreeMap<ScheduleKey, Arc<Schedule>>) -> Vec<u8> {
    use serde_json::json;
    let mut tenants: BTreeMap<&str, (f32, BTreeMap<&str, Vec<serde_json::Value>>)> = BTreeMap::new();
    for s in schedules.values() {
        let human = |d: Duration| humantime::format_duration(d).to_string();
        let query = json!({
            "id": &*s.key.query_id,
            "schedule": &*s.expression,
            "timezone": s.timezone.name(),
            "spread": human(s.spread),
            "engine": &*s.engine,
            "sql": &*s.sql,
            "destination": &*s.destination,
            "timeout": human(s.timeout),
            "max_attempts": s.max_attempts,
            "overlap": s.overlap,
            "estimated_duration": s.estimated_duration.map(human),
        });
        let tenant = tenants.entry(&s.key.tenant_id).or_insert_with(|| (s.tenant_weight, BTreeMap::new()));
        tenant.1.entry(&s.key.app_id).or_default().push(query);
    }
    let tenants: Vec<serde_json::Value> = tenants
        .into_iter()
        .map(|(id, (weight, apps))| {
            let apps: Vec<_> =
                apps.into_iter().map(|(id, queries)| json!({"id": id, "enabled": true, "queries": queries})).collect();
            json!({"id": id, "status": "active", "weight": weight, "apps": apps})
        })
        .collect();
    serde_json::to_vec(&json!({ "tenants": tenants })).expect("a catalog always serializes")
}

/// The rules and defaults validation applies.
#[derive(Debug, Clone)]
pub struct CatalogPolicy {
    pub known_engines: BTreeSet<String>,
    pub default_spread: Duration,
    pub max_spread: Duration,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub default_max_attempts: u32,
    pub max_sql_bytes: usize,
    /// Schedules one tenant may have; the first ones in the platform's order are kept.
    pub max_schedules_per_tenant: usize,
}

impl CatalogPolicy {
    /// A permissive policy for tests: engine `warehouse`, no spread.
    pub fn for_tests() -> Self {
        CatalogPolicy {
            known_engines: ["warehouse".to_owned()].into(),
            default_spread: Duration::ZERO,
            max_spread: Duration::from_secs(24 * 3600),
            default_timeout: Duration::from_secs(300),
            max_timeout: Duration::from_secs(3600),
            default_max_attempts: 3,
            max_sql_bytes: 256 * 1024,
            max_schedules_per_tenant: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemKind {
    Tenant,
    App,
    Query,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Tenant => "tenant",
            ItemKind::App => "app",
            ItemKind::Query => "query",
        }
    }
}

/// Why one catalog item was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Problem {
    pub kind: ItemKind,
    pub tenant_id: String,
    pub app_id: Option<String>,
    pub query_id: Option<String>,
    /// The offending field (`document` when the item is not even an object of the right shape).
    pub field: &'static str,
    /// The offending value, shortened for logs.
    pub value: String,
    pub reason: String,
}

/// Counts by outcome, for metrics and the sync log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub scheduled: usize,
    pub skipped: usize,
    /// Suspended or deleted tenants, disabled apps: not errors, not scheduled.
    pub inactive: usize,
}

/// A validated catalog.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub schedules: BTreeMap<ScheduleKey, Arc<Schedule>>,
    pub problems: Vec<Problem>,
    pub tenants: Outcomes,
    pub apps: Outcomes,
    pub queries: Outcomes,
}

const MISSING: &str = "(missing)";

/// Shortens a value for a log line: long SQL texts are not worth 2 MB of log.
pub fn shorten(value: &str) -> String {
    const MAX: usize = 80;
    if value.len() <= MAX {
        return value.to_owned();
    }
    let mut cut = MAX;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &value[..cut], value.len())
}

fn parse_duration(field: &'static str, value: &str) -> Result<Duration, (&'static str, String)> {
    humantime::parse_duration(value.trim())
        .map_err(|e| (field, format!("not a duration ({e}); use e.g. \"90s\", \"10m\", \"1h\"")))
}

/// Validates every item of `raw` under `policy`. Takes the documents by value and drops
/// each tenant's once it is validated, so the documents and the catalog are not both whole
/// in memory at once.
pub fn validate(raw: RawCatalog, policy: &CatalogPolicy) -> Catalog {
    let mut catalog = Catalog::default();
    let mut seen_tenants = HashSet::new();
    // Identical (expression, zone) pairs share one parsed cadence.
    let mut cadences: HashMap<(String, Tz), Arc<Cadence>> = HashMap::new();

    for raw_tenant in raw.tenants {
        let tenant_problem = |field, value: &str, reason: String, id: &str| Problem {
            kind: ItemKind::Tenant,
            tenant_id: id.to_owned(),
            app_id: None,
            query_id: None,
            field,
            value: shorten(value),
            reason,
        };
        let doc: &TenantDoc = match &raw_tenant.doc {
            Lenient::Ok(doc) => doc,
            Lenient::Bad { id, error } => {
                let id = id.as_deref().unwrap_or(MISSING);
                catalog.problems.push(tenant_problem("document", "", error.clone(), id));
                catalog.tenants.skipped += 1;
                continue;
            }
        };
        let Some(tenant_id) = doc.id.as_deref() else {
            catalog.problems.push(tenant_problem("id", "", "missing".into(), MISSING));
            catalog.tenants.skipped += 1;
            continue;
        };
        let checked = check_entity_id(tenant_id)
            .map_err(|r| ("id", tenant_id.to_owned(), r))
            .and_then(|()| {
                if seen_tenants.insert(tenant_id.to_owned()) {
                    Ok(())
                } else {
                    Err(("id", tenant_id.to_owned(), "duplicate tenant id; the first one is kept".into()))
                }
            })
            .and_then(|()| match doc.status.as_deref() {
                Some("active") | Some("suspended") | Some("deleted") => Ok(()),
                other => Err((
                    "status",
                    other.unwrap_or(MISSING).to_owned(),
                    "must be one of active, suspended, deleted".into(),
                )),
            })
            .and_then(|()| match doc.timezone.as_deref() {
                None => Ok(Tz::UTC),
                Some(name) => {
                    name.parse::<Tz>().map_err(|_| ("timezone", name.to_owned(), "unknown IANA time zone".to_owned()))
                }
            })
            .and_then(|tz| match doc.weight {
                Some(w) if !(w.is_finite() && w > 0.0) => {
                    Err(("weight", w.to_string(), "must be a positive number".into()))
                }
                _ => Ok(tz),
            });
        let tenant_tz = match checked {
            Ok(tz) => tz,
            Err((field, value, reason)) => {
                catalog.problems.push(tenant_problem(field, &value, reason, tenant_id));
                catalog.tenants.skipped += 1;
                continue;
            }
        };
        if doc.status.as_deref() != Some("active") {
            catalog.tenants.inactive += 1;
            continue;
        }
        catalog.tenants.scheduled += 1;
        let tenant_weight = doc.weight.unwrap_or(1.0) as f32;
        let tenant_key: Arc<str> = Arc::from(tenant_id);
        let mut seen_apps = HashSet::new();
        let mut tenant_schedules = 0usize;

        for raw_app in &raw_tenant.apps {
            let app_problem = |field, value: &str, reason: String, id: &str| Problem {
                kind: ItemKind::App,
                tenant_id: tenant_id.to_owned(),
                app_id: Some(id.to_owned()),
                query_id: None,
                field,
                value: shorten(value),
                reason,
            };
            let app: &AppDoc = match raw_app {
                Lenient::Ok(app) => app,
                Lenient::Bad { id, error } => {
                    let id = id.as_deref().unwrap_or(MISSING);
                    catalog.problems.push(app_problem("document", "", error.clone(), id));
                    catalog.apps.skipped += 1;
                    continue;
                }
            };
            let app_id = app.id.as_deref().unwrap_or(MISSING);
            let app_check = if app.id.is_none() { Err("missing".to_owned()) } else { check_entity_id(app_id) }
                .and_then(|()| {
                    if seen_apps.insert(app_id.to_owned()) {
                        Ok(())
                    } else {
                        Err("duplicate app id; the first one is kept".into())
                    }
                });
            if let Err(reason) = app_check {
                catalog.problems.push(app_problem("id", app_id, reason, app_id));
                catalog.apps.skipped += 1;
                continue;
            }
            if app.enabled == Some(false) {
                catalog.apps.inactive += 1;
                continue;
            }
            catalog.apps.scheduled += 1;
            let app_key: Arc<str> = Arc::from(app_id);
            let mut seen_queries = HashSet::new();

            for raw_query in &app.queries {
                let query_id_hint = match raw_query {
                    Lenient::Ok(q) => q.id.as_deref(),
                    Lenient::Bad { id, .. } => id.as_deref(),
                }
                .unwrap_or(MISSING)
                .to_owned();
                let result = match raw_query {
                    Lenient::Bad { error, .. } => Err(("document", String::new(), error.clone())),
                    Lenient::Ok(q) => validate_query(q, tenant_tz, policy, &mut seen_queries, &mut cadences)
                        .map_err(|(field, reason)| (field, field_value(q, field), reason)),
                }
                .and_then(|parts| {
                    if tenant_schedules < policy.max_schedules_per_tenant {
                        tenant_schedules += 1;
                        Ok(parts)
                    } else {
                        Err((
                            "id",
                            query_id_hint.clone(),
                            format!(
                                "the tenant already has {} schedules, the limit catalog.max_schedules_per_tenant; \
                                 the first ones in the platform's order are kept",
                                policy.max_schedules_per_tenant
                            ),
                        ))
                    }
                });
                match result {
                    Ok(parts) => {
                        let key = ScheduleKey {
                            tenant_id: tenant_key.clone(),
                            app_id: app_key.clone(),
                            query_id: Arc::from(query_id_hint.as_str()),
                        };
                        catalog.schedules.insert(key.clone(), Arc::new(parts.into_schedule(key, tenant_weight)));
                        catalog.queries.scheduled += 1;
                    }
                    Err((field, value, reason)) => {
                        catalog.problems.push(Problem {
                            kind: ItemKind::Query,
                            tenant_id: tenant_id.to_owned(),
                            app_id: Some(app_id.to_owned()),
                            query_id: Some(query_id_hint),
                            field,
                            value: shorten(&value),
                            reason,
                        });
                        catalog.queries.skipped += 1;
                    }
                }
            }
        }
    }
    catalog
}

/// A query's validated fields, before it is keyed.
struct QueryParts {
    expression: Arc<str>,
    timezone: Tz,
    cadence: Arc<Cadence>,
    spread: Duration,
    engine: Arc<str>,
    sql: Arc<str>,
    destination: Arc<str>,
    timeout: Duration,
    max_attempts: u32,
    overlap: Overlap,
    estimated_duration: Option<Duration>,
}

impl QueryParts {
    fn into_schedule(self, key: ScheduleKey, tenant_weight: f32) -> Schedule {
        Schedule {
            key,
            expression: self.expression,
            timezone: self.timezone,
            cadence: self.cadence,
            spread: self.spread,
            engine: self.engine,
            sql: self.sql,
            destination: self.destination,
            timeout: self.timeout,
            max_attempts: self.max_attempts,
            overlap: self.overlap,
            estimated_duration: self.estimated_duration,
            tenant_weight,
        }
    }
}

fn field_value(q: &QueryDoc, field: &str) -> String {
    let v = match field {
        "id" => q.id.clone(),
        "schedule" => q.schedule.as_deref().map(str::to_owned),
        "timezone" => q.timezone.as_deref().map(str::to_owned),
        "spread" => q.spread.as_deref().map(str::to_owned),
        "engine" => q.engine.as_deref().map(str::to_owned),
        "sql" => q.sql.as_deref().map(str::to_owned),
        "destination" => q.destination.as_deref().map(str::to_owned),
        "timeout" => q.timeout.as_deref().map(str::to_owned),
        "max_attempts" => q.max_attempts.map(|n| n.to_string()),
        "overlap" => q.overlap.as_deref().map(str::to_owned),
        "estimated_duration" => q.estimated_duration.as_deref().map(str::to_owned),
        _ => None,
    };
    v.unwrap_or_default()
}

fn validate_query(
    q: &QueryDoc,
    tenant_tz: Tz,
    policy: &CatalogPolicy,
    seen: &mut HashSet<String>,
    cadences: &mut HashMap<(String, Tz), Arc<Cadence>>,
) -> Result<QueryParts, (&'static str, String)> {
    let id = q.id.as_deref().ok_or(("id", "missing".to_owned()))?;
    check_query_id(id).map_err(|r| ("id", r))?;
    if !seen.insert(id.to_owned()) {
        return Err(("id", "duplicate query id in this app; the first one is kept".into()));
    }
    let timezone = match q.timezone.as_deref() {
        None => tenant_tz,
        Some(name) => name.parse::<Tz>().map_err(|_| ("timezone", "unknown IANA time zone".to_owned()))?,
    };
    let expression = q.schedule.as_deref().ok_or(("schedule", "missing".to_owned()))?.trim();
    let cadence = match cadences.get(&(expression.to_owned(), timezone)) {
        Some(c) => c.clone(),
        None => {
            let c = Arc::new(Cadence::parse(expression, timezone).map_err(|r| ("schedule", r))?);
            cadences.insert((expression.to_owned(), timezone), c.clone());
            c
        }
    };
    let spread = match q.spread.as_deref() {
        None => policy.default_spread,
        Some(s) => parse_duration("spread", s)?,
    };
    if spread > policy.max_spread {
        return Err((
            "spread",
            format!("longer than the allowed maximum {}", humantime::format_duration(policy.max_spread)),
        ));
    }
    let engine = q.engine.as_deref().ok_or(("engine", "missing".to_owned()))?;
    if !policy.known_engines.contains(engine) {
        let known: Vec<&str> = policy.known_engines.iter().map(String::as_str).collect();
        return Err(("engine", format!("unknown engine; configured engines: {}", known.join(", "))));
    }
    let sql = q.sql.as_deref().ok_or(("sql", "missing".to_owned()))?;
    if sql.trim().is_empty() {
        return Err(("sql", "empty".into()));
    }
    if sql.len() > policy.max_sql_bytes {
        return Err((
            "sql",
            format!("{} bytes, over the limit of {} bytes (catalog.max_sql_bytes)", sql.len(), policy.max_sql_bytes),
        ));
    }
    let destination = q.destination.as_deref().ok_or(("destination", "missing".to_owned()))?;
    check_destination(destination).map_err(|r| ("destination", r))?;
    let timeout = match q.timeout.as_deref() {
        None => policy.default_timeout,
        Some(s) => parse_duration("timeout", s)?,
    };
    if timeout.is_zero() || timeout > policy.max_timeout {
        return Err((
            "timeout",
            format!("must be above 0 and at most {}", humantime::format_duration(policy.max_timeout)),
        ));
    }
    let max_attempts = match q.max_attempts {
        None => policy.default_max_attempts,
        Some(n) if (1..=100).contains(&n) => n as u32,
        Some(_) => return Err(("max_attempts", "must be between 1 and 100".into())),
    };
    let overlap = match q.overlap.as_deref() {
        None | Some("skip") => Overlap::Skip,
        Some("allow") => Overlap::Allow,
        Some(_) => return Err(("overlap", "must be skip or allow".into())),
    };
    let estimated_duration =
        q.estimated_duration.as_deref().map(|s| parse_duration("estimated_duration", s)).transpose()?;
    Ok(QueryParts {
        expression: match &q.schedule {
            Some(text) if text.len() == expression.len() => text.clone(),
            _ => Arc::from(expression),
        },
        timezone,
        cadence,
        spread,
        engine: q.engine.clone().unwrap_or_else(|| Arc::from(engine)),
        sql: q.sql.clone().unwrap_or_else(|| Arc::from(sql)),
        destination: q.destination.clone().unwrap_or_else(|| Arc::from(destination)),
        timeout,
        max_attempts,
        overlap,
        estimated_duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query(id: &str) -> serde_json::Value {
        json!({"id": id, "schedule": "0 * * * *", "engine": "warehouse", "sql": "SELECT 1", "destination": "t"})
    }

    fn one_tenant(queries: Vec<serde_json::Value>) -> RawCatalog {
        RawCatalog {
            tenants: vec![RawTenant::json(
                json!({"id": "acme", "status": "active", "timezone": "America/Sao_Paulo"}),
                vec![json!({"id": "sales", "enabled": true, "queries": queries})],
            )],
        }
    }

    #[test]
    fn a_saved_catalog_reads_back_as_the_same_schedules() {
        let mut detailed = query("detailed");
        detailed["timezone"] = json!("Asia/Tokyo");
        detailed["spread"] = json!("10m");
        detailed["timeout"] = json!("90s");
        detailed["max_attempts"] = json!(5);
        detailed["overlap"] = json!("allow");
        detailed["estimated_duration"] = json!("40s");
        let mut policy = CatalogPolicy::for_tests();
        policy.max_spread = Duration::from_secs(3600);
        let first = validate(one_tenant(vec![query("plain"), detailed]), &policy);
        let json = to_catalog_file(&first.schedules);
        let file: CatalogFile = serde_json::from_slice(&json).expect("reads as a catalog file");
        let again = validate(file.into(), &policy);
        assert!(again.problems.is_empty(), "{:#?}", again.problems);
        assert_eq!(again.schedules, first.schedules);
    }

    #[test]
    fn a_tenant_past_its_schedule_limit_keeps_the_first_ones_and_the_rest_are_skipped_naming_the_limit() {
        let mut policy = CatalogPolicy::for_tests();
        policy.max_schedules_per_tenant = 2;
        let mut raw = one_tenant(vec![query("q1"), json!({"id": "broken"}), query("q2"), query("q3")]);
        raw.tenants.push(RawTenant::json(
            json!({"id": "globex", "status": "active"}),
            vec![json!({"id": "a", "queries": [query("g1"), query("g2")]})],
        ));
        let c = validate(raw, &policy);
        let kept: Vec<String> = c.schedules.keys().map(ToString::to_string).collect();
        assert_eq!(
            kept,
            ["acme/sales/q1", "acme/sales/q2", "globex/a/g1", "globex/a/g2"],
            "an invalid query takes no place"
        );
        let over: Vec<&Problem> = c.problems.iter().filter(|p| p.reason.contains("max_schedules_per_tenant")).collect();
        assert_eq!(over.len(), 1, "{:#?}", c.problems);
        assert_eq!((over[0].query_id.as_deref(), over[0].field), (Some("q3"), "id"));
    }

    fn only_problem(c: &Catalog) -> &Problem {
        assert_eq!(c.problems.len(), 1, "{:#?}", c.problems);
        &c.problems[0]
    }

    #[test]
    fn a_valid_query_becomes_a_schedule_with_defaults_and_the_tenant_zone() {
        let c = validate(one_tenant(vec![query("q1")]), &CatalogPolicy::for_tests());
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let s = c.schedules.values().next().expect("one schedule");
        assert_eq!(s.key.to_string(), "acme/sales/q1");
        assert_eq!(s.timezone, chrono_tz::America::Sao_Paulo);
        assert_eq!((s.timeout, s.max_attempts, s.overlap), (Duration::from_secs(300), 3, Overlap::Skip));
    }

    #[test]
    fn each_invalid_query_is_skipped_with_its_field_and_the_rest_are_kept() {
        let mut cases = vec![
            ("bad-cron", "schedule", json!("61 * * * *")),
            ("bad-tz", "timezone", json!("Mars/Olympus")),
            ("bad-engine", "engine", json!("oracle")),
            ("empty-sql", "sql", json!("  ")),
            ("huge-sql", "sql", json!("x".repeat(2 * 1024 * 1024))),
            ("bad-dest", "destination", json!("public.t")),
            ("bad-timeout", "timeout", json!("forever")),
            ("bad-overlap", "overlap", json!("queue")),
        ];
        for (id, field, value) in cases.drain(..) {
            let mut bad = query(id);
            bad[field] = value;
            let c = validate(one_tenant(vec![query("good"), bad]), &CatalogPolicy::for_tests());
            let p = only_problem(&c);
            assert_eq!((p.kind, p.field, p.query_id.as_deref()), (ItemKind::Query, field, Some(id)), "{p:?}");
            assert_eq!(c.schedules.len(), 1, "{id}: the valid query must stay");
            assert!(p.value.len() < 200, "values are shortened for logs");
        }
    }

    #[test]
    fn a_duplicate_query_id_keeps_the_first() {
        let mut second = query("q1");
        second["sql"] = json!("SELECT 2");
        let c = validate(one_tenant(vec![query("q1"), second]), &CatalogPolicy::for_tests());
        assert_eq!(only_problem(&c).field, "id");
        assert_eq!(&*c.schedules.values().next().expect("kept").sql, "SELECT 1");
    }

    #[test]
    fn a_wrongly_typed_field_skips_only_that_query() {
        let mut bad = query("typed");
        bad["max_attempts"] = json!("three");
        let c = validate(one_tenant(vec![bad, query("ok")]), &CatalogPolicy::for_tests());
        let p = only_problem(&c);
        assert_eq!((p.field, p.query_id.as_deref()), ("document", Some("typed")));
        assert!(p.reason.contains("max_attempts") || p.reason.contains("invalid type"), "{}", p.reason);
        assert_eq!(c.schedules.len(), 1);
    }

    #[test]
    fn inactive_tenants_and_disabled_apps_are_not_scheduled_and_not_errors() {
        let raw = RawCatalog {
            tenants: vec![
                RawTenant::json(
                    json!({"id": "gone", "status": "deleted"}),
                    vec![json!({"id": "a", "queries": [query("q")]})],
                ),
                RawTenant::json(
                    json!({"id": "on", "status": "active"}),
                    vec![json!({"id": "off", "enabled": false, "queries": [query("q")]})],
                ),
            ],
        };
        let c = validate(raw, &CatalogPolicy::for_tests());
        assert!(c.problems.is_empty() && c.schedules.is_empty());
        assert_eq!((c.tenants.inactive, c.apps.inactive), (1, 1));
    }

    #[test]
    fn a_tenant_with_an_unknown_zone_or_status_is_skipped() {
        let raw = RawCatalog {
            tenants: vec![
                RawTenant::json(json!({"id": "a", "status": "active", "timezone": "Nowhere/Land"}), vec![]),
                RawTenant::json(json!({"id": "b", "status": "paused"}), vec![]),
                RawTenant::json(json!({"id": "c", "status": "active"}), vec![]),
            ],
        };
        let c = validate(raw, &CatalogPolicy::for_tests());
        let fields: Vec<_> = c.problems.iter().map(|p| (p.tenant_id.as_str(), p.field)).collect();
        assert_eq!(fields, vec![("a", "timezone"), ("b", "status")]);
        assert_eq!(c.tenants.scheduled, 1);
    }

    #[test]
    fn identical_expressions_share_one_parsed_cadence() {
        let c = validate(one_tenant(vec![query("a"), query("b")]), &CatalogPolicy::for_tests());
        let v: Vec<_> = c.schedules.values().collect();
        assert!(Arc::ptr_eq(&v[0].cadence, &v[1].cadence));
    }
}
