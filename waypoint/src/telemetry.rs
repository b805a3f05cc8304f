//! Istio's standard request and TCP metrics with `reporter="waypoint"`, and the access log.
//!
//! A request's record is completed when its response body ends (or is dropped), so durations
//! and byte counts cover the whole exchange. Label values come only from workloads and
//! services the control plane described (or `unknown`), response codes and flags: cardinality
//! is bounded by the pairs that actually talk.

use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use ambient_proto::identity::Identity;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use metrics::{Counter, Histogram, Label, counter, histogram};
use proxy_core::metrics::{LabelSetCache, LabelSetKey, ObjectRef, Peer, address};
use proxy_core::state::{Service, Workload};
use tracing::info;

use crate::inbound::Downstream;
use crate::trace::Span;
use crate::upstream::{BoxError, Endpoint};

pub const REQUESTS: &str = "istio_requests_total";
pub const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";
pub const REQUEST_BYTES: &str = "istio_request_bytes";
pub const RESPONSE_BYTES: &str = "istio_response_bytes";
pub const TCP_OPENED: &str = "istio_tcp_connections_opened_total";
pub const TCP_CLOSED: &str = "istio_tcp_connections_closed_total";
pub const TCP_SENT: &str = "istio_tcp_sent_bytes_total";
pub const TCP_RECEIVED: &str = "istio_tcp_received_bytes_total";
pub const HBONE_REJECTED: &str = "ambient_hbone_rejected_total";

/// Histogram buckets: Istio's for durations (ms), powers of ten for sizes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
pub const SIZE_BUCKETS: &[f64] = &[
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
];

pub fn describe() {
    metrics::describe_counter!(REQUESTS, "Requests through the waypoint");
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Milliseconds,
        "Request duration, first byte in to last byte out"
    );
    metrics::describe_histogram!(REQUEST_BYTES, metrics::Unit::Bytes, "Request body sizes");
    metrics::describe_histogram!(RESPONSE_BYTES, metrics::Unit::Bytes, "Response body sizes");
    metrics::describe_counter!(TCP_OPENED, "TCP connections passed through");
    metrics::describe_counter!(TCP_CLOSED, "TCP connections passed through and closed");
    metrics::describe_counter!(TCP_SENT, metrics::Unit::Bytes, "Bytes sent to the client");
    metrics::describe_counter!(
        TCP_RECEIVED,
        metrics::Unit::Bytes,
        "Bytes received from the client"
    );
    metrics::describe_counter!(HBONE_REJECTED, "HBONE peers refused, by reason");
    metrics::describe_counter!(
        crate::l7::ratelimit::RATE_LIMITED,
        "Requests refused by a LocalRateLimitPolicy, by policy and bucket"
    );
}

pub fn hbone_rejected(reason: &'static str) {
    counter!(HBONE_REJECTED, "direction" => "inbound", "reason" => reason).increment(1);
}

/// The labels every waypoint metric carries.
fn peer_labels(
    downstream: &Downstream,
    upstream: Option<&Workload>,
    service: Option<&Service>,
) -> Vec<Label> {
    let mut labels = proxy_core::metrics::peer_labels(
        "waypoint",
        Peer {
            workload: downstream.workload.as_deref(),
            identity: Some(&downstream.identity),
        },
        Peer {
            workload: upstream,
            identity: upstream.map(|w| &w.identity),
        },
        service,
    );
    labels.push(Label::new("connection_security_policy", "mutual_tls"));
    labels
}

/// The four request metrics of one label set.
struct RequestHandles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// What decides a request's labels. Workloads and services are compared by address (a
/// changed workload is a new object, and gets its own entry), without being kept alive.
struct HandleKey {
    source: ObjectRef<Workload>,
    source_principal: Identity,
    destination: ObjectRef<Workload>,
    service: ObjectRef<Service>,
    protocol: &'static str,
    status: u16,
    grpc_status: Option<String>,
    flags: &'static str,
}

impl LabelSetKey for HandleKey {
    fn is_stale(&self) -> bool {
        self.source.is_gone() || self.destination.is_gone() || self.service.is_gone()
    }
}

thread_local! {
    /// Per worker thread, so the request path takes no lock.
    static REQUEST_HANDLES: RefCell<LabelSetCache<HandleKey, Arc<RequestHandles>>> =
        RefCell::new(LabelSetCache::default());
}

/// One HTTP request's facts, filled in along the request path.
pub struct RequestLog {
    pub started: Instant,
    pub downstream: Arc<Downstream>,
    pub service: Option<Arc<Service>>,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub protocol: &'static str,
    pub route: String,
    /// The backend service the route chose (`namespace/hostname`), for backend health.
    pub backend: Option<Arc<str>>,
    pub upstream: Option<Endpoint>,
    pub status: u16,
    pub grpc_status: Option<String>,
    pub flags: &'static str,
    pub request_bytes: u64,
    pub attempts: u32,
    /// The LocalRateLimitPolicy and bucket that refused the request (`ns/name:identity`).
    pub rate_limit: Option<String>,
    pub trace_id: String,
    /// This request's span (exported over OTLP when sampled and an endpoint is set).
    pub span: Span,
}

impl RequestLog {
    /// The record of a request as it arrived (its path as the client sent it), to be filled
    /// in along the request path.
    pub fn start(
        started: Instant,
        downstream: Arc<Downstream>,
        service: Option<Arc<Service>>,
        parts: &http::request::Parts,
        span: Span,
    ) -> Self {
        let is_grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let authority = parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        RequestLog {
            started,
            downstream,
            service,
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            authority,
            protocol: if is_grpc { "grpc" } else { "http" },
            route: String::new(),
            backend: None,
            upstream: None,
            status: 0,
            grpc_status: None,
            flags: "-",
            request_bytes: 0,
            attempts: 0,
            rate_limit: None,
            trace_id: span.trace_id_hex(),
            span,
        }
    }

    /// Records the request: metrics, one access-log line and, when tracing, its span.
    pub fn finish(&self, response_bytes: u64) {
        if self.span.sampled
            && let Some(exporter) = crate::otlp::exporter()
        {
            exporter.record_request(self);
        }
        let elapsed = self.started.elapsed().as_secs_f64() * 1000.0;
        if let Some(backend) = &self.backend {
            crate::health::record(backend, self.status, elapsed);
        }
        let handles = self.handles();
        handles.requests.increment(1);
        handles.duration.record(elapsed);
        handles.request_bytes.record(self.request_bytes as f64);
        handles.response_bytes.record(response_bytes as f64);
        info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            authority = %self.authority,
            protocol = self.protocol,
            status = self.status,
            flags = self.flags,
            route = %self.route,
            src = %self.downstream.addr,
            src_principal = %self.downstream.identity,
            dst = %self.downstream.dst,
            upstream = %OrDash(self.upstream.as_ref().map(|e| e.addr)),
            // Endpoints outside the mesh prove no identity.
            dst_principal = %OrDash(
                self.upstream
                    .as_ref()
                    .filter(|e| e.in_mesh())
                    .map(|e| &e.workload.identity)
            ),
            attempts = self.attempts,
            rate_limit = self.rate_limit.as_deref().unwrap_or("-"),
            bytes_received = self.request_bytes,
            bytes_sent = response_bytes,
            duration_ms = format_args!("{elapsed:.2}"),
            trace_id = %self.trace_id,
            span_id = %format_args!("{:016x}", self.span.span_id),
            "request"
        );
    }
}

impl RequestLog {
    fn key_hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        address(self.downstream.workload.as_ref()).hash(&mut h);
        self.downstream.identity.hash(&mut h);
        address(self.upstream.as_ref().map(|e| &e.workload)).hash(&mut h);
        address(self.service.as_ref()).hash(&mut h);
        (self.protocol, self.status, &self.grpc_status, self.flags).hash(&mut h);
        h.finish()
    }

    fn matches(&self, k: &HandleKey) -> bool {
        k.source.is(self.downstream.workload.as_ref())
            && k.source_principal == self.downstream.identity
            && k.destination
                .is(self.upstream.as_ref().map(|e| &e.workload))
            && k.service.is(self.service.as_ref())
            && (k.protocol, k.status, &k.grpc_status, k.flags)
                == (self.protocol, self.status, &self.grpc_status, self.flags)
    }

    /// This request's metric handles: from the thread's cache, or registered once.
    fn handles(&self) -> Arc<RequestHandles> {
        REQUEST_HANDLES.with_borrow_mut(|cache| {
            cache.get_or_register(
                self.key_hash(),
                |k| self.matches(k),
                || (self.key(), Arc::new(self.register())),
            )
        })
    }

    fn key(&self) -> HandleKey {
        HandleKey {
            source: ObjectRef::of(self.downstream.workload.as_ref()),
            source_principal: self.downstream.identity.clone(),
            destination: ObjectRef::of(self.upstream.as_ref().map(|e| &e.workload)),
            service: ObjectRef::of(self.service.as_ref()),
            protocol: self.protocol,
            status: self.status,
            grpc_status: self.grpc_status.clone(),
            flags: self.flags,
        }
    }

    fn register(&self) -> RequestHandles {
        let upstream = self.upstream.as_ref().map(|e| e.workload.as_ref());
        let mut labels = peer_labels(&self.downstream, upstream, self.service.as_deref());
        labels.push(Label::new("request_protocol", self.protocol));
        labels.push(Label::new("response_code", self.status.to_string()));
        labels.push(Label::new(
            "grpc_response_status",
            self.grpc_status.clone().unwrap_or_default(),
        ));
        labels.push(Label::new("response_flags", self.flags));
        RequestHandles {
            requests: counter!(REQUESTS, labels.clone()),
            duration: histogram!(REQUEST_DURATION, labels.clone()),
            request_bytes: histogram!(REQUEST_BYTES, labels.clone()),
            response_bytes: histogram!(RESPONSE_BYTES, labels),
        }
    }
}

/// Shows the value, or `-` when there is none (access-log fields), without allocating.
struct OrDash<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A response body that completes its request's record when it ends or is dropped.
pub struct MeteredBody<B> {
    inner: B,
    bytes: u64,
    log: Option<RequestLog>,
}

impl<B> MeteredBody<B> {
    pub fn new(inner: B, log: RequestLog) -> Self {
        MeteredBody {
            inner,
            bytes: 0,
            log: Some(log),
        }
    }

    fn finish(&mut self) {
        if let Some(log) = self.log.take() {
            log.finish(self.bytes);
        }
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> HttpBody for MeteredBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
                if let Some(t) = f.trailers_ref()
                    && let Some(log) = self.log.as_mut()
                    && let Some(s) = t.get("grpc-status").and_then(|v| v.to_str().ok())
                {
                    log.grpc_status = Some(s.to_string());
                }
            }
            Some(Err(_)) => {
                if let Some(log) = self.log.as_mut() {
                    log.flags = "UPE";
                }
                self.finish();
            }
            None => self.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One passed-through TCP connection's metrics and access log.
pub struct TcpRecord {
    labels: Vec<Label>,
    downstream: Downstream,
    service: Option<Arc<Service>>,
}

impl TcpRecord {
    pub fn new(downstream: &Downstream, service: Option<Arc<Service>>) -> Self {
        TcpRecord {
            labels: Vec::new(),
            downstream: downstream.clone(),
            service,
        }
    }

    /// Records the connection once it is over.
    pub fn finish(
        &mut self,
        flags: &'static str,
        upstream: Option<&Endpoint>,
        received: u64,
        sent: u64,
        started: Instant,
    ) {
        self.labels = peer_labels(
            &self.downstream,
            upstream.map(|e| e.workload.as_ref()),
            self.service.as_deref(),
        );
        self.labels.push(Label::new("request_protocol", "tcp"));
        self.labels.push(Label::new("response_flags", flags));
        counter!(TCP_OPENED, self.labels.clone()).increment(1);
        counter!(TCP_RECEIVED, self.labels.clone()).increment(received);
        counter!(TCP_SENT, self.labels.clone()).increment(sent);
        counter!(TCP_CLOSED, self.labels.clone()).increment(1);
        let upstream_addr: Option<SocketAddr> = upstream.map(|e| e.addr);
        info!(
            target: "access",
            protocol = "tcp",
            flags,
            src = %self.downstream.addr,
            src_principal = %self.downstream.identity,
            dst = %self.downstream.dst,
            upstream = %upstream_addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            bytes_received = received,
            bytes_sent = sent,
            duration_ms = format_args!("{:.2}", started.elapsed().as_secs_f64() * 1000.0),
            "connection"
        );
    }
}
