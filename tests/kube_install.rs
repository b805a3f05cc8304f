//! `ambientctl install --kubeconfig` against a real API server (kube-lab): server-side apply
//! creates every object the dry run prints (with its content, as the server stores and
//! defaults it), a second install changes nothing (the CA is kept), the controller runs with
//! the RBAC install grants; on a cluster that already has the upstream CRDs (the common case)
//! they are left as they are; a user RBAC forbids to write, and a server that is gone, give a
//! clear error and exit code 1.
//!
//! These replace the fake-API-server tests of install (their assertions are kept): the 403
//! now comes from real RBAC instead of an injected error.

#![forbid(unsafe_code)]

mod common;
mod kube_common;

use std::path::Path;
use std::time::Duration;

use ambient_lab::kube::{KubeLab, KubeLabOptions, READ_CRDS};
use ambient_lab::sandbox::run_test;
use k8s_openapi::api::core::v1::Secret;
use kube_common::*;
use serde_json::{Value, json};

/// Whether `stored` holds everything in `want` (maps: every key; lists: the same length,
/// element by element).
fn contains(stored: &Value, want: &Value, at: &str) -> Result<(), String> {
    match (stored, want) {
        (Value::Object(s), Value::Object(w)) => {
            for (k, v) in w {
                let here = format!("{at}.{k}");
                let got = s.get(k).ok_or_else(|| format!("{here} missing"))?;
                contains(got, v, &here)?;
            }
            Ok(())
        }
        (Value::Array(s), Value::Array(w)) if s.len() == w.len() => s
            .iter()
            .zip(w)
            .enumerate()
            .try_for_each(|(i, (s, w))| contains(s, w, &format!("{at}[{i}]"))),
        (s, w) if s == w => Ok(()),
        (s, w) => Err(format!("{at}: {s} instead of {w}")),
    }
}

/// The entry of `manager` in the object's managedFields.
fn managed<'a>(o: &'a Value, manager: &str) -> Option<&'a Value> {
    o["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|m| m["manager"] == manager)
}

/// The dry run's objects.
async fn rendered() -> Vec<Value> {
    let dry = ambientctl(&["install", "--dry-run", "-o", "json"]).await;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let list: Value = serde_json::from_slice(&dry.stdout).unwrap();
    list["items"].as_array().unwrap().clone()
}

async fn stored(kube: &KubeLab, want: &Value) -> Option<Value> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    kube.get(
        &s(&want["apiVersion"]),
        &s(&want["kind"]),
        &s(&want["metadata"]["namespace"]),
        &s(&want["metadata"]["name"]),
    )
    .await
    .unwrap()
}

/// What install owns in every object it renders: the object's generation and ambientctl's
/// managedFields entry (its time changes with any change install makes). resourceVersions
/// also move when controllers write status, which install does not touch.
async fn owned(kube: &KubeLab, objects: &[Value]) -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    for want in objects {
        let o = stored(kube, want).await.expect("installed");
        out.push((
            format!("{}/{}", want["kind"], want["metadata"]["name"]),
            o["metadata"]["generation"].clone(),
            managed(&o, "ambientctl").cloned().unwrap_or(Value::Null),
        ));
    }
    out
}

/// `ambientctl uninstall`, with the test acting as the nodes' kubelets: a ztunnel pod
/// marked for deletion is removed at once (its containers have exited). Returns the output.
async fn uninstall(kube: &KubeLab, kubeconfig: &str) -> String {
    let mut run = tokio::process::Command::new(e2e::EXE)
        .args([
            "uninstall",
            "--kubeconfig",
            kubeconfig,
            "--wait-seconds",
            "60",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running ambientctl uninstall");
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(kube.client(), "istio-system");
    let output = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        for pod in pods.list(&Default::default()).await.unwrap().items {
            if pod.metadata.deletion_timestamp.is_some() {
                let name = pod.metadata.name.unwrap();
                let _ = kube.delete("v1", "Pod", "istio-system", &name).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = run.wait_with_output().await.unwrap();
    let stdout = text(&out.stdout);
    assert!(
        output.success(),
        "uninstall failed: {}\n{stdout}",
        text(&out.stderr)
    );
    stdout
}

async fn install(kubeconfig: &str) -> String {
    let run = ambientctl(&["install", "--kubeconfig", kubeconfig]).await;
    let out = text(&run.stdout);
    assert!(
        run.status.success(),
        "install failed: {}\n{out}",
        text(&run.stderr)
    );
    out
}

#[test]
fn kube_install_applies_the_dry_run_objects_and_is_idempotent() {
    run_test(
        "kube_install_applies_the_dry_run_objects_and_is_idempotent",
        |dir| async move {
            ztunnel::agent::rtnl::Rtnl::open()?.set_up("lo", None)?;
            let kube = KubeLab::start(&dir, KubeLabOptions::default()).await?;
            let kubeconfig = kube.kubeconfig().display().to_string();
            let rendered = rendered().await;

            // A bare cluster: no CRDs at all, install brings its own.
            let out = install(&kubeconfig).await;
            assert_eq!(
                out.lines().filter(|l| l.ends_with(" created")).count(),
                rendered.len(),
                "{out}"
            );
            for want in &rendered {
                let kind = want["kind"].as_str().unwrap();
                let name = want["metadata"]["name"].as_str().unwrap();
                let stored = stored(&kube, want)
                    .await
                    .unwrap_or_else(|| panic!("{kind} {name} was not created"));
                let entry = managed(&stored, "ambientctl")
                    .unwrap_or_else(|| panic!("{kind}/{name} has no ambientctl field manager"));
                assert_eq!(
                    entry["operation"], "Apply",
                    "{kind}/{name}: server-side apply"
                );
                match kind {
                    // The CA is generated anew by each run: compare everything but the keys.
                    "Secret" => {
                        let mut w = want.clone();
                        w.as_object_mut().unwrap().remove("stringData");
                        contains(&stored, &w, kind).unwrap();
                        assert!(stored.get("stringData").is_none());
                    }
                    "ConfigMap" => {
                        let mut w = want.clone();
                        w.as_object_mut().unwrap().remove("data");
                        contains(&stored, &w, kind).unwrap();
                    }
                    _ => contains(&stored, want, &format!("{kind}/{name}"))
                        .unwrap_or_else(|e| panic!("{e}")),
                }
            }
            // The Secret's keys were stored (as data) and the published root is its root.
            let secret: Secret = serde_json::from_value(
                kube.get("v1", "Secret", "istio-system", "cacerts")
                    .await?
                    .unwrap(),
            )?;
            let data = secret.data.unwrap();
            let root = String::from_utf8(data["root-cert.pem"].0.clone())?;
            assert!(root.contains("BEGIN CERTIFICATE"));
            assert!(String::from_utf8_lossy(&data["ca-key.pem"].0).contains("PRIVATE KEY"));
            let config_map = kube
                .get("v1", "ConfigMap", "istio-system", "ambient-ca-root")
                .await?
                .unwrap();
            assert_eq!(config_map["data"]["root-cert.pem"], root.as_str());
            // The controller may deploy waypoints.
            let role = kube
                .get(
                    "rbac.authorization.k8s.io/v1",
                    "ClusterRole",
                    "",
                    "ambient-controller",
                )
                .await?
                .unwrap();
            let rules = role["rules"].as_array().unwrap();
            assert!(rules.iter().any(|r| r["apiGroups"][0] == "apps"
                && r["resources"][0] == "deployments"
                && r["verbs"].as_array().unwrap().iter().any(|v| v == "patch")));

            // Again: nothing changes, the CA is kept.
            let before = owned(&kube, &rendered).await;
            let out = install(&kubeconfig).await;
            assert!(out.contains("secret/cacerts kept (existing CA)"), "{out}");
            assert!(
                out.contains(
                    "customresourcedefinition/gateways.gateway.networking.k8s.io unchanged"
                ),
                "{out}"
            );
            assert!(!out.contains(" created"), "{out}");
            assert_eq!(
                owned(&kube, &rendered).await,
                before,
                "a second install changes nothing"
            );
            let again: Secret = serde_json::from_value(
                kube.get("v1", "Secret", "istio-system", "cacerts")
                    .await?
                    .unwrap(),
            )?;
            assert_eq!(again.data.unwrap()["root-cert.pem"].0, root.as_bytes());

            // The controller runs with the rights install gave its account: it lists and
            // watches (the kinds of install's own CRDs, and no others), reviews tokens and
            // serves a ztunnel.
            let controller_kubeconfig = dir.join("controller-kubeconfig");
            kube.kubeconfig_for("istio-system", "ambient-controller", &controller_kubeconfig)
                .await?;
            kube.add_node("node-a").await?;
            kube.apply(namespace("shop", true)).await?;
            kube.apply(service_account("shop", "web")).await?;
            running_pod(&kube, "web-1", "node-a", "10.244.1.5", "web").await?;
            let token = ztunnel_token(&kube, &dir, "node-a").await?;
            let ca_root = start_controller(&dir, &controller_kubeconfig).await?;
            let (state, readiness) = xds_client(control_plane(&ca_root, &token), "node-a");
            common::eventually(Duration::from_secs(30), || async {
                match state.load().workload_by_uid("Kubernetes//Pod/shop/web-1") {
                    Some(_) if readiness.is_ready() => Ok(()),
                    _ => Err("web-1 not served".to_string()),
                }
            })
            .await?;

            // Uninstall leaves nothing install created (a namespace and a CRD go once
            // their finalizers have run).
            let out = uninstall(&kube, &kubeconfig).await;
            assert!(out.contains("daemonset/ztunnel deleted"), "{out}");
            assert!(
                out.lines()
                    .next()
                    .unwrap_or_default()
                    .starts_with("daemonset/"),
                "{out}"
            );
            for want in &rendered {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                kube.wait_for(
                    (&s(&want["apiVersion"]), &s(&want["kind"])),
                    &s(&want["metadata"]["namespace"]),
                    &s(&want["metadata"]["name"]),
                    Duration::from_secs(60),
                    |o| o.is_none(),
                )
                .await?;
            }
            TestResult::Ok(())
        },
    );
}

#[test]
fn kube_install_keeps_upstream_crds_and_reports_refusals() {
    run_test(
        "kube_install_keeps_upstream_crds_and_reports_refusals",
        |dir| async move {
            ztunnel::agent::rtnl::Rtnl::open()?.set_up("lo", None)?;
            let mut kube = KubeLab::start(&dir, KubeLabOptions::default()).await?;
            let kubeconfig = kube.kubeconfig().display().to_string();
            let crds = ("apiextensions.k8s.io/v1", "CustomResourceDefinition");
            let crd_api = kube.api(crds.0, crds.1, "").await?;

            // A user whom RBAC lets read everything and write nothing: the first apply is
            // forbidden, nothing is created.
            kube.apply(service_account("default", "reader")).await?;
            kube.apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "reader"},
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}],
            }))
            .await?;
            kube.apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "default"}],
            }))
            .await?;
            let reader = dir.join("reader-kubeconfig");
            kube.kubeconfig_for("default", "reader", &reader).await?;
            let refused = ambientctl(&["install", "--kubeconfig", reader.to_str().unwrap()]).await;
            let err = text(&refused.stderr);
            assert_eq!(refused.status.code(), Some(1), "{err}");
            assert!(
                err.contains(
                    "applying customresourcedefinition/authorizationpolicies.security.istio.io"
                ),
                "{err}"
            );
            assert!(err.contains("forbidden"), "{err}");
            assert!(crd_api.list(&Default::default()).await?.items.is_empty());

            // The common case: the upstream CRDs are there. Install leaves them alone.
            kube.install_upstream_crds().await?;
            let upstream = |name: &str| {
                let crd_api = crd_api.clone();
                let name = name.to_string();
                async move { serde_json::to_value(crd_api.get(&name).await.unwrap()).unwrap() }
            };
            let mut before = Vec::new();
            for name in READ_CRDS {
                before.push(upstream(name).await);
            }
            let out = install(&kubeconfig).await;
            for name in [
                "authorizationpolicies.security.istio.io",
                "peerauthentications.security.istio.io",
                "gateways.gateway.networking.k8s.io",
            ] {
                assert!(
                    out.contains(&format!(
                        "customresourcedefinition/{name} unchanged (already installed)"
                    )),
                    "{out}"
                );
            }
            for (name, was) in READ_CRDS.iter().zip(&before) {
                let now = upstream(name).await;
                // The spec is untouched (generation); the resourceVersion may move, as the
                // API server's own controllers still write these CRDs' status (the API
                // approval condition of a *.k8s.io group comes a moment after Established).
                assert_eq!(
                    now["metadata"]["generation"], was["metadata"]["generation"],
                    "{name}"
                );
                assert_eq!(now["spec"], was["spec"], "{name}");
                assert!(managed(&now, "ambientctl").is_none(), "{name}");
            }
            let gateways = upstream("gateways.gateway.networking.k8s.io").await;
            assert_eq!(
                gateways["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"],
                "v1.6.3",
                "the upstream bundle's Gateway CRD"
            );
            // And again.
            let out = install(&kubeconfig).await;
            assert!(!out.contains(" created"), "{out}");
            assert!(out.contains("secret/cacerts kept (existing CA)"), "{out}");

            // Uninstall takes what install made and leaves the upstream CRDs as they were.
            let out = uninstall(&kube, &kubeconfig).await;
            assert!(
                out.contains("customresourcedefinition/gateways.gateway.networking.k8s.io kept"),
                "{out}"
            );
            for (name, was) in READ_CRDS.iter().zip(&before) {
                assert_eq!(upstream(name).await["spec"], was["spec"], "{name}");
            }

            // Nobody listens any more.
            kube.stop().await;
            let missing = ambientctl(&["install", "--kubeconfig", &kubeconfig]).await;
            let err = text(&missing.stderr);
            assert_eq!(missing.status.code(), Some(1), "{err}");
            assert!(err.starts_with("ambientctl: "), "{err}");
            assert!(
                err.contains("customresourcedefinition/authorizationpolicies.security.istio.io"),
                "names what it was doing: {err}"
            );
            assert!(text(&missing.stdout).is_empty());
            let _ = Path::new(&kubeconfig);
            TestResult::Ok(())
        },
    );
}
