//! Waypoints against a real API server (kube-lab, with the upstream Gateway API CRDs): the
//! controller's deployer server-side applies a waypoint Gateway's ServiceAccount, Service and
//! Deployment, owned by the Gateway; the real Deployment and ReplicaSet controllers make the
//! pod, the scheduler binds it, the IP allocator gives the Service its cluster IP, and the
//! EndpointSlice controller lists the pod once the test (playing the kubelet) reports it
//! Running. The controller then writes the Gateway's status (Programmed, with the address)
//! by server-side apply of the status subresource. The waypoint's bound token gets it its
//! own certificate and no other; the CLI reads and writes Gateways; deleting the Gateway
//! lets the real garbage collector remove what was deployed for it. LocalRateLimitPolicies
//! (the chart's own CRD) get their `Accepted` status written the same way, with the running
//! waypoint instances they are shared by.
//!
//! This replaces the fake-API-server test of the same flow, where the test itself played
//! the allocator, the Deployment controller and the garbage collector.

#![forbid(unsafe_code)]

mod common;
mod kube_common;

use std::time::Duration;

use ambient_lab::kube::{CA_AUDIENCE, KubeLab, KubeLabOptions};
use ambient_lab::sandbox::run_test;
use ambient_proto::identity::Identity;
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube_common::*;
use proxy_core::identity::CertificateSource;
use proxy_core::identity::ca_client::CaClient;
use serde_json::{Value, json};

const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
const WAIT: Duration = Duration::from_secs(60);
/// Where the deployed waypoints are told to export spans and access logs.
const OTLP: &str = "http://otel-collector.observability:4318";

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

/// Gateway `name` of namespace `shop` once its condition `kind` is True.
async fn condition_true(
    kube: &KubeLab,
    name: &str,
    kind: &str,
) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
    let found = kube
        .wait_for(
            ("gateway.networking.k8s.io/v1", "Gateway"),
            "shop",
            name,
            WAIT,
            |g| {
                g.and_then(|g| condition(g, kind))
                    .is_some_and(|c| c.0 == "True")
            },
        )
        .await?;
    Ok(found.ok_or(format!("Gateway {name} is gone"))?)
}

const RATE_LIMIT_POLICY: (&str, &str) = ("policy.ambient-rs.io/v1alpha1", "LocalRateLimitPolicy");

/// The chart's own CRDs (charts/ambient-rs/crds that are ours: LocalRateLimitPolicy,
/// Rollout).
fn own_crds() -> Result<Vec<Value>, Box<dyn std::error::Error + Send + Sync>> {
    let mut out = Vec::new();
    for file in [
        "localratelimitpolicies.policy.ambient-rs.io.yaml",
        "rollouts.rollouts.ambient-rs.io.yaml",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts/ambient-rs/crds")
            .join(file);
        let text = std::fs::read_to_string(path)?;
        out.extend(
            ambient_controller::source::yaml::parse(&text)?
                .into_iter()
                .map(|d| d.value),
        );
    }
    Ok(out)
}

/// A LocalRateLimitPolicy in `shop` on one target: 100 requests a second in all.
fn rate_limit(name: &str, group: &str, kind: &str, target: &str) -> Value {
    json!({
        "apiVersion": "policy.ambient-rs.io/v1alpha1",
        "kind": "LocalRateLimitPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "targetRefs": [{"group": group, "kind": kind, "name": target}],
            "total": {"requestsPerSecond": 100},
        },
    })
}

/// The kinds the deployer makes for a waypoint, each `(apiVersion, kind)`.
const DEPLOYED: [(&str, &str); 3] = [
    ("v1", "ServiceAccount"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
];

/// The waypoint Deployment's pod template, as the API server stored (and defaulted) it.
fn check_template(dep: &Value) -> TestResult {
    assert_eq!(dep["spec"]["replicas"], 1);
    let template = &dep["spec"]["template"];
    assert_eq!(template["metadata"]["labels"][GATEWAY_NAME], "waypoint");
    assert_eq!(
        template["metadata"]["labels"]["istio.io/dataplane-mode"],
        "none"
    );
    let pod = &template["spec"];
    assert_eq!(pod["serviceAccountName"], "waypoint");
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
    assert_eq!(parsed.gateway, "shop/waypoint");
    assert_eq!(parsed.service_account.as_deref(), Some("waypoint"));
    assert_eq!(
        parsed.control_plane.controller_address,
        "https://ambient-controller.istio-system.svc:15012"
    );
    assert_eq!(parsed.instance_ip, "10.244.1.9");
    // The controller's --waypoint-otlp-* reach every waypoint it deploys.
    assert_eq!(parsed.otlp.otlp_endpoint.as_deref(), Some(OTLP));
    assert_eq!(
        parsed.otlp.otlp_protocol,
        Some(waypoint::otlp::Protocol::HttpProtobuf)
    );
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
    Ok(())
}

#[test]
fn kube_waypoint_deployed_programmed_and_collected() {
    run_test(
        "kube_waypoint_deployed_programmed_and_collected",
        |dir| async move {
            ztunnel::agent::rtnl::Rtnl::open()?.set_up("lo", None)?;
            let kube = KubeLab::start(&dir, KubeLabOptions::default()).await?;
            kube.add_node("node-a").await?;
            kube.install_upstream_crds().await?;
            kube.install_crds(&own_crds()?).await?;
            ztunnel_accounts(&kube).await?;
            kube.apply(namespace("shop", true)).await?;
            let kubeconfig = kube.kubeconfig().display().to_string();
            let waypoints = ambient_controller::server::WaypointDeployment {
                otlp: Some(waypoint::otlp::Export {
                    endpoint: OTLP.into(),
                    protocol: waypoint::otlp::Protocol::HttpProtobuf,
                    ca_cert: None,
                }),
                ..Default::default()
            };
            let root = String::from_utf8(
                start_controller_with(&dir, kube.kubeconfig(), waypoints).await?,
            )?;

            // A waypoint Gateway: its objects appear, owned by it and applied by the
            // controller's field manager.
            let gw = kube.apply(gateway("waypoint")).await?;
            let uid = gw["metadata"]["uid"].as_str().unwrap().to_string();
            for (version, kind) in DEPLOYED {
                let o = kube
                    .wait_for((version, kind), "shop", "waypoint", WAIT, |o| o.is_some())
                    .await?
                    .unwrap();
                let owner = &o["metadata"]["ownerReferences"][0];
                assert_eq!(owner["kind"], "Gateway", "{kind}");
                assert_eq!(owner["uid"], uid.as_str(), "{kind}");
                assert_eq!(owner["controller"], true, "{kind}");
                assert_eq!(o["metadata"]["labels"][GATEWAY_NAME], "waypoint", "{kind}");
                let managers: Vec<&Value> = o["metadata"]["managedFields"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| &m["manager"])
                    .collect();
                assert!(
                    managers.contains(&&json!("ambient-controller")),
                    "{kind}: {managers:?}"
                );
            }
            let cm = kube
                .wait_for(("v1", "ConfigMap"), "shop", "ambient-ca-root", WAIT, |o| {
                    o.is_some()
                })
                .await?
                .unwrap();
            assert_eq!(cm["data"]["root-cert.pem"], root.as_str());
            check_template(
                &kube
                    .get("apps/v1", "Deployment", "shop", "waypoint")
                    .await?
                    .unwrap(),
            )?;
            let service = kube
                .get("v1", "Service", "shop", "waypoint")
                .await?
                .unwrap();
            assert_eq!(
                service["spec"]["selector"],
                json!({GATEWAY_NAME: "waypoint"})
            );
            let ports = service["spec"]["ports"].as_array().unwrap();
            assert!(ports.iter().any(|p| p["port"] == 15021));
            assert!(
                ports
                    .iter()
                    .any(|p| p["port"] == 15008 && p["appProtocol"] == "hbone")
            );

            // The real controllers make the pod; the scheduler binds it to node-a.
            let pods: Api<Pod> = Api::namespaced(kube.client(), "shop");
            let selector = ListParams::default().labels(&format!("{GATEWAY_NAME}=waypoint"));
            let pod = common::eventually(WAIT, || async {
                let list = pods.list(&selector).await.map_err(|e| e.to_string())?;
                match list.items.into_iter().next() {
                    Some(p)
                        if p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                            == Some("node-a") =>
                    {
                        Ok(p)
                    }
                    other => Err(format!("waypoint pod: {:?}", other.map(|p| p.spec))),
                }
            })
            .await?;
            let pod_name = pod.metadata.name.clone().unwrap();
            assert!(pod_name.starts_with("waypoint-"), "{pod_name}");

            // Accepted, not Programmed while no waypoint pod runs.
            // The upstream CRD defaults the status to Accepted Unknown (Pending) until a
            // controller writes it.
            let waiting = condition_true(&kube, "waypoint", "Accepted").await?;
            assert_eq!(
                condition(&waiting, "Accepted"),
                Some(("True".into(), "Accepted".into()))
            );
            assert_ne!(
                condition(&waiting, "Programmed").map(|c| c.0),
                Some("True".into())
            );

            // The kubelet's part: the pod runs. The EndpointSlice controller lists it, and
            // the Gateway becomes Programmed at the Service's allocated address.
            kube.set_pod_running("shop", &pod_name, "10.244.1.9")
                .await?;
            let service = kube
                .get("v1", "Service", "shop", "waypoint")
                .await?
                .unwrap();
            let cluster_ip = service["spec"]["clusterIP"].as_str().unwrap().to_string();
            assert!(cluster_ip.starts_with("10.96."), "allocated: {cluster_ip}");
            let slices = kube
                .api("discovery.k8s.io/v1", "EndpointSlice", "shop")
                .await?;
            common::eventually(WAIT, || async {
                let list = slices
                    .list(&ListParams::default().labels("kubernetes.io/service-name=waypoint"))
                    .await
                    .map_err(|e| e.to_string())?;
                let ready = list.items.iter().any(|s| {
                    s.data["endpoints"].as_array().is_some_and(|eps| {
                        eps.iter().any(|e| {
                            e["addresses"][0] == "10.244.1.9" && e["conditions"]["ready"] == true
                        })
                    })
                });
                ready
                    .then_some(())
                    .ok_or("the pod is not a ready endpoint yet".to_string())
            })
            .await?;
            let programmed = condition_true(&kube, "waypoint", "Programmed").await?;
            assert_eq!(
                programmed["status"]["addresses"],
                json!([{"type": "IPAddress", "value": cluster_ip}])
            );
            assert_eq!(programmed["metadata"]["generation"], 1, "status only");
            let status_manager = programmed["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["subresource"] == "status")
                .ok_or("no status field manager")?;
            assert_eq!(status_manager["manager"], "ambient-controller");
            assert_eq!(
                status_manager["operation"], "Apply",
                "status by server-side apply"
            );

            // Rate-limit policies: one on the waypoint is accepted (and its status written by
            // server-side apply), one naming a missing Service is not.
            kube.apply(rate_limit(
                "everything",
                "gateway.networking.k8s.io",
                "Gateway",
                "waypoint",
            ))
            .await?;
            kube.apply(rate_limit("lost", "", "Service", "gone"))
                .await?;
            for (name, status, reason) in [
                ("everything", "True", "Accepted"),
                ("lost", "False", "TargetNotFound"),
            ] {
                let p = kube
                    .wait_for(RATE_LIMIT_POLICY, "shop", name, WAIT, |p| {
                        p.and_then(|p| condition(p, "Accepted"))
                            .is_some_and(|c| c.0 == status && c.1 == reason)
                    })
                    .await?
                    .ok_or("policy gone")?;
                let c = &p["status"]["conditions"][0];
                assert_eq!(c["observedGeneration"], 1, "{p}");
                let manager = p["metadata"]["managedFields"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["subresource"] == "status")
                    .ok_or("no status field manager")?;
                assert_eq!(manager["manager"], "ambient-controller");
            }

            // A Rollout whose route does not exist: the engine's verdict is its status.
            kube.apply(json!({
                "apiVersion": "rollouts.ambient-rs.io/v1alpha1",
                "kind": "Rollout",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {
                    "routeRef": {"name": "web"},
                    "stable": {"name": "waypoint"},
                    "canary": {"name": "gone"},
                    "steps": [{"weight": 10, "pause": "10s"}],
                },
            }))
            .await?;
            let r = kube
                .wait_for(
                    ("rollouts.ambient-rs.io/v1alpha1", "Rollout"),
                    "shop",
                    "web",
                    WAIT,
                    |r| r.is_some_and(|r| r["status"]["phase"] == "Invalid"),
                )
                .await?
                .ok_or("rollout gone")?;
            assert!(
                r["status"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("canary: Service shop/gone does not exist"),
                "{r}"
            );
            assert_eq!(
                condition(&r, "Succeeded"),
                Some(("False".into(), "Invalid".into()))
            );

            // The waypoint's bound token (projected for the CA's audience) gets it its own
            // identity and no other; a token bound to another account's pod is refused.
            let token_file = dir.join("waypoint-token");
            std::fs::write(
                &token_file,
                kube.token("shop", "waypoint", CA_AUDIENCE, Some(&pod_name))
                    .await?,
            )?;
            let ca = CaClient::new(
                control_plane(root.as_bytes(), &token_file),
                Duration::from_secs(600),
            )?;
            let own: Identity = "spiffe://cluster.local/ns/shop/sa/waypoint".parse()?;
            let cert = common::eventually(WAIT, || async {
                ca.fetch(&own).await.map_err(|e| format!("{e:?}"))
            })
            .await?;
            assert_eq!(cert.identity(), &own);
            let other: Identity = "spiffe://cluster.local/ns/shop/sa/reviews".parse()?;
            let (code, message) =
                refusal(&ca, &other, "a waypoint asking for another identity").await?;
            assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
            assert!(message.contains("its own identity"), "{message}");
            kube.apply(service_account("shop", "reviews")).await?;
            running_pod(&kube, "reviews-1", "node-a", "10.244.1.10", "reviews").await?;
            std::fs::write(
                &token_file,
                kube.token("shop", "reviews", CA_AUDIENCE, Some("reviews-1"))
                    .await?,
            )?;
            let (code, message) = refusal(&ca, &other, "a pod that is no waypoint").await?;
            assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
            assert!(message.contains("nor a waypoint instance"), "{message}");

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
                row.contains(&cluster_ip) && row.trim_end().ends_with("True"),
                "{out}"
            );

            let status = ambientctl(&[
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
                status.status.success(),
                "{}{}",
                text(&status.stdout),
                text(&status.stderr)
            );
            assert!(text(&status.stdout).contains("Programmed"));

            // `waypoint apply`: a second waypoint, and the namespace enrolled to it; the
            // server's schema accepts what the CLI writes, and applying again changes nothing.
            let apply_wp2 = [
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
            ];
            let applied = ambientctl(&apply_wp2).await;
            let out = text(&applied.stdout);
            assert!(applied.status.success(), "{out}{}", text(&applied.stderr));
            assert!(out.contains("waypoint shop/wp2 applied (created)"), "{out}");
            let again = ambientctl(&apply_wp2).await;
            assert!(
                text(&again.stdout).contains("applied (configured)"),
                "{}",
                text(&again.stdout)
            );
            let wp2 = kube
                .get("gateway.networking.k8s.io/v1", "Gateway", "shop", "wp2")
                .await?
                .unwrap();
            assert_eq!(wp2["metadata"]["generation"], 1);
            assert_eq!(wp2["metadata"]["labels"]["istio.io/waypoint-for"], "all");
            let ns = kube.get("v1", "Namespace", "", "shop").await?.unwrap();
            assert_eq!(ns["metadata"]["labels"]["istio.io/use-waypoint"], "wp2");
            kube.wait_for(("apps/v1", "Deployment"), "shop", "wp2", WAIT, |o| {
                o.is_some()
            })
            .await?;
            // Its pod never runs here: status says it is not programmed and exits 1.
            common::eventually(WAIT, || async {
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
                if st.status.code() == Some(1)
                    && out.contains("Programmed")
                    && out.contains("False")
                {
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

            // `waypoint delete`: the Gateway goes, and the namespace label naming it; the
            // garbage collector removes what it owned.
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
            let ns = kube.get("v1", "Namespace", "", "shop").await?.unwrap();
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

            // Deleting a Gateway by hand: the same. The controller deletes nothing itself.
            kube.delete(
                "gateway.networking.k8s.io/v1",
                "Gateway",
                "shop",
                "waypoint",
            )
            .await?;
            for name in ["waypoint", "wp2"] {
                for (version, kind) in DEPLOYED {
                    kube.wait_for((version, kind), "shop", name, WAIT, |o| o.is_none())
                        .await?;
                }
            }
            // Their pods are being deleted (a kubelet would stop them within their grace
            // period; kube-lab's reaper then removes them).
            common::eventually(WAIT, || async {
                let list = pods.list(&selector).await.map_err(|e| e.to_string())?;
                let left = list
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .count();
                (left == 0)
                    .then_some(())
                    .ok_or(format!("{left} waypoint pods not deleted"))
            })
            .await?;
            // Nor does it bring back what was collected: a later Gateway is deployed (so the
            // controller has reconciled since), the deleted ones stay gone.
            kube.apply(gateway("wp3")).await?;
            kube.wait_for(("apps/v1", "Deployment"), "shop", "wp3", WAIT, |o| {
                o.is_some()
            })
            .await?;
            for name in ["waypoint", "wp2"] {
                assert!(
                    kube.get("apps/v1", "Deployment", "shop", name)
                        .await?
                        .is_none(),
                    "{name} recreated"
                );
            }
            TestResult::Ok(())
        },
    );
}
