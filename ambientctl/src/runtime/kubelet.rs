//! `ambientctl up --kubernetes`: the local mesh on a real Kubernetes control plane
//! (kube-lab: etcd, kube-apiserver, the controller manager and the scheduler, built by
//! `tools/build.sh`). The runtime plays the kubelet of its simulated nodes:
//!
//! - it registers a Node per simulated node (Ready, with its pod range);
//! - it runs the Pods the scheduler binds to them as it runs pods in the directory mode
//!   ([`super::cluster`]), and reports their phase, address and readiness back as a
//!   kubelet does (so the EndpointSlice controller and our controller see them);
//! - it finishes deleting a Pod (grace period 0) once its containers stopped;
//! - each node's ztunnel is a Pod of `istio-system/ztunnel` bound to its node (as a
//!   DaemonSet's would be), and the runtime writes that ztunnel a token bound to the Pod:
//!   the controller's CA checks it with a TokenReview as on a cluster.
//!
//! The manifest directory is server-side applied at start (and again when it changes);
//! from then on `kubectl` against [`super::api_port`] drives the mesh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambient_controller::model::Object;
use ambient_lab::kube::{CA_AUDIENCE, KubeLab, KubeLabOptions};
use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::cluster::{PodReport, pod_key};
use super::pod::ContainerState;
use super::waypoints;

/// The field manager of everything the runtime writes (directory, Nodes, Pod status).
pub const FIELD_MANAGER: &str = "ambientctl";
/// Where each node's ztunnel Pod lives, and the account it runs as (the controller's
/// default `--ztunnel-service-accounts`).
pub const ZTUNNEL_NAMESPACE: &str = "istio-system";
pub const ZTUNNEL_ACCOUNT: &str = "ztunnel";
/// Marks the Pods that stand for a node's own components (run by the mesh, not as
/// containers).
const NODE_COMPONENT_LABEL: &str = "ambient-rs.io/node-component";
/// The cluster DNS Service: ztunnels answer DNS at this address in enrolled pods, and a
/// Service holds it so that no other Service is given it (as kube-dns does on a cluster).
const CLUSTER_DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");
/// Ztunnel tokens are asked for one hour and renewed after half of it.
const TOKEN_RENEWAL: Duration = Duration::from_secs(30 * 60);

/// A simulated node as the API server should know it.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub ip: String,
    /// `a.b.c.0/24`.
    pub pod_cidr: String,
}

/// What the runtime last reported for each pod, to write only changes.
type Reported = BTreeMap<String, Value>;

/// The control plane and the runtime's kubelet side of it.
pub struct Kubelet {
    lab: KubeLab,
    nodes: Vec<NodeSpec>,
    run_dir: PathBuf,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    deployments: Store<Deployment>,
    reported: Mutex<Reported>,
    tokens_written: Mutex<Instant>,
    /// The reflectors' tasks: stopped before the API server, whose graceful shutdown would
    /// otherwise wait for their watches.
    watches: Vec<tokio::task::JoinHandle<()>>,
    /// Notified on every watch event: the supervisor reconciles at once.
    pub changed: Arc<Notify>,
}

/// What the API server wants the runtime to run.
pub struct Wanted {
    /// Namespaces and the Pods bound to the simulated nodes (not terminating).
    pub objects: Vec<Object>,
    /// Waypoint pods (`namespace/name`) → their Gateway (`namespace/name`).
    pub waypoint_pods: BTreeMap<String, String>,
    /// Pods being deleted (`namespace/name` → uid): stop them, then delete them for good.
    pub terminating: BTreeMap<String, String>,
    /// Pods the API server has that are not valid for the runtime.
    pub problems: Vec<String>,
}

impl Kubelet {
    /// Starts kube-lab with its data in `run_dir`, installs the upstream CRDs, registers
    /// `nodes`, and writes each node's ztunnel token to `run_dir/tokens/<node>.token`.
    pub async fn start(run_dir: &Path, nodes: &[NodeSpec]) -> anyhow::Result<Kubelet> {
        let started = Instant::now();
        let lab = KubeLab::start(
            run_dir,
            KubeLabOptions {
                field_manager: FIELD_MANAGER.into(),
                log: Some(run_dir.join("logs").join("kube-lab.log")),
                // On the underlay's bridge: the controller and every node's agent (which
                // watches its pods, as on a real node) reach it there.
                args: vec![format!(
                    "--bind-address={}",
                    ambient_lab::topology::UNDERLAY_GATEWAY
                )],
                ..KubeLabOptions::default()
            },
        )
        .await
        .context("starting the Kubernetes control plane (kube-lab)")?;
        info!(elapsed = ?started.elapsed(), "API server ready");
        lab.install_upstream_crds()
            .await
            .context("installing the Gateway API and Istio CRDs")?;
        for node in nodes {
            register_node(&lab, node).await?;
        }
        lab.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": ZTUNNEL_NAMESPACE}}))
            .await?;
        lab.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": ZTUNNEL_ACCOUNT, "namespace": ZTUNNEL_NAMESPACE}}))
            .await?;
        let (ns, name) = CLUSTER_DNS_SERVICE;
        lab.apply(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {"k8s-app": "kube-dns"}},
            "spec": {"clusterIP": super::pod::CLUSTER_DNS.to_string(),
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]},
        }))
        .await
        .context("reserving the cluster DNS address")?;
        for node in nodes {
            ztunnel_pod(&lab, node).await?;
        }
        let client = lab.client();
        let changed = Arc::new(Notify::new());
        let (pods, pods_watch) = reflect(Api::all(client.clone()), &changed);
        let (namespaces, namespaces_watch) = reflect(Api::all(client.clone()), &changed);
        let (deployments, deployments_watch) = reflect(Api::all(client), &changed);
        let kubelet = Kubelet {
            pods,
            namespaces,
            deployments,
            watches: vec![pods_watch, namespaces_watch, deployments_watch],
            lab,
            nodes: nodes.to_vec(),
            run_dir: run_dir.to_path_buf(),
            reported: Mutex::new(Reported::new()),
            tokens_written: Mutex::new(Instant::now()),
            changed,
        };
        kubelet.write_tokens().await?;
        for store in [
            kubelet.pods.wait_until_ready().await,
            kubelet.namespaces.wait_until_ready().await,
            kubelet.deployments.wait_until_ready().await,
        ] {
            store.context("the first list of the API server")?;
        }
        info!(elapsed = ?started.elapsed(), "control plane set up");
        Ok(kubelet)
    }

    /// The admin kubeconfig, as reachable inside the sandbox.
    pub fn kubeconfig(&self) -> &Path {
        self.lab.kubeconfig()
    }

    /// Where the API server listens inside the sandbox.
    pub fn api_address(&self) -> anyhow::Result<std::net::SocketAddr> {
        let config = kube::config::Kubeconfig::read_from(self.kubeconfig())?;
        let server = config
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .context("the kubeconfig names no server")?;
        let authority = server
            .strip_prefix("https://")
            .context("the API server is not https")?;
        Ok(authority.trim_end_matches('/').parse()?)
    }

    /// Writes a kubeconfig for `server` (the host's port to the API server) at `path`.
    pub fn write_kubeconfig(&self, server: &str, path: &Path) -> anyhow::Result<()> {
        let mut config = kube::config::Kubeconfig::read_from(self.kubeconfig())?;
        for cluster in &mut config.clusters {
            if let Some(c) = cluster.cluster.as_mut() {
                c.server = Some(server.to_string());
            }
        }
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, serde_json::to_string_pretty(&config)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Server-side applies every document of `dir` (Namespaces first); returns what the API
    /// server refused, one line each.
    pub async fn apply_dir(&self, dir: &Path) -> Vec<String> {
        let mut documents = Vec::new();
        let mut problems = Vec::new();
        for file in ambient_controller::source::manifests::manifest_files(dir) {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("{}: {e}", file.display()));
                    continue;
                }
            };
            match ambient_controller::source::yaml::parse(&text) {
                Ok(docs) => documents.extend(
                    docs.into_iter()
                        .filter(|d| d.value.is_object())
                        .map(|d| (file.clone(), d.value)),
                ),
                Err(e) => problems.push(format!("{}: {e}", file.display())),
            }
        }
        // Namespaces and CRDs before what lives in them.
        documents.sort_by_key(|(_, d)| match d["kind"].as_str() {
            Some("Namespace") => 0,
            Some("CustomResourceDefinition") => 1,
            _ => 2,
        });
        let mut applied = 0;
        for (file, document) in documents {
            let what = format!(
                "{} {}",
                document["kind"].as_str().unwrap_or("?"),
                document["metadata"]["name"].as_str().unwrap_or("?")
            );
            match self.lab.apply(document).await {
                Ok(_) => applied += 1,
                Err(e) => problems.push(format!("{}: {what}: {e:#}", file.display())),
            }
        }
        info!(dir = %dir.display(), applied, refused = problems.len(), "directory applied");
        problems
    }

    /// The pods to run on the simulated nodes, their namespaces, and the pods to finish.
    pub fn wanted(&self) -> Wanted {
        let mut wanted = Wanted {
            objects: Vec::new(),
            waypoint_pods: BTreeMap::new(),
            terminating: BTreeMap::new(),
            problems: Vec::new(),
        };
        for ns in self.namespaces.state() {
            wanted.objects.push(Object::Namespace(ns.as_ref().clone()));
        }
        for pod in self.pods.state() {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
                continue;
            };
            if !self.nodes.iter().any(|n| n.name == node) || is_node_component(&pod) {
                continue;
            }
            let (ns, name) = pod_key(&pod);
            let key = format!("{ns}/{name}");
            if pod.metadata.deletion_timestamp.is_some() {
                wanted
                    .terminating
                    .insert(key, pod.metadata.uid.clone().unwrap_or_default());
                continue;
            }
            if let Some(gateway) = waypoints::waypoint_of(&pod) {
                wanted.waypoint_pods.insert(key.clone(), gateway);
            }
            wanted.objects.push(Object::Pod(pod.as_ref().clone()));
        }
        wanted
    }

    /// Reports the phase, address, readiness and containers of the pods the runtime runs, as
    /// a kubelet does; writes only what changed since the last report.
    pub async fn report(&self, pods: &[PodReport]) {
        let specs: BTreeMap<String, Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .map(|p| {
                let (ns, name) = pod_key(&p);
                (format!("{ns}/{name}"), p)
            })
            .collect();
        let current: Reported = pods
            .iter()
            .map(|p| {
                let key = format!("{}/{}", p.namespace, p.name);
                let spec = specs.get(&key).map(|p| p.as_ref());
                (key, pod_status(p, spec))
            })
            .collect();
        let stale: Vec<(String, Value)> = {
            let reported = self.reported.lock().expect("poisoned");
            current
                .iter()
                .filter(|(k, v)| reported.get(*k) != Some(v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for (key, status) in stale {
            match self.lab.apply_status(status.clone()).await {
                Ok(_) => {
                    info!(pod = %key, phase = %status["status"]["phase"], "pod status reported");
                    self.reported.lock().expect("poisoned").insert(key, status);
                }
                // Gone meanwhile (deleted): nothing to report.
                Err(e) if is_not_found(&e) => {}
                Err(e) => warn!(pod = %key, error = %e, "reporting the pod status"),
            }
        }
        self.reported
            .lock()
            .expect("poisoned")
            .retain(|k, _| current.contains_key(k));
    }

    /// Deletes for good the terminating pods whose containers stopped (what a kubelet does
    /// at the end of a pod's graceful deletion); `running` are the pods still running.
    pub async fn finish(&self, terminating: &BTreeMap<String, String>, running: &[PodReport]) {
        for (key, uid) in terminating {
            if running
                .iter()
                .any(|p| format!("{}/{}", p.namespace, p.name) == *key)
            {
                continue;
            }
            let (ns, name) = key.split_once('/').expect("ns/name");
            let api: Api<Pod> = Api::namespaced(self.lab.client(), ns);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(name, &params).await {
                Ok(_) => info!(pod = %key, "pod deleted"),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => warn!(pod = %key, error = %e, "deleting the stopped pod"),
            }
        }
    }

    /// Renews the ztunnels' tokens when half their lifetime has passed.
    pub async fn renew_tokens(&self) {
        if self.tokens_written.lock().expect("poisoned").elapsed() < TOKEN_RENEWAL {
            return;
        }
        match self.write_tokens().await {
            Ok(()) => info!("ztunnel tokens renewed"),
            Err(e) => warn!(error = %e, "renewing the ztunnel tokens"),
        }
    }

    /// What keeps the mesh from being ready: Deployments short of ready replicas, Pods not
    /// yet bound to a node or not yet reported Running. Empty when settled.
    pub fn unsettled(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for d in self.deployments.state() {
            let want = d.spec.replicas.unwrap_or(1);
            let status = d.status.clone().unwrap_or_default();
            let current = d.metadata.generation.unwrap_or_default()
                <= status.observed_generation.unwrap_or_default();
            if !current || status.ready_replicas.unwrap_or_default() < want {
                missing.push(format!(
                    "deployment {}/{}: {}/{want} ready",
                    d.metadata.namespace.as_deref().unwrap_or_default(),
                    d.metadata.name.as_deref().unwrap_or_default(),
                    status.ready_replicas.unwrap_or_default()
                ));
            }
        }
        for p in self.pods.state() {
            if p.metadata.deletion_timestamp.is_some() || is_node_component(&p) {
                continue;
            }
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase != Some("Running") && phase != Some("Succeeded") {
                missing.push(format!(
                    "pod {}/{}: {}",
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default(),
                    phase.unwrap_or("unscheduled")
                ));
            }
        }
        missing
    }

    /// Stops the control plane.
    pub async fn stop(&mut self) {
        for watch in self.watches.drain(..) {
            watch.abort();
            let _ = watch.await;
        }
        self.lab.stop().await;
    }

    async fn write_tokens(&self) -> anyhow::Result<()> {
        let dir = self.run_dir.join("tokens");
        std::fs::create_dir_all(&dir)?;
        for node in &self.nodes {
            let token = self
                .lab
                .token(
                    ZTUNNEL_NAMESPACE,
                    ZTUNNEL_ACCOUNT,
                    CA_AUDIENCE,
                    Some(&ztunnel_pod_name(&node.name)),
                )
                .await?;
            write_secret(&dir.join(format!("{}.token", node.name)), &token)?;
        }
        *self.tokens_written.lock().expect("poisoned") = Instant::now();
        Ok(())
    }
}

/// A Node that fits pods, Ready, with its address and pod range.
async fn register_node(lab: &KubeLab, node: &NodeSpec) -> anyhow::Result<()> {
    lab.apply(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name,
                                                   "kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
    }))
    .await
    .with_context(|| format!("registering node {}", node.name))?;
    let resources = json!({"cpu": "8", "memory": "16Gi", "pods": "110"});
    lab.apply_status(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name},
        "status": {"allocatable": resources, "capacity": resources,
                   "addresses": [{"type": "InternalIP", "address": node.ip},
                                 {"type": "Hostname", "address": node.name}],
                   "nodeInfo": {"kubeletVersion": concat!("ambientctl-v", env!("CARGO_PKG_VERSION")),
                                "containerRuntimeVersion": "ambientctl://processes",
                                "osImage": "ambient-rs local node", "operatingSystem": "linux",
                                "architecture": std::env::consts::ARCH,
                                "kernelVersion": "", "kubeProxyVersion": "",
                                "machineID": "", "systemUUID": "", "bootID": ""},
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                   "message": "ambientctl runs this node's pods"}]},
    }))
    .await
    .with_context(|| format!("reporting node {} ready", node.name))?;
    info!(node = %node.name, ip = %node.ip, pod_cidr = %node.pod_cidr, "node registered");
    Ok(())
}

fn ztunnel_pod_name(node: &str) -> String {
    format!("ztunnel-{node}")
}

/// The Pod standing for `node`'s ztunnel (host network, bound to the node): what its token
/// is bound to, so that a TokenReview names the node.
async fn ztunnel_pod(lab: &KubeLab, node: &NodeSpec) -> anyhow::Result<()> {
    let name = ztunnel_pod_name(&node.name);
    lab.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ZTUNNEL_NAMESPACE,
                     "labels": {"app": "ztunnel", NODE_COMPONENT_LABEL: "ztunnel"}},
        "spec": {"nodeName": node.name, "serviceAccountName": ZTUNNEL_ACCOUNT,
                 "hostNetwork": true,
                 "containers": [{"name": "istio-proxy", "image": "ambient-rs/ztunnel"}]},
    }))
    .await
    .with_context(|| format!("creating the ztunnel pod of {}", node.name))?;
    let mut status = status_of(ZTUNNEL_NAMESPACE, &name, "Running", &node.ip, true);
    status["status"]["containerStatuses"] = json!([{
        "name": "istio-proxy", "image": "ambient-rs/ztunnel", "imageID": "", "ready": true,
        "started": true, "restartCount": 0, "state": {"running": {}}}]);
    lab.apply_status(status).await?;
    Ok(())
}

fn is_node_component(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(NODE_COMPONENT_LABEL))
}

/// A pod's status as a kubelet writes it: phase, address, conditions, and one status per
/// container (state, restarts; ready when the pod is).
fn pod_status(pod: &PodReport, spec: Option<&Pod>) -> Value {
    let ready = pod.phase == "Running";
    let image = |name: &str| {
        spec.and_then(|p| p.spec.as_ref())
            .and_then(|s| s.containers.iter().find(|c| c.name == name))
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    };
    let containers: Vec<Value> = pod
        .containers
        .iter()
        .map(|c| {
            let (state, running) = match &c.state {
                ContainerState::Running { .. } => (json!({"running": {}}), true),
                ContainerState::Waiting { reason } => (
                    json!({"waiting": {"reason": "CreateContainerError", "message": reason}}),
                    false,
                ),
                ContainerState::Exited { code, .. } => {
                    let code = code.unwrap_or(-1);
                    let reason = if code == 0 { "Completed" } else { "Error" };
                    (
                        json!({"terminated": {"exitCode": code, "reason": reason}}),
                        false,
                    )
                }
            };
            json!({"name": c.name, "image": image(&c.name), "imageID": "",
                   "ready": ready && running, "started": running,
                   "restartCount": c.restarts, "state": state})
        })
        .collect();
    let mut status = status_of(
        &pod.namespace,
        &pod.name,
        &pod.phase,
        &pod.ip.to_string(),
        ready,
    );
    status["status"]["containerStatuses"] = Value::Array(containers);
    status
}

/// The phase, address and conditions of a pod's status.
fn status_of(namespace: &str, name: &str, phase: &str, ip: &str, ready: bool) -> Value {
    let status = |b: bool| if b { "True" } else { "False" };
    let conditions: Vec<Value> = [
        ("PodScheduled", true),
        ("Initialized", true),
        ("ContainersReady", ready),
        ("Ready", ready),
    ]
    .iter()
    .map(|(c, s)| json!({"type": c, "status": status(*s)}))
    .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": conditions},
    })
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(
        |c| matches!(c.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.code == 404),
    )
}

/// A reflector of `api` kept by a background task; every event notifies `changed`.
fn reflect<K>(api: Api<K>, changed: &Arc<Notify>) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let changed = changed.clone();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                warn!(error = %e, "watching the API server");
            }
            changed.notify_one();
        }
    });
    (reader, task)
}

/// Writes a token readable by this user only.
fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp~");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    std::io::Write::write_all(&mut file, contents.as_bytes())?;
    std::fs::rename(tmp, path)
}
