//! Logs via `tracing`: readable text locally, one JSON object per line in production, with
//! the fields Google Cloud Logging reads: `severity`, `message`, `time`, and — when
//! `log.gcp_project` is set and the event or one of its spans carries a `trace_id` — the
//! trace as `logging.googleapis.com/trace` (`projects/P/traces/T`), so that a run's log lines
//! group under its trace. Spans are exported over OTLP/HTTP when the standard
//! `OTEL_EXPORTER_OTLP_*` variables say where; otherwise nothing is exported.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
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

/// Installs the global subscriber without span export (the standalone mode). Call once.
pub fn init(settings: &LogSettings) {
    let _ = init_with_export(settings, "sqo", &HashMap::new());
}

/// Span export, when on: keeps the exporter alive and flushes it when dropped (at exit).
#[must_use = "dropping it stops and flushes the span export"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    pub fn exports_spans(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("span export: cannot flush at exit: {e}");
        }
    }
}

/// Whether `env` turns span export on: the standard `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and neither `OTEL_TRACES_EXPORTER=none` nor
/// `OTEL_SDK_DISABLED=true` says otherwise.
pub fn span_export_wanted(env: &HashMap<String, String>) -> bool {
    let set = |k: &str| env.get(k).is_some_and(|v| !v.trim().is_empty());
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && env.get("OTEL_TRACES_EXPORTER").is_none_or(|v| v.trim() != "none")
        && env.get("OTEL_SDK_DISABLED").is_none_or(|v| !v.trim().eq_ignore_ascii_case("true"))
}

/// Installs the global subscriber: logs as configured, and — when `env` asks for it (see
/// [`span_export_wanted`]) — every span exported over OTLP/HTTP (protobuf) to
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`,
/// as `service` (the exporter reads headers and timeout from the other standard variables). With export off nothing is exported. Call once, from `main`.
pub fn init_with_export(settings: &LogSettings, service: &str, env: &HashMap<String, String>) -> Telemetry {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let mut problem = None;
    let provider = if span_export_wanted(env) {
        use opentelemetry_otlp::WithExportConfig;
        let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let endpoint = match (get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), get("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(traces), _) => traces.to_owned(),
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => String::new(),
        };
        match opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(endpoint).build() {
            Ok(exporter) => Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder_empty().with_service_name(service.to_owned()).build(),
                    )
                    .build(),
            ),
            Err(e) => {
                problem = Some(e.to_string());
                None
            }
        }
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider;
        tracing_opentelemetry::layer().with_tracer(p.tracer(service.to_owned()))
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match settings.format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry
            .with(
                fmt.fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(CloudJson { project: settings.gcp_project.clone() }),
            )
            .init(),
    }
    match (&provider, problem) {
        (Some(_), _) => tracing::info!(service, "spans exported over OTLP (OTEL_EXPORTER_OTLP_*)"),
        (None, Some(e)) => tracing::error!(error = %e, "span export asked for but not possible; no spans exported"),
        (None, None) => {}
    }
    Telemetry { provider }
}

/// The trace and span id of `span` when spans are exported (its OpenTelemetry context);
/// `None` when they are not.
pub fn span_trace(span: &tracing::Span) -> Option<(u128, u64)> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| (u128::from_be_bytes(sc.trace_id().to_bytes()), u64::from_be_bytes(sc.span_id().to_bytes())))
}

/// Makes `span` the child of a remote span (a W3C `traceparent`'s ids), so that exported
/// spans of both services form one trace. Without span export it does nothing.
pub fn set_remote_parent(span: &tracing::Span, trace_id: u128, span_id: u64, sampled: bool) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
    let remote = SpanContext::new(
        TraceId::from_bytes(trace_id.to_be_bytes()),
        SpanId::from_bytes(span_id.to_be_bytes()),
        flags,
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
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
    fn span_export_follows_the_standard_variables() {
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(!span_export_wanted(&env(&[])));
        assert!(!span_export_wanted(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(span_export_wanted(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])));
        assert!(span_export_wanted(&env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")])));
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert!(!span_export_wanted(&env(&[on, ("OTEL_TRACES_EXPORTER", "none")])));
        assert!(!span_export_wanted(&env(&[on, ("OTEL_SDK_DISABLED", "TRUE")])));
        assert!(span_export_wanted(&env(&[on, ("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_SDK_DISABLED", "false")])));
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
