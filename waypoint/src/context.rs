//! What every connection and request of this waypoint shares.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ambient_proto::hbone::H2Settings;
use ambient_proto::identity::Identity;
use ambient_proto::tls::TrustBundle;
use proxy_core::identity::CertificateManager;
use proxy_core::state::{Snapshot, StateStore, Waypoint, WaypointTarget};
use tokio_rustls::TlsAcceptor;

use crate::config::L7Store;
use crate::routing::Routing;
use crate::upstream::Upstreams;
use crate::workers::PerWorker;

/// The waypoint's shared state.
pub struct Ctx {
    /// The Gateway served: namespace and name.
    pub gateway_namespace: String,
    pub gateway_name: String,
    pub identity: Identity,
    /// This instance's own address (its pod IP), when known.
    pub instance_ip: Option<IpAddr>,
    /// Workloads, services and endpoints (WDS).
    pub state: Arc<StateStore>,
    /// Routes, traffic policies, L7 authorization.
    pub l7: Arc<L7Store>,
    pub certs: Arc<CertificateManager>,
    pub bundle: TrustBundle,
    pub h2: H2Settings,
    pub acceptor: TlsAcceptor,
    /// Connections to endpoints as each worker thread sees them (its own HBONE pool, the
    /// shared HTTP pools): a request uses its worker's ([`PerWorker::local`]).
    pub upstreams: PerWorker<Upstreams>,
    /// Compiled L7 configuration and per-service runtime state (balancers, outlier detection).
    pub routing: Routing,
    pub connect_timeout: Duration,
    pub cert_wait: Duration,
}

impl Ctx {
    /// `namespace/name` of the Gateway.
    pub fn gateway_key(&self) -> String {
        format!("{}/{}", self.gateway_namespace, self.gateway_name)
    }

    /// Whether `waypoint`, as the control plane attached it to a service or workload, is
    /// this one: named by our Service's hostname, or addressed by our Service VIP or our own
    /// address.
    pub fn is_me(&self, snapshot: &Snapshot, waypoint: &Waypoint) -> bool {
        match &waypoint.target {
            WaypointTarget::Hostname {
                namespace,
                hostname,
            } => {
                namespace == &self.gateway_namespace
                    && hostname
                        .split('.')
                        .next()
                        .is_some_and(|first| first == self.gateway_name)
            }
            WaypointTarget::Address(ip) => {
                Some(*ip) == self.instance_ip
                    || snapshot.service_by_vip(*ip).is_some_and(|s| {
                        s.namespace == self.gateway_namespace && s.name == self.gateway_name
                    })
            }
        }
    }
}
