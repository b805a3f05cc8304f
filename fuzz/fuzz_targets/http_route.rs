//! HTTP route matching, filters and L7 authorization at the waypoint: arbitrary requests
//! against an arbitrary compiled service configuration.
//!
//! Input: a 2-byte little-endian length, that many bytes of `ServiceConfig` protobuf (its
//! ports' routes and its policies, compiled with `RouteTable::compile` and
//! `Policies::compile` as the waypoint does), then the bytes the requests are drawn from
//! (`arbitrary::Unstructured`), their method, path, query, host and headers often taken
//! from the configuration's own values so that routes match.
//!
//! Each request is handled as the pipeline does: path normalized, authorized, a route
//! selected, redirect or request filters applied, a backend drawn and its filters applied,
//! response filters, fault and retry decisions. Checks: normalization is idempotent and
//! leaves no dot segment; selection is deterministic and takes the first route that matches
//! (the routes before it, compiled alone, match nothing); a prefix capture is a prefix of
//! the path; a rewritten path is absolute; a redirect's `Location` is an absolute URI; a
//! match-all DENY policy denies; retries stop at the configured attempts.

#![no_main]

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use ambient_proto::ambient::waypoint::v1 as pb;
use ambient_proto::identity::Identity;
use arbitrary::{Result, Unstructured};
use http::{HeaderMap, Uri};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use rand::SeedableRng;
use rand::rngs::StdRng;
use waypoint::l7::authz::{self, Policies, RequestAttributes};
use waypoint::l7::backend::BackendRef;
use waypoint::l7::matcher::PathCapture;
use waypoint::l7::retry::RetryDecision;
use waypoint::l7::route::RouteTable;
use waypoint::l7::{Outcome, path};

/// Requests per input.
const REQUESTS: usize = 4;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let rest = &data[2..];
    let (config, requests) = rest.split_at(len.min(rest.len()));
    let Ok(config) = pb::ServiceConfig::decode(config) else {
        return;
    };
    let mut u = Unstructured::new(requests);
    let _ = run(&config, &mut u);
});

/// Values the configuration names, to build requests that match it.
#[derive(Default)]
struct Words {
    paths: Vec<String>,
    methods: Vec<String>,
    header_names: Vec<String>,
    values: Vec<String>,
    query_names: Vec<String>,
    hosts: Vec<String>,
}

impl Words {
    fn of(config: &pb::ServiceConfig) -> Self {
        let mut w = Words {
            paths: vec!["/".into(), "/a/../b".into(), "/%2e%2e/admin".into()],
            methods: vec!["GET".into(), "POST".into()],
            header_names: vec!["x-version".into()],
            values: vec!["v1".into()],
            query_names: vec!["q".into()],
            hosts: vec![config.hostname.clone(), format!("{}:80", config.hostname)],
        };
        let string = |m: &pb::StringMatch| match &m.kind {
            Some(
                pb::string_match::Kind::Exact(s)
                | pb::string_match::Kind::Prefix(s)
                | pb::string_match::Kind::Regex(s),
            ) => Some(s.clone()),
            None => None,
        };
        for port in &config.ports {
            for route in &port.routes {
                for m in &route.matches {
                    if let Some(pb::PathMatch {
                        kind:
                            Some(
                                pb::path_match::Kind::Exact(p)
                                | pb::path_match::Kind::Prefix(p)
                                | pb::path_match::Kind::Regex(p),
                            ),
                    }) = &m.path
                    {
                        w.paths.push(p.clone());
                    }
                    if !m.method.is_empty() {
                        w.methods.push(m.method.clone());
                    }
                    for h in &m.headers {
                        w.header_names.push(h.name.clone());
                        w.values.extend(h.value.as_ref().and_then(string));
                    }
                    for q in &m.query_params {
                        w.query_names.push(q.name.clone());
                        w.values.extend(q.value.as_ref().and_then(string));
                    }
                }
            }
        }
        for policy in &config.policies {
            for rule in &policy.rules {
                for op in &rule.to {
                    w.hosts.extend(op.hosts.iter().cloned());
                    w.methods.extend(op.methods.iter().cloned());
                    w.paths.extend(op.paths.iter().map(|p| p.replace('*', "x")));
                }
                for c in &rule.when {
                    if let Some(name) = c
                        .key
                        .strip_prefix("request.headers[")
                        .and_then(|k| k.strip_suffix(']'))
                    {
                        w.header_names.push(name.into());
                        w.values.extend(c.values.iter().cloned());
                    }
                }
            }
        }
        w
    }
}

/// A word of `pool`, a word with something after it, a cut word, or anything.
fn word(u: &mut Unstructured<'_>, pool: &[String]) -> Result<String> {
    let choice = u.int_in_range(0..=3u8)?;
    if pool.is_empty() || choice == 3 {
        return u.arbitrary();
    }
    let w = u.choose(pool)?.clone();
    Ok(match choice {
        0 => w,
        1 => w + &u.arbitrary::<String>()?,
        _ => {
            let cut = u.int_in_range(0..=w.len())?;
            w.get(..cut).unwrap_or(&w).to_string()
        }
    })
}

fn request(u: &mut Unstructured<'_>, words: &Words) -> Result<Option<http::request::Parts>> {
    let method = word(u, &words.methods)?;
    let mut target = word(u, &words.paths)?;
    if u.arbitrary()? {
        target.push('?');
        target.push_str(&word(u, &words.query_names)?);
        target.push('=');
        target.push_str(&word(u, &words.values)?);
    }
    let host = word(u, &words.hosts)?;
    if u.ratio(1, 4)? {
        target = format!("http://{host}{target}");
    }
    let mut b = http::Request::builder().method(method.as_str()).uri(target);
    if u.arbitrary()? {
        b = b.header("host", host);
    }
    for _ in 0..u.int_in_range(0..=4u8)? {
        b = b.header(word(u, &words.header_names)?, word(u, &words.values)?);
    }
    Ok(b.body(()).ok().map(|r| r.into_parts().0))
}

fn run(config: &pb::ServiceConfig, u: &mut Unstructured<'_>) -> Result<()> {
    let key = format!("{}/{}", config.namespace, config.hostname);
    let tables: Vec<(RouteTable, &pb::PortConfig)> = config
        .ports
        .iter()
        .map(|p| {
            let port = u16::try_from(p.port).unwrap_or(80);
            let default = BackendRef {
                service: key.as_str().into(),
                port,
            };
            (RouteTable::compile(p, default).0, p)
        })
        .collect();
    let (policies, _) = Policies::compile(&config.policies);
    let deny_all = config
        .policies
        .iter()
        .any(|p| p.match_all && p.action == pb::Action::Deny as i32);
    let words = Words::of(config);
    let identity = Identity::new("cluster.local", "shop", "web").expect("valid");
    let mut rng = StdRng::seed_from_u64(u.arbitrary()?);
    let no_gateway = Policies::default();

    for _ in 0..REQUESTS {
        let Some(mut parts) = request(u, &words)? else {
            continue;
        };
        normalize(&mut parts.uri);
        let port = u.arbitrary::<u16>()?;
        let dst = SocketAddr::new(IpAddr::from([10, 96, 0, 10]), port);
        let peer = if u.arbitrary()? {
            Some(&identity)
        } else {
            None
        };
        let attrs = RequestAttributes::http(peer, IpAddr::from([10, 244, 1, 10]), dst, &parts);
        let verdict = authz::evaluate(&no_gateway, &policies, &attrs);
        assert_eq!(verdict, authz::evaluate(&no_gateway, &policies, &attrs));
        if deny_all {
            assert!(
                !verdict.allowed,
                "a match-all DENY policy let a request through"
            );
        }
        for (table, port_config) in &tables {
            route(table, port_config, &parts, &mut rng);
        }
    }
    Ok(())
}

/// What the pipeline does to a request's path before anything looks at it (a copy of
/// `waypoint::pipeline::normalize_path`), checked on the way.
fn normalize(uri: &mut Uri) {
    let normalized = path::normalize(uri.path());
    assert_eq!(
        path::normalize(&normalized),
        normalized,
        "normalizing twice changed {:?}",
        uri.path()
    );
    if normalized.starts_with('/') {
        for segment in normalized.split('/') {
            let s = segment.to_ascii_lowercase().replace("%2e", ".");
            assert!(s != "." && s != "..", "dot segment left in {normalized:?}");
        }
    }
    if let Cow::Owned(p) = normalized {
        let with_query = match uri.query() {
            Some(q) => format!("{p}?{q}"),
            None => p,
        };
        let mut parts = std::mem::take(uri).into_parts();
        parts.path_and_query = with_query.parse().ok();
        *uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    }
}

fn route(
    table: &RouteTable,
    config: &pb::PortConfig,
    parts: &http::request::Parts,
    rng: &mut StdRng,
) {
    let Some(selected) = table.select(parts) else {
        return;
    };
    let again = table.select(parts).expect("selection is deterministic");
    assert!(std::ptr::eq(selected.route, again.route));
    assert_eq!(selected.capture, again.capture);

    // The first route that matches: the routes before it, on their own, match nothing.
    let index = table
        .routes()
        .iter()
        .position(|r| std::ptr::eq(r, selected.route))
        .expect("the selected route is one of the table's");
    if index > 0 && index <= config.routes.len() {
        let before = pb::PortConfig {
            routes: config.routes[..index].to_vec(),
            ..config.clone()
        };
        let default = BackendRef {
            service: "none/none".into(),
            port: 1,
        };
        let (earlier, _) = RouteTable::compile(&before, default);
        assert!(
            earlier.select(parts).is_none(),
            "route #{index} selected, but an earlier route matches"
        );
    }
    if let PathCapture::Prefix(prefix) = selected.capture {
        assert!(
            parts.uri.path().starts_with(prefix),
            "captured {prefix:?} is not a prefix of {:?}",
            parts.uri.path()
        );
    }
    let route = selected.route;
    if route.is_invalid() {
        return;
    }

    if let Some(redirect) = route
        .filters
        .redirect(parts, selected.capture, table.port())
    {
        if let Ok(response) = redirect {
            assert!(response.status().is_redirection());
            let location = response.headers()["location"]
                .to_str()
                .expect("Location is text");
            let uri: Uri = location
                .parse()
                .unwrap_or_else(|e| panic!("Location {location:?} is not a URI: {e}"));
            assert!(
                uri.scheme().is_some() && uri.authority().is_some(),
                "Location {location:?} is not absolute"
            );
            let mut headers = response.headers().clone();
            route.filters.apply_response(&mut headers);
        }
        return;
    }
    let mut forwarded = parts.clone();
    if route
        .filters
        .apply_request(&mut forwarded, selected.capture)
        .is_err()
    {
        return;
    }
    if parts.uri.path().starts_with('/') {
        assert!(
            forwarded.uri.path().starts_with('/'),
            "rewritten to a relative path {:?}",
            forwarded.uri.path()
        );
    }
    if let Some(backend) = route.backends.choose(rng) {
        let _ = backend
            .filters
            .apply_request(&mut forwarded, selected.capture);
        let mut response = HeaderMap::new();
        backend.filters.apply_response(&mut response);
        route.filters.apply_response(&mut response);
    }
    for mirror in route.filters.mirrors() {
        let _ = mirror.sampled(rng);
    }
    if let Some(fault) = &route.fault {
        let _ = fault.decide(rng);
    }
    if let Some(retry) = &route.retry {
        let attempts = retry.attempts();
        if attempts <= 16 {
            let mut state = retry.start();
            let mut retries = 0;
            loop {
                match state.next(Outcome::ConnectFailure, rng) {
                    RetryDecision::Retry { .. } => retries += 1,
                    RetryDecision::Done => break,
                    RetryDecision::Exhausted => {
                        assert_eq!(retries, attempts, "stopped before the configured attempts");
                        break;
                    }
                }
                assert!(retries <= attempts, "retried past the configured attempts");
            }
        }
    }
}
