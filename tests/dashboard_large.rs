//! The dashboard on a generated mesh of 50 services and 200 edges: five namespaces of ten
//! services in three tiers (front → mid → back) that also call into each other's namespaces,
//! two of the namespaces behind a waypoint, one service failing 20 % of its requests. Every
//! service is a real pod (`demo-app echo --call ...`) calling its upstreams once a second
//! through the ztunnels and waypoints.
//!
//! The page must stay readable at that size; what the test measures in the DOM Chromium
//! renders: one box per namespace holding exactly its nodes, boxes that do not overlap, no
//! two nodes closer than their size plus room for a name, a drawing shaped for a screen; and
//! the views that cut it down: grouped by namespace (five nodes, edges summed), one node in
//! focus (it and its neighbours), one namespace filtered. Screenshots of each go to
//! `<target>/dashboard-test/dashboard-large*.png`.

#![forbid(unsafe_code)]

#[path = "support/ctl.rs"]
mod ctl;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ctl::{Ctl, ensure_demo_app};
use e2e::browser::{attr, browse, chromium, dom_until, output_dir, tags_with, translation};
use e2e::loopback::{free_port, http_get};
use e2e::until;
use serde_json::Value;

const NAMESPACES: [&str; 5] = ["web", "shop", "payments", "catalog", "identity"];
/// Namespaces whose services are reached through their waypoint (HTTP signals on the edges).
const WITH_WAYPOINT: [&str; 2] = ["shop", "payments"];
/// Tiers and how many services each namespace has in them.
const TIERS: [(&str, usize); 3] = [("front", 2), ("mid", 4), ("back", 4)];
/// Fails every 5th request: its callers' edges are red.
const FAILING: &str = "payments/payments-back-2";
const PORT: u16 = 8080;
/// The node radius of a dense graph (view.js) and the least room for a name beside it.
const DENSE_R: f64 = 14.0;
const NAME_ROOM: f64 = 20.0;

/// `namespace/name` of service `i` of a tier in namespace number `k`.
fn service(k: usize, tier: &str, i: usize) -> String {
    let ns = NAMESPACES[k % NAMESPACES.len()];
    format!("{ns}/{ns}-{tier}-{i}")
}

/// The call graph, (caller, callee), 40 calls per namespace: fronts call every mid of their
/// namespace and two other namespaces' fronts; mids call every back and one other
/// namespace's front; backs call mids of two other namespaces.
fn call_graph() -> Vec<(String, String)> {
    let mut calls = Vec::new();
    for k in 0..NAMESPACES.len() {
        for f in 0..2 {
            let me = service(k, "front", f);
            for m in 0..4 {
                calls.push((me.clone(), service(k, "mid", m)));
            }
            calls.push((me.clone(), service(k + 1, "front", f)));
            calls.push((me, service(k + 2, "front", 1 - f)));
        }
        for m in 0..4 {
            let me = service(k, "mid", m);
            for b in 0..4 {
                calls.push((me.clone(), service(k, "back", b)));
            }
            calls.push((me, service(k + 1 + m, "front", m % 2)));
        }
        for b in 0..4 {
            let me = service(k, "back", b);
            calls.push((me.clone(), service(k + 2, "mid", b)));
            calls.push((me, service(k + 3, "mid", (b + 1) % 4)));
        }
    }
    calls
}

/// Writes the mesh's manifests: namespaces (two with a waypoint), and per service a
/// ServiceAccount, a Service and a pod calling its upstreams.
fn write_manifests(dir: &Path, calls: &[(String, String)]) -> PathBuf {
    let mut upstreams: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in calls {
        upstreams.entry(from).or_default().push(to);
    }
    let mut yaml = String::new();
    for ns in NAMESPACES {
        let waypoint = WITH_WAYPOINT.contains(&ns);
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    \
             istio.io/dataplane-mode: ambient\n"
        );
        if waypoint {
            let _ = write!(
                yaml,
                "    istio.io/use-waypoint: waypoint\n---\n\
                 apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  \
                 name: waypoint\n  namespace: {ns}\nspec:\n  gatewayClassName: istio-waypoint\n  \
                 listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n"
            );
        }
        yaml.push_str("---\n");
        for (tier, count) in TIERS {
            for i in 0..count {
                let id = format!("{ns}/{ns}-{tier}-{i}");
                let name = format!("{ns}-{tier}-{i}");
                let mut command = format!("[\"demo-app\", \"echo\", \"--port\", \"{PORT}\"");
                if id == FAILING {
                    command.push_str(", \"--fail-every\", \"5\"");
                }
                for to in upstreams.get(id.as_str()).into_iter().flatten() {
                    let (to_ns, to_name) = to.split_once('/').expect("namespace/name");
                    let _ = write!(
                        command,
                        ", \"--call\", \"http://{to_name}.{to_ns}.svc.cluster.local:{PORT}/\""
                    );
                }
                command.push(']');
                let _ = write!(
                    yaml,
                    "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  \
                     namespace: {ns}\n---\n\
                     apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
                     spec:\n  selector:\n    app: {name}\n  ports:\n  - name: http\n    \
                     port: {PORT}\n---\n\
                     apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  \
                     labels:\n    app: {name}\n    version: v1\nspec:\n  \
                     serviceAccountName: {name}\n  containers:\n  - name: app\n    \
                     image: demo-app\n    command: {command}\n---\n"
                );
            }
        }
    }
    let mesh = dir.join("large-mesh");
    std::fs::create_dir_all(&mesh).unwrap();
    std::fs::write(mesh.join("mesh.yaml"), yaml).unwrap();
    mesh
}

fn edge_id(from: &str, to: &str) -> String {
    format!("{from}->{to}")
}

/// The graph once every call of the generated mesh is an edge with traffic in the window,
/// through the waypoint where there is one, and the failing service's errors are counted.
fn graph_with_every_edge(dashboard: SocketAddr, calls: &[(String, String)]) -> Value {
    until(
        "every call an edge with traffic",
        Duration::from_secs(180),
        || {
            let (status, body) = http_get(dashboard, "/api/graph").map_err(|e| e.to_string())?;
            if status != 200 {
                return Err(format!("{status}: {body}"));
            }
            let graph: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let edges: BTreeMap<&str, &Value> = graph["edges"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| Some((e["id"].as_str()?, e)))
                .collect();
            let mut missing = 0;
            for (from, to) in calls {
                let Some(e) = edges.get(edge_id(from, to).as_str()) else {
                    missing += 1;
                    continue;
                };
                let s = &e["signals"];
                let busy = s["requests_per_second"].as_f64().unwrap_or(0.0) > 0.0
                    || s["bytes_received_per_second"].as_f64().unwrap_or(0.0) > 0.0;
                let to_ns = to.split_once('/').unwrap().0;
                let via_ok = !WITH_WAYPOINT.contains(&to_ns)
                    || e["via"].as_str() == Some(&format!("{to_ns}/waypoint"));
                let errors_ok = to != FAILING || s["error_rate"].as_f64().unwrap_or(0.0) > 0.05;
                if !(busy && via_ok && errors_ok) {
                    missing += 1;
                }
            }
            if missing > 0 {
                return Err(format!("{missing} of {} calls not drawn yet", calls.len()));
            }
            Ok(graph)
        },
    )
}

/// The opening tag of the graph's `<svg>`.
fn graph_tag(dom: &str) -> &str {
    tags_with(dom, "id")
        .into_iter()
        .find(|t| t.contains(" id=\"graph\""))
        .expect("the graph's svg")
}

fn num(tag: &str, name: &str) -> f64 {
    attr(tag, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {name} in {tag}"))
}

/// The DOM of the page at `fragment`, once it has drawn edges.
fn render(chromium: &Path, profile: &Path, base: &str, fragment: &str) -> String {
    dom_until(
        chromium,
        profile,
        &format!("{base}{fragment}"),
        Duration::from_secs(60),
        |dom| dom.contains("data-edge="),
    )
}

fn screenshot(chromium: &Path, profile: &Path, base: &str, fragment: &str, file: &str) -> PathBuf {
    let shot = output_dir().join(file);
    let _ = std::fs::remove_file(&shot);
    browse(
        chromium,
        profile,
        &format!("{base}{fragment}"),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1600,1000",
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    println!("screenshot: {}", shot.display());
    shot
}

/// Drawn nodes by id: (kind, classes, centre).
fn drawn_nodes(dom: &str) -> BTreeMap<String, (String, String, (f64, f64))> {
    tags_with(dom, "data-node")
        .into_iter()
        .map(|t| {
            (
                attr(t, "data-node").unwrap().to_string(),
                (
                    attr(t, "data-kind").unwrap().to_string(),
                    attr(t, "class").unwrap_or("").to_string(),
                    translation(t).unwrap_or_else(|| panic!("no position: {t}")),
                ),
            )
        })
        .collect()
}

/// Drawn edges by id (`>` unescaped): their opening tags.
fn drawn_edges(dom: &str) -> BTreeMap<String, &str> {
    tags_with(dom, "data-edge")
        .into_iter()
        .map(|t| (attr(t, "data-edge").unwrap().replace("&gt;", ">"), t))
        .collect()
}

#[test]
fn fifty_services_and_two_hundred_edges_stay_readable() {
    let Some(chromium) = chromium() else {
        return;
    };
    ensure_demo_app();
    let started = Instant::now();
    let calls = call_graph();
    let expected: BTreeSet<String> = calls.iter().map(|(f, t)| edge_id(f, t)).collect();
    assert_eq!(expected.len(), 200, "200 distinct calls");
    let services: BTreeSet<&str> = calls.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(services.len(), 50);

    let scratch = tempfile::tempdir().unwrap();
    let ctl = Ctl::new(scratch.path());
    let mesh = write_manifests(scratch.path(), &calls);
    ctl.ok(&["up", mesh.to_str().unwrap(), "--detach"]);
    let port = free_port();
    let _dashboard = ctl.spawn(&["dashboard", "--port", &port.to_string(), "--interval", "1s"]);
    let dashboard = SocketAddr::from(([127, 0, 0, 1], port));

    let graph = graph_with_every_edge(dashboard, &calls);
    let ids: BTreeSet<String> = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.symmetric_difference(&expected).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "the graph's edges are exactly the calls"
    );
    eprintln!("every call drawn after {:?}", started.elapsed());

    let base = format!("http://127.0.0.1:{port}/");
    let profile = scratch.path().join("chromium");

    // The whole mesh: dense, one box per namespace.
    let dom = render(&chromium, &profile, &base, "");
    let svg = graph_tag(&dom);
    assert!(
        attr(svg, "class").is_some_and(|c| c.split(' ').any(|c| c == "dense")),
        "drawn dense: {svg}"
    );
    let view_box: Vec<f64> = attr(svg, "viewBox")
        .expect("a viewBox")
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    let (width, height) = (view_box[2], view_box[3]);
    eprintln!("whole mesh drawn {width} × {height}");
    assert!(
        width <= 1700.0 && (1.2..=3.0).contains(&(width / height)),
        "a screen's shape and about its width, not a strip: {width} × {height}"
    );
    let nodes = drawn_nodes(&dom);
    assert_eq!(nodes.len(), 50, "{:?}", nodes.keys());
    assert!(nodes.values().all(|(kind, _, _)| kind == "workload"));
    let edges = drawn_edges(&dom);
    assert_eq!(
        edges.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every call drawn"
    );
    for (id, tag) in &edges {
        let class = attr(tag, "class").unwrap();
        let want = if id.ends_with(&format!("->{FAILING}")) {
            "bad"
        } else {
            "ok"
        };
        assert!(
            class.split(' ').any(|c| c == want),
            "{id} should be {want}: {tag}"
        );
    }
    let boxes: BTreeMap<&str, [f64; 4]> = tags_with(&dom, "data-box")
        .into_iter()
        .map(|t| {
            (
                attr(t, "data-box").unwrap(),
                [
                    num(t, "data-box-x"),
                    num(t, "data-box-y"),
                    num(t, "data-box-w"),
                    num(t, "data-box-h"),
                ],
            )
        })
        .collect();
    assert_eq!(
        boxes.keys().copied().collect::<BTreeSet<_>>(),
        NAMESPACES.into_iter().collect(),
        "one box per namespace"
    );
    for (id, (_, _, (x, y))) in &nodes {
        let ns = id.split_once('/').unwrap().0;
        let [bx, by, bw, bh] = boxes[ns];
        assert!(
            *x - DENSE_R >= bx
                && *x + DENSE_R <= bx + bw
                && *y - DENSE_R >= by
                && *y + DENSE_R <= by + bh,
            "{id} at ({x}, {y}) outside its namespace's box {:?}",
            boxes[ns]
        );
    }
    let boxes_list: Vec<_> = boxes.iter().collect();
    for (i, (a, [ax, ay, aw, ah])) in boxes_list.iter().enumerate() {
        for (b, [bx, by, bw, bh]) in &boxes_list[i + 1..] {
            let apart = ax + aw <= *bx || bx + bw <= *ax || ay + ah <= *by || by + bh <= *ay;
            assert!(apart, "boxes {a} and {b} overlap");
        }
    }
    let centres: Vec<(&String, (f64, f64))> =
        nodes.iter().map(|(id, (_, _, p))| (id, *p)).collect();
    let mut closest = f64::MAX;
    for (i, (a, (ax, ay))) in centres.iter().enumerate() {
        for (b, (bx, by)) in &centres[i + 1..] {
            let d = (ax - bx).hypot(ay - by);
            assert!(
                d >= 2.0 * DENSE_R + NAME_ROOM,
                "{a} and {b} are {d:.0} apart: too close to read"
            );
            closest = closest.min(d);
        }
    }
    eprintln!("closest two nodes: {closest:.0} apart");
    screenshot(&chromium, &profile, &base, "", "dashboard-large.png");

    // Grouped by namespace: five nodes, each edge the sum of the calls between two namespaces.
    let dom = render(&chromium, &profile, &base, "#group=namespace");
    let nodes = drawn_nodes(&dom);
    let want_nodes: BTreeSet<String> = NAMESPACES
        .iter()
        .map(|ns| format!("namespace:{ns}"))
        .collect();
    assert_eq!(nodes.keys().cloned().collect::<BTreeSet<_>>(), want_nodes);
    let mut between: BTreeMap<String, usize> = BTreeMap::new();
    for (from, to) in &calls {
        let ns = |s: &str| format!("namespace:{}", s.split_once('/').unwrap().0);
        *between
            .entry(format!("{}->{}", ns(from), ns(to)))
            .or_default() += 1;
    }
    let edges = drawn_edges(&dom);
    assert_eq!(
        edges.keys().cloned().collect::<BTreeSet<_>>(),
        between.keys().cloned().collect::<BTreeSet<_>>()
    );
    for (id, tag) in &edges {
        assert_eq!(
            num(tag, "data-members") as usize,
            between[id],
            "{id} sums its calls: {tag}"
        );
        let rate = |name| attr(tag, name).and_then(|v| v.parse::<f64>().ok());
        assert!(
            rate("data-rps").or(rate("data-bytes-per-second")) > Some(0.0),
            "{id} carries its calls' rate: {tag}"
        );
    }
    screenshot(
        &chromium,
        &profile,
        &base,
        "#group=namespace",
        "dashboard-large-namespaces.png",
    );

    // One node in focus: it and its neighbours, its edges lit.
    let focus = "payments/payments-mid-1";
    let dom = render(&chromium, &profile, &base, &format!("#focus={focus}"));
    let touching: BTreeSet<String> = calls
        .iter()
        .filter(|(f, t)| f == focus || t == focus)
        .map(|(f, t)| edge_id(f, t))
        .collect();
    let mut neighbours: BTreeSet<String> = calls
        .iter()
        .filter(|(f, t)| f == focus || t == focus)
        .flat_map(|(f, t)| [f.clone(), t.clone()])
        .collect();
    neighbours.insert(focus.to_string());
    let edges = drawn_edges(&dom);
    assert_eq!(edges.keys().cloned().collect::<BTreeSet<_>>(), touching);
    assert!(
        edges
            .values()
            .all(|t| attr(t, "class").unwrap().contains(" hl"))
    );
    let nodes = drawn_nodes(&dom);
    assert_eq!(nodes.keys().cloned().collect::<BTreeSet<_>>(), neighbours);
    assert!(nodes[focus].1.contains("focus"), "{:?}", nodes[focus]);
    screenshot(
        &chromium,
        &profile,
        &base,
        &format!("#focus={focus}"),
        "dashboard-large-focus.png",
    );

    // One namespace: its ten services, and whoever they call or are called by as context.
    let dom = render(&chromium, &profile, &base, "#ns=payments");
    let nodes = drawn_nodes(&dom);
    let edges = drawn_edges(&dom);
    let in_payments = |s: &str| s.starts_with("payments/");
    let want_edges: BTreeSet<String> = calls
        .iter()
        .filter(|(f, t)| in_payments(f) || in_payments(t))
        .map(|(f, t)| edge_id(f, t))
        .collect();
    assert_eq!(edges.keys().cloned().collect::<BTreeSet<_>>(), want_edges);
    for (id, (_, class, _)) in &nodes {
        assert_eq!(
            class.split(' ').any(|c| c == "context"),
            !in_payments(id),
            "{id}: {class}"
        );
    }
    assert_eq!(nodes.keys().filter(|id| in_payments(id)).count(), 10);

    // Two namespaces collapsed, the rest expanded.
    let dom = render(&chromium, &profile, &base, "#collapsed=catalog,identity");
    let kinds: Vec<String> = drawn_nodes(&dom).into_values().map(|(k, _, _)| k).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "namespace").count(), 2);
    assert_eq!(kinds.iter().filter(|k| *k == "workload").count(), 30);

    eprintln!("test took {:?}", started.elapsed());
    ctl.ok(&["down"]);
}
