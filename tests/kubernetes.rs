//! The controller's Kubernetes source against a watch-capable fake API server speaking the
//! real HTTP API: creates, updates and deletes flow through kube-rs watchers, the index and
//! delta xDS into a real ztunnel xDS client; a compacted history (410 Gone) forces a relist;
//! the CA authenticates ztunnels by TokenReview.

#![forbid(unsafe_code)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use ambient_controller::index::IndexConfig;
use ambient_controller::push::Debounce;
use ambient_controller::server::{ControllerConfig, SourceConfig};
use ambient_lab::sandbox::run_test;
use ambient_proto::identity::Identity;
use common::*;
use fake_apiserver::FakeApiServer;
use proxy_core::control_plane::ControlPlane;
use proxy_core::identity::CertificateSource;
use proxy_core::identity::ca_client::CaClient;
use proxy_core::readiness::Readiness;
use proxy_core::state::{Protocol, StateStore};
use serde_json::json;

fn namespace(name: &str, ambient: bool) -> serde_json::Value {
    let mut labels = json!({});
    if ambient {
        labels["istio.io/dataplane-mode"] = json!("ambient");
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn pod(name: &str, node: &str, ip: &str, app: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
        "spec": {"nodeName": node, "serviceAccountName": app, "containers": [{"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

#[test]
fn kubernetes_source_through_xds_to_ztunnel() {
    run_test(
        "kubernetes_source_through_xds_to_ztunnel",
        |dir| async move {
            // The sandbox's own namespace: bring loopback up for the local servers.
            ztunnel::agent::rtnl::Rtnl::open()?.set_up("lo", None)?;
            let api = FakeApiServer::start().await?;
            api.add_token(
                "node-a-token",
                "system:serviceaccount:istio-system:ztunnel",
                Some("node-a"),
            );
            api.add_token(
                "intruder-token",
                "system:serviceaccount:default:sleep",
                Some("node-a"),
            );
            let kubeconfig = dir.join("kubeconfig");
            std::fs::write(&kubeconfig, api.kubeconfig())?;
            api.apply(namespace("shop", true));
            api.apply(pod("web-1", "node-a", "10.244.1.5", "web"));
            api.apply(pod("db-1", "node-b", "10.244.2.5", "db"));
            api.apply(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        }));

            let config = ControllerConfig {
                grpc_addr: "127.0.0.1:15012".parse()?,
                monitoring_addr: "127.0.0.1:15014".parse()?,
                ca_dir: dir.join("ca"),
                source: SourceConfig::Kubernetes {
                    kubeconfig: Some(kubeconfig),
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
            tokio::spawn(ambient_controller::server::run(
                config,
                handle,
                std::future::pending(),
            ));
            let root = common::eventually(Duration::from_secs(10), || async {
                std::fs::read(dir.join("ca").join("root-cert.pem")).map_err(|e| e.to_string())
            })
            .await?;
            let token = dir.join("token");
            std::fs::write(&token, "node-a-token")?;
            let control_plane = ControlPlane {
                address: "https://127.0.0.1:15012".into(),
                root_pem: root,
                server_name: "istiod.istio-system.svc".into(),
                token_file: token.clone(),
            };
            let state = Arc::new(StateStore::new());
            let readiness = Readiness::new(&["xds:address", "xds:authorization"]);
            tokio::spawn(proxy_core::xds::run(
                control_plane.clone(),
                proxy_core::xds::NodeInfo {
                    node_name: "node-a".into(),
                    instance_ip: "127.0.0.1".into(),
                    id: String::new(),
                },
                state.clone(),
                readiness.clone(),
            ));

            // Listed objects arrive.
            let web_uid = "Kubernetes//Pod/shop/web-1";
            common::eventually(Duration::from_secs(15), || async {
                let s = state.load();
                match (
                    s.workload_by_uid(web_uid),
                    s.service_by_vip("10.96.0.20".parse().unwrap()),
                ) {
                    (Some(w), Some(_)) if w.protocol == Protocol::Hbone => Ok(()),
                    _ => Err(format!("{} workloads so far", s.workloads().count())),
                }
            })
            .await?;
            assert!(readiness.is_ready(), "both types synced");
            let s = state.load();
            let up = s.resolve("10.96.0.20:80".parse()?)?.expect("VIP resolves");
            assert_eq!(
                up.addr.to_string(),
                "10.244.1.5:8080",
                "named target port resolved through xDS"
            );

            // Update: the namespace leaves the mesh → workloads become plain TCP.
            api.apply(namespace("shop", false));
            common::eventually(Duration::from_secs(10), || async {
                let s = state.load();
                if s.workload_by_uid(web_uid)
                    .is_some_and(|w| w.protocol == Protocol::Tcp)
                {
                    Ok(())
                } else {
                    Err("still HBONE".into())
                }
            })
            .await?;
            api.apply(namespace("shop", true));

            // A policy is created, then deleted.
            api.apply(json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "deny-all", "namespace": "shop"},
                "spec": {"action": "DENY", "rules": [{}]}
            }));
            common::eventually(Duration::from_secs(10), || async {
                if state.load().policies().any(|p| p.name == "deny-all") {
                    Ok(())
                } else {
                    Err("no policy yet".into())
                }
            })
            .await?;
            api.delete("AuthorizationPolicy", "shop", "deny-all");
            common::eventually(Duration::from_secs(10), || async {
                if state.load().policies().next().is_none() {
                    Ok(())
                } else {
                    Err("policy not removed".into())
                }
            })
            .await?;

            // Delete: the pod's workload goes away.
            api.delete("Pod", "shop", "db-1");
            common::eventually(Duration::from_secs(10), || async {
                if state
                    .load()
                    .workload_by_uid("Kubernetes//Pod/shop/db-1")
                    .is_none()
                {
                    Ok(())
                } else {
                    Err("db-1 still there".into())
                }
            })
            .await?;

            // History compacted and watches dropped: resuming gets 410 Gone, the watcher relists,
            // and a change made meanwhile still arrives.
            api.compact();
            api.close_watches();
            api.apply(pod("web-2", "node-a", "10.244.1.6", "web"));
            common::eventually(Duration::from_secs(20), || async {
                if state
                    .load()
                    .workload_by_uid("Kubernetes//Pod/shop/web-2")
                    .is_some()
                {
                    Ok(())
                } else {
                    Err("web-2 not seen after the relist".into())
                }
            })
            .await?;
            let requests = api.requests();
            assert!(
                requests
                    .iter()
                    .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")),
                "{requests:?}"
            );
            // The relist may land after web-2 is visible (the 410 and the relist race the
            // delivery of the new pod through other streams): wait for it.
            common::eventually(Duration::from_secs(10), || async {
                let lists = api
                    .requests()
                    .iter()
                    .filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true"))
                    .count();
                if lists >= 2 {
                    Ok(())
                } else {
                    Err(format!(
                        "the pod watcher did not relist after 410 ({lists} lists)"
                    ))
                }
            })
            .await?;

            // The CA, authenticated by TokenReview: node-a may have web's identity, not db's.
            let ca = CaClient::new(control_plane.clone(), Duration::from_secs(600))?;
            let web_id: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse()?;
            let cert = ca.fetch(&web_id).await?;
            assert_eq!(cert.identity(), &web_id);
            api.apply(pod("db-2", "node-b", "10.244.2.6", "db"));
            let db_id: Identity = "spiffe://cluster.local/ns/shop/sa/db".parse()?;
            common::eventually(Duration::from_secs(10), || async {
                match ca.fetch(&db_id).await {
                    Err(proxy_core::identity::FetchError::Refused {
                        code: tonic::Code::PermissionDenied,
                        message,
                    }) if message.contains("node node-a") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await?;
            // A valid token of a service account that is not a ztunnel is refused.
            std::fs::write(&token, "intruder-token")?;
            match ca.fetch(&web_id).await {
                Err(proxy_core::identity::FetchError::Refused {
                    code: tonic::Code::Unauthenticated,
                    message,
                }) => {
                    assert!(message.contains("not a ztunnel"), "{message}")
                }
                other => panic!("expected refusal, got {other:?}"),
            }
            TestResult::Ok(())
        },
    );
}
