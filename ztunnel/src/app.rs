//! The ztunnel process: wires state, certificates, pods and the HTTP endpoints together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambient_proto::hbone::{H2Settings, PoolSettings};
use ambient_proto::tls::TrustBundle;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::admin;
use crate::identity::ca_client::{CaClient, CaClientConfig};
use crate::identity::{Backoff, CertificateManager, FetchError};
use crate::inpod::{WorkloadManager, zds_client};
use crate::proxy::Shared;
use crate::readiness::Readiness;
use crate::state::StateStore;
use crate::state::source::{LocalFile, SourceError};

/// Everything a ztunnel process needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub trust_domain: String,
    /// Local WDS file (the controller's xDS replaces it as the normal source later).
    pub config_file: PathBuf,
    pub ca: CaClientConfig,
    /// PEM roots of the mesh (workload certificates chain to these).
    pub mesh_roots_pem: Vec<u8>,
    pub zds_socket: PathBuf,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub cert_wait: Duration,
    pub connect_timeout: Duration,
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

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

/// Runs ztunnel until `shutdown` is cancelled (SIGTERM or `/quitquitquit`).
pub async fn run(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    crate::metrics::describe();
    let readiness = Readiness::new(&["config", "zds"]);
    let state = Arc::new(StateStore::new());
    let source = LocalFile::new(&config.config_file);
    let loaded = source.load(&state)?;
    readiness.mark("config");
    tokio::spawn({
        let state = state.clone();
        async move {
            if let Err(e) = source.run(state, loaded).await {
                error!(error = %e, "configuration source stopped");
            }
        }
    });

    let bundle = TrustBundle::from_pem(config.trust_domain.clone(), &config.mesh_roots_pem)?;
    let ca = CaClient::new(config.ca.clone())?;
    let certs = Arc::new(CertificateManager::new(Arc::new(ca), Backoff::default()));
    let shared = Arc::new(Shared {
        state: state.clone(),
        certs: certs.clone(),
        bundle,
        h2: H2Settings::default(),
        pool: PoolSettings::default(),
        cert_wait: config.cert_wait,
        connect_timeout: config.connect_timeout,
    });
    let pods = Arc::new(WorkloadManager::new(shared, config.trust_domain.clone()));

    let admin = bind(config.admin_addr).await?;
    let metrics_listener = bind(config.metrics_addr).await?;
    let ready_listener = bind(config.readiness_addr).await?;
    tokio::spawn(admin::serve(
        admin,
        shutdown.clone(),
        admin::admin_routes(
            config.node_name.clone(),
            state.clone(),
            pods.clone(),
            certs.clone(),
            shutdown.clone(),
        ),
    ));
    tokio::spawn(admin::serve(
        metrics_listener,
        shutdown.clone(),
        admin::metrics_routes(metrics),
    ));
    tokio::spawn(admin::serve(
        ready_listener,
        shutdown.clone(),
        admin::readiness_routes(readiness.clone()),
    ));
    let zds = tokio::spawn(zds_client::run(
        config.zds_socket.clone(),
        pods.clone(),
        readiness,
    ));
    info!(node = %config.node_name, admin = %config.admin_addr, "ztunnel running");

    shutdown.cancelled().await;
    info!("shutting down");
    zds.abort();
    pods.stop_all();
    Ok(())
}
