//! Shared helpers for the end-to-end tests: a standard two-node cluster described by
//! manifests, and reading Prometheus text.
#![allow(dead_code)]

pub mod dns;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ambient_lab::{Lab, Mesh, MeshOptions, manifest};
use ztunnel::inpod::netns::Netns;

/// The multi-call binary every component runs from.
pub use e2e::EXE;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A pod of the test cluster (namespace `default`, which is enrolled).
pub struct PodSpec {
    pub namespace: &'static str,
    pub name: &'static str,
    pub node: &'static str,
    pub service_account: &'static str,
    pub labels: Vec<(&'static str, &'static str)>,
    /// Labelled into the mesh (and handed to its node's ztunnel).
    pub enrolled: bool,
}

impl PodSpec {
    pub fn new(name: &'static str, node: &'static str) -> Self {
        PodSpec {
            namespace: "default",
            name,
            node,
            service_account: name,
            labels: vec![("app", name)],
            enrolled: true,
        }
    }

    /// Backs the echo service.
    pub fn echo(mut self) -> Self {
        self.labels.push(("echo", "true"));
        self
    }

    pub fn not_enrolled(mut self) -> Self {
        self.enrolled = false;
        self.labels.push(("istio.io/dataplane-mode", "none"));
        self
    }

    pub fn account(mut self, sa: &'static str) -> Self {
        self.service_account = sa;
        self
    }

    pub fn manifest(&self, lab: &Lab) -> String {
        manifest::pod(
            lab.pod(self.namespace, self.name),
            self.service_account,
            &self.labels,
            &[("http", 8080)],
        )
    }
}

pub const ECHO_VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 80);

/// `echo.default.svc.cluster.local` at 10.96.0.10:80 → 8080 on pods labelled `echo=true`.
pub fn echo_service() -> (&'static str, String) {
    (
        "echo-service.yaml",
        manifest::service(
            "echo",
            "default",
            Ipv4Addr::new(10, 96, 0, 10),
            &[("echo", "true")],
            &[("http", 80, 8080)],
        ),
    )
}

/// Builds nodes `node-a` and `node-b`, the pods and externals; starts the mesh on manifests
/// for them (plus `extra`); enrols the enrolled pods.
pub async fn cluster(
    dir: &Path,
    pods: Vec<PodSpec>,
    extra: Vec<(&'static str, String)>,
    externals: &[&str],
    tune: impl FnOnce(&mut MeshOptions),
) -> Result<Mesh, Box<dyn std::error::Error + Send + Sync>> {
    let mut lab = Lab::new(dir)?;
    lab.add_node("node-a")?;
    lab.add_node("node-b")?;
    let mut manifests: Vec<(String, String)> = vec![(
        "namespace.yaml".into(),
        manifest::namespace("default", true),
    )];
    for p in &pods {
        lab.add_pod(p.namespace, p.name, p.node)?;
        manifests.push((format!("pod-{}.yaml", p.name), p.manifest(&lab)));
    }
    for (name, yaml) in extra {
        manifests.push((name.to_string(), yaml));
    }
    for e in externals {
        lab.add_external(e)?;
    }
    let mut options = MeshOptions::new(EXE.into());
    tune(&mut options);
    let refs: Vec<(&str, String)> = manifests
        .iter()
        .map(|(n, y)| (n.as_str(), y.clone()))
        .collect();
    let mesh = Mesh::start(lab, &refs, options).await?;
    for p in pods.iter().filter(|p| p.enrolled) {
        mesh.enrol(p.namespace, p.name, p.service_account).await?;
    }
    Ok(mesh)
}

/// The usual pair on a fresh cluster: `client` on node-a and `server` on node-b, both
/// enrolled, the server answering hello lines on 8080. Returns the mesh, the client's
/// namespace and the server's address.
pub async fn client_and_server(
    dir: &Path,
) -> Result<(Mesh, std::sync::Arc<Netns>, SocketAddr), Box<dyn std::error::Error + Send + Sync>> {
    let mesh = cluster(
        dir,
        vec![
            PodSpec::new("client", "node-a"),
            PodSpec::new("server", "node-b"),
        ],
        vec![],
        &[],
        |_| {},
    )
    .await?;
    let client = mesh.lab.pod("default", "client").netns.clone();
    let server = mesh.lab.pod("default", "server");
    ambient_lab::hello::serve_hello(&server.netns, 8080, "server".into())?;
    let addr = SocketAddr::new(IpAddr::V4(server.ip), 8080);
    Ok((mesh, client, addr))
}

/// Sums the values of every series of `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = proxy_core::exposition::parse(text).expect("Prometheus text");
    proxy_core::exposition::sum(&samples, name, labels)
}

/// Retries `f` until it succeeds or `timeout` passes (for things that settle, like metrics
/// of a connection that is closing, or configuration being pushed).
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = std::time::Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > timeout => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
