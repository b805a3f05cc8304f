//! The node agent on a Kubernetes node: its pods as the API server has them. Our CNI plugin
//! names each new pod's network namespace ([`KubePods::cni_add`]); the agent decides from the
//! pod's and its namespace's labels (`proxy_core::enrolment`, the controller's rule) whether
//! to capture it. A watch of the node's pods and of namespaces then enrols or releases pods as
//! labels change, and enrols pods that were running before the agent (their namespace found
//! by address, [`super::netns_scan`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::cni::{CniAnswer, CniAttachment};
use super::{AgentError, NodeAgent, PodEvent, capture, netns_scan};
use crate::inpod::netns::Netns;

#[derive(Debug, thiserror::Error)]
pub enum KubePodsError {
    #[error("API server: {0}")]
    Api(#[from] kube::Error),
    #[error("pod {0} is not in the API server")]
    UnknownPod(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("attachment of pod {0} names no network namespace")]
    NoNetns(String),
}

/// The readiness gate the pod watch holds until its first list.
pub const READY_GATE: &str = "pod-watch";

/// The cluster id in the workload uids the controller gives pods (its `--cluster-id`
/// default). The agent names pods the same way, so ztunnel finds a pod's workload by key
/// rather than by searching every workload for its namespace and name.
pub const CLUSTER_ID: &str = "Kubernetes";

/// What the mesh needs to know of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    /// The workload uid: `Kubernetes//Pod/<namespace>/<name>`.
    pub uid: String,
    pub service_account: String,
    /// Its labels (or its namespace's) put it in the mesh and it can be captured: a pod on
    /// the host's network never is, nor one whose containers have all ended.
    pub enrolled: bool,
    pub ips: Vec<IpAddr>,
}

impl PodFacts {
    pub fn of(pod: &Pod, namespace: Option<&Namespace>) -> PodFacts {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let finished = status
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let empty = BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let ns_labels = namespace.map(|n| n.metadata.labels.as_ref().unwrap_or(&empty));
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.ip.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        PodFacts {
            uid: format!(
                "{CLUSTER_ID}//Pod/{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            enrolled: !host_network
                && !finished
                && proxy_core::enrolment::enrolled_by_labels(labels, ns_labels),
            ips,
        }
    }
}

/// Reads a pod and its namespace fresh from the API server (a just-created pod may not have
/// reached a watch yet). None when the pod does not exist.
pub async fn lookup(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<PodFacts>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let Some(pod) = pods.get_opt(name).await? else {
        return Ok(None);
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces.get_opt(namespace).await?;
    Ok(Some(PodFacts::of(&pod, ns.as_ref())))
}

/// A client from `kubeconfig`, or the in-cluster configuration when None.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, kube::Error> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(file, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .map_err(kube::Error::InferConfig)?,
    };
    kube::Client::try_from(config)
}

/// A network namespace the plugin named for a pod.
#[derive(Clone, Debug)]
struct Attached {
    container_id: String,
    netns: PathBuf,
}

pub struct KubePods {
    agent: Arc<NodeAgent>,
    client: kube::Client,
    node: String,
    proc_root: PathBuf,
    /// Every attachment the plugin reported on this node, in the mesh or not, by
    /// `namespace/name`: a label change later enrols the pod without a search.
    attached: Mutex<BTreeMap<String, Attached>>,
    /// One enrolment decision at a time: a plugin's ADD and a watch's reconcile must not
    /// both capture (or one capture, the other release) the same pod.
    deciding: tokio::sync::Mutex<()>,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl KubePods {
    /// `proc_root`: where the host's processes are listed (`/proc`, or the host's mounted).
    pub fn new(
        agent: Arc<NodeAgent>,
        client: kube::Client,
        node: String,
        proc_root: PathBuf,
    ) -> Arc<KubePods> {
        Arc::new(KubePods {
            agent,
            client,
            node,
            proc_root,
            attached: Mutex::new(BTreeMap::new()),
            deciding: tokio::sync::Mutex::new(()),
        })
    }

    /// The held pod (its uid) named `namespace/name`, if any.
    fn held_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.agent
            .pods()
            .into_iter()
            .find(|p| p.pod.namespace == namespace && p.pod.name == name)
            .map(|p| p.pod.uid)
    }

    /// The plugin's ADD: captures the pod when its labels say so.
    pub async fn cni_add(&self, att: &CniAttachment) -> Result<CniAnswer, KubePodsError> {
        let pod = key(&att.pod_namespace, &att.pod_name);
        let netns = att
            .netns
            .clone()
            .ok_or_else(|| KubePodsError::NoNetns(pod.clone()))?;
        let _deciding = self.deciding.lock().await;
        let facts = lookup(&self.client, &att.pod_namespace, &att.pod_name)
            .await?
            .ok_or_else(|| KubePodsError::UnknownPod(pod.clone()))?;
        self.attached.lock().expect("poisoned").insert(
            pod.clone(),
            Attached {
                container_id: att.container_id.clone(),
                netns: netns.clone(),
            },
        );
        if !facts.enrolled {
            info!(pod, "CNI ADD: not in the mesh");
            return Ok(CniAnswer {
                enrolled: false,
                captured: false,
            });
        }
        self.agent
            .add_pod(PodEvent {
                uid: facts.uid,
                name: att.pod_name.clone(),
                namespace: att.pod_namespace.clone(),
                service_account: facts.service_account,
                netns,
            })
            .await?;
        info!(pod, container = %att.container_id, "CNI ADD: captured");
        Ok(CniAnswer {
            enrolled: true,
            captured: true,
        })
    }

    /// The plugin's CHECK: whether the pod should be captured, and whether the attachment's
    /// namespace holds the capture rules.
    pub async fn cni_check(&self, att: &CniAttachment) -> Result<CniAnswer, KubePodsError> {
        let pod = key(&att.pod_namespace, &att.pod_name);
        let netns = att
            .netns
            .clone()
            .ok_or_else(|| KubePodsError::NoNetns(pod.clone()))?;
        let facts = lookup(&self.client, &att.pod_namespace, &att.pod_name)
            .await?
            .ok_or_else(|| KubePodsError::UnknownPod(pod.clone()))?;
        let captured = Netns::open(&netns)
            .map_err(|source| AgentError::Netns {
                path: netns.clone(),
                source,
            })
            .and_then(|n| capture::installed(&n).map_err(AgentError::from))?;
        Ok(CniAnswer {
            enrolled: facts.enrolled,
            captured,
        })
    }

    /// The plugin's DEL: releases the pod if held. Never fails for a pod already gone.
    pub async fn cni_del(&self, att: &CniAttachment) -> Result<CniAnswer, KubePodsError> {
        let pod = key(&att.pod_namespace, &att.pod_name);
        let _deciding = self.deciding.lock().await;
        {
            let mut attached = self.attached.lock().expect("poisoned");
            // A DEL of an older sandbox of the same pod leaves the newer attachment alone.
            if attached
                .get(&pod)
                .is_some_and(|a| a.container_id == att.container_id)
            {
                attached.remove(&pod);
            }
        }
        if let Some(uid) = self.held_uid(&att.pod_namespace, &att.pod_name) {
            self.agent.remove_pod(&uid).await?;
            info!(pod, "CNI DEL: released");
        }
        Ok(CniAnswer {
            enrolled: false,
            captured: false,
        })
    }

    /// Watches the node's pods and every namespace, and brings the held pods in line with
    /// them after each change; runs until the process ends.
    pub async fn run(self: Arc<Self>, readiness: proxy_core::readiness::Readiness) {
        let changed = Arc::new(Notify::new());
        let pods_api: Api<Pod> = Api::all(self.client.clone());
        let on_node = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node));
        let (pods, _pods_task) = reflect(pods_api, on_node, &changed);
        let (namespaces, _ns_task) = reflect(
            Api::<Namespace>::all(self.client.clone()),
            watcher::Config::default(),
            &changed,
        );
        // Until both are listed, an absent pod is not a deleted one.
        let ready = async {
            pods.wait_until_ready().await?;
            namespaces.wait_until_ready().await
        };
        if let Err(e) = ready.await {
            warn!(error = %e, "pod watch ended before its first list");
            return;
        }
        info!(node = %self.node, pods = pods.state().len(), "watching the node's pods");
        loop {
            self.reconcile(&pods, &namespaces).await;
            readiness.mark(READY_GATE);
            changed.notified().await;
            // Let a burst of events (a namespace relabelled, many pods) settle first.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn reconcile(&self, pods: &Store<Pod>, namespaces: &Store<Namespace>) {
        let _deciding = self.deciding.lock().await;
        let held: BTreeMap<String, String> = self
            .agent
            .pods()
            .into_iter()
            .map(|p| (p.pod.uid.clone(), key(&p.pod.namespace, &p.pod.name)))
            .collect();
        let mut present = BTreeSet::new();
        for pod in pods.state() {
            let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name)
            else {
                continue;
            };
            let ns = namespaces.get(&reflector::ObjectRef::new(namespace));
            let facts = PodFacts::of(&pod, ns.as_deref());
            present.insert(facts.uid.clone());
            let is_held = held.contains_key(&facts.uid);
            if facts.enrolled && !is_held {
                self.enrol(namespace, name, facts).await;
            } else if !facts.enrolled && is_held {
                match self.agent.remove_pod(&facts.uid).await {
                    Ok(()) => {
                        info!(pod = %key(namespace, name), "labels took the pod out of the mesh; released")
                    }
                    Err(e) => warn!(pod = %key(namespace, name), error = %e, "releasing the pod"),
                }
            }
        }
        for (uid, pod) in held.iter().filter(|(uid, _)| !present.contains(*uid)) {
            match self.agent.remove_pod(uid).await {
                Ok(()) => info!(pod, "pod no longer on this node; released"),
                Err(e) => warn!(pod, error = %e, "releasing a deleted pod"),
            }
        }
    }

    /// Enrols a pod the watch found in the mesh: in the namespace the plugin reported, else
    /// in the one holding its address (a pod that was running before the agent).
    async fn enrol(&self, namespace: &str, name: &str, facts: PodFacts) {
        let pod = key(namespace, name);
        let reported = self
            .attached
            .lock()
            .expect("poisoned")
            .get(&pod)
            .map(|a| a.netns.clone());
        let netns = match reported {
            Some(n) => n,
            None => match netns_scan::find_pod_netns(&self.proc_root, &facts.ips) {
                Some(n) => n,
                None => {
                    debug!(pod, "no network namespace yet; its CNI ADD will enrol it");
                    return;
                }
            },
        };
        let event = PodEvent {
            uid: facts.uid,
            name: name.to_string(),
            namespace: namespace.to_string(),
            service_account: facts.service_account,
            netns: netns.clone(),
        };
        match self.agent.add_pod(event).await {
            Ok(()) => {
                info!(pod, netns = %netns.display(), "labels put the pod in the mesh; captured")
            }
            Err(e) => warn!(pod, error = %e, "capturing the pod"),
        }
    }
}

/// A reflector of `api` kept by a background task; every event notifies `changed`.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: &Arc<Notify>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
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
    let stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn facts_follow_labels_and_never_enrol_the_host_network() {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}
        }))
        .unwrap();
        let web = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"containers": [], "serviceAccountName": "web"},
            "status": {"phase": "Running", "podIP": "10.244.1.5",
                       "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]}
        }));
        let facts = PodFacts::of(&web, Some(&ns));
        assert!(facts.enrolled);
        assert_eq!(facts.uid, "Kubernetes//Pod/shop/web");
        assert_eq!(facts.service_account, "web");
        assert_eq!(facts.ips.len(), 2);
        assert!(!PodFacts::of(&web, None).enrolled);
        let host = pod(serde_json::json!({
            "metadata": {"name": "h", "namespace": "shop", "uid": "u2"},
            "spec": {"containers": [], "hostNetwork": true}
        }));
        assert!(!PodFacts::of(&host, Some(&ns)).enrolled);
        let done = pod(serde_json::json!({
            "metadata": {"name": "j", "namespace": "shop", "uid": "u3"},
            "spec": {"containers": []}, "status": {"phase": "Succeeded"}
        }));
        assert!(!PodFacts::of(&done, Some(&ns)).enrolled);
        assert_eq!(PodFacts::of(&done, Some(&ns)).service_account, "default");
    }
}
