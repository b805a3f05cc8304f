//! The controller's Kubernetes source against a real API server (kube-lab, with the upstream
//! CRDs): listed objects, creates, updates and deletes flow through kube-rs watchers, the
//! index and delta xDS into a real ztunnel xDS client; the watches survive an API-server
//! restart; and when the controller is cut off while objects change and etcd is compacted,
//! resuming its watches gets 410 Gone, it relists, and the state converges (deletions
//! included).
//!
//! These replace the fake-API-server test of the same flow (its assertions are kept): the
//! real server now produces the 410, from real etcd compaction.

#![forbid(unsafe_code)]

mod common;
mod kube_common;

use std::time::Duration;

use ambient_lab::kube::{KubeLab, KubeLabOptions};
use ambient_lab::sandbox::run_test;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube_common::*;
use proxy_core::state::{Protocol, StateStore};
use serde_json::json;

const WEB_VIP: &str = "10.96.0.20";

fn web_service() -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": WEB_VIP, "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    })
}

fn deny_all(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"action": "DENY", "rules": [{}]}
    })
}

/// Nodes, the upstream CRDs, the ztunnel account, namespace `shop` in the mesh with
/// accounts `web` and `db`, pods web-1 (node-a) and db-1 (node-b), Service `web`.
async fn cluster(kube: &KubeLab) -> TestResult {
    kube.add_node("node-a").await?;
    kube.add_node("node-b").await?;
    kube.install_upstream_crds().await?;
    ztunnel_accounts(kube).await?;
    kube.apply(namespace("shop", true)).await?;
    for sa in ["web", "db"] {
        kube.apply(service_account("shop", sa)).await?;
    }
    running_pod(kube, "web-1", "node-a", "10.244.1.5", "web").await?;
    running_pod(kube, "db-1", "node-b", "10.244.2.5", "db").await?;
    kube.apply(web_service()).await?;
    Ok(())
}

/// Waits until the xDS state satisfies `check` (which says what is missing otherwise).
async fn until(
    state: &StateStore,
    what: &str,
    check: impl Fn(&proxy_core::state::Snapshot) -> Result<(), String>,
) -> TestResult {
    common::eventually(Duration::from_secs(30), || async { check(&state.load()) })
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    Ok(())
}

fn has_workload(uid: &str) -> impl Fn(&proxy_core::state::Snapshot) -> Result<(), String> + '_ {
    move |s| match s.workload_by_uid(uid) {
        Some(_) => Ok(()),
        None => Err(format!("no {uid}")),
    }
}

fn no_workload(uid: &str) -> impl Fn(&proxy_core::state::Snapshot) -> Result<(), String> + '_ {
    move |s| match s.workload_by_uid(uid) {
        None => Ok(()),
        Some(_) => Err(format!("{uid} still there")),
    }
}

fn has_policy(
    name: &str,
    present: bool,
) -> impl Fn(&proxy_core::state::Snapshot) -> Result<(), String> + '_ {
    move |s| {
        if s.policies().any(|p| p.name == name) == present {
            Ok(())
        } else {
            Err(format!("policy {name} present: {}", !present))
        }
    }
}

#[test]
fn kube_source_through_xds_and_across_an_api_server_restart() {
    run_test(
        "kube_source_through_xds_and_across_an_api_server_restart",
        |dir| async move {
            // The sandbox's own namespace: bring loopback up for the local servers.
            ztunnel::agent::rtnl::Rtnl::open()?.set_up("lo", None)?;
            let mut kube = KubeLab::start(&dir, KubeLabOptions::default()).await?;
            cluster(&kube).await?;
            let token = ztunnel_token(&kube, &dir, "node-a").await?;
            let root = start_controller(&dir, kube.kubeconfig()).await?;
            let (state, readiness) = xds_client(control_plane(&root, &token), "node-a");

            // Listed objects arrive.
            let web_uid = "Kubernetes//Pod/shop/web-1";
            until(&state, "listed", |s| {
                match (
                    s.workload_by_uid(web_uid),
                    s.service_by_vip(WEB_VIP.parse().unwrap()),
                ) {
                    (Some(w), Some(_)) if w.protocol == Protocol::Hbone => Ok(()),
                    _ => Err(format!("{} workloads so far", s.workloads().count())),
                }
            })
            .await?;
            assert!(readiness.is_ready(), "both types synced");
            let up = state
                .load()
                .resolve(format!("{WEB_VIP}:80").parse()?, "shop")?
                .expect("VIP resolves");
            assert_eq!(
                up.addr.to_string(),
                "10.244.1.5:8080",
                "named target port resolved through xDS"
            );

            // Update: the namespace leaves the mesh → workloads become plain TCP.
            kube.apply(namespace("shop", false)).await?;
            until(&state, "namespace left the mesh", |s| {
                match s.workload_by_uid(web_uid) {
                    Some(w) if w.protocol == Protocol::Tcp => Ok(()),
                    _ => Err("still HBONE".into()),
                }
            })
            .await?;
            kube.apply(namespace("shop", true)).await?;

            // A policy is created (validated by Istio's CRD), then deleted.
            kube.apply(deny_all("deny-all")).await?;
            until(&state, "policy created", has_policy("deny-all", true)).await?;
            kube.delete(
                "security.istio.io/v1",
                "AuthorizationPolicy",
                "shop",
                "deny-all",
            )
            .await?;
            until(&state, "policy deleted", has_policy("deny-all", false)).await?;

            // A ServiceEntry (validated by Istio's CRD): its host gets an allocated address
            // and its endpoint a workload.
            kube.apply(serde_json::json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": {"name": "payments", "namespace": "shop"},
                "spec": {
                    "hosts": ["api.payments.example"],
                    "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                    "resolution": "STATIC",
                    "endpoints": [{"address": "192.0.2.10"}],
                },
            }))
            .await?;
            until(&state, "service entry", |s| {
                match s.services_by_hostname("api.payments.example") {
                    [svc]
                        if svc
                            .vips
                            .iter()
                            .all(|ip| ip.to_string().starts_with("240.240."))
                            && !svc.vips.is_empty()
                            && s.endpoints(svc).len() == 1 =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                }
            })
            .await?;

            // Delete: the pod's workload goes away.
            kube.delete("v1", "Pod", "shop", "db-1").await?;
            until(
                &state,
                "pod deleted",
                no_workload("Kubernetes//Pod/shop/db-1"),
            )
            .await?;

            // The API server restarts (same data): the controller keeps serving what it has,
            // its watches reconnect, and changes made afterwards arrive.
            kube.restart().await?;
            assert!(state.load().workload_by_uid(web_uid).is_some());
            running_pod(&kube, "web-2", "node-a", "10.244.1.6", "web").await?;
            kube.delete("v1", "Pod", "shop", "web-1").await?;
            kube.apply(deny_all("after-restart")).await?;
            until(
                &state,
                "pod created after the restart",
                has_workload("Kubernetes//Pod/shop/web-2"),
            )
            .await?;
            until(
                &state,
                "pod deleted after the restart",
                no_workload(web_uid),
            )
            .await?;
            until(
                &state,
                "policy created after the restart",
                has_policy("after-restart", true),
            )
            .await?;
            until(&state, "VIP follows the endpoints", |s| {
                match s.resolve(format!("{WEB_VIP}:80").parse().unwrap(), "shop") {
                    Ok(Some(up)) if up.addr.to_string() == "10.244.1.6:8080" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await?;
            TestResult::Ok(())
        },
    );
}

#[test]
fn kube_relist_after_compaction_converges() {
    run_test("kube_relist_after_compaction_converges", |dir| async move {
        ztunnel::agent::rtnl::Rtnl::open()?.set_up("lo", None)?;
        // No watch cache: watches are served by etcd, whose compaction then answers a
        // resumed watch with 410 Gone. The audit log shows the controller's requests.
        let kube = KubeLab::start(
            &dir,
            KubeLabOptions {
                watch_cache: false,
                audit: true,
                ..Default::default()
            },
        )
        .await?;
        cluster(&kube).await?;
        kube.apply(deny_all("before")).await?;
        let token = ztunnel_token(&kube, &dir, "node-a").await?;
        // The controller reaches the API server through a relay the test can cut.
        let relayed = dir.join("relayed-kubeconfig");
        let relay = Relay::start(kube.kubeconfig(), &relayed).await?;
        let root = start_controller(&dir, &relayed).await?;
        let (state, _) = xds_client(control_plane(&root, &token), "node-a");
        until(&state, "listed", has_workload("Kubernetes//Pod/shop/db-1")).await?;
        until(&state, "listed", has_policy("before", true)).await?;

        // Cut off, the controller misses a deletion, a creation and a replaced policy; etcd
        // forgets their history; one more change comes after the compaction.
        let pods: Api<Pod> = Api::namespaced(kube.client(), "shop");
        let seen = pods
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version;
        relay.cut();
        kube.delete("v1", "Pod", "shop", "db-1").await?;
        running_pod(&kube, "web-2", "node-a", "10.244.1.6", "web").await?;
        kube.delete(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "shop",
            "before",
        )
        .await?;
        kube.apply(deny_all("after")).await?;
        let revision = kube.compact().await?;
        running_pod(&kube, "web-3", "node-a", "10.244.1.7", "web").await?;

        // What the controller's watches face when they resume: 410 Gone.
        let mut resumed = Box::pin(
            pods.watch(&WatchParams::default(), seen.as_deref().unwrap_or("0"))
                .await?,
        );
        match futures_next(&mut resumed).await {
            Some(Ok(WatchEvent::Error(e))) if e.code == 410 => {}
            other => panic!("a watch from before compaction {revision} got {other:?}"),
        }

        let lists_before = pod_lists(&kube);
        relay.heal();
        until(
            &state,
            "deleted while cut off",
            no_workload("Kubernetes//Pod/shop/db-1"),
        )
        .await?;
        until(
            &state,
            "created while cut off",
            has_workload("Kubernetes//Pod/shop/web-2"),
        )
        .await?;
        until(
            &state,
            "created after compaction",
            has_workload("Kubernetes//Pod/shop/web-3"),
        )
        .await?;
        until(
            &state,
            "policy deleted while cut off",
            has_policy("before", false),
        )
        .await?;
        until(
            &state,
            "policy created while cut off",
            has_policy("after", true),
        )
        .await?;
        // The pod watcher relisted (the convergence above may come from other kinds' events
        // first, so wait for the audit record).
        common::eventually(Duration::from_secs(30), || async {
            let lists = pod_lists(&kube);
            if lists > lists_before {
                Ok(())
            } else {
                Err(format!(
                    "the pod watcher did not relist after 410 ({lists} lists)"
                ))
            }
        })
        .await?;
        assert_eq!(lists_before, 1, "one initial list");
        TestResult::Ok(())
    });
}

/// The next item of a stream.
async fn futures_next<S: futures::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .ok()
        .flatten()
}

/// Cluster-wide LISTs of pods so far: the controller's (the test lists per namespace).
fn pod_lists(kube: &KubeLab) -> usize {
    kube.audit()
        .iter()
        .filter(|e| {
            e["verb"] == "list"
                && e["requestURI"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("/api/v1/pods"))
        })
        .count()
}

/// The API server validates against the upstream CRDs' schemas: an object that fails them
/// is refused at the door with 422 and never reaches the controller, while a valid one
/// applied after it does.
#[test]
fn kube_objects_failing_crd_validation_never_reach_the_controller() {
    run_test(
        "kube_objects_failing_crd_validation_never_reach_the_controller",
        |dir| async move {
            ztunnel::agent::rtnl::Rtnl::open()?.set_up("lo", None)?;
            let kube = KubeLab::start(&dir, KubeLabOptions::default()).await?;
            cluster(&kube).await?;
            let token = ztunnel_token(&kube, &dir, "node-a").await?;
            let root = start_controller(&dir, kube.kubeconfig()).await?;
            let (state, _) = xds_client(control_plane(&root, &token), "node-a");
            until(&state, "listed", has_workload("Kubernetes//Pod/shop/web-1")).await?;

            let mut bad_action = deny_all("bad-action");
            bad_action["spec"]["action"] = json!("MAYBE");
            let mut bad_port = json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "bad-port", "namespace": "shop"},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                         "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
            });
            bad_port["spec"]["rules"][0]["backendRefs"][0]["port"] = json!(70000);
            for (object, field) in [(bad_action, "spec.action"), (bad_port, "port")] {
                let refused = kube
                    .apply(object.clone())
                    .await
                    .expect_err("must be refused");
                let why = format!("{refused:#}");
                assert!(why.contains("422") || why.contains("Invalid"), "{why}");
                assert!(why.contains(field), "{why}");
                let name = object["metadata"]["name"].as_str().unwrap();
                let kind = object["kind"].as_str().unwrap();
                let version = object["apiVersion"].as_str().unwrap();
                assert!(
                    kube.get(version, kind, "shop", name).await?.is_none(),
                    "{kind} stored"
                );
            }

            // A valid policy applied afterwards arrives; the refused one never did.
            kube.apply(deny_all("valid")).await?;
            until(&state, "valid policy", has_policy("valid", true)).await?;
            assert!(!state.load().policies().any(|p| p.name == "bad-action"));
            TestResult::Ok(())
        },
    );
}
