//! `demo-app get`: a small curl. Exit codes follow curl's: 0 on 2xx/3xx, 22 on an HTTP
//! error status (as with `curl -f`), 7 when the host cannot be resolved or connected to,
//! 28 on timeout, 56 when the connection fails mid-exchange, 3 for a malformed URL, 1 for
//! an unsupported scheme.
//!
//! With `--summary` no body is printed: once every request is done, one JSON line
//! ([`Summary`]) counts the outcomes, and any HTTP status counts as success (exit code 0);
//! only requests that got no response at all fail the command.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::HeaderName;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::cli::GetArgs;
use crate::client::{self, RequestSpec, Response};

/// Exit code when every request succeeded.
pub const OK: i32 = 0;
/// Exit code of an HTTP status of 400 or above.
pub const HTTP_ERROR: i32 = 22;
/// Exit code when the host cannot be resolved or connected to.
pub const COULD_NOT_CONNECT: i32 = 7;

/// The value `by` counts a response under when it lacks the `--by-header` header.
pub const MISSING: &str = "-";

/// The curl exit code matching a failed request.
pub fn exit_code(error: &client::Error) -> i32 {
    match error {
        client::Error::UnsupportedScheme(_) => 1,
        client::Error::InvalidUrl { .. } | client::Error::InvalidHeader(_) => 3,
        client::Error::Resolve { .. }
        | client::Error::NoAddress(_)
        | client::Error::Connect { .. } => COULD_NOT_CONNECT,
        client::Error::Timeout { .. } => 28,
        client::Error::Exchange { .. } => 56,
    }
}

/// The key a failed request is counted under in [`Summary::errors`].
pub fn error_kind(error: &client::Error) -> &'static str {
    match error {
        client::Error::UnsupportedScheme(_)
        | client::Error::InvalidUrl { .. }
        | client::Error::InvalidHeader(_) => "invalid",
        client::Error::Resolve { .. }
        | client::Error::NoAddress(_)
        | client::Error::Connect { .. } => "connect",
        client::Error::Timeout { .. } => "timeout",
        client::Error::Exchange { .. } => "exchange",
    }
}

/// The error kinds [`Summary::errors`] always has, even at zero.
pub const ERROR_KINDS: &[&str] = &["connect", "timeout", "exchange"];

/// What `--summary` prints: one JSON line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Requests sent.
    pub requests: u64,
    /// Responses with a 2xx or 3xx status.
    pub ok: u64,
    /// Responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// Requests that got no response, by [`error_kind`]; `connect`, `timeout` and
    /// `exchange` are always there.
    pub errors: BTreeMap<String, u64>,
    /// Responses by the value of the `--by-header` header ([`MISSING`] without it); empty
    /// without `--by-header`.
    pub by: BTreeMap<String, u64>,
    /// Response times of the requests that got a response.
    pub latency_ms: Latency,
    /// From the first request sent to the last one ended (what a rate is measured over).
    #[serde(default)]
    pub elapsed_ms: f64,
}

/// Percentiles (nearest rank) of response times, in milliseconds; `null` when nothing
/// answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// How one request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// An HTTP response, with the `--by-header` value when that header is asked for.
    Response {
        status: StatusCode,
        by: Option<String>,
    },
    /// No response; the [`error_kind`].
    Failed(&'static str),
}

/// One request's outcome and how long it took.
#[derive(Debug, Clone)]
pub struct Sample {
    pub latency: Duration,
    pub outcome: Outcome,
}

impl Summary {
    /// Sums `samples` up.
    pub fn from_samples(samples: &[Sample]) -> Self {
        let mut summary = Summary {
            requests: samples.len() as u64,
            errors: ERROR_KINDS.iter().map(|k| ((*k).to_owned(), 0)).collect(),
            ..Summary::default()
        };
        let mut latencies = Vec::with_capacity(samples.len());
        for sample in samples {
            match &sample.outcome {
                Outcome::Response { status, by } => {
                    if (200..400).contains(&status.as_u16()) {
                        summary.ok += 1;
                    }
                    *summary.status.entry(status.as_u16()).or_default() += 1;
                    if let Some(by) = by {
                        *summary.by.entry(by.clone()).or_default() += 1;
                    }
                    latencies.push(sample.latency);
                }
                Outcome::Failed(kind) => {
                    *summary.errors.entry((*kind).to_owned()).or_default() += 1
                }
            }
        }
        latencies.sort_unstable();
        summary.latency_ms = Latency {
            p50: percentile(&latencies, 0.50),
            p90: percentile(&latencies, 0.90),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied().map(millis),
        };
        summary
    }
}

/// The nearest-rank percentile of `sorted`.
fn percentile(sorted: &[Duration], fraction: f64) -> Option<f64> {
    let rank = ((fraction * sorted.len() as f64).ceil() as usize).max(1);
    sorted.get(rank - 1).copied().map(millis)
}

/// Milliseconds, to the microsecond.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// What the workers share.
struct Shared {
    spec: RequestSpec,
    count: u32,
    /// Requests handed out so far.
    started: AtomicU32,
    interval: Duration,
    include: bool,
    summary: bool,
    by_header: Option<HeaderName>,
    /// The exit code of the latest failure.
    code: AtomicI32,
}

/// Sends the requests; returns the exit code (that of the last failure, if any).
pub async fn run(args: &GetArgs) -> i32 {
    let spec = RequestSpec {
        method: args.method(),
        url: args.url.clone(),
        headers: args.headers.clone(),
        timeout: Duration::from_millis(args.timeout_ms),
        body: args.data.clone().map(Bytes::from).unwrap_or_default(),
        http2: args.http2,
    };
    if args.summary
        && let Err(e) = client::check_url(&spec.url)
    {
        // Nothing to measure: fail as a single request would.
        eprintln!("demo-app get: {e}");
        return exit_code(&e);
    }
    let shared = Arc::new(Shared {
        spec,
        count: args.count,
        started: AtomicU32::new(0),
        interval: Duration::from_millis(args.interval_ms),
        include: args.include,
        summary: args.summary,
        by_header: args.by_header.clone(),
        code: AtomicI32::new(OK),
    });
    let began = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency.min(args.count) {
        workers.spawn(worker(Arc::clone(&shared)));
    }
    let mut samples = Vec::with_capacity(args.count as usize);
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(mut some) => samples.append(&mut some),
            Err(e) => {
                eprintln!("demo-app get: worker failed: {e}");
                shared.code.store(1, Ordering::Relaxed);
            }
        }
    }
    let elapsed = began.elapsed();
    if args.summary {
        let summary = Summary {
            elapsed_ms: millis(elapsed),
            ..Summary::from_samples(&samples)
        };
        let line = serde_json::to_string(&summary).expect("a summary is always JSON");
        let mut out = io::stdout().lock();
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            eprintln!("demo-app get: cannot write the summary: {e}");
            return 23;
        }
    }
    shared.code.load(Ordering::Relaxed)
}

/// Sends requests until `count` have been handed out, waiting `interval` between its own.
async fn worker(shared: Arc<Shared>) -> Vec<Sample> {
    let mut samples = Vec::new();
    while shared.started.fetch_add(1, Ordering::Relaxed) < shared.count {
        if !samples.is_empty() && !shared.interval.is_zero() {
            tokio::time::sleep(shared.interval).await;
        }
        let started = Instant::now();
        let result = client::send(&shared.spec).await;
        let latency = started.elapsed();
        let (outcome, code) = match result {
            Ok(response) => {
                let code = if shared.summary {
                    OK
                } else {
                    report(&response, shared.include)
                };
                let by = shared.by_header.as_ref().map(|name| {
                    response.headers.get(name).map_or_else(
                        || MISSING.to_owned(),
                        |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                });
                (
                    Outcome::Response {
                        status: response.status,
                        by,
                    },
                    code,
                )
            }
            Err(e) => {
                eprintln!("demo-app get: {e}");
                (Outcome::Failed(error_kind(&e)), exit_code(&e))
            }
        };
        if code != OK {
            shared.code.store(code, Ordering::Relaxed);
        }
        samples.push(Sample { latency, outcome });
    }
    samples
}

fn report(response: &Response, include: bool) -> i32 {
    let status = response.status;
    let failed = status.as_u16() >= 400;
    if failed && !include {
        eprintln!("HTTP {}", status.as_u16());
        return HTTP_ERROR;
    }
    // With -i a failed response is shown whole (its headers say why: Retry-After, ...); the
    // exit code still says it failed.
    let mut out = io::stdout().lock();
    let written = (|| -> io::Result<()> {
        if include {
            writeln!(
                out,
                "{:?} {} {}",
                response.version,
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )?;
            for (name, value) in &response.headers {
                writeln!(out, "{name}: {}", String::from_utf8_lossy(value.as_bytes()))?;
            }
            writeln!(out)?;
        }
        out.write_all(&response.body)?;
        out.flush()
    })();
    match written {
        Ok(()) if failed => HTTP_ERROR,
        Ok(()) => OK,
        Err(e) => {
            eprintln!("demo-app get: cannot write the response: {e}");
            // curl's "failed writing received data".
            23
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(ms: u64, status: u16, by: Option<&str>) -> Sample {
        Sample {
            latency: Duration::from_millis(ms),
            outcome: Outcome::Response {
                status: StatusCode::from_u16(status).unwrap(),
                by: by.map(str::to_owned),
            },
        }
    }

    #[test]
    fn sums_up() {
        let mut samples: Vec<Sample> = (1..=100)
            .map(|ms| answered(ms, if ms % 10 == 0 { 503 } else { 200 }, Some("v1")))
            .collect();
        samples[0] = answered(1, 302, Some(MISSING));
        samples.push(Sample {
            latency: Duration::from_millis(5000),
            outcome: Outcome::Failed("timeout"),
        });
        let summary = Summary::from_samples(&samples);
        assert_eq!(summary.requests, 101);
        assert_eq!(summary.ok, 90);
        assert_eq!(
            summary.status,
            BTreeMap::from([(200, 89), (302, 1), (503, 10)])
        );
        assert_eq!(summary.errors["timeout"], 1);
        assert_eq!(summary.errors["connect"], 0);
        assert_eq!(summary.by["v1"], 99);
        assert_eq!(summary.by[MISSING], 1);
        // The timeout is not a response time.
        assert_eq!(summary.latency_ms.p50, Some(50.0));
        assert_eq!(summary.latency_ms.p90, Some(90.0));
        assert_eq!(summary.latency_ms.p99, Some(99.0));
        assert_eq!(summary.latency_ms.max, Some(100.0));

        let line = serde_json::to_string(&summary).unwrap();
        assert!(
            line.starts_with(r#"{"requests":101,"ok":90,"status":{"200":89,"302":1,"503":10},"errors":{"connect":0,"exchange":0,"timeout":1},"by":{"-":1,"v1":99},"latency_ms":{"p50":50.0,"#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Summary>(&line).unwrap(), summary);
    }

    #[test]
    fn sums_up_nothing() {
        let summary = Summary::from_samples(&[Sample {
            latency: Duration::from_millis(3),
            outcome: Outcome::Failed("connect"),
        }]);
        assert_eq!((summary.requests, summary.ok), (1, 0));
        assert!(summary.status.is_empty() && summary.by.is_empty());
        assert_eq!(summary.latency_ms, Latency::default());
        let line = serde_json::to_string(&summary).unwrap();
        assert!(
            line.ends_with(
                r#""latency_ms":{"p50":null,"p90":null,"p99":null,"max":null},"elapsed_ms":0.0}"#
            ),
            "{line}"
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let one = [Duration::from_micros(1500)];
        assert_eq!(percentile(&one, 0.5), Some(1.5));
        assert_eq!(percentile(&one, 0.99), Some(1.5));
        assert_eq!(percentile(&[], 0.5), None);
        let two = [Duration::from_millis(1), Duration::from_millis(2)];
        assert_eq!(percentile(&two, 0.5), Some(1.0));
        assert_eq!(percentile(&two, 0.9), Some(2.0));
    }
}
