//! Shared helpers for the end-to-end tests: a standard two-node cluster, small apps in pods,
//! and reading Prometheus text.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ambient_proto::local::{LocalConfig, LocalPort, LocalService};
use ambientctl::lab::{Lab, Mesh, MeshOptions};

/// The multi-call binary every component runs from.
pub const EXE: &str = env!("CARGO_BIN_EXE_ambientctl");

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A pod of the test cluster.
pub struct PodSpec {
    pub namespace: &'static str,
    pub name: &'static str,
    pub node: &'static str,
    pub service_account: &'static str,
    /// Service keys (`namespace/hostname`) it backs.
    pub services: Vec<&'static str>,
    /// Described as HBONE and handed to ztunnel.
    pub enrolled: bool,
}

impl PodSpec {
    pub fn new(name: &'static str, node: &'static str) -> Self {
        PodSpec {
            namespace: "default",
            name,
            node,
            service_account: name,
            services: vec![],
            enrolled: true,
        }
    }

    pub fn backing(mut self, service: &'static str) -> Self {
        self.services.push(service);
        self
    }

    pub fn not_enrolled(mut self) -> Self {
        self.enrolled = false;
        self
    }

    pub fn account(mut self, sa: &'static str) -> Self {
        self.service_account = sa;
        self
    }
}

/// `echo.default.svc.cluster.local` at 10.96.0.10:80 → 8080.
pub fn echo_service() -> LocalService {
    LocalService {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: "echo.default.svc.cluster.local".into(),
        addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))],
        ports: vec![LocalPort {
            service_port: 80,
            target_port: 8080,
        }],
    }
}

pub const ECHO_KEY: &str = "default/echo.default.svc.cluster.local";
pub const ECHO_VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 80);

/// Builds nodes `node-a` and `node-b`, the pods, the externals; starts the mesh; enrols
/// the enrolled pods.
pub async fn cluster(
    dir: &Path,
    pods: Vec<PodSpec>,
    services: Vec<LocalService>,
    externals: &[&str],
    tune: impl FnOnce(&mut MeshOptions),
) -> Result<Mesh, Box<dyn std::error::Error + Send + Sync>> {
    let mut lab = Lab::new(dir)?;
    lab.add_node("node-a")?;
    lab.add_node("node-b")?;
    let mut config = LocalConfig {
        workloads: vec![],
        services,
    };
    for p in &pods {
        let pod = lab.add_pod(p.namespace, p.name, p.node)?;
        let mut w = Mesh::workload_for(pod, p.service_account);
        if !p.enrolled {
            w.tunnel_protocol = ambient_proto::local::LocalTunnel::None;
        }
        for s in &p.services {
            w.services.insert(s.to_string(), vec![]);
        }
        config.workloads.push(w);
    }
    for e in externals {
        lab.add_external(e)?;
    }
    let mut options = MeshOptions::new(EXE.into());
    options.log_filter = "info".into();
    tune(&mut options);
    let mesh = Mesh::start(lab, config, options).await?;
    for p in pods.iter().filter(|p| p.enrolled) {
        mesh.enrol(p.namespace, p.name, p.service_account).await?;
    }
    Ok(mesh)
}

/// Sums the values of every series of `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric_name, rest) = match series.split_once('{') {
                Some((n, r)) => (n, r.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric_name != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Retries `f` until it succeeds or `timeout` passes (for things that settle, like metrics
/// of a connection that is closing).
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
