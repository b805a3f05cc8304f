//! `ambientctl up --kubernetes` as a user drives it, with the kubectl of the same release as
//! the API server (built by `tools/build.sh`): the directory applied to a real API server, a
//! Deployment run through the real Deployment, ReplicaSet and EndpointSlice controllers and
//! the scheduler, with the runtime as the nodes' kubelet; enrolment by `kubectl label`,
//! through our CNI plugin and node agents that watch the API server (pods found again by a
//! restarted agent that lost its state); a
//! waypoint from `kubectl apply`, an L7 policy applied and removed; a pod deleted and
//! replaced; garbage collection of the waypoint's objects; a namespace deleted; `down`.

#![forbid(unsafe_code)]

#[path = "support/ctl.rs"]
mod ctl;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ctl::{Ctl, ensure_demo_app};
use e2e::until;
use serde_json::Value;

const NAMESPACE: &str = "shop";

fn manifests(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("namespace.yaml"),
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("ratings.yaml"),
        format!(
            r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: ratings
  namespace: {NAMESPACE}
---
apiVersion: v1
kind: Service
metadata:
  name: ratings
  namespace: {NAMESPACE}
spec:
  selector:
    app: ratings
  ports:
  - name: http
    port: 9080
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ratings
  namespace: {NAMESPACE}
spec:
  replicas: 2
  selector:
    matchLabels:
      app: ratings
  template:
    metadata:
      labels:
        app: ratings
    spec:
      serviceAccountName: ratings
      containers:
      - name: ratings
        image: docker.io/istio/examples-bookinfo-ratings-v1:1.20.2
        command: ["demo-app", "ratings", "--port", "9080"]
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("sleep.yaml"),
        format!(
            r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: sleep
  namespace: {NAMESPACE}
---
apiVersion: v1
kind: Pod
metadata:
  name: sleep
  namespace: {NAMESPACE}
spec:
  serviceAccountName: sleep
  containers:
  - name: sleep
    image: curlimages/curl
    command: ["sleep", "infinity"]
"#
        ),
    )
    .unwrap();
}

const WAYPOINT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: shop
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
"#;

/// L7: only the waypoint can tell one path from another.
const DENY_RATINGS_1: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-ratings-1
  namespace: shop
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: ratings
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/ratings/1"]
"#;

/// Fails the Gateway CRD's schema (a port is at most 65535).
const INVALID_GATEWAY: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: broken
  namespace: shop
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 99999999
    protocol: HBONE
"#;

struct Kubectl {
    exe: PathBuf,
    kubeconfig: PathBuf,
    scratch: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.exe)
            .args(args)
            .arg("--request-timeout=20s")
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.scratch)
            .output()
            .expect("running kubectl");
        ctl::show("kubectl", args, &out);
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "kubectl {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// `kubectl apply -f` of `yaml` (written to a file first).
    fn apply(&self, name: &str, yaml: &str) -> Output {
        let file = self.scratch.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        self.run(&["apply", "-f", file.to_str().unwrap()])
    }

    fn delete(&self, name: &str) {
        let file = self.scratch.join(format!("{name}.yaml"));
        self.ok(&["delete", "-f", file.to_str().unwrap()]);
    }
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

/// `sleep` → `ratings` by name; Ok(body) or Err(what failed).
fn get_ratings(ctl: &Ctl, path: &str) -> Result<String, String> {
    let url = format!("http://ratings:9080{path}");
    let out = ctl.run(&[
        "exec", "-n", NAMESPACE, "sleep", "--", "demo-app", "get", &url,
    ]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `POST path` with a JSON `body` on the supervisor's control socket; the raw answer.
fn post_control(socket: &Path, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("control socket");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: ambientctl\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// The pid of the node agent whose files are in `node_dir`.
fn agent_pid(node_dir: &Path) -> Option<i32> {
    let needle = node_dir.join("cni.sock").display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        (args.iter().any(|a| a == "node-agent") && args.contains(&needle)).then_some(pid)
    })
}

/// The runtime's pods of the namespace, as `ambientctl status` shows them.
fn runtime_pods(ctl: &Ctl) -> Vec<Value> {
    ctl.json(&["status", "-o", "json"])["pods"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["namespace"] == NAMESPACE)
        .collect()
}

#[test]
fn kubectl_drives_the_local_mesh_on_a_real_api_server() {
    ensure_demo_app();
    let kubectl_exe = ambient_lab::kube::tools_dir().join("bin/kubectl");
    assert!(
        kubectl_exe.is_file(),
        "{} missing: run tools/build.sh (it builds kube-lab and kubectl)",
        kubectl_exe.display()
    );
    let scratch = tempfile::tempdir().unwrap();
    let ctl = Ctl::new(scratch.path());
    let dir = scratch.path().join("shop");
    manifests(&dir);

    let started = Instant::now();
    let up = ctl.ok(&["up", "--kubernetes", dir.to_str().unwrap(), "--detach"]);
    eprintln!("up --kubernetes took {:?}", started.elapsed());
    assert!(up.contains("sleep"), "{up}");
    assert_eq!(up.matches("ratings-").count(), 2, "two ratings pods:\n{up}");

    let kubeconfig = PathBuf::from(ctl.ok(&["kubeconfig"]).trim());
    let k = Kubectl {
        exe: kubectl_exe,
        kubeconfig,
        scratch: scratch.path().to_path_buf(),
    };

    // The runtime's own API no longer changes objects: the API server does. A direct
    // `/apply` (what `waypoint apply` used before it learnt about kube-backed meshes) is
    // refused with a pointer to kubectl, and changes nothing.
    let refusal = post_control(
        &ctl.home.join("control.sock"),
        "/apply",
        r#"{"objects":[],"labels":{"Namespace//shop":{"istio.io/dataplane-mode":"ambient"}}}"#,
    );
    assert!(
        refusal.starts_with("HTTP/1.1 409") && refusal.contains("kubectl"),
        "{refusal}"
    );

    // The nodes are registered and Ready; the Deployment's pods came from its ReplicaSet,
    // were bound by the scheduler, and are reported Running and ready by the runtime.
    let nodes = k.json(&["get", "nodes"]);
    assert_eq!(items(&nodes).len(), 2);
    for n in items(&nodes) {
        let ready = n["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{n}");
    }
    let pods = k.json(&["get", "pods", "-n", NAMESPACE, "-l", "app=ratings"]);
    assert_eq!(items(&pods).len(), 2);
    for p in items(&pods) {
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(p["status"]["phase"], "Running", "{p}");
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], true, "{p}");
        assert!(
            p["status"]["podIP"]
                .as_str()
                .unwrap()
                .starts_with("10.244.")
        );
    }
    // The EndpointSlice controller lists both as ready endpoints.
    until("EndpointSlice of ratings", Duration::from_secs(30), || {
        let slices = k.json(&[
            "get",
            "endpointslices",
            "-n",
            NAMESPACE,
            "-l",
            "kubernetes.io/service-name=ratings",
        ]);
        let ready = items(&slices)
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .count();
        (ready == 2).then_some(()).ok_or(format!("{ready} ready"))
    });
    assert!(
        runtime_pods(&ctl).iter().all(|p| p["dataplane"] == "none"),
        "nothing is enrolled before the label"
    );

    // Enrol by label, with kubectl: every pod is captured, and a request by service name
    // goes through the mesh.
    k.ok(&[
        "label",
        "namespace",
        NAMESPACE,
        "istio.io/dataplane-mode=ambient",
    ]);
    until("pods enrolled", Duration::from_secs(30), || {
        let pods = runtime_pods(&ctl);
        (pods.len() == 3 && pods.iter().all(|p| p["dataplane"] == "ambient"))
            .then_some(())
            .ok_or(format!("{pods:?}"))
    });
    let body = until("sleep → ratings", Duration::from_secs(30), || {
        get_ratings(&ctl, "/ratings/0")
    });
    assert!(body.contains("ratings"), "{body}");

    // Pods started before their node agent: node-1's agent crashes and comes back (the
    // runtime restarts it, as a kubelet would) with no memory of its pods; its pod watch finds
    // them again by address and captures them.
    let node_dir = ctl.home.join("run/node-node-1");
    let on_node_1: Vec<String> = runtime_pods(&ctl)
        .iter()
        .filter(|p| p["node"] == "node-1")
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!on_node_1.is_empty());
    let old_agent = agent_pid(&node_dir).expect("node-1's agent");
    std::fs::remove_file(node_dir.join("agent-state.json")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let agent = ztunnel::agent::cni::CniClient::new(node_dir.join("cni.sock"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    until(
        "node-1's pods captured by a new agent",
        Duration::from_secs(60),
        || {
            let new_agent = agent_pid(&node_dir).filter(|p| *p != old_agent);
            let held = runtime.block_on(agent.pods()).map_err(|e| e.to_string())?;
            let captured = on_node_1
                .iter()
                .all(|name| held.iter().any(|p| &p.pod.name == name && p.captured));
            (new_agent.is_some() && captured)
                .then_some(())
                .ok_or(format!("agent {new_agent:?} holds {held:?}"))
        },
    );
    let body = until(
        "sleep → ratings after the agent came back",
        Duration::from_secs(30),
        || get_ratings(&ctl, "/ratings/0"),
    );
    assert!(body.contains("ratings"), "{body}");

    // A CRD-invalid object never reaches the mesh: the API server refuses it.
    let refused = k.apply("broken", INVALID_GATEWAY);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Invalid value"),
        "the schema's message"
    );

    // A waypoint with kubectl: the controller deploys it through the API server (owned by
    // the Gateway), the runtime runs its pod, the Gateway becomes Programmed.
    let applied = k.apply("waypoint", WAYPOINT);
    assert!(applied.status.success());
    k.ok(&[
        "wait",
        "-n",
        NAMESPACE,
        "--for=condition=Programmed",
        "gateway/waypoint",
        "--timeout=90s",
    ]);
    let deployment = k.json(&["get", "deployment", "-n", NAMESPACE, "waypoint"]);
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["kind"],
        "Gateway"
    );
    let listed = ctl.ok(&["waypoint", "list", "-n", NAMESPACE]);
    assert!(
        listed.contains("waypoint") && listed.contains("True"),
        "{listed}"
    );
    k.ok(&[
        "label",
        "namespace",
        NAMESPACE,
        "istio.io/use-waypoint=waypoint",
    ]);

    // An L7 policy with kubectl apply: the waypoint refuses one path, serves the other...
    assert!(k.apply("deny-ratings-1", DENY_RATINGS_1).status.success());
    until(
        "/ratings/1 denied",
        Duration::from_secs(30),
        || match get_ratings(&ctl, "/ratings/1") {
            Err(e) if e.contains("403") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    get_ratings(&ctl, "/ratings/0").expect("another path passes");
    // ...and after kubectl delete, serves both again.
    k.delete("deny-ratings-1");
    until("/ratings/1 served again", Duration::from_secs(30), || {
        get_ratings(&ctl, "/ratings/1")
    });

    // kubectl delete pod: the runtime stops it and finishes the deletion; the ReplicaSet
    // makes a replacement, which the runtime runs and enrols.
    let victim = items(&pods)[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    k.ok(&[
        "delete",
        "pod",
        "-n",
        NAMESPACE,
        &victim,
        "--wait=true",
        "--timeout=60s",
    ]);
    until("replacement running", Duration::from_secs(60), || {
        let pods = runtime_pods(&ctl);
        let ratings: Vec<&Value> = pods
            .iter()
            .filter(|p| p["name"].as_str().unwrap().starts_with("ratings-"))
            .collect();
        let gone = !ratings.iter().any(|p| p["name"] == victim.as_str());
        let running = ratings
            .iter()
            .filter(|p| p["phase"] == "Running" && p["dataplane"] == "ambient")
            .count();
        (gone && running == 2)
            .then_some(())
            .ok_or(format!("{ratings:?}"))
    });

    // Deleting the Gateway garbage-collects its Deployment; the runtime stops the pod.
    k.delete("waypoint");
    until("waypoint pod gone", Duration::from_secs(60), || {
        let deployment = k.run(&["get", "deployment", "-n", NAMESPACE, "waypoint"]);
        let pods = runtime_pods(&ctl);
        let waypoint = pods.iter().any(|p| !p["waypoint"].is_null());
        (!deployment.status.success() && !waypoint)
            .then_some(())
            .ok_or(format!("deployment still there or {pods:?}"))
    });
    k.ok(&["label", "namespace", NAMESPACE, "istio.io/use-waypoint-"]);
    until(
        "sleep → ratings without a waypoint",
        Duration::from_secs(30),
        || get_ratings(&ctl, "/ratings/1"),
    );

    // Deleting the namespace: every pod stops, and the namespace goes (it waits for the
    // runtime to finish its pods).
    k.ok(&[
        "delete",
        "namespace",
        NAMESPACE,
        "--wait=true",
        "--timeout=90s",
    ]);
    assert!(runtime_pods(&ctl).is_empty());

    ctl.ok(&["down"]);
    assert!(!ctl.home.join("mesh.json").exists());
}
