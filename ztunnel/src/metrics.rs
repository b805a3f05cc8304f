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

use proxy_core::metrics::{LabelSetCache, LabelSetKey, ObjectRef, Peer, address, peer_labels};
use proxy_core::state::{Service, Workload};

pub const CONNECTIONS_OPENED: &str = "istio_tcp_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "istio_tcp_connections_closed_total";
/// Connections that ended in an error (refused by policy, upstream failure, ...).
pub const CONNECTIONS_FAILED: &str = "istio_tcp_connections_failed_total";
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
        CONNECTIONS_FAILED,
        "TCP connections that ended in an error (the response_flags label says which)"
    );
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
    /// The transport address of the connection's far (outbound) or near (inbound) end: the
    /// HBONE endpoint (`<pod or waypoint>:15008`) for a tunnelled connection, else where the
    /// bytes went (Istio's `dst.addr`).
    pub dst_addr: SocketAddr,
    /// The CONNECT authority inside the HBONE tunnel, when there is one (Istio's
    /// `dst.hbone_addr`).
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

/// The counters of one label set.
struct TcpCounters {
    opened: Counter,
    closed: Counter,
    failed: Counter,
    sent: Counter,
    received: Counter,
}

impl TcpCounters {
    fn register(info: &ConnectionInfo) -> Self {
        let labels = info.labels();
        TcpCounters {
            opened: counter!(CONNECTIONS_OPENED, labels.iter()),
            closed: counter!(CONNECTIONS_CLOSED, labels.iter()),
            failed: counter!(CONNECTIONS_FAILED, labels.iter()),
            sent: counter!(SENT_BYTES, labels.iter()),
            received: counter!(RECEIVED_BYTES, labels.iter()),
        }
    }
}

/// What the labels are made of. Workloads and services are compared by address (a changed
/// workload is a new object and gets its own entry), without being kept alive.
struct CounterKey {
    reporter: Reporter,
    security: Security,
    flags: &'static str,
    src_workload: ObjectRef<Workload>,
    src_identity: Option<Identity>,
    dst_workload: ObjectRef<Workload>,
    dst_identity: Option<Identity>,
    dst_service: ObjectRef<Service>,
}

impl LabelSetKey for CounterKey {
    fn is_stale(&self) -> bool {
        self.src_workload.is_gone() || self.dst_workload.is_gone() || self.dst_service.is_gone()
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
            && k.src_workload.is(self.src_workload.as_ref())
            && k.dst_workload.is(self.dst_workload.as_ref())
            && k.dst_service.is(self.dst_service.as_ref())
            && k.src_identity == self.src_identity
            && k.dst_identity == self.dst_identity
    }

    fn key(&self) -> CounterKey {
        CounterKey {
            reporter: self.reporter,
            security: self.security,
            flags: self.response_flags,
            src_workload: ObjectRef::of(self.src_workload.as_ref()),
            src_identity: self.src_identity.clone(),
            dst_workload: ObjectRef::of(self.dst_workload.as_ref()),
            dst_identity: self.dst_identity.clone(),
            dst_service: ObjectRef::of(self.dst_service.as_ref()),
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
        if self.error.is_some() {
            self.counters.failed.increment(1);
        }
        // Istio ztunnel's access-log fields and meanings (docs/protocols.md): log pipelines
        // written for it read ours unchanged. Fields are borrowed, not formatted into new
        // strings, except the duration, which Istio writes with its unit.
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
        let (request, response) = (
            self.received_total.load(Ordering::Relaxed),
            self.sent_total.load(Ordering::Relaxed),
        );
        // Seen from the side that reports: outbound sends the request, inbound the response.
        let (direction, bytes_sent, bytes_recv) = match i.reporter {
            Reporter::Source => ("outbound", request, response),
            Reporter::Destination => ("inbound", response, request),
        };
        let duration = format!("{}ms", self.start.elapsed().as_millis());
        macro_rules! access_log {
            ($level:expr) => {
                tracing::event!(
                    target: "access",
                    $level,
                    src.addr = %i.src_addr,
                    src.workload = name(&i.src_workload),
                    src.namespace = ns(&i.src_workload),
                    src.identity = id(&i.src_identity),
                    dst.addr = %i.dst_addr,
                    dst.hbone_addr = i.dst_hbone_addr.map(tracing::field::display),
                    dst.service = i.dst_service.as_ref().map(|s| s.hostname.as_str()),
                    dst.workload = name(&i.dst_workload),
                    dst.namespace = ns(&i.dst_workload),
                    dst.identity = id(&i.dst_identity),
                    direction,
                    bytes_sent,
                    bytes_recv,
                    duration,
                    response_flags = i.response_flags,
                    error = self.error.as_deref(),
                    "connection complete"
                )
            };
        }
        // As Istio's: a connection that ended in an error is an error line.
        if self.error.is_some() {
            access_log!(tracing::Level::ERROR);
        } else {
            access_log!(tracing::Level::INFO);
        }
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
    use std::collections::BTreeSet;

    use proxy_core::logging::{LogFormat, capture};
    use proxy_core::state::local::LocalConfig;
    use proxy_core::state::{StateStore, Update};

    use super::*;

    /// The keys of Istio ztunnel's "connection complete" line (its `proxy/metrics.rs`), and the
    /// one we add: the response flags our metrics carry.
    const ISTIO_KEYS: [&str; 14] = [
        "src.addr",
        "src.workload",
        "src.namespace",
        "src.identity",
        "dst.addr",
        "dst.hbone_addr",
        "dst.service",
        "dst.workload",
        "dst.namespace",
        "dst.identity",
        "direction",
        "bytes_sent",
        "bytes_recv",
        "duration",
    ];
    const OURS_TOO: [&str; 1] = ["response_flags"];

    /// The labels of Istio ztunnel's `istio_tcp_*` series (its `CommonTrafficLabels`, locality
    /// included).
    const ISTIO_TCP_LABELS: [&str; 27] = [
        "reporter",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_service",
        "destination_service_namespace",
        "destination_service_name",
        "destination_workload",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_cluster",
        "request_protocol",
        "response_flags",
        "connection_security_policy",
        "source_region",
        "source_zone",
        "destination_region",
        "destination_zone",
    ];

    const PODS: &str = "workloads:
  - {name: client, namespace: default, serviceAccount: client, addresses: [10.244.1.2], tunnelProtocol: HBONE, clusterId: Kubernetes}
  - {name: server, namespace: default, serviceAccount: server, addresses: [10.244.2.2], tunnelProtocol: HBONE}
services:
  - {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, addresses: [10.96.0.10], ports: [{servicePort: 80, targetPort: 8080}]}
";

    fn pods() -> (Arc<Workload>, Arc<Workload>, Arc<Service>) {
        let store = StateStore::new();
        store.apply(Update {
            upserts: LocalConfig::parse(PODS).unwrap().to_addresses(),
            replace_all: true,
            ..Default::default()
        });
        let state = store.load();
        let get = |ip: &str| state.workload_by_ip(ip.parse().unwrap()).unwrap().clone();
        let echo = state.service_by_vip("10.96.0.10".parse().unwrap());
        (get("10.244.1.2"), get("10.244.2.2"), echo.unwrap().clone())
    }

    /// One GET seen by both ztunnels: 52 request bytes, 1,124 response bytes.
    fn exchange(reporter: Reporter) -> ConnectionInfo {
        let (client, server, echo) = pods();
        ConnectionInfo {
            reporter,
            src_addr: "10.244.1.2:40000".parse().unwrap(),
            src_identity: Some(client.identity.clone()),
            src_workload: Some(client),
            dst_addr: "10.244.2.2:15008".parse().unwrap(),
            dst_hbone_addr: Some("10.244.2.2:8080".parse().unwrap()),
            dst_identity: Some(server.identity.clone()),
            dst_workload: Some(server),
            dst_service: Some(echo),
            security: Security::MutualTls,
            response_flags: "-",
        }
    }

    fn log_of(info: ConnectionInfo, format: LogFormat) -> String {
        capture(format, || {
            let record = ConnectionRecord::open(info);
            record.request_bytes(52);
            record.response_bytes(1124);
        })
    }

    /// `key=value` pairs of a text line's last column.
    fn text_fields(line: &str) -> Vec<(String, String)> {
        let fields = line.trim_end().rsplit('\t').next().unwrap();
        fields
            .split(' ')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect()
    }

    #[test]
    fn access_log_has_istios_fields_and_meanings_in_text_and_json() {
        for (reporter, direction, sent, recv) in [
            (Reporter::Source, "outbound", "52", "1124"),
            (Reporter::Destination, "inbound", "1124", "52"),
        ] {
            let text = log_of(exchange(reporter), LogFormat::Text);
            let cols: Vec<&str> = text.trim_end().split('\t').collect();
            assert_eq!(&cols[1..4], ["info", "access", "connection complete"]);
            let fields = text_fields(&text);
            let keys: BTreeSet<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
            let expected: BTreeSet<&str> = ISTIO_KEYS.into_iter().chain(OURS_TOO).collect();
            assert_eq!(keys, expected, "{text}");
            let get = |k: &str| fields.iter().find(|(n, _)| n == k).unwrap().1.as_str();
            assert_eq!(get("direction"), direction);
            assert_eq!(
                (get("bytes_sent"), get("bytes_recv")),
                (sent, recv),
                "{text}"
            );
            assert_eq!(get("dst.addr"), "10.244.2.2:15008");
            assert_eq!(get("dst.hbone_addr"), "10.244.2.2:8080");
            assert_eq!(
                get("src.identity"),
                "spiffe://cluster.local/ns/default/sa/client"
            );
            assert!(get("duration").ends_with("ms"), "{text}");

            let json = log_of(exchange(reporter), LogFormat::Json);
            let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
            for key in ISTIO_KEYS {
                assert!(v.get(key).is_some(), "{key} missing from {json}");
            }
            assert_eq!(v["scope"], "access");
            assert_eq!(v["message"], "connection complete");
            assert_eq!(v["bytes_sent"].to_string(), sent);
            assert_eq!(v["bytes_recv"].to_string(), recv);
            assert_eq!(v["dst.workload"], "server");
            assert_eq!(v["dst.service"], "echo.default.svc.cluster.local");
        }
    }

    #[test]
    fn tcp_metrics_carry_istios_label_set() {
        let labels = exchange(Reporter::Destination).labels();
        let names: BTreeSet<&str> = labels.iter().map(|l| l.key()).collect();
        assert_eq!(names, BTreeSet::from(ISTIO_TCP_LABELS));
        assert_eq!(labels.len(), ISTIO_TCP_LABELS.len(), "no label twice");
        let value = |k: &str| labels.iter().find(|l| l.key() == k).unwrap().value();
        assert_eq!(value("source_cluster"), "Kubernetes");
        // Not described: Istio's `unknown`.
        assert_eq!(value("destination_cluster"), "unknown");
        assert_eq!(value("source_region"), "unknown");
        assert_eq!(value("destination_zone"), "unknown");
    }

    #[test]
    fn a_connection_that_failed_is_an_error_line_with_the_reason() {
        let text = capture(LogFormat::Text, || {
            let mut record = ConnectionRecord::open(exchange(Reporter::Source));
            record.set_error("connect 10.244.2.2:15008: timed out");
        });
        let cols: Vec<&str> = text.trim_end().split('\t').collect();
        assert_eq!(cols[1], "error", "{text}");
        assert!(
            text.contains(r#"error="connect 10.244.2.2:15008: timed out""#),
            "{text}"
        );
    }
}
