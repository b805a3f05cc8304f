//! Route selection for one service port: the first route (in the controller's precedence
//! order) with a match that accepts the request, and what its path match captured.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use ambient_proto::ambient::waypoint::v1 as pb;
use http::{HeaderMap, HeaderName, Method};

use super::backend::{BackendRef, Backends};
use super::fault::Fault;
use super::filters::Filters;
use super::matcher::{PathCapture, PathMatcher, StringMatcher};
use super::ratelimit::{Limiters, RateLimiter};
use super::retry::RetryPolicy;
use super::{ConfigError, Problem};

/// A header condition of a match.
#[derive(Clone, Debug)]
struct HeaderCondition {
    name: HeaderName,
    /// `None`: the header only has to be present.
    value: Option<StringMatcher>,
    invert: bool,
}

impl HeaderCondition {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let found = match (values.next(), values.next()) {
            (None, _) => false,
            (Some(only), None) => self
                .value
                .as_ref()
                .is_none_or(|m| m.matches(only.as_bytes())),
            (Some(first), Some(second)) => {
                // A repeated header is matched as its values joined by `,`, as Envoy does.
                let mut joined = first.as_bytes().to_vec();
                for v in std::iter::once(second).chain(values) {
                    joined.push(b',');
                    joined.extend_from_slice(v.as_bytes());
                }
                self.value.as_ref().is_none_or(|m| m.matches(&joined))
            }
        };
        found != self.invert
    }
}

/// A query parameter condition: the first occurrence of the name is matched, its value
/// percent-decoded.
#[derive(Clone, Debug)]
struct QueryCondition {
    name: Box<str>,
    value: Option<StringMatcher>,
}

fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    if !s.contains('%') {
        return Cow::Borrowed(s.as_bytes());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

impl QueryCondition {
    fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else { return false };
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if *percent_decode(name) == *self.name.as_bytes() {
                return self
                    .value
                    .as_ref()
                    .is_none_or(|m| m.matches(&percent_decode(value)));
            }
        }
        false
    }
}

/// One `RouteMatch`: every condition set must hold.
#[derive(Clone, Debug)]
pub(super) struct Match {
    path: PathMatcher,
    method: Option<Method>,
    headers: Box<[HeaderCondition]>,
    query: Box<[QueryCondition]>,
}

impl Match {
    pub(super) fn compile(m: &pb::RouteMatch) -> Result<Self, Problem> {
        let path = match &m.path {
            Some(p) => PathMatcher::compile(p)?,
            None => PathMatcher::any(),
        };
        let method = match m.method.as_str() {
            "" => None,
            s => {
                Some(Method::from_bytes(s.as_bytes()).map_err(|_| Problem::Method(s.to_string()))?)
            }
        };
        let headers = m
            .headers
            .iter()
            .map(|h| {
                Ok(HeaderCondition {
                    name: HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| Problem::HeaderName(h.name.clone()))?,
                    value: h.value.as_ref().map(StringMatcher::compile).transpose()?,
                    invert: h.invert,
                })
            })
            .collect::<Result<_, Problem>>()?;
        let query = m
            .query_params
            .iter()
            .map(|q| {
                Ok(QueryCondition {
                    name: q.name.as_str().into(),
                    value: q.value.as_ref().map(StringMatcher::compile).transpose()?,
                })
            })
            .collect::<Result<_, Problem>>()?;
        Ok(Match {
            path,
            method,
            headers,
            query,
        })
    }

    pub(super) fn matches<'s>(&'s self, req: &http::request::Parts) -> Option<PathCapture<'s>> {
        if self.method.as_ref().is_some_and(|m| *m != req.method) {
            return None;
        }
        let capture = self.path.matches(req.uri.path())?;
        if !self.headers.iter().all(|h| h.matches(&req.headers)) {
            return None;
        }
        let query = req.uri.query();
        if !self.query.iter().all(|q| q.matches(query)) {
            return None;
        }
        Some(capture)
    }
}

/// A compiled route: how to recognise its requests and what to do with them.
#[derive(Clone, Debug)]
pub struct Route {
    /// Where it came from (`HTTPRoute bookinfo/reviews#0`), for logs, metrics and traces.
    pub name: Arc<str>,
    /// `None`: every request matches (no matches configured).
    matches: Option<Box<[Match]>>,
    /// Route-level filters, applied before the chosen backend's.
    pub filters: Filters,
    pub backends: Backends,
    /// Whole-request timeout.
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<Fault>,
    /// LocalRateLimitPolicies attached to this route rule.
    pub rate_limits: Box<[Arc<RateLimiter>]>,
    invalid: bool,
}

impl Route {
    /// A route whose configuration could not be fully compiled: it still takes its requests
    /// (so they do not fall through to a route meant for others) and the proxy answers them
    /// with 500, as Gateway API requires for filters that cannot be applied.
    pub fn is_invalid(&self) -> bool {
        self.invalid
    }

    fn default_to(target: BackendRef) -> Self {
        Route {
            name: "default".into(),
            matches: None,
            filters: Filters::default(),
            backends: Backends::single(target),
            timeout: None,
            retry: None,
            fault: None,
            rate_limits: Box::default(),
            invalid: false,
        }
    }

    fn compile(
        r: &pb::Route,
        origin: &str,
        limits_at: &str,
        limiters: &mut Limiters,
        errors: &mut Vec<ConfigError>,
    ) -> Self {
        let mut problems = Vec::new();
        let mut invalid = false;
        let mut fail = |p: Problem, problems: &mut Vec<Problem>| {
            invalid = true;
            problems.push(p);
        };

        // A match that cannot be compiled never matches; the route's other matches still do.
        // A route all of whose matches are broken matches nothing (not everything).
        let matches = if r.matches.is_empty() {
            None
        } else {
            Some(
                r.matches
                    .iter()
                    .filter_map(|m| Match::compile(m).map_err(|p| problems.push(p)).ok())
                    .collect::<Box<[Match]>>(),
            )
        };

        let (filters, filter_problems) = Filters::compile(&r.filters);
        for p in filter_problems {
            fail(p, &mut problems);
        }
        let (backends, backend_problems) = Backends::compile(&r.backends);
        problems.extend(backend_problems);

        // Gateway API: ReplacePrefixMatch is only compatible with path prefix matches (a
        // match without a path is one on prefix `/`).
        let prefix_rewrite = filters.uses_prefix_rewrite()
            || backends.iter().any(|b| b.filters.uses_prefix_rewrite());
        let all_prefix = r.matches.iter().all(|m| match &m.path {
            None => true,
            Some(p) => matches!(p.kind, Some(pb::path_match::Kind::Prefix(_))),
        });
        if prefix_rewrite && !all_prefix {
            fail(Problem::PrefixRewriteWithoutPrefixMatch, &mut problems);
        }

        let retry = r.retry.as_ref().and_then(|p| {
            RetryPolicy::compile(p)
                .map_err(|e| fail(e, &mut problems))
                .ok()
                .flatten()
        });
        let fault = r.fault.as_ref().and_then(|f| {
            Fault::compile(f)
                .map_err(|e| fail(e, &mut problems))
                .ok()
                .flatten()
        });

        errors.extend(problems.into_iter().map(|problem| ConfigError {
            origin: origin.to_string(),
            problem,
        }));
        let rate_limits = limiters.attach(&format!("{limits_at} {origin}"), &r.rate_limits, errors);
        Route {
            name: origin.into(),
            matches,
            filters,
            backends,
            timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms)),
            retry,
            fault,
            rate_limits,
            invalid,
        }
    }

    fn matches<'s>(&'s self, req: &http::request::Parts) -> Option<PathCapture<'s>> {
        match &self.matches {
            // Gateway API: no match is a match on path prefix `/`.
            None => Some(PathCapture::Prefix("")),
            Some(ms) => ms.iter().find_map(|m| m.matches(req)),
        }
    }
}

/// The route a request takes, and what its path match captured (for `ReplacePrefixMatch`).
#[derive(Clone, Copy, Debug)]
pub struct Selected<'a> {
    pub route: &'a Route,
    pub capture: PathCapture<'a>,
}

/// The routes of one service port, compiled from its `PortConfig`.
#[derive(Clone, Debug)]
pub struct RouteTable {
    port: u16,
    protocol: pb::AppProtocol,
    routes: Box<[Route]>,
}

impl RouteTable {
    /// Compiles a port's routes. With no routes, the table holds one default route to
    /// `default_backend` (the service itself, same port). Problems are returned alongside:
    /// a broken match never matches; any other problem makes its route invalid (500).
    pub fn compile(port: &pb::PortConfig, default_backend: BackendRef) -> (Self, Vec<ConfigError>) {
        Self::compile_with(port, default_backend, &mut Limiters::default())
    }

    /// As [`RouteTable::compile`], taking route rules' rate limiters from `limiters` (which
    /// keeps their buckets across rebuilds).
    pub fn compile_with(
        port: &pb::PortConfig,
        default_backend: BackendRef,
        limiters: &mut Limiters,
    ) -> (Self, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let limits_at = format!("{}:{}", default_backend.service, port.port);
        let port_number = u16::try_from(port.port).unwrap_or_else(|_| {
            errors.push(ConfigError {
                origin: format!("port {}", port.port),
                problem: Problem::Port(port.port.to_string()),
            });
            0
        });
        let routes = if port.routes.is_empty() {
            Box::new([Route::default_to(default_backend)]) as Box<[Route]>
        } else {
            port.routes
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let origin = if r.name.is_empty() {
                        format!("port {} route #{i}", port.port)
                    } else {
                        r.name.clone()
                    };
                    Route::compile(r, &origin, &limits_at, limiters, &mut errors)
                })
                .collect()
        };
        let table = RouteTable {
            port: port_number,
            protocol: pb::AppProtocol::try_from(port.protocol).unwrap_or(pb::AppProtocol::Detect),
            routes,
        };
        (table, errors)
    }

    /// The first route accepting the request; `None`: no route (404, response flag `NR`).
    /// The request path should already be [`super::path::normalize`]d.
    pub fn select<'a>(&'a self, req: &http::request::Parts) -> Option<Selected<'a>> {
        self.routes.iter().find_map(|route| {
            route
                .matches(req)
                .map(|capture| Selected { route, capture })
        })
    }

    /// The service port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How the port is spoken (`DETECT`: [`super::protocol::detect`]).
    pub fn protocol(&self) -> pb::AppProtocol {
        self.protocol
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::path_match::Kind as PathKind;
    use pb::string_match::Kind as StringKind;

    fn svc(name: &str) -> BackendRef {
        BackendRef {
            service: name.into(),
            port: 9080,
        }
    }

    fn backend(name: &str) -> pb::Backend {
        pb::Backend {
            service: name.into(),
            port: 9080,
            weight: 1,
            filters: vec![],
        }
    }

    fn route(name: &str, matches: Vec<pb::RouteMatch>, to: &str) -> pb::Route {
        pb::Route {
            name: name.into(),
            matches,
            backends: vec![backend(to)],
            ..Default::default()
        }
    }

    fn path(kind: PathKind) -> pb::RouteMatch {
        pb::RouteMatch {
            path: Some(pb::PathMatch { kind: Some(kind) }),
            ..Default::default()
        }
    }

    fn table(routes: Vec<pb::Route>) -> (RouteTable, Vec<ConfigError>) {
        RouteTable::compile(
            &pb::PortConfig {
                port: 9080,
                protocol: pb::AppProtocol::Http1 as i32,
                routes,
                consumer_routes: Vec::new(),
            },
            svc("ns/self"),
        )
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn selected(t: &RouteTable, r: &http::request::Parts) -> Option<String> {
        t.select(r).map(|s| s.route.name.to_string())
    }

    #[test]
    fn empty_routes_default_to_the_service() {
        let (t, errors) = table(vec![]);
        assert!(errors.is_empty());
        let s = t.select(&req("GET", "/anything", &[])).unwrap();
        let b = s.route.backends.choose(&mut rand::rng()).unwrap();
        assert_eq!(b.target, svc("ns/self"));
        assert_eq!(t.protocol(), pb::AppProtocol::Http1);
    }

    #[test]
    fn first_matching_route_wins_with_prefix_capture() {
        let (t, errors) = table(vec![
            route("exact", vec![path(PathKind::Exact("/api".into()))], "ns/a"),
            route(
                "prefix",
                vec![path(PathKind::Prefix("/api/".into()))],
                "ns/b",
            ),
            route("catch-all", vec![], "ns/c"),
        ]);
        assert!(errors.is_empty());
        assert_eq!(selected(&t, &req("GET", "/api", &[])).unwrap(), "exact");
        let s = t.select(&req("GET", "/api/v1?x=1", &[])).unwrap();
        assert_eq!(&*s.route.name, "prefix");
        assert_eq!(s.capture, PathCapture::Prefix("/api"));
        assert_eq!(
            selected(&t, &req("GET", "/apix", &[])).unwrap(),
            "catch-all"
        );
        let s = t.select(&req("GET", "/apix", &[])).unwrap();
        assert_eq!(s.capture, PathCapture::Prefix(""));
    }

    #[test]
    fn method_headers_query_are_anded_matches_ored() {
        let m = pb::RouteMatch {
            path: None,
            method: "POST".into(),
            headers: vec![
                pb::HeaderMatch {
                    name: "X-Version".into(),
                    value: Some(pb::StringMatch {
                        kind: Some(StringKind::Exact("v2".into())),
                    }),
                    invert: false,
                },
                pb::HeaderMatch {
                    name: "x-debug".into(),
                    value: None,
                    invert: true,
                },
            ],
            query_params: vec![pb::QueryMatch {
                name: "user".into(),
                value: Some(pb::StringMatch {
                    kind: Some(StringKind::Regex("j.*n".into())),
                }),
            }],
        };
        let other = path(PathKind::Exact("/other".into()));
        let (t, errors) = table(vec![route("r", vec![m, other], "ns/a")]);
        assert!(errors.is_empty(), "{errors:?}");
        let hit = req("POST", "/x?a=1&user=jason", &[("x-version", "v2")]);
        assert!(t.select(&hit).is_some());
        // Header names are case-insensitive; values are not.
        assert!(
            t.select(&req("POST", "/x?user=jason", &[("X-VERSION", "V2")]))
                .is_none()
        );
        assert!(
            t.select(&req("GET", "/x?user=jason", &[("x-version", "v2")]))
                .is_none()
        );
        assert!(
            t.select(&req("POST", "/x?user=bob", &[("x-version", "v2")]))
                .is_none()
        );
        assert!(
            t.select(&req("POST", "/x", &[("x-version", "v2")]))
                .is_none()
        );
        // Inverted: present → no match.
        assert!(
            t.select(&req(
                "POST",
                "/x?user=jason",
                &[("x-version", "v2"), ("x-debug", "1")]
            ))
            .is_none()
        );
        // Percent-decoded query value.
        assert!(
            t.select(&req("POST", "/x?user=j%61son", &[("x-version", "v2")]))
                .is_some()
        );
        // The second match (OR).
        assert!(t.select(&req("GET", "/other", &[])).is_some());
    }

    #[test]
    fn inverted_header_match_and_repeated_headers() {
        let m = pb::RouteMatch {
            headers: vec![pb::HeaderMatch {
                name: "x-env".into(),
                value: Some(pb::StringMatch {
                    kind: Some(StringKind::Exact("prod".into())),
                }),
                invert: true,
            }],
            ..Default::default()
        };
        let (t, _) = table(vec![route("not-prod", vec![m], "ns/a")]);
        assert!(t.select(&req("GET", "/", &[])).is_some());
        assert!(t.select(&req("GET", "/", &[("x-env", "dev")])).is_some());
        assert!(t.select(&req("GET", "/", &[("x-env", "prod")])).is_none());
        // Repeated: matched as `prod,dev`.
        assert!(
            t.select(&req("GET", "/", &[("x-env", "prod"), ("x-env", "dev")]))
                .is_some()
        );
    }

    #[test]
    fn bad_regex_drops_that_match_only() {
        let bad = path(PathKind::Regex("(".into()));
        let good = path(PathKind::Exact("/ok".into()));
        let (t, errors) = table(vec![
            route("mixed", vec![bad.clone(), good], "ns/a"),
            route("all-bad", vec![bad], "ns/b"),
            route("other", vec![path(PathKind::Prefix("/".into()))], "ns/c"),
        ]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].origin, "mixed");
        assert!(matches!(errors[0].problem, Problem::Regex { .. }));
        assert!(errors[0].to_string().starts_with("mixed: invalid regex"));
        assert_eq!(selected(&t, &req("GET", "/ok", &[])).unwrap(), "mixed");
        // A route whose only match is broken matches nothing (not everything).
        assert_eq!(selected(&t, &req("GET", "/else", &[])).unwrap(), "other");
        assert!(!t.routes()[0].is_invalid());
    }

    #[test]
    fn bad_filter_makes_route_invalid_not_skipped() {
        let mut r = route("broken", vec![path(PathKind::Prefix("/b".into()))], "ns/a");
        r.filters.push(pb::Filter { kind: None });
        let (t, errors) = table(vec![r, route("fallback", vec![], "ns/c")]);
        assert_eq!(errors.len(), 1);
        let s = t.select(&req("GET", "/b/x", &[])).unwrap();
        assert_eq!(&*s.route.name, "broken");
        assert!(s.route.is_invalid());
    }

    #[test]
    fn prefix_rewrite_requires_prefix_matches() {
        let rewrite = pb::Filter {
            kind: Some(pb::filter::Kind::Rewrite(pb::Rewrite {
                hostname: String::new(),
                path: Some(pb::PathModifier {
                    kind: Some(pb::path_modifier::Kind::ReplacePrefixMatch("/new".into())),
                }),
            })),
        };
        let mut r = route("exact", vec![path(PathKind::Exact("/x".into()))], "ns/a");
        r.filters.push(rewrite.clone());
        let (t, errors) = table(vec![r]);
        assert_eq!(errors[0].problem, Problem::PrefixRewriteWithoutPrefixMatch);
        assert!(t.routes()[0].is_invalid());

        let mut r = route(
            "prefix",
            vec![
                path(PathKind::Prefix("/x".into())),
                pb::RouteMatch::default(),
            ],
            "ns/a",
        );
        r.filters.push(rewrite);
        let (t, errors) = table(vec![r]);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!t.routes()[0].is_invalid());
    }

    #[test]
    fn timeout_retry_fault_compiled() {
        let mut r = route("r", vec![], "ns/a");
        r.timeout_ms = 1500;
        r.retry = Some(pb::RetryPolicy {
            attempts: 3,
            codes: vec![503],
            ..Default::default()
        });
        r.fault = Some(pb::Fault {
            delay: None,
            abort: Some(pb::FaultAbort {
                percent: 100.0,
                http_status: 42,
                grpc_status: 0,
            }),
        });
        let (t, errors) = table(vec![r]);
        let route = &t.routes()[0];
        assert_eq!(route.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(route.retry.as_ref().unwrap().attempts(), 3);
        assert_eq!(errors.len(), 1);
        assert!(route.fault.is_none() && route.is_invalid());
    }
}
