//! Istio `VirtualService` `http` rules → routes of the Services its `hosts` name.
//!
//! Rules keep their order (Istio evaluates them first to last); the VirtualServices of one
//! host are taken oldest first (`creationTimestamp`), then by `namespace/name`. They come
//! after the host's Gateway API routes.
//!
//! - `uri.prefix` is a plain string prefix in Istio (`/rating` matches `/ratings`), not the
//!   segment-wise prefix of [`l7::PathMatch`]: it is sent as the regular expression
//!   `<escaped prefix>.*` (the waypoint anchors regular expressions to the whole path). With a
//!   `rewrite.uri`, the prefix must be known to the waypoint to be replaced, so such a match is
//!   sent as a (segment-wise) prefix instead; see docs/decisions.md.
//! - `retries.retryOn` maps to codes and connection failures as [`parse_retry_on`] says.

use std::collections::BTreeMap;

use ambient_proto::ambient::waypoint::v1 as l7;

use super::{
    Out, ServiceKey, check_regex, duration_field, parse_host, resolve_host, service_backend,
};
use crate::index::Context;
use crate::model::networking::{
    Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRetry, HttpRoute, Percent,
    StringMatch, VirtualService,
};

/// Istio's default `retryOn` when `retries` is given without it
/// (`connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with 503).
pub const DEFAULT_RETRY_CODES: [u32; 1] = [503];
/// Istio's redirect status when `redirectCode` is unset.
pub const DEFAULT_REDIRECT_STATUS: u32 = 301;

/// One `http[]` rule (or one match of it, when a rewrite depends on how it matched).
#[derive(Clone, Debug)]
pub struct Rule {
    pub route: l7::Route,
    /// For each of `route.matches`, the port it requires (`match[].port`).
    pub match_ports: Vec<Option<u32>>,
}

impl Rule {
    /// The route as it applies to `port`: only the matches that allow that port; `None` when
    /// the rule has matches and none does.
    pub fn for_port(&self, port: u32) -> Option<l7::Route> {
        if self.route.matches.is_empty() {
            return Some(self.route.clone());
        }
        let matches: Vec<l7::RouteMatch> = self
            .route
            .matches
            .iter()
            .zip(&self.match_ports)
            .filter(|(_, p)| p.is_none_or(|p| p == port))
            .map(|(m, _)| m.clone())
            .collect();
        if matches.is_empty() {
            return None;
        }
        let mut route = self.route.clone();
        route.matches = matches;
        Some(route)
    }

    pub fn names_port(&self, port: u32) -> bool {
        self.match_ports.contains(&Some(port))
    }
}

/// Every rule, by the Service it applies to, in order.
pub fn collect(ctx: &Context<'_>, out: &mut Out) -> BTreeMap<ServiceKey, Vec<Rule>> {
    let mut all: Vec<&VirtualService> = ctx.state.virtual_services().collect();
    all.sort_by_key(|v| {
        let m = &v.metadata;
        (
            m.creation_timestamp.is_none(),
            m.creation_timestamp.clone(),
            m.namespace.clone(),
            m.name.clone(),
        )
    });
    let mut by_service: BTreeMap<ServiceKey, Vec<Rule>> = BTreeMap::new();
    for vs in all {
        let ns = vs
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = vs.metadata.name.clone().unwrap_or_default();
        let object = format!("VirtualService/{ns}/{name}");
        let spec = &vs.spec;
        if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh") {
            out.warn(
                &object,
                format!(
                    "bound to gateways {:?} only (not `mesh`): there is no ingress gateway here; ignored",
                    spec.gateways
                ),
            );
            continue;
        }
        if !spec.tcp.is_empty() {
            out.warn(&object, "tcp routes are not supported; ignored");
        }
        if !spec.tls.is_empty() {
            out.warn(&object, "tls routes are not supported; ignored");
        }
        if !spec.export_to.is_empty() && spec.export_to.iter().any(|e| e != "*") {
            out.warn(&object, "exportTo is not supported; applied mesh-wide");
        }
        if spec.hosts.is_empty() {
            out.warn(&object, "has no hosts; ignored");
            continue;
        }
        let mut services: Vec<ServiceKey> = Vec::new();
        for h in &spec.hosts {
            match resolve_host(ctx, h, &ns) {
                Ok(k) if !services.contains(&k) => services.push(k),
                Ok(_) => {}
                Err(e) => out.warn(&object, format!("{e}; host ignored")),
            }
        }
        if services.is_empty() {
            continue;
        }
        let t = Translator {
            ctx,
            namespace: &ns,
            name: &name,
            object: &object,
        };
        let rules = t.rules(out, &spec.http);
        for k in services {
            out.referenced.insert(k.clone());
            by_service
                .entry(k)
                .or_default()
                .extend(rules.iter().cloned());
        }
    }
    by_service
}

struct Translator<'t, 'a> {
    ctx: &'t Context<'a>,
    namespace: &'t str,
    name: &'t str,
    object: &'t str,
}

/// A match, the port it requires and, for `uri.prefix` matches, the prefix.
struct Match {
    route_match: l7::RouteMatch,
    port: Option<u32>,
    prefix: Option<String>,
}

impl Translator<'_, '_> {
    fn warn(&self, out: &mut Out, message: impl Into<String>) {
        out.warn(self.object, message);
    }

    fn rules(&self, out: &mut Out, http: &[HttpRoute]) -> Vec<Rule> {
        let mut rules = Vec::new();
        for (i, h) in http.iter().enumerate() {
            rules.extend(self.rule(out, i, h));
        }
        rules
    }

    fn rule(&self, out: &mut Out, i: usize, h: &HttpRoute) -> Vec<Rule> {
        if h.delegate.is_some() {
            self.warn(
                out,
                format!("http[{i}]: delegate is not supported; rule ignored"),
            );
            return Vec::new();
        }
        let rewrite_uri = h.rewrite.as_ref().and_then(|r| r.uri.clone());
        let mut matches = Vec::new();
        for (j, m) in h.matches.iter().enumerate() {
            if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
                continue; // for gateways only
            }
            if let Some(m) = self.route_match(out, i, j, m, rewrite_uri.is_some()) {
                matches.push(m);
            }
        }
        if !h.matches.is_empty() && matches.is_empty() {
            self.warn(
                out,
                format!("http[{i}] has no match that applies to mesh traffic; rule ignored"),
            );
            return Vec::new();
        }

        let mut route = l7::Route {
            name: format!("VirtualService {}/{}#{i}", self.namespace, self.name),
            ..Default::default()
        };
        let all_unweighted = h.route.iter().all(|d| d.weight.is_none());
        for d in &h.route {
            let weight = match d.weight {
                Some(w) => w.max(0) as u32,
                None if all_unweighted => 1,
                None => 0,
            };
            if let Some(mut b) = self.destination(out, &d.destination, weight) {
                b.filters = d.headers.as_ref().map(header_filters).unwrap_or_default();
                route.backends.push(b);
            }
        }
        if let Some(headers) = &h.headers {
            route.filters.extend(header_filters(headers));
        }
        if let Some(r) = &h.redirect {
            if r.derive_port.as_deref() == Some("FROM_PROTOCOL_DEFAULT") {
                self.warn(
                    out,
                    format!("http[{i}]: redirect.derivePort FROM_PROTOCOL_DEFAULT is not supported; the request's port is kept"),
                );
            }
            route.filters.push(l7::Filter {
                kind: Some(l7::filter::Kind::Redirect(l7::Redirect {
                    scheme: r.scheme.clone().unwrap_or_default(),
                    hostname: r.authority.clone().unwrap_or_default(),
                    path: r.uri.clone().map(|u| l7::PathModifier {
                        kind: Some(l7::path_modifier::Kind::ReplaceFullPath(u)),
                    }),
                    port: r.port.unwrap_or(0),
                    status_code: r.redirect_code.unwrap_or(DEFAULT_REDIRECT_STATUS),
                })),
            });
        }
        if h.direct_response.is_some() {
            self.warn(
                out,
                format!("http[{i}]: directResponse is not supported; the rule answers 500"),
            );
            route.backends.clear();
        } else if h.route.is_empty() && h.redirect.is_none() {
            self.warn(
                out,
                format!("http[{i}] has neither route nor redirect; it answers 500"),
            );
        }
        route.timeout_ms = duration_field(
            out,
            self.object,
            &format!("http[{i}].timeout"),
            h.timeout.as_deref(),
        );
        if let Some(r) = &h.retries {
            route.retry = Some(self.retry(out, i, r));
        }
        if let Some(f) = &h.fault {
            route.fault = self.fault(out, i, f);
        }
        // Mirrors come last, so they copy the request as rewritten.
        let mut mirrors = Vec::new();
        if let Some(m) = &h.mirror {
            let percent = percent(h.mirror_percentage.as_ref(), h.mirror_percent);
            if let Some(b) = self.destination(out, m, 1) {
                mirrors.push(mirror(b, percent));
            }
        }
        for m in &h.mirrors {
            let percent = percent(m.percentage.as_ref(), None);
            if let Some(b) = self.destination(out, &m.destination, 1) {
                mirrors.push(mirror(b, percent));
            }
        }
        if h.cors_policy.is_some() {
            self.warn(
                out,
                format!("http[{i}]: corsPolicy is not supported; ignored"),
            );
        }
        let mut rules = self.rewritten(out, i, h, route, matches);
        for r in &mut rules {
            r.route.filters.extend(mirrors.iter().cloned());
        }
        rules
    }

    /// The rule with its rewrite, if any: a prefix match has its prefix replaced, any other
    /// its whole path, so a rule whose matches differ becomes one route per match (in the same
    /// order, so the same first match wins).
    fn rewritten(
        &self,
        out: &mut Out,
        i: usize,
        h: &HttpRoute,
        mut route: l7::Route,
        matches: Vec<Match>,
    ) -> Vec<Rule> {
        let rewrite_uri = h.rewrite.as_ref().and_then(|r| r.uri.clone());
        let Some(rewrite) = &h.rewrite else {
            return vec![Rule {
                match_ports: matches.iter().map(|m| m.port).collect(),
                route: with_matches(route, matches),
            }];
        };
        if rewrite.uri_regex_rewrite.is_some() {
            self.warn(
                out,
                format!("http[{i}]: rewrite.uriRegexRewrite is not supported; ignored"),
            );
        }
        let filter = |path: Option<l7::path_modifier::Kind>| l7::Filter {
            kind: Some(l7::filter::Kind::Rewrite(l7::Rewrite {
                hostname: rewrite.authority.clone().unwrap_or_default(),
                path: path.map(|k| l7::PathModifier { kind: Some(k) }),
            })),
        };
        let Some(uri) = rewrite_uri else {
            route.filters.push(filter(None));
            return vec![Rule {
                match_ports: matches.iter().map(|m| m.port).collect(),
                route: with_matches(route, matches),
            }];
        };
        use l7::path_modifier::Kind::{ReplaceFullPath, ReplacePrefixMatch};
        if matches.is_empty() {
            // Istio matches everything as the prefix `/`.
            let mut r = route;
            r.filters.push(filter(Some(ReplacePrefixMatch(uri))));
            r.matches = vec![l7::RouteMatch {
                path: Some(l7::PathMatch {
                    kind: Some(l7::path_match::Kind::Prefix("/".into())),
                }),
                ..Default::default()
            }];
            return vec![Rule {
                route: r,
                match_ports: vec![None],
            }];
        }
        matches
            .into_iter()
            .map(|m| {
                let mut r = route.clone();
                let path = if m.prefix.is_some() {
                    ReplacePrefixMatch(uri.clone())
                } else {
                    ReplaceFullPath(uri.clone())
                };
                r.filters.push(filter(Some(path)));
                let port = m.port;
                Rule {
                    route: with_matches(r, vec![m]),
                    match_ports: vec![port],
                }
            })
            .collect()
    }

    fn string_match(&self, out: &mut Out, m: &StringMatch) -> Option<l7::StringMatch> {
        use l7::string_match::Kind;
        let kind = match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), _, _) => Kind::Exact(e.clone()),
            (None, Some(p), _) => Kind::Prefix(p.clone()),
            (None, None, Some(r)) => {
                if !check_regex(out, self.object, r) {
                    return None;
                }
                Kind::Regex(r.clone())
            }
            // `{}`: present, with any value.
            (None, None, None) => Kind::Regex(".*".into()),
        };
        Some(l7::StringMatch { kind: Some(kind) })
    }

    fn route_match(
        &self,
        out: &mut Out,
        i: usize,
        j: usize,
        m: &HttpMatchRequest,
        rewrites_uri: bool,
    ) -> Option<Match> {
        use l7::path_match::Kind;
        let at = format!("http[{i}].match[{j}]");
        if !m.source_labels.is_empty() || m.source_namespace.is_some() {
            self.warn(
                out,
                format!("{at}: sourceLabels and sourceNamespace are not supported in waypoints; match ignored"),
            );
            return None;
        }
        if m.scheme.is_some() || m.authority.is_some() {
            self.warn(
                out,
                format!("{at}: scheme and authority matches are not supported; match ignored"),
            );
            return None;
        }
        let ci = m.ignore_uri_case.unwrap_or(false);
        let mut prefix = None;
        let path = match &m.uri {
            None => None,
            Some(u) => match (&u.exact, &u.prefix, &u.regex) {
                (Some(e), _, _) if ci => Some(Kind::Regex(format!("(?i){}", regex::escape(e)))),
                (Some(e), _, _) => Some(Kind::Exact(e.clone())),
                (None, Some(p), _) => {
                    prefix = Some(p.clone());
                    if ci && rewrites_uri {
                        self.warn(
                            out,
                            format!("{at}: ignoreUriCase with rewrite.uri is not supported; matched case-sensitively"),
                        );
                        Some(Kind::Prefix(p.clone()))
                    } else if ci {
                        Some(Kind::Regex(format!("(?i){}.*", regex::escape(p))))
                    } else if p == "/" || rewrites_uri {
                        Some(Kind::Prefix(p.clone()))
                    } else {
                        Some(Kind::Regex(format!("{}.*", regex::escape(p))))
                    }
                }
                (None, None, Some(r)) => {
                    if !check_regex(out, self.object, r) {
                        return None;
                    }
                    Some(Kind::Regex(if ci {
                        format!("(?i)(?:{r})")
                    } else {
                        r.clone()
                    }))
                }
                (None, None, None) => None,
            },
        };
        let method = match &m.method {
            None => String::new(),
            Some(StringMatch { exact: Some(e), .. }) => e.clone(),
            Some(_) => {
                self.warn(
                    out,
                    format!("{at}: only exact method matches are supported; match ignored"),
                );
                return None;
            }
        };
        let mut headers = Vec::new();
        for (name, v) in &m.headers {
            headers.push(l7::HeaderMatch {
                name: name.to_ascii_lowercase(),
                value: Some(self.string_match(out, v)?),
                invert: false,
            });
        }
        for (name, v) in &m.without_headers {
            headers.push(l7::HeaderMatch {
                name: name.to_ascii_lowercase(),
                value: Some(self.string_match(out, v)?),
                invert: true,
            });
        }
        let mut query_params = Vec::new();
        for (name, v) in &m.query_params {
            query_params.push(l7::QueryMatch {
                name: name.clone(),
                value: Some(self.string_match(out, v)?),
            });
        }
        Some(Match {
            route_match: l7::RouteMatch {
                path: path.map(|k| l7::PathMatch { kind: Some(k) }),
                headers,
                query_params,
                method,
            },
            port: m.port.filter(|p| *p != 0),
            prefix,
        })
    }

    /// A destination as a backend; `None` (reported) when its host is not a Service name.
    fn destination(&self, out: &mut Out, d: &Destination, weight: u32) -> Option<l7::Backend> {
        let (ns, name) = match parse_host(self.ctx, &d.host, self.namespace) {
            Ok(k) => k,
            Err(e) => {
                self.warn(out, format!("destination {e}; its share of requests fails"));
                return None;
            }
        };
        if let Some(subset) = &d.subset {
            self.warn(
                out,
                format!(
                    "destination {} subset {subset:?}: subsets are not supported; sent to the whole service",
                    d.host
                ),
            );
        }
        let port = d.port.as_ref().map(|p| p.number).unwrap_or(0);
        Some(service_backend(
            self.ctx,
            out,
            self.object,
            &ns,
            &name,
            port,
            weight,
        ))
    }

    fn retry(&self, out: &mut Out, i: usize, r: &HttpRetry) -> l7::RetryPolicy {
        let (codes, on_connect_failure) = match &r.retry_on {
            None => (DEFAULT_RETRY_CODES.to_vec(), true),
            Some(s) => parse_retry_on(out, self.object, &format!("http[{i}].retries.retryOn"), s),
        };
        l7::RetryPolicy {
            attempts: r.attempts.unwrap_or(0).max(0) as u32,
            per_try_timeout_ms: duration_field(
                out,
                self.object,
                &format!("http[{i}].retries.perTryTimeout"),
                r.per_try_timeout.as_deref(),
            ),
            codes,
            on_connect_failure,
            backoff_ms: duration_field(
                out,
                self.object,
                &format!("http[{i}].retries.backoff"),
                r.backoff.as_deref(),
            ),
        }
    }

    fn fault(
        &self,
        out: &mut Out,
        i: usize,
        f: &crate::model::networking::HttpFaultInjection,
    ) -> Option<l7::Fault> {
        let mut fault = l7::Fault::default();
        if let Some(d) = &f.delay {
            if d.exponential_delay.is_some() {
                self.warn(
                    out,
                    format!("http[{i}].fault.delay.exponentialDelay is not supported; ignored"),
                );
            }
            if d.fixed_delay.is_some() {
                fault.delay = Some(l7::FaultDelay {
                    percent: percent(d.percentage.as_ref(), d.percent),
                    delay_ms: duration_field(
                        out,
                        self.object,
                        &format!("http[{i}].fault.delay.fixedDelay"),
                        d.fixed_delay.as_deref(),
                    ),
                });
            }
        }
        if let Some(a) = &f.abort {
            if a.http2_error.is_some() {
                self.warn(
                    out,
                    format!("http[{i}].fault.abort.http2Error is not supported; ignored"),
                );
            }
            let grpc_status = match &a.grpc_status {
                None => None,
                Some(v) => {
                    match grpc_code(v) {
                        Some(0) => {
                            self.warn(
                            out,
                            format!("http[{i}].fault.abort.grpcStatus OK cannot be injected; ignored"),
                        );
                            None
                        }
                        Some(c) => Some(c),
                        None => {
                            self.warn(
                            out,
                            format!("http[{i}].fault.abort.grpcStatus {v} is not a gRPC status; ignored"),
                        );
                            None
                        }
                    }
                }
            };
            if a.http_status.is_some() || grpc_status.is_some() {
                fault.abort = Some(l7::FaultAbort {
                    percent: percent(a.percentage.as_ref(), None),
                    http_status: a.http_status.unwrap_or(0),
                    grpc_status: grpc_status.unwrap_or(0),
                });
            }
        }
        (fault.delay.is_some() || fault.abort.is_some()).then_some(fault)
    }
}

fn with_matches(mut route: l7::Route, matches: Vec<Match>) -> l7::Route {
    route.matches = matches.into_iter().map(|m| m.route_match).collect();
    route
}

/// `percentage.value`, else the deprecated integer field, else 100.
fn percent(p: Option<&Percent>, deprecated: Option<u32>) -> f64 {
    p.map(|p| p.value)
        .or(deprecated.map(f64::from))
        .unwrap_or(100.0)
        .clamp(0.0, 100.0)
}

fn mirror(backend: l7::Backend, percent: f64) -> l7::Filter {
    l7::Filter {
        kind: Some(l7::filter::Kind::Mirror(l7::Mirror {
            backend: Some(backend),
            percent,
        })),
    }
}

fn header_modifier(ops: &HeaderOperations) -> l7::HeaderModifier {
    let list = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| l7::Header {
                name: k.clone(),
                value: v.clone(),
            })
            .collect()
    };
    l7::HeaderModifier {
        set: list(&ops.set),
        add: list(&ops.add),
        remove: ops.remove.clone(),
    }
}

fn header_filters(h: &Headers) -> Vec<l7::Filter> {
    let mut filters = Vec::new();
    if let Some(r) = &h.request {
        filters.push(l7::Filter {
            kind: Some(l7::filter::Kind::RequestHeaders(header_modifier(r))),
        });
    }
    if let Some(r) = &h.response {
        filters.push(l7::Filter {
            kind: Some(l7::filter::Kind::ResponseHeaders(header_modifier(r))),
        });
    }
    filters
}

/// A gRPC status by name (`UNAVAILABLE`, as Istio writes it) or number.
pub fn grpc_code(v: &serde_json::Value) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    match v {
        serde_json::Value::Number(n) => n.as_u64().filter(|n| *n <= 16).map(|n| n as u32),
        serde_json::Value::String(s) => {
            if let Ok(n) = s.parse::<u32>() {
                return (n <= 16).then_some(n);
            }
            NAMES
                .iter()
                .position(|name| name.eq_ignore_ascii_case(s))
                .map(|i| i as u32)
        }
        _ => None,
    }
}

/// Istio's (Envoy's) `retryOn` as response codes and whether connection failures are
/// retried:
///
/// | condition | codes | connection failures |
/// |---|---|---|
/// | `5xx` | 500–599 | yes |
/// | `gateway-error` | 502, 503, 504 | yes |
/// | `connect-failure`, `reset`, `reset-before-request`, `refused-stream`, `http3-post-connect-failure` | – | yes |
/// | `retriable-4xx` | 409 | – |
/// | a number (e.g. `503`) | that code | – |
/// | `retriable-status-codes` | (the numbers listed) | – |
///
/// gRPC conditions (`cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`,
/// `unavailable`), `retriable-headers`, `envoy-ratelimited` and unknown words are reported
/// and ignored.
pub fn parse_retry_on(out: &mut Out, object: &str, field: &str, s: &str) -> (Vec<u32>, bool) {
    let mut codes = Vec::new();
    let mut connect = false;
    for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "5xx" => {
                codes.extend(500..=599);
                connect = true;
            }
            "gateway-error" => {
                codes.extend([502, 503, 504]);
                connect = true;
            }
            "connect-failure"
            | "reset"
            | "reset-before-request"
            | "refused-stream"
            | "http3-post-connect-failure" => connect = true,
            "retriable-4xx" => codes.push(409),
            "retriable-status-codes" => {}
            "cancelled" | "deadline-exceeded" | "internal" | "resource-exhausted"
            | "unavailable" => out.warn(
                object,
                format!("{field}: gRPC condition {word:?} is not supported; ignored"),
            ),
            w => match w.parse::<u32>() {
                Ok(code) if (100..=599).contains(&code) => codes.push(code),
                _ => out.warn(
                    object,
                    format!("{field}: retry condition {w:?} is not supported; ignored"),
                ),
            },
        }
    }
    codes.sort_unstable();
    codes.dedup();
    (codes, connect)
}
