//! The waypoint end to end in the local runtime, driven as a user would: `ambientctl up` on
//! tests/fixtures/waypoint-e2e, requests from a mesh pod with `demo-app get`, and the
//! waypoint's own metrics read from a pod outside the mesh.
//!
//! Statistical checks use five standard deviations of the binomial, so a correct proxy fails
//! them about once in two million runs while a wrong split (say 60/40) fails every time.

#![forbid(unsafe_code)]

#[path = "support/ctl.rs"]
mod ctl;

use std::process::{Command, Stdio};
use std::time::Duration;

use ctl::{Ctl, EXE, metric_sum as sum};
use serde_json::Value;

/// `demo-app get URL --summary ...` from the `client` pod; the summary's JSON.
fn summary(ctl: &Ctl, url: &str, extra: &[&str]) -> Value {
    ctl.get_summary("shop", "client", url, extra)
}

fn count(v: &Value, field: &str, key: &str) -> u64 {
    v[field][key].as_u64().unwrap_or(0)
}

/// Whether `lo <= n <= hi`, with a message naming the figure.
fn within(what: &str, n: u64, lo: u64, hi: u64) {
    assert!(
        (lo..=hi).contains(&n),
        "{what}: {n} is outside [{lo}, {hi}]"
    );
}

/// The waypoint pod's address, from ztunnel's view of workloads.
fn waypoint_ip(ctl: &Ctl) -> String {
    let out = ctl.ok(&["ztunnel-config", "workloads", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    let list = v.as_array().cloned().unwrap_or_default();
    list.iter()
        .find(|w| {
            w["namespace"] == "shop"
                && w["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("waypoint"))
        })
        .and_then(|w| w["addresses"][0].as_str())
        .unwrap_or_else(|| panic!("no waypoint pod among {out}"))
        .to_string()
}

/// `/metrics` of a proxy at `ip`, read from the `scraper` pod (outside the mesh).
fn metrics_at(ctl: &Ctl, ip: &str) -> String {
    ctl.ok(&[
        "exec",
        "-n",
        "shop",
        "scraper",
        "--",
        "demo-app",
        "get",
        &format!("http://{ip}:15020/metrics"),
    ])
}

fn waypoint_metrics(ctl: &Ctl, ip: &str) -> String {
    metrics_at(ctl, ip)
}

/// The nodes' addresses (where each ztunnel serves its metrics).
fn node_ips(ctl: &Ctl) -> Vec<String> {
    let v: Value = serde_json::from_str(&ctl.ok(&["status", "-o", "json"])).expect("json");
    v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["ip"].as_str().expect("node ip").to_string())
        .collect()
}

/// Istio's standard labels, every one of which a dashboard may group by.
const STANDARD_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

#[test]
fn l7_features_through_the_waypoint() {
    let scratch = tempfile::tempdir().unwrap();
    let (ctl, dir) = Ctl::up_fixture(scratch.path(), "waypoint-e2e");

    // Ready once a request through the waypoint is answered by an endpoint.
    ctl.until(
        &[
            "exec",
            "-n",
            "shop",
            "client",
            "--",
            "demo-app",
            "get",
            "http://echo/",
            "--summary",
            "--by-header",
            "x-echo-version",
        ],
        Duration::from_secs(60),
        |out| {
            String::from_utf8_lossy(&out.stdout).contains("\"ok\":1")
                && !String::from_utf8_lossy(&out.stdout).contains("\"-\"")
        },
    );

    // Weighted split 70/30 over 1000 requests: sd = sqrt(1000 × 0.7 × 0.3) ≈ 14.5.
    let split = summary(
        &ctl,
        "http://echo/",
        &[
            "--count",
            "1000",
            "--concurrency",
            "8",
            "--by-header",
            "x-echo-version",
        ],
    );
    assert_eq!(count(&split, "status", "200"), 1000, "{split}");
    within(
        "requests to v1 (of 1000, weight 70)",
        count(&split, "by", "v1"),
        628,
        772,
    );
    assert_eq!(count(&split, "by", "v1") + count(&split, "by", "v2"), 1000);

    // Clean exchanges end clean: no client ztunnel logs an error for a connection to the
    // waypoint (the waypoint resets a finished request with NO_ERROR; that is no error).
    let (mut to_waypoint, mut with_error) = (0, Vec::new());
    for node in ["node-1", "node-2"] {
        let log = ctl.ok(&["logs", "--component", &format!("ztunnel-{node}")]);
        for line in log.lines().filter(|l| {
            l.contains("connection complete")
                && l.contains("direction=\"outbound\"")
                && l.contains("dst.workload=\"waypoint")
        }) {
            to_waypoint += 1;
            if line.contains(" error=") {
                with_error.push(line.to_string());
            }
        }
    }
    assert!(
        to_waypoint > 0,
        "no access line for a connection to the waypoint"
    );
    assert!(
        with_error.is_empty(),
        "{} of {to_waypoint} connections to the waypoint logged an error, e.g. {}",
        with_error.len(),
        with_error[0]
    );

    // A header match picks v2; a zero weight gets nothing.
    let header = summary(
        &ctl,
        "http://echo/",
        &[
            "--count",
            "30",
            "-H",
            "x-version: v2",
            "--by-header",
            "x-echo-version",
        ],
    );
    assert_eq!(count(&header, "by", "v2"), 30, "{header}");
    let zero = summary(
        &ctl,
        "http://echo/zero",
        &["--count", "100", "--by-header", "x-echo-version"],
    );
    assert_eq!(count(&zero, "by", "v1"), 100, "{zero}");

    // URL rewrite (ReplacePrefixMatch), request and response header modifiers.
    let rewritten = ctl.ok(&[
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "demo-app",
        "get",
        "-i",
        "http://echo/old/thing?q=1",
    ]);
    let lower = rewritten.to_ascii_lowercase();
    assert!(lower.contains("x-route: rewrite"), "{rewritten}");
    let body: Value = serde_json::from_str(rewritten.lines().last().unwrap()).expect("echo json");
    assert_eq!(body["path"], "/new/thing", "{body}");
    assert_eq!(body["query"], "q=1", "{body}");
    assert_eq!(body["headers"]["x-added"], "yes", "{body}");
    assert_eq!(body["version"], "v1");

    assert!(
        body["headers"]["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-") && t.len() == 55),
        "the waypoint starts a trace: {body}"
    );

    // A consumer route (HTTPRoute in `front`, parent shop/echo) applies to requests from
    // `front` only: its header is added there, and shop's own client never sees it.
    let from_front = ctl.get_echo("front", "client", "http://echo.shop/");
    assert_eq!(from_front["headers"]["x-consumer"], "front", "{from_front}");
    assert_eq!(from_front["version"], "v1", "{from_front}");
    let from_shop = summary(
        &ctl,
        "http://echo/",
        &["--count", "40", "--by-header", "x-echo-version"],
    );
    assert!(
        count(&from_shop, "by", "v2") > 0,
        "producer split still applies: {from_shop}"
    );
    let plain = ctl.get_echo("shop", "client", "http://echo/");
    assert!(plain["headers"].get("x-consumer").is_none(), "{plain}");

    // TCPRoute: each connection to the TCP port goes to a backend drawn 80/20. 400
    // connections (one per request): sd = sqrt(400 × 0.8 × 0.2) = 8; ±4 sd.
    let tcp = summary(
        &ctl,
        "http://echo-tcp:81/",
        &[
            "--count",
            "400",
            "--concurrency",
            "8",
            "--by-header",
            "x-echo-version",
        ],
    );
    assert_eq!(count(&tcp, "status", "200"), 400, "{tcp}");
    within(
        "TCP connections to v1 (of 400, weight 80)",
        count(&tcp, "by", "v1"),
        288,
        352,
    );
    assert_eq!(
        count(&tcp, "by", "v1") + count(&tcp, "by", "v2"),
        400,
        "{tcp}"
    );

    // HTTP/2 (prior knowledge) from the client is proxied as HTTP/2.
    let h2 = ctl.ok(&[
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "demo-app",
        "get",
        "--http2",
        "http://echo/zero",
    ]);
    let h2: Value = serde_json::from_str(h2.lines().last().unwrap()).expect("echo json");
    assert_eq!(h2["protocol"], "HTTP/2", "{h2}");

    // gRPC: a GRPCRoute method match, over HTTP/2 end to end.
    let grpc = ctl.ok(&[
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "demo-app",
        "get",
        "--http2",
        "-X",
        "POST",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-d",
        "x",
        "http://echo/demo.Echo/Get",
    ]);
    let grpc: Value = serde_json::from_str(grpc.lines().last().unwrap()).expect("echo json");
    assert_eq!(
        (grpc["version"].as_str(), grpc["protocol"].as_str()),
        (Some("v2"), Some("HTTP/2")),
        "{grpc}"
    );
    assert_eq!(
        grpc["headers"]["te"], "trailers",
        "te: trailers reaches gRPC servers"
    );

    // Route timeout: a 2 s answer on a route with a 500 ms timeout is a 504.
    let slow = summary(&ctl, "http://echo/delay/2000", &[]);
    assert_eq!(count(&slow, "status", "504"), 1, "{slow}");
    assert!(
        slow["latency_ms"]["max"].as_f64().unwrap() < 1500.0,
        "{slow}"
    );

    // Mirroring: v1 answers, v2 gets a copy.
    let mirrored = summary(
        &ctl,
        "http://echo/mirror/probe-7731",
        &["--by-header", "x-echo-version"],
    );
    assert_eq!(count(&mirrored, "by", "v1"), 1, "{mirrored}");
    ctl.until(
        &["logs", "-n", "shop", "echo-v2"],
        Duration::from_secs(10),
        |out| String::from_utf8_lossy(&out.stdout).contains("/mirror/probe-7731"),
    );

    // Redirect: 301 to the configured host, path and query kept.
    let redirect = ctl.ok(&[
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "demo-app",
        "get",
        "-i",
        "http://echo/redirect/x?y=2",
    ]);
    assert!(redirect.contains(" 301 "), "{redirect}");
    assert!(
        redirect
            .to_ascii_lowercase()
            .contains("location: http://example.com/redirect/x?y=2"),
        "{redirect}"
    );

    // L7 authorization: GET passes (above), POST is refused by the waypoint.
    let post = summary(&ctl, "http://echo/", &["-X", "POST", "-d", "hello"]);
    assert_eq!(count(&post, "status", "403"), 1, "{post}");
    let refused = ctl.run(&[
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "demo-app",
        "get",
        "-X",
        "POST",
        "http://echo/",
    ]);
    assert_eq!(refused.status.code(), Some(22));
    // The same rule attached by selector is enforced by ztunnel at L4: fail closed.
    let locked = ctl.run(&[
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "demo-app",
        "get",
        "http://locked/",
        "--timeout-ms",
        "3000",
    ]);
    assert_ne!(locked.status.code(), Some(0), "an L7 rule at L4 must deny");

    // Faults: 50 % abort with 503 (sd ≈ 10 over 400), 20 % delayed by 100 ms.
    let faults = summary(
        &ctl,
        "http://faulty/",
        &["--count", "400", "--concurrency", "8"],
    );
    within(
        "aborted (of 400, 50 %)",
        count(&faults, "status", "503"),
        150,
        250,
    );
    assert_eq!(
        count(&faults, "status", "503") + count(&faults, "status", "200"),
        400,
        "{faults}"
    );
    let p50 = faults["latency_ms"]["p50"].as_f64().unwrap();
    let p90 = faults["latency_ms"]["p90"].as_f64().unwrap();
    assert!(p50 < 100.0, "most requests are not delayed: p50 {p50} ms");
    assert!(p90 >= 100.0, "a fifth is delayed by 100 ms: p90 {p90} ms");

    // Retries hide an endpoint failing every other request.
    let retried = summary(&ctl, "http://flaky/", &["--count", "100"]);
    assert_eq!(count(&retried, "status", "200"), 100, "{retried}");

    // Outlier detection: two consecutive 5xx eject the bad endpoint for 3 s...
    let first = summary(
        &ctl,
        "http://backend/",
        &["--count", "20", "--by-header", "x-echo-version"],
    );
    assert!(count(&first, "status", "503") <= 2, "{first}");
    let ejected = summary(
        &ctl,
        "http://backend/",
        &["--count", "20", "--by-header", "x-echo-version"],
    );
    assert_eq!(count(&ejected, "by", "good"), 20, "{ejected}");
    // ...and it is brought back after the ejection time.
    std::thread::sleep(Duration::from_millis(3500));
    let back = summary(
        &ctl,
        "http://backend/",
        &["--count", "20", "--by-header", "x-echo-version"],
    );
    assert!(count(&back, "by", "bad") >= 1, "{back}");

    // Only `echo` (and its L7 neighbours) go through the waypoint; `plain` stays L4.
    let plain = summary(&ctl, "http://plain/", &["--count", "10"]);
    assert_eq!(count(&plain, "status", "200"), 10, "{plain}");
    let ip = waypoint_ip(&ctl);
    let metrics = waypoint_metrics(&ctl, &ip);
    let requests: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert!(
        requests.iter().any(|l| l.contains("reporter=\"waypoint\"")
            && l.contains("destination_service_name=\"echo\"")),
        "{metrics}"
    );
    assert!(
        !requests
            .iter()
            .any(|l| l.contains("destination_service_name=\"plain\"")),
        "plain must not go through the waypoint:\n{metrics}"
    );
    assert!(
        metrics.contains("istio_request_duration_milliseconds_bucket{"),
        "{metrics}"
    );

    // A TCP port behind the waypoint is relayed as bytes: no HTTP metrics, TCP ones instead.
    let tcp = summary(
        &ctl,
        "http://tcp-echo/",
        &["--count", "5", "--by-header", "x-echo-version"],
    );
    assert_eq!(count(&tcp, "by", "v1"), 5, "{tcp}");
    let wp = waypoint_metrics(&ctl, &ip);
    assert!(
        sum(
            &wp,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "waypoint"),
                ("destination_service_name", "tcp-echo")
            ]
        ) >= 5,
        "{wp}"
    );
    assert_eq!(
        sum(
            &wp,
            "istio_requests_total",
            &[("destination_service_name", "tcp-echo")]
        ),
        0,
        "TCP is not parsed as HTTP"
    );

    // Counters are exact: 23 requests through the waypoint to v1, 17 plain connections.
    let nodes = node_ips(&ctl);
    let ztunnels = |ctl: &Ctl| -> String {
        nodes
            .iter()
            .map(|ip| metrics_at(ctl, ip))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let echo_v1 = [
        ("reporter", "waypoint"),
        ("source_workload", "client"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/default",
        ),
        ("destination_workload", "echo-v1"),
        ("destination_service_name", "echo"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/shop/sa/default",
        ),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let plain_opened = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("destination_service_name", "plain"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let before_wp = sum(
        &waypoint_metrics(&ctl, &ip),
        "istio_requests_total",
        &echo_v1,
    );
    let before_zt = sum(
        &ztunnels(&ctl),
        "istio_tcp_connections_opened_total",
        &plain_opened,
    );
    summary(&ctl, "http://echo/zero", &["--count", "23"]);
    summary(&ctl, "http://plain/", &["--count", "17"]);
    let after = ctl.until(
        &[
            "exec",
            "-n",
            "shop",
            "scraper",
            "--",
            "demo-app",
            "get",
            &format!("http://{ip}:15020/metrics"),
        ],
        Duration::from_secs(10),
        |out| {
            sum(
                &String::from_utf8_lossy(&out.stdout),
                "istio_requests_total",
                &echo_v1,
            ) >= before_wp + 23
        },
    );
    let wp_after = String::from_utf8_lossy(&after.stdout).to_string();
    assert_eq!(
        sum(&wp_after, "istio_requests_total", &echo_v1),
        before_wp + 23
    );
    let zt_after = ztunnels(&ctl);
    assert_eq!(
        sum(
            &zt_after,
            "istio_tcp_connections_opened_total",
            &plain_opened
        ),
        before_zt + 17,
        "one connection per request, counted once by the client's ztunnel"
    );
    for (family, text) in [
        ("istio_requests_total", &wp_after),
        ("istio_tcp_connections_opened_total", &zt_after),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{family}{{")))
            .unwrap_or_else(|| panic!("no {family}"));
        for label in STANDARD_LABELS {
            assert!(
                line.contains(&format!("{label}=\"")),
                "{family} lacks {label}: {line}"
            );
        }
    }
    assert!(
        wp_after.contains("grpc_response_status=\""),
        "waypoint carries grpc_response_status"
    );

    // Circuit breaking (`pooled`: one connection, one request waiting, two requests a
    // connection). Six requests one after the other ride three connections, two each: the
    // echo sees three peers (one per upstream connection), each twice.
    let mut peers: Vec<String> = Vec::new();
    for _ in 0..6 {
        let out = ctl.ok(&[
            "exec",
            "-n",
            "shop",
            "client",
            "--",
            "demo-app",
            "get",
            "http://pooled/",
        ]);
        let body: Value = serde_json::from_str(out.trim()).expect("the echo's JSON");
        peers.push(body["peer"].as_str().expect("a peer").to_string());
    }
    let runs: Vec<&[String]> = peers.chunk_by(|a, b| a == b).collect();
    assert_eq!(
        runs.iter().map(|r| r.len()).collect::<Vec<_>>(),
        [2, 2, 2],
        "maxRequestsPerConnection 2: {peers:?}"
    );
    // Ten slow requests at once: one on the connection, one waiting for it, the rest refused
    // at once with 503 UO, which the waypoint's metrics count.
    let wp = waypoint_ip(&ctl);
    let uo_before = sum(
        &waypoint_metrics(&ctl, &wp),
        "istio_requests_total",
        &[
            ("destination_service_name", "pooled"),
            ("response_flags", "UO"),
        ],
    );
    let burst = summary(
        &ctl,
        "http://pooled/delay/500",
        &[
            "--count",
            "10",
            "--concurrency",
            "10",
            "--timeout-ms",
            "10000",
        ],
    );
    let (ok, refused) = (
        count(&burst, "status", "200"),
        count(&burst, "status", "503"),
    );
    assert_eq!(ok + refused, 10, "{burst}");
    assert!(
        ok >= 2,
        "the waiting request is served after the first: {burst}"
    );
    assert!(refused >= 1, "past one waiting, requests overflow: {burst}");
    let uo = sum(
        &waypoint_metrics(&ctl, &wp),
        "istio_requests_total",
        &[
            ("destination_service_name", "pooled"),
            ("response_flags", "UO"),
        ],
    ) - uo_before;
    assert_eq!(uo, refused, "every refusal is a 503 UO in the metrics");

    // Removing the label returns `flaky` to L4 (no retries: every other request fails),
    // live, while a slow request to `echo` through the waypoint keeps going.
    let slow = Command::new(EXE)
        .args([
            "exec",
            "-n",
            "shop",
            "client",
            "--",
            "demo-app",
            "get",
            "http://echo/delay/3000",
            "--timeout-ms",
            "10000",
        ])
        .env("AMBIENT_HOME", &ctl.home)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let services = std::fs::read_to_string(dir.join("services.yaml")).unwrap();
    let unlabelled = services.replace(
        "metadata: {name: flaky, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}",
        "metadata: {name: flaky, namespace: shop}",
    );
    assert_ne!(services, unlabelled);
    std::fs::write(dir.join("services.yaml"), unlabelled).unwrap();
    ctl.until(
        &[
            "exec",
            "-n",
            "shop",
            "client",
            "--",
            "demo-app",
            "get",
            "http://flaky/",
            "--summary",
            "--count",
            "10",
        ],
        Duration::from_secs(30),
        |out| String::from_utf8_lossy(&out.stdout).contains("\"503\":5"),
    );
    let slow = slow.wait_with_output().unwrap();
    assert!(
        slow.status.success(),
        "the slow request through the waypoint survived"
    );

    ctl.ok(&["down"]);
}
