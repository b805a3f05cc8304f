//! The node agent (the role istio-cni plays): installs capture rules in each enrolled pod's
//! network namespace and hands the pod to ztunnel over ZDS.
//!
//! - [`capture`] / [`nftables`] / [`rtnl`]: the rules and routes, written over netlink.
//! - [`cni`]: where pods are announced (HTTP over a unix socket, like istio-cni's plugin
//!   events) and its client.
//! - [`zds_server`]: the ZDS session with ztunnel: snapshot on connect, then live changes.
//! - [`kube_pods`]: on a Kubernetes node, the node's pods from the API server; it decides
//!   enrolment for our CNI plugin's requests and follows label changes ([`netns_scan`] finds
//!   pods that were running before the agent).
//! - [`cni_install`]: puts our CNI plugin in the node's plugin chain, and takes it out.
//!
//! The agent persists its pod list, so after a restart it can give a reconnecting ztunnel the
//! same pods again.

pub mod capture;
pub mod cni;
pub mod cni_install;
pub mod kube_pods;
pub mod netns_scan;
pub mod nftables;
pub mod rtnl;
pub mod zds_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambient_proto::istio::workload::zds::{
    AddWorkload, DelWorkload, KeepWorkload, WorkloadInfo, WorkloadRequest,
    workload_request::Payload,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::inpod::netns::Netns;

/// How long a pod change waits for ztunnel's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod announced to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodEvent {
    /// Workload uid (as WDS names it, e.g. `Kubernetes//Pod/<ns>/<name>`).
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_account")]
    pub service_account: String,
    /// Path of the pod's network namespace (e.g. a bind mount under /run/netns).
    pub netns: PathBuf,
}

fn default_account() -> String {
    "default".into()
}

/// A pod as the agent reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(flatten)]
    pub pod: PodEvent,
    /// False when the namespace could not be reopened after an agent restart.
    pub netns_open: bool,
    pub captured: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("opening netns {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("capture rules: {0}")]
    Capture(#[from] capture::CaptureError),
    #[error("ztunnel refused the pod: {0}")]
    Refused(String),
    #[error("ztunnel did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

struct Pod {
    event: PodEvent,
    netns: Option<Arc<Netns>>,
}

/// A request for the current ZDS session, answered once ztunnel acks it.
pub(crate) struct Command {
    pub request: WorkloadRequest,
    pub netns: Option<Arc<Netns>>,
    pub reply: oneshot::Sender<Result<(), String>>,
}

struct Inner {
    pods: BTreeMap<String, Pod>,
    /// The newest ztunnel's session: it gets every change.
    session: Option<(u64, mpsc::Sender<Command>)>,
    /// Older sessions a newer one superseded (a ztunnel being replaced keeps its connection
    /// while it drains). They get nothing; they are closed when the newest one ends, so an
    /// older ztunnel that is still serving reconnects and gets a fresh snapshot.
    superseded: Vec<(u64, mpsc::Sender<Command>)>,
}

pub struct NodeAgent {
    inner: Mutex<Inner>,
    state_file: Option<PathBuf>,
}

pub(crate) fn add_request(event: &PodEvent) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(Payload::Add(AddWorkload {
            uid: event.uid.clone(),
            workload_info: Some(WorkloadInfo {
                name: event.name.clone(),
                namespace: event.namespace.clone(),
                service_account: event.service_account.clone(),
            }),
        })),
    }
}

impl NodeAgent {
    /// Creates the agent, reloading pods from `state_file` if it exists. Pods whose namespace
    /// still opens get their capture rules reinstalled; the others are kept for ztunnel
    /// (`KeepWorkload`) until deleted.
    pub fn new(state_file: Option<PathBuf>) -> Result<Self, AgentError> {
        let mut pods = BTreeMap::new();
        if let Some(path) = &state_file
            && path.exists()
        {
            let err = |reason: String| AgentError::State {
                path: path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let events: Vec<PodEvent> =
                serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
            for event in events {
                let netns = match Netns::open(&event.netns) {
                    Ok(n) => match capture::install(&n) {
                        Ok(()) => Some(Arc::new(n)),
                        Err(e) => {
                            warn!(pod = %event.name, error = %e, "could not reinstall capture rules");
                            Some(Arc::new(n))
                        }
                    },
                    Err(e) => {
                        warn!(pod = %event.name, netns = %event.netns.display(), error = %e, "pod namespace not reopened; keeping it for ztunnel");
                        None
                    }
                };
                pods.insert(event.uid.clone(), Pod { event, netns });
            }
            info!(pods = pods.len(), file = %path.display(), "restored pods");
        }
        Ok(NodeAgent {
            inner: Mutex::new(Inner {
                pods,
                session: None,
                superseded: Vec::new(),
            }),
            state_file,
        })
    }

    fn persist(&self, inner: &Inner) -> Result<(), AgentError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let events: Vec<&PodEvent> = inner.pods.values().map(|p| &p.event).collect();
        let json = serde_json::to_vec_pretty(&events).expect("serializable");
        write_atomically(path, &json).map_err(|e| AgentError::State {
            path: path.clone(),
            reason: e.to_string(),
        })
    }

    /// Enrols a pod: capture rules first, then ztunnel (if connected) must acknowledge it.
    pub async fn add_pod(&self, event: PodEvent) -> Result<(), AgentError> {
        let netns = Netns::open(&event.netns).map_err(|source| AgentError::Netns {
            path: event.netns.clone(),
            source,
        })?;
        capture::install(&netns)?;
        let netns = Arc::new(netns);
        let session = {
            let mut inner = self.inner.lock().expect("poisoned");
            inner.pods.insert(
                event.uid.clone(),
                Pod {
                    event: event.clone(),
                    netns: Some(netns.clone()),
                },
            );
            self.persist(&inner)?;
            inner.session.as_ref().map(|(_, tx)| tx.clone())
        };
        info!(uid = %event.uid, pod = %event.name, "pod captured");
        match session {
            Some(tx) => send(&tx, add_request(&event), Some(netns)).await,
            None => {
                info!(uid = %event.uid, "ztunnel not connected; it gets the pod in its next snapshot");
                Ok(())
            }
        }
    }

    /// Releases a pod: ztunnel stops serving it and its capture rules are removed.
    pub async fn remove_pod(&self, uid: &str) -> Result<(), AgentError> {
        let (pod, session) = {
            let mut inner = self.inner.lock().expect("poisoned");
            let pod = inner.pods.remove(uid);
            self.persist(&inner)?;
            (pod, inner.session.as_ref().map(|(_, tx)| tx.clone()))
        };
        let Some(pod) = pod else {
            return Ok(());
        };
        if let Some(tx) = session {
            let del = WorkloadRequest {
                payload: Some(Payload::Del(DelWorkload {
                    uid: uid.to_string(),
                })),
            };
            send(&tx, del, None).await?;
        }
        if let Some(netns) = &pod.netns
            && let Err(e) = capture::remove(netns)
        {
            // The namespace may be on its way out with the pod; nothing left to release.
            warn!(uid, error = %e, "capture rules not removed");
        }
        info!(uid, pod = %pod.event.name, "pod released");
        Ok(())
    }

    pub fn pods(&self) -> Vec<PodStatus> {
        let inner = self.inner.lock().expect("poisoned");
        inner
            .pods
            .values()
            .map(|p| PodStatus {
                pod: p.event.clone(),
                netns_open: p.netns.is_some(),
                captured: p
                    .netns
                    .as_ref()
                    .is_some_and(|n| capture::installed(n).unwrap_or(false)),
            })
            .collect()
    }

    /// Registers a new ZDS session and returns the snapshot it must send first. Done under
    /// one lock, so a pod added concurrently lands either in the snapshot or after it.
    pub(crate) fn start_session(
        &self,
        id: u64,
        tx: mpsc::Sender<Command>,
    ) -> Vec<(WorkloadRequest, Option<Arc<Netns>>)> {
        let mut inner = self.inner.lock().expect("poisoned");
        if let Some(previous) = inner.session.replace((id, tx)) {
            inner.superseded.push(previous);
        }
        inner
            .pods
            .values()
            .map(|p| match &p.netns {
                Some(n) => (add_request(&p.event), Some(n.clone())),
                None => (
                    WorkloadRequest {
                        payload: Some(Payload::Keep(KeepWorkload {
                            uid: p.event.uid.clone(),
                        })),
                    },
                    None,
                ),
            })
            .collect()
    }

    /// Forgets a session that ended. When it was the newest, the superseded ones are closed
    /// too: none of them has seen the changes since, so each must start over.
    pub(crate) fn end_session(&self, id: u64) {
        let mut inner = self.inner.lock().expect("poisoned");
        if inner.session.as_ref().is_some_and(|(s, _)| *s == id) {
            inner.session = None;
            inner.superseded.clear();
        } else {
            inner.superseded.retain(|(s, _)| *s != id);
        }
    }
}

async fn send(
    tx: &mpsc::Sender<Command>,
    request: WorkloadRequest,
    netns: Option<Arc<Netns>>,
) -> Result<(), AgentError> {
    let (reply, answer) = oneshot::channel();
    let command = Command {
        request,
        netns,
        reply,
    };
    let exchange = async {
        tx.send(command)
            .await
            .map_err(|_| AgentError::Refused("ZDS session closed".into()))?;
        answer
            .await
            .map_err(|_| AgentError::Refused("ZDS session closed before the ack".into()))?
            .map_err(AgentError::Refused)
    };
    tokio::time::timeout(ACK_TIMEOUT, exchange)
        .await
        .map_err(|_| AgentError::Timeout(ACK_TIMEOUT))?
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, path)
}
