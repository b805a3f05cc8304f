//! Waypoints in Kubernetes, against the fake API server over real HTTP: the controller's
//! deployer creates a waypoint Gateway's ServiceAccount, Service and Deployment (owned by the
//! Gateway), writes the Gateway's status (Accepted, then Programmed with the address once a
//! waypoint pod runs and the Service has a cluster IP), lets the waypoint obtain its own
//! certificate and no other, and leaves deleted Gateways alone. `ambientctl waypoint
//! apply|list|status|delete --kubeconfig` work against the same server.
//!
//! The fake server allocates nothing and collects no garbage: the test plays the kubelet
//! (a Running pod), the IP allocator (the cluster IP) and the garbage collector.

#![forbid(unsafe_code)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use ambient_controller::index::IndexConfig;
use ambient_controller::push::Debounce;
use ambient_controller::server::{ControllerConfig, SourceConfig, WaypointDeployment};
use ambient_lab::sandbox::run_test;
use ambient_proto::identity::Identity;
use clap::Parser;
use common::TestResult;
use fake_apiserver::FakeApiServer;
use proxy_core::control_plane::ControlPlane;
use proxy_core::identity::ca_client::CaClient;
use proxy_core::identity::{CertificateSource, FetchError};
use serde_json::{Value, json};

const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";

async fn ambientctl(args: &[&str]) -> Output {
    tokio::process::Command::new(common::EXE)
        .args(args)
        .output()
        .await
        .expect("running ambientctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn gateway(name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"gatewayClassName": "istio-waypoint",
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    })
}

/// The condition `kind` of a Gateway's status: (status, reason).
fn condition(gw: &Value, kind: &str) -> Option<(String, String)> {
    gw["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// The object, once it exists.
async fn object(api: &FakeApiServer, kind: &str, name: &str) -> Result<Value, String> {
    common::eventually(Duration::from_secs(15), || async {
        api.get(kind, "shop", name)
            .ok_or_else(|| format!("no {kind} shop/{name}"))
    })
    .await
}

/// Checks the deployed objects of Gateway `name` (uid `uid`).
fn check_deployed(api: &FakeApiServer, name: &str, uid: &str, root: &str) -> TestResult {
    for kind in ["ServiceAccount", "Service", "Deployment"] {
        let o = api.get(kind, "shop", name).ok_or(format!("no {kind}"))?;
        let owner = &o["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Gateway", "{kind}");
        assert_eq!(owner["name"], name, "{kind}");
        assert_eq!(owner["uid"], uid, "{kind}");
        assert_eq!(owner["controller"], true, "{kind}");
        assert_eq!(o["metadata"]["labels"][GATEWAY_NAME], name, "{kind}");
        assert_eq!(
            o["metadata"]["managedFields"][0]["manager"], "ambient-controller",
            "{kind}"
        );
    }
    let svc = api.get("Service", "shop", name).unwrap();
    assert_eq!(svc["spec"]["selector"], json!({GATEWAY_NAME: name}));
    let ports = svc["spec"]["ports"].as_array().unwrap();
    assert!(ports.iter().any(|p| p["port"] == 15021));
    assert!(
        ports
            .iter()
            .any(|p| p["port"] == 15008 && p["appProtocol"] == "hbone")
    );

    let dep = api.get("Deployment", "shop", name).unwrap();
    assert_eq!(dep["spec"]["replicas"], 1);
    let template = &dep["spec"]["template"];
    assert_eq!(template["metadata"]["labels"][GATEWAY_NAME], name);
    assert_eq!(
        template["metadata"]["labels"]["istio.io/dataplane-mode"],
        "none"
    );
    let pod = &template["spec"];
    assert_eq!(pod["serviceAccountName"], name);
    let c = &pod["containers"][0];
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for v in ["NODE_NAME", "POD_IP", "POD_NAME"] {
        assert!(env.contains(&v), "{v} from the downward API");
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 15021);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
    // The arguments are the waypoint's own flags, once the kubelet expands the variables.
    let args: Vec<String> = serde_json::from_value(c["args"].clone())?;
    let args = args.iter().map(|a| {
        a.replace("$(NODE_NAME)", "node-a")
            .replace("$(POD_IP)", "10.244.1.9")
    });
    let parsed =
        waypoint::cli::Args::try_parse_from(std::iter::once("waypoint".into()).chain(args))?;
    assert_eq!(parsed.gateway, format!("shop/{name}"));
    assert_eq!(parsed.service_account.as_deref(), Some(name));
    assert_eq!(
        parsed.control_plane.controller_address,
        "https://ambient-controller.istio-system.svc:15012"
    );
    assert_eq!(parsed.instance_ip, "10.244.1.9");
    let volumes = pod["volumes"].as_array().unwrap();
    let token = volumes
        .iter()
        .find_map(|v| v["projected"]["sources"][0]["serviceAccountToken"].as_object())
        .ok_or("no projected token")?;
    assert_eq!(token["audience"], "ambient-ca");
    assert!(
        parsed
            .control_plane
            .token_file
            .ends_with(token["path"].as_str().unwrap())
    );
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"] == "ambient-ca-root")
    );
    let cm = api
        .get("ConfigMap", "shop", "ambient-ca-root")
        .ok_or("no CA root ConfigMap in the waypoint's namespace")?;
    assert_eq!(cm["data"]["root-cert.pem"], root);
    Ok(())
}

fn write(dir: &Path, name: &str, content: &str) -> std::io::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, content)?;
    Ok(path.display().to_string())
}

#[test]
fn kubernetes_waypoint_deployment_status_and_cli() {
    run_test(
        "kubernetes_waypoint_deployment_status_and_cli",
        |dir| async move {
            ztunnel::agent::rtnl::Rtnl::open()?.set_up("lo", None)?;
            let api = FakeApiServer::start().await?;
            let kubeconfig = write(&dir, "kubeconfig", &api.kubeconfig())?;
            api.apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
            );

            let config = ControllerConfig {
                grpc_addr: "127.0.0.1:15012".parse()?,
                monitoring_addr: "127.0.0.1:15014".parse()?,
                ca_dir: dir.join("ca"),
                source: SourceConfig::Kubernetes {
                    kubeconfig: Some(kubeconfig.clone().into()),
                    ztunnel_accounts: vec!["istio-system/ztunnel".into()],
                },
                index: IndexConfig::default(),
                debounce: Debounce {
                    quiet: Duration::from_millis(20),
                    max_delay: Duration::from_millis(200),
                },
                workload_ttl: Duration::from_secs(3600),
            };
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle();
            tokio::spawn(ambient_controller::server::run_with(
                config,
                WaypointDeployment::default(),
                handle,
                std::future::pending(),
            ));
            let root = common::eventually(Duration::from_secs(10), || async {
                std::fs::read_to_string(dir.join("ca").join("root-cert.pem"))
                    .map_err(|e| e.to_string())
            })
            .await?;

            // A waypoint Gateway: its objects appear, owned by it.
            api.apply(gateway("waypoint"));
            let gw = api.get("Gateway", "shop", "waypoint").unwrap();
            let uid = gw["metadata"]["uid"].as_str().unwrap().to_string();
            object(&api, "Deployment", "waypoint").await?;
            object(&api, "ConfigMap", "ambient-ca-root").await?;
            check_deployed(&api, "waypoint", &uid, &root)?;

            // Accepted, not yet Programmed: the Service has no cluster IP.
            let status = common::eventually(Duration::from_secs(15), || async {
                let gw = api.get("Gateway", "shop", "waypoint").unwrap();
                match condition(&gw, "Programmed") {
                    Some((s, r)) if s == "False" && r == "NoAddress" => Ok(gw),
                    other => Err(format!("Programmed is {other:?}")),
                }
            })
            .await?;
            assert_eq!(
                condition(&status, "Accepted"),
                Some(("True".into(), "Accepted".into()))
            );
            assert_eq!(status["status"]["conditions"][0]["observedGeneration"], 1);
            assert!(status["status"].get("addresses").is_none());
            let writes = api
                .requests()
                .iter()
                .filter(|r| r.starts_with("PATCH /apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/waypoint/status?"))
                .count();
            assert!(writes >= 1);

            // The allocator gives the Service an address, the kubelet runs a waypoint pod.
            api.patch(
                "Service",
                "shop",
                "waypoint",
                json!({"spec": {"clusterIP": "10.96.0.50"}}),
            )
            .ok_or("no Service")?;
            let dep = api.get("Deployment", "shop", "waypoint").unwrap();
            let template = &dep["spec"]["template"];
            let mut spec = template["spec"].clone();
            spec["nodeName"] = json!("node-a");
            api.apply(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "waypoint-7d9f8-x2v4q", "namespace": "shop",
                             "labels": template["metadata"]["labels"]},
                "spec": spec,
                "status": {"phase": "Running", "podIP": "10.244.1.9",
                           "conditions": [{"type": "Ready", "status": "True"}]},
            }));
            let programmed = common::eventually(Duration::from_secs(15), || async {
                let gw = api.get("Gateway", "shop", "waypoint").unwrap();
                match condition(&gw, "Programmed") {
                    Some((s, _)) if s == "True" => Ok(gw),
                    other => Err(format!("Programmed is {other:?}")),
                }
            })
            .await?;
            assert_eq!(
                programmed["status"]["addresses"],
                json!([{"type": "IPAddress", "value": "10.96.0.50"}])
            );
            // The address did not change the Gateway's spec, and nothing was redeployed.
            assert_eq!(programmed["metadata"]["generation"], 1);
            let applies = |name: &str| {
                api.requests()
                    .iter()
                    .filter(|r| {
                        r.starts_with(&format!(
                            "PATCH /apis/apps/v1/namespaces/shop/deployments/{name}?"
                        ))
                    })
                    .count()
            };
            assert_eq!(applies("waypoint"), 1, "deployed once");

            // The waypoint's own token gets it its own certificate, and no other.
            let pod_uid =
                api.get("Pod", "shop", "waypoint-7d9f8-x2v4q").unwrap()["metadata"]["uid"]
                    .as_str()
                    .unwrap()
                    .to_string();
            api.add_pod_token(
                "waypoint-token",
                "system:serviceaccount:shop:waypoint",
                Some("node-a"),
                "waypoint-7d9f8-x2v4q",
                &pod_uid,
            );
            api.add_pod_token(
                "app-token",
                "system:serviceaccount:shop:reviews",
                Some("node-a"),
                "reviews-1",
                "uid-x",
            );
            let token = write(&dir, "token", "waypoint-token")?;
            let ca = CaClient::new(
                ControlPlane {
                    address: "https://127.0.0.1:15012".into(),
                    root_pem: root.clone().into_bytes(),
                    server_name: "istiod.istio-system.svc".into(),
                    token_file: token.clone().into(),
                },
                Duration::from_secs(600),
            )?;
            let own: Identity = "spiffe://cluster.local/ns/shop/sa/waypoint".parse()?;
            let cert = ca.fetch(&own).await?;
            assert_eq!(cert.identity(), &own);
            let other: Identity = "spiffe://cluster.local/ns/shop/sa/reviews".parse()?;
            match ca.fetch(&other).await {
                Err(FetchError::Refused {
                    code: tonic::Code::PermissionDenied,
                    message,
                }) => assert!(message.contains("its own identity"), "{message}"),
                r => panic!(
                    "a waypoint obtained another identity: {:?}",
                    r.map(|c| c.identity().clone())
                ),
            }
            // A pod that is no waypoint is refused outright.
            std::fs::write(&token, "app-token")?;
            match ca.fetch(&other).await {
                Err(FetchError::Refused {
                    code: tonic::Code::Unauthenticated,
                    message,
                }) => assert!(message.contains("nor a waypoint instance"), "{message}"),
                r => panic!(
                    "expected a refusal, got {:?}",
                    r.map(|c| c.identity().clone())
                ),
            }

            // The CLI reads the status the controller wrote.
            let list = ambientctl(&[
                "waypoint",
                "list",
                "-n",
                "shop",
                "--kubeconfig",
                &kubeconfig,
            ])
            .await;
            let out = text(&list.stdout);
            assert!(list.status.success(), "{}", text(&list.stderr));
            let row = out
                .lines()
                .find(|l| l.contains("waypoint"))
                .ok_or(out.clone())?;
            assert!(
                row.contains("10.96.0.50") && row.trim_end().ends_with("True"),
                "{out}"
            );
            let st = ambientctl(&[
                "waypoint",
                "status",
                "--name",
                "waypoint",
                "-n",
                "shop",
                "--kubeconfig",
                &kubeconfig,
            ])
            .await;
            assert!(
                st.status.success(),
                "{}{}",
                text(&st.stdout),
                text(&st.stderr)
            );
            assert!(text(&st.stdout).contains("Programmed"));

            // `waypoint apply`: a second waypoint, and the namespace enrolled to it.
            let applied = ambientctl(&[
                "waypoint",
                "apply",
                "--name",
                "wp2",
                "-n",
                "shop",
                "--for",
                "all",
                "--enroll-namespace",
                "--kubeconfig",
                &kubeconfig,
            ])
            .await;
            let out = text(&applied.stdout);
            assert!(applied.status.success(), "{out}{}", text(&applied.stderr));
            assert!(out.contains("waypoint shop/wp2 applied (created)"), "{out}");
            let wp2 = api.get("Gateway", "shop", "wp2").ok_or("no Gateway wp2")?;
            assert_eq!(wp2["spec"]["gatewayClassName"], "istio-waypoint");
            assert_eq!(wp2["metadata"]["labels"]["istio.io/waypoint-for"], "all");
            assert_eq!(wp2["metadata"]["managedFields"][0]["manager"], "ambientctl");
            let ns = api.get("Namespace", "", "shop").unwrap();
            assert_eq!(ns["metadata"]["labels"]["istio.io/use-waypoint"], "wp2");
            let wp2_uid = wp2["metadata"]["uid"].as_str().unwrap().to_string();
            object(&api, "Deployment", "wp2").await?;
            check_deployed(&api, "wp2", &wp2_uid, &root)?;
            // Re-applying changes nothing.
            let again = ambientctl(&[
                "waypoint",
                "apply",
                "--name",
                "wp2",
                "-n",
                "shop",
                "--for",
                "all",
                "--kubeconfig",
                &kubeconfig,
            ])
            .await;
            assert!(text(&again.stdout).contains("applied (configured)"));
            assert_eq!(
                api.get("Gateway", "shop", "wp2").unwrap()["metadata"]["generation"],
                1
            );
            // Not programmed (no address yet): status says why and exits 1.
            common::eventually(Duration::from_secs(15), || async {
                let st = ambientctl(&[
                    "waypoint",
                    "status",
                    "--name",
                    "wp2",
                    "-n",
                    "shop",
                    "--kubeconfig",
                    &kubeconfig,
                ])
                .await;
                let out = text(&st.stdout);
                if st.status.code() == Some(1) && out.contains("NoAddress") {
                    Ok(())
                } else {
                    Err(format!("{:?} {out}{}", st.status, text(&st.stderr)))
                }
            })
            .await?;
            let list = ambientctl(&[
                "waypoint",
                "list",
                "-A",
                "-o",
                "json",
                "--kubeconfig",
                &kubeconfig,
            ])
            .await;
            let views: Value = serde_json::from_slice(&list.stdout)?;
            assert_eq!(views.as_array().map(Vec::len), Some(2), "{views}");

            // `waypoint delete`: the Gateway goes, and the namespace label naming it.
            let deleted = ambientctl(&[
                "waypoint",
                "delete",
                "wp2",
                "-n",
                "shop",
                "--kubeconfig",
                &kubeconfig,
            ])
            .await;
            let out = text(&deleted.stdout);
            assert!(deleted.status.success(), "{out}{}", text(&deleted.stderr));
            assert!(out.contains("waypoint shop/wp2 deleted"), "{out}");
            assert!(out.contains("namespace shop unlabeled"), "{out}");
            assert!(api.get("Gateway", "shop", "wp2").is_none());
            let ns = api.get("Namespace", "", "shop").unwrap();
            assert!(
                ns["metadata"]["labels"]
                    .get("istio.io/use-waypoint")
                    .is_none(),
                "{ns}"
            );
            let missing = ambientctl(&[
                "waypoint",
                "delete",
                "wp2",
                "-n",
                "shop",
                "--kubeconfig",
                &kubeconfig,
            ])
            .await;
            assert_eq!(missing.status.code(), Some(1));
            assert!(text(&missing.stderr).contains("not found"));

            // The garbage collector removes what the deleted Gateway owned; the controller
            // does not bring it back (nor touches the other waypoint).
            tokio::time::sleep(Duration::from_millis(500)).await;
            for kind in ["Deployment", "Service", "ServiceAccount"] {
                assert!(api.delete(kind, "shop", "wp2"), "{kind} wp2 was deployed");
            }
            let before = applies("wp2");
            api.delete("Gateway", "shop", "waypoint");
            tokio::time::sleep(Duration::from_millis(500)).await;
            for kind in ["Deployment", "Service", "ServiceAccount"] {
                assert!(api.delete(kind, "shop", "waypoint"));
            }
            // Changes elsewhere make the controller reconcile; nothing is recreated.
            api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"x": "y"}}}));
            tokio::time::sleep(Duration::from_secs(2)).await;
            for name in ["waypoint", "wp2"] {
                for kind in ["Deployment", "Service", "ServiceAccount"] {
                    assert!(
                        api.get(kind, "shop", name).is_none(),
                        "{kind} {name} recreated"
                    );
                }
            }
            assert_eq!(applies("wp2"), before);
            let list = ambientctl(&[
                "waypoint",
                "list",
                "-n",
                "shop",
                "--kubeconfig",
                &kubeconfig,
            ])
            .await;
            assert!(
                text(&list.stderr).contains("No waypoints found"),
                "{}",
                text(&list.stdout)
            );
            TestResult::Ok(())
        },
    );
}
