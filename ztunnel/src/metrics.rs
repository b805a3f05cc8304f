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
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ambient_proto::hbone::RelayObserver;
use ambient_proto::identity::Identity;
use metrics::{Counter, Label, counter};
use tracing::info;

use crate::state::{Service, Workload};

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

fn or_unknown(s: Option<&str>) -> String {
    match s {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => "unknown".to_string(),
    }
}

/// One side of a connection or request, as Istio's standard metrics label it.
#[derive(Clone, Copy, Default)]
pub struct Peer<'a> {
    pub workload: Option<&'a Workload>,
    pub identity: Option<&'a Identity>,
}

/// Istio's standard labels that name both peers, in Istio's order: `reporter`, the source's
/// workload, principal and canonical service, then the destination's, then the destination
/// service. ztunnel and the waypoint each append the labels of their own layer.
pub fn peer_labels(
    reporter: &'static str,
    src: Peer<'_>,
    dst: Peer<'_>,
    service: Option<&Service>,
) -> Vec<Label> {
    let canonical = |w: Option<&Workload>| {
        or_unknown(w.map(|w| {
            if w.canonical_name.is_empty() {
                w.telemetry_name()
            } else {
                &w.canonical_name
            }
        }))
    };
    const NAMES: [[&str; 7]; 2] = [
        [
            "source_workload",
            "source_workload_namespace",
            "source_principal",
            "source_app",
            "source_version",
            "source_canonical_service",
            "source_canonical_revision",
        ],
        [
            "destination_workload",
            "destination_workload_namespace",
            "destination_principal",
            "destination_app",
            "destination_version",
            "destination_canonical_service",
            "destination_canonical_revision",
        ],
    ];
    let mut labels = Vec::with_capacity(21);
    labels.push(Label::new("reporter", reporter));
    for (names, peer) in NAMES.iter().zip([src, dst]) {
        let w = peer.workload;
        let principal = peer
            .identity
            .map(|i| i.to_string())
            .unwrap_or_else(|| "unknown".into());
        let values = [
            or_unknown(w.map(|w| w.telemetry_name())),
            or_unknown(w.map(|w| w.namespace.as_str())),
            principal,
            canonical(w),
            or_unknown(w.map(|w| w.canonical_revision.as_str())),
            canonical(w),
            or_unknown(w.map(|w| w.canonical_revision.as_str())),
        ];
        labels.extend(names.iter().zip(values).map(|(&n, v)| Label::new(n, v)));
    }
    labels.extend([
        Label::new(
            "destination_service",
            or_unknown(service.map(|s| s.hostname.as_str())),
        ),
        Label::new(
            "destination_service_name",
            or_unknown(service.map(|s| s.name.as_str())),
        ),
        Label::new(
            "destination_service_namespace",
            or_unknown(service.map(|s| s.namespace.as_str())),
        ),
    ]);
    labels
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

/// Whether two optional objects are the same object (label-set keys compare by address).
pub fn same<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// An optional object's address, for hashing a label-set key.
pub fn address<T>(a: Option<&Arc<T>>) -> usize {
    a.map_or(0, |a| Arc::as_ptr(a) as usize)
}

/// Metric handles by label set, for one thread (so the lookup takes no lock): building Istio's
/// labels and finding them in the registry costs more than the rest of a connection's or a
/// request's accounting, so it is done once per label set.
///
/// Entries are found by the hash of their key (a bucket holds the rare keys that share a
/// hash); past [`LabelSetCache::CAPACITY`] entries the cache starts over, which bounds memory
/// and releases objects (workloads, services) the control plane has replaced.
pub struct LabelSetCache<K, V> {
    entries: usize,
    by_hash: HashMap<u64, Vec<(K, V)>>,
}

impl<K, V> Default for LabelSetCache<K, V> {
    fn default() -> Self {
        LabelSetCache {
            entries: 0,
            by_hash: HashMap::new(),
        }
    }
}

impl<K, V: Clone> LabelSetCache<K, V> {
    pub const CAPACITY: usize = 1024;

    /// The handles whose key `matches`, or those `register` makes (with their key).
    pub fn get_or_register(
        &mut self,
        hash: u64,
        matches: impl Fn(&K) -> bool,
        register: impl FnOnce() -> (K, V),
    ) -> V {
        if let Some((_, v)) = self
            .by_hash
            .get(&hash)
            .and_then(|bucket| bucket.iter().find(|(k, _)| matches(k)))
        {
            return v.clone();
        }
        if self.entries >= Self::CAPACITY {
            *self = LabelSetCache::default();
        }
        let (key, value) = register();
        self.entries += 1;
        self.by_hash
            .entry(hash)
            .or_default()
            .push((key, value.clone()));
        value
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_set_cache_registers_once_per_key_and_starts_over_when_full() {
        let mut cache: LabelSetCache<u32, u32> = LabelSetCache::default();
        let mut registered = 0;
        let mut get = |cache: &mut LabelSetCache<u32, u32>, key: u32| {
            // Every key shares one hash bucket: `matches` must tell them apart.
            cache.get_or_register(
                7,
                |k| *k == key,
                || {
                    registered += 1;
                    (key, key * 10)
                },
            )
        };
        assert_eq!(get(&mut cache, 1), 10);
        assert_eq!(get(&mut cache, 2), 20);
        assert_eq!(get(&mut cache, 1), 10);
        for key in 3..=LabelSetCache::<u32, u32>::CAPACITY as u32 {
            get(&mut cache, key);
        }
        assert_eq!(cache.entries, LabelSetCache::<u32, u32>::CAPACITY);
        // Full: the next new key empties the cache first.
        get(&mut cache, 5000);
        assert_eq!(cache.entries, 1);
        assert_eq!(get(&mut cache, 1), 10, "re-registered after the restart");
        assert_eq!(registered, LabelSetCache::<u32, u32>::CAPACITY + 2);
    }
}
