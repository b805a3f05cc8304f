//! From scrapes of the proxies' metrics to the service graph the dashboard draws.
//!
//! Each round of scrapes is kept per proxy (the last few rounds); counters are turned into
//! rates between the oldest and the newest scrape kept (a counter that went down restarted:
//! its new value is the increase, as Prometheus' `rate` does). Series are then grouped:
//!
//! - **nodes**: a workload's canonical service (`<namespace>/<app>`: bookinfo's three
//!   `reviews-v*` pods are one node), a service when the destination workload is not known,
//!   `unknown` for traffic from outside the mesh;
//! - **edges** (source node → destination node): requests from the waypoints
//!   (`istio_requests_total`, `istio_request_duration_milliseconds`) and bytes from the
//!   ztunnels (`istio_tcp_*`). Both ztunnels of a hop report it; the source's report is used
//!   when there is one, else the destination's (so a proxy that cannot be scraped takes only
//!   its own view away). A hop to a waypoint is drawn to the service it carries
//!   (`destination_service`), marked `via` the waypoint; the waypoint's own hops to the
//!   backends are the same traffic again and are not drawn;
//! - **workloads**: each workload's inbound golden signals.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use proxy_core::exposition::{self as prom, Sample};

pub const REQUESTS: &str = "istio_requests_total";
pub const DURATION_BUCKET: &str = "istio_request_duration_milliseconds_bucket";
pub const TCP_SENT: &str = "istio_tcp_sent_bytes_total";
pub const TCP_RECEIVED: &str = "istio_tcp_received_bytes_total";
pub const TCP_OPENED: &str = "istio_tcp_connections_opened_total";

const UNKNOWN: &str = "unknown";

/// Which proxy a scrape came from.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProxyInfo {
    /// `ztunnel/<node>` or `waypoint/<namespace>/<pod>`.
    pub id: String,
    /// `ztunnel` or `waypoint`.
    pub kind: String,
    /// The node's name (ztunnel) or the pod's (waypoint).
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `namespace/name` of the waypoint Gateway, for waypoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

impl ProxyInfo {
    pub fn ztunnel(node: &str) -> Self {
        ProxyInfo {
            id: format!("ztunnel/{node}"),
            kind: "ztunnel".into(),
            name: node.into(),
            namespace: None,
            node: Some(node.into()),
            gateway: None,
        }
    }

    pub fn waypoint(namespace: &str, pod: &str, gateway: &str, node: Option<String>) -> Self {
        ProxyInfo {
            id: format!("waypoint/{namespace}/{pod}"),
            kind: "waypoint".into(),
            name: pod.into(),
            namespace: Some(namespace.into()),
            node,
            gateway: Some(format!("{namespace}/{gateway}")),
        }
    }
}

/// One proxy's answer in a round.
#[derive(Clone, Debug)]
pub struct ProxyScrape {
    pub proxy: ProxyInfo,
    /// The `/metrics` text, or why it could not be read.
    pub metrics: Result<String, String>,
    /// ztunnel's `/config_dump` `certificates`, when it was asked for.
    pub certificates: Option<Result<Vec<Value>, String>>,
}

/// One round of scrapes.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// Seconds on a monotonic clock.
    pub at: f64,
    /// Seconds since the Unix epoch (certificate expiry is relative to it).
    pub now_unix: u64,
    pub proxies: Vec<ProxyScrape>,
    /// Why the proxies could not be listed (the mesh is gone, the API server refused...).
    pub discovery_error: Option<String>,
}

/// The rates and shares the page shows; `None` where there is nothing to say (no second
/// scrape yet, no requests in the window, no HTTP traffic).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Signals {
    pub requests_per_second: Option<f64>,
    /// Share (0..1) of requests answered outside 2xx/3xx — or, for TCP only, of connections
    /// with response flags other than `-`.
    pub error_rate: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Bytes from the destination back to the source, per second.
    pub bytes_sent_per_second: Option<f64>,
    /// Bytes from the source to the destination, per second.
    pub bytes_received_per_second: Option<f64>,
    pub connections_per_second: Option<f64>,
}

/// Counter values since the proxies started (what the edges were drawn from).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Totals {
    pub requests: f64,
    pub errors: f64,
    pub p99_ms: Option<f64>,
    pub bytes_sent: f64,
    pub bytes_received: f64,
    pub connections: f64,
    pub connection_errors: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Certificate {
    /// The ztunnel holding it.
    pub node: String,
    pub identity: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
    /// Seconds left (negative: expired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    /// `<namespace>/<name>`, `unknown`, or a service's host name.
    pub id: String,
    /// `workload` (a canonical service's workloads), `service`, `waypoint` or `unknown`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `namespace/name` of its workloads (see [`Graph::workloads`]).
    pub workloads: Vec<String>,
    /// Services through which it was reached.
    pub services: Vec<String>,
    pub principals: Vec<String>,
    /// Inbound, over the edges drawn into it.
    pub signals: Signals,
    pub totals: Totals,
    /// The earliest `not_after` of its identities' certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_expires_in_seconds: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    /// `source->destination`.
    pub id: String,
    pub source: String,
    pub destination: String,
    /// `http`, `grpc`, ... from the waypoint; `tcp` when only ztunnel saw it.
    pub protocol: String,
    /// Every series it was drawn from had `connection_security_policy="mutual_tls"`.
    pub mtls: bool,
    /// The waypoint (`namespace/name` of its Gateway) the traffic went through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Who reported the bytes: `source`, `destination` or `waypoint` (none: L7 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_reporter: Option<String>,
    pub signals: Signals,
    pub totals: Totals,
}

#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    /// `namespace/name`.
    pub id: String,
    pub namespace: String,
    pub name: String,
    /// The node it belongs to.
    pub app: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Inbound golden signals.
    pub signals: Signals,
    pub totals: Totals,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Certificate>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProxyStatus {
    #[serde(flatten)]
    pub info: ProxyInfo,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why its certificates could not be read (the proxy itself answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificates_error: Option<String>,
    pub series: usize,
}

/// What `/api/graph` answers and `--once-json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Graph {
    pub generated_at: u64,
    /// Where the proxies were found: `local` or `kubernetes`.
    pub source: String,
    pub interval_seconds: f64,
    /// The span the rates cover (none until a second scrape).
    pub window_seconds: Option<f64>,
    pub rounds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub proxies: Vec<ProxyStatus>,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub workloads: Vec<Workload>,
    pub certificates: Vec<Certificate>,
}

/// A float ordered totally (bucket bounds).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Le(f64);
impl Eq for Le {}
impl PartialOrd for Le {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Le {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The `q` quantile of a cumulative histogram (upper bound → count of observations at or
/// below it), interpolated linearly inside the bucket as Prometheus' `histogram_quantile`
/// does; `None` without observations. A rank falling in the `+Inf` bucket answers the
/// highest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Counts summed over series (and over resets) may not be monotonic: make them so.
    let mut running: f64 = 0.0;
    for x in &mut b {
        running = running.max(x.1);
        x.1 = running;
    }
    let total = b.last()?.1;
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0.0_f64, 0.0_f64);
    for &(le, count) in &b {
        if count >= rank && count > 0.0 {
            if le.is_infinite() {
                return Some(lower);
            }
            let in_bucket = count - below;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower + (le - lower) * (rank - below) / in_bucket);
        }
        lower = le;
        below = count;
    }
    Some(lower)
}

#[derive(Clone, Copy, Debug, Default)]
struct Pair {
    rate: f64,
    total: f64,
}

/// Sums of the series of one group.
#[derive(Clone, Debug, Default)]
struct Acc {
    series: usize,
    /// Series without `connection_security_policy="mutual_tls"`.
    plain: usize,
    /// Whether some series had a window (a previous scrape of its proxy).
    windowed: bool,
    requests: Pair,
    errors: Pair,
    sent: Pair,
    received: Pair,
    connections: Pair,
    connection_errors: Pair,
    /// Bucket bound → observations in the window / in total.
    buckets: BTreeMap<Le, Pair>,
    protocols: BTreeSet<String>,
}

/// A sample with its increase over the window.
struct Obs<'a> {
    sample: &'a Sample,
    total: f64,
    /// The increase over the window and the window's length, when there is a window.
    delta: Option<(f64, f64)>,
    /// The Gateway (`namespace/name`) of the waypoint that reported it.
    gateway: Option<&'a str>,
}

impl Obs<'_> {
    fn pair(&self) -> Pair {
        Pair {
            rate: match self.delta {
                Some((d, dt)) if dt > 0.0 => d / dt,
                _ => 0.0,
            },
            total: self.total,
        }
    }
}

fn add(p: &mut Pair, o: Pair) {
    p.rate += o.rate;
    p.total += o.total;
}

fn http_error(code: &str) -> bool {
    !matches!(code.parse::<u16>(), Ok(200..=399))
}

impl Acc {
    fn add(&mut self, o: &Obs<'_>) {
        let s = o.sample;
        self.series += 1;
        if s.label("connection_security_policy") != "mutual_tls" {
            self.plain += 1;
        }
        self.windowed |= o.delta.is_some();
        let pair = o.pair();
        match s.name.as_str() {
            REQUESTS => {
                add(&mut self.requests, pair);
                if http_error(s.label("response_code")) {
                    add(&mut self.errors, pair);
                }
                let protocol = s.label("request_protocol");
                if !protocol.is_empty() {
                    self.protocols.insert(protocol.to_string());
                }
            }
            DURATION_BUCKET => {
                let Ok(le) = prom_le(s.label("le")) else {
                    return;
                };
                let b = self.buckets.entry(Le(le)).or_default();
                b.rate += o.delta.map(|(d, _)| d).unwrap_or(0.0);
                b.total += o.total;
            }
            TCP_SENT => add(&mut self.sent, pair),
            TCP_RECEIVED => add(&mut self.received, pair),
            TCP_OPENED => {
                add(&mut self.connections, pair);
                let flags = s.label("response_flags");
                if !flags.is_empty() && flags != "-" {
                    add(&mut self.connection_errors, pair);
                }
            }
            _ => {}
        }
    }

    fn merge(&mut self, other: &Acc) {
        self.series += other.series;
        self.plain += other.plain;
        self.windowed |= other.windowed;
        add(&mut self.requests, other.requests);
        add(&mut self.errors, other.errors);
        add(&mut self.sent, other.sent);
        add(&mut self.received, other.received);
        add(&mut self.connections, other.connections);
        add(&mut self.connection_errors, other.connection_errors);
        for (le, p) in &other.buckets {
            add(self.buckets.entry(*le).or_default(), *p);
        }
        self.protocols.extend(other.protocols.iter().cloned());
    }

    fn p99(&self, window: bool) -> Option<f64> {
        let b: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .map(|(le, p)| (le.0, if window { p.rate } else { p.total }))
            .collect();
        quantile(0.99, &b)
    }
}

fn prom_le(s: &str) -> Result<f64, ()> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        _ => s.parse().map_err(|_| ()),
    }
}

/// The traffic of one edge or workload: requests from waypoints, bytes from ztunnels by
/// reporter.
#[derive(Clone, Debug, Default)]
struct Flow {
    l7: Acc,
    /// `istio_tcp_*` by reporter: source, destination, waypoint.
    tcp: [Acc; 3],
    via: BTreeSet<String>,
}

const REPORTERS: [&str; 3] = ["source", "destination", "waypoint"];

impl Flow {
    fn add(&mut self, o: &Obs<'_>) {
        let s = o.sample;
        if s.name == REQUESTS || s.name == DURATION_BUCKET {
            self.l7.add(o);
        } else if let Some(i) = REPORTERS.iter().position(|r| *r == s.label("reporter")) {
            self.tcp[i].add(o);
        }
    }

    /// The first reporter (in `order`) that saw bytes of this flow.
    fn tcp(&self, order: [usize; 3]) -> Option<(usize, &Acc)> {
        order
            .into_iter()
            .map(|i| (i, &self.tcp[i]))
            .find(|(_, a)| a.series > 0)
    }

    fn merge(&mut self, other: &Flow) {
        self.l7.merge(&other.l7);
        for i in 0..3 {
            self.tcp[i].merge(&other.tcp[i]);
        }
        self.via.extend(other.via.iter().cloned());
    }

    fn report(&self, order: [usize; 3]) -> (Signals, Totals, Option<usize>, bool) {
        let l7 = (self.l7.series > 0).then_some(&self.l7);
        let tcp = self.tcp(order);
        let windowed = l7.is_some_and(|a| a.windowed) || tcp.is_some_and(|(_, a)| a.windowed);
        let mut s = Signals::default();
        let mut t = Totals::default();
        if let Some(a) = l7 {
            t.requests = a.requests.total;
            t.errors = a.errors.total;
            t.p99_ms = a.p99(false);
            if windowed {
                s.requests_per_second = Some(a.requests.rate);
                if a.requests.rate > 0.0 {
                    s.error_rate = Some(a.errors.rate / a.requests.rate);
                }
                s.p99_ms = a.p99(true);
            }
        }
        if let Some((_, a)) = tcp {
            t.bytes_sent = a.sent.total;
            t.bytes_received = a.received.total;
            t.connections = a.connections.total;
            t.connection_errors = a.connection_errors.total;
            if windowed {
                s.bytes_sent_per_second = Some(a.sent.rate);
                s.bytes_received_per_second = Some(a.received.rate);
                s.connections_per_second = Some(a.connections.rate);
                if l7.is_none() && a.connections.rate > 0.0 {
                    s.error_rate = Some(a.connection_errors.rate / a.connections.rate);
                }
            }
        }
        let plain = l7.map(|a| a.plain).unwrap_or(0) + tcp.map(|(_, a)| a.plain).unwrap_or(0);
        (s, t, tcp.map(|(i, _)| i), plain == 0)
    }
}

/// One side of a series.
#[derive(Clone, Debug, PartialEq, Eq)]
struct End {
    id: String,
    kind: &'static str,
    namespace: String,
    name: String,
    /// `namespace/workload`, when a workload.
    workload: Option<String>,
    version: String,
    principal: Option<String>,
    /// `namespace/name` of the destination service.
    service: Option<String>,
}

fn known(v: &str) -> Option<&str> {
    (!v.is_empty() && v != UNKNOWN).then_some(v)
}

fn unknown_end() -> End {
    End {
        id: UNKNOWN.into(),
        kind: "unknown",
        namespace: String::new(),
        name: UNKNOWN.into(),
        workload: None,
        version: String::new(),
        principal: None,
        service: None,
    }
}

/// The workload on one side (`source` or `destination`) of a series.
fn workload_end(s: &Sample, side: &str) -> Option<End> {
    let l = |k: &str| s.label(&format!("{side}_{k}")).to_string();
    let workload = known(s.label(&format!("{side}_workload")))?.to_string();
    let ns = l("workload_namespace");
    let app = [l("canonical_service"), l("app"), workload.clone()]
        .into_iter()
        .find(|v| known(v).is_some())
        .unwrap_or_else(|| workload.clone());
    let version = [l("canonical_revision"), l("version")]
        .into_iter()
        .find(|v| known(v).is_some())
        .unwrap_or_default();
    Some(End {
        id: format!("{ns}/{app}"),
        kind: "workload",
        namespace: ns.clone(),
        name: app,
        workload: Some(format!("{ns}/{workload}")),
        version,
        principal: known(&l("principal")).map(str::to_string),
        service: None,
    })
}

/// The destination service of a series (`namespace/name` and its node), if known.
fn service_end(s: &Sample) -> Option<End> {
    if let (Some(name), Some(ns)) = (
        known(s.label("destination_service_name")),
        known(s.label("destination_service_namespace")),
    ) {
        let id = format!("{ns}/{name}");
        return Some(End {
            id: id.clone(),
            kind: "service",
            namespace: ns.into(),
            name: name.into(),
            workload: None,
            version: String::new(),
            principal: None,
            service: Some(id),
        });
    }
    let host = known(s.label("destination_service"))?;
    Some(End {
        id: host.into(),
        kind: "service",
        namespace: String::new(),
        name: host.into(),
        workload: None,
        version: String::new(),
        principal: None,
        service: Some(host.into()),
    })
}

/// Waypoints by `namespace` and pod or Gateway name (a waypoint's workload name is its pod's
/// in the local runtime, its Deployment's — the Gateway's name — in Kubernetes).
/// The value: the Gateway, `namespace/name`.
#[derive(Default)]
struct Waypoints(HashMap<(String, String), String>);

impl Waypoints {
    /// The Gateway of the waypoint on one side of a series, if it is one.
    fn gateway(&self, e: &End, s: &Sample, side: &str) -> Option<&String> {
        let workload = s.label(&format!("{side}_workload"));
        self.0
            .get(&(e.namespace.clone(), workload.to_string()))
            .or_else(|| self.0.get(&(e.namespace.clone(), e.name.clone())))
    }

    fn is(&self, e: &End, s: &Sample, side: &str) -> bool {
        self.gateway(e, s, side).is_some()
    }
}

/// One scrape of a proxy: when (monotonic seconds) and its series by key.
type Scraped = (f64, Arc<HashMap<String, Sample>>);

/// The proxies' history and the graph built from it.
pub struct Tracker {
    /// Scrapes kept per proxy (rates cover the span between the first and the last).
    keep: usize,
    source: String,
    interval: f64,
    rounds: u64,
    history: HashMap<String, VecDeque<Scraped>>,
}

impl Tracker {
    pub fn new(source: &str, interval_seconds: f64, keep: usize) -> Self {
        Tracker {
            keep: keep.max(2),
            source: source.into(),
            interval: interval_seconds,
            rounds: 0,
            history: HashMap::new(),
        }
    }

    /// Takes one round of scrapes and builds the graph.
    pub fn observe(&mut self, round: &Round) -> Graph {
        self.rounds += 1;
        let mut proxies = Vec::new();
        let mut seen = HashSet::new();
        for p in &round.proxies {
            seen.insert(p.proxy.id.clone());
            let parsed = p.metrics.clone().and_then(|t| prom::parse(&t));
            let certificates_error = match &p.certificates {
                Some(Err(e)) => Some(e.clone()),
                _ => None,
            };
            match parsed {
                Ok(samples) => {
                    let series: HashMap<String, Sample> =
                        samples.into_iter().map(|s| (s.series_key(), s)).collect();
                    proxies.push(ProxyStatus {
                        info: p.proxy.clone(),
                        reachable: true,
                        error: None,
                        certificates_error,
                        series: series.len(),
                    });
                    let h = self.history.entry(p.proxy.id.clone()).or_default();
                    h.push_back((round.at, Arc::new(series)));
                    while h.len() > self.keep {
                        h.pop_front();
                    }
                }
                Err(e) => {
                    // Its counters may restart from zero when it is back: start afresh.
                    self.history.remove(&p.proxy.id);
                    proxies.push(ProxyStatus {
                        info: p.proxy.clone(),
                        reachable: false,
                        error: Some(e),
                        certificates_error,
                        series: 0,
                    });
                }
            }
        }
        self.history.retain(|id, _| seen.contains(id));
        proxies.sort_by(|a, b| a.info.cmp(&b.info));

        let mut waypoints = Waypoints::default();
        for p in &round.proxies {
            if let (Some(ns), Some(gw)) = (&p.proxy.namespace, &p.proxy.gateway) {
                waypoints
                    .0
                    .insert((ns.clone(), p.proxy.name.clone()), gw.clone());
                let gw_name = gw.rsplit('/').next().unwrap_or(gw);
                waypoints
                    .0
                    .insert((ns.clone(), gw_name.to_string()), gw.clone());
            }
        }

        let mut certificates = Vec::new();
        for p in &round.proxies {
            let Some(Ok(list)) = &p.certificates else {
                continue;
            };
            let node = p.proxy.node.clone().unwrap_or_else(|| p.proxy.name.clone());
            for c in list {
                let not_after = c["not_after"].as_u64();
                certificates.push(Certificate {
                    node: node.clone(),
                    identity: c["identity"].as_str().unwrap_or_default().to_string(),
                    state: c["state"].as_str().unwrap_or_default().to_string(),
                    serial: c["serial"].as_str().map(str::to_string),
                    not_before: c["not_before"].as_u64(),
                    not_after,
                    expires_in_seconds: not_after.map(|t| t as i64 - round.now_unix as i64),
                });
            }
        }

        let mut window: Option<f64> = None;
        let mut observations = Vec::new();
        let gateways: HashMap<&str, &str> = round
            .proxies
            .iter()
            .filter_map(|p| Some((p.proxy.id.as_str(), p.proxy.gateway.as_deref()?)))
            .collect();
        for (id, h) in &self.history {
            let gateway = gateways.get(id.as_str()).copied();
            let (Some((t_new, newest)), Some((t_old, oldest))) = (h.back(), h.front()) else {
                continue;
            };
            let dt = t_new - t_old;
            let windowed = h.len() >= 2 && dt > 0.0;
            if windowed {
                window = Some(window.map_or(dt, |w| w.max(dt)));
            }
            for (key, s) in newest.iter() {
                let delta = windowed.then(|| {
                    let d = match oldest.get(key) {
                        Some(old) if s.value >= old.value => s.value - old.value,
                        _ => s.value,
                    };
                    (d, dt)
                });
                observations.push(Obs {
                    sample: s,
                    total: s.value,
                    delta,
                    gateway,
                });
            }
        }
        let observations: Vec<&Obs<'_>> = observations
            .iter()
            .filter(|o| {
                matches!(
                    o.sample.name.as_str(),
                    REQUESTS | DURATION_BUCKET | TCP_SENT | TCP_RECEIVED | TCP_OPENED
                )
            })
            .collect();

        // A service reached through a waypoint is drawn as the canonical service behind it
        // when the other series say there is exactly one.
        let mut behind: HashMap<String, BTreeSet<String>> = HashMap::new();
        for o in &observations {
            let s = o.sample;
            if let (Some(dst), Some(svc)) = (workload_end(s, "destination"), service_end(s))
                && !waypoints.is(&dst, s, "destination")
            {
                behind.entry(svc.id).or_default().insert(dst.id);
            }
        }

        let mut nodes: BTreeMap<String, (End, NodeExtra)> = BTreeMap::new();
        let mut edges: BTreeMap<(String, String), Flow> = BTreeMap::new();
        let mut workloads: BTreeMap<String, (End, Flow)> = BTreeMap::new();
        for o in &observations {
            let s = o.sample;
            let src = workload_end(s, "source").unwrap_or_else(unknown_end);
            let src_waypoint = src.workload.is_some() && waypoints.is(&src, s, "source");
            let mut via = None;
            let dst = match workload_end(s, "destination") {
                Some(d) if waypoints.is(&d, s, "destination") => match service_end(s) {
                    Some(mut svc) => {
                        via = waypoints.gateway(&d, s, "destination").cloned();
                        if let Some(ids) = behind.get(&svc.id)
                            && ids.len() == 1
                        {
                            let id = ids.iter().next().expect("one").clone();
                            svc.kind = "workload";
                            svc.name = id.rsplit('/').next().unwrap_or(&id).to_string();
                            svc.id = id;
                        }
                        svc
                    }
                    None => End {
                        kind: "waypoint",
                        ..d
                    },
                },
                Some(mut d) => {
                    d.service = service_end(s).and_then(|e| e.service);
                    d
                }
                None => service_end(s).unwrap_or_else(unknown_end),
            };
            // Per-workload inbound signals: every series toward it, the waypoint's hops
            // included.
            if let Some(w) = &dst.workload
                && dst.kind == "workload"
            {
                workloads
                    .entry(w.clone())
                    .or_insert_with(|| (dst.clone(), Flow::default()))
                    .1
                    .add(o);
            }
            if let Some(w) = &src.workload
                && !src_waypoint
            {
                workloads
                    .entry(w.clone())
                    .or_insert_with(|| (src.clone(), Flow::default()));
            }
            // The waypoint's hops to the backends repeat the client's traffic: not drawn.
            if src_waypoint && s.label("reporter") != "waypoint" {
                continue;
            }
            for e in [&src, &dst] {
                let entry = nodes
                    .entry(e.id.clone())
                    .or_insert_with(|| (e.clone(), NodeExtra::default()));
                if e.kind == "workload" && entry.0.kind != "workload" {
                    entry.0.kind = "workload";
                }
                if let Some(w) = &e.workload
                    && e.kind == "workload"
                {
                    entry.1.workloads.insert(w.clone());
                }
                if let Some(p) = &e.principal {
                    entry.1.principals.insert(p.clone());
                }
            }
            if let Some(svc) = &dst.service {
                nodes
                    .get_mut(&dst.id)
                    .expect("inserted")
                    .1
                    .services
                    .insert(svc.clone());
            }
            let flow = edges.entry((src.id.clone(), dst.id.clone())).or_default();
            flow.add(o);
            // Through a waypoint: the client's ztunnel says so, and so does the waypoint.
            if let Some(v) = via.or_else(|| o.gateway.map(str::to_string)) {
                flow.via.insert(v);
            }
        }

        // Edges: the source's report of bytes first.
        let edge_order = [0, 1, 2];
        let mut inbound: BTreeMap<String, Flow> = BTreeMap::new();
        let mut out_edges = Vec::new();
        for ((src, dst), flow) in &edges {
            let (signals, totals, reporter, mtls) = flow.report(edge_order);
            let protocol = if flow.l7.protocols.is_empty() {
                "tcp".to_string()
            } else {
                flow.l7
                    .protocols
                    .iter()
                    .map(|p| p.to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            // The node's inbound: the L7 series and the chosen TCP report of each edge.
            let mut chosen = Flow {
                l7: flow.l7.clone(),
                ..Flow::default()
            };
            if let Some(i) = reporter {
                chosen.tcp[0] = flow.tcp[i].clone();
            }
            inbound.entry(dst.clone()).or_default().merge(&chosen);
            out_edges.push(Edge {
                id: format!("{src}->{dst}"),
                source: src.clone(),
                destination: dst.clone(),
                protocol,
                mtls,
                via: (!flow.via.is_empty())
                    .then(|| flow.via.iter().cloned().collect::<Vec<_>>().join(",")),
                tcp_reporter: reporter.map(|i| REPORTERS[i].to_string()),
                signals,
                totals,
            });
        }

        let expiry = |principal: &str| -> Option<&Certificate> {
            certificates
                .iter()
                .filter(|c| c.identity == principal)
                .min_by_key(|c| c.not_after.unwrap_or(u64::MAX))
        };

        // Workloads: the destination's own report of bytes first (it sees every peer).
        let mut out_workloads = Vec::new();
        for (id, (end, flow)) in &workloads {
            let (signals, totals, _, _) = flow.report([1, 0, 2]);
            let name = id.split_once('/').map(|x| x.1).unwrap_or(id).to_string();
            out_workloads.push(Workload {
                id: id.clone(),
                namespace: end.namespace.clone(),
                name,
                app: end.id.clone(),
                version: end.version.clone(),
                principal: end.principal.clone(),
                signals,
                totals,
                certificate: end.principal.as_deref().and_then(expiry).cloned(),
            });
        }

        let mut out_nodes = Vec::new();
        for (id, (end, extra)) in nodes {
            let (signals, totals, _, _) = inbound
                .get(&id)
                .map(|f| f.report([0, 1, 2]))
                .unwrap_or_default();
            let certificate_expires_in_seconds = extra
                .principals
                .iter()
                .filter_map(|p| expiry(p).and_then(|c| c.expires_in_seconds))
                .min();
            out_nodes.push(Node {
                id,
                kind: end.kind.to_string(),
                namespace: end.namespace,
                name: end.name,
                workloads: extra.workloads.into_iter().collect(),
                services: extra.services.into_iter().collect(),
                principals: extra.principals.into_iter().collect(),
                signals,
                totals,
                certificate_expires_in_seconds,
            });
        }

        Graph {
            generated_at: round.now_unix,
            source: self.source.clone(),
            interval_seconds: self.interval,
            window_seconds: window,
            rounds: self.rounds,
            error: round.discovery_error.clone(),
            proxies,
            nodes: out_nodes,
            edges: out_edges,
            workloads: out_workloads,
            certificates,
        }
    }
}

#[derive(Default)]
struct NodeExtra {
    workloads: BTreeSet<String>,
    services: BTreeSet<String>,
    principals: BTreeSet<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn p99_interpolates_inside_the_bucket() {
        // 100 observations: 90 at or below 10 ms, 10 between 10 and 100 ms.
        let b = [
            (1.0, 0.0),
            (10.0, 90.0),
            (100.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // rank 99 → 9 of the 10 in (10, 100] → 10 + 90 × 0.9.
        assert!(close(quantile(0.99, &b), 91.0), "{:?}", quantile(0.99, &b));
        // rank 50 → inside the first non-empty bucket (1, 10].
        assert!(close(quantile(0.5, &b), 1.0 + 9.0 * 50.0 / 90.0));
        // The first bucket's lower bound is 0.
        assert!(close(
            quantile(0.5, &[(4.0, 10.0), (f64::INFINITY, 10.0)]),
            2.0
        ));
        // A rank in +Inf answers the highest finite bound.
        assert!(close(
            quantile(0.99, &[(5.0, 1.0), (f64::INFINITY, 10.0)]),
            5.0
        ));
        // Unsorted and non-monotonic input (sums over resets) still works.
        assert!(close(
            quantile(
                0.99,
                &[
                    (f64::INFINITY, 100.0),
                    (100.0, 100.0),
                    (10.0, 90.0),
                    (1.0, 0.0)
                ]
            ),
            91.0
        ));
        assert_eq!(quantile(0.99, &[(10.0, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.99, &[]), None);
    }

    const ZT1: &str = "node-1";

    fn labels(pairs: &[(&str, &str)]) -> String {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn peer(
        side: &str,
        ns: &str,
        workload: &str,
        app: &str,
        version: &str,
    ) -> Vec<(String, String)> {
        vec![
            (format!("{side}_workload"), workload.into()),
            (format!("{side}_workload_namespace"), ns.into()),
            (format!("{side}_canonical_service"), app.into()),
            (format!("{side}_canonical_revision"), version.into()),
            (
                format!("{side}_principal"),
                format!("spiffe://cluster.local/ns/{ns}/sa/{app}"),
            ),
        ]
    }

    /// A series line from its parts.
    fn line(
        name: &str,
        reporter: &str,
        src: (&str, &str, &str),
        dst: (&str, &str, &str),
        service: Option<&str>,
        extra: &[(&str, &str)],
        value: f64,
    ) -> String {
        let mut l: Vec<(String, String)> = vec![("reporter".into(), reporter.into())];
        l.extend(peer("source", "shop", src.0, src.1, src.2));
        l.extend(peer("destination", "shop", dst.0, dst.1, dst.2));
        let svc = service.unwrap_or(UNKNOWN);
        l.push(("destination_service_name".into(), svc.into()));
        l.push((
            "destination_service_namespace".into(),
            if service.is_some() { "shop" } else { UNKNOWN }.into(),
        ));
        l.push(("connection_security_policy".into(), "mutual_tls".into()));
        for (k, v) in extra {
            l.push((k.to_string(), v.to_string()));
        }
        let refs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        format!("{name}{{{}}} {value}\n", labels(&refs))
    }

    const WEB: (&str, &str, &str) = ("web-v1", "web", "v1");
    const API1: (&str, &str, &str) = ("api-v1", "api", "v1");
    const API2: (&str, &str, &str) = ("api-v2", "api", "v2");
    const WP: (&str, &str, &str) = ("waypoint-abcde", "waypoint", "latest");

    /// The waypoint's view after `n` requests web → api (each 20 ms, one in ten a 503).
    fn waypoint_metrics(n: f64) -> String {
        let ok = (n * 0.9).round();
        let bad = n - ok;
        let mut t = String::new();
        for (dst, code, count) in [
            (API1, "200", ok / 2.0),
            (API2, "200", ok / 2.0),
            (API2, "503", bad),
        ] {
            let extra = [
                ("response_code", code),
                ("request_protocol", "http"),
                ("response_flags", "-"),
            ];
            t += &line(REQUESTS, "waypoint", WEB, dst, Some("api"), &extra, count);
            for (le, c) in [("10", 0.0), ("25", count), ("+Inf", count)] {
                let mut e = extra.to_vec();
                e.push(("le", le));
                t += &line(DURATION_BUCKET, "waypoint", WEB, dst, Some("api"), &e, c);
            }
        }
        t
    }

    /// ztunnel's: web → waypoint (for service api) as source, waypoint → api as destination.
    fn ztunnel_metrics(bytes: f64) -> String {
        let f = [("response_flags", "-")];
        let mut t = String::new();
        t += &line(TCP_SENT, "source", WEB, WP, Some("api"), &f, bytes);
        t += &line(
            TCP_RECEIVED,
            "source",
            WEB,
            WP,
            Some("api"),
            &f,
            bytes / 10.0,
        );
        t += &line(TCP_OPENED, "source", WEB, WP, Some("api"), &f, 1.0);
        t += &line(TCP_SENT, "destination", WP, API1, None, &f, bytes / 2.0);
        t
    }

    fn round(at: f64, wp: Result<String, String>, zt: Result<String, String>) -> Round {
        Round {
            at,
            now_unix: 1_000_000,
            proxies: vec![
                ProxyScrape {
                    proxy: ProxyInfo::ztunnel(ZT1),
                    metrics: zt,
                    certificates: Some(Ok(vec![serde_json::json!({
                        "identity": "spiffe://cluster.local/ns/shop/sa/api",
                        "state": "Available", "serial": "0a", "not_before": 990_000,
                        "not_after": 1_003_600
                    })])),
                },
                ProxyScrape {
                    proxy: ProxyInfo::waypoint("shop", "waypoint-abcde", "waypoint", None),
                    metrics: wp,
                    certificates: None,
                },
            ],
            discovery_error: None,
        }
    }

    #[test]
    fn first_round_draws_totals_and_second_adds_rates() {
        let mut t = Tracker::new("test", 2.0, 5);
        let g = t.observe(&round(
            0.0,
            Ok(waypoint_metrics(100.0)),
            Ok(ztunnel_metrics(1000.0)),
        ));
        assert_eq!(g.window_seconds, None);
        let edge_ids: Vec<&str> = g.edges.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(edge_ids, ["shop/web->shop/api"], "{g:#?}");
        let e = &g.edges[0];
        assert_eq!(e.totals.requests, 100.0);
        assert_eq!(e.totals.errors, 10.0);
        assert_eq!(e.totals.bytes_sent, 1000.0);
        assert_eq!(e.signals.requests_per_second, None);
        assert!(e.mtls);
        assert_eq!(e.protocol, "http");
        assert_eq!(e.via.as_deref(), Some("shop/waypoint"));
        assert_eq!(e.tcp_reporter.as_deref(), Some("source"));

        // 2 s later: 50 more requests (5 errors), 4000 more bytes.
        let g = t.observe(&round(
            2.0,
            Ok(waypoint_metrics(150.0)),
            Ok(ztunnel_metrics(5000.0)),
        ));
        assert_eq!(g.window_seconds, Some(2.0));
        let e = &g.edges[0];
        assert!(close(e.signals.requests_per_second, 25.0), "{e:#?}");
        assert!(close(e.signals.error_rate, 0.1), "{e:#?}");
        assert!(close(e.signals.bytes_sent_per_second, 2000.0), "{e:#?}");
        assert!(close(e.signals.bytes_received_per_second, 200.0), "{e:#?}");
        // Every request took between 10 and 25 ms: p99 interpolates to 24.85.
        assert!(close(e.signals.p99_ms, 10.0 + 15.0 * 0.99), "{e:#?}");

        // Nodes: the client, the canonical service behind the waypoint (both versions).
        let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["shop/api", "shop/web"]);
        let api = &g.nodes[0];
        assert_eq!(api.kind, "workload");
        assert_eq!(api.workloads, ["shop/api-v1", "shop/api-v2"]);
        assert_eq!(api.services, ["shop/api"]);
        assert!(close(api.signals.requests_per_second, 25.0));
        assert_eq!(api.certificate_expires_in_seconds, Some(3600));

        // Workloads: per version; api-v2 took all the errors.
        let w: BTreeMap<&str, &Workload> = g.workloads.iter().map(|w| (w.id.as_str(), w)).collect();
        assert!(close(w["shop/api-v1"].signals.requests_per_second, 11.25));
        assert!(close(w["shop/api-v1"].signals.error_rate, 0.0));
        assert!(close(w["shop/api-v2"].signals.error_rate, 5.0 / 27.5));
        // The waypoint's hop to api-v1 counts as the workload's inbound bytes.
        assert!(close(
            w["shop/api-v1"].signals.bytes_sent_per_second,
            1000.0
        ));
        assert_eq!(
            w["shop/api-v1"]
                .certificate
                .as_ref()
                .map(|c| c.state.as_str()),
            Some("Available")
        );
        assert!(w.contains_key("shop/web-v1"));
        assert!(!w.contains_key("shop/waypoint-abcde"));
        assert_eq!(g.certificates.len(), 1);
        assert!(g.proxies.iter().all(|p| p.reachable));
    }

    #[test]
    fn a_proxy_that_cannot_be_scraped_is_reported_and_the_rest_is_drawn() {
        let mut t = Tracker::new("test", 2.0, 5);
        t.observe(&round(
            0.0,
            Ok(waypoint_metrics(10.0)),
            Ok(ztunnel_metrics(10.0)),
        ));
        let g = t.observe(&round(
            2.0,
            Ok(waypoint_metrics(30.0)),
            Err("connection refused".into()),
        ));
        let zt = g.proxies.iter().find(|p| p.info.kind == "ztunnel").unwrap();
        assert!(!zt.reachable);
        assert_eq!(zt.error.as_deref(), Some("connection refused"));
        let e = &g.edges[0];
        assert_eq!(e.id, "shop/web->shop/api");
        assert!(close(e.signals.requests_per_second, 10.0));
        assert_eq!(e.tcp_reporter, None);
        assert_eq!(
            e.via.as_deref(),
            Some("shop/waypoint"),
            "the waypoint says so"
        );
        // Garbage instead of metrics is an error too.
        let g = t.observe(&round(
            4.0,
            Ok("<html>oops</html>".into()),
            Ok(ztunnel_metrics(10.0)),
        ));
        let wp = g
            .proxies
            .iter()
            .find(|p| p.info.kind == "waypoint")
            .unwrap();
        assert!(!wp.reachable);
        assert!(wp.error.as_deref().unwrap().contains("line 1"), "{wp:?}");
        assert_eq!(g.edges.len(), 1, "ztunnel's view remains");
        assert_eq!(g.edges[0].tcp_reporter.as_deref(), Some("source"));
    }

    #[test]
    fn counter_resets_and_reporter_fallback() {
        // ztunnel restarted: its counter went from 5000 to 300, so it grew by 300.
        let mut t = Tracker::new("test", 1.0, 3);
        t.observe(&round(0.0, Ok(String::new()), Ok(ztunnel_metrics(5000.0))));
        let g = t.observe(&round(1.0, Ok(String::new()), Ok(ztunnel_metrics(300.0))));
        assert!(
            close(g.edges[0].signals.bytes_sent_per_second, 300.0),
            "{g:#?}"
        );
        assert_eq!(g.edges[0].signals.requests_per_second, None);
        assert_eq!(g.edges[0].protocol, "tcp");

        // Only the destination's report: used, and plain text is not mTLS.
        let f = [("response_flags", "-")];
        let plain = line(TCP_SENT, "destination", WEB, API1, Some("api"), &f, 10.0)
            .replace("mutual_tls", "unknown");
        let flagged = line(
            TCP_OPENED,
            "destination",
            WEB,
            API1,
            Some("api"),
            &[("response_flags", "UF")],
            1.0,
        );
        let mut t = Tracker::new("test", 1.0, 3);
        let g = t.observe(&round(0.0, Ok(String::new()), Ok(plain.clone() + &flagged)));
        let e = &g.edges[0];
        assert_eq!(e.id, "shop/web->shop/api");
        assert_eq!(e.tcp_reporter.as_deref(), Some("destination"));
        assert!(!e.mtls);
        assert_eq!(e.totals.connection_errors, 1.0);
        let flagged2 = flagged.replace("} 1", "} 3");
        let g = t.observe(&round(1.0, Ok(String::new()), Ok(plain + &flagged2)));
        assert!(
            close(g.edges[0].signals.error_rate, 1.0),
            "{:#?}",
            g.edges[0]
        );
    }

    #[test]
    fn traffic_from_outside_the_mesh_and_to_unknown_services() {
        let f = [("response_flags", "-")];
        let unknown_src = line(
            TCP_SENT,
            "destination",
            ("unknown", "unknown", "unknown"),
            API1,
            None,
            &f,
            5.0,
        );
        let to_service = line(
            TCP_SENT,
            "source",
            WEB,
            ("unknown", "unknown", "unknown"),
            Some("db"),
            &f,
            7.0,
        );
        let mut t = Tracker::new("test", 1.0, 3);
        let g = t.observe(&round(
            0.0,
            Ok(String::new()),
            Ok(unknown_src + &to_service),
        ));
        let ids: Vec<&str> = g.edges.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["shop/web->shop/db", "unknown->shop/api"]);
        let kinds: BTreeMap<&str, &str> = g
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.kind.as_str()))
            .collect();
        assert_eq!(kinds["unknown"], "unknown");
        assert_eq!(kinds["shop/db"], "service");
        assert_eq!(kinds["shop/api"], "workload");
    }
}
