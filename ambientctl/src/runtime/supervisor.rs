//! The process at the root of a local mesh's namespaces (`ambientctl up` starts it inside
//! the sandbox): builds the network, runs the mesh, keeps the manifest directory's pods
//! running, serves the control API, and stops everything on SIGTERM or Ctrl-C.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambient_controller::source::manifests::ManifestDir;
use anyhow::Context;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::cluster::{self, Cluster};
use super::control::{self, Endpoints, NodeReport, StatusReport, StatusSource};
use super::home::{Home, MeshInfo, Phase, now_secs};
use crate::lab::http;
use crate::lab::mesh::controller_monitoring;
use crate::lab::{Lab, Mesh, MeshOptions};

/// How `ambientctl up` runs the mesh.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub manifests: PathBuf,
    pub nodes: usize,
    /// First two octets of the pods' /16.
    pub pod_prefix: [u8; 2],
    /// First two octets of the services' /16.
    pub service_prefix: [u8; 2],
    pub log_filter: String,
}

/// How often the manifest directory is re-read and containers are checked.
const POLL: Duration = Duration::from_millis(500);

struct Shared {
    cluster: Mutex<Cluster>,
    manifests: PathBuf,
    diagnostics: std::sync::Mutex<Vec<String>>,
    phase: std::sync::Mutex<Phase>,
    nodes: Vec<(String, Arc<ztunnel::inpod::netns::Netns>, String, String)>,
}

impl StatusSource for Shared {
    async fn status(&self) -> StatusReport {
        let (pods, services) = {
            let c = self.cluster.lock().await;
            (c.report(), c.service_addresses())
        };
        let mut nodes = Vec::new();
        for (name, netns, ip, cidr) in &self.nodes {
            let ready = matches!(
                http::get(
                    netns,
                    "127.0.0.1:15021".parse().expect("addr"),
                    "/healthz/ready"
                )
                .await,
                Ok((200, _))
            );
            nodes.push(NodeReport {
                name: name.clone(),
                ip: ip.clone(),
                pod_cidr: cidr.clone(),
                ztunnel_ready: ready,
            });
        }
        StatusReport {
            manifests: self.manifests.display().to_string(),
            phase: format!("{:?}", *self.phase.lock().expect("poisoned")).to_lowercase(),
            nodes,
            pods: pods
                .iter()
                .map(|p| serde_json::to_value(p).expect("plain data"))
                .collect(),
            services,
            diagnostics: self.diagnostics.lock().expect("poisoned").clone(),
        }
    }
}

/// Runs the mesh until SIGTERM/SIGINT. Call inside the sandbox, holding the home's lock.
pub async fn run(home: Home, options: UpOptions, exe: PathBuf) -> anyhow::Result<()> {
    let started = now_secs();
    let node_names: Vec<String> = (1..=options.nodes).map(|i| format!("node-{i}")).collect();
    let mut info = MeshInfo {
        pid: std::process::id(),
        manifests: options.manifests.clone(),
        nodes: node_names.clone(),
        phase: Phase::Starting,
        started,
        error: None,
    };
    home.write_info(&info)?;

    let run_dir = home.run_dir();
    let mut lab = Lab::new(&run_dir).context("building the mesh network")?;
    lab.set_pod_prefix(options.pod_prefix[0], options.pod_prefix[1])?;
    for n in &node_names {
        lab.add_node(n).with_context(|| format!("adding {n}"))?;
    }
    let nodes: Vec<_> = lab
        .nodes
        .values()
        .map(|n| {
            (
                n.name.clone(),
                n.netns.clone(),
                n.ip.to_string(),
                format!("{}/24", n.pod_subnet),
            )
        })
        .collect();
    let endpoints = Endpoints {
        underlay: lab.underlay.clone(),
        controller_monitoring: controller_monitoring(),
        nodes: nodes
            .iter()
            .map(|(n, ns, _, _)| (n.clone(), ns.clone()))
            .collect::<BTreeMap<_, _>>(),
    };

    let mut mesh_options = MeshOptions::new(exe);
    mesh_options.log_filter = options.log_filter.clone();
    mesh_options.debounce_quiet = Duration::from_millis(100);
    let mesh = Mesh::start_on(lab, options.manifests.clone(), mesh_options)
        .await
        .context("starting the mesh")?;

    let mut source = ManifestDir::new(&options.manifests);
    let scan = source.scan();
    let mut cluster = Cluster::new(mesh, options.service_prefix);
    for p in cluster.allocate(&scan.objects).await? {
        warn!("{p}");
    }
    cluster.converge(&scan.objects).await;
    let findings = cluster::describe(&scan.diagnostics);
    for f in &findings {
        warn!("{f}");
    }
    let shared = Arc::new(Shared {
        cluster: Mutex::new(cluster),
        manifests: options.manifests.clone(),
        diagnostics: std::sync::Mutex::new(findings),
        phase: std::sync::Mutex::new(Phase::Starting),
        nodes,
    });

    let socket = home.control_socket();
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    let server = tokio::spawn(control::serve(listener, shared.clone(), endpoints));

    wait_until_served(&shared).await;
    info.phase = Phase::Ready;
    *shared.phase.lock().expect("poisoned") = Phase::Ready;
    home.write_info(&info)?;
    {
        let status = shared.status().await;
        info!(
            nodes = status.nodes.len(),
            pods = status.pods.len(),
            services = status.services.len(),
            "mesh ready"
        );
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hangup.recv() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
        let scan = source.scan();
        let mut cluster = shared.cluster.lock().await;
        if scan.changed {
            let findings = cluster::describe(&scan.diagnostics);
            {
                let mut known = shared.diagnostics.lock().expect("poisoned");
                for f in findings.iter().filter(|f| !known.contains(f)) {
                    warn!("{f}");
                }
                *known = findings;
            }
            match cluster.allocate(&scan.objects).await {
                Ok(problems) => problems.iter().for_each(|p| warn!("{p}")),
                Err(e) => warn!(error = %e, "applying the manifests"),
            }
            cluster.converge(&scan.objects).await;
        }
        cluster.tick();
    }

    info!("stopping the mesh");
    info.phase = Phase::Stopping;
    *shared.phase.lock().expect("poisoned") = Phase::Stopping;
    home.write_info(&info)?;
    server.abort();
    let mut cluster = shared.cluster.lock().await;
    cluster.stop_pods();
    cluster.mesh.stop();
    let _ = std::fs::remove_file(home.control_socket());
    let _ = std::fs::remove_file(home.info_path());
    info!("mesh stopped");
    Ok(())
}

/// Waits (a bounded time) until every node's ztunnel holds the workloads of the pods it
/// serves, so that `up --detach` returns a mesh that already carries traffic.
async fn wait_until_served(shared: &Shared) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = shared.cluster.lock().await.report();
        let mut missing = Vec::new();
        for (node, netns, _, _) in &shared.nodes {
            let dump = match http::get(
                netns,
                "127.0.0.1:15000".parse().expect("addr"),
                "/config_dump",
            )
            .await
            {
                Ok((200, body)) => {
                    serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()
                }
                _ => serde_json::Value::Null,
            };
            let served: Vec<&str> = dump["pods"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p["uid"].as_str()).collect())
                .unwrap_or_default();
            let known: Vec<&str> = dump["workloads"]
                .as_array()
                .map(|a| a.iter().filter_map(|w| w["uid"].as_str()).collect())
                .unwrap_or_default();
            for p in pods.iter().filter(|p| p.dataplane == "ambient") {
                let uid = format!("Kubernetes//Pod/{}/{}", p.namespace, p.name);
                // Every node must know every pod; the pod's own node must serve it.
                if !known.contains(&uid.as_str())
                    || (&p.node == node && !served.contains(&uid.as_str()))
                {
                    missing.push(format!("{uid} on {node}"));
                }
            }
        }
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            warn!(missing = ?missing, "not every pod reached the ztunnels in time; continuing");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
