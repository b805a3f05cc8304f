//! The controller process: a source, the push loop, and one TLS gRPC port (15012) serving
//! both delta ADS and the CA; monitoring on 15014.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambient_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use ambient_proto::identity::Identity;
use ambient_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity as TlsIdentity, Server, ServerTlsConfig};
use tracing::{info, warn};

use crate::ca::auth::Authenticator;
use crate::ca::tokenreview::TokenReviewAuthenticator;
use crate::ca::{CaService, CertificateAuthority, DEFAULT_ZTUNNEL_ACCOUNT, NodeTokens};
use crate::index::IndexConfig;
use crate::monitoring::{self, Monitoring};
use crate::push::{self, Debounce, Published};
use crate::source::{Diagnostic, kubernetes, manifests::ManifestDir};
use crate::xds::Snapshot;
use crate::xds::server::{AdsService, ProxyRegistry};

/// The DNS names proxies use for the controller (Istio's, so Istio proxies find it too).
pub const SERVER_NAMES: &[&str] = &[
    "istiod.istio-system.svc",
    "istiod.istio-system.svc.cluster.local",
    "istiod",
];

/// Where cluster state comes from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// A directory of manifests; ztunnels authenticate with per-node tokens.
    Manifests {
        dir: PathBuf,
        /// Where per-node tokens are written.
        token_dir: PathBuf,
        /// Nodes to issue tokens for up front (more are added as pods appear on them).
        nodes: Vec<String>,
        /// The local runtime's decisions for the manifests' Pods and Services.
        allocations: Option<PathBuf>,
    },
    /// The Kubernetes API (kubeconfig or in-cluster); ztunnels authenticate with their
    /// service account tokens, checked by TokenReview.
    Kubernetes {
        /// A kubeconfig file; in-cluster or `$KUBECONFIG` configuration when absent.
        kubeconfig: Option<PathBuf>,
        /// Service accounts (`namespace/name`) of ztunnels.
        ztunnel_accounts: Vec<String>,
    },
}

/// Everything the controller process needs.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// gRPC (xDS and CA) over TLS.
    pub grpc_addr: SocketAddr,
    pub monitoring_addr: SocketAddr,
    /// Key material (see [`CertificateAuthority::load_or_generate`]).
    pub ca_dir: PathBuf,
    pub source: SourceConfig,
    pub index: IndexConfig,
    pub debounce: Debounce,
    /// Default workload certificate lifetime.
    pub workload_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("certificate authority: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("node tokens: {0}")]
    Tokens(#[from] crate::ca::auth::TokenStoreError),
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// How the controller deploys waypoints in Kubernetes (see [`crate::deployer`]).
#[derive(Clone, Debug)]
pub struct WaypointDeployment {
    /// Deploy waypoints for waypoint Gateways and write their status.
    pub enabled: bool,
    /// The image with the `waypoint` binary.
    pub image: String,
    /// The xDS + CA address waypoints are given; by default the controller's Service in the
    /// root namespace (`https://ambient-controller.<root namespace>.svc:15012`, as
    /// `ambientctl install` names it).
    pub controller_address: Option<String>,
    /// What runs the waypoint pods: a kubelet (the image), or the local runtime of
    /// `ambientctl up --kubernetes`, which plays the kubelet and runs this build's binary.
    pub pod: crate::deployer::render::PodRuntime,
    /// Where the waypoints export spans and access logs over OTLP, if anywhere.
    pub otlp: Option<waypoint::otlp::Export>,
}

/// The waypoint image matching this build (`ambientctl install`'s default hub and tag).
pub const DEFAULT_WAYPOINT_IMAGE: &str =
    concat!("ghcr.io/ambient-rs/waypoint:", env!("CARGO_PKG_VERSION"));

impl Default for WaypointDeployment {
    fn default() -> Self {
        WaypointDeployment {
            enabled: true,
            image: DEFAULT_WAYPOINT_IMAGE.to_string(),
            controller_address: None,
            pod: crate::deployer::render::PodRuntime::Kubernetes,
            otlp: None,
        }
    }
}

/// Runs the controller until `shutdown` resolves. `metrics` renders whatever recorder the
/// binary installed. In Kubernetes, waypoints are deployed with the defaults of
/// [`WaypointDeployment`].
pub async fn run(
    config: ControllerConfig,
    metrics: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    run_with(config, WaypointDeployment::default(), metrics, shutdown).await
}

/// [`run`], with how waypoints are deployed in Kubernetes.
pub async fn run_with(
    config: ControllerConfig,
    waypoints: WaypointDeployment,
    metrics: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    proxy_core::metrics::spawn_upkeep(metrics.clone(), proxy_core::metrics::UPKEEP_PERIOD);
    let ca = CertificateAuthority::load_or_generate(&config.ca_dir, &config.index.trust_domain)?
        .with_default_ttl(config.workload_ttl);
    let ca = Arc::new(ca);
    let published = Arc::new(Published::default());
    let diagnostics: Arc<Mutex<Vec<Diagnostic>>> = Arc::default();
    let (changes_tx, changes_rx) = mpsc::channel(1024);
    // The rollout engine sends its canary weights through the same channel.
    let rollout_changes = changes_tx.clone();
    let health = Arc::new(crate::rollout::health::HealthStore::default());
    // The Kubernetes client, in Kubernetes mode.
    let mut kube_client = None;

    let ztunnel_accounts = match &config.source {
        SourceConfig::Kubernetes {
            ztunnel_accounts, ..
        } => ztunnel_accounts.clone(),
        SourceConfig::Manifests { .. } => vec![DEFAULT_ZTUNNEL_ACCOUNT.to_string()],
    };
    let auth: Arc<dyn Authenticator> = match &config.source {
        SourceConfig::Manifests {
            dir,
            token_dir,
            nodes,
            allocations,
        } => {
            let tokens = Arc::new(NodeTokens::open(token_dir)?);
            for node in nodes {
                tokens.issue(node)?;
            }
            info!(nodes = ?nodes, dir = %token_dir.display(), "node tokens ready");
            let issuer = tokens.clone();
            *published.on_nodes.lock().expect("poisoned") =
                Some(Box::new(move |nodes: &[String]| {
                    for n in nodes {
                        if let Err(e) = issuer.issue(n) {
                            warn!(node = %n, error = %e, "cannot issue a node token");
                        }
                    }
                }));
            let mut source = ManifestDir::new(dir).with_diagnostics(diagnostics.clone());
            if let Some(path) = allocations {
                source = source.with_allocations(path);
            }
            tokio::spawn(source.run(Duration::from_millis(500), changes_tx));
            tokens
        }
        SourceConfig::Kubernetes {
            kubeconfig,
            ztunnel_accounts,
        } => {
            let client = match kubeconfig {
                Some(path) => {
                    let kc =
                        kube::config::Kubeconfig::read_from(path).map_err(kube::Error::from)?;
                    let config = kube::Config::from_custom_kubeconfig(
                        kc,
                        &kube::config::KubeConfigOptions::default(),
                    )
                    .await
                    .map_err(kube::Error::from)?;
                    kube::Client::try_from(config)?
                }
                None => kube::Client::try_default().await?,
            };
            tokio::spawn(kubernetes::run(
                client.clone(),
                config.index.root_namespace.clone(),
                changes_tx,
            ));
            kube_client = Some(client.clone());
            Arc::new(TokenReviewAuthenticator::new(
                client,
                ztunnel_accounts.clone(),
            ))
        }
    };

    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
    tokio::spawn(push::run(
        changes_rx,
        config.index.clone(),
        config.debounce,
        snapshot_tx,
        published.clone(),
    ));

    tokio::spawn(crate::rollout::engine::run(
        snapshot_rx.clone(),
        health.clone(),
        rollout_changes,
        published.clone(),
    ));
    if let Some(client) = kube_client.clone() {
        tokio::spawn(crate::policy_status::run(
            client.clone(),
            snapshot_rx.clone(),
        ));
        tokio::spawn(crate::rollout::status::run(client, published.clone()));
    }
    if let Some(client) = kube_client.filter(|_| waypoints.enabled) {
        let deployer = crate::deployer::DeployerConfig {
            trust_domain: config.index.trust_domain.clone(),
            image: waypoints.image.clone(),
            controller_address: waypoints.controller_address.clone().unwrap_or_else(|| {
                format!(
                    "https://ambient-controller.{}.svc:15012",
                    config.index.root_namespace
                )
            }),
            workload_cert_ttl_secs: config.workload_ttl.as_secs(),
            ca_root_pem: ca.root_pem().to_string(),
            otlp: waypoints.otlp.clone(),
            pod: waypoints.pod.clone(),
        };
        info!(image = %deployer.image, "deploying waypoints for waypoint Gateways");
        tokio::spawn(crate::deployer::run(client, deployer, snapshot_rx.clone()));
    }

    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let ready = ready.clone();
        let mut rx = snapshot_rx.clone();
        async move {
            if rx.wait_for(|s| s.generation > 0).await.is_ok() {
                ready.store(true, Ordering::Release);
                info!("initial configuration computed; ready");
            }
        }
    });

    let controller_id = Identity::new(&config.index.trust_domain, "istio-system", "istiod")
        .expect("static identity is valid");
    let names: Vec<String> = SERVER_NAMES.iter().map(|s| s.to_string()).collect();
    let (chain, key) =
        ca.issue_server(&names, &controller_id, Duration::from_secs(365 * 24 * 3600))?;
    let tls = ServerTlsConfig::new().identity(TlsIdentity::from_pem(chain, key));

    let registry = Arc::new(ProxyRegistry::default());
    let monitoring_listener =
        TcpListener::bind(config.monitoring_addr)
            .await
            .map_err(|source| ControllerError::Bind {
                addr: config.monitoring_addr,
                source,
            })?;
    tokio::spawn(monitoring::serve(
        monitoring_listener,
        Arc::new(Monitoring {
            metrics,
            ready,
            registry: registry.clone(),
            published: published.clone(),
            diagnostics,
        }),
    ));

    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| ControllerError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    info!(grpc = %config.grpc_addr, monitoring = %config.monitoring_addr, "controller serving");
    let ca_service = CaService::new(ca, auth.clone(), Arc::new(NodeDirectoryOf(published)))
        .with_ztunnel_accounts(ztunnel_accounts);
    let health_service = crate::rollout::service::HealthService::new(health, auth.clone());
    let ads = AdsService::new(snapshot_rx, auth, registry);
    Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(IstioCertificateServiceServer::new(ca_service))
        .add_service(crate::rollout::service::BackendHealthServer::new(
            health_service,
        ))
        .add_service(
            AggregatedDiscoveryServiceServer::new(ads).max_decoding_message_size(16 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), shutdown)
        .await?;
    Ok(())
}

/// The CA's node directory: whatever the push loop last published.
struct NodeDirectoryOf(Arc<Published>);

impl crate::nodes::NodeDirectory for NodeDirectoryOf {
    fn runs_on(&self, node: &str, identity: &Identity) -> bool {
        self.0.nodes.runs_on(node, identity)
    }
    fn nodes(&self) -> Vec<String> {
        self.0.nodes.nodes()
    }
}
