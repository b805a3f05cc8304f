//! W3C trace context: continue the caller's trace with a new span, or start one.

use http::HeaderMap;
use http::HeaderValue;

/// The span this waypoint records for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub trace_id: u128,
    pub span_id: u64,
    /// The caller's span, when the request carried a trace context.
    pub parent_id: Option<u64>,
    pub sampled: bool,
    /// The caller's `tracestate`, kept as-is (forwarded unchanged and exported with the span).
    pub trace_state: Option<String>,
}

impl Span {
    /// A child of the request's `traceparent`, or the root of a new trace.
    pub fn for_request(headers: &HeaderMap) -> Span {
        let span_id = rand::random::<u64>().max(1);
        let mut span = match headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse)
        {
            Some((trace_id, parent, flags)) => Span {
                trace_id,
                span_id,
                parent_id: Some(parent),
                sampled: flags & 1 == 1,
                trace_state: None,
            },
            None => Span {
                trace_id: rand::random::<u128>().max(1),
                span_id,
                parent_id: None,
                sampled: true,
                trace_state: None,
            },
        };
        // W3C: a `tracestate` only means something alongside a valid `traceparent`.
        if span.parent_id.is_some() {
            span.trace_state = trace_state(headers);
        }
        span
    }

    /// The `traceparent` to send upstream: this span is the parent of what follows.
    pub fn traceparent(&self) -> HeaderValue {
        let flags = if self.sampled { "01" } else { "00" };
        HeaderValue::try_from(format!(
            "00-{:032x}-{:016x}-{flags}",
            self.trace_id, self.span_id
        ))
        .expect("hex is a valid header value")
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// The request's `tracestate` (several header lines are joined with commas, as W3C allows),
/// or `None` when absent, empty or not text.
fn trace_state(headers: &HeaderMap) -> Option<String> {
    let mut joined = String::new();
    for v in headers.get_all("tracestate") {
        let v = v.to_str().ok()?.trim();
        if v.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(v);
    }
    (!joined.is_empty()).then_some(joined)
}

/// `(trace id, parent span id, flags)` of a version-00 `traceparent`; invalid ones (all-zero
/// ids, wrong lengths, non-hex) are ignored as the W3C spec says.
fn parse(v: &str) -> Option<(u128, u64, u8)> {
    let mut parts = v.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let span = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
    Some((trace, span, u8::from_str_radix(flags, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace_and_starts_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let span = Span::for_request(&h);
        assert_eq!(span.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(span.parent_id, Some(0x00f067aa0ba902b7));
        assert!(span.sampled);
        let sent = span.traceparent();
        let sent = sent.to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!sent.contains("00f067aa0ba902b7"), "a new span id");
        assert_eq!(span.trace_state, None);

        h.append("tracestate", HeaderValue::from_static("vendor=abc"));
        h.append("tracestate", HeaderValue::from_static("other=x:y"));
        assert_eq!(
            Span::for_request(&h).trace_state.as_deref(),
            Some("vendor=abc,other=x:y")
        );

        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            h.insert("traceparent", HeaderValue::from_static(bad));
            let s = Span::for_request(&h);
            assert_eq!(s.parent_id, None, "{bad}");
            assert_eq!(
                s.trace_state, None,
                "no tracestate without a valid parent: {bad}"
            );
        }
    }
}
