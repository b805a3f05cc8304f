//! Gateway API `HTTPRoute` / `GRPCRoute` with Service parents (GAMMA) → routes of those
//! Services' ports.
//!
//! Every match of every rule becomes one entry, ordered across all routes of a Service by
//! Gateway API precedence: an exact path, then the longest prefix (then regular expressions,
//! longest first, as Istio ranks them), then a method match, then the most header matches,
//! then the most query parameter matches; ties go to the oldest route (`creationTimestamp`),
//! then to `namespace/name` in alphabetical order, then to rule and match order. A rule
//! without matches matches every request and ranks as the prefix `/`. Consecutive entries of
//! the same rule are merged back into one route with several matches.
//!
//! A GRPCRoute method match becomes a path match: service and method → the exact path
//! `/<service>/<method>`, a service alone → the prefix `/<service>`, a method alone → a
//! regular expression; `RegularExpression` matches become one regular expression.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use ambient_proto::ambient::waypoint::v1 as l7;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::{
    DestinationPort, Out, ServiceKey, check_regex, destination_ports, duration_field,
    is_entry_host, routable_entry_hosts, service_backend,
};
use crate::index::Context;
use crate::model::Kind;
use crate::model::route::{
    BackendObjectReference, BackendRef, GrpcRouteMatch, GrpcRouteRule, HeaderModifier,
    HttpRouteMatch, HttpRouteRule, ParentReference, PathModifier, RouteFilter, ValueMatch,
};

/// Gateway API's default number of retries when `retry.attempts` is unset (Istio's default).
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Gateway API's default redirect status.
pub const DEFAULT_REDIRECT_STATUS: u32 = 302;

/// The ports of its Service an entry applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    All,
    Only(BTreeSet<u32>),
}

/// Gateway API precedence, as a sort key (smaller first).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    /// 0 exact, 1 prefix, 2 regular expression.
    path_class: u8,
    path_len: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
    undated: bool,
    created: Option<Time>,
    namespace: String,
    name: String,
    kind: Kind,
    rule: usize,
    matched: usize,
}

/// One match of one rule, attached to one Service.
#[derive(Clone, Debug)]
pub struct Entry {
    pub precedence: Precedence,
    pub ports: Ports,
    /// A consumer route's namespace (its parent Service is in another namespace): it applies
    /// to requests from clients there only. `None`: a producer route.
    pub consumer: Option<String>,
    /// From a GRPCRoute.
    pub grpc: bool,
    /// From a TCPRoute: no matches, for TCP ports only.
    pub tcp: bool,
    /// With at most one match.
    pub route: l7::Route,
}

impl Entry {
    pub fn applies_to(&self, port: u32) -> bool {
        match &self.ports {
            Ports::All => true,
            Ports::Only(p) => p.contains(&port),
        }
    }

    /// Whether the route names `port` explicitly.
    pub fn names_port(&self, port: u32) -> bool {
        matches!(&self.ports, Ports::Only(p) if p.contains(&port))
    }

    /// The HTTPRoute (namespace, name) and rule index this entry comes from.
    pub fn http_rule(&self) -> Option<(&str, &str, usize)> {
        let p = &self.precedence;
        (p.kind == Kind::HttpRoute).then_some((p.namespace.as_str(), p.name.as_str(), p.rule))
    }

    /// Whether both come from the same rule of the same route.
    pub fn same_rule(&self, other: &Entry) -> bool {
        let (a, b) = (&self.precedence, &other.precedence);
        a.kind == b.kind
            && a.namespace == b.namespace
            && a.name == b.name
            && a.rule == b.rule
            && self.ports == other.ports
            && !self.route.matches.is_empty()
            && !other.route.matches.is_empty()
    }
}

/// The route being translated.
struct Source {
    kind: Kind,
    namespace: String,
    name: String,
    created: Option<Time>,
    /// `Kind/namespace/name`, for warnings.
    object: String,
}

impl Source {
    fn new(kind: Kind, meta: &ObjectMeta) -> Self {
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        Source {
            kind,
            object: format!("{kind}/{namespace}/{name}"),
            namespace,
            name,
            created: meta.creation_timestamp.clone(),
        }
    }

    fn precedence(&self, path_class: u8, path_len: usize, m: &l7::RouteMatch) -> Precedence {
        Precedence {
            path_class,
            path_len: Reverse(path_len),
            no_method: m.method.is_empty(),
            headers: Reverse(m.headers.len()),
            query_params: Reverse(m.query_params.len()),
            undated: self.created.is_none(),
            created: self.created.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            kind: self.kind,
            rule: 0,
            matched: 0,
        }
    }
}

/// Every route entry, by the Service it attaches to, in precedence order.
pub fn collect(ctx: &Context<'_>, out: &mut Out) -> BTreeMap<ServiceKey, Vec<Entry>> {
    let mut by_service: BTreeMap<ServiceKey, Vec<Entry>> = BTreeMap::new();
    let mut attach = |out: &mut Out,
                      src: &Source,
                      refs: &[ParentReference],
                      hostnames: &[String],
                      entries: Vec<Entry>| {
        let parents = parents(ctx, out, src, refs);
        if !parents.is_empty() && !hostnames.is_empty() {
            out.warn(
                &src.object,
                "spec.hostnames does not apply to Service parents (GAMMA); ignored",
            );
        }
        for (key, ports) in parents {
            let consumer = (key.0 != src.namespace).then(|| src.namespace.clone());
            let list = by_service.entry(key).or_default();
            list.extend(entries.iter().cloned().map(|mut e| {
                e.ports = ports.clone();
                e.consumer = consumer.clone();
                e
            }));
        }
    };
    for r in ctx.state.http_routes() {
        let src = Source::new(Kind::HttpRoute, &r.metadata);
        let entries = http_entries(ctx, out, &src, &r.spec.rules);
        if r.spec.use_default_gateways.is_some() {
            out.warn(
                &src.object,
                "spec.useDefaultGateways is not supported; ignored",
            );
        }
        attach(out, &src, &r.spec.parent_refs, &r.spec.hostnames, entries);
    }
    for r in ctx.state.grpc_routes() {
        let src = Source::new(Kind::GrpcRoute, &r.metadata);
        let entries = grpc_entries(ctx, out, &src, &r.spec.rules);
        attach(out, &src, &r.spec.parent_refs, &r.spec.hostnames, entries);
    }
    for r in ctx.state.tcp_routes() {
        let src = Source::new(Kind::TcpRoute, &r.metadata);
        let entries = tcp_entries(ctx, out, &src, &r.spec.rules);
        attach(out, &src, &r.spec.parent_refs, &[], entries);
    }
    for list in by_service.values_mut() {
        list.sort_by(|a, b| a.precedence.cmp(&b.precedence));
    }
    by_service
}

/// A TCPRoute's one entry: the weighted backends of its first rule (a mesh TCP connection
/// carries nothing to choose among rules by).
fn tcp_entries(
    ctx: &Context<'_>,
    out: &mut Out,
    src: &Source,
    rules: &[crate::model::route::TcpRouteRule],
) -> Vec<Entry> {
    let Some(rule) = rules.first() else {
        out.warn(&src.object, "no rules; route ignored");
        return Vec::new();
    };
    if rules.len() > 1 {
        out.warn(
            &src.object,
            "only the first rule of a TCPRoute applies (nothing tells TCP connections apart); the rest are ignored",
        );
    }
    let route = l7::Route {
        name: format!("{} {}/{}#0", src.kind, src.namespace, src.name),
        backends: backends(ctx, out, src, &rule.backend_refs),
        ..Default::default()
    };
    vec![Entry {
        precedence: src.precedence(1, 1, &l7::RouteMatch::default()),
        ports: Ports::All,
        consumer: None,
        grpc: false,
        tcp: true,
        route,
    }]
}

/// The Services (and ServiceEntry hosts) a route attaches to, with the ports it names.
fn parents(
    ctx: &Context<'_>,
    out: &mut Out,
    src: &Source,
    refs: &[ParentReference],
) -> Vec<(ServiceKey, Ports)> {
    let mut by_service: BTreeMap<ServiceKey, Ports> = BTreeMap::new();
    for r in refs {
        let kind = r.kind.as_deref().unwrap_or("Gateway");
        let group = r.group.as_deref().unwrap_or(if kind == "Service" {
            ""
        } else {
            "gateway.networking.k8s.io"
        });
        let ns = r.namespace.clone().unwrap_or_else(|| src.namespace.clone());
        // Each attached destination, how warnings name it, and its ports.
        let targets: Vec<(ServiceKey, String, Vec<DestinationPort>)> = match (group, kind) {
            ("" | "core", "Service") => {
                let key = (ns.clone(), r.name.clone());
                let Some(ports) = destination_ports(ctx, &key).filter(|_| !is_entry_host(&key))
                else {
                    out.warn(
                        &src.object,
                        format!("parentRef Service {ns}/{} does not exist", r.name),
                    );
                    continue;
                };
                vec![(key, format!("parentRef Service {ns}/{}", r.name), ports)]
            }
            // Istio's egress routes: every host of the entry.
            ("networking.istio.io", "ServiceEntry") => {
                let hosts: Vec<_> = routable_entry_hosts(ctx, &ns, &r.name)
                    .into_iter()
                    .map(|key| {
                        let ports = destination_ports(ctx, &key).unwrap_or_default();
                        let what = format!("parentRef ServiceEntry {ns}/{} host {}", r.name, key.1);
                        (key, what, ports)
                    })
                    .collect();
                if hosts.is_empty() {
                    out.warn(
                        &src.object,
                        format!(
                            "parentRef ServiceEntry {ns}/{} does not exist (or declares no host with a dot)",
                            r.name
                        ),
                    );
                }
                hosts
            }
            ("gateway.networking.k8s.io", "Gateway") => {
                out.warn(
                    &src.object,
                    format!(
                        "parentRef Gateway {ns}/{}: only Service and ServiceEntry parents (mesh routes) are served; ignored",
                        r.name
                    ),
                );
                continue;
            }
            _ => {
                out.warn(
                    &src.object,
                    format!(
                        "parentRef {kind} {ns}/{} (group {group:?}) is not supported; ignored",
                        r.name
                    ),
                );
                continue;
            }
        };
        for (key, what, ports) in targets {
            let Some(port) = parent_port(out, src, r, &what, &ports) else {
                continue;
            };
            out.referenced.insert(key.clone());
            let entry = by_service
                .entry(key)
                .or_insert_with(|| Ports::Only(BTreeSet::new()));
            match (port, entry) {
                (None, e) => *e = Ports::All,
                (Some(_), Ports::All) => {}
                (Some(n), Ports::Only(set)) => {
                    set.insert(n);
                }
            }
        }
    }
    by_service.into_iter().collect()
}

/// The port a parentRef names by `port` or `sectionName` (`Some(None)`: every port); `None`
/// (reported) when they name none of `ports` or disagree.
fn parent_port(
    out: &mut Out,
    src: &Source,
    r: &ParentReference,
    what: &str,
    ports: &[DestinationPort],
) -> Option<Option<u32>> {
    let mut port = r.port.map(u32::from);
    if let Some(section) = &r.section_name {
        match ports.iter().find(|p| p.name.as_deref() == Some(section)) {
            Some(p) if port.is_none_or(|n| n == p.number) => port = Some(p.number),
            Some(_) => {
                out.warn(
                    &src.object,
                    format!("{what}: sectionName {section:?} and port disagree; ignored"),
                );
                return None;
            }
            None => {
                out.warn(
                    &src.object,
                    format!("{what}: no port is named {section:?}; ignored"),
                );
                return None;
            }
        }
    }
    if let Some(n) = port
        && !ports.iter().any(|p| p.number == n)
    {
        out.warn(&src.object, format!("{what}: it has no port {n}; ignored"));
        return None;
    }
    Some(port)
}

fn string_match(
    out: &mut Out,
    src: &Source,
    what: &str,
    m: &ValueMatch,
) -> Option<l7::StringMatch> {
    use l7::string_match::Kind;
    let kind = match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => Kind::Exact(m.value.clone()),
        "RegularExpression" => {
            if !check_regex(out, &src.object, &m.value) {
                return None;
            }
            Kind::Regex(m.value.clone())
        }
        other => {
            out.warn(
                &src.object,
                format!(
                    "{what} {:?}: match type {other:?} is not supported; match ignored",
                    m.name
                ),
            );
            return None;
        }
    };
    Some(l7::StringMatch { kind: Some(kind) })
}

fn headers(out: &mut Out, src: &Source, list: &[ValueMatch]) -> Option<Vec<l7::HeaderMatch>> {
    list.iter()
        .map(|h| {
            Some(l7::HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: Some(string_match(out, src, "header", h)?),
                invert: false,
            })
        })
        .collect()
}

/// One HTTPRoute match, with its path class and length for precedence.
fn http_match(
    out: &mut Out,
    src: &Source,
    m: &HttpRouteMatch,
) -> Option<(l7::RouteMatch, u8, usize)> {
    use l7::path_match::Kind;
    let (path, class, len) = match &m.path {
        None => (None, 1, 1),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            let len = value.chars().count();
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => (Some(Kind::Exact(value)), 0, len),
                "PathPrefix" => (Some(Kind::Prefix(value)), 1, len),
                "RegularExpression" => {
                    if !check_regex(out, &src.object, &value) {
                        return None;
                    }
                    (Some(Kind::Regex(value)), 2, len)
                }
                other => {
                    out.warn(
                        &src.object,
                        format!("path match type {other:?} is not supported; match ignored"),
                    );
                    return None;
                }
            }
        }
    };
    let headers = headers(out, src, &m.headers)?;
    let query_params = m
        .query_params
        .iter()
        .map(|q| {
            Some(l7::QueryMatch {
                name: q.name.clone(),
                value: Some(string_match(out, src, "query parameter", q)?),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((
        l7::RouteMatch {
            path: path.map(|k| l7::PathMatch { kind: Some(k) }),
            headers,
            query_params,
            method: m.method.clone().unwrap_or_default(),
        },
        class,
        len,
    ))
}

/// An HTTPRoute match written in another object (`object`, for warnings), as the waypoint
/// matches requests; `None` (reported) when it cannot be translated.
pub fn request_match(out: &mut Out, object: &str, m: &HttpRouteMatch) -> Option<l7::RouteMatch> {
    let src = Source {
        kind: Kind::HttpRoute,
        namespace: String::new(),
        name: String::new(),
        created: None,
        object: object.to_string(),
    };
    http_match(out, &src, m).map(|(m, _, _)| m)
}

/// One GRPCRoute match as an HTTP match on the request path.
fn grpc_match(
    out: &mut Out,
    src: &Source,
    m: &GrpcRouteMatch,
) -> Option<(l7::RouteMatch, u8, usize)> {
    use l7::path_match::Kind;
    let (path, class) = match &m.method {
        None => (None, 1),
        Some(mm) => {
            let service = mm.service.as_deref().filter(|s| !s.is_empty());
            let method = mm.method.as_deref().filter(|s| !s.is_empty());
            match (mm.kind.as_deref().unwrap_or("Exact"), service, method) {
                (_, None, None) => {
                    out.warn(
                        &src.object,
                        "method match names neither a service nor a method; match ignored",
                    );
                    return None;
                }
                ("Exact", Some(s), Some(m)) => (Some(Kind::Exact(format!("/{s}/{m}"))), 0),
                ("Exact", Some(s), None) => (Some(Kind::Prefix(format!("/{s}"))), 1),
                ("Exact", None, Some(m)) => {
                    (Some(Kind::Regex(format!("/[^/]+/{}", regex::escape(m)))), 2)
                }
                ("RegularExpression", s, m) => {
                    let re = format!("/(?:{})/(?:{})", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+"));
                    if !check_regex(out, &src.object, &re) {
                        return None;
                    }
                    (Some(Kind::Regex(re)), 2)
                }
                (other, _, _) => {
                    out.warn(
                        &src.object,
                        format!("method match type {other:?} is not supported; match ignored"),
                    );
                    return None;
                }
            }
        }
    };
    let len = match &path {
        Some(Kind::Exact(p) | Kind::Prefix(p) | Kind::Regex(p)) => p.chars().count(),
        None => 1,
    };
    let headers = headers(out, src, &m.headers)?;
    Some((
        l7::RouteMatch {
            path: path.map(|k| l7::PathMatch { kind: Some(k) }),
            headers,
            query_params: Vec::new(),
            method: String::new(),
        },
        class,
        len,
    ))
}

fn header_modifier(m: &HeaderModifier) -> l7::HeaderModifier {
    let header = |h: &crate::model::route::HttpHeader| l7::Header {
        name: h.name.clone(),
        value: h.value.clone(),
    };
    l7::HeaderModifier {
        set: m.set.iter().map(header).collect(),
        add: m.add.iter().map(header).collect(),
        remove: m.remove.clone(),
    }
}

fn path_modifier(out: &mut Out, src: &Source, p: &PathModifier) -> Option<l7::PathModifier> {
    use l7::path_modifier::Kind;
    let kind = match p.kind.as_str() {
        "ReplaceFullPath" => Kind::ReplaceFullPath(p.replace_full_path.clone().unwrap_or_default()),
        "ReplacePrefixMatch" => {
            Kind::ReplacePrefixMatch(p.replace_prefix_match.clone().unwrap_or_default())
        }
        other => {
            out.warn(
                &src.object,
                format!("path modifier type {other:?} is not supported; ignored"),
            );
            return None;
        }
    };
    Some(l7::PathModifier { kind: Some(kind) })
}

/// A backend reference (only Services are supported; others are reported and left out, so
/// a rule whose backends are all unsupported answers 500).
fn backend(
    ctx: &Context<'_>,
    out: &mut Out,
    src: &Source,
    r: &BackendObjectReference,
    weight: u32,
) -> Option<l7::Backend> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    let ns = r.namespace.clone().unwrap_or_else(|| src.namespace.clone());
    if (group, kind) == ("networking.istio.io", "Hostname") {
        // Istio's backend by host: a ServiceEntry's, as the route's namespace sees it.
        let host = r.name.trim_end_matches('.').to_ascii_lowercase();
        let entry_ns = ctx
            .find_entry_host(&host, &src.namespace)
            .filter(|_| host.contains('.'));
        let Some(entry_ns) = entry_ns else {
            out.warn(
                &src.object,
                format!("backendRef Hostname {host}: no ServiceEntry visible here declares it; its share of requests fails"),
            );
            return None;
        };
        return Some(service_backend(
            ctx,
            out,
            &src.object,
            &entry_ns,
            &host,
            r.port.map(u32::from).unwrap_or(0),
            weight,
        ));
    }
    if !matches!(group, "" | "core") || kind != "Service" {
        out.warn(
            &src.object,
            format!(
                "backendRef {kind} {ns}/{} (group {group:?}) is not supported; its share of requests fails",
                r.name
            ),
        );
        return None;
    }
    Some(service_backend(
        ctx,
        out,
        &src.object,
        &ns,
        &r.name,
        r.port.map(u32::from).unwrap_or(0),
        weight,
    ))
}

fn filter(ctx: &Context<'_>, out: &mut Out, src: &Source, f: &RouteFilter) -> Option<l7::Filter> {
    use l7::filter::Kind;
    let missing = |out: &mut Out| {
        out.warn(
            &src.object,
            format!("filter {} has no configuration; ignored", f.kind),
        );
    };
    let kind = match f.kind.as_str() {
        "RequestHeaderModifier" => match &f.request_header_modifier {
            Some(m) => Kind::RequestHeaders(header_modifier(m)),
            None => {
                missing(out);
                return None;
            }
        },
        "ResponseHeaderModifier" => match &f.response_header_modifier {
            Some(m) => Kind::ResponseHeaders(header_modifier(m)),
            None => {
                missing(out);
                return None;
            }
        },
        "RequestRedirect" => match &f.request_redirect {
            Some(r) => Kind::Redirect(l7::Redirect {
                scheme: r.scheme.clone().unwrap_or_default(),
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().and_then(|p| path_modifier(out, src, p)),
                port: r.port.map(u32::from).unwrap_or(0),
                status_code: r
                    .status_code
                    .map(u32::from)
                    .unwrap_or(DEFAULT_REDIRECT_STATUS),
            }),
            None => {
                missing(out);
                return None;
            }
        },
        "URLRewrite" => match &f.url_rewrite {
            Some(r) => Kind::Rewrite(l7::Rewrite {
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().and_then(|p| path_modifier(out, src, p)),
            }),
            None => {
                missing(out);
                return None;
            }
        },
        "RequestMirror" => match &f.request_mirror {
            Some(m) => {
                let percent = match (&m.percent, &m.fraction) {
                    (Some(p), _) => f64::from(*p),
                    (None, Some(fr)) => {
                        let den = fr.denominator.unwrap_or(100).max(1);
                        f64::from(fr.numerator) * 100.0 / f64::from(den)
                    }
                    (None, None) => 100.0,
                };
                Kind::Mirror(l7::Mirror {
                    backend: Some(backend(ctx, out, src, &m.backend_ref, 1)?),
                    percent: percent.clamp(0.0, 100.0),
                })
            }
            None => {
                missing(out);
                return None;
            }
        },
        "ExtensionRef" | "CORS" | "ExternalAuth" => {
            out.warn(
                &src.object,
                format!("filter {} is not supported; ignored", f.kind),
            );
            return None;
        }
        other => {
            out.warn(
                &src.object,
                format!("unknown filter type {other:?}; ignored"),
            );
            return None;
        }
    };
    Some(l7::Filter { kind: Some(kind) })
}

fn backends(
    ctx: &Context<'_>,
    out: &mut Out,
    src: &Source,
    refs: &[BackendRef],
) -> Vec<l7::Backend> {
    refs.iter()
        .filter_map(|r| {
            let mut b = backend(ctx, out, src, &r.object(), r.weight.unwrap_or(1))?;
            b.filters = r
                .filters
                .iter()
                .filter_map(|f| filter(ctx, out, src, f))
                .collect();
            Some(b)
        })
        .collect()
}

/// Entries of one rule: one per valid match (one without matches when it has none).
fn rule_entries(
    src: &Source,
    index: usize,
    route: l7::Route,
    grpc: bool,
    had_matches: bool,
    matches: Vec<(l7::RouteMatch, u8, usize)>,
    out: &mut Out,
) -> Vec<Entry> {
    if !had_matches {
        let mut p = src.precedence(1, 1, &l7::RouteMatch::default());
        p.rule = index;
        return vec![Entry {
            precedence: p,
            ports: Ports::All,
            consumer: None,
            grpc,
            tcp: false,
            route,
        }];
    }
    if matches.is_empty() {
        out.warn(
            &src.object,
            format!("rule {index} has no usable match; rule ignored"),
        );
    }
    matches
        .into_iter()
        .enumerate()
        .map(|(j, (m, class, len))| {
            let mut p = src.precedence(class, len, &m);
            p.rule = index;
            p.matched = j;
            let mut r = route.clone();
            r.matches = vec![m];
            Entry {
                precedence: p,
                ports: Ports::All,
                consumer: None,
                grpc,
                tcp: false,
                route: r,
            }
        })
        .collect()
}

fn http_entries(
    ctx: &Context<'_>,
    out: &mut Out,
    src: &Source,
    rules: &[HttpRouteRule],
) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if rule.session_persistence.is_some() {
            out.warn(
                &src.object,
                format!("rule {i}: sessionPersistence is not supported; ignored"),
            );
        }
        let mut route = l7::Route {
            name: format!("{} {}/{}#{i}", src.kind, src.namespace, src.name),
            filters: rule
                .filters
                .iter()
                .filter_map(|f| filter(ctx, out, src, f))
                .collect(),
            backends: backends(ctx, out, src, &rule.backend_refs),
            ..Default::default()
        };
        let (request, backend_request) = match &rule.timeouts {
            Some(t) => (
                duration_field(out, &src.object, "timeouts.request", t.request.as_deref()),
                duration_field(
                    out,
                    &src.object,
                    "timeouts.backendRequest",
                    t.backend_request.as_deref(),
                ),
            ),
            None => (0, 0),
        };
        route.timeout_ms = request;
        match &rule.retry {
            Some(r) => {
                let mut codes = r.codes.clone();
                codes.sort_unstable();
                codes.dedup();
                route.retry = Some(l7::RetryPolicy {
                    attempts: r.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS),
                    per_try_timeout_ms: backend_request,
                    codes,
                    on_connect_failure: true,
                    backoff_ms: duration_field(
                        out,
                        &src.object,
                        "retry.backoff",
                        r.backoff.as_deref(),
                    ),
                });
            }
            // One attempt only: its timeout bounds the request.
            None if backend_request > 0 => {
                route.timeout_ms = if request == 0 {
                    backend_request
                } else {
                    request.min(backend_request)
                };
            }
            None => {}
        }
        let matches = rule
            .matches
            .iter()
            .filter_map(|m| http_match(out, src, m))
            .collect();
        entries.extend(rule_entries(
            src,
            i,
            route,
            false,
            !rule.matches.is_empty(),
            matches,
            out,
        ));
    }
    entries
}

fn grpc_entries(
    ctx: &Context<'_>,
    out: &mut Out,
    src: &Source,
    rules: &[GrpcRouteRule],
) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if rule.session_persistence.is_some() {
            out.warn(
                &src.object,
                format!("rule {i}: sessionPersistence is not supported; ignored"),
            );
        }
        let route = l7::Route {
            name: format!("{} {}/{}#{i}", src.kind, src.namespace, src.name),
            filters: rule
                .filters
                .iter()
                .filter_map(|f| filter(ctx, out, src, f))
                .collect(),
            backends: backends(ctx, out, src, &rule.backend_refs),
            ..Default::default()
        };
        let matches = rule
            .matches
            .iter()
            .filter_map(|m| grpc_match(out, src, m))
            .collect();
        entries.extend(rule_entries(
            src,
            i,
            route,
            true,
            !rule.matches.is_empty(),
            matches,
            out,
        ));
    }
    entries
}
