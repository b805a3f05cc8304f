//! Access logs as OTLP log records. Both proxies write their access log as `tracing` events
//! of target `access` (one per connection in ztunnel, one per request in the waypoint); this
//! layer, part of every proxy's logging ([`crate::logging::init_logging`]), turns each such
//! event into one [`LogRecord`] once [`install`] has given it an exporter: the message is the
//! body, every field an attribute under its own name, the level the severity, and the
//! fields `trace_id` (32 hex digits) and `span_id` (16) the record's trace context, so logs
//! and traces join in the backend. Until then, and for every other target, it does nothing.
//! The stderr log is unchanged; the same filter (`RUST_LOG`) applies to both.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use ambient_proto::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
use ambient_proto::opentelemetry::proto::logs::v1::{LogRecord, SeverityNumber};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use super::{Exporter, Logs};

/// The target of access log events.
pub const TARGET: &str = "access";

static EXPORTER: OnceLock<Exporter<Logs>> = OnceLock::new();

/// Sends access log records to `exporter` from now on (once per process).
pub fn install(exporter: Exporter<Logs>) {
    let _ = EXPORTER.set(exporter);
}

/// The exporter access logs go to, once installed.
pub fn exporter() -> Option<&'static Exporter<Logs>> {
    EXPORTER.get()
}

/// The layer that feeds [`install`]'s exporter.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccessLogLayer;

impl<S: Subscriber> Layer<S> for AccessLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        if let Some(exporter) = EXPORTER.get() {
            exporter.record(record(event, SystemTime::now()));
        }
    }
}

/// The log record of an access log event observed at `now`.
pub fn record(event: &Event<'_>, now: SystemTime) -> LogRecord {
    let mut fields = Fields::default();
    event.record(&mut fields);
    let (severity, text) = match *event.metadata().level() {
        tracing::Level::ERROR => (SeverityNumber::Error, "ERROR"),
        tracing::Level::WARN => (SeverityNumber::Warn, "WARN"),
        tracing::Level::INFO => (SeverityNumber::Info, "INFO"),
        tracing::Level::DEBUG => (SeverityNumber::Debug, "DEBUG"),
        tracing::Level::TRACE => (SeverityNumber::Trace, "TRACE"),
    };
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let traced = fields.trace_id.len() == 16;
    LogRecord {
        time_unix_nano: nanos,
        observed_time_unix_nano: nanos,
        severity_number: severity as i32,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(fields.message)),
        }),
        attributes: fields.attributes,
        dropped_attributes_count: 0,
        flags: u32::from(traced),
        trace_id: if traced { fields.trace_id } else { Vec::new() },
        span_id: if traced && fields.span_id.len() == 8 {
            fields.span_id
        } else {
            Vec::new()
        },
        event_name: String::new(),
    }
}

/// An event's fields: the message, the trace context, the rest as attributes.
#[derive(Default)]
struct Fields {
    message: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    attributes: Vec<KeyValue>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: any_value::Value) {
        self.attributes.push(KeyValue {
            key: field.name().to_string(),
            value: Some(AnyValue { value: Some(value) }),
        });
    }

    fn text(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "trace_id" => {
                self.trace_id = hex(&value, 16);
                self.push(field, any_value::Value::StringValue(value));
            }
            "span_id" => {
                self.span_id = hex(&value, 8);
                self.push(field, any_value::Value::StringValue(value));
            }
            _ => self.push(field, any_value::Value::StringValue(value)),
        }
    }
}

/// `len` bytes from lowercase or uppercase hex, or nothing (not an id, or all zero, which
/// W3C trace context calls invalid).
fn hex(text: &str, len: usize) -> Vec<u8> {
    if text.len() != len * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Vec::new();
    }
    let bytes: Vec<u8> = (0..len)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    if bytes.iter().all(|b| *b == 0) {
        Vec::new()
    } else {
        bytes
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.text(field, format!("{value:?}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, any_value::Value::IntValue(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(v) => self.push(field, any_value::Value::IntValue(v)),
            Err(_) => self.push(field, any_value::Value::StringValue(value.to_string())),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, any_value::Value::BoolValue(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, any_value::Value::DoubleValue(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Records every access event's log record, as the exporter would get it.
    struct Capture(Arc<Mutex<Vec<LogRecord>>>);

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            if event.metadata().target() == TARGET {
                self.0.lock().unwrap().push(record(
                    event,
                    UNIX_EPOCH + std::time::Duration::from_secs(7),
                ));
            }
        }
    }

    fn attribute<'a>(r: &'a LogRecord, key: &str) -> &'a any_value::Value {
        r.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .unwrap_or_else(|| panic!("no {key} in {r:?}"))
    }

    #[test]
    fn access_events_become_records_with_their_fields_and_trace_context() {
        let records = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(records.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::event!(target: "access", tracing::Level::INFO, src.addr = %"10.244.1.2:4000", status = 200_u64,
                duration_ms = format_args!("{:.2}", 1.5), trace_id = %"4bf92f3577b34da6a3ce929d0e0e4736",
                span_id = %"00f067aa0ba902b7", "request");
            tracing::event!(target: "access", tracing::Level::ERROR, response_flags = "DENY", trace_id = %"", "connection complete");
            tracing::info!(target: "other", "not an access log");
        });
        let records = records.lock().unwrap();
        assert_eq!(
            records.len(),
            2,
            "one record per access event, none for others"
        );

        let request = &records[0];
        assert_eq!(
            request.body.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("request".into()))
        );
        assert_eq!(request.severity_number, SeverityNumber::Info as i32);
        assert_eq!(request.time_unix_nano, 7_000_000_000);
        assert_eq!(
            request.trace_id,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(
            request.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(request.flags, 1);
        assert_eq!(
            attribute(request, "src.addr"),
            &any_value::Value::StringValue("10.244.1.2:4000".into())
        );
        assert_eq!(
            attribute(request, "status"),
            &any_value::Value::IntValue(200)
        );
        assert_eq!(
            attribute(request, "duration_ms"),
            &any_value::Value::StringValue("1.50".into())
        );

        let connection = &records[1];
        assert_eq!(connection.severity_number, SeverityNumber::Error as i32);
        assert_eq!(connection.severity_text, "ERROR");
        assert!(connection.trace_id.is_empty() && connection.span_id.is_empty());
        assert_eq!(connection.flags, 0);
        assert_eq!(
            attribute(connection, "response_flags"),
            &any_value::Value::StringValue("DENY".into())
        );
    }

    #[test]
    fn only_real_ids_become_trace_context() {
        assert_eq!(hex("00f067aa0ba902b7", 8).len(), 8);
        assert!(hex("0000000000000000", 8).is_empty(), "all zero is invalid");
        assert!(hex("00f067aa0ba902b", 8).is_empty(), "too short");
        assert!(hex("zzf067aa0ba902b7", 8).is_empty(), "not hex");
        assert!(hex("-", 16).is_empty());
    }
}
