//! Egress through a waypoint, end to end in the local runtime (`ambientctl up` on
//! tests/fixtures/egress-e2e): an HTTPS server outside the mesh, its certificate from a CA the
//! test makes; a ServiceEntry for it labelled `istio.io/use-waypoint`; a DestinationRule
//! originating TLS (`tls.mode: SIMPLE`) at the waypoint. A mesh pod speaking plain HTTP
//! reaches it as HTTPS through the waypoint, where an HTTPRoute on the ServiceEntry adds a
//! header, the access log and metrics show each request, and an AuthorizationPolicy
//! targeting the ServiceEntry denies what it names.

#![forbid(unsafe_code)]

#[path = "support/ctl.rs"]
mod ctl;

use std::path::Path;
use std::time::Duration;

use ctl::{Ctl, metric_sum};

const WAIT: Duration = Duration::from_secs(90);
const HOST: &str = "api.external.test";

/// A CA and a certificate it signed for [`HOST`], written to `dir`: the CA's path.
fn write_certificates(dir: &Path) -> String {
    let pki = proxy_core::test_pki::server_pki(&[HOST]);
    pki.write(dir, "api").display().to_string()
}

/// The HTTPS server outside the mesh.
fn external_server(certs: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: api, namespace: outside, labels: {{app: api}}}}
spec:
  containers:
  - name: api
    command: ["demo-app", "echo", "--port", "8443", "--name", "api", "--tls-cert", "{}", "--tls-key", "{}"]
"#,
        certs.join("api.pem").display(),
        certs.join("api-key.pem").display()
    )
}

/// The ServiceEntry (plain HTTP on port 80 for the app, HTTPS on 8443 at the endpoint), the
/// TLS origination and a route adding a header.
fn egress(endpoint: &str, ca: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
  namespace: shop
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8443}}]
  resolution: STATIC
  endpoints: [{{address: {endpoint}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api-tls, namespace: shop}}
spec:
  host: {HOST}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {{mode: SIMPLE, caCertificates: {ca}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: shop}}
spec:
  parentRefs: [{{kind: ServiceEntry, group: networking.istio.io, name: api}}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{add: [{{name: x-egress, value: waypoint}}]}}
    backendRefs: [{{kind: Hostname, group: networking.istio.io, name: {HOST}, port: 80}}]
"#
    )
}

const DENY_DELETE: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-no-delete, namespace: shop}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: api}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
"#;

/// `n` requests with `method` from the client: the count per status.
fn statuses(ctl: &Ctl, method: &str, n: u32) -> serde_json::Value {
    let summary = ctl.get_summary(
        "shop",
        "client",
        &format!("http://{HOST}/orders"),
        &["-X", method, "--count", &n.to_string()],
    );
    summary["status"].clone()
}

#[test]
fn plain_http_leaves_the_mesh_as_https_through_the_waypoint() {
    let scratch = tempfile::tempdir().unwrap();
    let certs = scratch.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = write_certificates(&certs);
    let (ctl, dir) = Ctl::up_fixture_with(scratch.path(), "egress-e2e", |dir| {
        std::fs::write(dir.join("outside.yaml"), external_server(&certs)).unwrap();
    });
    let api = ctl.workload("outside", |n| n == "api");
    let api_ip = api["addresses"][0]
        .as_str()
        .expect("an address")
        .to_string();
    std::fs::write(dir.join("egress.yaml"), egress(&api_ip, &ca)).unwrap();

    // Plain HTTP from the pod; the server saw TLS with the SNI name, and the route's header.
    let answer = {
        let out = ctl.until(
            &[
                "exec",
                "-n",
                "shop",
                "client",
                "--",
                "demo-app",
                "get",
                &format!("http://{HOST}/hello"),
            ],
            WAIT,
            |out| out.status.success() && String::from_utf8_lossy(&out.stdout).contains("x-egress"),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().last().expect("an answer").to_string();
        serde_json::from_str::<serde_json::Value>(&line).expect("an echo answer")
    };
    assert_eq!(answer["name"], "api", "{answer}");
    assert_eq!(answer["tls_server_name"], HOST, "{answer}");
    assert_eq!(answer["host"], HOST, "{answer}");
    assert_eq!(answer["headers"]["x-egress"], "waypoint", "{answer}");
    assert_eq!(answer["path"], "/hello");

    // Every request passes; the waypoint counts them under the ServiceEntry's host.
    assert_eq!(statuses(&ctl, "GET", 20)["200"], 20);
    let metrics = ctl.waypoint_metrics("shop");
    let served = metric_sum(
        &metrics,
        "istio_requests_total",
        &[("destination_service", HOST), ("response_code", "200")],
    );
    assert!(served >= 21, "{served} requests counted");

    // The access log names the host, the upstream at its HTTPS port and a clean outcome.
    let log = ctl.ok(&["logs", "-n", "shop", &ctl.waypoint_pod("shop")]);
    let upstream = format!("upstream={api_ip}:8443");
    let line = log
        .lines()
        .find(|l| l.contains("path=/hello") && l.contains(&upstream))
        .unwrap_or_else(|| panic!("no access line to {upstream}:\n{log}"));
    assert!(line.contains(&format!("authority={HOST}")), "{line}");
    assert!(
        line.contains("status=200") && line.contains(r#"flags="-""#),
        "{line}"
    );

    // A policy on the ServiceEntry: DELETE denied at the waypoint, GET still served.
    std::fs::write(dir.join("deny.yaml"), DENY_DELETE).unwrap();
    ctl.until(
        &[
            "exec",
            "-n",
            "shop",
            "client",
            "--",
            "demo-app",
            "get",
            "-X",
            "DELETE",
            "--summary",
            &format!("http://{HOST}/orders"),
        ],
        WAIT,
        |out| String::from_utf8_lossy(&out.stdout).contains("\"403\""),
    );
    assert_eq!(statuses(&ctl, "DELETE", 10)["403"], 10);
    assert_eq!(statuses(&ctl, "GET", 10)["200"], 10);

    // TLS asked for but unusable (the CA file is gone) fails closed: never sent in clear.
    std::fs::write(
        dir.join("egress.yaml"),
        egress(&api_ip, "/nonexistent/ca.pem"),
    )
    .unwrap();
    ctl.until(
        &[
            "exec",
            "-n",
            "shop",
            "client",
            "--",
            "demo-app",
            "get",
            "--summary",
            &format!("http://{HOST}/orders"),
        ],
        WAIT,
        |out| String::from_utf8_lossy(&out.stdout).contains("\"503\""),
    );
    let metrics = ctl.waypoint_metrics("shop");
    let refused = metric_sum(
        &metrics,
        "istio_requests_total",
        &[("destination_service", HOST), ("response_flags", "UF")],
    );
    assert!(refused >= 1, "{refused}");
}
