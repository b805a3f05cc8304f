//! Waypoint L7 configuration: cluster state → `ambient.waypoint.v1.L7Resource`s.
//!
//! - `gateway/<ns>/<name>`: a [`l7::GatewayConfig`] per waypoint Gateway (class
//!   `istio-waypoint`), with the AuthorizationPolicies whose `targetRefs` name it.
//! - `service/<ns>/<hostname>`: a [`l7::ServiceConfig`] per Service that uses a waypoint, or
//!   that a route (as parent or backend), a VirtualService, a DestinationRule or a policy
//!   concerns: its ports and how each is spoken, the routes of each port (Gateway API routes
//!   first, by [`routes`] precedence, then VirtualService rules in order), the DestinationRule's
//!   traffic policy and the policies that target it.
//!
//! What cannot be translated is reported as a [`Warning`] naming the object; nothing is
//! dropped silently.

pub mod authn;
pub mod destination_rule;
pub mod policy;
pub mod ratelimit;
pub mod rollout;
pub mod routes;
pub mod status;
pub mod targets;
pub mod virtual_service;

use std::collections::{BTreeMap, BTreeSet};

use ambient_proto::ambient::waypoint::v1 as l7;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::labels::{self, WAYPOINT_FOR};
use super::waypoint::{self, Traffic};
use super::{Context, Warning};
use crate::model::gateway::WAYPOINT_CLASS;

/// `service/<namespace>/<hostname>`.
pub fn service_resource_name(namespace: &str, hostname: &str) -> String {
    format!("service/{namespace}/{hostname}")
}

/// `gateway/<namespace>/<name>`.
pub fn gateway_resource_name(namespace: &str, name: &str) -> String {
    format!("gateway/{namespace}/{name}")
}

/// A Service (or a Gateway) by (namespace, name), or a ServiceEntry host by (namespace,
/// host): hosts an entry can be routed by hold a dot, and a Service name never does.
pub type ServiceKey = (String, String);

/// Whether `key` names a ServiceEntry host rather than a Service.
pub fn is_entry_host(key: &ServiceKey) -> bool {
    key.1.contains('.')
}

/// The hosts of ServiceEntry `namespace/name` that L7 resources can name (those with a dot).
pub fn routable_entry_hosts(ctx: &Context<'_>, namespace: &str, name: &str) -> Vec<ServiceKey> {
    ctx.entry_hosts()
        .filter(|((ns, _), se)| ns == namespace && se.metadata.name.as_deref() == Some(name))
        .map(|(key, _)| key.clone())
        .filter(is_entry_host)
        .collect()
}

/// A port of a Service or ServiceEntry host, as routes and the waypoint see it.
#[derive(Clone, Debug)]
pub struct DestinationPort {
    pub number: u32,
    pub name: Option<String>,
    pub protocol: l7::AppProtocol,
}

/// The TCP ports of the Service or ServiceEntry host `key` names; `None` when there is none.
pub fn destination_ports(ctx: &Context<'_>, key: &ServiceKey) -> Option<Vec<DestinationPort>> {
    if is_entry_host(key) {
        let se = ctx.entry_host(&key.0, &key.1)?;
        return Some(
            se.spec
                .ports
                .iter()
                .filter(|p| {
                    !p.protocol
                        .as_deref()
                        .is_some_and(|p| p.eq_ignore_ascii_case("UDP"))
                })
                .map(|p| DestinationPort {
                    number: p.number,
                    name: Some(p.name.clone()).filter(|n| !n.is_empty()),
                    protocol: entry_port_protocol(p.protocol.as_deref()),
                })
                .collect(),
        );
    }
    let svc = ctx.service(&key.0, &key.1)?;
    Some(
        tcp_ports(svc)
            .into_iter()
            .map(|p| DestinationPort {
                number: p.port as u32,
                name: p.name.clone(),
                protocol: port_protocol(p),
            })
            .collect(),
    )
}

/// How a ServiceEntry port is spoken, by its `protocol` (absent or unknown: detected).
fn entry_port_protocol(protocol: Option<&str>) -> l7::AppProtocol {
    use l7::AppProtocol::*;
    match protocol.map(str::to_ascii_uppercase).as_deref() {
        Some("HTTP") => Http1,
        Some("HTTP2") => Http2,
        Some("GRPC") => Grpc,
        Some("TCP" | "HTTPS" | "TLS" | "MONGO" | "MYSQL" | "REDIS") => Tcp,
        _ => Detect,
    }
}

/// What the translation collects besides resources.
#[derive(Default)]
pub struct Out {
    pub warnings: Vec<Warning>,
    /// Services that routes, rules and policies refer to (their configuration is emitted).
    pub referenced: BTreeSet<ServiceKey>,
}

impl Out {
    pub fn warn(&mut self, object: &str, message: impl Into<String>) {
        self.warnings.push(Warning::new(object, message));
    }
}

/// `<namespace>/<hostname>` of a Service: how backends name it.
pub fn backend_name(ctx: &Context<'_>, namespace: &str, name: &str) -> String {
    if is_entry_host(&(String::new(), name.to_string())) {
        return format!("{namespace}/{name}");
    }
    format!(
        "{namespace}/{name}.{namespace}.svc.{}",
        ctx.config.domain_suffix
    )
}

/// A backend on Service `namespace/name`; a Service that does not exist is reported (the
/// backend is kept, so its share of requests fails as Gateway API and Istio require).
/// `port` 0 is filled in per service port later (see [`default_ports`]).
pub fn service_backend(
    ctx: &Context<'_>,
    out: &mut Out,
    object: &str,
    namespace: &str,
    name: &str,
    port: u32,
    weight: u32,
) -> l7::Backend {
    let key = (namespace.to_string(), name.to_string());
    if is_entry_host(&key) {
        if ctx.entry_host(namespace, name).is_some() {
            out.referenced.insert(key);
        } else {
            out.warn(
                object,
                format!("backend host {name} is declared by no ServiceEntry of {namespace}; its share of requests fails"),
            );
        }
    } else if ctx.service(namespace, name).is_some() {
        out.referenced.insert(key);
    } else {
        out.warn(
            object,
            format!(
                "backend Service {namespace}/{name} does not exist; its share of requests fails"
            ),
        );
    }
    l7::Backend {
        service: backend_name(ctx, namespace, name),
        port,
        weight,
        filters: Vec::new(),
    }
}

/// The (namespace, name) of the Service an Istio `host` names, relative to `namespace`: a
/// short name, `name.ns`, `name.ns.svc` or the FQDN; or else the (namespace, host) of a
/// ServiceEntry host `namespace` sees. `Err` explains why it names none (the Service itself
/// may not exist: see [`resolve_host`]).
pub fn parse_host(ctx: &Context<'_>, host: &str, namespace: &str) -> Result<ServiceKey, String> {
    let service = parse_service_host(ctx, host, namespace);
    if let Ok((ns, name)) = &service
        && ctx.service(ns, name).is_some()
    {
        return service;
    }
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    if lower.contains('.')
        && let Some(ns) = ctx.find_entry_host(&lower, namespace)
    {
        return Ok((ns, lower));
    }
    service
}

fn parse_service_host(
    ctx: &Context<'_>,
    host: &str,
    namespace: &str,
) -> Result<ServiceKey, String> {
    if host.contains('*') {
        return Err(format!(
            "host {host:?}: wildcard hosts are not supported (name one Service)"
        ));
    }
    let suffix = format!(".svc.{}", ctx.config.domain_suffix);
    let trimmed = host
        .strip_suffix(&suffix)
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    match trimmed.split_once('.') {
        None if !trimmed.is_empty() => Ok((namespace.to_string(), trimmed.to_string())),
        Some((name, ns)) if !ns.contains('.') && !name.is_empty() && !ns.is_empty() => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!(
            "host {host:?} is neither a Service of this cluster nor a ServiceEntry host"
        )),
    }
}

/// Like [`parse_host`], and the Service must exist.
pub fn resolve_host(ctx: &Context<'_>, host: &str, namespace: &str) -> Result<ServiceKey, String> {
    let (ns, name) = parse_host(ctx, host, namespace)?;
    if is_entry_host(&(ns.clone(), name.clone())) {
        return Ok((ns, name));
    }
    if ctx.service(&ns, &name).is_none() {
        return Err(format!(
            "host {host:?} names Service {ns}/{name}, which does not exist"
        ));
    }
    Ok((ns, name))
}

/// How a Service port is spoken: its `appProtocol`, else Istio's port-name convention
/// (`<protocol>` or `<protocol>-<suffix>`), else detected by the waypoint.
pub fn port_protocol(port: &ServicePort) -> l7::AppProtocol {
    fn parse(p: &str) -> Option<l7::AppProtocol> {
        use l7::AppProtocol::*;
        Some(match p.to_ascii_lowercase().as_str() {
            "http" | "http1" | "kubernetes.io/ws" | "grpc-web" => Http1,
            "http2" | "h2c" | "kubernetes.io/h2c" => Http2,
            "grpc" => Grpc,
            "tcp" | "https" | "tls" | "kubernetes.io/wss" | "mongo" | "mysql" | "redis" => Tcp,
            _ => return None,
        })
    }
    if let Some(p) = port.app_protocol.as_deref().and_then(parse) {
        return p;
    }
    let name = port.name.as_deref().unwrap_or("");
    let prefix = name.split_once('-').map(|(p, _)| p).unwrap_or(name);
    // `grpc-web-foo` is gRPC-Web, not gRPC.
    if name.to_ascii_lowercase().starts_with("grpc-web") {
        return l7::AppProtocol::Http1;
    }
    parse(prefix).unwrap_or(l7::AppProtocol::Detect)
}

/// Parses a duration as Gateway API (`10s`, `500ms`, `1h30m`) and Istio (`0.5s`, `3m`) write
/// them, to milliseconds (a non-zero duration under 1 ms counts as 1 ms).
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 500ms, 10s, 1m, 1h)");
    let text = s.trim();
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err(bad());
    }
    let mut total_ns: f64 = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return Err(bad()),
        };
        total_ns += value * scale;
        rest = &rest[unit_len..];
    }
    let ms = total_ns / 1e6;
    if ms > 0.0 && ms < 1.0 {
        return Ok(1);
    }
    Ok(ms.round() as u64)
}

/// A duration field, reported and treated as unset when it does not parse.
pub fn duration_field(out: &mut Out, object: &str, field: &str, value: Option<&str>) -> u64 {
    match value.map(parse_duration_ms) {
        None => 0,
        Some(Ok(ms)) => ms,
        Some(Err(e)) => {
            out.warn(object, format!("{field}: {e}; ignored"));
            0
        }
    }
}

/// Whether `re` compiles; the waypoint would reject it otherwise.
pub fn check_regex(out: &mut Out, object: &str, re: &str) -> bool {
    match regex::Regex::new(re) {
        Ok(_) => true,
        Err(e) => {
            out.warn(object, format!("regular expression {re:?} is invalid: {e}"));
            false
        }
    }
}

/// Fills backends without a port (0): the backend Service's only port, else the port the
/// route serves.
fn default_ports(ctx: &Context<'_>, route: &mut l7::Route, port: u32) {
    fn fill(ctx: &Context<'_>, backend: &mut l7::Backend, port: u32) {
        if backend.port == 0 {
            let suffix = format!(".svc.{}", ctx.config.domain_suffix);
            let key = backend.service.split_once('/').map(|(ns, host)| {
                let name = match host.strip_suffix(&suffix) {
                    Some(qualified) => qualified.split('.').next().unwrap_or(""),
                    None => host,
                };
                (ns.to_string(), name.to_string())
            });
            let single = key
                .and_then(|k| destination_ports(ctx, &k))
                .filter(|ports| ports.len() == 1)
                .map(|ports| ports[0].number);
            backend.port = single.unwrap_or(port);
        }
        for f in &mut backend.filters {
            fill_filter(ctx, f, port);
        }
    }
    fn fill_filter(ctx: &Context<'_>, f: &mut l7::Filter, port: u32) {
        if let Some(l7::filter::Kind::Mirror(m)) = &mut f.kind
            && let Some(b) = &mut m.backend
        {
            fill(ctx, b, port);
        }
    }
    for b in &mut route.backends {
        fill(ctx, b, port);
    }
    for f in &mut route.filters {
        fill_filter(ctx, f, port);
    }
}

/// TCP ports of a Service (the only ones the mesh carries).
pub fn tcp_ports(svc: &Service) -> Vec<&ServicePort> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .collect()
}

/// Computes every L7 resource, the status of every LocalRateLimitPolicy and every Rollout as
/// the rollout engine sees it. `instances`:
/// running instances of each waypoint (see [`status::running_instances`]).
pub fn build(
    ctx: &Context<'_>,
    instances: &BTreeMap<ServiceKey, usize>,
    warnings: &mut Vec<Warning>,
) -> (
    BTreeMap<String, l7::L7Resource>,
    Vec<ratelimit::PolicyStatus>,
    Vec<rollout::RolloutView>,
) {
    let mut out = Out::default();
    let mut gateways: BTreeMap<ServiceKey, l7::GatewayConfig> = BTreeMap::new();
    for g in ctx.state.gateways() {
        if g.spec.gateway_class_name != WAYPOINT_CLASS {
            continue;
        }
        let namespace = g
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = g.metadata.name.clone().unwrap_or_default();
        let traffic_type = labels::labels(&g.metadata)
            .get(WAYPOINT_FOR)
            .cloned()
            .unwrap_or_else(|| "service".into());
        gateways.insert(
            (namespace.clone(), name.clone()),
            l7::GatewayConfig {
                namespace,
                name,
                traffic_type,
                policies: Vec::new(),
                rate_limits: Vec::new(),
                jwt_rules: Vec::new(),
            },
        );
    }
    let service_policies = policy::attach(ctx, &mut out, &mut gateways);
    let service_jwt = authn::attach(ctx, &mut out, &mut gateways);
    let (limits, policy_statuses) = ratelimit::attach(ctx, &mut out, &mut gateways, instances);
    let mut gateway_routes = routes::collect(ctx, &mut out);
    let rollouts = rollout::views(ctx, &mut out);
    rollout::apply_weights(ctx, &rollouts, &mut gateway_routes);
    let vs_rules = virtual_service::collect(ctx, &mut out);
    let traffic = destination_rule::collect(ctx, &mut out);

    let mut resources = BTreeMap::new();
    for g in gateways.into_values() {
        resources.insert(
            gateway_resource_name(&g.namespace, &g.name),
            l7::L7Resource {
                kind: Some(l7::l7_resource::Kind::Gateway(g)),
            },
        );
    }
    for d in destinations(ctx) {
        let key = d.key.clone();
        let namespace = key.0.clone();
        // A host a Service of the namespace already is (services come first): the Service's
        // configuration stands, as in WDS.
        if is_entry_host(&key)
            && resources.contains_key(&service_resource_name(&namespace, &d.hostname))
        {
            continue;
        }
        // Warnings about the waypoint label are the WDS service's to give.
        let waypoint = waypoint::choose(ctx, d.meta, &namespace, Traffic::Service, &mut Vec::new())
            .map(|(ns, name, _)| (ns, name));
        if let Some(entries) = gateway_routes.get_mut(&key) {
            let replicas = waypoint
                .as_ref()
                .and_then(|w| instances.get(w))
                .copied()
                .unwrap_or(0);
            ratelimit::attach_to_routes(&limits, entries, replicas);
        }
        let waypoint = waypoint.map(|(ns, name)| format!("{ns}/{name}"));
        let entries = gateway_routes.get(&key);
        let rules = vs_rules.get(&key);
        let policies = service_policies.get(&key);
        let jwt_rules = service_jwt.get(&key);
        let rate_limits = limits.services.get(&key);
        let included = waypoint.is_some()
            || out.referenced.contains(&key)
            || entries.is_some()
            || rules.is_some()
            || policies.is_some()
            || rate_limits.is_some()
            || traffic.contains_key(&key);
        if !included {
            continue;
        }
        let object = d.object;
        if waypoint.is_none()
            && (entries.is_some() || rules.is_some() || policies.is_some() || rate_limits.is_some())
        {
            out.warn(
                &object,
                "has routes or policies but uses no waypoint (istio.io/use-waypoint); they apply only where a waypoint carries its traffic",
            );
        }
        let ports = service_ports(ctx, &mut out, &object, &d.ports, entries, rules);
        let config = l7::ServiceConfig {
            namespace: namespace.clone(),
            name: d.name,
            hostname: d.hostname.clone(),
            waypoint: waypoint.unwrap_or_default(),
            ports,
            traffic_policy: traffic.get(&key).cloned(),
            policies: policies.cloned().unwrap_or_default(),
            rate_limits: rate_limits.cloned().unwrap_or_default(),
            jwt_rules: jwt_rules.cloned().unwrap_or_default(),
        };
        resources.insert(
            service_resource_name(&namespace, &d.hostname),
            l7::L7Resource {
                kind: Some(l7::l7_resource::Kind::Service(config)),
            },
        );
    }
    warnings.extend(out.warnings);
    (resources, policy_statuses, rollouts)
}

/// What the waypoint may be configured for: a Service, or a host of a ServiceEntry.
struct Destination<'a> {
    key: ServiceKey,
    /// The Service's or the ServiceEntry's name.
    name: String,
    hostname: String,
    meta: &'a ObjectMeta,
    /// How warnings name it.
    object: String,
    ports: Vec<DestinationPort>,
}

/// Every Service, then every ServiceEntry host that can be routed by name (one with a dot).
fn destinations<'a>(ctx: &Context<'a>) -> Vec<Destination<'a>> {
    let mut out = Vec::new();
    for svc in ctx.state.services() {
        let namespace = super::service::namespace(svc);
        let name = svc.metadata.name.clone().unwrap_or_default();
        let key = (namespace.clone(), name.clone());
        out.push(Destination {
            ports: destination_ports(ctx, &key).unwrap_or_default(),
            key,
            hostname: super::service::hostname(ctx, svc),
            meta: &svc.metadata,
            object: format!("Service/{namespace}/{name}"),
            name,
        });
    }
    for ((namespace, host), se) in ctx.entry_hosts() {
        let key = (namespace.clone(), host.clone());
        if !is_entry_host(&key) {
            continue;
        }
        let name = se.metadata.name.clone().unwrap_or_default();
        out.push(Destination {
            ports: destination_ports(ctx, &key).unwrap_or_default(),
            key,
            hostname: host.clone(),
            meta: &se.metadata,
            object: format!("ServiceEntry/{namespace}/{name} (host {host})"),
            name,
        });
    }
    out
}

/// One [`l7::PortConfig`] per TCP port of a destination, with the routes that apply to it:
/// the producer routes and VirtualService rules, and each consumer namespace's routes apart.
fn service_ports(
    ctx: &Context<'_>,
    out: &mut Out,
    object: &str,
    ports: &[DestinationPort],
    entries: Option<&Vec<routes::Entry>>,
    rules: Option<&Vec<virtual_service::Rule>>,
) -> Vec<l7::PortConfig> {
    let consumers: BTreeSet<&str> = entries
        .into_iter()
        .flatten()
        .filter_map(|e| e.consumer.as_deref())
        .collect();
    let mut configs = Vec::new();
    for p in ports {
        let number = p.number;
        let mut protocol = p.protocol;
        let (mut routes, mut grpc) = port_routes(ctx, entries, None, number, false);
        for r in rules.into_iter().flatten() {
            if let Some(mut route) = r.for_port(number) {
                default_ports(ctx, &mut route, number);
                routes.push(route);
            }
        }
        let mut consumer_routes = Vec::new();
        for ns in &consumers {
            let (routes, g) = port_routes(ctx, entries, Some(ns), number, false);
            grpc |= g;
            if !routes.is_empty() {
                consumer_routes.push(l7::ConsumerRoutes {
                    namespace: ns.to_string(),
                    routes,
                });
            }
        }
        if grpc {
            match protocol {
                l7::AppProtocol::Detect => protocol = l7::AppProtocol::Grpc,
                l7::AppProtocol::Http1 => out.warn(
                    object,
                    format!("port {number} is declared HTTP/1.1 but a GRPCRoute routes it; gRPC needs HTTP/2"),
                ),
                _ => {}
            }
        }
        let tcp_entries = entries
            .into_iter()
            .flatten()
            .filter(|e| e.tcp && e.applies_to(number));
        if protocol == l7::AppProtocol::Tcp {
            let explicit = entries
                .into_iter()
                .flatten()
                .any(|e| !e.tcp && e.names_port(number))
                || rules.into_iter().flatten().any(|r| r.names_port(number));
            if explicit {
                out.warn(
                    object,
                    format!("port {number} is TCP (by its appProtocol or name); HTTP routes do not apply to it"),
                );
            }
            // TCPRoutes instead: the oldest of each scope applies.
            routes = tcp_route(
                out,
                object,
                number,
                port_routes(ctx, entries, None, number, true).0,
            );
            consumer_routes.clear();
            for ns in &consumers {
                let theirs = port_routes(ctx, entries, Some(ns), number, true).0;
                let theirs = tcp_route(out, object, number, theirs);
                if !theirs.is_empty() {
                    consumer_routes.push(l7::ConsumerRoutes {
                        namespace: ns.to_string(),
                        routes: theirs,
                    });
                }
            }
        } else if tcp_entries.clone().any(|e| e.names_port(number)) {
            out.warn(
                object,
                format!("port {number} is not TCP (declare it with appProtocol: tcp or a tcp- port name); TCPRoutes do not apply to it"),
            );
        }
        configs.push(l7::PortConfig {
            port: number,
            protocol: protocol as i32,
            routes,
            consumer_routes,
        });
    }
    let tcp_routed = entries.into_iter().flatten().any(|e| e.tcp);
    if tcp_routed
        && !configs
            .iter()
            .any(|c| c.protocol == l7::AppProtocol::Tcp as i32)
    {
        out.warn(
            object,
            "TCPRoutes attach to it but it has no TCP port (declare one with appProtocol: tcp or a tcp- port name); they do not apply",
        );
    }
    configs
}

/// The routes of port `number` from the entries of one kind: producer routes (`consumer`
/// `None`) or one consumer namespace's. Consecutive matches of one rule become one route.
/// Also whether any is a gRPC route.
fn port_routes(
    ctx: &Context<'_>,
    entries: Option<&Vec<routes::Entry>>,
    consumer: Option<&str>,
    number: u32,
    tcp: bool,
) -> (Vec<l7::Route>, bool) {
    let mut routes: Vec<l7::Route> = Vec::new();
    let mut grpc = false;
    let mut previous: Option<&routes::Entry> = None;
    for e in entries.into_iter().flatten() {
        if !e.applies_to(number) || e.consumer.as_deref() != consumer || e.tcp != tcp {
            continue;
        }
        grpc |= e.grpc;
        match (previous, routes.last_mut()) {
            (Some(prev), Some(last)) if prev.same_rule(e) => {
                last.matches.extend(e.route.matches.iter().cloned());
            }
            _ => {
                let mut r = e.route.clone();
                default_ports(ctx, &mut r, number);
                routes.push(r);
            }
        }
        previous = Some(e);
    }
    (routes, grpc)
}

/// The TCPRoute that applies to a TCP port: the oldest (first in precedence order).
fn tcp_route(
    out: &mut Out,
    object: &str,
    number: u32,
    mut routes: Vec<l7::Route>,
) -> Vec<l7::Route> {
    if routes.len() > 1 {
        out.warn(
            object,
            format!(
                "port {number}: several TCPRoutes apply; only the oldest, {}, is used",
                routes[0].name
            ),
        );
        routes.truncate(1);
    }
    routes
}

/// The waypoint Gateways' statuses (see [`status`]).
pub use status::gateway_statuses;

#[cfg(test)]
mod tests;
