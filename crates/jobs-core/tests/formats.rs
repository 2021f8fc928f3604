//! Golden-file and round-trip tests that pin the wire formats. A change that breaks one of
//! these breaks every deployed worker or consumer: bump the schema version instead.

use chrono::{DateTime, TimeZone, Utc};
use jobs_core::{DecodeError, ErrorClass, JobId, JobMessage, Overlap, ResultEvent, RunStatus, Trigger};

fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 4, h, m, s).single().expect("valid time")
}

fn sample_job() -> JobMessage {
    let nominal = t(10, 0, 0);
    JobMessage {
        schema_version: JobMessage::SCHEMA_VERSION.to_owned(),
        job_id: JobId::for_run("acme", "sales-insights", "hourly-revenue", nominal),
        tenant_id: "acme".into(),
        app_id: "sales-insights".into(),
        query_id: "hourly-revenue".into(),
        nominal_time: nominal,
        placed_time: t(10, 3, 17),
        window_start: t(9, 0, 0),
        window_end: nominal,
        engine: "warehouse".into(),
        sql: "SELECT store, SUM(amount) AS revenue FROM sales WHERE ts >= @window_start AND ts < @window_end GROUP BY store".into(),
        destination: "revenue_by_store".into(),
        timeout_secs: 300,
        max_attempts: 3,
        overlap: Overlap::Skip,
        trigger: Trigger::Scheduled,
        published_at: t(10, 3, 17),
    }
}

fn sample_result() -> ResultEvent {
    let job = sample_job();
    ResultEvent {
        schema_version: ResultEvent::SCHEMA_VERSION.to_owned(),
        job_id: job.job_id,
        tenant_id: job.tenant_id,
        app_id: job.app_id,
        query_id: job.query_id,
        nominal_time: job.nominal_time,
        status: RunStatus::Succeeded,
        attempt: 2,
        rows_written: 42,
        bytes_processed: Some(1_048_576),
        slot_millis: Some(2_345),
        started_at: t(10, 3, 18),
        finished_at: t(10, 3, 19),
        error_class: None,
        error_message: None,
        trigger: Trigger::Manual,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
    }
}

fn golden(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

#[test]
fn a_job_message_serializes_exactly_as_the_golden_file() {
    let encoded: serde_json::Value = serde_json::from_slice(&sample_job().encode()).expect("json");
    assert_eq!(encoded, golden("job_v1.json"));
}

#[test]
fn a_result_event_serializes_exactly_as_the_golden_file() {
    let encoded: serde_json::Value = serde_json::from_slice(&sample_result().encode()).expect("json");
    assert_eq!(encoded, golden("result_v1.2.json"));
}

#[test]
fn the_golden_files_decode_back_to_the_same_values() {
    let job = JobMessage::decode(&serde_json::to_vec(&golden("job_v1.json")).expect("json")).expect("decode");
    assert_eq!(job, sample_job());
    let result = ResultEvent::decode(&serde_json::to_vec(&golden("result_v1.2.json")).expect("json")).expect("decode");
    assert_eq!(result, sample_result());
}

#[test]
fn a_result_event_of_version_1_1_reads_without_engine_statistics() {
    let result = ResultEvent::decode(&serde_json::to_vec(&golden("result_v1.1.json")).expect("json")).expect("decode");
    assert_eq!((result.schema_version.as_str(), result.status), ("1.1", RunStatus::Failed));
    assert_eq!((result.bytes_processed, result.slot_millis), (None, None));
    assert_eq!(result.error_class, Some(ErrorClass::Permanent));
    assert_eq!(result.trace_id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
}

#[test]
fn a_result_event_of_version_1_0_reads_as_scheduled_without_a_trace() {
    let result = ResultEvent::decode(&serde_json::to_vec(&golden("result_v1.json")).expect("json")).expect("decode");
    assert_eq!(result.schema_version, "1.0");
    assert_eq!((result.trigger, result.trace_id), (Trigger::Scheduled, None));
    assert_eq!(result.job_id, sample_result().job_id);
}

#[test]
fn unknown_fields_and_newer_minor_versions_are_tolerated() {
    let mut value = golden("job_v1.json");
    value["schema_version"] = "1.7".into();
    value["a_field_from_the_future"] = serde_json::json!({"x": 1});
    let job = JobMessage::decode(&serde_json::to_vec(&value).expect("json")).expect("decode");
    assert_eq!(job.job_id, sample_job().job_id);
}

#[test]
fn an_unknown_major_version_is_a_typed_error() {
    let mut value = golden("job_v1.json");
    value["schema_version"] = "2.0".into();
    let err = JobMessage::decode(&serde_json::to_vec(&value).expect("json")).expect_err("must refuse");
    assert_eq!(err, DecodeError::UnsupportedVersion { kind: "job message", found: "2.0".into(), supported: 1 });
}

#[test]
fn garbage_and_missing_fields_are_malformed_errors_that_name_the_problem() {
    assert!(matches!(JobMessage::decode(b"not json"), Err(DecodeError::Malformed { .. })));
    let err = JobMessage::decode(br#"{"schema_version":"1.0","job_id":"x"}"#).expect_err("must refuse");
    assert!(err.to_string().contains("missing field"), "{err}");
    let err = ResultEvent::decode(br#"{"job_id":"x"}"#).expect_err("must refuse");
    assert!(err.to_string().contains("schema_version"), "{err}");
}

#[test]
fn manual_trigger_defaults_to_scheduled_when_absent() {
    let mut value = golden("job_v1.json");
    value.as_object_mut().expect("object").remove("trigger");
    let job = JobMessage::decode(&serde_json::to_vec(&value).expect("json")).expect("decode");
    assert_eq!(job.trigger, Trigger::Scheduled);
}
