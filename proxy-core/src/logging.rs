//! Logging as every proxy sets it up: to stderr, text or JSON, filtered by `RUST_LOG`.

use serde::Serialize;
use tracing_subscriber::filter::Targets;

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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    if format == LogFormat::Json {
        registry.with(output.json()).init();
    } else {
        registry.with(output).init();
    }
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
}
