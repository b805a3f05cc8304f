//! `ambientctl install --kubeconfig` against the fake API server over real HTTP: server-side
//! apply creates every object the dry run prints (with its content), a second install
//! changes nothing (the CA is kept, every resourceVersion stays), and a server that refuses or
//! is gone gives a clear error and exit code 1.

#![forbid(unsafe_code)]

use std::path::Path;
use std::process::Output;

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

async fn ambientctl(args: &[&str]) -> Output {
    tokio::process::Command::new(e2e::EXE)
        .args(args)
        .output()
        .await
        .expect("running ambientctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_kubeconfig(dir: &Path, api: &FakeApiServer) -> String {
    let path = dir.join("kubeconfig");
    std::fs::write(&path, api.kubeconfig()).unwrap();
    path.display().to_string()
}

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

/// Every object the fake server holds of the kinds install renders, with its
/// resourceVersion.
fn versions(api: &FakeApiServer) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Secret",
        "ConfigMap",
        "Service",
        "Deployment",
        "DaemonSet",
    ] {
        for o in api.list(kind) {
            out.push((
                kind.to_string(),
                o["metadata"]["name"].as_str().unwrap().to_string(),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_applies_the_dry_run_objects_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApiServer::start().await.unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &api);

    let dry = ambientctl(&["install", "--dry-run", "-o", "json"]).await;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let list: Value = serde_json::from_slice(&dry.stdout).unwrap();
    let rendered = list["items"].as_array().unwrap().clone();

    let first = ambientctl(&["install", "--kubeconfig", &kubeconfig]).await;
    let out = text(&first.stdout);
    assert!(
        first.status.success(),
        "install failed: {}\n{out}",
        text(&first.stderr)
    );
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" created")).count(),
        rendered.len(),
        "{out}"
    );

    for want in &rendered {
        let kind = want["kind"].as_str().unwrap();
        let name = want["metadata"]["name"].as_str().unwrap();
        let ns = want["metadata"]["namespace"].as_str().unwrap_or_default();
        let stored = api
            .get(kind, ns, name)
            .unwrap_or_else(|| panic!("{kind} {ns}/{name} was not created"));
        assert_eq!(
            stored["metadata"]["managedFields"][0]["manager"], "ambientctl",
            "{kind}/{name} applied with ambientctl's field manager"
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
            _ => {
                contains(&stored, want, &format!("{kind}/{name}")).unwrap_or_else(|e| panic!("{e}"))
            }
        }
    }
    // The Secret's keys were stored (as data) and the published root is its root.
    let secret: Secret =
        serde_json::from_value(api.get("Secret", "istio-system", "cacerts").unwrap()).unwrap();
    let data = secret.data.unwrap();
    let root = String::from_utf8(data["root-cert.pem"].0.clone()).unwrap();
    assert!(root.contains("BEGIN CERTIFICATE"));
    assert!(String::from_utf8_lossy(&data["ca-key.pem"].0).contains("PRIVATE KEY"));
    let config_map = api
        .get("ConfigMap", "istio-system", "ambient-ca-root")
        .unwrap();
    assert_eq!(config_map["data"]["root-cert.pem"], root.as_str());
    // The controller may deploy waypoints.
    let role = api.get("ClusterRole", "", "ambient-controller").unwrap();
    let rules = role["rules"].as_array().unwrap();
    assert!(rules.iter().any(|r| r["apiGroups"][0] == "apps"
        && r["resources"][0] == "deployments"
        && r["verbs"].as_array().unwrap().iter().any(|v| v == "patch")));
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("PATCH ") && r.contains("fieldManager=ambientctl")),
        "server-side apply"
    );

    // Again: nothing changes, the CA is kept.
    let before = versions(&api);
    assert_eq!(before.len(), rendered.len());
    let second = ambientctl(&["install", "--kubeconfig", &kubeconfig]).await;
    let out = text(&second.stdout);
    assert!(
        second.status.success(),
        "second install failed: {}\n{out}",
        text(&second.stderr)
    );
    assert!(out.contains("secret/cacerts kept (existing CA)"), "{out}");
    assert!(
        out.contains("customresourcedefinition/gateways.gateway.networking.k8s.io unchanged"),
        "{out}"
    );
    assert!(!out.contains(" created"), "{out}");
    assert_eq!(versions(&api), before, "a second install changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_reports_a_refusing_or_missing_server() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApiServer::start().await.unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &api);

    // Writes are forbidden (RBAC): the first apply fails, nothing is created.
    api.inject_error(Some("PATCH"), "", 403);
    let refused = ambientctl(&["install", "--kubeconfig", &kubeconfig]).await;
    let err = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains("applying customresourcedefinition/authorizationpolicies.security.istio.io"),
        "{err}"
    );
    assert!(err.contains("forbidden"), "{err}");
    assert!(api.list("CustomResourceDefinition").is_empty());

    // Nobody listens any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gone = dir.path().join("gone");
    std::fs::write(
        &gone,
        api.kubeconfig()
            .replace(&api.url(), &format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    let missing = ambientctl(&["install", "--kubeconfig", gone.to_str().unwrap()]).await;
    let err = text(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{err}");
    assert!(err.starts_with("ambientctl: "), "{err}");
    assert!(
        err.contains("customresourcedefinition/authorizationpolicies.security.istio.io"),
        "names what it was doing: {err}"
    );
    assert!(text(&missing.stdout).is_empty());
}
