//! Request spans over OTLP: gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`)
//! or HTTP with protobuf bodies (`POST /v1/traces`), in plaintext or TLS (`https://`, the
//! collector's certificate checked against `--otlp-ca-cert` or the system's bundle).
//!
//! The request path only ever calls [`Exporter::record`], which puts the span in a bounded
//! queue with `try_send`: it never waits, never allocates a connection, and when the queue is
//! full the span is dropped and counted (`ambient_spans_dropped_total{reason="queue_full"}`).
//! A background task takes spans off the queue in batches (up to [`Settings::batch`] spans, or
//! whatever arrived within [`Settings::interval`] of the batch's first span) and exports each
//! batch with a deadline. A batch that cannot be delivered (no connection, timeout, error
//! status) is dropped and counted (`reason="export_failed"`), the connection is thrown away
//! and the next one is attempted after an exponential backoff. So a collector that is down
//! or slow costs spans, never request latency.
//!
//! The endpoint may name a Service of the mesh (`http://<svc>.<ns>.svc.cluster.local:4317`,
//! `<svc>.<ns>:4317`): the waypoint is not captured by ztunnel and cannot use the mesh's
//! DNS, so it resolves such names from its own xDS view (one healthy endpoint of that
//! Service, at the port's target port) and connects to the pod directly; TLS still checks
//! the certificate against the name in the endpoint. An IP address is used as is; any other
//! name goes to the system resolver.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambient_proto::opentelemetry::proto::collector::trace::v1::trace_service_client::TraceServiceClient;
use ambient_proto::opentelemetry::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use ambient_proto::opentelemetry::proto::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value,
};
use ambient_proto::opentelemetry::proto::resource::v1::Resource;
use ambient_proto::opentelemetry::proto::trace::v1::{
    ResourceSpans, ScopeSpans, Span as OtlpSpan, Status, span::SpanKind, status::StatusCode,
};
use metrics::counter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::telemetry::RequestLog;

pub const SPANS_EXPORTED: &str = "ambient_spans_exported_total";
pub const SPANS_DROPPED: &str = "ambient_spans_dropped_total";
/// OTLP/gRPC's well-known port.
pub const DEFAULT_PORT: u16 = 4317;
/// OTLP/HTTP's well-known port.
pub const DEFAULT_HTTP_PORT: u16 = 4318;
/// OTLP/HTTP's path for traces.
pub const TRACES_PATH: &str = "/v1/traces";
/// Where a CA bundle usually is when `--otlp-ca-cert` is not given (Debian, then Fedora).
pub const SYSTEM_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];
/// The instrumentation scope our spans are reported under.
pub const SCOPE: &str = "ambient-rs/waypoint";

pub fn describe() {
    metrics::describe_counter!(SPANS_EXPORTED, "Spans accepted by the OTLP receiver");
    metrics::describe_counter!(
        SPANS_DROPPED,
        "Spans not delivered, by reason (queue_full, export_failed, rejected)"
    );
}

/// How the exporter queues, batches and retries.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Spans waiting for export; beyond this, new spans are dropped.
    pub queue: usize,
    /// Most spans in one export.
    pub batch: usize,
    /// How long a batch waits for more spans after its first one.
    pub interval: Duration,
    /// Deadline of one connection attempt and of one export call.
    pub timeout: Duration,
    /// Reconnection backoff: first wait, doubled after each failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            queue: 2048,
            batch: 512,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// OTLP's transports (`OTEL_EXPORTER_OTLP_PROTOCOL`'s values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Protocol {
    /// gRPC (port 4317).
    #[default]
    #[value(name = "grpc")]
    #[serde(rename = "grpc")]
    Grpc,
    /// HTTP/1.1 POSTs of protobuf bodies (port 4318, `/v1/traces`).
    #[value(name = "http/protobuf")]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    /// The name `--otlp-protocol` and `OTEL_EXPORTER_OTLP_PROTOCOL` take.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// What a waypoint is told about span export, as tools that start waypoints pass it on
/// (`--otlp-endpoint`, `--otlp-protocol`, `--otlp-ca-cert`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Export {
    pub endpoint: String,
    pub protocol: Protocol,
    pub ca_cert: Option<std::path::PathBuf>,
}

impl Export {
    /// The endpoint parsed for the protocol, with its TLS roots read.
    pub fn target(&self) -> Result<Target, String> {
        Target::parse_as(&self.endpoint, self.protocol)?.with_roots(self.ca_cert.as_deref())
    }
}

/// Where spans go: `--otlp-endpoint` and `--otlp-protocol`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    /// `https://`: TLS, the certificate checked for `host`.
    pub tls: bool,
    /// The HTTP path (OTLP/HTTP only; empty for gRPC).
    pub path: String,
    /// PEM roots for TLS (`--otlp-ca-cert`, else the system's bundle); set by [`Target::with_roots`].
    pub roots: Option<Arc<[u8]>>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

impl Target {
    /// An OTLP/gRPC endpoint: see [`Target::parse_as`].
    pub fn parse(endpoint: &str) -> Result<Target, String> {
        Target::parse_as(endpoint, Protocol::Grpc)
    }

    /// `http[s]://host[:port][/path]` or `host[:port]`. The port defaults to the protocol's
    /// (4317, 4318); gRPC takes no path; OTLP/HTTP posts to the path given, else
    /// `/v1/traces`.
    pub fn parse_as(endpoint: &str, protocol: Protocol) -> Result<Target, String> {
        let e = endpoint.trim();
        let (tls, rest) = if let Some(r) = e.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = e.strip_prefix("https://") {
            (true, r)
        } else if e.contains("://") {
            return Err(format!("{endpoint}: expected http[s]://HOST[:PORT]"));
        } else {
            (false, e)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let path = match (protocol, path.trim_end_matches('/')) {
            (Protocol::Grpc, "") => String::new(),
            (Protocol::Grpc, _) => {
                return Err(format!(
                    "{endpoint}: expected http[s]://HOST[:PORT] (OTLP/gRPC has no path)"
                ));
            }
            (Protocol::HttpProtobuf, "") => TRACES_PATH.to_string(),
            (Protocol::HttpProtobuf, p) => p.to_string(),
        };
        if authority.is_empty() || path.contains(['?', '#', ' ']) {
            return Err(format!("{endpoint}: expected http[s]://HOST[:PORT][/PATH]"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{endpoint}: unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(format!("{endpoint}: expected a port after ']'")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{endpoint}: bad port {p:?}"))?,
            None if protocol == Protocol::HttpProtobuf => DEFAULT_HTTP_PORT,
            None => DEFAULT_PORT,
        };
        if host.is_empty() {
            return Err(format!("{endpoint}: no host"));
        }
        Ok(Target {
            host: host.to_ascii_lowercase(),
            port,
            protocol,
            tls,
            path,
            roots: None,
        })
    }

    /// Reads the roots a TLS endpoint is checked against: `ca_cert`, else the first system
    /// bundle found. A plaintext endpoint needs none (and a CA given for one is an error: it
    /// says the user expected TLS).
    pub fn with_roots(mut self, ca_cert: Option<&std::path::Path>) -> Result<Target, String> {
        if !self.tls {
            return match ca_cert {
                Some(p) => Err(format!(
                    "{}: a CA ({}) is given for a plaintext endpoint; use https://",
                    self,
                    p.display()
                )),
                None => Ok(self),
            };
        }
        let path = match ca_cert {
            Some(p) => p.to_path_buf(),
            None => SYSTEM_BUNDLES
                .iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    format!(
                        "{self}: TLS needs the collector's CA (--otlp-ca-cert): no system \
                         bundle at {SYSTEM_BUNDLES:?}"
                    )
                })?,
        };
        let pem = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        ambient_proto::tls::certs_from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        self.roots = Some(pem.into());
        Ok(self)
    }
}

/// Resolves a host name from the mesh's own view (Service hostnames), before DNS.
pub type MeshResolver = Arc<dyn Fn(&str, u16) -> Option<SocketAddr> + Send + Sync>;

/// Counts kept by the exporter itself (the same figures as its metrics), for tests and
/// diagnostics.
#[derive(Debug, Default)]
pub struct Stats {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub batches: AtomicU64,
}

impl Stats {
    fn drop_spans(&self, n: u64, reason: &'static str) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            counter!(SPANS_DROPPED, "reason" => reason).increment(n);
        }
    }
}

/// The request path's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Exporter {
    tx: mpsc::Sender<OtlpSpan>,
    stats: Arc<Stats>,
    /// The waypoint's namespace (`istio.namespace` on every span).
    namespace: Arc<str>,
}

impl Exporter {
    /// Starts the export task; it runs until `shutdown`, then tries one last export of what is
    /// queued.
    pub fn start(
        target: Target,
        namespace: &str,
        resource: Resource,
        settings: Settings,
        resolver: Option<MeshResolver>,
        shutdown: CancellationToken,
    ) -> (Exporter, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let stats = Arc::new(Stats::default());
        let task = Batcher {
            rx,
            target,
            resource,
            settings,
            resolver,
            stats: stats.clone(),
            client: None,
            failing: false,
        };
        let handle = tokio::spawn(task.run(shutdown));
        (
            Exporter {
                tx,
                stats,
                namespace: namespace.into(),
            },
            handle,
        )
    }

    /// Queues a span for export; drops it (counted) when the queue is full.
    pub fn record(&self, span: OtlpSpan) {
        if self.tx.try_send(span).is_err() {
            self.stats.drop_spans(1, "queue_full");
        }
    }

    /// Queues the span of a finished request.
    pub fn record_request(&self, log: &RequestLog) {
        self.record(request_span(log, &self.namespace, SystemTime::now()));
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// The waypoint's exporter, when `--otlp-endpoint` is set.
static EXPORTER: OnceLock<Exporter> = OnceLock::new();
/// `--trace-sampling` in millionths.
static SAMPLING_PPM: AtomicU32 = AtomicU32::new(1_000_000);

/// Makes `exporter` the one request spans go to (once per process).
pub fn install(exporter: Exporter) {
    let _ = EXPORTER.set(exporter);
}

pub fn exporter() -> Option<&'static Exporter> {
    EXPORTER.get()
}

/// Sets the share of new traces (requests without a valid `traceparent`) that are sampled.
pub fn set_sampling(percent: f64) {
    let ppm = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
    SAMPLING_PPM.store(ppm, Ordering::Relaxed);
}

/// Whether a trace this waypoint starts is sampled. A caller's `traceparent` decides for
/// itself (its sampled flag is kept).
pub fn sample_new_trace() -> bool {
    let ppm = SAMPLING_PPM.load(Ordering::Relaxed);
    ppm >= 1_000_000 || (ppm > 0 && rand::random_range(0..1_000_000) < ppm)
}

/// The waypoint's resource: `service.name` = `<gateway>.<namespace>`, as Istio names a
/// proxy's service.
pub fn resource(gateway: &str, namespace: &str, pod: &str) -> Resource {
    let mut attributes = vec![
        string("service.name", format!("{gateway}.{namespace}")),
        string("service.namespace", namespace),
        string("k8s.namespace.name", namespace),
    ];
    if !pod.is_empty() {
        attributes.push(string("k8s.pod.name", pod));
    }
    Resource {
        attributes,
        dropped_attributes_count: 0,
    }
}

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The span of one finished request (see docs/observability.md for the schema).
pub fn request_span(log: &RequestLog, namespace: &str, end: SystemTime) -> OtlpSpan {
    let start = end.checked_sub(log.started.elapsed()).unwrap_or(end);
    let port = log.downstream.dst.port();
    // Like Envoy in Istio: `<destination service host>:<port>/*`.
    let host = match &log.service {
        Some(s) => s.hostname.clone(),
        None => {
            let a = log.authority.as_str();
            match a.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() && !h.is_empty() => h.to_string(),
                _ if !a.is_empty() => a.to_string(),
                _ => log.downstream.dst.ip().to_string(),
            }
        }
    };
    let mut attributes = vec![
        string("http.request.method", &log.method),
        string("url.path", &log.path),
        int("http.response.status_code", i64::from(log.status)),
        string("server.address", &log.authority),
        string(
            "istio.source_principal",
            log.downstream.identity.to_string(),
        ),
        string(
            "istio.destination_principal",
            log.upstream
                .as_ref()
                .map(|e| e.workload.identity.to_string())
                .unwrap_or_else(|| "unknown".into()),
        ),
        string("istio.route", &log.route),
        string(
            "upstream.address",
            log.upstream
                .as_ref()
                .map(|e| e.addr.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        string("istio.response_flags", log.flags),
        string("istio.namespace", namespace),
        string("network.protocol.name", log.protocol),
    ];
    if let Some(s) = &log.service {
        attributes.push(string("istio.destination_service", &s.hostname));
    }
    if let Some(g) = &log.grpc_status {
        attributes.push(string("rpc.grpc.status_code", g));
    }
    let error = log.status >= 500 || log.status == 0;
    OtlpSpan {
        trace_id: log.span.trace_id.to_be_bytes().to_vec(),
        span_id: log.span.span_id.to_be_bytes().to_vec(),
        trace_state: log.span.trace_state.clone().unwrap_or_default(),
        parent_span_id: log
            .span
            .parent_id
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        flags: u32::from(log.span.sampled),
        name: format!("{host}:{port}/*"),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: unix_nanos(start),
        end_time_unix_nano: unix_nanos(end),
        attributes,
        status: error.then(|| Status {
            message: String::new(),
            code: StatusCode::Error as i32,
        }),
    }
}

/// The export task.
struct Batcher {
    rx: mpsc::Receiver<OtlpSpan>,
    target: Target,
    resource: Resource,
    settings: Settings,
    resolver: Option<MeshResolver>,
    stats: Arc<Stats>,
    client: Option<Client>,
    /// The receiver is known to be failing (reported once, until it recovers).
    failing: bool,
}

/// A connection to the receiver, kept between batches.
enum Client {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    /// One HTTP/1.1 connection; a new one after any failure.
    Http(hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Batcher {
    async fn run(mut self, shutdown: CancellationToken) {
        info!(endpoint = %self.target, "exporting request spans over OTLP");
        let mut backoff = self.settings.backoff_min;
        loop {
            let max = self.settings.batch.max(1);
            let mut batch = Vec::with_capacity(max);
            tokio::select! {
                n = self.rx.recv_many(&mut batch, max) => if n == 0 { return },
                () = shutdown.cancelled() => return self.flush().await,
            }
            let deadline = Instant::now() + self.settings.interval;
            let mut stopping = false;
            while batch.len() < max {
                let room = max - batch.len();
                tokio::select! {
                    n = self.rx.recv_many(&mut batch, room) => if n == 0 { break },
                    () = tokio::time::sleep_until(deadline) => break,
                    () = shutdown.cancelled() => { stopping = true; break }
                }
            }
            if self.export(batch).await {
                backoff = self.settings.backoff_min;
            } else {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => stopping = true,
                }
                backoff = (backoff * 2).min(self.settings.backoff_max);
            }
            if stopping {
                return self.flush().await;
            }
        }
    }

    /// One last export of what is queued, at shutdown.
    async fn flush(mut self) {
        let mut rest = Vec::new();
        while let Ok(s) = self.rx.try_recv() {
            rest.push(s);
        }
        for chunk in rest.chunks(self.settings.batch.max(1)) {
            if !self.export(chunk.to_vec()).await {
                break;
            }
        }
    }

    /// Exports one batch; `false` (the batch dropped and counted) when it failed.
    async fn export(&mut self, spans: Vec<OtlpSpan>) -> bool {
        let n = spans.len() as u64;
        let timeout = self.settings.timeout;
        let client = match self.client.take() {
            Some(c) => c,
            None => match tokio::time::timeout(timeout, self.connect()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return self.failed(n, &format!("cannot connect: {}", chain(&*e))),
                Err(_) => return self.failed(n, "connection timed out"),
            },
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: SCOPE.into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        attributes: Vec::new(),
                        dropped_attributes_count: 0,
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let sent = match client {
            Client::Grpc(client) => {
                let mut call = client.clone();
                match tokio::time::timeout(timeout, call.export(request)).await {
                    Ok(Ok(response)) => Ok((Client::Grpc(client), response.into_inner())),
                    Ok(Err(status)) => Err(format!(
                        "export refused: {:?} {}",
                        status.code(),
                        status.message()
                    )),
                    Err(_) => Err("export timed out".to_string()),
                }
            }
            Client::Http(mut sender) => {
                match tokio::time::timeout(timeout, self.post(&mut sender, &request)).await {
                    Ok(Ok(response)) => Ok((Client::Http(sender), response)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("export timed out".to_string()),
                }
            }
        };
        match sent {
            Ok((client, response)) => {
                let rejected = response
                    .partial_success
                    .map(|p| p.rejected_spans.clamp(0, n as i64) as u64)
                    .unwrap_or(0);
                self.stats.drop_spans(rejected, "rejected");
                self.stats
                    .exported
                    .fetch_add(n - rejected, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                counter!(SPANS_EXPORTED).increment(n - rejected);
                if std::mem::take(&mut self.failing) {
                    info!(endpoint = %self.target, "OTLP receiver reachable again");
                }
                self.client = Some(client);
                true
            }
            Err(why) => self.failed(n, &why),
        }
    }

    /// One OTLP/HTTP export: the request as a protobuf body; a 2xx answer's body is an
    /// `ExportTraceServiceResponse` (empty means full success).
    async fn post(
        &self,
        sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
        request: &ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, String> {
        use http_body_util::BodyExt;
        use prost::Message;
        sender
            .ready()
            .await
            .map_err(|e| format!("connection lost: {e}"))?;
        let authority = match self.target.host.contains(':') {
            true => format!("[{}]:{}", self.target.host, self.target.port),
            false => format!("{}:{}", self.target.host, self.target.port),
        };
        let req = http::Request::post(self.target.path.as_str())
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                request.encode_to_vec(),
            )))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("export failed: {}", chain(&e)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("export refused: HTTP {status} {}", text.trim()));
        }
        ExportTraceServiceResponse::decode(body)
            .map_err(|e| format!("export answered with a body that is not OTLP: {e}"))
    }

    /// Counts a batch that could not be delivered; warns once per outage.
    fn failed(&mut self, spans: u64, why: &str) -> bool {
        self.stats.drop_spans(spans, "export_failed");
        if self.failing {
            debug!(endpoint = %self.target, spans, "{why}; spans dropped");
        } else {
            warn!(endpoint = %self.target, spans, "{why}; spans dropped until the OTLP receiver answers");
            self.failing = true;
        }
        false
    }

    async fn connect(&self) -> Result<Client, BoxError> {
        let addr = self.resolve().await?;
        let client = match self.target.protocol {
            Protocol::Grpc => {
                let origin: http::Uri = self.target.to_string().parse()?;
                let scheme = if self.target.tls { "https" } else { "http" };
                let mut endpoint =
                    tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
                        .origin(origin)
                        .connect_timeout(self.settings.timeout)
                        .timeout(self.settings.timeout)
                        .tcp_nodelay(true);
                if let Some(roots) = self.tls_roots()? {
                    endpoint = endpoint.tls_config(
                        tonic::transport::ClientTlsConfig::new()
                            .ca_certificate(tonic::transport::Certificate::from_pem(roots))
                            .domain_name(self.target.host.clone()),
                    )?;
                }
                Client::Grpc(TraceServiceClient::new(endpoint.connect().await?))
            }
            Protocol::HttpProtobuf => {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                match self.tls_roots()? {
                    Some(roots) => {
                        let connector = tokio_rustls::TlsConnector::from(http_tls(roots)?);
                        let name =
                            rustls::pki_types::ServerName::try_from(self.target.host.clone())?;
                        Client::Http(http1(connector.connect(name, tcp).await?).await?)
                    }
                    None => Client::Http(http1(tcp).await?),
                }
            }
        };
        debug!(endpoint = %self.target, %addr, "connected to the OTLP receiver");
        Ok(client)
    }

    /// The PEM roots when the endpoint is TLS.
    fn tls_roots(&self) -> Result<Option<&[u8]>, BoxError> {
        match (&self.target.roots, self.target.tls) {
            (_, false) => Ok(None),
            (Some(roots), true) => Ok(Some(roots)),
            (None, true) => Err(format!("{}: TLS without roots", self.target).into()),
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, String> {
        let Target { host, port, .. } = &self.target;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, *port));
        }
        if let Some(addr) = self.resolver.as_ref().and_then(|r| r(host, *port)) {
            return Ok(addr);
        }
        tokio::net::lookup_host((host.as_str(), *port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))
    }
}

/// An HTTP/1.1 client connection over `io`, its connection task spawned.
async fn http1<S>(
    io: S,
) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>, BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "OTLP/HTTP connection ended");
        }
    });
    Ok(sender)
}

/// TLS for OTLP/HTTP: the given roots, ring, HTTP/1.1 by ALPN.
fn http_tls(roots_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in ambient_proto::tls::certs_from_pem(roots_pem)? {
        roots.add(der)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An error with its causes (`transport error: tcp connect error: Connection refused`).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        cause = c.source();
    }
    text
}

/// Resolves `host:port` against the mesh's Services: `<svc>.<ns>`, `<svc>.<ns>.svc` or the
/// full hostname, to one healthy endpoint at the port's target port.
pub fn mesh_resolver(state: Arc<proxy_core::state::StateStore>) -> MeshResolver {
    Arc::new(move |host: &str, port: u16| {
        let snapshot = state.load();
        let host = host.trim_end_matches('.');
        let candidates = [
            host.to_string(),
            format!("{host}.cluster.local"),
            format!("{host}.svc.cluster.local"),
        ];
        for name in &candidates {
            for service in snapshot.services_by_hostname(name) {
                let Some(sp) = service.ports.iter().find(|p| p.service_port == port) else {
                    continue;
                };
                let key = service.key();
                let endpoint = snapshot
                    .endpoints(service)
                    .iter()
                    .filter(|w| w.healthy)
                    .find_map(|w| w.addresses.first().map(|ip| (ip, w)));
                if let Some((ip, w)) = endpoint {
                    return Some(SocketAddr::new(*ip, w.target_port(&key, sp)));
                }
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambient_proto::opentelemetry::proto::collector::trace::v1::ExportTraceServiceResponse;
    use ambient_proto::opentelemetry::proto::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use std::sync::Mutex;
    use tokio::net::TcpListener;

    #[test]
    fn endpoints_parse() {
        let t = |s: &str| Target::parse(s);
        let grpc = t("http://sink.obs.svc.cluster.local:4317").unwrap();
        assert_eq!(
            (grpc.host.as_str(), grpc.port, grpc.tls, grpc.path.as_str()),
            ("sink.obs.svc.cluster.local", 4317, false, "")
        );
        assert_eq!(t("http://10.0.0.1/").unwrap().port, 4317);
        assert_eq!(t("collector:55680").unwrap().port, 55680);
        assert_eq!(t("http://[fd00::1]:4317").unwrap().host, "fd00::1");
        assert_eq!(
            t("http://[fd00::1]:4317").unwrap().to_string(),
            "http://[fd00::1]:4317"
        );
        assert!(t("https://collector").unwrap().tls);
        for bad in [
            "grpc://x:1",
            "http://x:0",
            "http://x:port",
            "http://x:4317/v1/traces",
            "http://",
            ":4317",
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }

        let h = |s: &str| Target::parse_as(s, Protocol::HttpProtobuf);
        let http = h("http://jaeger.obs").unwrap();
        assert_eq!((http.port, http.path.as_str()), (4318, "/v1/traces"));
        assert_eq!(http.to_string(), "http://jaeger.obs:4318/v1/traces");
        let custom = h("https://collector:443/otlp/v1/traces/").unwrap();
        assert_eq!(
            (custom.port, custom.path.as_str(), custom.tls),
            (443, "/otlp/v1/traces", true)
        );
        for bad in ["http://x/a?b", "http://x/a#b", "http:///v1/traces"] {
            assert!(h(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_endpoints_need_roots_and_plaintext_ones_refuse_them() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["collector".into()]).unwrap();
        let pem_path = dir.path().join("ca.pem");
        std::fs::write(&pem_path, ca.cert.pem()).unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();

        let tls = Target::parse("https://collector:4317").unwrap();
        let with = tls.clone().with_roots(Some(&pem_path)).unwrap();
        assert_eq!(with.roots.as_deref(), Some(ca.cert.pem().as_bytes()));
        let err = tls.clone().with_roots(Some(&garbage)).unwrap_err();
        assert!(err.contains("garbage.pem"), "{err}");
        let err = tls
            .with_roots(Some(&dir.path().join("missing.pem")))
            .unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");

        let plain = Target::parse("http://collector:4317").unwrap();
        assert!(plain.clone().with_roots(None).unwrap().roots.is_none());
        let err = plain.with_roots(Some(&pem_path)).unwrap_err();
        assert!(err.contains("use https://"), "{err}");
    }

    #[test]
    fn a_request_span_carries_ids_identities_and_the_route() {
        use ambient_proto::identity::Identity;
        use proxy_core::state::{Protocol, Service, Workload};
        use std::collections::BTreeMap;

        let reviews = Arc::new(Workload {
            uid: "Kubernetes//Pod/shop/reviews-v1".into(),
            name: "reviews-v1".into(),
            namespace: "shop".into(),
            addresses: vec!["10.244.1.7".parse().unwrap()],
            protocol: Protocol::Hbone,
            identity: Identity::new("cluster.local", "shop", "reviews").unwrap(),
            node: "node-1".into(),
            canonical_name: "reviews".into(),
            canonical_revision: "v1".into(),
            workload_name: "reviews-v1".into(),
            cluster_id: "Kubernetes".into(),
            region: String::new(),
            zone: String::new(),
            healthy: true,
            services: BTreeMap::new(),
            authorization_policies: Vec::new(),
            waypoint: None,
            host_network: false,
        });
        let service = Arc::new(Service {
            name: "reviews".into(),
            namespace: "shop".into(),
            hostname: "reviews.shop.svc.cluster.local".into(),
            vips: vec!["10.96.0.20".parse().unwrap()],
            ports: Vec::new(),
            waypoint: None,
        });
        let mut log = RequestLog {
            started: std::time::Instant::now(),
            downstream: Arc::new(crate::inbound::Downstream {
                identity: Identity::new("cluster.local", "shop", "productpage").unwrap(),
                addr: "10.244.2.3:40000".parse().unwrap(),
                workload: None,
                dst: "10.96.0.20:9080".parse().unwrap(),
            }),
            service: Some(service),
            method: "GET".into(),
            path: "/reviews/0".into(),
            authority: "reviews:9080".into(),
            protocol: "http",
            route: "shop.reviews.0".into(),
            upstream: Some(crate::upstream::Endpoint {
                workload: reviews,
                addr: "10.244.1.7:9080".parse().unwrap(),
            }),
            status: 200,
            grpc_status: None,
            flags: "-",
            request_bytes: 0,
            attempts: 1,
            trace_id: String::new(),
            span: crate::trace::Span {
                trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
                span_id: 0x1122334455667788,
                parent_id: Some(0x00f067aa0ba902b7),
                sampled: true,
                trace_state: Some("vendor=abc".into()),
            },
        };
        let end = SystemTime::now();
        let s = request_span(&log, "shop", end);
        assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&s.span_id), "1122334455667788");
        assert_eq!(hex(&s.parent_span_id), "00f067aa0ba902b7");
        assert_eq!(s.trace_state, "vendor=abc");
        assert_eq!(s.name, "reviews.shop.svc.cluster.local:9080/*");
        assert_eq!(s.kind, SpanKind::Server as i32);
        assert!(s.start_time_unix_nano <= s.end_time_unix_nano);
        assert_eq!(s.end_time_unix_nano, unix_nanos(end));
        assert_eq!(s.flags, 1);
        assert!(s.status.is_none(), "2xx leaves the status unset");
        let attr = |k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.as_ref())
                .and_then(|v| v.value.clone())
                .unwrap_or_else(|| panic!("no {k}"))
        };
        let text = |k: &str| match attr(k) {
            any_value::Value::StringValue(v) => v,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(text("http.request.method"), "GET");
        assert_eq!(text("url.path"), "/reviews/0");
        assert_eq!(
            attr("http.response.status_code"),
            any_value::Value::IntValue(200)
        );
        assert_eq!(text("server.address"), "reviews:9080");
        assert_eq!(
            text("istio.source_principal"),
            "spiffe://cluster.local/ns/shop/sa/productpage"
        );
        assert_eq!(
            text("istio.destination_principal"),
            "spiffe://cluster.local/ns/shop/sa/reviews"
        );
        assert_eq!(text("istio.route"), "shop.reviews.0");
        assert_eq!(text("upstream.address"), "10.244.1.7:9080");
        assert_eq!(text("istio.response_flags"), "-");
        assert_eq!(text("istio.namespace"), "shop");

        log.status = 503;
        log.flags = "UH";
        log.upstream = None;
        log.service = None;
        log.span.parent_id = None;
        let s = request_span(&log, "shop", end);
        assert_eq!(s.status.unwrap().code, StatusCode::Error as i32);
        assert!(s.parent_span_id.is_empty(), "a root span has no parent");
        assert_eq!(
            s.name, "reviews:9080/*",
            "workload traffic names the authority"
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sampling_bounds() {
        set_sampling(0.0);
        assert!((0..1000).all(|_| !sample_new_trace()));
        set_sampling(100.0);
        assert!((0..1000).all(|_| sample_new_trace()));
    }

    /// What the fake receiver got, and how it behaves.
    #[derive(Clone, Default)]
    struct Receiver {
        requests: Arc<Mutex<Vec<usize>>>,
        spans: Arc<Mutex<Vec<OtlpSpan>>>,
        hang: bool,
    }

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            if self.hang {
                std::future::pending::<()>().await;
            }
            let req = request.into_inner();
            let spans: Vec<OtlpSpan> = req
                .resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans)
                .collect();
            self.requests.lock().unwrap().push(spans.len());
            self.spans.lock().unwrap().extend(spans);
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    async fn serve(receiver: Receiver) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn span(i: u64) -> OtlpSpan {
        OtlpSpan {
            trace_id: vec![1; 16],
            span_id: (i + 1).to_be_bytes().to_vec(),
            name: format!("s{i}"),
            ..Default::default()
        }
    }

    fn target(addr: SocketAddr) -> Target {
        Target::parse(&addr.to_string()).unwrap()
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A certificate for `collector.test` signed by a new CA: (CA PEM, cert PEM, key PEM).
    fn collector_certificate() -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["collector.test".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    /// An OTLP/HTTP receiver over TLS; the first export is answered with one span rejected.
    async fn serve_http_tls(receiver: Receiver, cert: &str, key: &str) -> SocketAddr {
        use http_body_util::BodyExt;
        use prost::Message;
        let certs = ambient_proto::tls::certs_from_pem(cert.as_bytes()).unwrap();
        let key: rustls::pki_types::PrivateKeyDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue; // a client that refused our certificate
                };
                let receiver = receiver.clone();
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let receiver = receiver.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            assert_eq!(req.headers()["host"], format!("collector.test:{}", 4318));
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            let spans: Vec<OtlpSpan> = export
                                .resource_spans
                                .into_iter()
                                .flat_map(|r| r.scope_spans)
                                .flat_map(|s| s.spans)
                                .collect();
                            let first = receiver.requests.lock().unwrap().is_empty();
                            receiver.requests.lock().unwrap().push(spans.len());
                            receiver.spans.lock().unwrap().extend(spans);
                            let answer = ExportTraceServiceResponse {
                            partial_success: first.then_some(
                                ambient_proto::opentelemetry::proto::collector::trace::v1::ExportTracePartialSuccess {
                                    rejected_spans: 1,
                                    error_message: "one too many".into(),
                                },
                            ),
                        };
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(
                                    answer.encode_to_vec(),
                                )),
                            ))
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service),
                );
            }
        });
        addr
    }

    /// Resolves `collector.test` to `addr`, as the mesh resolver resolves a Service.
    fn resolve_to(addr: SocketAddr) -> MeshResolver {
        Arc::new(move |host: &str, _| (host == "collector.test").then_some(addr))
    }

    #[tokio::test]
    async fn otlp_http_over_tls_posts_protobuf_and_counts_rejections() {
        let (ca, cert, key) = collector_certificate();
        let receiver = Receiver::default();
        let addr = serve_http_tls(receiver.clone(), &cert, &key).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
        let target = Export {
            endpoint: "https://collector.test".into(),
            protocol: Protocol::HttpProtobuf,
            ca_cert: Some(dir.path().join("ca.pem")),
        }
        .target()
        .unwrap();
        let settings = Settings {
            batch: 10,
            ..Settings::default()
        };
        let (exporter, _task) = Exporter::start(
            target,
            "shop",
            resource("waypoint", "shop", ""),
            settings,
            Some(resolve_to(addr)),
            CancellationToken::new(),
        );
        for i in 0..25 {
            exporter.record(span(i));
        }
        wait_for("25 spans delivered, one rejected", || {
            exporter.stats().exported.load(Ordering::Relaxed) == 24
                && exporter.stats().dropped.load(Ordering::Relaxed) == 1
        })
        .await;
        assert_eq!(*receiver.requests.lock().unwrap(), vec![10, 10, 5]);
        // One connection carried all three exports (kept alive between batches).
        assert_eq!(exporter.stats().batches.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn tls_to_a_collector_whose_certificate_is_not_trusted_delivers_nothing() {
        let (_, cert, key) = collector_certificate();
        let (other_ca, _, _) = collector_certificate();
        let receiver = Receiver::default();
        let addr = serve_http_tls(receiver.clone(), &cert, &key).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("other.pem"), &other_ca).unwrap();
        let target = Export {
            endpoint: "https://collector.test".into(),
            protocol: Protocol::HttpProtobuf,
            ca_cert: Some(dir.path().join("other.pem")),
        }
        .target()
        .unwrap();
        let (exporter, _task) = Exporter::start(
            target,
            "shop",
            resource("waypoint", "shop", ""),
            Settings::default(),
            Some(resolve_to(addr)),
            CancellationToken::new(),
        );
        exporter.record(span(0));
        wait_for("the span dropped", || {
            exporter.stats().dropped.load(Ordering::Relaxed) == 1
        })
        .await;
        assert_eq!(exporter.stats().exported.load(Ordering::Relaxed), 0);
        assert!(receiver.requests.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn otlp_grpc_over_tls() {
        let (ca, cert, key) = collector_certificate();
        let receiver = Receiver::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(
                    tonic::transport::Identity::from_pem(cert.as_bytes(), key.as_bytes()),
                ))
                .unwrap()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
        let target = Export {
            endpoint: format!("https://collector.test:{}", addr.port()),
            protocol: Protocol::Grpc,
            ca_cert: Some(dir.path().join("ca.pem")),
        }
        .target()
        .unwrap();
        let (exporter, _task) = Exporter::start(
            target,
            "shop",
            resource("waypoint", "shop", ""),
            Settings::default(),
            Some(resolve_to(addr)),
            CancellationToken::new(),
        );
        for i in 0..3 {
            exporter.record(span(i));
        }
        wait_for("3 spans over gRPC with TLS", || {
            exporter.stats().exported.load(Ordering::Relaxed) == 3
        })
        .await;
        assert_eq!(receiver.spans.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn batches_by_size_then_by_time() {
        let receiver = Receiver::default();
        let addr = serve(receiver.clone()).await;
        let settings = Settings {
            batch: 100,
            interval: Duration::from_millis(300),
            ..Settings::default()
        };
        let (exporter, _task) = Exporter::start(
            target(addr),
            "shop",
            resource("waypoint", "shop", ""),
            settings,
            None,
            CancellationToken::new(),
        );
        let started = std::time::Instant::now();
        for i in 0..250 {
            exporter.record(span(i));
        }
        wait_for("all 250 spans exported", || {
            exporter.stats().exported.load(Ordering::Relaxed) == 250
        })
        .await;
        let sizes = receiver.requests.lock().unwrap().clone();
        assert_eq!(
            sizes,
            vec![100, 100, 50],
            "two full batches, then the rest on time"
        );
        assert_eq!(exporter.stats().batches.load(Ordering::Relaxed), 3);
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "the partial batch waited for the interval"
        );
        let names: Vec<String> = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(names.len(), 250);
        assert_eq!(names[0], "s0");
        assert_eq!(names[249], "s249");
        assert_eq!(exporter.stats().dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_without_waiting_and_a_stuck_receiver_only_costs_spans() {
        let receiver = Receiver {
            hang: true,
            ..Receiver::default()
        };
        let addr = serve(receiver.clone()).await;
        let settings = Settings {
            queue: 64,
            batch: 16,
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(200),
            backoff_min: Duration::from_secs(60),
            backoff_max: Duration::from_secs(60),
        };
        let (exporter, _task) = Exporter::start(
            target(addr),
            "shop",
            resource("waypoint", "shop", ""),
            settings,
            None,
            CancellationToken::new(),
        );
        // The first batch goes out and hangs; the queue then fills and stays full.
        exporter.record(span(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = std::time::Instant::now();
        for i in 1..=10_000 {
            exporter.record(span(i));
        }
        let spent = t.elapsed();
        assert!(
            spent < Duration::from_millis(500),
            "recording never waits (10 000 spans took {spent:?})"
        );
        let dropped = exporter.stats().dropped.load(Ordering::Relaxed);
        assert!(dropped >= 10_000 - 64, "queue overflow dropped: {dropped}");
        // The hung export times out: its batch is dropped too.
        wait_for("the stuck export timed out", || {
            exporter.stats().dropped.load(Ordering::Relaxed) > dropped
        })
        .await;
        assert_eq!(exporter.stats().exported.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_receiver_that_is_down_costs_spans_then_reconnects_when_back() {
        // A port where nothing listens (bound, then closed).
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let settings = Settings {
            batch: 10,
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(100),
            ..Settings::default()
        };
        let (exporter, _task) = Exporter::start(
            target(addr),
            "shop",
            resource("waypoint", "shop", ""),
            settings,
            None,
            CancellationToken::new(),
        );
        for i in 0..10 {
            exporter.record(span(i));
        }
        wait_for("the failed batch counted", || {
            exporter.stats().dropped.load(Ordering::Relaxed) == 10
        })
        .await;
        // The receiver comes up on that port: later spans arrive.
        let receiver = Receiver::default();
        let listener = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut i = 10;
        wait_for("spans exported after the receiver came back", || {
            exporter.record(span(i));
            i += 1;
            exporter.stats().exported.load(Ordering::Relaxed) > 0
        })
        .await;
    }

    #[tokio::test]
    async fn shutdown_flushes_what_is_queued() {
        let receiver = Receiver::default();
        let addr = serve(receiver.clone()).await;
        let shutdown = CancellationToken::new();
        let settings = Settings {
            interval: Duration::from_secs(60),
            ..Settings::default()
        };
        let (exporter, task) = Exporter::start(
            target(addr),
            "shop",
            resource("waypoint", "shop", ""),
            settings,
            None,
            shutdown.clone(),
        );
        for i in 0..5 {
            exporter.record(span(i));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends")
            .unwrap();
        assert_eq!(receiver.spans.lock().unwrap().len(), 5);
    }
}
