//! Istio's standard TCP metrics and the per-connection access log.
//!
//! Every connection gets a [`ConnectionRecord`]: it takes its labelled counters from the
//! worker thread's cache (Istio's 21 labels are built and registered once per label set, not
//! per connection), bumps them with atomic adds as bytes move, and writes one access-log line
//! when the connection ends.
//!
//! Label values come only from workloads the control plane described (or `unknown`), so
//! cardinality is bounded by the number of workload pairs that actually talk.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ambient_proto::hbone::RelayObserver;
use ambient_proto::identity::Identity;
use metrics::{Counter, Label, counter};
use tracing::info;

use proxy_core::metrics::{LabelSetCache, Peer, address, peer_labels, same};
use proxy_core::state::{Service, Workload};

pub const CONNECTIONS_OPENED: &str = "istio_tcp_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "istio_tcp_connections_closed_total";
pub const SENT_BYTES: &str = "istio_tcp_sent_bytes_total";
pub const RECEIVED_BYTES: &str = "istio_tcp_received_bytes_total";
/// Peers refused by HBONE checks, by `direction` and `reason`.
pub const HBONE_REJECTED: &str = "ambient_hbone_rejected_total";
/// Queries the in-pod DNS proxy received, by `response_code` (`MALFORMED`: dropped).
pub const DNS_REQUESTS: &str = "istio_dns_requests_total";

/// Registers help texts, so `/metrics` explains itself.
pub fn describe() {
    metrics::describe_counter!(CONNECTIONS_OPENED, "TCP connections opened");
    metrics::describe_counter!(CONNECTIONS_CLOSED, "TCP connections closed");
    metrics::describe_counter!(
        SENT_BYTES,
        metrics::Unit::Bytes,
        "Bytes sent by the destination (response direction)"
    );
    metrics::describe_counter!(
        RECEIVED_BYTES,
        metrics::Unit::Bytes,
        "Bytes received by the destination (request direction)"
    );
    metrics::describe_counter!(
        HBONE_REJECTED,
        "HBONE peers refused by TLS or HTTP/2 checks, by reason"
    );
    metrics::describe_counter!(
        DNS_REQUESTS,
        "DNS queries answered by the in-pod DNS proxy, by response code"
    );
}

/// Counts one refused HBONE peer.
pub fn hbone_rejected(direction: &'static str, reason: &'static str) {
    counter!(HBONE_REJECTED, "direction" => direction, "reason" => reason).increment(1);
}

/// Counts one DNS query.
pub fn dns_request(response_code: &'static str) {
    counter!(DNS_REQUESTS, "response_code" => response_code).increment(1);
}

/// Which proxy reports a connection (Istio's `reporter` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

/// Whether the hop was mutual TLS (Istio's `connection_security_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Security {
    MutualTls,
    None,
}

/// Everything known about a connection when it starts.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub reporter: Reporter,
    pub src_addr: SocketAddr,
    pub src_workload: Option<Arc<Workload>>,
    pub src_identity: Option<Identity>,
    /// What the app dialed (a VIP or a pod address).
    pub dst_addr: SocketAddr,
    /// The endpoint behind the HBONE tunnel, when there is one.
    pub dst_hbone_addr: Option<SocketAddr>,
    pub dst_workload: Option<Arc<Workload>>,
    pub dst_identity: Option<Identity>,
    pub dst_service: Option<Arc<Service>>,
    pub security: Security,
    /// `-` for a normal connection; Envoy-style flags otherwise (`UF` upstream failure...).
    pub response_flags: &'static str,
}

impl ConnectionInfo {
    fn labels(&self) -> Vec<Label> {
        let reporter = match self.reporter {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        };
        let mut labels = peer_labels(
            reporter,
            Peer {
                workload: self.src_workload.as_deref(),
                identity: self.src_identity.as_ref(),
            },
            Peer {
                workload: self.dst_workload.as_deref(),
                identity: self.dst_identity.as_ref(),
            },
            self.dst_service.as_deref(),
        );
        labels.extend([
            Label::new("request_protocol", "tcp"),
            Label::new("response_flags", self.response_flags),
            Label::new(
                "connection_security_policy",
                match self.security {
                    Security::MutualTls => "mutual_tls",
                    Security::None => "unknown",
                },
            ),
        ]);
        labels
    }
}

/// The four counters of one label set.
struct TcpCounters {
    opened: Counter,
    closed: Counter,
    sent: Counter,
    received: Counter,
}

impl TcpCounters {
    fn register(info: &ConnectionInfo) -> Self {
        let labels = info.labels();
        TcpCounters {
            opened: counter!(CONNECTIONS_OPENED, labels.iter()),
            closed: counter!(CONNECTIONS_CLOSED, labels.iter()),
            sent: counter!(SENT_BYTES, labels.iter()),
            received: counter!(RECEIVED_BYTES, labels.iter()),
        }
    }
}

/// What the labels are made of. Workloads and services are compared by address: a changed
/// workload is a new object and gets its own entry (the key holds it, so the address stays
/// unique while cached).
struct CounterKey {
    reporter: Reporter,
    security: Security,
    flags: &'static str,
    src_workload: Option<Arc<Workload>>,
    src_identity: Option<Identity>,
    dst_workload: Option<Arc<Workload>>,
    dst_identity: Option<Identity>,
    dst_service: Option<Arc<Service>>,
}

impl ConnectionInfo {
    fn key_hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.reporter, self.security, self.response_flags).hash(&mut h);
        address(self.src_workload.as_ref()).hash(&mut h);
        address(self.dst_workload.as_ref()).hash(&mut h);
        address(self.dst_service.as_ref()).hash(&mut h);
        (&self.src_identity, &self.dst_identity).hash(&mut h);
        h.finish()
    }

    fn matches(&self, k: &CounterKey) -> bool {
        (k.reporter, k.security, k.flags) == (self.reporter, self.security, self.response_flags)
            && same(k.src_workload.as_ref(), self.src_workload.as_ref())
            && same(k.dst_workload.as_ref(), self.dst_workload.as_ref())
            && same(k.dst_service.as_ref(), self.dst_service.as_ref())
            && k.src_identity == self.src_identity
            && k.dst_identity == self.dst_identity
    }

    fn key(&self) -> CounterKey {
        CounterKey {
            reporter: self.reporter,
            security: self.security,
            flags: self.response_flags,
            src_workload: self.src_workload.clone(),
            src_identity: self.src_identity.clone(),
            dst_workload: self.dst_workload.clone(),
            dst_identity: self.dst_identity.clone(),
            dst_service: self.dst_service.clone(),
        }
    }

    /// This connection's counters: from the thread's cache, or registered once.
    fn counters(&self) -> Arc<TcpCounters> {
        COUNTERS.with_borrow_mut(|cache| {
            cache.get_or_register(
                self.key_hash(),
                |k| self.matches(k),
                || (self.key(), Arc::new(TcpCounters::register(self))),
            )
        })
    }
}

thread_local! {
    static COUNTERS: RefCell<LabelSetCache<CounterKey, Arc<TcpCounters>>> =
        RefCell::new(LabelSetCache::default());
}

/// Counters and access log of one connection. Dropping it records the close.
pub struct ConnectionRecord {
    info: ConnectionInfo,
    counters: Arc<TcpCounters>,
    sent_total: AtomicU64,
    received_total: AtomicU64,
    start: Instant,
    error: Option<String>,
}

impl ConnectionRecord {
    /// Counts the connection as opened.
    pub fn open(info: ConnectionInfo) -> Self {
        let counters = info.counters();
        counters.opened.increment(1);
        ConnectionRecord {
            counters,
            info,
            sent_total: AtomicU64::new(0),
            received_total: AtomicU64::new(0),
            start: Instant::now(),
            error: None,
        }
    }

    /// Bytes from the client toward the destination.
    pub fn request_bytes(&self, n: usize) {
        self.counters.received.increment(n as u64);
        self.received_total.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes from the destination back to the client.
    pub fn response_bytes(&self, n: usize) {
        self.counters.sent.increment(n as u64);
        self.sent_total.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Notes why the connection ended badly (shown in the access log).
    pub fn set_error(&mut self, e: impl ToString) {
        self.error = Some(e.to_string());
    }

    /// Adapter for relays where the request flows into the HBONE tunnel (outbound).
    pub fn outbound_observer(&self) -> RequestIntoTunnel<'_> {
        RequestIntoTunnel(self)
    }

    /// Adapter for relays where the request comes out of the HBONE tunnel (inbound).
    pub fn inbound_observer(&self) -> RequestFromTunnel<'_> {
        RequestFromTunnel(self)
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        self.counters.closed.increment(1);
        // Fields are borrowed, not formatted into new strings: one line per connection.
        let i = &self.info;
        fn name(w: &Option<Arc<Workload>>) -> Option<&str> {
            w.as_deref().map(|w| w.name.as_str())
        }
        fn ns(w: &Option<Arc<Workload>>) -> Option<&str> {
            w.as_deref().map(|w| w.namespace.as_str())
        }
        fn id(x: &Option<Identity>) -> Option<&str> {
            x.as_ref().map(Identity::as_uri)
        }
        info!(
            target: "access",
            src_addr = %i.src_addr,
            src_workload = name(&i.src_workload),
            src_namespace = ns(&i.src_workload),
            src_identity = id(&i.src_identity),
            dst_addr = %i.dst_addr,
            dst_hbone_addr = i.dst_hbone_addr.map(tracing::field::display),
            dst_service = i.dst_service.as_ref().map(|s| s.hostname.as_str()),
            dst_workload = name(&i.dst_workload),
            dst_namespace = ns(&i.dst_workload),
            dst_identity = id(&i.dst_identity),
            direction = match i.reporter { Reporter::Source => "outbound", Reporter::Destination => "inbound" },
            bytes_sent = self.received_total.load(Ordering::Relaxed),
            bytes_recv = self.sent_total.load(Ordering::Relaxed),
            duration_ms = self.start.elapsed().as_millis() as u64,
            response_flags = i.response_flags,
            error = self.error.as_deref(),
            "connection complete"
        );
    }
}

pub struct RequestIntoTunnel<'a>(&'a ConnectionRecord);
pub struct RequestFromTunnel<'a>(&'a ConnectionRecord);

impl RelayObserver for RequestIntoTunnel<'_> {
    fn entered_tunnel(&self, n: usize) {
        self.0.request_bytes(n)
    }
    fn left_tunnel(&self, n: usize) {
        self.0.response_bytes(n)
    }
}

impl RelayObserver for RequestFromTunnel<'_> {
    fn entered_tunnel(&self, n: usize) {
        self.0.response_bytes(n)
    }
    fn left_tunnel(&self, n: usize) {
        self.0.request_bytes(n)
    }
}
