//! Paused tenants and schedules. A paused schedule publishes nothing: its due runs are
//! counted (`controller_runs_paused_total`) and let go, and they are not replayed on resume.
//! Pauses live in the controller state (they survive restarts and hand-overs); every replica
//! can take a pause or resume request, and the leader re-reads them every few seconds.

use crate::catalog::ScheduleKey;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::RwLock;

/// What is paused: a whole tenant (`app_id` and `query_id` empty) or one schedule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PauseKey {
    pub tenant_id: String,
    pub app_id: String,
    pub query_id: String,
}

impl PauseKey {
    pub fn tenant(tenant_id: &str) -> Self {
        PauseKey { tenant_id: tenant_id.to_owned(), app_id: String::new(), query_id: String::new() }
    }

    pub fn schedule(key: &ScheduleKey) -> Self {
        PauseKey {
            tenant_id: key.tenant_id.to_string(),
            app_id: key.app_id.to_string(),
            query_id: key.query_id.to_string(),
        }
    }

    pub fn is_tenant(&self) -> bool {
        self.app_id.is_empty()
    }
}

impl std::fmt::Display for PauseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_tenant() {
            write!(f, "tenant {}", self.tenant_id)
        } else {
            write!(f, "schedule {}/{}/{}", self.tenant_id, self.app_id, self.query_id)
        }
    }
}

/// The pauses in force, with when each was taken.
#[derive(Debug, Default)]
pub struct Pauses {
    inner: RwLock<BTreeMap<PauseKey, DateTime<Utc>>>,
}

impl Pauses {
    /// Whether `key`'s runs are held: its tenant or the schedule itself is paused.
    pub fn holds(&self, key: &ScheduleKey) -> bool {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        !map.is_empty()
            && (map.contains_key(&PauseKey::tenant(&key.tenant_id)) || map.contains_key(&PauseKey::schedule(key)))
    }

    /// When `key` itself was paused, if it is.
    pub fn since(&self, key: &PauseKey) -> Option<DateTime<Utc>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).get(key).copied()
    }

    pub fn set(&self, key: PauseKey, at: Option<DateTime<Utc>>) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match at {
            Some(at) => map.insert(key, at),
            None => map.remove(&key),
        };
    }

    /// Replaces every pause (after reading them from the state).
    pub fn replace(&self, all: BTreeMap<PauseKey, DateTime<Utc>>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = all;
    }

    pub fn all(&self) -> BTreeMap<PauseKey, DateTime<Utc>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(t: &str, a: &str, q: &str) -> ScheduleKey {
        ScheduleKey { tenant_id: Arc::from(t), app_id: Arc::from(a), query_id: Arc::from(q) }
    }

    #[test]
    fn a_tenant_pause_holds_all_its_schedules_and_a_schedule_pause_only_itself() {
        let p = Pauses::default();
        assert!(!p.holds(&key("acme", "app", "q")));
        p.set(PauseKey::tenant("acme"), Some(Utc::now()));
        assert!(p.holds(&key("acme", "app", "q")) && p.holds(&key("acme", "other", "r")));
        assert!(!p.holds(&key("globex", "app", "q")));
        p.set(PauseKey::tenant("acme"), None);
        p.set(PauseKey::schedule(&key("globex", "app", "q")), Some(Utc::now()));
        assert!(p.holds(&key("globex", "app", "q")));
        assert!(!p.holds(&key("globex", "app", "r")) && !p.holds(&key("acme", "app", "q")));
    }
}
