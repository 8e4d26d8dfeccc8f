//! JSON log lines that carry the OpenTelemetry `trace_id` and `span_id` of the span they were
//! logged in, so a log search and a trace viewer meet on the same ids.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OtelData;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// One JSON object per line: `timestamp`, `level`, `target`, the event's fields (`message`
/// among them), and inside a span `span` (its name and fields), `trace_id` and `span_id`.
pub struct JsonWithTraceIds;

/// The OpenTelemetry ids of a span, as lowercase hex (32 and 16 digits).
fn otel_ids(data: &OtelData) -> (Option<String>, Option<String>) {
    let parent = data.parent_cx.span();
    let parent = parent.span_context();
    let trace_id = if parent.is_valid() {
        Some(parent.trace_id())
    } else {
        data.builder.trace_id
    };
    (
        trace_id.map(|id| id.to_string()),
        data.builder.span_id.map(|id| id.to_string()),
    )
}

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), Value::String(timestamp));
        let metadata = event.metadata();
        line.insert("level".into(), Value::String(metadata.level().to_string()));
        line.insert("target".into(), Value::String(metadata.target().to_owned()));
        let mut fields = FieldsVisitor(Map::new());
        event.record(&mut fields);
        line.insert("fields".into(), Value::Object(fields.0));
        if let Some(span) = ctx.lookup_current() {
            let extensions = span.extensions();
            let mut current = Map::new();
            current.insert("name".into(), Value::String(span.name().to_owned()));
            // The span's own fields, as the JSON field formatter recorded them.
            if let Some(formatted) = extensions.get::<FormattedFields<JsonFields>>()
                && let Ok(Value::Object(span_fields)) =
                    serde_json::from_str::<Value>(formatted.as_str())
            {
                current.extend(span_fields);
            }
            line.insert("span".into(), Value::Object(current));
            if let Some(data) = extensions.get::<OtelData>() {
                let (trace_id, span_id) = otel_ids(data);
                if let Some(trace_id) = trace_id {
                    line.insert("trace_id".into(), Value::String(trace_id));
                }
                if let Some(span_id) = span_id {
                    line.insert("span_id".into(), Value::String(span_id));
                }
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects an event's fields as JSON values.
struct FieldsVisitor(Map<String, Value>);

impl Visit for FieldsVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_in_a_span_carries_its_trace_and_span_ids() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonWithTraceIds)
                    .fmt_fields(JsonFields::new())
                    .with_writer(move || writer.clone()),
            );
        let remote_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let request = tracing::info_span!("http", route = "/api/v1/auth/signup");
            request.in_scope(|| {
                tracing::info!(status = 202_u64, "answered");
                tracing::info_span!("inner").in_scope(|| tracing::warn!("nested"));
            });
            let consumed = tracing::info_span!("mail", offset = 7_i64);
            crate::set_remote_parent(
                &consumed,
                Some(&format!("00-{remote_trace}-00f067aa0ba902b7-01")),
            );
            consumed.in_scope(|| tracing::info!("sent"));
        });
        let text = String::from_utf8(lines.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        let parsed: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or(Value::Null))
            .collect();
        assert_eq!(parsed.len(), 4, "{text}");
        assert!(parsed.iter().all(Value::is_object), "{text}");
        assert!(parsed[0].get("trace_id").is_none());
        assert_eq!(parsed[0]["fields"]["message"], "outside any span");
        let (answered, nested, sent) = (&parsed[1], &parsed[2], &parsed[3]);
        assert_eq!(answered["span"]["name"], "http");
        assert_eq!(answered["span"]["route"], "/api/v1/auth/signup");
        assert_eq!(answered["fields"]["status"], 202);
        let trace_id = answered["trace_id"].as_str().unwrap_or_default();
        assert_eq!(trace_id.len(), 32, "{answered}");
        assert_eq!(answered["span_id"].as_str().map(str::len), Some(16));
        // A child span: the same trace, its own span id.
        assert_eq!(nested["trace_id"], trace_id);
        assert_ne!(nested["span_id"], answered["span_id"]);
        // A span continuing a remote trace (a Kafka record's traceparent) logs that trace's id.
        assert_eq!(sent["trace_id"], remote_trace);
        assert_eq!(sent["span"]["offset"], 7);
    }
}
