//! Istio `DestinationRule` `trafficPolicy` → [`l7::TrafficPolicy`] of the Service its `host`
//! names.
//!
//! Defaults are Istio's (Envoy's) where a field is absent: outlier detection ejects after 5
//! consecutive 5xx, sweeps every 10 s, ejects for 30 s × times ejected, at most 10 % of
//! endpoints; the load balancer is LEAST_REQUEST. When several DestinationRules name one
//! host, the one in the Service's namespace wins, then one in the root namespace, then the
//! oldest; the others are reported.

use std::collections::BTreeMap;

use ambient_proto::ambient::waypoint::v1 as l7;

use super::{Out, ServiceKey, duration_field, resolve_host};
use crate::index::Context;
use crate::model::networking::{
    BudgetPercent, ClientTlsSettings, ConnectionPoolSettings, DestinationRule,
    LoadBalancerSettings, OutlierDetection, RetryBudget, TrafficPolicy,
};

/// Istio's defaults for fields of `outlierDetection` left out.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_BASE_EJECTION_MS: u64 = 30_000;
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// The traffic policy of every Service a DestinationRule names.
pub fn collect(ctx: &Context<'_>, out: &mut Out) -> BTreeMap<ServiceKey, l7::TrafficPolicy> {
    // Service → candidate rules with their rank.
    let mut candidates: BTreeMap<ServiceKey, Vec<(u8, &DestinationRule)>> = BTreeMap::new();
    for dr in ctx.state.destination_rules() {
        let ns = namespace(dr);
        let object = object(dr);
        if dr.spec.host.is_empty() {
            out.warn(&object, "has no host; ignored");
            continue;
        }
        match resolve_host(ctx, &dr.spec.host, &ns) {
            Ok(key) => {
                let rank = if key.0 == ns {
                    0
                } else if ns == ctx.config.root_namespace {
                    1
                } else {
                    2
                };
                candidates.entry(key).or_default().push((rank, dr));
            }
            Err(e) => out.warn(&object, format!("{e}; ignored")),
        }
    }
    let mut policies = BTreeMap::new();
    for (key, mut list) in candidates {
        list.sort_by_key(|(rank, dr)| {
            let m = &dr.metadata;
            (
                *rank,
                m.creation_timestamp.is_none(),
                m.creation_timestamp.clone(),
                m.namespace.clone(),
                m.name.clone(),
            )
        });
        let (_, chosen) = list[0];
        for (_, other) in &list[1..] {
            out.warn(
                &object(other),
                format!(
                    "{} also configures Service {}/{}, and takes precedence; ignored",
                    object(chosen),
                    key.0,
                    key.1
                ),
            );
        }
        out.referenced.insert(key.clone());
        policies.insert(key, convert(out, chosen));
    }
    policies
}

fn namespace(dr: &DestinationRule) -> String {
    dr.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

fn object(dr: &DestinationRule) -> String {
    format!(
        "DestinationRule/{}/{}",
        namespace(dr),
        dr.metadata.name.clone().unwrap_or_default()
    )
}

/// One DestinationRule's traffic policy.
pub fn convert(out: &mut Out, dr: &DestinationRule) -> l7::TrafficPolicy {
    let object = object(dr);
    let spec = &dr.spec;
    if !spec.subsets.is_empty() {
        out.warn(
            &object,
            "subsets are not supported (routes to a subset go to the whole service); ignored",
        );
    }
    if !spec.export_to.is_empty() && spec.export_to.iter().any(|e| e != "*") {
        out.warn(&object, "exportTo is not supported; applied mesh-wide");
    }
    if spec.workload_selector.is_some() {
        out.warn(
            &object,
            "workloadSelector is not supported; applied to every client",
        );
    }
    let mut policy = match &spec.traffic_policy {
        Some(tp) => traffic_policy(out, &object, tp),
        None => l7::TrafficPolicy::default(),
    };
    let algorithm = dr
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALGORITHM_ANNOTATION));
    match algorithm.map(String::as_str) {
        None => {}
        Some("peak-ewma") => {
            let lb = policy.load_balancer.get_or_insert_default();
            if lb.kind == l7::load_balancer::Kind::ConsistentHash as i32 {
                out.warn(
                    &object,
                    format!("{ALGORITHM_ANNOTATION} replaces loadBalancer.consistentHash"),
                );
            }
            lb.kind = l7::load_balancer::Kind::PeakEwma as i32;
        }
        Some(other) => out.warn(
            &object,
            format!("{ALGORITHM_ANNOTATION}: {other:?} is not an algorithm (peak-ewma); ignored"),
        ),
    }
    policy
}

/// Chooses a load balancer Istio's API has no name for (`peak-ewma`).
pub const ALGORITHM_ANNOTATION: &str = "balancer.ambient-rs.io/algorithm";

fn traffic_policy(out: &mut Out, object: &str, tp: &TrafficPolicy) -> l7::TrafficPolicy {
    let tls = tp
        .tls
        .as_ref()
        .and_then(|t| client_tls(out, object, "trafficPolicy.tls", t));
    let mut port_tls = Vec::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let field = format!("trafficPolicy.portLevelSettings[{i}]");
        for other in p.other.keys() {
            out.warn(
                object,
                format!("{field}.{other} is not supported (only tls is read per port); ignored"),
            );
        }
        let Some(settings) = &p.tls else { continue };
        match p.port.as_ref().map(|s| s.number).filter(|n| *n != 0) {
            Some(port) => {
                // An explicit DISABLE (or ISTIO_MUTUAL) on a port overrides the top level.
                let t =
                    client_tls(out, object, &format!("{field}.tls"), settings).unwrap_or_default();
                port_tls.push(l7::PortTls { port, tls: Some(t) });
            }
            None => out.warn(object, format!("{field} names no port number; ignored")),
        }
    }
    for (set, name) in [
        (tp.tunnel.is_some(), "tunnel"),
        (tp.proxy_protocol.is_some(), "proxyProtocol"),
        (
            tp.retry_budget
                .as_ref()
                .is_some_and(|b| b.budget_interval.is_some()),
            "retryBudget.budgetInterval (the budget counts requests in flight now)",
        ),
    ] {
        if set {
            out.warn(
                object,
                format!("trafficPolicy.{name} is not supported; ignored"),
            );
        }
    }
    l7::TrafficPolicy {
        load_balancer: tp
            .load_balancer
            .as_ref()
            .map(|lb| load_balancer(out, object, lb)),
        outlier_detection: tp
            .outlier_detection
            .as_ref()
            .map(|od| outlier_detection(out, object, od)),
        connection_pool: match (&tp.connection_pool, &tp.retry_budget) {
            (None, None) => None,
            (cp, budget) => {
                let mut pool = cp
                    .as_ref()
                    .map(|cp| connection_pool(out, object, cp))
                    .unwrap_or_default();
                pool.retry_budget = budget.as_ref().and_then(|b| retry_budget(out, object, b));
                Some(pool)
            }
        },
        tls,
        port_tls,
    }
}

/// `ClientTLSSettings` → the TLS a waypoint originates to endpoints outside the mesh: `SIMPLE`
/// (server verified against `caCertificates` or the system's store, by `subjectAltNames` or
/// the SNI name). `ISTIO_MUTUAL` and `DISABLE` need nothing (mesh traffic is HBONE already);
/// `MUTUAL` and secrets by `credentialName` are reported and leave the traffic plain.
fn client_tls(
    out: &mut Out,
    object: &str,
    field: &str,
    t: &ClientTlsSettings,
) -> Option<l7::ClientTls> {
    let mode = t.mode.as_deref().unwrap_or("DISABLE");
    match mode {
        "DISABLE" | "ISTIO_MUTUAL" => return None,
        "SIMPLE" => {}
        "MUTUAL" => {
            out.warn(
                object,
                format!("{field}: mode MUTUAL (client certificates) is not supported; the traffic stays plain"),
            );
            return None;
        }
        other => {
            out.warn(
                object,
                format!("{field}: mode {other:?} is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL; ignored"),
            );
            return None;
        }
    }
    for (set, name) in [
        (
            t.credential_name.is_some(),
            "credentialName (use caCertificates, a file on the waypoint)",
        ),
        (t.ca_crl.is_some(), "caCrl"),
        (
            t.client_certificate.is_some() || t.private_key.is_some(),
            "clientCertificate/privateKey (mode SIMPLE sends none)",
        ),
    ] {
        if set {
            out.warn(object, format!("{field}.{name} is not supported; ignored"));
        }
    }
    let ca = t.ca_certificates.clone().unwrap_or_default();
    if !ca.is_empty() && !ca.starts_with('/') {
        out.warn(
            object,
            format!("{field}.caCertificates {ca:?} is not an absolute path; the waypoint will fail to load it"),
        );
    }
    Some(l7::ClientTls {
        mode: l7::client_tls::Mode::Simple as i32,
        sni: t.sni.clone().unwrap_or_default(),
        ca_certificates: ca,
        subject_alt_names: t.subject_alt_names.clone(),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
    })
}

/// Envoy's defaults: 20 % of the requests in flight, at least 3.
const DEFAULT_RETRY_BUDGET_PERCENT: f64 = 20.0;
const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 3;

fn retry_budget(out: &mut Out, object: &str, b: &RetryBudget) -> Option<l7::RetryBudget> {
    let percent = b
        .percent
        .map_or(DEFAULT_RETRY_BUDGET_PERCENT, BudgetPercent::value);
    if !(0.0..=100.0).contains(&percent) {
        out.warn(
            object,
            format!("trafficPolicy.retryBudget.percent {percent} is not in 0–100; ignored"),
        );
        return None;
    }
    Some(l7::RetryBudget {
        percent,
        min_retry_concurrency: b
            .min_retry_concurrency
            .unwrap_or(DEFAULT_MIN_RETRY_CONCURRENCY),
    })
}

fn load_balancer(out: &mut Out, object: &str, lb: &LoadBalancerSettings) -> l7::LoadBalancer {
    use l7::load_balancer::Kind;
    let mut result = l7::LoadBalancer::default();
    match lb.simple.as_deref() {
        None | Some("UNSPECIFIED") => {}
        Some("LEAST_REQUEST" | "LEAST_CONN") => result.kind = Kind::LeastRequest as i32,
        Some("ROUND_ROBIN") => result.kind = Kind::RoundRobin as i32,
        Some("RANDOM") => result.kind = Kind::Random as i32,
        Some("PASSTHROUGH") => out.warn(
            object,
            "loadBalancer.simple PASSTHROUGH is not supported; LEAST_REQUEST is used",
        ),
        Some(other) => out.warn(
            object,
            format!("loadBalancer.simple {other:?} is not supported; LEAST_REQUEST is used"),
        ),
    }
    if let Some(ch) = &lb.consistent_hash {
        match &ch.http_header_name {
            Some(h) => {
                result.kind = Kind::ConsistentHash as i32;
                result.hash_header = h.to_ascii_lowercase();
            }
            None => out.warn(
                object,
                "loadBalancer.consistentHash: only httpHeaderName is supported (not httpCookie, useSourceIp or httpQueryParameterName); ignored",
            ),
        }
    }
    for (set, name) in [
        (lb.locality_lb_setting.is_some(), "localityLbSetting"),
        (lb.warmup_duration_secs.is_some(), "warmupDurationSecs"),
        (lb.warmup.is_some(), "warmup"),
    ] {
        if set {
            out.warn(
                object,
                format!("loadBalancer.{name} is not supported; ignored"),
            );
        }
    }
    result
}

fn outlier_detection(out: &mut Out, object: &str, od: &OutlierDetection) -> l7::OutlierDetection {
    // The deprecated `consecutiveErrors` counted gateway errors only (and turned 5xx off).
    let (consecutive_5xx, consecutive_gateway) = match od.consecutive_errors {
        Some(n) if od.consecutive_gateway_errors.is_none() => {
            (od.consecutive_5xx_errors.unwrap_or(0), n)
        }
        _ => (
            od.consecutive_5xx_errors.unwrap_or(DEFAULT_CONSECUTIVE_5XX),
            od.consecutive_gateway_errors.unwrap_or(0),
        ),
    };
    for (set, name) in [
        (od.min_health_percent.is_some(), "minHealthPercent"),
        (
            od.split_external_local_origin_errors.is_some(),
            "splitExternalLocalOriginErrors",
        ),
        (
            od.consecutive_local_origin_failures.is_some(),
            "consecutiveLocalOriginFailures",
        ),
    ] {
        if set {
            out.warn(
                object,
                format!("outlierDetection.{name} is not supported; ignored"),
            );
        }
    }
    let or = |v: u64, default: u64| if v == 0 { default } else { v };
    l7::OutlierDetection {
        consecutive_5xx,
        consecutive_gateway_errors: consecutive_gateway,
        interval_ms: or(
            duration_field(
                out,
                object,
                "outlierDetection.interval",
                od.interval.as_deref(),
            ),
            DEFAULT_INTERVAL_MS,
        ),
        base_ejection_time_ms: or(
            duration_field(
                out,
                object,
                "outlierDetection.baseEjectionTime",
                od.base_ejection_time.as_deref(),
            ),
            DEFAULT_BASE_EJECTION_MS,
        ),
        max_ejection_percent: od
            .max_ejection_percent
            .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT)
            .min(100),
    }
}

fn connection_pool(out: &mut Out, object: &str, cp: &ConnectionPoolSettings) -> l7::ConnectionPool {
    let mut pool = l7::ConnectionPool::default();
    if let Some(tcp) = &cp.tcp {
        pool.max_connections = tcp.max_connections.unwrap_or(0);
        pool.connect_timeout_ms = duration_field(
            out,
            object,
            "connectionPool.tcp.connectTimeout",
            tcp.connect_timeout.as_deref(),
        );
        for (set, name) in [
            (tcp.tcp_keepalive.is_some(), "tcp.tcpKeepalive"),
            (
                tcp.max_connection_duration.is_some(),
                "tcp.maxConnectionDuration",
            ),
            (tcp.idle_timeout.is_some(), "tcp.idleTimeout"),
        ] {
            if set {
                out.warn(
                    object,
                    format!("connectionPool.{name} is not supported; ignored"),
                );
            }
        }
    }
    if let Some(http) = &cp.http {
        pool.max_pending_requests = http.http1_max_pending_requests.unwrap_or(0);
        pool.max_requests = http.http2_max_requests.unwrap_or(0);
        pool.max_requests_per_connection = http.max_requests_per_connection.unwrap_or(0);
        pool.max_retries = http.max_retries.unwrap_or(0);
        pool.idle_timeout_ms = duration_field(
            out,
            object,
            "connectionPool.http.idleTimeout",
            http.idle_timeout.as_deref(),
        );
        for (set, name) in [
            (http.h2_upgrade_policy.is_some(), "http.h2UpgradePolicy"),
            (http.use_client_protocol.is_some(), "http.useClientProtocol"),
            (
                http.max_concurrent_streams.is_some(),
                "http.maxConcurrentStreams",
            ),
        ] {
            if set {
                out.warn(
                    object,
                    format!("connectionPool.{name} is not supported; ignored"),
                );
            }
        }
    }
    pool
}
