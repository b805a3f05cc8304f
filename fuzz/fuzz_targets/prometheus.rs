//! The Prometheus text exposition reader (`proxy_core::exposition::parse`), with which the
//! dashboard, the benchmarks and the end-to-end tests read the proxies' `/metrics`.
//!
//! Checks: what parses, written back in the exposition format (label values escaped), parses
//! to the same samples (names, labels, values bit for bit, NaN as NaN) and the same series
//! keys; there are never more samples than lines.

#![no_main]

use std::fmt::Write as _;

use libfuzzer_sys::fuzz_target;
use proxy_core::exposition::{Sample, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(samples) = parse(text) else {
        return;
    };
    assert!(samples.len() <= text.lines().count());
    let written = write(&samples);
    let again =
        parse(&written).unwrap_or_else(|e| panic!("what we wrote does not parse: {e}\n{written}"));
    assert_eq!(again.len(), samples.len());
    for (a, b) in samples.iter().zip(&again) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.labels, b.labels);
        assert!(
            a.value.to_bits() == b.value.to_bits() || (a.value.is_nan() && b.value.is_nan()),
            "{} became {}",
            a.value,
            b.value
        );
        assert_eq!(a.series_key(), b.series_key());
    }
});

/// The exposition format, as a Prometheus client writes it.
fn write(samples: &[Sample]) -> String {
    let mut out = String::new();
    for s in samples {
        out.push_str(&s.name);
        if !s.labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in s.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(out, "{k}=\"{v}\"");
            }
            out.push('}');
        }
        let value = match s.value {
            v if v.is_nan() => "NaN".to_string(),
            f64::INFINITY => "+Inf".to_string(),
            f64::NEG_INFINITY => "-Inf".to_string(),
            v => format!("{v:?}"),
        };
        let _ = writeln!(out, " {value}");
    }
    out
}
