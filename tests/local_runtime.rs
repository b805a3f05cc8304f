//! The local runtime as a user drives it: the built `ambientctl` binary, `up --detach` on
//! the bookinfo example, requests between services with `exec`, istioctl-like views, a
//! policy edit applied live, and `down` leaving nothing behind. Also the error paths: a
//! broken manifest, a second `up`, `exec` into an unknown pod, commands with no mesh.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
#[path = "support/ctl.rs"]
mod ctl;

use std::process::Command;
use std::time::Duration;

use ctl::{Ctl, EXE, ensure_demo_app, workspace};
use e2e::copy_dir;

/// Processes (not zombies) whose user namespace is `userns` (an inode).
fn processes_in(userns: u64) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/ns/user")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if meta.ino() == userns && !zombie {
            out.insert(pid);
        }
    }
    out
}

#[test]
fn bookinfo_as_a_user_would() {
    ensure_demo_app();
    let scratch = tempfile::tempdir().unwrap();
    let ctl = Ctl {
        home: scratch.path().join("home"),
    };
    let dir = scratch.path().join("bookinfo");
    copy_dir(&workspace().join("examples/bookinfo"), &dir);
    // A broken manifest: the rest must start, and the file must be named.
    std::fs::write(
        dir.join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: [oops\n",
    )
    .unwrap();

    let up = ctl.ok(&["up", dir.to_str().unwrap(), "--detach"]);
    assert!(
        up.contains("broken.yaml"),
        "up must name the broken file:\n{up}"
    );
    for pod in [
        "productpage-v1",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
        "ratings-v1",
        "sleep",
    ] {
        assert!(up.contains(pod), "{pod} missing from:\n{up}");
    }

    // A second `up` refuses, and leaves the first alone.
    let second = ctl.run(&["up", dir.to_str().unwrap(), "--detach"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    // Requests through the mesh, by service name (ztunnel's DNS) and across nodes.
    let page = ctl.ok(&[
        "exec",
        "-n",
        "bookinfo",
        "sleep",
        "--",
        "demo-app",
        "get",
        "http://productpage:9080/productpage",
    ]);
    assert!(page.contains("reviews-version:"), "{page}");
    // Exit codes pass through.
    let code = ctl.run(&[
        "exec", "-n", "bookinfo", "sleep", "--", "sh", "-c", "exit 7",
    ]);
    assert_eq!(code.status.code(), Some(7));
    // stdin passes through.
    let mut child = Command::new(EXE)
        .args(["exec", "-n", "bookinfo", "sleep", "--", "cat"])
        .env("AMBIENT_HOME", &ctl.home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through the pod\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through the pod\n");

    // Unknown pod.
    let unknown = ctl.run(&["exec", "-n", "bookinfo", "nope", "--", "true"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("pod bookinfo/nope not found"));

    // What the ztunnels hold.
    let json = ctl.ok(&["ztunnel-config", "workloads", "-o", "json"]);
    let workloads: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let hbone: BTreeSet<&str> = workloads
        .iter()
        .filter(|w| w["protocol"] == "HBONE")
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(
        hbone,
        BTreeSet::from([
            "productpage-v1",
            "ratings-v1",
            "reviews-v1",
            "reviews-v2",
            "reviews-v3",
            "sleep"
        ])
    );
    let table = ctl.ok(&["ztunnel-config", "workloads"]);
    assert!(table.starts_with("NAMESPACE  POD NAME"), "{table}");
    ctl.until(&["proxy-status"], Duration::from_secs(10), |o| {
        o.status.success()
    });

    // A policy edit takes effect live, and is lifted again.
    let reviews = [
        "exec",
        "-n",
        "bookinfo",
        "sleep",
        "--",
        "demo-app",
        "get",
        "--timeout-ms",
        "2000",
        "http://reviews:9080/reviews/0",
    ];
    ctl.ok(&reviews);
    let policy = dir.join("deny-reviews-from-sleep.yaml");
    std::fs::copy(
        workspace().join("examples/bookinfo-policies/deny-reviews-from-sleep.yaml"),
        &policy,
    )
    .unwrap();
    ctl.until(&reviews, Duration::from_secs(15), |o| !o.status.success());
    // Other callers are unaffected.
    ctl.ok(&[
        "exec",
        "-n",
        "bookinfo",
        "sleep",
        "--",
        "demo-app",
        "get",
        "http://productpage:9080/productpage",
    ]);
    std::fs::remove_file(&policy).unwrap();
    ctl.until(&reviews, Duration::from_secs(15), |o| o.status.success());

    // A pod added to the directory starts, and a label takes it out of the mesh.
    std::fs::write(
        dir.join("extra.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: extra\n  namespace: bookinfo\n  labels: {istio.io/dataplane-mode: none}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, infinity]\n",
    )
    .unwrap();
    ctl.until(&["status", "-o", "json"], Duration::from_secs(15), |o| {
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        s["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == "extra" && p["phase"] == "Running" && p["dataplane"] == "none")
    });

    // A Deployment runs its replicas (what the Deployment and ReplicaSet controllers would
    // make), in the mesh, behind its Service.
    std::fs::write(
        dir.join("stars.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: stars, namespace: bookinfo}\nspec:\n  selector: {app: stars}\n  ports: [{name: http, port: 9080}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: stars, namespace: bookinfo}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: stars}}\n  template:\n    metadata: {labels: {app: stars, version: v1}}\n    spec:\n      serviceAccountName: bookinfo-ratings\n      containers:\n      - name: ratings\n        image: ratings\n        command: [demo-app, ratings, --port, \"9080\"]\n        ports: [{containerPort: 9080, name: http}]\n",
    )
    .unwrap();
    ctl.until(&["status", "-o", "json"], Duration::from_secs(20), |o| {
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let running = s["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["name"].as_str().is_some_and(|n| n.starts_with("stars-"))
                    && p["phase"] == "Running"
                    && p["dataplane"] == "ambient"
            })
            .count();
        running == 2
    });
    let stars = ctl.until(
        &[
            "exec",
            "-n",
            "bookinfo",
            "sleep",
            "--",
            "demo-app",
            "get",
            "http://stars:9080/ratings/0",
        ],
        // New workloads reach the client's ztunnel within a second on a quiet machine; a CI
        // run with another mesh beside this one once took over 15 s.
        Duration::from_secs(45),
        |o| o.status.success(),
    );
    assert!(!stars.stdout.is_empty());

    // `down` stops everything the mesh made.
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ctl.home.join("mesh.json")).unwrap())
            .unwrap();
    let pid = info["pid"].as_u64().unwrap();
    let userns = std::fs::metadata(format!("/proc/{pid}/ns/user"))
        .unwrap()
        .ino();
    let inside = processes_in(userns);
    assert!(
        inside.len() >= 10,
        "expected the mesh's processes, found {inside:?}"
    );
    ctl.ok(&["down"]);
    let left = processes_in(userns);
    assert!(left.is_empty(), "processes left after down: {left:?}");
    assert!(!ctl.home.join("run").exists(), "run directory left behind");
    assert!(!ctl.home.join("mesh.json").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(ctl.home.to_str().unwrap()),
        "a mount under the mesh's home is left"
    );
    // And the next command says so.
    let status = ctl.run(&["status"]);
    assert_eq!(status.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&status.stderr).contains("no mesh is running"));
}

#[test]
fn commands_without_a_mesh_fail_clearly() {
    let scratch = tempfile::tempdir().unwrap();
    let ctl = Ctl {
        home: scratch.path().join("home"),
    };
    let exec = ctl.run(&["exec", "-n", "default", "web", "--", "true"]);
    assert_eq!(exec.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&exec.stderr).contains("no mesh is running"));
    let workloads = ctl.run(&["ztunnel-config", "workloads"]);
    assert_eq!(workloads.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&workloads.stderr).contains("no mesh is running"));
    let down = ctl.run(&["down"]);
    assert!(
        down.status.success(),
        "down with nothing running is a no-op"
    );
    let missing = ctl.run(&[
        "up",
        scratch.path().join("nope").to_str().unwrap(),
        "--detach",
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such directory"));
    let usage = ctl.run(&["exec", "web"]);
    assert_eq!(usage.status.code(), Some(2), "usage errors exit 2");
    let completion = ctl.ok(&["completion", "bash"]);
    assert!(completion.contains("ztunnel-config"));
}
