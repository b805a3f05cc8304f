//! Live inbound connections, so a policy change can close the ones it now denies.
//!
//! Every inbound connection registers the attributes it was authorized on; after each
//! configuration update [`ConnectionManager::recheck`] judges them again against the new
//! policies and cancels the denied ones. Registration is one lock per connection (not per
//! byte).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ambient_proto::identity::Identity;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::PodContext;
use proxy_core::rbac::Connection;
use proxy_core::state::Snapshot;

/// What an inbound connection was authorized on.
#[derive(Clone)]
pub struct Tracked {
    /// The pod served (shared with its proxies: nothing copied per connection).
    pub pod: Arc<PodContext>,
    pub src_identity: Option<Identity>,
    pub src_ip: IpAddr,
    pub dst: SocketAddr,
    /// Cancelled to close the connection.
    pub cancel: CancellationToken,
}

/// A live inbound connection as `/config_dump` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConnectionDump {
    pub pod: String,
    pub source: String,
    pub destination: String,
    pub source_identity: Option<String>,
    pub destination_identity: Option<String>,
}

#[derive(Default)]
pub struct ConnectionManager {
    conns: Mutex<HashMap<u64, Tracked>>,
    next: AtomicU64,
}

/// Removes its connection from the manager when dropped.
pub struct Registration {
    manager: Arc<ConnectionManager>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.manager
            .conns
            .lock()
            .expect("poisoned")
            .remove(&self.id);
    }
}

impl ConnectionManager {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn register(self: &Arc<Self>, tracked: Tracked) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().expect("poisoned").insert(id, tracked);
        Registration {
            manager: self.clone(),
            id,
        }
    }

    /// The live connections, for `/config_dump`.
    pub fn dump(&self, snapshot: &Snapshot) -> Vec<ConnectionDump> {
        let mut out: Vec<ConnectionDump> = self
            .conns
            .lock()
            .expect("poisoned")
            .values()
            .filter(|t| !t.cancel.is_cancelled())
            .map(|t| ConnectionDump {
                pod: format!("{}/{}", t.pod.namespace, t.pod.name),
                source: t.src_ip.to_string(),
                destination: t.dst.to_string(),
                source_identity: t.src_identity.as_ref().map(|i| i.to_string()),
                destination_identity: snapshot
                    .find_pod(&t.pod.uid, &t.pod.namespace, &t.pod.name)
                    .map(|w| w.identity.to_string()),
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.pod, &a.source, &a.destination).cmp(&(&b.pod, &b.source, &b.destination))
        });
        out
    }

    pub fn len(&self) -> usize {
        self.conns.lock().expect("poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection `snapshot`'s policies now deny; returns how many.
    pub fn recheck(&self, snapshot: &Snapshot) -> usize {
        let conns: Vec<Tracked> = self
            .conns
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect();
        let mut closed = 0;
        for t in conns {
            if t.cancel.is_cancelled() {
                continue;
            }
            let Some(dst) = snapshot.find_pod(&t.pod.uid, &t.pod.namespace, &t.pod.name) else {
                continue;
            };
            let conn = Connection {
                src_identity: t.src_identity.as_ref(),
                src_ip: t.src_ip,
                dst: t.dst,
            };
            if let Err(denial) = snapshot.authorize(dst, &conn) {
                info!(
                    pod = %t.pod.name,
                    src = %t.src_ip,
                    src_identity = t.src_identity.as_ref().map(|i| i.as_uri()),
                    dst = %t.dst,
                    reason = %denial,
                    "closing a live connection the new policy denies"
                );
                metrics::counter!("ambient_connections_closed_by_policy_total").increment(1);
                t.cancel.cancel();
                closed += 1;
            }
        }
        closed
    }
}
