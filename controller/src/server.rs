//! The controller process: the CA over TLS gRPC on 15012, monitoring on 15014.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambient_proto::identity::Identity;
use ambient_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity as TlsIdentity, Server, ServerTlsConfig};
use tracing::info;

use crate::ca::{CaService, CertificateAuthority, NodeTokens};
use crate::nodes::{FileNodeDirectory, NodeDirectory};

/// The DNS names proxies use for the controller (Istio's, so Istio proxies find it too).
pub const SERVER_NAMES: &[&str] = &[
    "istiod.istio-system.svc",
    "istiod.istio-system.svc.cluster.local",
    "istiod",
];

/// Everything the controller process needs.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// gRPC (CA, later xDS) over TLS.
    pub grpc_addr: SocketAddr,
    pub monitoring_addr: SocketAddr,
    pub trust_domain: String,
    /// Key material (see [`CertificateAuthority::load_or_generate`]).
    pub ca_dir: PathBuf,
    /// Where per-node tokens are written.
    pub token_dir: PathBuf,
    /// Static workload file telling which pods run on which node.
    pub workloads_file: PathBuf,
    /// Nodes to issue tokens for, besides those in the workload file.
    pub nodes: Vec<String>,
    /// Default workload certificate lifetime.
    pub workload_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("certificate authority: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("node tokens: {0}")]
    Tokens(#[from] crate::ca::auth::TokenStoreError),
    #[error("workload file: {0}")]
    Workloads(#[from] crate::nodes::DirectoryError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Runs the controller until `shutdown` resolves.
/// `metrics` renders whatever recorder the binary installed.
pub async fn run(
    config: ControllerConfig,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let ca = CertificateAuthority::load_or_generate(&config.ca_dir, &config.trust_domain)?
        .with_default_ttl(config.workload_ttl);
    let ca = Arc::new(ca);
    let nodes: Arc<dyn NodeDirectory> = Arc::new(FileNodeDirectory::open(&config.workloads_file)?);
    let tokens = Arc::new(NodeTokens::open(&config.token_dir)?);
    let mut all_nodes = nodes.nodes();
    all_nodes.extend(config.nodes.iter().cloned());
    all_nodes.sort();
    all_nodes.dedup();
    for node in &all_nodes {
        tokens.issue(node)?;
    }
    info!(nodes = ?all_nodes, dir = %config.token_dir.display(), "node tokens ready");

    let controller_id = Identity::new(&config.trust_domain, "istio-system", "istiod")
        .expect("static identity is valid");
    let names: Vec<String> = SERVER_NAMES.iter().map(|s| s.to_string()).collect();
    let (chain, key) =
        ca.issue_server(&names, &controller_id, Duration::from_secs(365 * 24 * 3600))?;
    let tls = ServerTlsConfig::new().identity(TlsIdentity::from_pem(chain, key));

    let monitoring = TcpListener::bind(config.monitoring_addr)
        .await
        .map_err(|source| ControllerError::Bind {
            addr: config.monitoring_addr,
            source,
        })?;
    tokio::spawn(crate::monitoring::serve(monitoring, metrics));

    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| ControllerError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    info!(grpc = %config.grpc_addr, monitoring = %config.monitoring_addr, "controller serving");
    let service = CaService::new(ca, tokens, nodes);
    Server::builder()
        .tls_config(tls)?
        .add_service(IstioCertificateServiceServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), shutdown)
        .await?;
    Ok(())
}
