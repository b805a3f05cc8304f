//! `ambientctl dashboard` end to end: the bookinfo demo with a waypoint, traffic from the
//! `sleep` pod, the page rendered by a headless Chromium (Debian's `chromium`, which
//! `.ci/run` installs), and a proxy that is down.
//!
//! Without `chromium` in `$PATH` the browser checks fail (saying how to get it), unless
//! `AMBIENT_SKIP_BROWSER=1`. The large generated mesh is `dashboard_large.rs`.

#![forbid(unsafe_code)]

#[path = "support/ctl.rs"]
mod ctl;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ctl::{Ctl, EXE, ensure_demo_app, workspace};
use e2e::browser::{attr, browse, chromium, dom_until, edge_tag, output_dir};
use e2e::copy_dir;
use e2e::loopback::{free_port, http_get};
use serde_json::Value;

/// The call chain of the demo, as the graph's edge ids.
const CHAIN: [&str; 3] = [
    "bookinfo/sleep->bookinfo/productpage",
    "bookinfo/productpage->bookinfo/reviews",
    "bookinfo/reviews->bookinfo/ratings",
];

/// The bookinfo demo with its namespace's waypoint, and 20 requests through it.
fn demo(scratch: &Path) -> Ctl {
    ensure_demo_app();
    let ctl = Ctl {
        home: scratch.join("home"),
    };
    let dir = scratch.join("bookinfo");
    copy_dir(&workspace().join("examples/bookinfo"), &dir);
    ctl.ok(&["up", dir.to_str().unwrap(), "--detach"]);
    ctl.ok(&[
        "waypoint",
        "apply",
        "-n",
        "bookinfo",
        "--enroll-namespace",
        "--wait",
    ]);
    ctl.until(
        &[
            "exec",
            "-n",
            "bookinfo",
            "sleep",
            "--",
            "demo-app",
            "get",
            "http://productpage:9080/productpage",
            "--count",
            "20",
        ],
        Duration::from_secs(60),
        |out| out.status.success(),
    );
    ctl
}

#[test]
fn service_graph_in_a_browser() {
    let Some(chromium) = chromium() else {
        return;
    };
    let started = Instant::now();
    let scratch = tempfile::tempdir().unwrap();
    let ctl = demo(scratch.path());
    let port = free_port();
    let _dashboard = ctl.spawn(&["dashboard", "--port", &port.to_string(), "--interval", "1s"]);
    // Traffic while the page is looked at, so that the edges carry rates.
    let traffic = ctl.spawn(&[
        "exec",
        "-n",
        "bookinfo",
        "sleep",
        "--",
        "demo-app",
        "get",
        "http://productpage:9080/productpage",
        "--count",
        "600",
        "--interval-ms",
        "50",
    ]);
    let url = format!("http://127.0.0.1:{port}/");
    let profile = scratch.path().join("chromium");
    let dom = dom_until(&chromium, &profile, &url, Duration::from_secs(60), |dom| {
        CHAIN.iter().all(|id| {
            edge_tag(dom, id)
                .and_then(|(tag, _)| attr(tag, "data-rps"))
                .and_then(|rps| rps.parse::<f64>().ok())
                .is_some_and(|rps| rps > 0.0)
        })
    });
    for id in CHAIN {
        let (tag, body) = edge_tag(&dom, id).unwrap();
        assert!(tag.contains("data-mtls=\"true\""), "{id} not mTLS: {tag}");
        assert!(body.contains("class=\"lock\""), "{id} has no lock: {body}");
        assert!(tag.contains("data-protocol=\"http\""), "{tag}");
    }
    for node in [
        "bookinfo/sleep",
        "bookinfo/productpage",
        "bookinfo/reviews",
        "bookinfo/ratings",
    ] {
        assert!(dom.contains(&format!("data-node=\"{node}\"")), "{node}");
    }
    for proxy in ["ztunnel/node-1", "ztunnel/node-2"] {
        assert!(
            dom.contains(&format!("data-proxy=\"{proxy}\" data-reachable=\"true\"")),
            "{proxy} not shown reachable"
        );
    }
    assert!(
        dom.contains("data-workload=\"bookinfo/reviews-v2\""),
        "per-workload signals"
    );

    // The JSON the page draws from: rates, p99, certificates.
    let (status, body) = http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/api/graph").unwrap();
    assert_eq!(status, 200, "{body}");
    let graph: Value = serde_json::from_str(&body).unwrap();
    let edge = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == CHAIN[0])
        .unwrap_or_else(|| panic!("{graph:#}"));
    assert!(
        edge["signals"]["requests_per_second"].as_f64().unwrap() > 0.0,
        "{edge}"
    );
    assert!(edge["signals"]["p99_ms"].as_f64().is_some(), "{edge}");
    assert_eq!(
        edge["via"], "bookinfo/waypoint",
        "through the waypoint: {edge}"
    );
    assert!(
        graph["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |c| c["identity"] == "spiffe://cluster.local/ns/bookinfo/sa/sleep"
                    && c["expires_in_seconds"].as_i64().unwrap_or(0) > 3600
            ),
        "{graph:#}"
    );

    let shot = output_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &chromium,
        &profile,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,900",
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    drop(traffic);
    println!("screenshot: {}", shot.display());
    eprintln!(
        "screenshot: {} (test took {:?})",
        shot.display(),
        started.elapsed()
    );
    ctl.ok(&["down"]);
}

/// The pid of this mesh's ztunnel of `node`: found by its command line (`component ztunnel
/// --node-name NODE` with paths under this mesh's home).
fn ztunnel_pid(home: &Path, node: &str) -> Option<i32> {
    let home = home.display().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ztunnel = args
            .windows(2)
            .any(|w| w[0] == "component" && w[1] == "ztunnel");
        let on_node = args
            .windows(2)
            .any(|w| w[0] == "--node-name" && w[1] == node);
        if is_ztunnel && on_node && args.iter().any(|a| a.starts_with(&home)) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn an_unreachable_proxy_is_shown_and_the_rest_of_the_graph_stays() {
    let scratch = tempfile::tempdir().unwrap();
    let ctl = demo(scratch.path());
    let pid = ztunnel_pid(&ctl.home, "node-2").expect("node-2's ztunnel process");
    eprintln!("killing node-2's ztunnel (pid {pid})");
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let out = ctl.ok(&["dashboard", "--once-json", "--interval", "500ms"]);
    let graph: Value = serde_json::from_str(&out).expect("JSON");
    let proxies = graph["proxies"].as_array().unwrap();
    let by_id = |id: &str| {
        proxies
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("no proxy {id}: {graph:#}"))
    };
    let down = by_id("ztunnel/node-2");
    assert_eq!(down["reachable"], false, "{down}");
    assert!(
        down["error"].as_str().is_some_and(|e| !e.is_empty()),
        "the error is shown: {down}"
    );
    assert_eq!(by_id("ztunnel/node-1")["reachable"], true);
    assert!(
        proxies
            .iter()
            .any(|p| p["kind"] == "waypoint" && p["reachable"] == true),
        "{graph:#}"
    );
    let edges: Vec<&str> = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    for id in CHAIN {
        assert!(edges.contains(&id), "{id} still drawn: {edges:?}");
    }
    let first = &graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == CHAIN[0])
        .unwrap();
    assert_eq!(first["mtls"], true, "{first}");
    assert_eq!(first["via"], "bookinfo/waypoint", "{first}");

    // The page says so too.
    if let Some(chromium) = chromium() {
        let port = free_port();
        let _dashboard = ctl.spawn(&["dashboard", "--port", &port.to_string(), "--interval", "1s"]);
        let profile = scratch.path().join("chromium");
        let dom = dom_until(
            &chromium,
            &profile,
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(60),
            |dom| dom.contains("data-edge="),
        );
        assert!(
            dom.contains("data-proxy=\"ztunnel/node-2\" data-reachable=\"false\""),
            "{dom}"
        );
        assert!(dom.contains("data-unreachable=\"ztunnel/node-2\""), "{dom}");
        for id in CHAIN {
            assert!(edge_tag(&dom, id).is_some(), "{id} drawn");
        }
        let shot = output_dir().join("dashboard-unreachable.png");
        browse(
            &chromium,
            &profile,
            &format!("http://127.0.0.1:{port}/"),
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1400,900",
            ],
        );
        println!("screenshot: {}", shot.display());
    }
    ctl.ok(&["down"]);
}

#[test]
fn no_mesh_and_no_cluster_is_an_error() {
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new(EXE)
        .args(["dashboard", "--once-json", "--interval", "100ms"])
        .env("AMBIENT_HOME", scratch.path().join("home"))
        .env("KUBECONFIG", scratch.path().join("missing-kubeconfig"))
        .env("HOME", scratch.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no local mesh is running"), "{stderr}");
}
