//! The local runtime's "kubelet, scheduler and allocators": keeps the pods of a manifest
//! directory running as network namespaces with their containers, enrols the ones in the
//! ambient mesh, and records placements and addresses for the controller
//! ([`ambient_controller::source::allocations`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambient_controller::index::labels;
use ambient_controller::model::Object;
use ambient_controller::model::pod::service_account_or_default;
use ambient_controller::source::allocations::{Allocations, PodAllocation, ServiceAllocation};
use ambient_controller::source::{Diagnostic, Severity};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde::Serialize;
use tracing::{info, warn};
use ztunnel::inpod::netns::Netns;

use super::generated::{LabelOverlay, View};
use super::pod::{ContainerStatus, PodIdentity, PodProcesses};
use ambient_lab::mesh::{MeshError, allocations_path};
use ambient_lab::{Mesh, TopologyError};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error(transparent)]
    Allocations(#[from] ambient_controller::source::allocations::AllocationsError),
}

/// Service VIPs from a /16, skipping the cluster DNS address.
struct ServiceAddresses {
    prefix: [u8; 2],
    next: u16,
    free: Vec<Ipv4Addr>,
}

impl ServiceAddresses {
    fn allocate(&mut self) -> Option<Ipv4Addr> {
        if let Some(ip) = self.free.pop() {
            return Some(ip);
        }
        // .0.0-.0.10 are reserved (network, cluster DNS at .0.10).
        if self.next == u16::MAX {
            return None;
        }
        let n = self.next.max(11);
        self.next = n + 1;
        let [a, b] = self.prefix;
        Some(Ipv4Addr::new(a, b, (n >> 8) as u8, n as u8))
    }
}

struct RunningPod {
    processes: PodProcesses,
    /// Handed to the node agent (captured, served by ztunnel).
    captured: bool,
    service_account: String,
    /// On an API server: the CNI plugin's ADD went through, so the pod may start.
    attached: bool,
}

/// A pod as `ambientctl status` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub service_account: String,
    /// `ambient` (captured, HBONE) or `none`.
    pub dataplane: &'static str,
    pub phase: String,
    pub containers: Vec<ContainerStatus>,
    /// The Gateway (`namespace/name`) this pod is the waypoint of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<String>,
}

/// `allocations.json` as the runtime writes it: the controller's [`Allocations`] plus the
/// objects the runtime made (`generated`) and label overlays (`labels`), both left out when
/// empty.
#[derive(Serialize)]
struct AllocationsFile<'a> {
    pods: &'a BTreeMap<String, PodAllocation>,
    services: &'a BTreeMap<String, ServiceAllocation>,
    #[serde(skip_serializing_if = "<[serde_json::Value]>::is_empty")]
    generated: &'a [serde_json::Value],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a LabelOverlay,
}

/// Pod phases as the controller reads them.
const RUNNING: &str = "Running";
const PENDING: &str = "Pending";

/// The pods of a manifest directory, kept running on a [`Mesh`].
pub struct Cluster {
    pub mesh: Mesh,
    allocations: Allocations,
    pods: BTreeMap<String, RunningPod>,
    services: ServiceAddresses,
    logs: PathBuf,
    generated: Vec<serde_json::Value>,
    labels: LabelOverlay,
    /// Waypoint pods (`namespace/name`) → their Gateway.
    waypoints: BTreeMap<String, String>,
}

pub(super) fn pod_key(pod: &Pod) -> (String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn service_account(pod: &Pod) -> String {
    service_account_or_default(
        pod.spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref()),
    )
}

impl Cluster {
    pub fn new(mesh: Mesh, service_prefix: [u8; 2]) -> Self {
        let logs = mesh.lab.run_dir.join("logs").join("pods");
        Cluster {
            mesh,
            allocations: Allocations::default(),
            pods: BTreeMap::new(),
            services: ServiceAddresses {
                prefix: service_prefix,
                next: 11,
                free: Vec::new(),
            },
            logs,
            generated: Vec::new(),
            labels: LabelOverlay::new(),
            waypoints: BTreeMap::new(),
        }
    }

    /// Takes what the runtime generated and the label overlays from `view` (published with
    /// the next save), and which pods are waypoints.
    pub fn publish(&mut self, view: &View, labels: &LabelOverlay) {
        self.generated = view.generated.clone();
        self.labels = labels.clone();
        self.waypoints = view.waypoint_pods.clone();
    }

    /// Writes `allocations.json` so that a reader never sees half of it.
    pub fn save(&self) -> Result<(), ClusterError> {
        save_allocations(
            &allocations_path(&self.mesh.lab),
            &AllocationsFile {
                pods: &self.allocations.pods,
                services: &self.allocations.services,
                generated: &self.generated,
                labels: &self.labels,
            },
        )
    }

    /// The waypoint pods that run, with where to probe their readiness.
    pub fn waypoint_probes(&self) -> Vec<(String, Arc<Netns>, Ipv4Addr)> {
        self.waypoints
            .keys()
            .filter(|k| self.pods.contains_key(*k))
            .filter_map(|k| {
                let p = self.mesh.lab.pods.get(k)?;
                Some((k.clone(), p.netns.clone(), p.ip))
            })
            .collect()
    }

    /// Records a waypoint pod's readiness as its phase (`Running` once ready); returns
    /// whether the phase changed.
    pub fn set_ready(&mut self, key: &str, ready: bool) -> bool {
        let Some(a) = self.allocations.pods.get_mut(key) else {
            return false;
        };
        let phase = if ready { RUNNING } else { PENDING };
        if a.phase == phase {
            return false;
        }
        info!(pod = %key, phase, "waypoint readiness changed");
        a.phase = phase.to_string();
        true
    }

    /// Waypoint pods whose phase is not `Running` yet.
    pub fn waypoints_not_ready(&self) -> Vec<String> {
        self.waypoints
            .keys()
            .filter(|k| {
                self.allocations
                    .pods
                    .get(*k)
                    .is_none_or(|a| a.phase != RUNNING)
            })
            .cloned()
            .collect()
    }

    /// Places the pods and addresses the services of `objects` (before the mesh starts,
    /// so the controller's first view already has them). Returns what could not be placed.
    pub async fn allocate(&mut self, objects: &[Object]) -> Result<Vec<String>, ClusterError> {
        let mut problems = Vec::new();
        let wanted: BTreeMap<String, &Pod> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Pod(p) => {
                    let (ns, name) = pod_key(p);
                    Some((format!("{ns}/{name}"), p))
                }
                _ => None,
            })
            .collect();
        // Pods that are gone.
        let gone: Vec<String> = self
            .allocations
            .pods
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.allocations.pods.remove(&key);
            let (ns, name) = key.split_once('/').expect("ns/name");
            if let Some(mut p) = self.pods.remove(&key) {
                p.processes.stop(Duration::from_secs(2));
                if p.attached {
                    if let Err(e) = self.mesh.run_cni_plugin("DEL", ns, name).await {
                        warn!(pod = %key, error = %e, "CNI DEL");
                    }
                } else if p.captured
                    && let Err(e) = self.mesh.release(ns, name).await
                {
                    warn!(pod = %key, error = %e, "releasing the pod");
                }
            }
            if self.mesh.lab.pods.contains_key(&key) {
                self.mesh.lab.remove_pod(ns, name)?;
            }
            info!(pod = %key, "pod removed");
        }
        // New pods.
        for (key, pod) in &wanted {
            if self.allocations.pods.contains_key(key) {
                continue;
            }
            let (ns, name) = pod_key(pod);
            let node = self.schedule(pod);
            match self.mesh.lab.add_pod(&ns, &name, &node) {
                Ok(p) => {
                    // A waypoint is Running once its readiness answers.
                    let phase = if self.waypoints.contains_key(key) {
                        PENDING
                    } else {
                        RUNNING
                    };
                    self.allocations.pods.insert(
                        key.clone(),
                        PodAllocation {
                            node_name: node.clone(),
                            pod_ip: p.ip.to_string(),
                            phase: phase.into(),
                        },
                    );
                    info!(pod = %key, node = %node, ip = %p.ip, "pod placed");
                }
                Err(e) => problems.push(format!("pod {key}: {e}")),
            }
        }
        // Services.
        let services: BTreeMap<String, bool> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Service(s) => {
                    let k = o.key();
                    let has_ip = s
                        .spec
                        .as_ref()
                        .and_then(|s| s.cluster_ip.as_deref())
                        .is_some_and(|ip| !ip.is_empty());
                    Some((format!("{}/{}", k.namespace, k.name), has_ip))
                }
                _ => None,
            })
            .collect();
        let stale: Vec<String> = self
            .allocations
            .services
            .keys()
            .filter(|k| services.get(*k) != Some(&false))
            .cloned()
            .collect();
        for key in stale {
            if let Some(a) = self.allocations.services.remove(&key)
                && let Ok(ip) = a.cluster_ip.parse()
            {
                self.services.free.push(ip);
            }
        }
        for (key, has_ip) in services {
            if has_ip || self.allocations.services.contains_key(&key) {
                continue;
            }
            match self.services.allocate() {
                Some(ip) => {
                    self.allocations.services.insert(
                        key,
                        ServiceAllocation {
                            cluster_ip: ip.to_string(),
                        },
                    );
                }
                None => problems.push(format!("service {key}: no service address left")),
            }
        }
        self.save()?;
        Ok(problems)
    }

    /// The node for a new pod: its `nodeName` if that node exists, else the least loaded.
    fn schedule(&self, pod: &Pod) -> String {
        let lab = &self.mesh.lab;
        if let Some(n) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref())
            && lab.nodes.contains_key(n)
        {
            return n.clone();
        }
        lab.nodes
            .keys()
            .min_by_key(|n| lab.pods.values().filter(|p| &p.node == *n).count())
            .cloned()
            .expect("the mesh has nodes")
    }

    /// Brings every placed pod in line with `objects`: enrols or releases it as its labels
    /// and its namespace's say, then starts, restarts or stops its containers.
    pub async fn converge(&mut self, objects: &[Object]) {
        let kubernetes = self.mesh.options.kubeconfig.is_some();
        // What the node agents hold (they decide enrolment on an API server).
        let mut held = std::collections::BTreeSet::new();
        if kubernetes {
            let nodes: Vec<String> = self.mesh.lab.nodes.keys().cloned().collect();
            for node in nodes {
                match self.mesh.agent_pods(&node).await {
                    Ok(pods) => held.extend(
                        pods.into_iter()
                            .map(|p| format!("{}/{}", p.pod.namespace, p.pod.name)),
                    ),
                    Err(e) => warn!(node, error = %e, "asking the node agent for its pods"),
                }
            }
        }
        let namespaces: BTreeMap<String, &Namespace> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Namespace(n) => Some((n.metadata.name.clone().unwrap_or_default(), n)),
                _ => None,
            })
            .collect();
        for o in objects {
            let Object::Pod(pod) = o else { continue };
            let (ns, name) = pod_key(pod);
            let key = format!("{ns}/{name}");
            let Some(placed) = self.mesh.lab.pods.get(&key) else {
                continue;
            };
            let sa = service_account(pod);
            if !self.pods.contains_key(&key) {
                let identity = PodIdentity {
                    namespace: ns.clone(),
                    name: name.clone(),
                    ip: placed.ip,
                    node: placed.node.clone(),
                    service_account: sa.clone(),
                };
                let dir = self
                    .mesh
                    .lab
                    .run_dir
                    .join("pods")
                    .join(format!("{ns}_{name}"));
                if let Err(e) = std::fs::create_dir_all(&self.logs) {
                    warn!(error = %e, "creating the pod log directory");
                }
                self.pods.insert(
                    key.clone(),
                    RunningPod {
                        processes: PodProcesses::new(
                            identity,
                            placed.netns.clone(),
                            dir,
                            self.logs.clone(),
                        ),
                        captured: false,
                        service_account: sa.clone(),
                        attached: false,
                    },
                );
            }
            if kubernetes {
                // As a node does: the CNI plugin tells the node agent, which decides from
                // the API server's labels (and follows their changes itself).
                let running = self.pods.get_mut(&key).expect("inserted above");
                if !running.attached {
                    match self.mesh.run_cni_plugin("ADD", &ns, &name).await {
                        Ok(()) => {
                            running.attached = true;
                            held.extend(
                                self.mesh
                                    .agent_pods(&placed.node)
                                    .await
                                    .into_iter()
                                    .flatten()
                                    .map(|p| format!("{}/{}", p.pod.namespace, p.pod.name)),
                            );
                        }
                        Err(e) => {
                            warn!(pod = %key, error = %e, "CNI ADD refused; the pod waits");
                            continue;
                        }
                    }
                }
                running.captured = held.contains(&key);
                running.processes.apply(pod);
                continue;
            }
            let ambient = labels::enrolled(&pod.metadata, namespaces.get(&ns).copied());
            let running = self.pods.get_mut(&key).expect("inserted above");
            let recapture = running.captured && running.service_account != sa;
            if ambient && (!running.captured || recapture) {
                match self.mesh.enrol(&ns, &name, &sa).await {
                    Ok(()) => {
                        running.captured = true;
                        running.service_account = sa.clone();
                        info!(pod = %key, "pod enrolled in the ambient mesh");
                    }
                    Err(e) => warn!(pod = %key, error = %e, "enrolling the pod"),
                }
            } else if !ambient && running.captured {
                match self.mesh.release(&ns, &name).await {
                    Ok(()) => {
                        running.captured = false;
                        info!(pod = %key, "pod released from the mesh");
                    }
                    Err(e) => warn!(pod = %key, error = %e, "releasing the pod"),
                }
            }
            running.processes.apply(pod);
        }
    }

    /// Restarts containers that exited, as their restart policy says.
    pub fn tick(&mut self) {
        for p in self.pods.values_mut() {
            p.processes.tick();
        }
    }

    pub fn report(&self) -> Vec<PodReport> {
        self.pods
            .iter()
            .map(|(key, p)| {
                let id = p.processes.identity();
                let waypoint = self.waypoints.get(key).cloned();
                let waiting_for_cni = self.mesh.options.kubeconfig.is_some() && !p.attached;
                let phase = match (&waypoint, self.allocations.pods.get(key)) {
                    // Its network is not set up (the CNI plugin refused): nothing started.
                    _ if waiting_for_cni => PENDING.to_string(),
                    (Some(_), Some(a)) if p.processes.phase() == RUNNING => a.phase.clone(),
                    _ => p.processes.phase().to_string(),
                };
                PodReport {
                    namespace: id.namespace.clone(),
                    name: id.name.clone(),
                    node: id.node.clone(),
                    ip: id.ip,
                    service_account: p.service_account.clone(),
                    dataplane: if p.captured { "ambient" } else { "none" },
                    phase,
                    containers: p.processes.statuses(),
                    waypoint,
                }
            })
            .collect()
    }

    pub fn service_addresses(&self) -> BTreeMap<String, String> {
        self.allocations
            .services
            .iter()
            .map(|(k, v)| (k.clone(), v.cluster_ip.clone()))
            .collect()
    }

    /// Stops every pod's containers.
    pub fn stop_pods(&mut self) {
        for p in self.pods.values_mut() {
            p.processes.stop(Duration::from_secs(2));
        }
    }
}

fn save_allocations(path: &Path, file: &AllocationsFile<'_>) -> Result<(), ClusterError> {
    let err = |source| {
        ClusterError::Allocations(
            ambient_controller::source::allocations::AllocationsError::Write {
                path: path.display().to_string(),
                source,
            },
        )
    };
    let text = serde_json::to_string_pretty(file).expect("plain data serializes");
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Diagnostics worth showing a user (the runtime reads the directory with the controller's
/// own parser, so they are the same findings the controller reports).
pub fn describe(diagnostics: &[Diagnostic]) -> Vec<String> {
    diagnostics
        .iter()
        .filter(|d| d.severity != Severity::Info)
        .map(|d| d.to_string())
        .collect()
}
