//! Live inbound connections, so a policy change can close the ones it now denies.
//!
//! Every inbound connection is admitted through [`ConnectionManager::admit`], which registers
//! the attributes it will be authorized on *before* reading the configuration it is judged
//! against; after each configuration update [`ConnectionManager::recheck`] judges every
//! registered connection again and cancels the denied ones. Registering first leaves no window:
//! an update either came before the admission read the configuration (and is judged there) or
//! after the registration (and its recheck sees the connection). Registration is one lock per
//! connection (not per byte).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ambient_proto::identity::Identity;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::PodContext;
use proxy_core::rbac::Connection;
use proxy_core::state::{Snapshot, Workload};

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

/// A registered inbound connection and the configuration it is to be judged on.
pub struct Admission {
    /// Keeps the connection registered (re-checked on every update) while it lives.
    pub registration: Registration,
    /// Cancelled when a configuration update denies the connection (or its pod leaves).
    pub cancel: CancellationToken,
    /// The configuration read after registering: authorize against this one.
    pub snapshot: Arc<Snapshot>,
    /// The destination pod's workload in that configuration.
    pub workload: Arc<Workload>,
}

impl Tracked {
    fn connection(&self) -> Connection<'_> {
        Connection {
            src_identity: self.src_identity.as_ref(),
            src_ip: self.src_ip,
            dst: self.dst,
        }
    }
}

impl ConnectionManager {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a connection from `src_ip` (`src_identity` when authenticated) to `dst` in
    /// `pod`, then reads the configuration with `load` and finds the pod in it. `None` (the
    /// registration dropped) when the control plane has not described the pod yet: nothing
    /// can be authorized against a pod without policies, so the caller refuses the
    /// connection.
    pub fn admit(
        self: &Arc<Self>,
        pod: &Arc<PodContext>,
        src_identity: Option<Identity>,
        src_ip: IpAddr,
        dst: SocketAddr,
        load: impl FnOnce() -> Arc<Snapshot>,
    ) -> Option<Admission> {
        let cancel = pod.cancel.child_token();
        let registration = self.register(Tracked {
            pod: pod.clone(),
            src_identity,
            src_ip,
            dst,
            cancel: cancel.clone(),
        });
        let snapshot = load();
        let workload = snapshot
            .find_pod(&pod.uid, &pod.namespace, &pod.name)?
            .clone();
        Some(Admission {
            registration,
            cancel,
            snapshot,
            workload,
        })
    }

    fn register(self: &Arc<Self>, tracked: Tracked) -> Registration {
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
            if let Err(denial) = snapshot.authorize(dst, &t.connection()) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ambient_proto::hbone::{H2Settings, PoolSettings};
    use ambient_proto::istio::security as sec;
    use ambient_proto::tls::{TrustBundle, WorkloadCertificate};
    use futures::future::BoxFuture;
    use proxy_core::identity::{Backoff, CertificateManager, CertificateSource, FetchError};
    use proxy_core::state::local::LocalConfig;
    use proxy_core::state::{StateStore, Update};

    use super::*;
    use crate::inpod::netns::Netns;
    use crate::proxy::Shared;

    /// A CA that never answers: admission needs no certificate.
    struct NoCa;

    impl CertificateSource for NoCa {
        fn fetch<'a>(
            &'a self,
            _: &'a Identity,
        ) -> BoxFuture<'a, Result<WorkloadCertificate, FetchError>> {
            Box::pin(std::future::pending())
        }
    }

    const SERVER: &str = "workloads:\n  - name: server\n    namespace: default\n    addresses: [10.244.2.2]\n    tunnelProtocol: HBONE\n";

    /// The `server` pod's context on a node whose store holds `workloads` (a local WDS file).
    fn server_pod(workloads: &str) -> (Arc<StateStore>, Arc<PodContext>) {
        let state = Arc::new(StateStore::new());
        state.apply(Update {
            upserts: LocalConfig::parse(workloads).unwrap().to_addresses(),
            replace_all: true,
            ..Default::default()
        });
        let root = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let shared = Arc::new(Shared {
            state: state.clone(),
            certs: Arc::new(CertificateManager::new(Arc::new(NoCa), Backoff::default())),
            bundle: TrustBundle::from_pem("cluster.local", root.pem().as_bytes()).unwrap(),
            h2: H2Settings::default(),
            pool: PoolSettings::default(),
            cert_wait: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            named_endpoints: Default::default(),
            mesh: Default::default(),
            connections: ConnectionManager::new(),
            draining: CancellationToken::new(),
            connection_tasks: tokio_util::task::TaskTracker::new(),
        });
        let pod = PodContext::new(
            "Kubernetes//Pod/default/server".into(),
            "server".into(),
            "default".into(),
            "spiffe://cluster.local/ns/default/sa/server"
                .parse()
                .unwrap(),
            Netns::current().unwrap(),
            shared,
        )
        .unwrap();
        (state, pod)
    }

    const CLIENT: &str = "10.244.1.2";
    const DST: &str = "10.244.2.2:8080";

    /// Admits a plaintext connection from `CLIENT` to `DST`, reading the configuration
    /// with `load`.
    fn admit(pod: &Arc<PodContext>, load: impl FnOnce() -> Arc<Snapshot>) -> Option<Admission> {
        pod.shared.connections.admit(
            pod,
            None,
            CLIENT.parse().unwrap(),
            DST.parse().unwrap(),
            load,
        )
    }

    /// Denies everything in namespace `default`.
    fn deny_all() -> Update {
        Update {
            policy_upserts: vec![sec::Authorization {
                name: "deny-all".into(),
                namespace: "default".into(),
                scope: sec::Scope::Namespace as i32,
                action: sec::Action::Deny as i32,
                rules: vec![sec::Rule { clauses: vec![] }],
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_policy_pushed_right_after_admission_read_the_configuration_closes_the_connection() {
        let (state, pod) = server_pod(SERVER);
        let connections = pod.shared.connections.clone();
        // The push lands between the admission's read of the configuration and the end of
        // the admission (here: at once; in a proxy: while it connects to the app). Its
        // recheck, as every configuration update runs one, must see this connection.
        let admission = admit(&pod, || {
            let before = state.load();
            state.apply(deny_all());
            connections.recheck(&state.load());
            before
        })
        .expect("the pod is described");
        let attrs = Connection {
            src_identity: None,
            src_ip: CLIENT.parse().unwrap(),
            dst: DST.parse().unwrap(),
        };
        assert!(
            admission
                .snapshot
                .authorize(&admission.workload, &attrs)
                .is_ok(),
            "the configuration read before the push allowed it"
        );
        assert!(
            admission.cancel.is_cancelled(),
            "the push's recheck closed the connection it admitted"
        );
    }

    #[tokio::test]
    async fn a_pod_the_control_plane_has_not_described_is_refused_and_not_kept() {
        let (state, pod) = server_pod("workloads: []\n");
        assert!(admit(&pod, || state.load()).is_none());
        assert!(
            pod.shared.connections.is_empty(),
            "a refused connection is not tracked"
        );
    }

    #[tokio::test]
    async fn an_admitted_connection_is_tracked_until_dropped() {
        let (state, pod) = server_pod(SERVER);
        let connections = pod.shared.connections.clone();
        let admission = admit(&pod, || state.load()).unwrap();
        assert_eq!(admission.workload.name, "server");
        assert_eq!(connections.len(), 1);
        state.apply(deny_all());
        assert_eq!(connections.recheck(&state.load()), 1);
        assert!(admission.cancel.is_cancelled());
        drop(admission);
        assert!(connections.is_empty());
    }
}
