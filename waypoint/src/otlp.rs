//! Request spans over OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
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
//! Service, at the port's target port) and connects to the pod directly, in plaintext. An IP
//! address is used as is; any other name goes to the system resolver.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambient_proto::opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest;
use ambient_proto::opentelemetry::proto::collector::trace::v1::trace_service_client::TraceServiceClient;
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

/// Where spans go: `--otlp-endpoint`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

impl Target {
    /// `http://host[:port][/]` or `host[:port]` (port 4317 when absent). Plaintext only:
    /// `https://` is refused rather than silently sent in the clear.
    pub fn parse(endpoint: &str) -> Result<Target, String> {
        let e = endpoint.trim();
        let rest = if let Some(r) = e.strip_prefix("http://") {
            r
        } else if e.starts_with("https://") {
            return Err(format!(
                "{endpoint}: TLS to the OTLP receiver is not supported yet; use http://"
            ));
        } else if e.contains("://") {
            return Err(format!("{endpoint}: expected http://HOST[:PORT]"));
        } else {
            e
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.is_empty() {
            return Err(format!(
                "{endpoint}: expected http://HOST[:PORT] (OTLP/gRPC has no path)"
            ));
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
            None => DEFAULT_PORT,
        };
        if host.is_empty() {
            return Err(format!("{endpoint}: no host"));
        }
        Ok(Target {
            host: host.to_ascii_lowercase(),
            port,
        })
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
    client: Option<TraceServiceClient<tonic::transport::Channel>>,
    /// The receiver is known to be failing (reported once, until it recovers).
    failing: bool,
}

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
        let mut call = client.clone();
        match tokio::time::timeout(timeout, call.export(request)).await {
            Ok(Ok(response)) => {
                let rejected = response
                    .into_inner()
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
            Ok(Err(status)) => self.failed(
                n,
                &format!("export refused: {:?} {}", status.code(), status.message()),
            ),
            Err(_) => self.failed(n, "export timed out"),
        }
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

    async fn connect(
        &self,
    ) -> Result<
        TraceServiceClient<tonic::transport::Channel>,
        Box<dyn std::error::Error + Send + Sync>,
    > {
        let addr = self.resolve().await?;
        let origin: http::Uri = self.target.to_string().parse()?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .origin(origin)
            .connect_timeout(self.settings.timeout)
            .timeout(self.settings.timeout)
            .tcp_nodelay(true)
            .connect()
            .await?;
        debug!(endpoint = %self.target, %addr, "connected to the OTLP receiver");
        Ok(TraceServiceClient::new(channel))
    }

    async fn resolve(&self) -> Result<SocketAddr, String> {
        let Target { host, port } = &self.target;
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
        assert_eq!(
            t("http://sink.obs.svc.cluster.local:4317").unwrap(),
            Target {
                host: "sink.obs.svc.cluster.local".into(),
                port: 4317
            }
        );
        assert_eq!(t("http://10.0.0.1/").unwrap().port, 4317);
        assert_eq!(t("collector:55680").unwrap().port, 55680);
        assert_eq!(t("http://[fd00::1]:4317").unwrap().host, "fd00::1");
        assert_eq!(
            t("http://[fd00::1]:4317").unwrap().to_string(),
            "http://[fd00::1]:4317"
        );
        for bad in [
            "https://collector:4317",
            "grpc://x:1",
            "http://x:0",
            "http://x:port",
            "http://x:4317/v1/traces",
            "http://",
            ":4317",
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
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
        Target {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
