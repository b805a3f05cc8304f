//! In-pod mode: the node agent hands ztunnel each enrolled pod's network namespace over ZDS,
//! and ztunnel runs that pod's proxies inside it.
//!
//! - [`netns`]: entering a namespace to create sockets.
//! - [`zds_client`]: the ZDS session with the node agent.
//! - [`WorkloadManager`]: starts, keeps and stops per-pod proxies as ZDS requests say.

pub mod netns;
pub mod zds_client;

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use ambient_proto::identity::Identity;
use ambient_proto::istio::workload::zds::WorkloadInfo;
use serde::Serialize;
use tracing::{info, warn};

use crate::proxy::{PodContext, Shared};
use netns::Netns;

/// The identity a pod the node agent describes runs as (its certificates name it): its
/// service account (`default` when the agent sends none) in its namespace. The agent's
/// strings must make a valid SPIFFE ID as they are; nothing is escaped or trimmed.
pub fn pod_identity(trust_domain: &str, info: &WorkloadInfo) -> Result<Identity, String> {
    let account = if info.service_account.is_empty() {
        "default"
    } else {
        &info.service_account
    };
    Identity::new(trust_domain, &info.namespace, account)
        .map_err(|e| format!("pod {}/{}: {e}", info.namespace, info.name))
}

/// Retries [`PodContext::start`] until the ports are free or the pod leaves.
async fn start_when_free(ctx: Arc<PodContext>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = ctx.listening.cancelled() => return,
            _ = tick.tick() => {}
        }
        match ctx.start() {
            Ok(()) => {
                info!(pod = %ctx.name, "ports free: listening");
                return;
            }
            Err(e) if e.held_port().is_some() => {}
            Err(e) => {
                warn!(pod = %ctx.name, error = %e, "cannot listen in the pod");
                return;
            }
        }
    }
}

/// The pods this ztunnel currently serves.
pub struct WorkloadManager {
    shared: Arc<Shared>,
    trust_domain: String,
    pods: Mutex<HashMap<String, Arc<PodContext>>>,
    /// Uids named by the agent since the current ZDS session began (until SnapshotSent).
    snapshot: Mutex<Option<HashSet<String>>>,
}

/// A pod as `/config_dump` shows it.
#[derive(Debug, Serialize)]
pub struct PodDump {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub netns_inode: u64,
    pub pooled_connections: usize,
}

impl WorkloadManager {
    pub fn new(shared: Arc<Shared>, trust_domain: String) -> Self {
        WorkloadManager {
            shared,
            trust_domain,
            pods: Mutex::new(HashMap::new()),
            snapshot: Mutex::new(None),
        }
    }

    fn seen(&self, uid: &str) {
        if let Some(s) = self.snapshot.lock().expect("poisoned").as_mut() {
            s.insert(uid.to_string());
        }
    }

    /// Starts serving a pod inside `netns_fd`. Adding a pod already served in the same
    /// namespace keeps its proxies (and their connections) untouched.
    pub fn add(
        &self,
        uid: &str,
        info: Option<WorkloadInfo>,
        netns_fd: OwnedFd,
    ) -> Result<(), String> {
        let netns = Netns::from_fd(netns_fd).map_err(|e| format!("netns fd: {e}"))?;
        let info = info.ok_or("AddWorkload without workload_info")?;
        self.seen(uid);
        {
            let pods = self.pods.lock().expect("poisoned");
            if let Some(existing) = pods.get(uid)
                && existing.netns.same_as(&netns)
            {
                return Ok(());
            }
        }
        let identity = pod_identity(&self.trust_domain, &info)?;
        let ctx = PodContext::new(
            uid.to_string(),
            info.name.clone(),
            info.namespace.clone(),
            identity.clone(),
            netns,
            self.shared.clone(),
        )
        .map_err(|e| e.to_string())?;
        match ctx.start() {
            Ok(()) => {}
            // A process holds one of the ports without sharing it (a ztunnel from before port
            // sharing, being replaced): bind as soon as it leaves rather than never.
            Err(e) if let Some(port) = e.held_port() => {
                warn!(uid, pod = %info.name, port, "port held by another process; binding once it is free");
                tokio::spawn(start_when_free(ctx.clone()));
            }
            Err(e) => return Err(e.to_string()),
        }
        let old = self
            .pods
            .lock()
            .expect("poisoned")
            .insert(uid.to_string(), ctx.clone());
        if let Some(old) = old {
            old.stop();
        }
        info!(uid, pod = %info.name, namespace = %info.namespace, identity = %identity, netns = ctx.netns.inode(), "pod added");
        Ok(())
    }

    /// The agent knows the pod but could not hand over its namespace again: keep it if we
    /// have it.
    pub fn keep(&self, uid: &str) -> Result<(), String> {
        self.seen(uid);
        Ok(())
    }

    pub fn del(&self, uid: &str) -> Result<(), String> {
        let removed = self.pods.lock().expect("poisoned").remove(uid);
        if let Some(ctx) = removed {
            self.stop(&ctx);
            info!(uid, pod = %ctx.name, "pod removed");
        }
        Ok(())
    }

    fn stop(&self, ctx: &PodContext) {
        ctx.stop();
        let still_used = self
            .pods
            .lock()
            .expect("poisoned")
            .values()
            .any(|p| p.identity == ctx.identity);
        if !still_used {
            self.shared.certs.forget(&ctx.identity);
        }
    }

    /// A new ZDS session starts: remember which pods it names.
    pub fn begin_snapshot(&self) {
        *self.snapshot.lock().expect("poisoned") = Some(HashSet::new());
    }

    /// The agent has sent its whole cache: drop every pod it did not name.
    pub fn end_snapshot(&self) {
        let seen = self
            .snapshot
            .lock()
            .expect("poisoned")
            .take()
            .unwrap_or_default();
        let stale: Vec<Arc<PodContext>> = {
            let mut pods = self.pods.lock().expect("poisoned");
            let gone: Vec<String> = pods
                .keys()
                .filter(|u| !seen.contains(*u))
                .cloned()
                .collect();
            gone.iter().filter_map(|u| pods.remove(u)).collect()
        };
        for ctx in stale {
            info!(uid = %ctx.uid, pod = %ctx.name, "pod not in the agent's snapshot; removed");
            self.stop(&ctx);
        }
    }

    pub fn dump(&self) -> Vec<PodDump> {
        let pods = self.pods.lock().expect("poisoned");
        let mut out: Vec<PodDump> = pods
            .values()
            .map(|p| PodDump {
                uid: p.uid.clone(),
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                identity: p.identity.to_string(),
                netns_inode: p.netns.inode(),
                pooled_connections: p.pool.connection_count(),
            })
            .collect();
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        out
    }

    /// Stops every pod (process shutdown).
    pub fn stop_all(&self) {
        let pods: Vec<_> = self.pods.lock().expect("poisoned").drain().collect();
        for (_, ctx) in pods {
            ctx.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(namespace: &str, service_account: &str) -> WorkloadInfo {
        WorkloadInfo {
            name: "pod".into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    #[test]
    fn a_pod_runs_as_its_account_in_its_namespace() {
        let id = pod_identity("cluster.local", &info("shop", "web")).unwrap();
        assert_eq!(id.as_uri(), "spiffe://cluster.local/ns/shop/sa/web");
        let id = pod_identity("cluster.local", &info("shop", "")).unwrap();
        assert_eq!(id.as_uri(), "spiffe://cluster.local/ns/shop/sa/default");
    }

    #[test]
    fn the_agents_strings_cannot_name_another_identity() {
        for (ns, sa) in [
            ("a/sa/b", "c"),
            ("shop", "web/x"),
            ("", "web"),
            ("shop", ".."),
        ] {
            assert!(
                pod_identity("cluster.local", &info(ns, sa)).is_err(),
                "{ns:?} {sa:?}"
            );
        }
    }
}
