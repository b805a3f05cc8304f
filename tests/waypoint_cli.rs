//! `ambientctl waypoint` as a user drives it, on the built binary: `generate` prints the
//! Gateway istioctl would; a local mesh deploys a waypoint for a Gateway in its directory
//! (pod running, known to ztunnel, Programmed with an address); `apply --enroll-namespace`
//! adds one live and the namespace's services use it; `delete` removes it, but refuses a
//! Gateway a file defines, naming the file. Error paths: `status` of an unknown waypoint,
//! `apply` with neither a local mesh nor a cluster.

#![forbid(unsafe_code)]

#[path = "support/ctl.rs"]
mod ctl;

use std::process::Output;
use std::time::Duration;

use ctl::{Ctl, ensure_demo_app, workspace};
use e2e::copy_dir;
use serde_json::Value;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn parse(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// The waypoint entry `name` of `waypoint list -o json`, if programmed with an address.
fn programmed<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    items(list)
        .find(|g| g["name"] == name && g["programmed"] == true && g["address"].as_str().is_some())
}

#[test]
fn waypoint_generate_prints_the_gateway_istioctl_would() {
    let scratch = tempfile::tempdir().unwrap();
    let ctl = Ctl::new(scratch.path());
    let yaml = ctl.ok(&["waypoint", "generate", "-n", "shop", "--name", "w1"]);
    let gw: Value = ambient_controller::source::yaml::parse(&yaml)
        .unwrap()
        .remove(0)
        .value;
    assert_eq!(gw["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(gw["kind"], "Gateway");
    assert_eq!(gw["metadata"]["name"], "w1");
    assert_eq!(gw["metadata"]["namespace"], "shop");
    assert!(
        gw["metadata"].get("labels").is_none(),
        "service traffic is the default: no label\n{yaml}"
    );
    assert_eq!(gw["spec"]["gatewayClassName"], "istio-waypoint");
    let listeners = gw["spec"]["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0]["name"], "mesh");
    assert_eq!(listeners[0]["port"], 15008);
    assert_eq!(listeners[0]["protocol"], "HBONE");

    let yaml = ctl.ok(&["waypoint", "generate", "--for", "workload"]);
    let gw: Value = ambient_controller::source::yaml::parse(&yaml)
        .unwrap()
        .remove(0)
        .value;
    assert_eq!(gw["metadata"]["name"], "waypoint");
    assert_eq!(gw["metadata"]["namespace"], "default");
    assert_eq!(
        gw["metadata"]["labels"]["istio.io/waypoint-for"],
        "workload"
    );

    let bad = ctl.run(&["waypoint", "generate", "--for", "everything"]);
    assert_eq!(bad.status.code(), Some(2), "usage errors exit 2");
    let completion = ctl.ok(&["completion", "bash"]);
    assert!(
        completion.contains("waypoint"),
        "completion covers waypoint"
    );
    assert!(completion.contains("--enroll-namespace"));
}

#[test]
fn waypoint_commands_without_a_mesh_or_a_cluster_fail_clearly() {
    let scratch = tempfile::tempdir().unwrap();
    let ctl = Ctl::new(scratch.path());
    for args in [
        &["waypoint", "apply", "-n", "shop"][..],
        &["waypoint", "list"][..],
        &["waypoint", "status"][..],
        &["waypoint", "delete", "waypoint"][..],
    ] {
        let out = ctl.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("no local mesh is running") && err.contains("no Kubernetes cluster"),
            "{args:?}: {err}"
        );
    }
    let missing = ctl.run(&[
        "waypoint",
        "list",
        "--kubeconfig",
        scratch.path().join("nope").to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("nope"), "names the kubeconfig");
}

#[test]
fn waypoints_in_a_local_mesh() {
    ensure_demo_app();
    let scratch = tempfile::tempdir().unwrap();
    let ctl = Ctl::new(scratch.path());
    let dir = scratch.path().join("mesh");
    copy_dir(&workspace().join("tests/fixtures/waypoint"), &dir);
    ctl.ok(&["up", dir.to_str().unwrap(), "--detach", "--nodes", "1"]);

    // The runtime deployed the file's waypoint: a running pod, out of ztunnel's capture.
    let status = ctl.json(&["status", "-o", "json"]);
    let pod = items(&status["pods"])
        .find(|p| p["waypoint"] == "shop/waypoint")
        .unwrap_or_else(|| panic!("no waypoint pod in {status:#}"))
        .clone();
    let pod_name = pod["name"].as_str().unwrap().to_string();
    assert!(pod_name.starts_with("waypoint-"), "{pod_name}");
    assert_eq!(pod["phase"], "Running", "{pod:#}");
    assert_eq!(pod["dataplane"], "none");
    assert_eq!(pod["serviceAccount"], "waypoint");
    let table = ctl.ok(&["status"]);
    let line = table.lines().find(|l| l.contains(&pod_name)).unwrap();
    assert!(line.contains("waypoint"), "marked in the table: {line}");
    assert!(
        status["services"]["shop/waypoint"].is_string(),
        "the waypoint's Service has an address: {status:#}"
    );
    // Its log is a pod log like any other.
    ctl.ok(&["logs", "-n", "shop", &pod_name]);

    // ztunnel knows the waypoint as a workload (reached over HBONE, not captured).
    ctl.until(
        &["ztunnel-config", "workloads", "-o", "json"],
        Duration::from_secs(20),
        |o| items(&parse(o)).any(|w| w["name"] == pod_name.as_str()),
    );

    // Programmed, with the Service's address.
    ctl.until(
        &["waypoint", "list", "-n", "shop", "-o", "json"],
        Duration::from_secs(30),
        |o| programmed(&parse(o), "waypoint").is_some(),
    );
    let list = ctl.ok(&["waypoint", "list", "-n", "shop"]);
    assert!(
        list.starts_with("NAMESPACE  NAME      TRAFFIC TYPE  ADDRESS"),
        "{list}"
    );
    ctl.ok(&["waypoint", "status", "-n", "shop"]);

    // Applying what the file says changes nothing; applying something else under its name
    // is the file's business.
    let same = ctl.ok(&["waypoint", "apply", "-n", "shop"]);
    assert!(same.contains("unchanged (defined in"), "{same}");
    let other = ctl.run(&["waypoint", "apply", "-n", "shop", "--for", "all"]);
    assert_eq!(other.status.code(), Some(1));
    assert!(
        stderr(&other).contains("waypoint.yaml"),
        "names the file: {}",
        stderr(&other)
    );
    // Editing the Gateway in a way that changes nothing the pod runs keeps the pod.
    let gateway = dir.join("waypoint.yaml");
    let text = std::fs::read_to_string(&gateway).unwrap();
    std::fs::write(
        &gateway,
        text.replace(
            "  namespace: shop\n",
            "  namespace: shop\n  labels:\n    istio.io/waypoint-for: all\n",
        ),
    )
    .unwrap();
    ctl.until(
        &["waypoint", "list", "-n", "shop", "-o", "json"],
        Duration::from_secs(20),
        |o| items(&parse(o)).any(|g| g["name"] == "waypoint" && g["trafficType"] == "all"),
    );
    let status = ctl.json(&["status", "-o", "json"]);
    let kept: Vec<&Value> = items(&status["pods"])
        .filter(|p| p["waypoint"] == "shop/waypoint")
        .collect();
    assert_eq!(kept.len(), 1, "{status:#}");
    assert_eq!(kept[0]["name"], pod_name.as_str(), "the pod is kept");

    // A waypoint applied from the CLI, with the namespace enrolled to it.
    let applied = ctl.ok(&[
        "waypoint",
        "apply",
        "-n",
        "shop",
        "--name",
        "w2",
        "--enroll-namespace",
    ]);
    assert!(applied.contains("shop/w2"), "{applied}");
    assert!(applied.contains("istio.io/use-waypoint: w2"), "{applied}");
    ctl.until(
        &["waypoint", "list", "-n", "shop", "-o", "json"],
        Duration::from_secs(30),
        |o| programmed(&parse(o), "w2").is_some(),
    );
    let status = ctl.until(&["status", "-o", "json"], Duration::from_secs(10), |o| {
        items(&parse(o)["pods"]).any(|p| p["waypoint"] == "shop/w2" && p["phase"] == "Running")
    });
    let w2_address = parse(&status)["services"]["shop/w2"]
        .as_str()
        .expect("w2's Service has an address")
        .to_string();
    // The label takes effect: the namespace's services go through w2 (by its Service's
    // address or hostname).
    ctl.until(
        &["ztunnel-config", "services", "-o", "json"],
        Duration::from_secs(20),
        |o| {
            items(&parse(o)).any(|s| {
                let waypoint = s["waypoint"].to_string();
                s["name"] == "ratings"
                    && (waypoint.contains(&format!("\"{w2_address}\""))
                        || waypoint.contains("w2.shop.svc"))
            })
        },
    );

    // Deleting it removes the Gateway, its pod and the namespace label.
    let deleted = ctl.ok(&["waypoint", "delete", "-n", "shop", "w2"]);
    assert!(deleted.contains("shop/w2 deleted"), "{deleted}");
    ctl.until(
        &["waypoint", "list", "-n", "shop", "-o", "json"],
        Duration::from_secs(20),
        |o| o.status.success() && !items(&parse(o)).any(|g| g["name"] == "w2"),
    );
    ctl.until(&["status", "-o", "json"], Duration::from_secs(10), |o| {
        !items(&parse(o)["pods"]).any(|p| p["waypoint"] == "shop/w2")
    });
    ctl.until(
        &["ztunnel-config", "services", "-o", "json"],
        Duration::from_secs(20),
        |o| {
            items(&parse(o))
                .any(|s| s["name"] == "ratings" && (s["waypoint"].is_null() || s["waypoint"] == ""))
        },
    );
    let again = ctl.run(&["waypoint", "delete", "-n", "shop", "w2"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("not found"), "{}", stderr(&again));

    // A Gateway a file defines is the file's to remove.
    let refused = ctl.run(&["waypoint", "delete", "-n", "shop", "waypoint"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains(dir.join("waypoint.yaml").to_str().unwrap()),
        "names the file: {}",
        stderr(&refused)
    );
    assert!(
        programmed(
            &ctl.json(&["waypoint", "list", "-n", "shop", "-o", "json"]),
            "waypoint"
        )
        .is_some()
    );

    // Unknown waypoint.
    let unknown = ctl.run(&["waypoint", "status", "-n", "shop", "--name", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("shop/nope not found"));

    ctl.ok(&["down"]);
}
