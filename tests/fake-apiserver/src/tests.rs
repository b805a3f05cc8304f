//! The server over real HTTP: reads, writes, patches, errors, and the watch events writes
//! produce.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::*;

const APPLY: &str = "application/apply-patch+yaml";
const MERGE: &str = "application/merge-patch+json";

/// One request on a fresh connection: (status code, JSON body).
async fn call(
    server: &FakeApiServer,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "fake")
        .header("user-agent", "tester/1.0");
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn server_with_namespace(ns: &str) -> FakeApiServer {
    let s = FakeApiServer::start().await.unwrap();
    s.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    s
}

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn paths_name_collections_objects_and_subresources() {
    let t = |p: &str| {
        parse_path(p).map(|t| {
            (
                t.t.kind,
                t.namespace.unwrap_or_default(),
                t.name.unwrap_or_default(),
                t.subresource.unwrap_or_default(),
            )
        })
    };
    let s = |a: &'static str, b: &str, c: &str, d: &str| {
        Some((a, b.to_string(), c.to_string(), d.to_string()))
    };
    assert_eq!(t("/api/v1/pods"), s("Pod", "", "", ""));
    assert_eq!(t("/api/v1/namespaces/a/pods"), s("Pod", "a", "", ""));
    assert_eq!(t("/api/v1/namespaces/a/pods/p"), s("Pod", "a", "p", ""));
    assert_eq!(
        t("/api/v1/namespaces/a/pods/p/status"),
        s("Pod", "a", "p", "status")
    );
    assert_eq!(t("/api/v1/namespaces/a"), s("Namespace", "", "a", ""));
    assert_eq!(
        t("/api/v1/namespaces/a/status"),
        s("Namespace", "", "a", "status")
    );
    assert_eq!(
        t("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.y"),
        s("CustomResourceDefinition", "", "x.y", "")
    );
    assert_eq!(
        t("/apis/apps/v1/namespaces/n/deployments/d"),
        s("Deployment", "n", "d", "")
    );
    assert_eq!(
        t("/api/v1/pods/p"),
        None,
        "a namespaced kind needs its namespace"
    );
    assert_eq!(t("/api/v1/namespaces/a/pods/p/exec"), None);
    assert_eq!(t("/apis/apps/v2/deployments"), None);
    assert_eq!(t("/healthz"), None);
}

#[tokio::test]
async fn server_side_apply_creates_merges_and_owns_fields() {
    let s = server_with_namespace("n").await;
    let path = "/api/v1/namespaces/n/configmaps/c";
    let cm = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n", "labels": {"a": "1"}}, "data": {"x": "1", "y": "2"}}"#;
    let (code, _) = call(&s, "PATCH", path, Some(APPLY), Some(cm)).await;
    assert_eq!(code, 400, "fieldManager is required");
    let (code, created) = call(
        &s,
        "PATCH",
        &format!("{path}?fieldManager=one&force=true"),
        Some(APPLY),
        Some(cm),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["data"], json!({"x": "1", "y": "2"}));
    assert_eq!(created["metadata"]["managedFields"][0]["manager"], "one");
    assert_eq!(
        created["metadata"]["managedFields"][0]["operation"],
        "Apply"
    );
    let first = rv(&created);

    // The same configuration again changes nothing: same resourceVersion.
    let (code, again) = call(
        &s,
        "PATCH",
        &format!("{path}?fieldManager=one"),
        Some(APPLY),
        Some(cm),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(rv(&again), first);
    assert_eq!(again, created);

    // YAML bodies work too; the manager's dropped field goes, the new one arrives.
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: {a: '1'}\ndata:\n  x: '1'\n  z: '3'\n";
    let (code, merged) = call(
        &s,
        "PATCH",
        &format!("{path}?fieldManager=one"),
        Some(APPLY),
        Some(yaml),
    )
    .await;
    assert_eq!(code, 200, "{merged}");
    assert_eq!(merged["data"], json!({"x": "1", "z": "3"}));
    assert!(rv(&merged) > first);

    // Another manager: its own field is merged in; changing one's field conflicts.
    let other = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"w": "4"}}"#;
    let (code, both) = call(
        &s,
        "PATCH",
        &format!("{path}?fieldManager=two"),
        Some(APPLY),
        Some(other),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(both["data"], json!({"x": "1", "z": "3", "w": "4"}));
    let clash = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"w": "4", "x": "9"}}"#;
    let (code, status) = call(
        &s,
        "PATCH",
        &format!("{path}?fieldManager=two"),
        Some(APPLY),
        Some(clash),
    )
    .await;
    assert_eq!(code, 409, "{status}");
    assert_eq!(status["reason"], "Conflict");
    assert_eq!(status["details"]["causes"][0]["field"], ".data.x");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("conflict with \"one\""),
        "{status}"
    );
    let (code, forced) = call(
        &s,
        "PATCH",
        &format!("{path}?fieldManager=two&force=true"),
        Some(APPLY),
        Some(clash),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(forced["data"]["x"], "9");
    // A mismatched kind or name is refused.
    let (code, _) = call(
        &s,
        "PATCH",
        &format!("{path}?fieldManager=one"),
        Some(APPLY),
        Some(r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c"}}"#),
    )
    .await;
    assert_eq!(code, 400);
    let (code, _) = call(
        &s,
        "PATCH",
        &format!("{path}?fieldManager=one"),
        Some(APPLY),
        Some(r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}}"#),
    )
    .await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn status_is_a_subresource() {
    let s = server_with_namespace("n").await;
    let path = "/apis/gateway.networking.k8s.io/v1/namespaces/n/gateways/g";
    let gw = r#"{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "g"}, "spec": {"gatewayClassName": "istio-waypoint"}, "status": {"conditions": [{"type": "Accepted"}]}}"#;
    let (code, created) = call(
        &s,
        "PATCH",
        &format!("{path}?fieldManager=user"),
        Some(APPLY),
        Some(gw),
    )
    .await;
    assert_eq!(code, 201);
    assert!(
        created.get("status").is_none(),
        "status is not set through the object"
    );
    assert_eq!(created["metadata"]["generation"], 1);

    let status = r#"{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "g"}, "spec": {"gatewayClassName": "other"}, "status": {"addresses": [{"value": "10.0.0.1"}]}}"#;
    let (code, with_status) = call(
        &s,
        "PATCH",
        &format!("{path}/status?fieldManager=controller&force=true"),
        Some(APPLY),
        Some(status),
    )
    .await;
    assert_eq!(code, 200, "{with_status}");
    assert_eq!(with_status["status"]["addresses"][0]["value"], "10.0.0.1");
    assert_eq!(
        with_status["spec"]["gatewayClassName"], "istio-waypoint",
        "the spec is not written through /status"
    );
    assert_eq!(with_status["metadata"]["generation"], 1);
    let entry = with_status["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "controller")
        .unwrap()
        .clone();
    assert_eq!(entry["subresource"], "status");

    // A merge patch of the object changes the spec (generation 2), not the status.
    let (code, patched) = call(
        &s,
        "PATCH",
        path,
        Some(MERGE),
        Some(r#"{"spec": {"listeners": [{"name": "mesh"}]}, "status": null}"#),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(patched["metadata"]["generation"], 2);
    assert_eq!(patched["status"]["addresses"][0]["value"], "10.0.0.1");
    // A strategic merge patch of /status is a merge patch of the status.
    let (code, patched) = call(
        &s,
        "PATCH",
        &format!("{path}/status"),
        Some("application/strategic-merge-patch+json"),
        Some(r#"{"status": {"addresses": null}}"#),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(patched["status"], json!({}));
    assert_eq!(patched["metadata"]["generation"], 2);
    // Applying the status of a missing object is 404.
    let (code, _) = call(
        &s,
        "PATCH",
        "/apis/gateway.networking.k8s.io/v1/namespaces/n/gateways/nope/status?fieldManager=c",
        Some(APPLY),
        Some(&status.replace("\"g\"", "\"nope\"")),
    )
    .await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn errors_are_kubernetes_statuses() {
    let s = server_with_namespace("n").await;
    let cm = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}"#;
    // Merge patch, JSON patch and DELETE of a missing object: 404 NotFound.
    for (method, ct) in [
        ("PATCH", Some(MERGE)),
        ("PATCH", Some("application/json-patch+json")),
        ("DELETE", None),
        ("GET", None),
    ] {
        let (code, st) = call(
            &s,
            method,
            "/api/v1/namespaces/n/configmaps/c",
            ct,
            Some("[]"),
        )
        .await;
        assert_eq!(code, 404, "{method} {ct:?}");
        assert_eq!(st["kind"], "Status");
        assert_eq!(st["reason"], "NotFound");
        assert_eq!(st["message"], "configmaps \"c\" not found");
        assert_eq!(st["details"]["name"], "c");
    }
    let (code, st) = call(
        &s,
        "PATCH",
        "/apis/apps/v1/namespaces/n/deployments/d",
        Some(MERGE),
        Some("{}"),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(st["message"], "deployments.apps \"d\" not found");
    // Create in a missing namespace: 404 for the namespace.
    let (code, st) = call(
        &s,
        "POST",
        "/api/v1/namespaces/missing/configmaps",
        Some("application/json"),
        Some(cm),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(st["message"], "namespaces \"missing\" not found");
    let (code, st) = call(
        &s,
        "PATCH",
        "/api/v1/namespaces/missing/configmaps/c?fieldManager=x",
        Some(APPLY),
        Some(cm),
    )
    .await;
    assert_eq!(code, 404, "{st}");
    // Create twice: 409 AlreadyExists.
    let (code, created) = call(
        &s,
        "POST",
        "/api/v1/namespaces/n/configmaps",
        Some("application/json"),
        Some(cm),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(created["metadata"]["managedFields"][0]["manager"], "tester");
    let (code, st) = call(
        &s,
        "POST",
        "/api/v1/namespaces/n/configmaps",
        Some("application/json"),
        Some(cm),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(st["reason"], "AlreadyExists");
    // An unknown patch format: 415.
    let (code, st) = call(
        &s,
        "PATCH",
        "/api/v1/namespaces/n/configmaps/c",
        Some("text/plain"),
        Some("x"),
    )
    .await;
    assert_eq!(code, 415);
    assert_eq!(st["reason"], "UnsupportedMediaType");
    // A stale resourceVersion: 409 Conflict.
    let stale = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "1"}, "data": {"a": "2"}}"#;
    let (code, st) = call(
        &s,
        "PUT",
        "/api/v1/namespaces/n/configmaps/c",
        Some("application/json"),
        Some(stale),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(st["reason"], "Conflict");
    // An injected error answers every matching request until cleared.
    s.inject_error(Some("PATCH"), "/configmaps/", 403);
    let (code, st) = call(
        &s,
        "PATCH",
        "/api/v1/namespaces/n/configmaps/c",
        Some(MERGE),
        Some("{}"),
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(st["reason"], "Forbidden");
    let (code, _) = call(&s, "GET", "/api/v1/namespaces/n/configmaps/c", None, None).await;
    assert_eq!(code, 200, "only PATCH was refused");
    s.clear_injected_errors();
    let (code, _) = call(
        &s,
        "PATCH",
        "/api/v1/namespaces/n/configmaps/c",
        Some(MERGE),
        Some("{}"),
    )
    .await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn writes_reach_watches_and_deletes_remove() {
    let s = server_with_namespace("n").await;
    let start = rv(&s.get("Namespace", "", "n").unwrap());
    let path = "/api/v1/namespaces/n/configmaps/c";
    let cm = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}"#;
    call(
        &s,
        "PATCH",
        &format!("{path}?fieldManager=m"),
        Some(APPLY),
        Some(cm),
    )
    .await;
    // A no-op merge patch: no event.
    call(
        &s,
        "PATCH",
        path,
        Some(MERGE),
        Some(r#"{"data": {"a": "1"}}"#),
    )
    .await;
    let (_, patched) = call(
        &s,
        "PATCH",
        path,
        Some("application/json-patch+json"),
        Some(r#"[{"op": "add", "path": "/data/b", "value": "2"}]"#),
    )
    .await;
    assert_eq!(patched["data"], json!({"a": "1", "b": "2"}));
    let (code, deleted) = call(&s, "DELETE", path, None, None).await;
    assert_eq!(code, 200);
    assert_eq!(deleted["metadata"]["name"], "c");
    assert!(s.get("ConfigMap", "n", "c").is_none());

    // Watching from before: ADDED, MODIFIED (the JSON patch only), DELETED.
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!(
            "/api/v1/namespaces/n/configmaps?watch=true&resourceVersion={start}"
        ))
        .header("host", "fake")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let mut text = String::new();
    while text.lines().count() < 3 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("events in time")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
}

#[tokio::test]
async fn secrets_store_string_data_as_data() {
    let s = server_with_namespace("n").await;
    let secret = r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "hello"}}"#;
    let (code, stored) = call(
        &s,
        "PATCH",
        "/api/v1/namespaces/n/secrets/s?fieldManager=m",
        Some(APPLY),
        Some(secret),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(stored["data"]["k"], "aGVsbG8=");
    assert!(stored.get("stringData").is_none());
    let (_, again) = call(
        &s,
        "PATCH",
        "/api/v1/namespaces/n/secrets/s?fieldManager=m",
        Some(APPLY),
        Some(secret),
    )
    .await;
    assert_eq!(
        rv(&again),
        rv(&stored),
        "re-applying the same secret changes nothing"
    );
}

#[tokio::test]
async fn in_process_patch_and_token_reviews() {
    let s = server_with_namespace("n").await;
    s.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "w", "namespace": "n"}, "spec": {"ports": []}}));
    s.patch(
        "Service",
        "n",
        "w",
        json!({"spec": {"clusterIP": "10.96.0.9"}}),
    )
    .unwrap();
    assert_eq!(
        s.get("Service", "n", "w").unwrap()["spec"]["clusterIP"],
        "10.96.0.9"
    );
    assert!(s.patch("Service", "n", "nope", json!({})).is_none());
    s.add_pod_token(
        "t",
        "system:serviceaccount:n:w",
        Some("node-1"),
        "w-1",
        "uid-9",
    );
    let (code, review) = call(
        &s,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        Some("application/json"),
        Some(r#"{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "t"}}"#),
    )
    .await;
    assert_eq!(code, 201);
    let extra = &review["status"]["user"]["extra"];
    assert_eq!(extra["authentication.kubernetes.io/pod-name"][0], "w-1");
    assert_eq!(extra["authentication.kubernetes.io/pod-uid"][0], "uid-9");
    assert_eq!(extra["authentication.kubernetes.io/node-name"][0], "node-1");
}

/// The page of all pods (two at a time) after `page`.
async fn next_page(s: &FakeApiServer, page: &Value) -> Value {
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("a continue token");
    let path = format!("/api/v1/pods?limit=2&continue={token}");
    call(s, "GET", &path, None, None).await.1
}

#[tokio::test]
async fn lists_come_in_pages_when_asked() {
    let s = server_with_namespace("a").await;
    s.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}}));
    for (ns, name) in [
        ("a", "p1"),
        ("a", "p2"),
        ("b", "p3"),
        ("b", "p4"),
        ("b", "p5"),
    ] {
        s.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns}}));
    }
    let names = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    // Unpaged: everything, no token.
    let (code, all) = call(&s, "GET", "/api/v1/pods", None, None).await;
    assert_eq!(code, 200);
    assert_eq!(names(&all), ["p1", "p2", "p3", "p4", "p5"]);
    assert!(all["metadata"].get("continue").is_none());
    let listed_at = rv(&all);

    // Pages of two; a write between pages shows up, and the list keeps its first version.
    let (_, first) = call(&s, "GET", "/api/v1/pods?limit=2", None, None).await;
    assert_eq!(names(&first), ["p1", "p2"]);
    assert_eq!(first["metadata"]["remainingItemCount"], json!(3));
    s.apply(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p6", "namespace": "b"}}),
    );
    let second = next_page(&s, &first).await;
    assert_eq!(names(&second), ["p3", "p4"]);
    assert_eq!(rv(&second), listed_at);
    let last = next_page(&s, &second).await;
    assert_eq!(names(&last), ["p5", "p6"]);
    assert!(last["metadata"].get("continue").is_none());

    // Per namespace, a page that ends exactly at the end has no token.
    let (_, ns_a) = call(&s, "GET", "/api/v1/namespaces/a/pods?limit=2", None, None).await;
    assert_eq!(names(&ns_a), ["p1", "p2"]);
    assert!(ns_a["metadata"].get("continue").is_none());

    let (code, bad) = call(
        &s,
        "GET",
        "/api/v1/pods?limit=2&continue=nonsense",
        None,
        None,
    )
    .await;
    assert_eq!((code, bad["reason"].as_str()), (400, Some("BadRequest")));
}
