//! `ambientctl install`: the rendered manifests are valid Kubernetes objects (parsed back into
//! k8s-openapi types), `-o json` is a `List`, and without a cluster nothing is attempted.
//!
//! The apply path (server-side apply against a real API server) is in tests/kube_install.rs.

#![forbid(unsafe_code)]

use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn ambientctl(args: &[&str]) -> Output {
    Command::new(e2e::EXE)
        .args(args)
        .output()
        .expect("running ambientctl")
}

/// Parses `value` as `T` and checks nothing was lost on the way.
fn typed<T: DeserializeOwned + serde::Serialize>(value: &Value) -> T {
    let object: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| {
        panic!(
            "{}/{} is not a valid {}: {e}",
            value["kind"], value["metadata"]["name"], value["kind"]
        )
    });
    assert_eq!(
        &serde_json::to_value(&object).unwrap(),
        value,
        "{}/{} lost fields parsing",
        value["kind"],
        value["metadata"]["name"]
    );
    object
}

/// Parses one object into its k8s-openapi type by kind.
fn check_kind(value: &Value) {
    match value["kind"].as_str().expect("kind") {
        "Namespace" => drop(typed::<Namespace>(value)),
        "ServiceAccount" => drop(typed::<ServiceAccount>(value)),
        "ClusterRole" => drop(typed::<ClusterRole>(value)),
        "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(value)),
        "Secret" => drop(typed::<Secret>(value)),
        "ConfigMap" => drop(typed::<ConfigMap>(value)),
        "Service" => drop(typed::<Service>(value)),
        "Deployment" => drop(typed::<Deployment>(value)),
        "DaemonSet" => drop(typed::<DaemonSet>(value)),
        "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(value)),
        other => panic!("unexpected kind {other}"),
    }
}

fn documents(yaml: &str) -> Vec<Value> {
    ambient_controller::source::yaml::parse(yaml)
        .expect("YAML documents")
        .into_iter()
        .map(|doc| doc.value)
        .collect()
}

#[test]
fn install_dry_run_is_valid_kubernetes_yaml() {
    let out = ambientctl(&["install", "--dry-run"]);
    assert!(
        out.status.success(),
        "install --dry-run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs = documents(&yaml);
    assert_eq!(
        docs.len(),
        yaml.lines().filter(|l| *l == "---").count(),
        "one object per document"
    );
    for doc in &docs {
        check_kind(doc);
    }
    let names: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "CustomResourceDefinition/authorizationpolicies.security.istio.io",
        "CustomResourceDefinition/peerauthentications.security.istio.io",
        "CustomResourceDefinition/gateways.gateway.networking.k8s.io",
        "Namespace/istio-system",
        "ServiceAccount/ambient-controller",
        "ServiceAccount/ztunnel",
        "ClusterRole/ambient-controller",
        "ClusterRole/ztunnel",
        "ClusterRoleBinding/ambient-controller",
        "ClusterRoleBinding/ztunnel",
        "ConfigMap/ambient-ca-root",
        "Service/ambient-controller",
        "Deployment/ambient-controller",
        "DaemonSet/ztunnel",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing {expected} in {names:?}"
        );
    }
    // Dependencies first: the CRDs and the namespace precede every namespaced object.
    let ns_at = names
        .iter()
        .position(|n| n == "Namespace/istio-system")
        .unwrap();
    assert!(
        docs[..ns_at]
            .iter()
            .all(|d| d["kind"] == "CustomResourceDefinition")
    );

    let version = env!("CARGO_PKG_VERSION");
    let deployment: Deployment = typed(docs.iter().find(|d| d["kind"] == "Deployment").unwrap());
    let image = deployment.spec.template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    assert_eq!(
        image,
        format!("ghcr.io/ambient-rs/ambient-controller:{version}")
    );
}

#[test]
fn install_options_change_the_output() {
    let out = ambientctl(&[
        "install",
        "--dry-run",
        "--namespace",
        "mesh-system",
        "--image-hub",
        "registry.example/ambient",
        "--tag",
        "dev",
        "--trust-domain",
        "example.org",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&String::from_utf8(out.stdout).unwrap());
    for doc in &docs {
        check_kind(doc);
        if let Some(ns) = doc["metadata"]["namespace"].as_str() {
            assert_eq!(ns, "mesh-system");
        }
    }
    let ds: DaemonSet = typed(docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap());
    let pod = ds.spec.template.spec.unwrap();
    // Each container its own image: ztunnel, and the node agent (with the CNI plugin).
    for c in &pod.containers {
        assert_eq!(
            c.image.as_deref(),
            Some(format!("registry.example/ambient/{}:dev", c.name).as_str())
        );
    }
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["ztunnel", "node-agent"]);
    let args = pod.containers[0].args.clone().unwrap().join(" ");
    assert!(args.contains("--controller-address https://ambient-controller.mesh-system.svc:15012"));
    assert!(args.contains("--trust-domain example.org"));
}

#[test]
fn install_json_output_is_a_list() {
    let out = ambientctl(&["install", "--dry-run", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    assert!(items.len() >= 14);
    for item in items {
        check_kind(item);
    }
}

#[test]
fn install_without_a_cluster_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kubeconfig");
    let out = Command::new(e2e::EXE)
        .arg("install")
        .env("KUBECONFIG", &missing)
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no Kubernetes cluster configured"),
        "{stderr}"
    );
    assert!(stderr.contains("--dry-run"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing applied: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // An explicit --kubeconfig that does not exist fails the same way.
    let out = Command::new(e2e::EXE)
        .args(["install", "--kubeconfig"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dry-run"));
}
