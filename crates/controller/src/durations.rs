//! Run durations learned from the result events: an exponentially weighted mean per
//! schedule, preferred over the catalog's `estimated_duration` hint by placement and by the
//! due-work forecast.

use crate::catalog::{Schedule, ScheduleKey};
use jobs_core::{ResultEvent, RunStatus};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Weight of the newest observation.
const ALPHA: f64 = 0.3;

#[derive(Debug, Default)]
pub struct Observed {
    seconds: Mutex<HashMap<ScheduleKey, f64>>,
}

impl Observed {
    /// Learns from one result event; only succeeded runs say how long a run takes.
    pub fn record(&self, event: &ResultEvent) {
        if event.status != RunStatus::Succeeded {
            return;
        }
        let secs = (event.finished_at - event.started_at).num_milliseconds().max(0) as f64 / 1000.0;
        let key = ScheduleKey {
            tenant_id: Arc::from(event.tenant_id.as_str()),
            app_id: Arc::from(event.app_id.as_str()),
            query_id: Arc::from(event.query_id.as_str()),
        };
        let mut map = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).and_modify(|mean| *mean = ALPHA * secs + (1.0 - ALPHA) * *mean).or_insert(secs);
    }

    pub fn get(&self, key: &ScheduleKey) -> Option<Duration> {
        let map = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).map(|s| Duration::from_secs_f64(*s))
    }

    /// Forgets schedules that left the catalog, so the table stays bounded by it.
    pub fn retain(&self, keep: impl Fn(&ScheduleKey) -> bool) {
        self.seconds.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| keep(k));
    }

    /// The duration placement and forecasts use: observed, else the catalog's hint, else
    /// `default`.
    pub fn expected(&self, schedule: &Schedule, default: Duration) -> Duration {
        self.get(&schedule.key).or(schedule.estimated_duration).unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn event(query: &str, secs: i64, status: RunStatus) -> ResultEvent {
        let t = Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, 0).single().expect("valid");
        ResultEvent {
            schema_version: "1.0".into(),
            job_id: jobs_core::JobId::for_run("t", "a", query, t),
            tenant_id: "t".into(),
            app_id: "a".into(),
            query_id: query.into(),
            nominal_time: t,
            status,
            attempt: 1,
            rows_written: 1,
            bytes_processed: None,
            slot_millis: None,
            started_at: t,
            finished_at: t + chrono::Duration::seconds(secs),
            error_class: None,
            error_message: None,
            trigger: jobs_core::Trigger::Scheduled,
            trace_id: None,
        }
    }

    fn key(q: &str) -> ScheduleKey {
        ScheduleKey { tenant_id: Arc::from("t"), app_id: Arc::from("a"), query_id: Arc::from(q) }
    }

    #[test]
    fn durations_are_a_weighted_mean_of_succeeded_runs() {
        let o = Observed::default();
        o.record(&event("q", 10, RunStatus::Succeeded));
        assert_eq!(o.get(&key("q")), Some(Duration::from_secs(10)));
        o.record(&event("q", 20, RunStatus::Succeeded));
        assert_eq!(o.get(&key("q")), Some(Duration::from_secs(13)));
        o.record(&event("q", 500, RunStatus::Failed));
        assert_eq!(o.get(&key("q")), Some(Duration::from_secs(13)), "failed runs say nothing");
        o.retain(|k| &*k.query_id != "q");
        assert_eq!(o.get(&key("q")), None);
    }
}
