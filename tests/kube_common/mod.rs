//! What the tests against kube-lab (a real API server, `ambient_lab::kube`) share: the
//! controller run in-process on a kubeconfig, a ztunnel's xDS client, objects of the test
//! cluster, and a TCP relay that can cut the controller off the API server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambient_controller::index::IndexConfig;
use ambient_controller::push::Debounce;
use ambient_controller::server::{ControllerConfig, SourceConfig, WaypointDeployment};
use ambient_lab::kube::KubeLab;
use ambient_proto::identity::Identity;
use proxy_core::control_plane::ControlPlane;
use proxy_core::identity::ca_client::CaClient;
use proxy_core::identity::{CertificateSource, FetchError};
use proxy_core::readiness::Readiness;
use proxy_core::state::StateStore;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The controller's gRPC (xDS + CA) address inside the test's sandbox.
pub const XDS: &str = "127.0.0.1:15012";

/// Starts the controller in-process on `kubeconfig` (ztunnels: `istio-system/ztunnel`;
/// waypoints deployed) and returns its CA root once written.
pub async fn start_controller(
    dir: &Path,
    kubeconfig: &Path,
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    start_controller_with(dir, kubeconfig, WaypointDeployment::default()).await
}

/// [`start_controller`], deploying waypoints as `waypoints` says.
pub async fn start_controller_with(
    dir: &Path,
    kubeconfig: &Path,
    waypoints: WaypointDeployment,
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let config = ControllerConfig {
        grpc_addr: XDS.parse()?,
        monitoring_addr: "127.0.0.1:15014".parse()?,
        ca_dir: dir.join("ca"),
        source: SourceConfig::Kubernetes {
            kubeconfig: Some(kubeconfig.to_path_buf()),
            ztunnel_accounts: vec!["istio-system/ztunnel".into()],
        },
        index: IndexConfig::default(),
        debounce: Debounce {
            quiet: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        workload_ttl: Duration::from_secs(3600),
    };
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    tokio::spawn(async move {
        if let Err(e) =
            ambient_controller::server::run_with(config, waypoints, handle, std::future::pending())
                .await
        {
            panic!("controller: {e}");
        }
    });
    // Written by the controller at start (no event to watch for): poll with a deadline.
    let root = crate::common::eventually(Duration::from_secs(10), || async {
        std::fs::read(dir.join("ca").join("root-cert.pem")).map_err(|e| e.to_string())
    })
    .await?;
    Ok(root)
}

/// The refusal `fetch` got: (code, message).
pub async fn refusal(
    ca: &CaClient,
    id: &Identity,
    step: &str,
) -> Result<(tonic::Code, String), String> {
    match ca.fetch(id).await {
        Err(FetchError::Refused { code, message }) => Ok((code, message)),
        other => Err(format!(
            "{step}: expected a refusal, got {:?}",
            other.map(|c| c.identity().clone())
        )),
    }
}

/// Runs the built `ambientctl` with `args`.
pub async fn ambientctl(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(e2e::EXE)
        .args(args)
        .output()
        .await
        .expect("running ambientctl")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// How a proxy reaches the controller, presenting the token in `token_file`.
pub fn control_plane(root: &[u8], token_file: &Path) -> ControlPlane {
    ControlPlane {
        address: format!("https://{XDS}"),
        root_pem: root.to_vec(),
        server_name: "istiod.istio-system.svc".into(),
        token_file: token_file.to_path_buf(),
    }
}

/// A ztunnel's xDS client for `node`: the state it builds and its readiness.
pub fn xds_client(control_plane: ControlPlane, node: &str) -> (Arc<StateStore>, Readiness) {
    let state = Arc::new(StateStore::new());
    let readiness = Readiness::new(&["xds:address", "xds:authorization"]);
    tokio::spawn(proxy_core::xds::run(
        control_plane,
        proxy_core::xds::NodeInfo {
            node_name: node.into(),
            instance_ip: "127.0.0.1".into(),
            id: String::new(),
        },
        state.clone(),
        readiness.clone(),
    ));
    (state, readiness)
}

/// A token of the ztunnel service account bound to a ztunnel pod on `node` (audience
/// `ambient-ca`), written to `dir/<node>-token`: what the ztunnel DaemonSet's projected
/// volume holds. Needs [`ztunnel_accounts`].
pub async fn ztunnel_token(
    kube: &KubeLab,
    dir: &Path,
    node: &str,
) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    let pod = format!("ztunnel-{node}");
    kube.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": "istio-system", "labels": {"app": "ztunnel"}},
        "spec": {"nodeName": node, "serviceAccountName": "ztunnel",
                 "containers": [{"name": "ztunnel", "image": "ztunnel"}]},
    }))
    .await?;
    let token = kube
        .token(
            "istio-system",
            "ztunnel",
            ambient_lab::kube::CA_AUDIENCE,
            Some(&pod),
        )
        .await?;
    let path = dir.join(format!("{node}-token"));
    std::fs::write(&path, token)?;
    Ok(path)
}

/// Namespace `istio-system` with the `ztunnel` ServiceAccount.
pub async fn ztunnel_accounts(kube: &KubeLab) -> TestResult {
    kube.apply(namespace("istio-system", false)).await?;
    kube.apply(service_account("istio-system", "ztunnel"))
        .await?;
    Ok(())
}

pub fn namespace(name: &str, ambient: bool) -> Value {
    let mut labels = json!({});
    if ambient {
        labels["istio.io/dataplane-mode"] = json!("ambient");
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

pub fn service_account(namespace: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": name, "namespace": namespace}})
}

/// A pod of namespace `shop` bound to `node`, running as service account `app` (which must
/// exist); its status comes from [`KubeLab::set_pod_running`].
pub fn pod(name: &str, node: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
        "spec": {"nodeName": node, "serviceAccountName": app, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]},
    })
}

/// Creates pod `name` (see [`pod`]) and reports it Running at `ip`.
pub async fn running_pod(
    kube: &KubeLab,
    name: &str,
    node: &str,
    ip: &str,
    app: &str,
) -> TestResult {
    kube.apply(pod(name, node, app)).await?;
    kube.set_pod_running("shop", name, ip).await?;
    Ok(())
}

/// A TCP relay to the API server that the test can cut: every connection through it is
/// broken and new ones are refused until it is healed. The controller's view of a network
/// partition (or of an API server gone away) while the API server keeps taking changes.
pub struct Relay {
    pub addr: SocketAddr,
    state: Arc<Mutex<RelayState>>,
}

#[derive(Default)]
struct RelayState {
    cut: bool,
    connections: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Relays to the API server of `kubeconfig`; writes to `relayed` a copy of it that goes
    /// through the relay (the serving certificate names 127.0.0.1, so TLS is unchanged).
    pub async fn start(kubeconfig: &Path, relayed: &Path) -> std::io::Result<Relay> {
        let upstream = api_server(kubeconfig)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let text = std::fs::read_to_string(kubeconfig)?;
        std::fs::write(
            relayed,
            text.replace(&upstream.to_string(), &addr.to_string()),
        )?;
        let state = Arc::new(Mutex::new(RelayState::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut s = shared.lock().unwrap();
                if s.cut {
                    continue; // dropped: the client sees the connection closed
                }
                s.connections.retain(|c| !c.is_finished());
                s.connections.push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Ok(Relay { addr, state })
    }

    /// Breaks every connection and refuses new ones.
    pub fn cut(&self) {
        let mut s = self.state.lock().unwrap();
        s.cut = true;
        for c in s.connections.drain(..) {
            c.abort();
        }
    }

    pub fn heal(&self) {
        self.state.lock().unwrap().cut = false;
    }
}

/// The API server's address in `kubeconfig`.
pub fn api_server(kubeconfig: &Path) -> std::io::Result<SocketAddr> {
    let text = std::fs::read_to_string(kubeconfig)?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .ok_or_else(|| std::io::Error::other("no server in the kubeconfig"))?
        .trim()
        .parse()
        .map_err(std::io::Error::other)
}
