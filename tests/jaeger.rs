//! The waypoint's spans in a real tracing backend: Jaeger (its all-in-one program, in-memory
//! storage, built from its Go module by `tools/build.sh`) runs as a pod of the local mesh,
//! outside it, and the test reads the two-hop trace back through Jaeger's query API: over
//! OTLP/gRPC, over OTLP/HTTP, and over OTLP/HTTP with TLS to the collector.
//!
//! tests/fixtures/tracing: `client` → productpage → reviews, every service of `shop` through
//! one waypoint.

#![forbid(unsafe_code)]

#[path = "support/ctl.rs"]
mod ctl;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ctl::{Ctl, ensure_demo_app, workspace};
use e2e::copy_dir;
use e2e::until;
use serde_json::Value;

const PAGE: &str = "http://productpage:9080/productpage";

/// One mesh (and one Jaeger) at a time: the machine has two cores.
static ONE_MESH: Mutex<()> = Mutex::new(());

/// Jaeger, from `tools/build.sh`; panics saying how to get it.
fn jaeger_binary() -> PathBuf {
    let path = ambient_lab::kube::tools_dir().join("bin/jaeger");
    assert!(
        path.is_file(),
        "{} missing: run tools/build.sh (it builds Jaeger from its Go module)",
        path.display()
    );
    path
}

/// A CA and a certificate for the Jaeger Service's names, written into `dir`: the CA's path.
fn collector_tls(dir: &Path) -> PathBuf {
    let pki = proxy_core::test_pki::server_pki(&[
        "jaeger.observability",
        "jaeger.observability.svc",
        "jaeger.observability.svc.cluster.local",
    ]);
    pki.write(dir, "collector")
}

/// Jaeger's configuration: OTLP in plaintext (4317, 4318) and with TLS (14317, 14318), one
/// in-memory store, the query API on 16686.
fn jaeger_config(tls_dir: &Path) -> String {
    let cert = tls_dir.join("collector.pem");
    let key = tls_dir.join("collector-key.pem");
    let tls = format!(
        "tls: {{cert_file: {}, key_file: {}}}",
        cert.display(),
        key.display()
    );
    format!(
        "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp, otlp/tls]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
extensions:
  jaeger_storage:
    backends:
      memory:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memory
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 0.0.0.0:4317}}
      http: {{endpoint: 0.0.0.0:4318}}
  otlp/tls:
    protocols:
      grpc:
        endpoint: 0.0.0.0:14317
        {tls}
      http:
        endpoint: 0.0.0.0:14318
        {tls}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memory
"
    )
}

/// The Jaeger pod and its Service, outside the mesh.
fn jaeger_manifest(jaeger: &Path, config: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: jaeger, namespace: observability}}
spec:
  selector: {{app: jaeger}}
  ports:
  - {{name: grpc-otlp, port: 4317, appProtocol: grpc}}
  - {{name: http-otlp, port: 4318}}
  - {{name: grpc-otlp-tls, port: 14317}}
  - {{name: https-otlp, port: 14318}}
  - {{name: http-query, port: 16686}}
---
apiVersion: v1
kind: Pod
metadata: {{name: jaeger, namespace: observability, labels: {{app: jaeger}}}}
spec:
  containers:
  - name: jaeger
    command: [\"{}\", \"--config\", \"{}\"]
",
        jaeger.display(),
        config.display()
    )
}

/// Jaeger's query API, reached in the Jaeger pod through the control socket.
fn jaeger_api(ctl: &Ctl, path: &str) -> (u16, String) {
    ctl.control_get(&format!("/pod/observability/jaeger/16686{path}"))
}

/// One mesh exporting to Jaeger with `otlp` flags; a trace sent through two hops is read
/// back from Jaeger.
fn two_hops_reach_jaeger(name: &str, otlp: &[&str], trace: &str) {
    let _one = ONE_MESH.lock().unwrap_or_else(|e| e.into_inner());
    ensure_demo_app();
    let jaeger = jaeger_binary();
    let scratch = tempfile::tempdir().unwrap();
    let ctl = Ctl::new(scratch.path());
    let dir = scratch.path().join(name);
    copy_dir(&workspace().join("tests/fixtures/tracing"), &dir);
    let tls_dir = scratch.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let ca = collector_tls(&tls_dir);
    let config = scratch.path().join("jaeger.yaml");
    std::fs::write(&config, jaeger_config(&tls_dir)).unwrap();
    std::fs::write(dir.join("jaeger.yaml"), jaeger_manifest(&jaeger, &config)).unwrap();

    let mut args = vec!["up", dir.to_str().unwrap(), "--detach"];
    args.extend_from_slice(otlp);
    let ca_arg = ca.display().to_string();
    if otlp.iter().any(|a| a.starts_with("https://")) {
        args.extend(["--otlp-ca-cert", &ca_arg]);
    }
    ctl.ok(&args);
    until(
        "Jaeger's query API",
        Duration::from_secs(60),
        || match jaeger_api(&ctl, "/api/services") {
            (200, body) => Ok(body),
            other => Err(format!("{other:?}")),
        },
    );
    // Ready once the product page shows reviews (two hops through the waypoint).
    ctl.until(
        &[
            "exec", "-n", "shop", "client", "--", "demo-app", "get", PAGE,
        ],
        Duration::from_secs(60),
        |out| String::from_utf8_lossy(&out.stdout).contains("reviews-version: v1"),
    );

    let client_span = "00f067aa0ba902b7";
    let page = ctl.ok(&[
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "demo-app",
        "get",
        PAGE,
        "-H",
        &format!("traceparent: 00-{trace}-{client_span}-01"),
    ]);
    assert!(page.contains("reviews-version: v1"), "{page}");

    let found = until(
        "both spans of the trace in Jaeger",
        Duration::from_secs(30),
        || {
            let (status, body) = jaeger_api(&ctl, &format!("/api/traces/{trace}"));
            if status != 200 {
                return Err(format!("{status} {body}"));
            }
            let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let t = v["data"][0].clone();
            let n = t["spans"].as_array().map_or(0, Vec::len);
            (n >= 2).then_some(t).ok_or(format!("{n} spans: {body}"))
        },
    );
    eprintln!("{found:#}");
    let spans = found["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "one span per request: {spans:?}");
    let named = |host: &str| {
        spans
            .iter()
            .find(|s| s["operationName"] == format!("{host}.shop.svc.cluster.local:9080/*"))
            .unwrap_or_else(|| panic!("no span for {host}: {spans:?}"))
    };
    let (pp, rv) = (named("productpage"), named("reviews"));
    let parent = |s: &Value| -> Vec<String> {
        s["references"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["refType"] == "CHILD_OF" && r["traceID"] == trace)
            .filter_map(|r| r["spanID"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(parent(pp), [client_span], "the caller's span is the parent");
    assert_eq!(
        parent(rv),
        [pp["spanID"].as_str().unwrap()],
        "reviews' span is a child of productpage's"
    );
    for span in [pp, rv] {
        let process = &found["processes"][span["processID"].as_str().unwrap()];
        assert_eq!(process["serviceName"], "waypoint.shop", "{process}");
        let tag = |k: &str| {
            span["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["key"] == k)
                .map(|t| t["value"].clone())
                .unwrap_or_else(|| panic!("no tag {k}: {span}"))
        };
        assert_eq!(tag("http.response.status_code"), 200);
        assert_eq!(tag("istio.namespace"), "shop");
        assert_eq!(tag("span.kind"), "server");
    }
    ctl.ok(&["down"]);
}

#[test]
fn a_two_hop_trace_in_jaeger_over_otlp_grpc() {
    two_hops_reach_jaeger(
        "grpc",
        &["--otlp-endpoint", "http://jaeger.observability:4317"],
        "4bf92f3577b34da6a3ce929d0e0e4736",
    );
}

#[test]
fn a_two_hop_trace_in_jaeger_over_otlp_http() {
    two_hops_reach_jaeger(
        "http",
        &[
            "--otlp-endpoint",
            "http://jaeger.observability:4318",
            "--otlp-protocol",
            "http/protobuf",
        ],
        "5af92f3577b34da6a3ce929d0e0e4737",
    );
}

#[test]
fn a_two_hop_trace_in_jaeger_over_otlp_http_with_tls() {
    two_hops_reach_jaeger(
        "https",
        &[
            "--otlp-endpoint",
            "https://jaeger.observability.svc.cluster.local:14318",
            "--otlp-protocol",
            "http/protobuf",
        ],
        "6bf92f3577b34da6a3ce929d0e0e4738",
    );
}
