//! An in-memory ledger with the same rules as the PostgreSQL one: for the standalone mode
//! (one process) and unit tests. It forgets everything when the process stops.

use super::{Claim, Ledger, LedgerError, Outcome};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jobs_core::{JobId, JobMessage, Overlap};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone)]
struct Row {
    schedule: (String, String, String),
    nominal: DateTime<Utc>,
    state: &'static str,
    attempts: u32,
    owner: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    rows_written: u64,
    finished_at: Option<DateTime<Utc>>,
}

impl Row {
    /// A job id the ledger has not seen.
    fn new(job: &JobMessage) -> Self {
        Row {
            schedule: schedule_of(job),
            nominal: job.nominal_time,
            state: "running",
            attempts: 0,
            owner: None,
            lease_expires_at: None,
            rows_written: 0,
            finished_at: None,
        }
    }
}

#[derive(Default)]
pub struct MemoryLedger {
    rows: Mutex<HashMap<JobId, Row>>,
}

fn schedule_of(job: &JobMessage) -> (String, String, String) {
    (job.tenant_id.clone(), job.app_id.clone(), job.query_id.clone())
}

fn lease_until(lease: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default()
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn claim(&self, job: &JobMessage, worker: &str, lease: Duration) -> Result<Claim, LedgerError> {
        let now = Utc::now();
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(row) = rows.get(&job.job_id) {
            match row.state {
                "succeeded" => {
                    return Ok(Claim::Succeeded { rows_written: row.rows_written, finished_at: row.finished_at });
                }
                "skipped" => return Ok(Claim::Skipped),
                "running" if row.lease_expires_at.is_some_and(|e| e > now) => {
                    return Ok(Claim::RunningElsewhere {
                        owner: row.owner.clone().unwrap_or_default(),
                        lease_expires_at: row.lease_expires_at.unwrap_or(now),
                    });
                }
                _ => {}
            }
        }
        if job.overlap == Overlap::Skip {
            let schedule = schedule_of(job);
            let previous = rows.iter().find(|(id, r)| {
                **id != job.job_id
                    && r.schedule == schedule
                    && r.nominal < job.nominal_time
                    && r.state == "running"
                    && r.lease_expires_at.is_some_and(|e| e > now)
            });
            if let Some((id, _)) = previous {
                return Ok(Claim::PreviousRunning { previous: id.clone() });
            }
        }
        let row = rows.entry(job.job_id.clone()).or_insert_with(|| Row::new(job));
        row.state = "running";
        row.attempts += 1;
        row.owner = Some(worker.to_owned());
        row.lease_expires_at = Some(lease_until(lease));
        row.finished_at = None;
        Ok(Claim::Run { attempt: row.attempts })
    }

    async fn extend(&self, job_id: &JobId, worker: &str, lease: Duration) -> Result<bool, LedgerError> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match rows.get_mut(job_id) {
            Some(row) if row.state == "running" && row.owner.as_deref() == Some(worker) => {
                row.lease_expires_at = Some(lease_until(lease));
                true
            }
            _ => false,
        })
    }

    async fn finish(&self, job: &JobMessage, _worker: &str, outcome: &Outcome) -> Result<(), LedgerError> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let row = rows.entry(job.job_id.clone()).or_insert_with(|| Row::new(job));
        row.state = outcome.state();
        row.owner = None;
        row.lease_expires_at = None;
        row.finished_at = Some(Utc::now());
        if let Outcome::Succeeded { rows_written } = outcome {
            row.rows_written = *rows_written;
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn job(query: &str, nominal: &str, overlap: Overlap) -> JobMessage {
        let nominal: DateTime<Utc> = nominal.parse().expect("time");
        JobMessage {
            schema_version: JobMessage::SCHEMA_VERSION.into(),
            job_id: JobId::for_run("t", "a", query, nominal),
            tenant_id: "t".into(),
            app_id: "a".into(),
            query_id: query.into(),
            nominal_time: nominal,
            placed_time: nominal,
            window_start: nominal - chrono::Duration::hours(1),
            window_end: nominal,
            engine: "warehouse".into(),
            sql: "SELECT 1".into(),
            destination: "t".into(),
            timeout_secs: 60,
            max_attempts: 3,
            overlap,
            trigger: Default::default(),
            published_at: nominal,
        }
    }

    #[tokio::test]
    async fn the_rules_of_the_ledger() {
        let ledger = MemoryLedger::default();
        let lease = Duration::from_secs(60);
        let first = job("q", "2026-12-04T10:00:00Z", Overlap::Skip);
        assert_eq!(ledger.claim(&first, "w1", lease).await.ok(), Some(Claim::Run { attempt: 1 }));
        // A second delivery while w1 runs it is not started again.
        assert!(matches!(ledger.claim(&first, "w2", lease).await, Ok(Claim::RunningElsewhere { .. })));
        // The next run of the schedule waits for the previous one under `skip`...
        let second = job("q", "2026-12-04T11:00:00Z", Overlap::Skip);
        assert_eq!(
            ledger.claim(&second, "w2", lease).await.ok(),
            Some(Claim::PreviousRunning { previous: first.job_id.clone() })
        );
        // ...but not under `allow`.
        let allowed = job("q", "2026-12-04T12:00:00Z", Overlap::Allow);
        assert_eq!(ledger.claim(&allowed, "w2", lease).await.ok(), Some(Claim::Run { attempt: 1 }));
        assert_eq!(ledger.extend(&first.job_id, "w1", lease).await.ok(), Some(true));
        assert_eq!(ledger.extend(&first.job_id, "w2", lease).await.ok(), Some(false));
        ledger.finish(&first, "w1", &Outcome::Succeeded { rows_written: 7 }).await.expect("finish");
        assert!(matches!(ledger.claim(&first, "w3", lease).await, Ok(Claim::Succeeded { rows_written: 7, .. })));
        // A failed run may be claimed again, and the attempts add up.
        let failing = job("other", "2026-12-04T10:00:00Z", Overlap::Skip);
        ledger.claim(&failing, "w1", lease).await.expect("claim");
        let failed = Outcome::Failed { class: jobs_core::ErrorClass::Retryable, message: "x".into() };
        ledger.finish(&failing, "w1", &failed).await.expect("finish");
        assert_eq!(ledger.claim(&failing, "w2", lease).await.ok(), Some(Claim::Run { attempt: 2 }));
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over() {
        let ledger = MemoryLedger::default();
        let first = job("q", "2026-12-04T10:00:00Z", Overlap::Skip);
        ledger.claim(&first, "w1", Duration::ZERO).await.expect("claim");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(ledger.claim(&first, "w2", Duration::from_secs(60)).await.ok(), Some(Claim::Run { attempt: 2 }));
    }
}
