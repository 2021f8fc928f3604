//! Logs via `tracing`: readable text locally, one JSON object per line in production, with
//! the fields Google Cloud Logging reads: `severity`, `message`, `time`, and — when
//! `log.gcp_project` is set and the event or one of its spans carries a `trace_id` — the
//! trace as `logging.googleapis.com/trace` (`projects/P/traces/T`), so that a run's log lines
//! group under its trace.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `info,controller=debug`. `RUST_LOG` wins
    /// when set.
    pub level: String,
    /// The Google Cloud project whose Cloud Trace the `trace_id` fields refer to (JSON logs
    /// only); empty: no `logging.googleapis.com/trace` field.
    pub gcp_project: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { format: LogFormat::Text, level: "info".into(), gcp_project: String::new() }
    }
}

impl LogSettings {
    pub fn problems(&self) -> Vec<String> {
        match EnvFilter::try_new(&self.level) {
            Ok(_) => vec![],
            Err(e) => vec![format!("log.level {:?} is not a valid filter: {e}", self.level)],
        }
    }
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match settings.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(CloudJson { project: settings.gcp_project.clone() })
            .init(),
    }
}

/// One JSON object per event: `time`, `severity`, `message`, `target`, the event's fields
/// and those of its spans (innermost wins), and the Cloud Logging trace when known.
struct CloudJson {
    project: String,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for CloudJson
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut object = serde_json::Map::new();
        // Span fields first (outermost to innermost), then the event's own.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<tracing_subscriber::fmt::FormattedFields<N>>()
                    && let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(fields)
                {
                    object.extend(map);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut object));
        let metadata = event.metadata();
        let severity = match *metadata.level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARNING",
            tracing::Level::INFO => "INFO",
            _ => "DEBUG",
        };
        object.insert("severity".into(), severity.into());
        object.insert("time".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        object.insert("target".into(), metadata.target().into());
        if !self.project.is_empty()
            && let Some(trace) = object.get("trace_id").and_then(|v| v.as_str()).filter(|t| !t.is_empty())
        {
            let trace = format!("projects/{}/traces/{trace}", self.project);
            object.insert("logging.googleapis.com/trace".into(), trace.into());
        }
        let line = serde_json::to_string(&object).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Collects an event's fields into a JSON object (`message` as the event's text).
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The JSON lines written while `f` runs under the Cloud Logging format.
    fn lines(project: &str, f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(CloudJson { project: project.into() })
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap_or_else(|p| p.into_inner()).clone()).expect("utf-8");
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
    }

    #[test]
    fn lines_carry_severity_message_span_fields_and_the_cloud_trace() {
        let got = lines("my-project", || {
            let span = tracing::info_span!("run", job_id = "j1", trace_id = "4bf92f3577b34da6a3ce929d0e0e4736");
            let _entered = span.enter();
            tracing::warn!(rows = 3, "run succeeded");
        });
        assert_eq!(got.len(), 1);
        let line = &got[0];
        assert_eq!(line["severity"], "WARNING");
        assert_eq!(line["message"], "run succeeded");
        assert_eq!(line["rows"], 3);
        assert_eq!(line["job_id"], "j1");
        assert_eq!(line["logging.googleapis.com/trace"], "projects/my-project/traces/4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn without_a_project_or_a_trace_there_is_no_trace_field() {
        let got = lines("", || {
            let span = tracing::info_span!("run", trace_id = "4bf92f3577b34da6a3ce929d0e0e4736");
            let _entered = span.enter();
            tracing::error!("boom");
        });
        assert_eq!(got[0]["severity"], "ERROR");
        assert!(got[0].get("logging.googleapis.com/trace").is_none());
        let got = lines("my-project", || tracing::info!("no trace here"));
        assert_eq!(got[0]["severity"], "INFO");
        assert!(got[0].get("logging.googleapis.com/trace").is_none());
    }
}
