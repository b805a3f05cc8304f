//! The ztunnel process: wires state, certificates, pods and the HTTP endpoints together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambient_proto::hbone::{H2Settings, PoolSettings};
use ambient_proto::opentelemetry::proto::common::v1::InstrumentationScope;
use ambient_proto::opentelemetry::proto::resource::v1::Resource;
use ambient_proto::tls::TrustBundle;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin;
use crate::inpod::{WorkloadManager, zds_client};
use crate::mesh_settings::{MeshSettings, MeshSubscription};
use crate::proxy::Shared;
use crate::proxy::connection_manager::ConnectionManager;
use proxy_core::control_plane::ControlPlane;
use proxy_core::identity::ca_client::CaClient;
use proxy_core::identity::{Backoff, CertificateManager, FetchError};
use proxy_core::readiness::Readiness;
use proxy_core::state::StateStore;
use proxy_core::state::source::{LocalFile, SourceError};
use proxy_core::xds::{self, NodeInfo};

/// Where workloads, services and policies come from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// The controller's delta xDS (the normal mode).
    Xds,
    /// A local YAML file of WDS resources (for debugging; no policies).
    File(PathBuf),
}

/// Everything a ztunnel process needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    /// This node's address, reported to the controller.
    pub instance_ip: String,
    pub trust_domain: String,
    pub source: ConfigSource,
    /// The controller (xDS and CA).
    pub control_plane: ControlPlane,
    /// Workload certificate lifetime to ask for.
    pub workload_cert_ttl: Duration,
    /// PEM roots of the mesh (workload certificates chain to these).
    pub mesh_roots_pem: Vec<u8>,
    pub zds_socket: PathBuf,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub cert_wait: Duration,
    pub connect_timeout: Duration,
    /// How long open connections may go on once a shutdown began (see [`run`]).
    pub drain_timeout: Duration,
    /// Where the access log also goes as OTLP log records, if anywhere.
    pub otlp: Option<proxy_core::otlp::Target>,
    /// HBONE connections: HTTP/2 and TLS sizes, and how streams share them.
    pub h2: H2Settings,
    pub pool: PoolSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("configuration source: {0}")]
    Source(#[from] SourceError),
    #[error("mesh roots: {0}")]
    Roots(#[from] ambient_proto::tls::TlsError),
    #[error("CA client: {0}")]
    Ca(#[from] FetchError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The admin, metrics and readiness listeners. They share their port (`SO_REUSEPORT`): where
/// ztunnel runs in the node's own network namespace, a new process binds them beside the
/// draining one during a restart.
async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        socket.listen(128)
    };
    listen().map_err(|source| AppError::Bind { addr, source })
}

/// Runs ztunnel until `shutdown` is cancelled (SIGTERM or `/quitquitquit`).
pub async fn run(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    crate::metrics::describe();
    proxy_core::metrics::spawn_upkeep(metrics.clone(), proxy_core::metrics::UPKEEP_PERIOD);
    let state = Arc::new(StateStore::new());
    // The access log as OTLP log records; stopped only after the drain, so the connections
    // that end during it are exported too.
    let otlp_stop = CancellationToken::new();
    let otlp_task = config.otlp.clone().map(|target| {
        use proxy_core::otlp::{Exporter, Logs, Settings, access_log, mesh_resolver, string};
        let resource = Resource {
            attributes: vec![
                string("service.name", "ztunnel"),
                string("k8s.node.name", &config.node_name),
            ],
            dropped_attributes_count: 0,
        };
        let scope = InstrumentationScope {
            name: "ambient-rs/ztunnel".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
        };
        let (exporter, task) = Exporter::<Logs>::start(
            target,
            resource,
            scope,
            Settings::default(),
            Some(mesh_resolver(state.clone())),
            otlp_stop.clone(),
        );
        access_log::install(exporter);
        task
    });
    let mesh = Arc::new(MeshSettings::default());
    let readiness = match &config.source {
        ConfigSource::File(path) => {
            let readiness = Readiness::new(&["zds"]);
            let source = LocalFile::new(path);
            let loaded = source.load(&state)?;
            tokio::spawn({
                let state = state.clone();
                async move {
                    if let Err(e) = source.run(state, loaded).await {
                        error!(error = %e, "configuration source stopped");
                    }
                }
            });
            readiness
        }
        ConfigSource::Xds => {
            let readiness = Readiness::new(&["xds:address", "xds:authorization", "zds"]);
            let node = NodeInfo {
                node_name: config.node_name.clone(),
                instance_ip: config.instance_ip.clone(),
                id: String::new(),
            };
            tokio::spawn(xds::run_with(
                config.control_plane.clone(),
                node,
                state.clone(),
                readiness.clone(),
                vec![Arc::new(MeshSubscription(mesh.clone()))],
            ));
            readiness
        }
    };

    let bundle = TrustBundle::from_pem(config.trust_domain.clone(), &config.mesh_roots_pem)?;
    let ca = CaClient::new(config.control_plane.clone(), config.workload_cert_ttl)?;
    let certs = Arc::new(CertificateManager::new(Arc::new(ca), Backoff::default()));
    let shared = Arc::new(Shared {
        state: state.clone(),
        certs: certs.clone(),
        bundle,
        h2: config.h2,
        pool: config.pool,
        cert_wait: config.cert_wait,
        connect_timeout: config.connect_timeout,
        named_endpoints: Default::default(),
        mesh,
        connections: ConnectionManager::new(),
        draining: CancellationToken::new(),
        connection_tasks: TaskTracker::new(),
    });
    // Every configuration change may deny live connections: judge them again.
    tokio::spawn({
        let state = state.clone();
        let connections = shared.connections.clone();
        async move {
            let mut versions = state.subscribe();
            while versions.changed().await.is_ok() {
                connections.recheck(&state.load());
            }
        }
    });
    let connections = shared.connections.clone();
    let (draining, connection_tasks) = (shared.draining.clone(), shared.connection_tasks.clone());
    let pods = Arc::new(WorkloadManager::new(shared, config.trust_domain.clone()));

    let admin = bind(config.admin_addr).await?;
    let metrics_listener = bind(config.metrics_addr).await?;
    let ready_listener = bind(config.readiness_addr).await?;
    tokio::spawn(proxy_core::admin::serve(
        admin,
        shutdown.clone(),
        admin::admin_routes(
            config.node_name.clone(),
            state.clone(),
            pods.clone(),
            certs.clone(),
            connections,
            shutdown.clone(),
        ),
    ));
    tokio::spawn(proxy_core::admin::serve(
        metrics_listener,
        shutdown.clone(),
        proxy_core::admin::metrics_routes(metrics),
    ));
    tokio::spawn(proxy_core::admin::serve(
        ready_listener,
        shutdown.clone(),
        proxy_core::admin::readiness_routes(readiness.clone()),
    ));
    let zds = tokio::spawn(zds_client::run(
        config.zds_socket.clone(),
        pods.clone(),
        readiness,
    ));
    info!(node = %config.node_name, admin = %config.admin_addr, "ztunnel running");

    shutdown.cancelled().await;
    // Drain: stop taking pods and connections, let open ones finish. With the pods' listeners
    // shared (`SO_REUSEPORT`) and `tcp_migrate_req` on, a new ztunnel already listening in each
    // pod takes every new connection, including those queued on the listeners closing here;
    // inbound HBONE peers get GOAWAY and open their next streams there.
    zds.abort();
    draining.cancel();
    connection_tasks.close();
    info!(
        open = connection_tasks.len(),
        drain_seconds = config.drain_timeout.as_secs(),
        "draining: listeners closed"
    );
    match tokio::time::timeout(config.drain_timeout, connection_tasks.wait()).await {
        Ok(()) => info!("drained: every connection ended"),
        Err(_) => warn!(
            open = connection_tasks.len(),
            "drain period over: closing the connections still open"
        ),
    }
    pods.stop_all();
    otlp_stop.cancel();
    if let Some(task) = otlp_task {
        // The last access log records, within a bound.
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    Ok(())
}
