//! Tracing end to end in the local runtime: the waypoint records one span per request and
//! exports it over OTLP/gRPC; `demo-app otlp-sink` (a pod outside the mesh) prints what it
//! receives, and the test reads that from the pod's log, as a user would.
//!
//! tests/fixtures/tracing: `client` → productpage → reviews, every service of `shop` through
//! one waypoint; the sink and a metrics `scraper` in `observability`, outside the mesh.
//! The waypoint reaches the sink by the Service name given to `ambientctl up
//! --otlp-endpoint`, resolved from its own xDS view.

#![forbid(unsafe_code)]

#[path = "support/ctl.rs"]
mod ctl;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ctl::{Ctl, ensure_demo_app, workspace};
use e2e::copy_dir;
use serde_json::Value;

/// The tests run one mesh at a time: the latency figures mean more on a quiet machine.
static ONE_MESH: Mutex<()> = Mutex::new(());

const SINK: &str = "http://otel-sink.observability:4317";
const PAGE: &str = "http://productpage:9080/productpage";

fn mesh(name: &str) -> (tempfile::TempDir, Ctl, std::path::PathBuf) {
    ensure_demo_app();
    let scratch = tempfile::tempdir().unwrap();
    let ctl = Ctl {
        home: scratch.path().join("home"),
    };
    let dir = scratch.path().join(name);
    copy_dir(&workspace().join("tests/fixtures/tracing"), &dir);
    (scratch, ctl, dir)
}

fn up(ctl: &Ctl, dir: &std::path::Path, otlp: Option<&str>) {
    let mut args = vec!["up", dir.to_str().unwrap(), "--detach", "--nodes", "2"];
    if let Some(endpoint) = otlp {
        args.extend(["--otlp-endpoint", endpoint]);
    }
    ctl.ok(&args);
    // Ready once the product page shows reviews (two hops through the waypoint).
    ctl.until(
        &[
            "exec", "-n", "shop", "client", "--", "demo-app", "get", PAGE,
        ],
        Duration::from_secs(60),
        |out| String::from_utf8_lossy(&out.stdout).contains("reviews-version: v1"),
    );
}

fn client_get(ctl: &Ctl, url: &str, headers: &[&str]) -> String {
    let mut args = vec!["exec", "-n", "shop", "client", "--", "demo-app", "get", url];
    for h in headers {
        args.extend(["-H", h]);
    }
    ctl.ok(&args)
}

/// What the sink printed so far (one JSON line each): spans and log records.
fn received(ctl: &Ctl) -> Vec<Value> {
    let out = ctl.ok(&["logs", "-n", "observability", "otel-sink"]);
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The spans the sink printed so far.
fn spans(ctl: &Ctl) -> Vec<Value> {
    received(ctl)
        .into_iter()
        .filter(|v| v["signal"] != "log")
        .collect()
}

/// The access log records the sink printed so far.
fn log_records(ctl: &Ctl) -> Vec<Value> {
    received(ctl)
        .into_iter()
        .filter(|v| v["signal"] == "log")
        .collect()
}

/// Waits until the sink holds at least `n` spans of `trace`; returns them.
fn spans_of(ctl: &Ctl, trace: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found: Vec<Value> = spans(ctl)
            .into_iter()
            .filter(|s| s["trace_id"] == trace)
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{n} spans of trace {trace} never reached the sink (got {found:?})"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn attr(span: &Value, key: &str) -> Value {
    let v = span["attributes"][key].clone();
    assert!(!v.is_null(), "span lacks {key}: {span}");
    v
}

/// The waypoint pod's address, from `ambientctl status`.
fn waypoint_ip(ctl: &Ctl) -> String {
    let v: Value = serde_json::from_str(&ctl.ok(&["status", "-o", "json"])).expect("json");
    v["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["waypoint"] == "shop/waypoint")
        .and_then(|p| p["ip"].as_str())
        .unwrap_or_else(|| panic!("no waypoint pod in {v}"))
        .to_string()
}

/// The waypoint's `/metrics`, read from the `scraper` pod (outside the mesh).
fn waypoint_metrics(ctl: &Ctl, ip: &str) -> String {
    ctl.ok(&[
        "exec",
        "-n",
        "observability",
        "scraper",
        "--",
        "demo-app",
        "get",
        &format!("http://{ip}:15020/metrics"),
    ])
}

/// Sum of the samples of `family` whose labels include every `want` pair.
fn sum(metrics: &str, family: &str, want: &[(&str, &str)]) -> u64 {
    let samples = proxy_core::exposition::parse(metrics).expect("Prometheus text");
    proxy_core::exposition::sum(&samples, family, want) as u64
}

#[test]
fn one_trace_across_two_services_reaches_an_otlp_receiver() {
    let _one = ONE_MESH.lock().unwrap_or_else(|e| e.into_inner());
    let (_scratch, ctl, dir) = mesh("shop");
    up(&ctl, &dir, Some(SINK));

    // The client starts a trace; productpage forwards the waypoint's traceparent to reviews.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let page = client_get(
        &ctl,
        PAGE,
        &[&format!("traceparent: 00-{trace}-{client_span}-01")],
    );
    assert!(page.contains("reviews-version: v1"), "{page}");
    let found = spans_of(&ctl, trace, 2);
    eprintln!("spans of {trace}:\n{found:#?}");
    assert_eq!(found.len(), 2, "one span per request: {found:?}");
    let named = |host: &str| {
        found
            .iter()
            .find(|s| s["name"] == format!("{host}.shop.svc.cluster.local:9080/*"))
            .unwrap_or_else(|| panic!("no span for {host}: {found:?}"))
    };
    let (pp, rv) = (named("productpage"), named("reviews"));
    assert_eq!(
        pp["parent_span_id"], client_span,
        "the caller's span is the parent"
    );
    assert_eq!(
        rv["parent_span_id"], pp["span_id"],
        "reviews' span is a child of productpage's"
    );
    assert_ne!(pp["span_id"], rv["span_id"]);
    for (span, path, src, dst) in [
        (pp, "/productpage", "client", "productpage"),
        (rv, "/reviews/0", "productpage", "reviews"),
    ] {
        assert_eq!(span["kind"], "server", "{span}");
        assert_eq!(span["service_name"], "waypoint.shop", "{span}");
        assert_eq!(span["status"], "unset", "{span}");
        assert_eq!(attr(span, "http.request.method"), "GET");
        assert_eq!(attr(span, "url.path"), path);
        assert_eq!(attr(span, "http.response.status_code"), 200);
        assert_eq!(attr(span, "server.address"), format!("{dst}:9080").as_str());
        assert_eq!(
            attr(span, "istio.source_principal"),
            format!("spiffe://cluster.local/ns/shop/sa/{src}").as_str()
        );
        assert_eq!(
            attr(span, "istio.destination_principal"),
            format!("spiffe://cluster.local/ns/shop/sa/{dst}").as_str()
        );
        assert!(attr(span, "istio.route").is_string());
        assert!(
            attr(span, "upstream.address")
                .as_str()
                .is_some_and(|a| a.starts_with("10.244.") && a.ends_with(":9080")),
            "{span}"
        );
        assert_eq!(attr(span, "istio.response_flags"), "-");
        assert_eq!(attr(span, "istio.namespace"), "shop");
        let (start, end) = (
            span["start_unix_nano"].as_u64().unwrap(),
            span["end_unix_nano"].as_u64().unwrap(),
        );
        assert!(start > 0 && start <= end, "{span}");
    }
    let t = |s: &Value, k: &str| s[k].as_u64().unwrap();
    assert!(
        t(pp, "start_unix_nano") <= t(rv, "start_unix_nano")
            && t(rv, "end_unix_nano") <= t(pp, "end_unix_nano"),
        "the reviews call happens within the product page request"
    );

    // tracestate and baggage pass through unchanged; the trace continues with a new span.
    let echoed = client_get(
        &ctl,
        "http://echo/",
        &[
            &format!("traceparent: 00-{trace}-{client_span}-01"),
            "tracestate: vendor=abc,other=x:y",
            "baggage: user=alice,tenant=7",
        ],
    );
    let echoed: Value = serde_json::from_str(echoed.lines().last().unwrap()).expect("echo json");
    let headers = &echoed["headers"];
    assert_eq!(headers["tracestate"], "vendor=abc,other=x:y", "{echoed}");
    assert_eq!(headers["baggage"], "user=alice,tenant=7", "{echoed}");
    let sent = headers["traceparent"].as_str().expect("traceparent");
    assert!(sent.starts_with(&format!("00-{trace}-")), "{sent}");
    assert!(!sent.contains(client_span), "a new span id: {sent}");
    // The waypoint's span for it carries the caller's tracestate.
    let echo_span = sent.split('-').nth(2).expect("span id").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let span = loop {
        if let Some(s) = spans(&ctl).into_iter().find(|s| s["span_id"] == echo_span) {
            break s;
        }
        assert!(Instant::now() < deadline, "span {echo_span} never arrived");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(span["trace_state"], "vendor=abc,other=x:y", "{span}");

    // Without a traceparent the waypoint starts the trace: a root span.
    let fresh = client_get(&ctl, "http://echo/", &[]);
    let fresh: Value = serde_json::from_str(fresh.lines().last().unwrap()).expect("echo json");
    let tp = fresh["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[3], "01", "sampled by default (--trace-sampling 100)");
    let root = spans_of(&ctl, parts[1], 1);
    assert_eq!(root[0]["span_id"], parts[2]);
    assert_eq!(root[0]["parent_span_id"], "", "a root span: {root:?}");
    assert_eq!(root[0]["name"], "echo.shop.svc.cluster.local:80/*");
    assert_eq!(
        attr(&root[0], "istio.destination_principal"),
        "spiffe://cluster.local/ns/shop/sa/default"
    );

    // A caller that decided not to sample is respected: no span, flag kept.
    let unsampled = "11111111111111111111111111111111";
    let quiet = client_get(
        &ctl,
        "http://echo/",
        &[&format!("traceparent: 00-{unsampled}-{client_span}-00")],
    );
    let quiet: Value = serde_json::from_str(quiet.lines().last().unwrap()).expect("echo json");
    assert!(
        quiet["headers"]["traceparent"]
            .as_str()
            .is_some_and(|t| t.ends_with("-00")),
        "{quiet}"
    );
    let marker = "22222222222222222222222222222222";
    client_get(
        &ctl,
        "http://echo/",
        &[&format!("traceparent: 00-{marker}-{client_span}-01")],
    );
    spans_of(&ctl, marker, 1);
    assert!(
        !spans(&ctl).iter().any(|s| s["trace_id"] == unsampled),
        "an unsampled request was exported"
    );

    let metrics = waypoint_metrics(&ctl, &waypoint_ip(&ctl));
    assert!(
        sum(&metrics, "ambient_spans_exported_total", &[]) >= 5,
        "{metrics}"
    );
    assert_eq!(
        sum(&metrics, "ambient_spans_dropped_total", &[]),
        0,
        "{metrics}"
    );
    ctl.ok(&["down"]);
}

/// Connections each node's ztunnel closed, from its own metrics.
fn closed_connections(ctl: &Ctl) -> Vec<(String, u64)> {
    ["node-1", "node-2"]
        .iter()
        .map(|node| {
            let (status, metrics) = ctl.control_get(&format!("/ztunnel/{node}/15020/metrics"));
            assert_eq!(status, 200, "{node}: {metrics}");
            let n = sum(&metrics, "istio_tcp_connections_closed_total", &[]);
            (node.to_string(), n)
        })
        .collect()
}

/// The ztunnel access log records of each node.
fn ztunnel_records(records: &[Value]) -> Vec<(String, Vec<Value>)> {
    ["node-1", "node-2"]
        .iter()
        .map(|node| {
            let of_node = records
                .iter()
                .filter(|r| r["service_name"] == "ztunnel" && r["node"] == *node)
                .cloned()
                .collect();
            (node.to_string(), of_node)
        })
        .collect()
}

#[test]
fn access_logs_reach_an_otlp_receiver_one_record_each() {
    let _one = ONE_MESH.lock().unwrap_or_else(|e| e.into_inner());
    let (_scratch, ctl, dir) = mesh("shop");
    up(&ctl, &dir, Some(SINK));

    // A quiet point: every connection closed so far has its record (or was dropped while the
    // sink was not up yet, before this point; nothing is retried).
    let baseline = until_stable(&ctl);
    eprintln!("baseline: {baseline:?}");

    // Known traffic: 5 product pages (client → productpage → reviews, through the waypoint),
    // each with its own trace.
    let traces: Vec<String> = (1..=5).map(|i| format!("{i:032x}")).collect();
    for trace in &traces {
        let page = client_get(
            &ctl,
            PAGE,
            &[&format!("traceparent: 00-{trace}-00f067aa0ba902b7-01")],
        );
        assert!(page.contains("reviews-version: v1"), "{page}");
    }
    let after = until_stable(&ctl);
    eprintln!("after: {after:?}");

    // ztunnel: exactly one record per connection closed since the baseline, on each node,
    // and no connection twice.
    let mut new_connections = 0;
    for ((node, (closed0, records0)), (_, (closed1, records1))) in baseline.iter().zip(&after) {
        assert_eq!(
            records1 - records0,
            closed1 - closed0,
            "{node}: records vs connections closed since the baseline"
        );
        new_connections += closed1 - closed0;
    }
    assert!(
        new_connections >= 10,
        "5 pages make connections: {new_connections}"
    );
    let records = log_records(&ctl);
    for (node, of_node) in ztunnel_records(&records) {
        let mut keys: Vec<String> = of_node
            .iter()
            .map(|r| {
                let a = &r["attributes"];
                format!("{} {} {}", a["src.addr"], a["dst.addr"], a["direction"])
            })
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "{node}: a connection logged twice");
        for r in &of_node {
            assert_eq!(r["body"], "connection complete", "{r}");
            assert!(r["attributes"]["src.addr"].is_string(), "{r}");
        }
    }

    // The waypoint: exactly one record per request (two per page), carrying the request's
    // trace and span ids, so each joins its span.
    let spans = spans(&ctl);
    for trace in &traces {
        let of_trace: Vec<&Value> = records
            .iter()
            .filter(|r| r["service_name"] == "waypoint.shop" && r["trace_id"] == *trace)
            .collect();
        assert_eq!(of_trace.len(), 2, "{trace}: {of_trace:?}");
        for r in of_trace {
            assert_eq!(r["body"], "request", "{r}");
            assert_eq!(r["severity"], "INFO", "{r}");
            let span_id = r["span_id"].as_str().unwrap();
            let span = spans
                .iter()
                .find(|s| s["trace_id"] == *trace && s["span_id"] == span_id)
                .unwrap_or_else(|| panic!("no span {span_id} for {r}"));
            assert_eq!(r["attributes"]["path"], attr(span, "url.path"), "{r}");
        }
    }
    ctl.ok(&["down"]);
}

/// Waits until, on every node, the ztunnel's closed connections and the sink's records of
/// them stop changing (two looks a few batch intervals apart agree); per node (closed,
/// records).
fn until_stable(ctl: &Ctl) -> Vec<(String, (u64, u64))> {
    let look = || -> Vec<(String, (u64, u64))> {
        let records = log_records(ctl);
        closed_connections(ctl)
            .into_iter()
            .zip(ztunnel_records(&records))
            .map(|((node, closed), (_, recs))| (node, (closed, recs.len() as u64)))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = look();
    loop {
        // The exporters send a batch at most a second after its first record.
        std::thread::sleep(Duration::from_millis(2500));
        let now = look();
        if now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "never quiet: {last:?} then {now:?}"
        );
        last = now;
    }
}

/// `demo-app get --summary` of `count` product page requests; the summary.
fn measure(ctl: &Ctl, count: u32) -> Value {
    let out = ctl.ok(&[
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "demo-app",
        "get",
        PAGE,
        "--summary",
        "--count",
        &count.to_string(),
        "--concurrency",
        "4",
    ]);
    let line = out.lines().last().expect("a summary line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("summary {line:?}: {e}"))
}

fn latency(v: &Value, q: &str) -> f64 {
    v["latency_ms"][q].as_f64().unwrap_or(f64::NAN)
}

#[test]
fn an_otlp_receiver_that_is_down_costs_spans_not_requests() {
    let _one = ONE_MESH.lock().unwrap_or_else(|e| e.into_inner());
    let (_scratch, ctl, dir) = mesh("shop");
    const N: u32 = 300;

    // Without tracing.
    up(&ctl, &dir, None);
    measure(&ctl, 50);
    let plain = measure(&ctl, N);
    assert_eq!(plain["status"]["200"], N, "{plain}");
    ctl.ok(&["down"]);

    // Exporting to a Service whose pod does not listen on the OTLP port.
    up(&ctl, &dir, Some("http://dead-sink.observability:4317"));
    measure(&ctl, 50);
    let traced = measure(&ctl, N);
    assert_eq!(
        traced["status"]["200"], N,
        "every request still succeeds: {traced}"
    );

    eprintln!(
        "product page latency over {N} requests (two waypoint hops each), ms:\n\
         {:<28} p50 {:>7.2}  p90 {:>7.2}  p99 {:>7.2}  max {:>7.2}\n\
         {:<28} p50 {:>7.2}  p90 {:>7.2}  p99 {:>7.2}  max {:>7.2}",
        "no tracing",
        latency(&plain, "p50"),
        latency(&plain, "p90"),
        latency(&plain, "p99"),
        latency(&plain, "max"),
        "OTLP receiver down",
        latency(&traced, "p50"),
        latency(&traced, "p90"),
        latency(&traced, "p99"),
        latency(&traced, "max"),
    );

    // The spans are counted as dropped on the waypoint, none as exported.
    let ip = waypoint_ip(&ctl);
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let m = waypoint_metrics(&ctl, &ip);
        if sum(&m, "ambient_spans_dropped_total", &[]) > 0 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let dropped = sum(&metrics, "ambient_spans_dropped_total", &[]);
    let failed = sum(
        &metrics,
        "ambient_spans_dropped_total",
        &[("reason", "export_failed")],
    );
    eprintln!(
        "spans dropped: {dropped} (export_failed {failed}, queue_full {})",
        sum(
            &metrics,
            "ambient_spans_dropped_total",
            &[("reason", "queue_full")]
        )
    );
    assert!(failed > 0, "{metrics}");
    assert_eq!(
        sum(&metrics, "ambient_spans_exported_total", &[]),
        0,
        "{metrics}"
    );
    ctl.ok(&["down"]);
}
