//! Logging as every proxy sets it up: to stderr, text or JSON, filtered by `RUST_LOG`.
//!
//! Both layouts are Istio ztunnel's, so log pipelines built for it read ours unchanged:
//! text is `<time>\t<level>\t<scope>\t<message>\t<key=value ...>`, JSON is one flat object
//! with `level`, `time`, `scope`, `message` and the event's fields under their own names.

use std::fmt::{self, Write as _};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines (the access log among them) are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line each.
    #[default]
    Text,
    /// One JSON object each, for log pipelines.
    Json,
}

/// Installs the global tracing subscriber (stderr, `RUST_LOG` or `info`).
///
/// `RUST_LOG` takes `level` and `target=level` directives separated by commas (for example
/// `info,ztunnel::proxy=debug`). These are [`Targets`] rather than `EnvFilter`: the span and
/// field filters of the latter need a regex engine, which would add about half a megabyte to
/// every proxy's resident memory.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, refused) = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .event_format(IstioLayout(format));
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .with(crate::otlp::access_log::AccessLogLayer)
        .init();
    if let Some(e) = refused {
        tracing::warn!(error = %e, "RUST_LOG not understood; logging at info");
    }
}

/// The log filter for a `RUST_LOG` value: `info` when unset, and also when it does not parse
/// (with the reason, to be reported once logging is up).
fn log_filter(spec: Option<&str>) -> (Targets, Option<String>) {
    let info = || Targets::new().with_default(tracing::Level::INFO);
    match spec.map(str::trim).filter(|s| !s.is_empty()) {
        None => (info(), None),
        Some(spec) => match spec.parse::<Targets>() {
            Ok(targets) => (targets, None),
            Err(e) => (info(), Some(format!("{spec:?}: {e}"))),
        },
    }
}

/// Istio ztunnel's line layout in `LogFormat`'s two forms.
#[derive(Clone, Copy, Debug)]
pub struct IstioLayout(pub LogFormat);

impl<S, N> FormatEvent<S, N> for IstioLayout
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let level = lowercase(meta.level());
        match self.0 {
            LogFormat::Text => {
                // Every proxy writes one of these per connection or request (the access
                // log), so the field buffers are the thread's own, kept between lines (fresh
                // ones if they are in use: a line formatted while another one is).
                let reused = TEXT_FIELDS.try_with(|cell| {
                    let mut fields = cell.try_borrow_mut().ok()?;
                    let written = text_line(&mut writer, event, level, &mut fields);
                    fields.shrink_if_large();
                    Some(written)
                });
                match reused {
                    Ok(Some(written)) => written,
                    _ => text_line(&mut writer, event, level, &mut TextFields::default()),
                }
            }
            LogFormat::Json => {
                let mut time = String::with_capacity(32);
                SystemTime.format_time(&mut Writer::new(&mut time))?;
                let mut object = serde_json::Map::new();
                object.insert("level".into(), level.into());
                object.insert("time".into(), time.into());
                object.insert("scope".into(), meta.target().into());
                let mut fields = JsonFields(object);
                event.record(&mut fields);
                let line = serde_json::to_string(&fields.0).map_err(|_| fmt::Error)?;
                writeln!(writer, "{line}")
            }
        }
    }
}

/// One text line: `<time>\t<level>\t<scope>\t<message>[\t<key=value ...>]`.
fn text_line(
    writer: &mut Writer<'_>,
    event: &Event<'_>,
    level: &str,
    fields: &mut TextFields,
) -> fmt::Result {
    fields.message.clear();
    fields.rest.clear();
    event.record(fields);
    SystemTime.format_time(writer)?;
    let target = event.metadata().target();
    write!(writer, "\t{level}\t{target}\t{}", fields.message)?;
    if !fields.rest.is_empty() {
        write!(writer, "\t{}", fields.rest)?;
    }
    writeln!(writer)
}

/// Istio's level names.
fn lowercase(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "error",
        tracing::Level::WARN => "warn",
        tracing::Level::INFO => "info",
        tracing::Level::DEBUG => "debug",
        tracing::Level::TRACE => "trace",
    }
}

thread_local! {
    static TEXT_FIELDS: std::cell::RefCell<TextFields> = std::cell::RefCell::default();
}

/// An event's fields as text: the message alone, the rest as `key=value` (strings quoted).
#[derive(Default)]
struct TextFields {
    message: String,
    rest: String,
}

impl TextFields {
    /// Buffers kept between lines stay small: one long line does not hold its size forever.
    fn shrink_if_large(&mut self) {
        const KEEP: usize = 4096;
        for buffer in [&mut self.message, &mut self.rest] {
            if buffer.capacity() > KEEP {
                buffer.clear();
                buffer.shrink_to(KEEP);
            }
        }
    }

    fn push(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if field.name() == "message" {
            let _ = self.message.write_fmt(value);
            return;
        }
        if !self.rest.is_empty() {
            self.rest.push(' ');
        }
        self.rest.push_str(field.name());
        self.rest.push('=');
        let _ = self.rest.write_fmt(value);
    }
}

impl Visit for TextFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Quoted as `{:?}` quotes it; a string with nothing to escape (printable ASCII, no
        // quote or backslash: paths, names, identities) is copied instead of escaped per char.
        let plain = value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
        if plain {
            self.push(field, format_args!("\"{value}\""));
        } else {
            self.push(field, format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, format_args!("{value:?}"));
    }
}

/// An event's fields as JSON members, numbers and booleans as themselves.
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl JsonFields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        self.0.insert(field.name().to_string(), value);
    }
}

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

/// The lines `f` logs, laid out as `format` (for tests of what a component logs).
pub fn capture(format: LogFormat, f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let sink = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .event_format(IstioLayout(format))
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buffer.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::filter::LevelFilter;

    use super::log_filter;

    #[test]
    fn rust_log_directives_set_levels_per_target() {
        let (filter, refused) = log_filter(Some("warn,ztunnel::proxy=debug"));
        assert_eq!(refused, None);
        assert!(filter.would_enable("ztunnel::proxy::inbound", &Level::DEBUG));
        assert!(!filter.would_enable("ztunnel::proxy::inbound", &Level::TRACE));
        assert!(!filter.would_enable("ztunnel::xds", &Level::INFO));
        assert!(filter.would_enable("ztunnel::xds", &Level::WARN));
    }

    #[test]
    fn unset_or_unparsable_rust_log_means_info_and_says_why() {
        for unset in [None, Some(""), Some("  ")] {
            let (filter, refused) = log_filter(unset);
            assert_eq!(filter.default_level(), Some(LevelFilter::INFO));
            assert_eq!(refused, None);
        }
        let (filter, refused) = log_filter(Some("ztunnel=loud"));
        assert_eq!(filter.default_level(), Some(LevelFilter::INFO));
        assert!(refused.expect("a reason").contains("ztunnel=loud"));
    }

    #[test]
    fn text_is_istios_tab_separated_layout() {
        let out = super::capture(super::LogFormat::Text, || {
            tracing::event!(target: "access", tracing::Level::INFO, src.addr = %"10.0.0.1:5",
                bytes_sent = 7u64, src.workload = Some("client"), "connection complete");
            tracing::warn!(target: "xds", "no fields");
        });
        let lines: Vec<&str> = out.lines().collect();
        let cols: Vec<&str> = lines[0].split('\t').collect();
        assert_eq!(cols.len(), 5, "{out}");
        assert!(cols[0].ends_with('Z') && cols[0].contains('T'), "{out}");
        assert_eq!(&cols[1..4], ["info", "access", "connection complete"]);
        assert_eq!(
            cols[4],
            r#"src.addr=10.0.0.1:5 bytes_sent=7 src.workload="client""#
        );
        let cols: Vec<&str> = lines[1].split('\t').collect();
        assert_eq!(&cols[1..], ["warn", "xds", "no fields"]);
    }

    #[test]
    fn strings_are_quoted_exactly_as_debug_quotes_them() {
        let values = [
            "/productpage",
            "",
            "say \"hi\"",
            "back\\slash",
            "tab\there",
            "line\nbreak",
            "caf\u{e9}",
            "bell\u{7}",
            "del\u{7f}",
            "zero\u{200b}width",
        ];
        for value in values {
            let out = super::capture(super::LogFormat::Text, || {
                tracing::info!(target: "access", v = value, "m");
            });
            let field = out.trim_end().rsplit('\t').next().unwrap();
            assert_eq!(field, format!("v={value:?}"), "{value:?}");
        }
    }

    #[test]
    fn a_long_line_leaves_no_large_buffer_behind() {
        let long = "x".repeat(100_000);
        let out = super::capture(super::LogFormat::Text, || {
            tracing::info!(target: "access", path = %long, "request");
            tracing::info!(target: "access", path = "/short", "request");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].ends_with(&format!("path={long}")),
            "the long line whole"
        );
        assert!(
            lines[1].ends_with("\trequest\tpath=\"/short\""),
            "{}",
            lines[1]
        );
        super::TEXT_FIELDS.with_borrow(|fields| {
            assert!(fields.rest.capacity() <= 4096, "{}", fields.rest.capacity());
        });
    }

    #[test]
    fn json_is_one_flat_object_with_istios_keys() {
        let out = super::capture(super::LogFormat::Json, || {
            tracing::event!(target: "access", tracing::Level::ERROR, src.addr = %"10.0.0.1:5",
                bytes_sent = 7u64, error = "refused", "connection complete");
        });
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["scope"], "access");
        assert_eq!(v["message"], "connection complete");
        assert_eq!(v["src.addr"], "10.0.0.1:5");
        assert_eq!(v["bytes_sent"], 7);
        assert_eq!(v["error"], "refused");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}
