//! ztunnel's admin routes (15000, loopback only): `/config_dump` and `/quitquitquit`. The
//! server, readiness and metrics endpoints are `proxy_core::admin`'s.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use proxy_core::admin::Body;
use proxy_core::identity::{CertificateDump, CertificateManager};
use proxy_core::rbac::Policy;
use proxy_core::state::{Service, StateStore, Workload};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::inpod::{PodDump, WorkloadManager};
use crate::proxy::connection_manager::{ConnectionDump, ConnectionManager};

/// What `/config_dump` returns.
#[derive(Serialize)]
pub struct ConfigDump {
    pub node: String,
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Arc<Service>>,
    pub pods: Vec<PodDump>,
    pub policies: Vec<Arc<Policy>>,
    /// Live inbound connections (the ones policy changes are checked against).
    pub connections: Vec<ConnectionDump>,
    pub certificates: Vec<CertificateDump>,
}

/// The admin port's routes.
pub fn admin_routes(
    node: String,
    state: Arc<StateStore>,
    pods: Arc<WorkloadManager>,
    certs: Arc<CertificateManager>,
    connections: Arc<ConnectionManager>,
    shutdown: CancellationToken,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    let dump = move || {
        let snapshot = state.load();
        let mut workloads: Vec<_> = snapshot.workloads().cloned().collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut services: Vec<_> = snapshot.services().cloned().collect();
        services.sort_by_key(|s| s.key());
        let mut policies: Vec<_> = snapshot.policies().cloned().collect();
        policies.sort_by_key(|p| p.key());
        ConfigDump {
            node: node.clone(),
            workloads,
            services,
            pods: pods.dump(),
            policies,
            connections: connections.dump(&snapshot),
            certificates: certs.dump(),
        }
    };
    proxy_core::admin::admin_routes(dump, shutdown)
}
