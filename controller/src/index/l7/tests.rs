//! YAML in, `L7Resource` out.

use ambient_proto::ambient::waypoint::v1 as l7;
use l7::filter::Kind as F;
use l7::path_match::Kind as P;

use super::*;
use crate::index::Index;

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: bookinfo
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: bookinfo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.30
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.31
  selector: {app: reviews, version: v1}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.32
  selector: {app: reviews, version: v2}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.33
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: multi, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.34
  selector: {app: multi}
  ports:
  - {name: http-web, port: 80}
  - {name: grpc-api, port: 9090}
  - {name: tcp-db, port: 5432}
  - {name: metrics, port: 15090, appProtocol: HTTP2}
  - {name: other, port: 7000}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Service
metadata: {name: outside, namespace: plain}
spec:
  clusterIP: 10.96.0.40
  ports: [{name: http, port: 8080}]
"#;

fn index(extra: &str) -> Index {
    crate::index::build_from_yaml(&format!("{BASE}---\n{extra}"))
}

fn service(idx: &Index, ns: &str, name: &str) -> l7::ServiceConfig {
    let key = format!("service/{ns}/{name}.{ns}.svc.cluster.local");
    match idx.l7.get(&key).and_then(|r| r.kind.clone()) {
        Some(l7::l7_resource::Kind::Service(s)) => s,
        other => panic!(
            "{key}: {other:?}; have {:?}",
            idx.l7.keys().collect::<Vec<_>>()
        ),
    }
}

fn port(s: &l7::ServiceConfig, number: u32) -> l7::PortConfig {
    s.ports
        .iter()
        .find(|p| p.port == number)
        .cloned()
        .unwrap_or_else(|| panic!("port {number} of {}", s.name))
}

fn path(m: &l7::RouteMatch) -> Option<P> {
    m.path.as_ref().and_then(|p| p.kind.clone())
}

fn warned(idx: &Index, object: &str, text: &str) -> bool {
    idx.warnings
        .iter()
        .any(|w| w.object == object && w.message.contains(text))
}

fn backend(service: &str, port: u32, weight: u32) -> l7::Backend {
    l7::Backend {
        service: format!("bookinfo/{service}.bookinfo.svc.cluster.local"),
        port,
        weight,
        filters: Vec::new(),
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration_ms("10s"), Ok(10_000));
    assert_eq!(parse_duration_ms("500ms"), Ok(500));
    assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
    assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
    assert_eq!(parse_duration_ms("0.5s"), Ok(500));
    assert_eq!(parse_duration_ms("3m"), Ok(180_000));
    assert_eq!(parse_duration_ms("0s"), Ok(0));
    assert_eq!(parse_duration_ms("0"), Ok(0));
    assert_eq!(parse_duration_ms("10us"), Ok(1), "rounded up, not to zero");
    assert!(parse_duration_ms("10").is_err());
    assert!(parse_duration_ms("ten seconds").is_err());
    assert!(parse_duration_ms("").is_err());
}

#[test]
fn waypoint_services_gateways_and_protocols() {
    let idx = index("");
    assert!(idx.warnings.is_empty(), "{:?}", idx.warnings);
    let Some(l7::l7_resource::Kind::Gateway(g)) = idx.l7["gateway/bookinfo/waypoint"].kind.clone()
    else {
        panic!()
    };
    assert_eq!(g.traffic_type, "service", "default istio.io/waypoint-for");
    let reviews = service(&idx, "bookinfo", "reviews");
    assert_eq!(reviews.waypoint, "bookinfo/waypoint");
    assert_eq!(reviews.hostname, "reviews.bookinfo.svc.cluster.local");
    assert_eq!(port(&reviews, 9080).protocol, l7::AppProtocol::Http1 as i32);
    assert!(port(&reviews, 9080).routes.is_empty(), "default route");
    assert!(reviews.traffic_policy.is_none());
    let multi = service(&idx, "bookinfo", "multi");
    let protocols: Vec<(u32, i32)> = multi.ports.iter().map(|p| (p.port, p.protocol)).collect();
    assert_eq!(
        protocols,
        vec![
            (80, l7::AppProtocol::Http1 as i32),
            (9090, l7::AppProtocol::Grpc as i32),
            (5432, l7::AppProtocol::Tcp as i32),
            (15090, l7::AppProtocol::Http2 as i32),
            (7000, l7::AppProtocol::Detect as i32),
        ],
        "UDP ports are not carried"
    );
    assert!(
        !idx.l7
            .contains_key("service/plain/outside.plain.svc.cluster.local"),
        "no waypoint, nothing refers to it"
    );
}

#[test]
fn app_protocol_wins_over_the_port_name() {
    let p = |name: &str, app: Option<&str>| {
        port_protocol(&k8s_openapi::api::core::v1::ServicePort {
            name: Some(name.into()),
            app_protocol: app.map(str::to_string),
            port: 1,
            ..Default::default()
        })
    };
    assert_eq!(p("tcp", Some("http")), l7::AppProtocol::Http1);
    assert_eq!(p("http", Some("kubernetes.io/h2c")), l7::AppProtocol::Http2);
    assert_eq!(p("x", Some("GRPC")), l7::AppProtocol::Grpc);
    assert_eq!(p("http", Some("TCP")), l7::AppProtocol::Tcp);
    assert_eq!(p("http2-x", None), l7::AppProtocol::Http2);
    assert_eq!(p("grpc-web", None), l7::AppProtocol::Http1);
    assert_eq!(p("https", None), l7::AppProtocol::Tcp);
    assert_eq!(p("httpx", None), l7::AppProtocol::Detect);
    assert_eq!(p("web", Some("unknown")), l7::AppProtocol::Detect);
}

#[test]
fn http_route_translation() {
    let idx = index(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 9080}
  rules:
  - matches:
    - path: {type: PathPrefix, value: /reviews}
      headers: [{name: End-User, value: jason}]
      queryParams: [{type: RegularExpression, name: v, value: "[0-9]+"}]
      method: GET
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-a, value: "1"}]
        add: [{name: x-b, value: "2"}]
        remove: [x-c]
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-r, value: "3"}]}
    - type: URLRewrite
      urlRewrite:
        hostname: reviews.internal
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
    - type: RequestMirror
      requestMirror:
        backendRef: {name: ratings, port: 9080}
        fraction: {numerator: 1, denominator: 4}
    backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 90
    - name: reviews-v2
      port: 9080
      weight: 10
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: x-canary, value: "true"}]}
    timeouts: {request: 10s}
    retry: {codes: [503, 500, 503], attempts: 3, backoff: 100ms}
  - backendRefs:
    - name: reviews-v1
      port: 9080
  - matches:
    - path: {type: Exact, value: /redirect}
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        hostname: example.com
        port: 8443
        path: {type: ReplaceFullPath, replaceFullPath: /new}
  - matches:
    - path: {type: Exact, value: /broken}
"#,
    );
    assert!(idx.warnings.is_empty(), "{:?}", idx.warnings);
    let reviews = service(&idx, "bookinfo", "reviews");
    let routes = port(&reviews, 9080).routes;
    assert_eq!(routes.len(), 4);
    // Exact paths first, then the prefix, then the match-all rule.
    assert_eq!(routes[0].name, "HTTPRoute bookinfo/reviews#2");
    assert_eq!(routes[1].name, "HTTPRoute bookinfo/reviews#3");
    assert!(
        routes[1].backends.is_empty(),
        "no backends, no redirect: 500"
    );
    let redirect = &routes[0].filters[0];
    assert_eq!(
        redirect.kind,
        Some(F::Redirect(l7::Redirect {
            scheme: "https".into(),
            hostname: "example.com".into(),
            port: 8443,
            status_code: 302,
            path: Some(l7::PathModifier {
                kind: Some(l7::path_modifier::Kind::ReplaceFullPath("/new".into()))
            }),
        }))
    );

    let r = &routes[2];
    assert_eq!(r.name, "HTTPRoute bookinfo/reviews#0");
    let m = &r.matches[0];
    assert_eq!(path(m), Some(P::Prefix("/reviews".into())));
    assert_eq!(m.method, "GET");
    assert_eq!(m.headers[0].name, "end-user");
    assert_eq!(
        m.headers[0].value.as_ref().unwrap().kind,
        Some(l7::string_match::Kind::Exact("jason".into()))
    );
    assert_eq!(
        m.query_params[0].value.as_ref().unwrap().kind,
        Some(l7::string_match::Kind::Regex("[0-9]+".into()))
    );
    assert_eq!(r.timeout_ms, 10_000);
    assert_eq!(
        r.retry,
        Some(l7::RetryPolicy {
            attempts: 3,
            per_try_timeout_ms: 0,
            codes: vec![500, 503],
            on_connect_failure: true,
            backoff_ms: 100,
        })
    );
    assert_eq!(r.backends[0], backend("reviews-v1", 9080, 90));
    assert_eq!(r.backends[1].weight, 10);
    assert!(matches!(
        &r.backends[1].filters[0].kind,
        Some(F::RequestHeaders(h)) if h.set[0].name == "x-canary"
    ));
    let kinds: Vec<&str> = r
        .filters
        .iter()
        .map(|f| match f.kind.as_ref().unwrap() {
            F::RequestHeaders(_) => "req",
            F::ResponseHeaders(_) => "resp",
            F::Rewrite(_) => "rewrite",
            F::Mirror(_) => "mirror",
            F::Redirect(_) => "redirect",
        })
        .collect();
    assert_eq!(kinds, vec!["req", "resp", "rewrite", "mirror"]);
    let Some(F::RequestHeaders(h)) = &r.filters[0].kind else {
        panic!()
    };
    assert_eq!(
        (h.add[0].value.as_str(), h.remove[0].as_str()),
        ("2", "x-c")
    );
    let Some(F::Mirror(mirror)) = &r.filters[3].kind else {
        panic!()
    };
    assert_eq!(mirror.percent, 25.0);
    assert_eq!(mirror.backend, Some(backend("ratings", 9080, 1)));

    let all = &routes[3];
    assert_eq!(all.name, "HTTPRoute bookinfo/reviews#1");
    assert!(all.matches.is_empty(), "no matches: every request");
    assert_eq!(all.backends, vec![backend("reviews-v1", 9080, 1)]);
    // Backends are described because a route uses them.
    let v2 = service(&idx, "bookinfo", "reviews-v2");
    assert_eq!(v2.waypoint, "bookinfo/waypoint");
}

#[test]
fn precedence_across_routes() {
    let idx = index(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-young, namespace: bookinfo, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches:
    - path: {value: /a}
    - path: {value: /a/longer}
    - path: {type: Exact, value: /z}
    - path: {type: RegularExpression, value: "/r.*"}
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches:
    - path: {value: /a}
      method: GET
    - path: {value: /a}
      headers: [{name: x, value: "1"}, {name: y, value: "2"}]
    - path: {value: /a}
      headers: [{name: x, value: "1"}]
      queryParams: [{name: q, value: "1"}]
    - path: {value: /a}
      headers: [{name: x, value: "1"}]
    backendRefs: [{name: reviews-v2, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-old, namespace: bookinfo, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{path: {value: /a}}]
    backendRefs: [{name: ratings, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: c-undated, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{path: {value: /a}}]
    backendRefs: [{name: ratings, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: d-same-time, namespace: bookinfo, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{path: {value: /a}}]
    backendRefs: [{name: ratings, port: 9080}]
"#,
    );
    assert!(idx.warnings.is_empty(), "{:?}", idx.warnings);
    let routes = port(&service(&idx, "bookinfo", "reviews"), 9080).routes;
    assert_eq!(
        routes.len(),
        7,
        "consecutive matches of one rule share a route"
    );
    let order: Vec<(String, String)> = routes
        .iter()
        .flat_map(|r| r.matches.iter().map(move |m| (r, m)))
        .map(|(r, m)| {
            let p = match path(m) {
                Some(P::Exact(p)) => format!("={p}"),
                Some(P::Prefix(p)) => p,
                Some(P::Regex(p)) => format!("~{p}"),
                None => "*".into(),
            };
            (
                r.name.clone(),
                format!(
                    "{p}{}{}{}",
                    if m.method.is_empty() { "" } else { " M" },
                    " H".repeat(m.headers.len()),
                    " Q".repeat(m.query_params.len())
                ),
            )
        })
        .collect();
    let expected: Vec<(&str, &str)> = vec![
        ("HTTPRoute bookinfo/b-young#0", "=/z"),
        ("HTTPRoute bookinfo/b-young#0", "/a/longer"),
        ("HTTPRoute bookinfo/b-young#1", "/a M"),
        ("HTTPRoute bookinfo/b-young#1", "/a H H"),
        ("HTTPRoute bookinfo/b-young#1", "/a H Q"),
        ("HTTPRoute bookinfo/b-young#1", "/a H"),
        // Same match: oldest first, then namespace/name; undated last.
        ("HTTPRoute bookinfo/a-old#0", "/a"),
        ("HTTPRoute bookinfo/d-same-time#0", "/a"),
        ("HTTPRoute bookinfo/b-young#0", "/a"),
        ("HTTPRoute bookinfo/c-undated#0", "/a"),
        ("HTTPRoute bookinfo/b-young#0", "~/r.*"),
    ];
    let expected: Vec<(String, String)> = expected
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(order, expected);
}

#[test]
fn consecutive_matches_of_a_rule_are_merged() {
    let idx = index(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{path: {type: Exact, value: /a}}, {path: {type: Exact, value: /b}}]
    backendRefs: [{name: reviews-v1, port: 9080}]
"#,
    );
    let routes = port(&service(&idx, "bookinfo", "reviews"), 9080).routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].matches.len(), 2);
}

/// GAMMA consumer routes: an HTTPRoute in the client's namespace whose parent is a Service
/// elsewhere applies to that namespace's requests only, apart from the producer's routes.
#[test]
fn consumer_routes_stay_with_their_namespace() {
    let idx = index(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: frontend}
---
apiVersion: v1
kind: Namespace
metadata: {name: batch}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: producer, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - backendRefs: [{name: reviews-v1, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: frontend}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, namespace: bookinfo}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /beta}}]
    backendRefs: [{name: reviews-v2, namespace: bookinfo, port: 9080}]
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-consumer, value: frontend}]}
    backendRefs: [{name: reviews, namespace: bookinfo, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pinned, namespace: batch}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, namespace: bookinfo, port: 9080}]
  rules:
  - backendRefs: [{name: reviews-v1, namespace: bookinfo, port: 9080}]
"#,
    );
    let p = port(&service(&idx, "bookinfo", "reviews"), 9080);
    // The producer's route, for everyone else.
    assert_eq!(p.routes.len(), 1);
    assert_eq!(p.routes[0].name, "HTTPRoute bookinfo/producer#0");
    let namespaces: Vec<&str> = p
        .consumer_routes
        .iter()
        .map(|c| c.namespace.as_str())
        .collect();
    assert_eq!(namespaces, vec!["batch", "frontend"]);
    let frontend = &p.consumer_routes[1].routes;
    assert_eq!(
        frontend.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec!["HTTPRoute frontend/canary#0", "HTTPRoute frontend/canary#1"]
    );
    assert_eq!(frontend[0].backends, vec![backend("reviews-v2", 9080, 1)]);
    assert_eq!(frontend[1].filters.len(), 1);
    let batch = &p.consumer_routes[0].routes;
    assert_eq!(batch[0].backends, vec![backend("reviews-v1", 9080, 1)]);
    // Nothing about them is a problem.
    assert!(
        !idx.warnings
            .iter()
            .any(|w| w.object.starts_with("HTTPRoute/")),
        "{:?}",
        idx.warnings
    );
}

/// TCPRoute: the oldest route on a TCP port gives its weighted backends; HTTP ports and
/// HTTP-only services do not take TCPRoutes.
#[test]
fn tcp_routes_weight_tcp_ports() {
    let idx = index(
        r#"
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db-split, namespace: bookinfo, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: multi, port: 5432}]
  rules:
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: 80}
    - {name: reviews-v2, port: 9080, weight: 20}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db-later, namespace: bookinfo, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: multi}]
  rules:
  - backendRefs: [{name: reviews-v1, port: 9080}]
  - backendRefs: [{name: reviews-v2, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: on-http, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: ratings}]
  rules:
  - backendRefs: [{name: reviews-v1, port: 9080}]
"#,
    );
    let multi = service(&idx, "bookinfo", "multi");
    let db = port(&multi, 5432);
    assert_eq!(db.protocol, l7::AppProtocol::Tcp as i32);
    assert_eq!(db.routes.len(), 1);
    assert_eq!(db.routes[0].name, "TCPRoute bookinfo/db-split#0");
    assert!(db.routes[0].matches.is_empty());
    assert_eq!(
        db.routes[0].backends,
        vec![
            backend("reviews-v1", 9080, 80),
            backend("reviews-v2", 9080, 20)
        ]
    );
    assert!(warned(
        &idx,
        "Service/bookinfo/multi",
        "several TCPRoutes apply"
    ));
    assert!(warned(
        &idx,
        "TCPRoute/bookinfo/db-later",
        "only the first rule"
    ));
    // The HTTP port of the same service keeps its default route.
    assert!(port(&multi, 80).routes.is_empty());
    assert!(warned(&idx, "Service/bookinfo/ratings", "has no TCP port"));
    assert!(
        port(&service(&idx, "bookinfo", "ratings"), 9080)
            .routes
            .is_empty()
    );
}

#[test]
fn parent_ports_and_missing_references() {
    let idx = index(
        r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: web, namespace: bookinfo}
spec:
  parentRefs:
  - {group: "", kind: Service, name: multi, port: 80}
  - {group: "", kind: Service, name: multi, sectionName: tcp-db}
  - {group: "", kind: Service, name: ghost}
  - {group: "", kind: Service, name: multi, port: 81}
  - {name: ingress}
  - {group: "", kind: Service, name: outside, namespace: plain}
  rules:
  - backendRefs:
    - {name: nowhere, port: 80}
    - {kind: ServiceImport, group: multicluster.x-k8s.io, name: imported, port: 80}
    - {name: reviews}
"#,
    );
    let o = "HTTPRoute/bookinfo/web";
    assert!(
        warned(&idx, o, "parentRef Service bookinfo/ghost does not exist"),
        "{:?}",
        idx.warnings
    );
    assert!(warned(&idx, o, "it has no port 81"));
    assert!(warned(&idx, o, "parentRef Gateway bookinfo/ingress"));
    // A parent in another namespace makes a consumer route there (tested below).
    assert!(
        !port(&service(&idx, "plain", "outside"), 8080)
            .consumer_routes
            .is_empty()
    );
    assert!(warned(
        &idx,
        o,
        "backend Service bookinfo/nowhere does not exist"
    ));
    assert!(warned(&idx, o, "ServiceImport"));
    assert!(warned(&idx, "Service/bookinfo/multi", "port 5432 is TCP"));
    let multi = service(&idx, "bookinfo", "multi");
    let r80 = port(&multi, 80).routes;
    assert_eq!(r80.len(), 1);
    assert_eq!(
        r80[0].backends,
        vec![
            l7::Backend {
                service: "bookinfo/nowhere.bookinfo.svc.cluster.local".into(),
                port: 80,
                weight: 1,
                filters: vec![],
            },
            backend("reviews", 9080, 1),
        ],
        "a missing Service keeps its share (it fails); reviews' only port fills in"
    );
    assert!(port(&multi, 9090).routes.is_empty(), "not a parent port");
    assert!(port(&multi, 5432).routes.is_empty(), "TCP");
}

#[test]
fn grpc_route_translation() {
    let idx = index(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: api, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: multi, port: 7000}]
  rules:
  - matches:
    - method: {service: pkg.Greeter, method: Hello}
      headers: [{name: x-user, value: a}]
    - method: {service: pkg.Greeter}
    - method: {method: Bye}
    - method: {type: RegularExpression, service: "pkg\\..*", method: "Get.*"}
    backendRefs: [{name: multi, port: 9090}]
  - matches:
    - method: {}
"#,
    );
    assert!(
        warned(
            &idx,
            "GRPCRoute/bookinfo/api",
            "neither a service nor a method"
        ),
        "{:?}",
        idx.warnings
    );
    assert!(warned(
        &idx,
        "GRPCRoute/bookinfo/api",
        "rule 1 has no usable match"
    ));
    let multi = service(&idx, "bookinfo", "multi");
    let p = port(&multi, 7000);
    assert_eq!(
        p.protocol,
        l7::AppProtocol::Grpc as i32,
        "detected port becomes gRPC"
    );
    let paths: Vec<Option<P>> = p.routes.iter().flat_map(|r| &r.matches).map(path).collect();
    assert_eq!(
        paths,
        vec![
            Some(P::Exact("/pkg.Greeter/Hello".into())),
            Some(P::Prefix("/pkg.Greeter".into())),
            Some(P::Regex("/(?:pkg\\..*)/(?:Get.*)".into())),
            Some(P::Regex("/[^/]+/Bye".into())),
        ]
    );
    assert_eq!(p.routes[0].matches[0].headers[0].name, "x-user");
    assert_eq!(
        p.routes[0].backends,
        vec![l7::Backend {
            service: "bookinfo/multi.bookinfo.svc.cluster.local".into(),
            port: 9090,
            weight: 1,
            filters: vec![],
        }]
    );
}

const BOOKINFO_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    fault:
      delay:
        percentage: {value: 100.0}
        fixedDelay: 7s
    route:
    - destination: {host: reviews-v2}
  - match:
    - uri: {prefix: /api}
      ignoreUriCase: false
    - uri: {exact: /exact}
      method: {exact: POST}
      queryParams: {q: {regex: "a.*"}}
      withoutHeaders: {x-skip: {}}
    route:
    - destination: {host: reviews-v1.bookinfo.svc.cluster.local, port: {number: 9080}}
      weight: 75
    - destination: {host: reviews-v2.bookinfo}
      weight: 25
      headers:
        request: {set: {x-v: "2"}}
    timeout: 0.5s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: gateway-error,connect-failure,refused-stream,429
  - fault:
      abort:
        percentage: {value: 10}
        httpStatus: 500
    headers:
      request: {add: {x-b: "1"}, remove: [x-c]}
      response: {set: {x-r: "2"}}
    mirror: {host: ratings}
    mirrorPercentage: {value: 50}
    route:
    - destination: {host: reviews}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: ratings, namespace: bookinfo}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /ratings}}]
    rewrite: {uri: /v1/bookRatings, authority: ratings.internal}
    route: [{destination: {host: ratings, subset: v1}}]
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: example.com, redirectCode: 308}
  - route: [{destination: {host: ratings}}]
    retries: {attempts: 2}
    corsPolicy: {allowOrigins: [{exact: "*"}]}
"#;

#[test]
fn virtual_service_translation() {
    let idx = index(BOOKINFO_VS);
    let reviews = port(&service(&idx, "bookinfo", "reviews"), 9080).routes;
    assert_eq!(reviews.len(), 3);
    let r0 = &reviews[0];
    assert_eq!(r0.name, "VirtualService bookinfo/reviews#0");
    assert_eq!(r0.matches[0].headers[0].name, "end-user");
    assert_eq!(
        r0.fault,
        Some(l7::Fault {
            delay: Some(l7::FaultDelay {
                percent: 100.0,
                delay_ms: 7000
            }),
            abort: None,
        })
    );
    assert_eq!(r0.backends, vec![backend("reviews-v2", 9080, 1)]);

    let r1 = &reviews[1];
    assert_eq!(
        path(&r1.matches[0]),
        Some(P::Regex("/api.*".into())),
        "Istio prefixes are string prefixes"
    );
    let exact = &r1.matches[1];
    assert_eq!(path(exact), Some(P::Exact("/exact".into())));
    assert_eq!(exact.method, "POST");
    assert_eq!(exact.query_params[0].name, "q");
    assert!(exact.headers[0].invert);
    assert_eq!(
        exact.headers[0].value.as_ref().unwrap().kind,
        Some(l7::string_match::Kind::Regex(".*".into())),
        "{{}} is presence"
    );
    assert_eq!(r1.timeout_ms, 500);
    assert_eq!(
        r1.retry,
        Some(l7::RetryPolicy {
            attempts: 3,
            per_try_timeout_ms: 2000,
            codes: vec![429, 502, 503, 504],
            on_connect_failure: true,
            backoff_ms: 0,
        })
    );
    assert_eq!(r1.backends[0], backend("reviews-v1", 9080, 75));
    assert_eq!(r1.backends[1].weight, 25);
    assert!(
        matches!(&r1.backends[1].filters[0].kind, Some(F::RequestHeaders(h)) if h.set[0].value == "2")
    );

    let r2 = &reviews[2];
    assert!(r2.matches.is_empty());
    assert_eq!(
        r2.fault.as_ref().unwrap().abort,
        Some(l7::FaultAbort {
            percent: 10.0,
            http_status: 500,
            grpc_status: 0
        })
    );
    let Some(F::RequestHeaders(req)) = &r2.filters[0].kind else {
        panic!("{:?}", r2.filters)
    };
    assert_eq!(
        (req.add[0].name.as_str(), req.remove[0].as_str()),
        ("x-b", "x-c")
    );
    assert!(matches!(&r2.filters[1].kind, Some(F::ResponseHeaders(_))));
    let Some(F::Mirror(m)) = &r2.filters[2].kind else {
        panic!()
    };
    assert_eq!(
        (m.percent, m.backend.clone()),
        (50.0, Some(backend("ratings", 9080, 1)))
    );

    let ratings = port(&service(&idx, "bookinfo", "ratings"), 9080).routes;
    let rw = &ratings[0];
    assert_eq!(
        path(&rw.matches[0]),
        Some(P::Prefix("/ratings".into())),
        "the waypoint must know the prefix it replaces"
    );
    assert_eq!(
        rw.filters[0].kind,
        Some(F::Rewrite(l7::Rewrite {
            hostname: "ratings.internal".into(),
            path: Some(l7::PathModifier {
                kind: Some(l7::path_modifier::Kind::ReplacePrefixMatch(
                    "/v1/bookRatings".into()
                ))
            }),
        }))
    );
    assert!(matches!(
        &ratings[1].filters[0].kind,
        Some(F::Redirect(r)) if r.status_code == 308 && r.hostname == "example.com"
    ));
    assert!(ratings[1].backends.is_empty());
    assert_eq!(
        ratings[2].retry,
        Some(l7::RetryPolicy {
            attempts: 2,
            codes: vec![503],
            on_connect_failure: true,
            ..Default::default()
        }),
        "Istio's default conditions"
    );
    let o = "VirtualService/bookinfo/ratings";
    assert!(
        warned(&idx, o, "subsets are not supported"),
        "{:?}",
        idx.warnings
    );
    assert!(warned(&idx, o, "corsPolicy is not supported"));
    assert_eq!(idx.warnings.len(), 2, "{:?}", idx.warnings);
}

#[test]
fn http_routes_come_before_virtual_service_rules() {
    let idx = index(&format!(
        "{BOOKINFO_VS}---\n{}",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules: [{backendRefs: [{name: reviews-v1, port: 9080}]}]
"#
    ));
    let routes = port(&service(&idx, "bookinfo", "reviews"), 9080).routes;
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "HTTPRoute bookinfo/reviews#0",
            "VirtualService bookinfo/reviews#0",
            "VirtualService bookinfo/reviews#1",
            "VirtualService bookinfo/reviews#2",
        ]
    );
}

#[test]
fn retry_on_mapping() {
    let mut out = Out::default();
    let (codes, connect) = virtual_service::parse_retry_on(&mut out, "o", "f", "5xx");
    assert_eq!(
        (codes.len(), codes[0], codes[99], connect),
        (100, 500, 599, true)
    );
    let (codes, connect) =
        virtual_service::parse_retry_on(&mut out, "o", "f", "retriable-status-codes,503, reset");
    assert_eq!((codes, connect), (vec![503], true));
    let (codes, connect) = virtual_service::parse_retry_on(&mut out, "o", "f", "retriable-4xx");
    assert_eq!((codes, connect), (vec![409], false));
    assert!(out.warnings.is_empty());
    virtual_service::parse_retry_on(&mut out, "o", "f", "unavailable,bogus,700");
    assert_eq!(out.warnings.len(), 3, "{:?}", out.warnings);
}

#[test]
fn virtual_service_edge_cases() {
    let idx = index(
        r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: edge, namespace: bookinfo}
spec:
  hosts: [reviews, "*.example.com", ghost, api.example.com]
  http:
  - match: [{uri: {prefix: /Case}, ignoreUriCase: true, port: 9080}]
    route: [{destination: {host: reviews}}]
  - match: [{sourceLabels: {app: x}}]
    route: [{destination: {host: reviews}}]
  - match: [{uri: {regex: "("}}]
    route: [{destination: {host: reviews}}]
  - match: [{port: 1234}]
    route: [{destination: {host: reviews}}]
  - fault: {abort: {grpcStatus: UNAVAILABLE}}
    route: [{destination: {host: reviews}}]
  - directResponse: {status: 503}
  - route:
    - destination: {host: reviews-v1}
    - destination: {host: reviews-v2}
  tcp:
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ingress-only, namespace: bookinfo}
spec:
  hosts: [ratings]
  gateways: [bookinfo-gateway]
  http: [{route: [{destination: {host: ratings}}]}]
"#,
    );
    let o = "VirtualService/bookinfo/edge";
    for text in [
        "wildcard hosts are not supported",
        "names Service bookinfo/ghost, which does not exist",
        "neither a Service of this cluster nor a ServiceEntry host",
        "sourceLabels and sourceNamespace are not supported",
        "http[1] has no match that applies",
        "is invalid",
        "directResponse is not supported",
        "tcp routes are not supported",
    ] {
        assert!(warned(&idx, o, text), "{text}: {:?}", idx.warnings);
    }
    assert!(warned(
        &idx,
        "VirtualService/bookinfo/ingress-only",
        "not `mesh`"
    ));
    let routes = port(&service(&idx, "bookinfo", "reviews"), 9080).routes;
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "VirtualService bookinfo/edge#0",
            "VirtualService bookinfo/edge#4",
            "VirtualService bookinfo/edge#5",
            "VirtualService bookinfo/edge#6",
        ],
        "invalid rules and rules for another port are left out"
    );
    assert_eq!(
        path(&routes[0].matches[0]),
        Some(P::Regex("(?i)/Case.*".into()))
    );
    assert_eq!(
        routes[1]
            .fault
            .as_ref()
            .unwrap()
            .abort
            .as_ref()
            .unwrap()
            .grpc_status,
        14
    );
    assert!(routes[2].backends.is_empty(), "directResponse answers 500");
    let weights: Vec<u32> = routes[3].backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, vec![1, 1], "unweighted destinations share equally");
    assert!(
        port(&service(&idx, "bookinfo", "ratings"), 9080)
            .routes
            .is_empty()
    );
}

#[test]
fn peak_ewma_is_chosen_by_annotation() {
    let idx = index(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ewma
  namespace: bookinfo
  annotations: {balancer.ambient-rs.io/algorithm: peak-ewma}
spec:
  host: reviews
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: typo
  namespace: bookinfo
  annotations: {balancer.ambient-rs.io/algorithm: fastest}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
"#,
    );
    let lb = |name| {
        service(&idx, "bookinfo", name)
            .traffic_policy
            .unwrap()
            .load_balancer
            .unwrap()
            .kind
    };
    assert_eq!(lb("reviews"), l7::load_balancer::Kind::PeakEwma as i32);
    assert_eq!(lb("ratings"), l7::load_balancer::Kind::RoundRobin as i32);
    assert!(warned(
        &idx,
        "DestinationRule/bookinfo/typo",
        "\"fastest\" is not an algorithm"
    ));
}

#[test]
fn retry_budget_alone_defaults_and_bad_percent() {
    let idx = index(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: budget, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy:
    retryBudget: {}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad, namespace: bookinfo}
spec:
  host: ratings
  trafficPolicy:
    retryBudget: {percent: 150, budgetInterval: 10s}
"#,
    );
    let pool = service(&idx, "bookinfo", "reviews")
        .traffic_policy
        .unwrap()
        .connection_pool
        .unwrap();
    assert_eq!(
        pool.retry_budget,
        Some(l7::RetryBudget {
            percent: 20.0,
            min_retry_concurrency: 3,
        }),
        "Envoy's defaults"
    );
    let ratings = service(&idx, "bookinfo", "ratings").traffic_policy.unwrap();
    assert_eq!(ratings.connection_pool.unwrap().retry_budget, None);
    for expected in ["percent 150 is not in 0–100", "budgetInterval"] {
        assert!(
            warned(&idx, "DestinationRule/bookinfo/bad", expected),
            "{expected}: {:?}",
            idx.warnings
        );
    }
}

#[test]
fn destination_rule_translation() {
    let idx = index(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-cb, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 1, http2MaxRequests: 7, maxRequestsPerConnection: 1, idleTimeout: 1m, maxRetries: 4}
    retryBudget: {percent: {value: 25}, minRetryConcurrency: 5}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: ratings, namespace: bookinfo}
spec:
  host: ratings.bookinfo.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: X-User}
    outlierDetection: {consecutiveGatewayErrors: 2}
    tls: {mode: ISTIO_MUTUAL}
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: outside, namespace: plain}
spec:
  host: outside
  trafficPolicy:
    loadBalancer: {simple: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: late, namespace: istio-system}
spec:
  host: reviews.bookinfo.svc.cluster.local
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: nothing, namespace: bookinfo}
spec:
  host: ghost
"#,
    );
    let reviews = service(&idx, "bookinfo", "reviews");
    let tp = reviews.traffic_policy.unwrap();
    assert_eq!(
        tp.load_balancer.unwrap().kind,
        l7::load_balancer::Kind::RoundRobin as i32
    );
    assert_eq!(
        tp.connection_pool,
        Some(l7::ConnectionPool {
            max_connections: 1,
            max_pending_requests: 1,
            max_requests: 7,
            max_requests_per_connection: 1,
            connect_timeout_ms: 30,
            idle_timeout_ms: 60_000,
            max_retries: 4,
            retry_budget: Some(l7::RetryBudget {
                percent: 25.0,
                min_retry_concurrency: 5,
            }),
        })
    );
    assert_eq!(
        tp.outlier_detection,
        Some(l7::OutlierDetection {
            consecutive_5xx: 1,
            consecutive_gateway_errors: 0,
            interval_ms: 1000,
            base_ejection_time_ms: 180_000,
            max_ejection_percent: 100,
        })
    );
    let ratings = service(&idx, "bookinfo", "ratings").traffic_policy.unwrap();
    assert_eq!(
        ratings.load_balancer,
        Some(l7::LoadBalancer {
            kind: l7::load_balancer::Kind::ConsistentHash as i32,
            hash_header: "x-user".into(),
        })
    );
    assert_eq!(
        ratings.outlier_detection,
        Some(l7::OutlierDetection {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 2,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 10,
        }),
        "Istio's defaults"
    );
    assert!(ratings.connection_pool.is_none());
    // A DestinationRule host gets its configuration even without a waypoint.
    let outside = service(&idx, "plain", "outside");
    assert_eq!(outside.waypoint, "");
    assert_eq!(
        outside.traffic_policy.unwrap().load_balancer.unwrap().kind,
        l7::load_balancer::Kind::LeastRequest as i32
    );
    assert!(warned(&idx, "DestinationRule/plain/outside", "PASSTHROUGH"));
    assert!(warned(
        &idx,
        "DestinationRule/bookinfo/ratings",
        "subsets are not supported"
    ));
    assert!(warned(
        &idx,
        "DestinationRule/istio-system/late",
        "DestinationRule/bookinfo/reviews-cb also configures"
    ));
    assert!(warned(
        &idx,
        "DestinationRule/bookinfo/nothing",
        "which does not exist"
    ));
    assert_eq!(idx.warnings.len(), 4, "{:?}", idx.warnings);
}

#[test]
fn waypoint_policies() {
    let idx = index(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-get, namespace: bookinfo}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/bookinfo/sa/productpage"]
        notNamespaces: [test]
        ipBlocks: [10.0.0.0/8]
        notIpBlocks: [10.1.0.0/16]
    to:
    - operation: {methods: [GET], paths: ["/reviews/*"], notPaths: [/admin], hosts: [reviews], ports: ["9080"]}
    when:
    - {key: "request.headers[x-token]", values: [secret], notValues: [bad]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-remote, namespace: bookinfo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - from:
    - source: {remoteIpBlocks: [1.2.3.4]}
    - source: {serviceAccounts: [sleep, other/curl]}
    to: [{operation: {methods: [DELETE]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  action: AUDIT
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nothing, namespace: bookinfo}
spec:
  targetRefs:
  - {kind: Service, group: "", name: ghost}
  - {kind: Gateway, group: gateway.networking.k8s.io, name: nope}
  - {kind: ServiceEntry, group: networking.istio.io, name: se}
  - {kind: Service, group: "", name: outside, namespace: plain}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: bookinfo}
spec:
  targetRefs: [{kind: Service, group: "", name: ratings}]
  action: CUSTOM
  provider: {name: opa}
  rules: [{}]
"#,
    );
    let reviews = service(&idx, "bookinfo", "reviews");
    assert_eq!(reviews.policies.len(), 1);
    let p = &reviews.policies[0];
    assert_eq!(
        (p.name.as_str(), p.action, p.match_all),
        ("reviews-get", l7::Action::Allow as i32, false)
    );
    let rule = &p.rules[0];
    assert_eq!(
        rule.from[0],
        l7::Source {
            principals: vec!["cluster.local/ns/bookinfo/sa/productpage".into()],
            not_namespaces: vec!["test".into()],
            ip_blocks: vec!["10.0.0.0/8".into()],
            not_ip_blocks: vec!["10.1.0.0/16".into()],
            ..Default::default()
        }
    );
    assert_eq!(
        rule.to[0],
        l7::Operation {
            hosts: vec!["reviews".into()],
            ports: vec!["9080".into()],
            methods: vec!["GET".into()],
            paths: vec!["/reviews/*".into()],
            not_paths: vec!["/admin".into()],
            ..Default::default()
        }
    );
    assert_eq!(
        rule.when[0],
        l7::Condition {
            key: "request.headers[x-token]".into(),
            values: vec!["secret".into()],
            not_values: vec!["bad".into()],
        }
    );

    let Some(l7::l7_resource::Kind::Gateway(g)) = idx.l7["gateway/bookinfo/waypoint"].kind.clone()
    else {
        panic!()
    };
    let names: Vec<&str> = g.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["deny-remote", "audit-all"]);
    let deny = &g.policies[0];
    assert_eq!(deny.action, l7::Action::Deny as i32);
    assert_eq!(deny.rules.len(), 2, "split per source");
    assert_eq!(deny.rules[0].when[0].key, "remote.ip");
    assert_eq!(deny.rules[0].when[0].values, vec!["1.2.3.4"]);
    assert_eq!(deny.rules[0].to[0].methods, vec!["DELETE"]);
    assert_eq!(
        deny.rules[1].from[0].principals,
        vec![
            "cluster.local/ns/bookinfo/sa/sleep",
            "cluster.local/ns/other/sa/curl"
        ]
    );
    assert!(deny.rules[1].when.is_empty());
    let audit = &g.policies[1];
    assert!(audit.match_all && audit.rules.is_empty());
    assert_eq!(audit.action, l7::Action::Audit as i32);

    let o = "AuthorizationPolicy/bookinfo/nothing";
    assert!(
        warned(&idx, o, "targetRef Service bookinfo/ghost does not exist"),
        "{:?}",
        idx.warnings
    );
    assert!(warned(
        &idx,
        o,
        "targetRef Gateway bookinfo/nope does not exist"
    ));
    assert!(warned(
        &idx,
        o,
        "targetRef ServiceEntry bookinfo/se does not exist"
    ));
    assert!(warned(&idx, o, "in another namespace"));
    assert!(warned(&idx, "AuthorizationPolicy/bookinfo/ext", "CUSTOM"));
    assert!(service(&idx, "bookinfo", "ratings").policies.is_empty());
    // Waypoint policies stay out of ztunnel's L4 authorizations.
    assert!(
        idx.authorizations.is_empty(),
        "{:?}",
        idx.authorizations.keys()
    );
}

#[test]
fn routes_on_a_service_without_waypoint_are_reported() {
    let idx = index(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: outside, namespace: plain}
spec:
  parentRefs: [{group: "", kind: Service, name: outside}]
  rules: [{backendRefs: [{name: outside, port: 8080}]}]
"#,
    );
    assert!(
        warned(&idx, "Service/plain/outside", "uses no waypoint"),
        "{:?}",
        idx.warnings
    );
    let outside = service(&idx, "plain", "outside");
    assert_eq!(port(&outside, 8080).routes.len(), 1);
}

const WAYPOINT_DEPLOYMENT: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: waypoint
  namespace: bookinfo
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec:
  clusterIP: 10.96.0.99
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: bookinfo
  labels: {gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}
spec:
  nodeName: node-w
  serviceAccountName: waypoint
  containers: [{name: waypoint, image: w}]
status: {podIP: 10.244.3.7, phase: Running}
"#;

#[test]
fn waypoint_instances_terminate_hbone_and_get_certificates() {
    let idx = index(WAYPOINT_DEPLOYMENT);
    let Some(wds::address::Type::Workload(w)) =
        &idx.addresses["Kubernetes//Pod/bookinfo/waypoint-0"].r#type
    else {
        panic!()
    };
    assert_eq!(
        w.tunnel_protocol,
        wds::TunnelProtocol::Hbone as i32,
        "even opted out of capture"
    );
    assert!(w.waypoint.is_none(), "a waypoint uses no waypoint");
    let ids: Vec<String> = idx.identities_by_node["node-w"]
        .iter()
        .map(|i| i.to_string())
        .collect();
    assert_eq!(ids, vec!["spiffe://cluster.local/ns/bookinfo/sa/waypoint"]);
    let Some(wds::address::Type::Service(s)) =
        &idx.addresses["bookinfo/waypoint.bookinfo.svc.cluster.local"].r#type
    else {
        panic!()
    };
    assert!(
        s.waypoint.is_none(),
        "the waypoint's own Service uses no waypoint"
    );
    assert!(
        !idx.l7
            .contains_key("service/bookinfo/waypoint.bookinfo.svc.cluster.local")
    );
}

use ambient_proto::istio::workload as wds;

#[test]
fn gateway_status() {
    let idx = index("");
    let s = &idx.gateways[0];
    assert_eq!((s.programmed, s.reason.as_str()), (false, "NoAddress"));
    assert_eq!(s.address, None);

    let idx = index(&WAYPOINT_DEPLOYMENT.replace("phase: Running", "phase: Pending"));
    let s = &idx.gateways[0];
    assert_eq!((s.programmed, s.reason.as_str()), (false, "NoInstances"));
    assert_eq!(s.address.as_deref(), Some("10.96.0.99"));

    let idx = index(WAYPOINT_DEPLOYMENT);
    let s = &idx.gateways[0];
    assert!(s.programmed, "{s:?}");
    assert_eq!(s.reason, "Programmed");
    assert_eq!(s.conditions[0].kind, "Accepted");
    assert!(s.conditions[0].status);
    let json = serde_json::to_value(&idx.gateways).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{
            "namespace": "bookinfo",
            "name": "waypoint",
            "class": "istio-waypoint",
            "trafficType": "service",
            "address": "10.96.0.99",
            "programmed": true,
            "reason": "Programmed",
            "message": "address 10.96.0.99, 1 running instance(s)",
        }])
    );

    let idx = index(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: bad, namespace: bookinfo, labels: {istio.io/waypoint-for: all}}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n",
    );
    let bad = idx.gateways.iter().find(|g| g.name == "bad").unwrap();
    assert_eq!(
        (bad.programmed, bad.reason.as_str()),
        (false, "ListenersNotValid")
    );
    assert_eq!(bad.traffic_type, "all");
}

const RATE_LIMITS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - name: slow
    matches: [{path: {type: PathPrefix, value: /slow}}]
    backendRefs: [{name: reviews-v1, port: 9080}]
  - backendRefs: [{name: reviews-v2, port: 9080}]
---
apiVersion: policy.ambient-rs.io/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: ratings, namespace: bookinfo, generation: 3}
spec:
  targetRefs: [{group: "", kind: Service, name: ratings}]
  total: {requestsPerSecond: 100}
  identity: {requestsPerSecond: 20, burst: 5}
  overrides:
  - requestsPerSecond: 50
    clientRefs: [{kind: ServiceAccount, name: productpage}]
  - requestsPerSecond: 2
    clientRefs: [{kind: ServiceAccount, name: batch, namespace: jobs}]
    matches: [{method: POST, path: {type: PathPrefix, value: /ratings}}]
---
apiVersion: policy.ambient-rs.io/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: slow-rule, namespace: bookinfo}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: reviews, sectionName: slow}
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: reviews, sectionName: nope}
  total: {requestsPerSecond: 1}
---
apiVersion: policy.ambient-rs.io/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: everything, namespace: bookinfo}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  identity: {requestsPerSecond: 1000}
---
apiVersion: policy.ambient-rs.io/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: above-total, namespace: bookinfo}
spec:
  targetRefs: [{group: "", kind: Service, name: ratings}]
  total: {requestsPerSecond: 10}
  identity: {requestsPerSecond: 20}
---
apiVersion: policy.ambient-rs.io/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: lost, namespace: bookinfo}
spec:
  targetRefs: [{group: "", kind: Service, name: gone}]
  total: {requestsPerSecond: 10}
"#;

#[test]
fn rate_limit_policies_attach_to_services_rules_and_gateways() {
    let idx = index(&format!("{RATE_LIMITS}---\n{WAYPOINT_DEPLOYMENT}"));
    let ratings = service(&idx, "bookinfo", "ratings");
    assert_eq!(
        ratings.rate_limits.len(),
        1,
        "the invalid policy is not applied"
    );
    let rl = &ratings.rate_limits[0];
    assert_eq!((rl.name.as_str(), rl.replicas), ("ratings", 1));
    assert_eq!(rl.total.unwrap().requests_per_second, 100.0);
    assert_eq!(rl.total.unwrap().burst, 0);
    assert_eq!(rl.identity.unwrap().burst, 5);
    assert_eq!(
        rl.overrides[0].principals,
        ["cluster.local/ns/bookinfo/sa/productpage"]
    );
    assert_eq!(
        rl.overrides[1].principals,
        ["cluster.local/ns/jobs/sa/batch"]
    );
    assert_eq!(rl.overrides[1].matches[0].method, "POST");
    assert_eq!(
        path(&rl.overrides[1].matches[0]),
        Some(P::Prefix("/ratings".into()))
    );

    let reviews = port(&service(&idx, "bookinfo", "reviews"), 9080);
    let limited: Vec<_> = reviews
        .routes
        .iter()
        .map(|r| {
            r.rate_limits
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        limited,
        vec![vec!["slow-rule"], vec![]],
        "only the named rule"
    );

    let Some(l7::l7_resource::Kind::Gateway(g)) = idx.l7["gateway/bookinfo/waypoint"].kind.clone()
    else {
        panic!()
    };
    assert_eq!(g.rate_limits[0].name, "everything");
    assert_eq!(g.rate_limits[0].replicas, 1);

    let status = |name: &str| idx.policies.iter().find(|p| p.name == name).unwrap();
    let s = status("ratings");
    assert_eq!((s.accepted, s.reason.as_str()), (true, "Accepted"));
    assert_eq!(s.attached, ["Service bookinfo/ratings"]);
    let s = status("slow-rule");
    assert!(s.accepted);
    assert!(
        s.message
            .contains("not found: HTTPRoute bookinfo/reviews rule nope"),
        "{s:?}"
    );
    let s = status("above-total");
    assert_eq!((s.accepted, s.reason.as_str()), (false, "Invalid"));
    assert!(
        s.message
            .contains("identity.requestsPerSecond (20) is above total")
    );
    assert!(warned(
        &idx,
        "LocalRateLimitPolicy/bookinfo/above-total",
        "not applied"
    ));
    let s = status("lost");
    assert_eq!((s.accepted, s.reason.as_str()), (false, "TargetNotFound"));
    assert!(warned(
        &idx,
        "LocalRateLimitPolicy/bookinfo/lost",
        "Service bookinfo/gone does not exist"
    ));
}

#[test]
fn rate_limit_replicas_follow_the_running_waypoint_instances() {
    let second = WAYPOINT_DEPLOYMENT
        .split("---")
        .nth(1)
        .unwrap()
        .replace("waypoint-0", "waypoint-1")
        .replace("10.244.3.7", "10.244.3.8");
    let idx = index(&format!(
        "{RATE_LIMITS}---\n{WAYPOINT_DEPLOYMENT}---\n{second}"
    ));
    assert_eq!(
        service(&idx, "bookinfo", "ratings").rate_limits[0].replicas,
        2
    );
    let reviews = port(&service(&idx, "bookinfo", "reviews"), 9080);
    assert_eq!(reviews.routes[0].rate_limits[0].replicas, 2);
    // Without instances the limit still holds, as if there were one.
    let idx = index(RATE_LIMITS);
    assert_eq!(
        service(&idx, "bookinfo", "ratings").rate_limits[0].replicas,
        0
    );
}

#[test]
fn rate_limit_policy_errors() {
    for (spec, why) in [
        (
            "targetRefs: [{kind: Service, name: ratings}]",
            "sets no limit",
        ),
        (
            "targetRefs: [{kind: Service, name: ratings}]\n  total: {requestsPerSecond: 0}",
            "total.requestsPerSecond must be a positive number",
        ),
        (
            "targetRefs: [{kind: Service, name: ratings}]\n  total: {requestsPerSecond: 5, burst: 0}",
            "total.burst must be at least 1",
        ),
        (
            "targetRefs: [{kind: Service, name: ratings}]\n  overrides: [{requestsPerSecond: 5, clientRefs: [{kind: User, name: bob}]}]",
            "is not a ServiceAccount",
        ),
        (
            "targetRefs: [{kind: Service, name: ratings}]\n  total: {requestsPerSecond: 5}\n  overrides: [{requestsPerSecond: 6}]",
            "overrides[0].requestsPerSecond (6) is above total",
        ),
        (
            "targetRefs: [{kind: Service, name: ratings}]\n  overrides: [{requestsPerSecond: 6, matches: [{path: {type: RegularExpression, value: '('}}]}]",
            "overrides[0].matches[0] cannot be used",
        ),
    ] {
        let idx = index(&format!(
            "apiVersion: policy.ambient-rs.io/v1alpha1\nkind: LocalRateLimitPolicy\nmetadata: {{name: p, namespace: bookinfo}}\nspec:\n  {spec}\n"
        ));
        let s = &idx.policies[0];
        assert_eq!(
            (s.accepted, s.reason.as_str()),
            (false, "Invalid"),
            "{spec}"
        );
        assert!(s.message.contains(why), "{spec}: {}", s.message);
        assert!(
            idx.l7
                .get("service/bookinfo/ratings.bookinfo.svc.cluster.local")
                .is_none_or(|r| matches!(&r.kind, Some(l7::l7_resource::Kind::Service(s)) if s.rate_limits.is_empty()))
        );
    }
}

/// The L7 configuration of ServiceEntry host `host` of `ns`.
fn entry(idx: &Index, ns: &str, host: &str) -> l7::ServiceConfig {
    match idx
        .l7
        .get(&format!("service/{ns}/{host}"))
        .and_then(|r| r.kind.clone())
    {
        Some(l7::l7_resource::Kind::Service(s)) => s,
        other => panic!(
            "{host}: {other:?}; have {:?}",
            idx.l7.keys().collect::<Vec<_>>()
        ),
    }
}

#[test]
fn egress_through_a_waypoint() {
    let idx = index(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: bookinfo}
spec:
  hosts: [api.example.com, API.example.org.]
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 443}
  - {number: 5432, name: pg, protocol: TCP}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: direct, namespace: bookinfo, labels: {istio.io/use-waypoint: none}}
spec:
  hosts: [direct.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api-tls, namespace: bookinfo}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: /etc/ca.pem, credentialName: api-ca}
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE, sni: api.example.com, subjectAltNames: [api.example.com]}
    - port: {number: 5432}
      tls: {mode: DISABLE}
      loadBalancer: {simple: RANDOM}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mutual, namespace: bookinfo}
spec:
  host: api.example.org
  trafficPolicy: {tls: {mode: MUTUAL, caCertificates: relative.pem}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-get-only, namespace: bookinfo}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: api}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api-headers, namespace: bookinfo}
spec:
  parentRefs: [{kind: ServiceEntry, group: networking.istio.io, name: api, port: 80}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-egress, value: "yes"}]}
    backendRefs:
    - {kind: Hostname, group: networking.istio.io, name: api.example.com, port: 80}
    - {kind: Hostname, group: networking.istio.io, name: nowhere.example.com, port: 80}
"#,
    );
    // Both hosts of the entry, through the namespace's waypoint.
    let api = entry(&idx, "bookinfo", "api.example.com");
    assert_eq!(
        (api.name.as_str(), api.waypoint.as_str()),
        ("api", "bookinfo/waypoint")
    );
    assert_eq!(port(&api, 80).protocol, l7::AppProtocol::Http1 as i32);
    assert_eq!(port(&api, 5432).protocol, l7::AppProtocol::Tcp as i32);
    assert_eq!(
        api.policies
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["api-get-only"]
    );
    let org = entry(&idx, "bookinfo", "api.example.org");
    assert_eq!(
        org.policies.len(),
        1,
        "the policy targets every host of the entry"
    );
    // The route attaches to port 80 of both hosts; its backend is named by host.
    let routes = &port(&api, 80).routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(
        routes[0]
            .backends
            .iter()
            .map(|b| (b.service.as_str(), b.port))
            .collect::<Vec<_>>(),
        [("bookinfo/api.example.com", 80)]
    );
    assert_eq!(port(&org, 80).routes.len(), 1);
    assert!(port(&api, 5432).routes.is_empty());
    assert!(warned(
        &idx,
        "HTTPRoute/bookinfo/api-headers",
        "backendRef Hostname nowhere.example.com"
    ));
    // TLS origination: SIMPLE at the top, replaced per port.
    let tls = api
        .traffic_policy
        .as_ref()
        .and_then(|t| t.tls.clone())
        .unwrap();
    assert_eq!(
        (tls.mode, tls.ca_certificates.as_str()),
        (l7::client_tls::Mode::Simple as i32, "/etc/ca.pem")
    );
    let per_port = &api.traffic_policy.as_ref().unwrap().port_tls;
    assert_eq!(per_port.len(), 2);
    let p80 = per_port[0].tls.clone().unwrap();
    assert_eq!(
        (per_port[0].port, p80.sni.as_str()),
        (80, "api.example.com")
    );
    assert_eq!(p80.subject_alt_names, ["api.example.com"]);
    assert_eq!(
        (per_port[1].port, per_port[1].tls.clone().unwrap().mode),
        (5432, l7::client_tls::Mode::Disable as i32)
    );
    let o = "DestinationRule/bookinfo/api-tls";
    assert!(warned(&idx, o, "credentialName"));
    assert!(warned(
        &idx,
        o,
        "portLevelSettings[1].loadBalancer is not supported"
    ));
    assert!(warned(&idx, "DestinationRule/bookinfo/mutual", "MUTUAL"));
    assert!(org.traffic_policy.unwrap().tls.is_none());
    // An entry opting out of the namespace's waypoint gets no L7 configuration.
    assert!(!idx.l7.contains_key("service/bookinfo/direct.example.com"));
}

#[test]
fn an_entry_host_never_replaces_a_services_configuration() {
    let idx = index(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow, namespace: bookinfo}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  ports: [{number: 9080, name: tcp, protocol: TCP}]
  resolution: DNS
"#,
    );
    let reviews = service(&idx, "bookinfo", "reviews");
    assert_eq!(reviews.name, "reviews");
    assert_eq!(port(&reviews, 9080).protocol, l7::AppProtocol::Http1 as i32);
}

#[test]
fn request_authentication_attaches_by_target_refs() {
    let idx = index(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: bookinfo}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  jwtRules:
  - issuer: https://login.example.test
    audiences: [bookinfo]
    jwksUri: https://login.example.test/keys
    fromHeaders: [{name: x-token, prefix: "Token "}]
    fromParams: [token]
    forwardOriginalToken: true
    outputClaimToHeaders: [{header: x-user, claim: sub}]
    timeout: 2s
  - jwksUri: https://nobody.example.test/keys
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: everywhere, namespace: bookinfo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules:
  - issuer: inline
    jwks: '{"keys": []}'
    jwksUri: https://ignored.example.test/keys
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: sidecar-style, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  jwtRules: [{issuer: x, jwksUri: "https://x.test/k"}]
"#,
    );
    let reviews = service(&idx, "bookinfo", "reviews");
    assert_eq!(
        reviews.jwt_rules.len(),
        1,
        "the rule without an issuer is left out"
    );
    let r = &reviews.jwt_rules[0];
    assert_eq!(
        (r.source.as_str(), r.issuer.as_str(), r.jwks_uri.as_str()),
        (
            "bookinfo/jwt",
            "https://login.example.test",
            "https://login.example.test/keys"
        )
    );
    assert_eq!(r.audiences, ["bookinfo"]);
    assert_eq!(
        (
            r.from_headers[0].name.as_str(),
            r.from_headers[0].prefix.as_str()
        ),
        ("x-token", "Token ")
    );
    assert_eq!(r.from_params, ["token"]);
    assert!(r.forward_original_token);
    assert_eq!(r.output_claim_to_headers[0].header, "x-user");
    assert_eq!(r.jwks_timeout_ms, 2000);
    assert!(warned(
        &idx,
        "RequestAuthentication/bookinfo/jwt",
        "jwtRules[1] has no issuer"
    ));

    let Some(l7::l7_resource::Kind::Gateway(g)) = idx.l7["gateway/bookinfo/waypoint"].kind.clone()
    else {
        panic!()
    };
    assert_eq!(g.jwt_rules.len(), 1);
    assert!(g.jwt_rules[0].jwks_uri.is_empty(), "inline jwks wins");
    assert!(warned(
        &idx,
        "RequestAuthentication/bookinfo/everywhere",
        "jwks and jwksUri both set"
    ));
    assert!(warned(
        &idx,
        "RequestAuthentication/bookinfo/sidecar-style",
        "has no targetRefs"
    ));
    assert!(service(&idx, "bookinfo", "ratings").jwt_rules.is_empty());
}
