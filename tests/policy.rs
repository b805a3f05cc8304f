//! End to end with the controller in manifest-directory mode: configuration edits applied
//! live, L4 authorization, PeerAuthentication, controller restarts, bad input.

#![forbid(unsafe_code)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ambient_lab::hello::{ask, serve_hello};
use ambient_lab::http::connect_from;
use ambient_lab::manifest;
use ambient_lab::sandbox::run_test;
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const DENY_CLIENT: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-client
  namespace: default
spec:
  selector:
    matchLabels:
      app: server
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/client"]
"#;

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: default\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

/// A line-oriented connection kept open across configuration changes.
struct Line {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Line {
    async fn open(netns: &ztunnel::inpod::netns::Netns, dst: SocketAddr) -> std::io::Result<Self> {
        let (r, w) = connect_from(netns, dst).await?.into_split();
        Ok(Line {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    /// Sends a line and returns the answer ("" when the connection was closed).
    async fn say(&mut self, line: &str) -> std::io::Result<String> {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        let mut answer = String::new();
        self.reader.read_line(&mut answer).await?;
        Ok(answer)
    }

    /// Whether the peer closed (EOF or reset) within `timeout`.
    async fn closed_within(&mut self, timeout: Duration) -> bool {
        let mut buf = String::new();
        matches!(
            tokio::time::timeout(timeout, self.reader.read_line(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn answered(r: std::io::Result<String>, line: &str) -> bool {
    r.map(|a| a.contains(line)).unwrap_or(false)
}

#[test]
fn policy_edit_closes_live_connection() {
    run_test("policy_edit_closes_live_connection", |dir| async move {
        let (mesh, client, addr) = client_and_server(&dir).await?;
        let mut live = Line::open(&client, addr).await?;
        assert!(live.say("hello").await?.contains("hello"));

        mesh.write_manifest("policy.yaml", DENY_CLIENT)?;
        assert!(
            live.closed_within(Duration::from_secs(10)).await,
            "the live connection is closed by the new policy"
        );
        // New connections are refused: the HBONE CONNECT gets 401.
        eventually(Duration::from_secs(5), || async {
            let r = ask(&client, addr, "again").await;
            if answered(r, "again") {
                Err("still allowed".to_string())
            } else {
                Ok(())
            }
        })
        .await?;
        let b = mesh.metrics("node-b").await?;
        assert!(
            metric(
                &b,
                "istio_tcp_connections_opened_total",
                &[("reporter", "destination"), ("response_flags", "DENY")]
            ) >= 1.0
        );
        assert!(
            metric(
                &b,
                "istio_tcp_connections_failed_total",
                &[("reporter", "destination"), ("response_flags", "DENY")]
            ) >= 1.0,
            "a denied connection is a failed one"
        );
        let a = mesh.metrics("node-a").await?;
        assert!(
            metric(
                &a,
                "istio_tcp_connections_opened_total",
                &[("reporter", "source"), ("response_flags", "DENY")]
            ) >= 1.0,
            "the client side saw 401"
        );
        let log = mesh.log("ztunnel-node-b");
        assert!(
            log.contains("closing a live connection the new policy denies"),
            "{log}"
        );
        assert!(
            log.contains("denied by policy default/deny-client"),
            "{log}"
        );

        // Removing the policy opens the door again.
        mesh.remove_manifest("policy.yaml")?;
        eventually(Duration::from_secs(10), || async {
            if answered(ask(&client, addr, "back").await, "back") {
                Ok(())
            } else {
                Err("still denied".to_string())
            }
        })
        .await?;
        TestResult::Ok(())
    });
}

#[test]
fn new_pod_manifest_becomes_reachable() {
    run_test("new_pod_manifest_becomes_reachable", |dir| async move {
        let mut mesh = cluster(
            &dir,
            vec![PodSpec::new("client", "node-a")],
            vec![],
            &[],
            |_| {},
        )
        .await?;
        // A new pod appears: its namespace, its manifest, its capture.
        let ip = mesh.lab.add_pod("default", "late", "node-b")?.ip;
        let late = PodSpec::new("late", "node-b");
        mesh.write_manifest("pod-late.yaml", &late.manifest(&mesh.lab))?;
        mesh.enrol("default", "late", "late").await?;
        serve_hello(&mesh.lab.pod("default", "late").netns, 8080, "late".into())?;
        let client = mesh.lab.pod("default", "client").netns.clone();
        let addr = SocketAddr::new(IpAddr::V4(ip), 8080);
        // Until the client's ztunnel learns of the pod it is "outside the mesh" (plain TCP);
        // once the configuration arrives, the same call goes over HBONE with both identities.
        eventually(Duration::from_secs(10), || async {
            if !answered(ask(&client, addr, "hi").await, "hi") {
                return Err("not reachable yet".to_string());
            }
            let b = mesh.metrics("node-b").await.map_err(|e| e.to_string())?;
            let via_mesh = metric(
                &b,
                "istio_tcp_connections_opened_total",
                &[
                    ("destination_workload", "late"),
                    (
                        "source_principal",
                        "spiffe://cluster.local/ns/default/sa/client",
                    ),
                    ("connection_security_policy", "mutual_tls"),
                ],
            );
            if via_mesh >= 1.0 {
                Ok(())
            } else {
                Err("not over HBONE yet".to_string())
            }
        })
        .await?;
        // And a service for it, added later, resolves too.
        mesh.write_manifest(
            "late-svc.yaml",
            &manifest::service(
                "late",
                "default",
                "10.96.0.77".parse()?,
                &[("app", "late")],
                &[("http", 80, 8080)],
            ),
        )?;
        eventually(Duration::from_secs(10), || async {
            if answered(
                ask(&client, "10.96.0.77:80".parse().unwrap(), "via vip").await,
                "via vip",
            ) {
                Ok(())
            } else {
                Err("VIP not resolved yet".to_string())
            }
        })
        .await?;
        TestResult::Ok(())
    });
}

#[test]
fn strict_refuses_plaintext_permissive_accepts() {
    run_test(
        "strict_refuses_plaintext_permissive_accepts",
        |dir| async move {
            let mesh = cluster(
                &dir,
                vec![
                    PodSpec::new("client", "node-a"),
                    PodSpec::new("server", "node-b"),
                ],
                vec![],
                &["outside"],
                |_| {},
            )
            .await?;
            let server = mesh.lab.pod("default", "server");
            serve_hello(&server.netns, 8080, "server".into())?;
            let addr = SocketAddr::new(IpAddr::V4(server.ip), 8080);
            let outside = mesh.lab.externals["outside"].netns.clone();
            let client = mesh.lab.pod("default", "client").netns.clone();
            // Default (PERMISSIVE): plaintext from outside the mesh is accepted.
            assert!(answered(ask(&outside, addr, "plain").await, "plain"));

            mesh.write_manifest("peer-auth.yaml", &peer_authentication("STRICT"))?;
            // Refused *by policy*: an unanswered request alone could be a slow machine.
            eventually(Duration::from_secs(10), || async {
                if answered(ask(&outside, addr, "plain").await, "plain") {
                    return Err("plaintext still accepted".to_string());
                }
                let b = mesh.metrics("node-b").await.map_err(|e| e.to_string())?;
                let denied = metric(
                    &b,
                    "istio_tcp_connections_opened_total",
                    &[
                        ("response_flags", "DENY"),
                        ("connection_security_policy", "unknown"),
                    ],
                );
                if denied >= 1.0 {
                    Ok(())
                } else {
                    Err(format!("no DENY plaintext connection counted ({denied})"))
                }
            })
            .await?;
            assert!(
                answered(ask(&client, addr, "mtls").await, "mtls"),
                "mTLS still accepted"
            );

            mesh.write_manifest("peer-auth.yaml", &peer_authentication("PERMISSIVE"))?;
            eventually(Duration::from_secs(10), || async {
                if answered(ask(&outside, addr, "plain again").await, "plain again") {
                    Ok(())
                } else {
                    Err("plaintext still refused".to_string())
                }
            })
            .await?;
            TestResult::Ok(())
        },
    );
}

/// Fail closed: a pod is captured (its node agent told ztunnel) before the controller's
/// description of it arrives. In that window nothing is known of its policies (STRICT mTLS,
/// DENY rules), so plaintext to it is refused, counted (`NR`) and logged, as Istio's ztunnel
/// drops it; a described pod next to it is served as usual.
#[test]
fn plaintext_to_a_pod_not_yet_described_is_refused() {
    run_test(
        "plaintext_to_a_pod_not_yet_described_is_refused",
        |dir| async move {
            let mut mesh = cluster(
                &dir,
                vec![PodSpec::new("server", "node-b")],
                vec![],
                &["outside"],
                |_| {},
            )
            .await?;
            // Captured and served by node-b's ztunnel; described by no manifest.
            mesh.lab.add_pod("default", "ghost", "node-b")?;
            mesh.enrol("default", "ghost", "ghost").await?;
            let ghost = mesh.lab.pod("default", "ghost");
            serve_hello(&ghost.netns, 8080, "ghost".into())?;
            let ghost_addr = SocketAddr::new(IpAddr::V4(ghost.ip), 8080);
            let server = mesh.lab.pod("default", "server");
            serve_hello(&server.netns, 8080, "server".into())?;
            let server_addr = SocketAddr::new(IpAddr::V4(server.ip), 8080);
            let outside = mesh.lab.externals["outside"].netns.clone();

            assert!(
                answered(ask(&outside, server_addr, "plain").await, "plain"),
                "a described pod takes plaintext (PERMISSIVE)"
            );
            assert!(
                !answered(ask(&outside, ghost_addr, "plain").await, "plain"),
                "plaintext reached a pod nothing is known of"
            );
            let b = mesh.metrics("node-b").await?;
            assert!(
                metric(
                    &b,
                    "istio_tcp_connections_opened_total",
                    &[("reporter", "destination"), ("response_flags", "NR")]
                ) >= 1.0,
                "the refusal is counted"
            );
            assert!(
                mesh.log("ztunnel-node-b")
                    .contains("the control plane has not described this pod yet"),
                "the refusal is logged with its reason"
            );
            TestResult::Ok(())
        },
    );
}

#[test]
fn controller_restart_resyncs_without_dropping_connections() {
    run_test(
        "controller_restart_resyncs_without_dropping_connections",
        |dir| async move {
            let (mut mesh, client, addr) = client_and_server(&dir).await?;
            let mut live = Line::open(&client, addr).await?;
            assert!(live.say("one").await?.contains("one"));

            mesh.kill_controller();
            assert!(
                answered(ask(&client, addr, "while away").await, "while away"),
                "new connections while the controller is away"
            );
            assert!(live.say("two").await?.contains("two"));

            mesh.restart_controller().await?;
            eventually(Duration::from_secs(20), || async {
                let n = mesh
                    .log("ztunnel-node-a")
                    .matches("xDS stream open")
                    .count();
                if n >= 2 {
                    Ok(())
                } else {
                    Err(format!("{n} xDS streams opened"))
                }
            })
            .await?;
            assert!(
                live.say("three").await?.contains("three"),
                "the live connection survived the resync"
            );
            // The restarted controller's pushes are applied.
            mesh.write_manifest("policy.yaml", DENY_CLIENT)?;
            assert!(
                live.closed_within(Duration::from_secs(10)).await,
                "a new policy still reaches ztunnel"
            );
            TestResult::Ok(())
        },
    );
}

#[test]
fn bad_manifests_are_reported_and_the_rest_unaffected() {
    run_test(
        "bad_manifests_are_reported_and_the_rest_unaffected",
        |dir| async move {
            let (mesh, client, addr) = client_and_server(&dir).await?;
            assert!(answered(ask(&client, addr, "before").await, "before"));

            mesh.write_manifest(
                "broken.yaml",
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: a: b\n",
            )?;
            // A deny-all policy with a typo: were it applied, traffic would stop.
            mesh.write_manifest(
            "typo-policy.yaml",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: typo\n  namespace: default\nspec:\n  action: DENY\n  rulez:\n  - {}\n",
        )?;
            mesh.write_manifest(
            "clash.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: clash\n  namespace: default\nspec:\n  clusterIP: 10.96.0.99\n  selector: {app: server}\n  ports:\n  - {name: a, port: 80}\n  - {name: b, port: 80}\n",
        )?;
            // And one good new object in the same batch.
            mesh.write_manifest(
                "good.yaml",
                &manifest::service(
                    "good",
                    "default",
                    "10.96.0.88".parse()?,
                    &[("app", "server")],
                    &[("http", 80, 8080)],
                ),
            )?;
            let diagnostics = eventually(Duration::from_secs(10), || async {
                let body = mesh
                    .controller_get("/debug/diagnostics")
                    .await
                    .map_err(|e| e.to_string())?;
                let v: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| e.to_string())?;
                let m = v["manifests"].as_array().cloned().unwrap_or_default();
                if m.iter().filter(|d| d["severity"] == "error").count() >= 3 {
                    Ok(m)
                } else {
                    Err(format!("{m:?}"))
                }
            })
            .await?;
            let find = |file: &str| {
                diagnostics
                    .iter()
                    .find(|d| d["file"].as_str().is_some_and(|f| f.ends_with(file)))
                    .unwrap_or_else(|| panic!("no diagnostic for {file}: {diagnostics:?}"))
                    .clone()
            };
            let broken = find("broken.yaml");
            assert!(
                broken["message"].as_str().unwrap().contains("YAML syntax"),
                "{broken}"
            );
            assert_eq!(broken["line"], 4);
            let typo = find("typo-policy.yaml");
            assert!(
                typo["message"]
                    .as_str()
                    .unwrap()
                    .contains("unknown field `spec.rulez`"),
                "{typo}"
            );
            assert_eq!(typo["line"], 8);
            let clash = find("clash.yaml");
            assert!(
                clash["message"]
                    .as_str()
                    .unwrap()
                    .contains("port 80/TCP is declared twice"),
                "{clash}"
            );
            // The controller log says the same.
            let log = mesh.log("controller");
            assert!(log.contains("typo-policy.yaml:8"), "{log}");

            // The rest is unaffected: traffic flows (the typo'd DENY was not applied) and the good
            // service resolves.
            eventually(Duration::from_secs(10), || async {
                if answered(
                    ask(&client, "10.96.0.88:80".parse().unwrap(), "good").await,
                    "good",
                ) {
                    Ok(())
                } else {
                    Err("good service not pushed".to_string())
                }
            })
            .await?;
            assert!(answered(ask(&client, addr, "after").await, "after"));
            TestResult::Ok(())
        },
    );
}
