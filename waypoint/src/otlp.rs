//! The waypoint's request spans: one OTLP span per finished request
//! ([`request_span`]), sampled as `--trace-sampling` says, exported by
//! [`proxy_core::otlp`]'s exporter (gRPC or HTTP, plaintext or TLS) under the resource
//! `service.name = <gateway>.<namespace>`. The request path only queues
//! ([`SpanExporter::record_request`]); a collector that is down or slow costs spans, never
//! latency.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ambient_proto::opentelemetry::proto::common::v1::InstrumentationScope;
use ambient_proto::opentelemetry::proto::resource::v1::Resource;
use ambient_proto::opentelemetry::proto::trace::v1::{
    Span as OtlpSpan, Status, span::SpanKind, status::StatusCode,
};
pub use proxy_core::otlp::{
    Export, MeshResolver, Protocol, Settings, Stats, Target, describe, mesh_resolver,
};
use proxy_core::otlp::{Traces, int, string};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::telemetry::RequestLog;

/// The instrumentation scope our spans (and access log records) are reported under.
pub const SCOPE: &str = "ambient-rs/waypoint";

/// The scope, with this build's version.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

/// The request path's handle on the span exporter: cheap to clone, never blocks.
#[derive(Clone)]
pub struct SpanExporter {
    inner: proxy_core::otlp::Exporter<Traces>,
    /// The waypoint's namespace (`istio.namespace` on every span).
    namespace: Arc<str>,
}

impl SpanExporter {
    /// Starts the export task; it runs until `shutdown`, then tries one last export of what is
    /// queued.
    pub fn start(
        target: Target,
        namespace: &str,
        resource: Resource,
        settings: Settings,
        resolver: Option<MeshResolver>,
        shutdown: CancellationToken,
    ) -> (SpanExporter, JoinHandle<()>) {
        let (inner, task) = proxy_core::otlp::Exporter::start(
            target,
            resource,
            scope(),
            settings,
            resolver,
            shutdown,
        );
        (
            SpanExporter {
                inner,
                namespace: namespace.into(),
            },
            task,
        )
    }

    /// Queues the span of a finished request.
    pub fn record_request(&self, log: &RequestLog) {
        self.inner
            .record(request_span(log, &self.namespace, SystemTime::now()));
    }

    pub fn stats(&self) -> &Arc<Stats> {
        self.inner.stats()
    }
}

/// The waypoint's exporter, when `--otlp-endpoint` is set.
static EXPORTER: OnceLock<SpanExporter> = OnceLock::new();
/// `--trace-sampling` in millionths.
static SAMPLING_PPM: AtomicU32 = AtomicU32::new(1_000_000);

/// Makes `exporter` the one request spans go to (once per process).
pub fn install(exporter: SpanExporter) {
    let _ = EXPORTER.set(exporter);
}

pub fn exporter() -> Option<&'static SpanExporter> {
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
                .filter(|e| e.in_mesh())
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

#[cfg(test)]
mod tests {
    use super::*;
    use ambient_proto::opentelemetry::proto::common::v1::any_value;

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
            hostname: None,
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
            passthrough: false,
            namespace_only: false,
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
            backend: None,
            upstream: Some(crate::upstream::Endpoint::new(
                reviews,
                "10.244.1.7:9080".parse().unwrap(),
            )),
            status: 200,
            grpc_status: None,
            flags: "-",
            request_bytes: 0,
            attempts: 1,
            rate_limit: None,
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
}
