//! The CA authenticates proxies by TokenReview against a real API server (kube-lab): bound
//! service-account tokens minted by TokenRequest for the CA's audience (`ambient-ca`), as
//! the ztunnel DaemonSet's projected volume holds them. A ztunnel's token gets the
//! identities of its node's pods and is refused those of another node's pods; a token for
//! another audience, a token bound to no pod, and a token of an account that is no ztunnel
//! are refused.
//!
//! This replaces the fake API server's TokenReview (whose tokens were strings it was told
//! to accept); the assertions of the fake-based test are kept.

#![forbid(unsafe_code)]

mod common;
mod kube_common;

use std::time::Duration;

use ambient_lab::kube::{CA_AUDIENCE, ISSUER, KubeLab, KubeLabOptions};
use ambient_lab::sandbox::run_test;
use ambient_proto::identity::Identity;
use kube_common::*;
use proxy_core::identity::CertificateSource;
use proxy_core::identity::ca_client::CaClient;
use serde_json::json;

#[test]
fn kube_ca_authenticates_bound_tokens_by_token_review() {
    run_test(
        "kube_ca_authenticates_bound_tokens_by_token_review",
        |dir| async move {
            ztunnel::agent::rtnl::Rtnl::open()?.set_up("lo", None)?;
            let kube = KubeLab::start(&dir, KubeLabOptions::default()).await?;
            kube.add_node("node-a").await?;
            kube.add_node("node-b").await?;
            kube.install_upstream_crds().await?;
            ztunnel_accounts(&kube).await?;
            kube.apply(namespace("shop", true)).await?;
            for sa in ["web", "db", "sleep"] {
                kube.apply(service_account("shop", sa)).await?;
            }
            running_pod(&kube, "web-1", "node-a", "10.244.1.5", "web").await?;
            running_pod(&kube, "db-1", "node-b", "10.244.2.5", "db").await?;
            running_pod(&kube, "sleep-1", "node-a", "10.244.1.8", "sleep").await?;
            let token = ztunnel_token(&kube, &dir, "node-a").await?;
            let root = start_controller(&dir, kube.kubeconfig()).await?;
            let ca = CaClient::new(control_plane(&root, &token), Duration::from_secs(600))?;

            // node-a's ztunnel may have web's identity (web-1 runs on node-a)...
            let web_id: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse()?;
            let cert = common::eventually(Duration::from_secs(30), || async {
                ca.fetch(&web_id).await.map_err(|e| format!("{e:?}"))
            })
            .await?;
            assert_eq!(cert.identity(), &web_id);
            // ...not db's: db's only pod runs on node-b.
            let db_id: Identity = "spiffe://cluster.local/ns/shop/sa/db".parse()?;
            let (code, message) = refusal(&ca, &db_id, "another node's pod").await?;
            assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
            assert!(message.contains("node node-a"), "{message}");

            // The same ztunnel account and pod, but a token minted for the API server's
            // audience: the review for `ambient-ca` does not authenticate it.
            let wrong = kube
                .token("istio-system", "ztunnel", ISSUER, Some("ztunnel-node-a"))
                .await?;
            std::fs::write(&token, wrong)?;
            let (code, message) =
                refusal(&ca, &web_id, "a token for the API server's audience").await?;
            assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
            assert!(message.contains("not valid"), "{message}");

            // A ztunnel token bound to no pod names no node.
            let unbound = kube
                .token("istio-system", "ztunnel", CA_AUDIENCE, None)
                .await?;
            std::fs::write(&token, unbound)?;
            let (code, message) = refusal(&ca, &web_id, "a token bound to no pod").await?;
            assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
            assert!(message.contains("names no node"), "{message}");

            // A valid bound token of a service account that is not a ztunnel is refused.
            let intruder = kube
                .token("shop", "sleep", CA_AUDIENCE, Some("sleep-1"))
                .await?;
            std::fs::write(&token, intruder)?;
            let (code, message) =
                refusal(&ca, &web_id, "a token of an account that is no ztunnel").await?;
            assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
            assert!(message.contains("not a ztunnel"), "{message}");

            // A token bound to a pod that is deleted stops working (the API server checks
            // the bound object), and the refusal says the token is not valid.
            kube.apply(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "ztunnel-old", "namespace": "istio-system"},
                "spec": {"nodeName": "node-a", "serviceAccountName": "ztunnel",
                         "containers": [{"name": "ztunnel", "image": "ztunnel"}]},
            }))
            .await?;
            let stale = kube
                .token("istio-system", "ztunnel", CA_AUDIENCE, Some("ztunnel-old"))
                .await?;
            std::fs::write(&token, stale)?;
            assert_eq!(ca.fetch(&web_id).await?.identity(), &web_id);
            kube.delete("v1", "Pod", "istio-system", "ztunnel-old")
                .await?;
            kube.wait_for(
                ("v1", "Pod"),
                "istio-system",
                "ztunnel-old",
                Duration::from_secs(30),
                |p| p.is_none(),
            )
            .await?;
            // The API server caches a successful token review for 10 s
            // (kube-apiserver's token success cache), so the refusal comes within that.
            let deleted = std::time::Instant::now();
            let (code, message) = common::eventually(Duration::from_secs(30), || {
                refusal(&ca, &web_id, "a token bound to a deleted pod")
            })
            .await?;
            assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
            println!(
                "a token bound to a deleted pod was refused {:?} after the deletion",
                deleted.elapsed()
            );
            TestResult::Ok(())
        },
    );
}
