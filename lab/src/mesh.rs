//! A running local mesh on a [`Lab`] network: the controller on the underlay (reading a
//! manifest directory), and a node agent plus a ztunnel (on the controller's xDS) in every
//! node's namespace, each a real process.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ambient_controller::cli::Args as ControllerArgs;
use ztunnel::agent::PodEvent;
use ztunnel::agent::cni::{CniClient, CniClientError};
use ztunnel::cli::{AgentArgs, ZtunnelArgs};

use super::component::Program;
use super::http;
use super::process::Proc;
use super::topology::{Lab, UNDERLAY_GATEWAY};

/// How to run the mesh.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// The multi-call binary (`ambientctl`) that runs each component.
    pub exe: PathBuf,
    pub trust_domain: String,
    /// Lifetime ztunnels ask for their workload certificates.
    pub workload_cert_ttl: Duration,
    /// `RUST_LOG` for the components.
    pub log_filter: String,
    /// The controller's debounce quiet period.
    pub debounce_quiet: Duration,
    /// Run ztunnels from this standalone `ztunnel` binary instead of `exe component ztunnel`
    /// (what a node runs; the benchmark measures its memory).
    pub ztunnel_exe: Option<PathBuf>,
    /// Run another ztunnel implementation instead (side-by-side benchmarks): configured by
    /// its environment, not by our command line.
    pub foreign_ztunnel: Option<ForeignZtunnel>,
    /// Extra flags for every ztunnel.
    pub ztunnel_args: Vec<String>,
    /// The ztunnels' drain period on SIGTERM (`--drain-seconds`; `None`: ztunnel's default).
    pub ztunnel_drain: Option<Duration>,
    /// Run the controller in its Kubernetes mode on this kubeconfig instead of on the
    /// manifest directory (`ambientctl up --kubernetes`). Waypoint pods it deploys run
    /// `exe component waypoint` with the run directory's files: the local runtime is their
    /// kubelet.
    pub kubeconfig: Option<PathBuf>,
    /// Where the ztunnels export their access log as OTLP log records, if anywhere.
    pub otlp: Option<proxy_core::otlp::Export>,
}

/// A ztunnel binary other than ours, told everything by environment variables (as Istio's
/// is). Each value may name what the lab gives a node's ztunnel: `{node}`, `{node_ip}`,
/// `{xds}` (the controller's xDS and CA address), `{root_ca}` (the mesh root certificate
/// file), `{token}` (the node's token file), `{zds}` (the node agent's ZDS socket) and
/// `{dir}` (a directory of the node's own).
#[derive(Clone, Debug, PartialEq)]
pub struct ForeignZtunnel {
    pub exe: PathBuf,
    pub env: Vec<(String, String)>,
}

impl ForeignZtunnel {
    /// Parses `NAME=value` pairs.
    pub fn new(exe: PathBuf, pairs: &[String]) -> Result<Self, String> {
        let env = pairs
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) if !name.is_empty() => Ok((name.into(), value.into())),
                _ => Err(format!("{pair:?} is not NAME=value")),
            })
            .collect::<Result<_, _>>()?;
        Ok(ForeignZtunnel { exe, env })
    }

    /// The environment with the placeholders of `node` filled in.
    fn environment(&self, fill: &[(&str, String)]) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(name, value)| {
                let value = fill.iter().fold(value.clone(), |v, (placeholder, with)| {
                    v.replace(&format!("{{{placeholder}}}"), with)
                });
                (name.clone(), value)
            })
            .collect()
    }
}

impl MeshOptions {
    pub fn new(exe: PathBuf) -> Self {
        MeshOptions {
            exe,
            trust_domain: ambient_proto::identity::DEFAULT_TRUST_DOMAIN.into(),
            workload_cert_ttl: Duration::from_secs(24 * 3600),
            log_filter: "info".into(),
            debounce_quiet: Duration::from_millis(50),
            ztunnel_exe: None,
            foreign_ztunnel: None,
            ztunnel_args: Vec::new(),
            ztunnel_drain: None,
            kubeconfig: None,
            otlp: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{what} did not become ready in {waited:?}: {detail}")]
    NotReady {
        what: String,
        waited: Duration,
        detail: String,
    },
    #[error("no such {0}")]
    Unknown(String),
    #[error(transparent)]
    Cni(#[from] CniClientError),
    #[error("{0}")]
    Config(String),
    /// The CNI plugin refused (its error result) or is missing.
    #[error("{0}")]
    CniPlugin(String),
}

struct NodeProcs {
    agent: Proc,
    ztunnel: Option<Proc>,
    dir: PathBuf,
}

pub struct Mesh {
    pub lab: Lab,
    pub options: MeshOptions,
    /// The directory the controller watches.
    pub manifests: PathBuf,
    controller: Proc,
    nodes: BTreeMap<String, NodeProcs>,
}

/// The controller's gRPC (CA) and monitoring addresses.
pub fn controller_grpc() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(UNDERLAY_GATEWAY), 15012)
}

pub fn controller_monitoring() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(UNDERLAY_GATEWAY), 15014)
}

/// Polls `check` every 50 ms until it returns `Ok(Some(_))` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> Result<T, MeshError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let start = Instant::now();
    let mut last = String::from("not checked yet");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if start.elapsed() > timeout {
            return Err(MeshError::NotReady {
                what: what.to_string(),
                waited: timeout,
                detail: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Mesh {
    /// Starts the controller on `manifests` (file name → YAML), then every node's agent and
    /// ztunnel, and waits until all are ready.
    pub async fn start(
        lab: Lab,
        manifests: &[(&str, String)],
        options: MeshOptions,
    ) -> Result<Mesh, MeshError> {
        let dir = lab.run_dir.join("manifests");
        std::fs::create_dir_all(&dir)?;
        for (name, yaml) in manifests {
            write_atomically(&dir.join(name), yaml)?;
        }
        Self::start_on(lab, dir, options).await
    }

    /// Starts the mesh with the controller watching an existing directory `dir`.
    pub async fn start_on(lab: Lab, dir: PathBuf, options: MeshOptions) -> Result<Mesh, MeshError> {
        std::fs::create_dir_all(lab.run_dir.join("logs"))?;
        let node_names: Vec<String> = lab.nodes.keys().cloned().collect();
        let controller = spawn_controller(&lab, &options, &dir)?;
        let mut mesh = Mesh {
            lab,
            options,
            manifests: dir,
            controller,
            nodes: BTreeMap::new(),
        };
        mesh.wait_controller().await?;
        for node in node_names {
            mesh.start_node(&node).await?;
        }
        Ok(mesh)
    }

    async fn wait_controller(&self) -> Result<(), MeshError> {
        let underlay = self.lab.underlay.clone();
        wait_for("controller", Duration::from_secs(30), || {
            let underlay = underlay.clone();
            async move {
                match http::get(&underlay, controller_monitoring(), "/ready").await {
                    Ok((200, _)) => Ok(Some(())),
                    Ok((s, b)) => Err(format!("{s}: {b}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
        .map_err(|e| self.with_logs(e))
    }

    /// Writes (or replaces) a manifest file; the controller applies it live.
    pub fn write_manifest(&self, name: &str, yaml: &str) -> Result<(), MeshError> {
        write_atomically(&self.manifests.join(name), yaml)?;
        Ok(())
    }

    /// Removes a manifest file.
    pub fn remove_manifest(&self, name: &str) -> Result<(), MeshError> {
        std::fs::remove_file(self.manifests.join(name))?;
        Ok(())
    }

    /// `GET path` on the controller's monitoring port.
    pub async fn controller_get(&self, path: &str) -> Result<String, MeshError> {
        let (status, body) = http::get(&self.lab.underlay, controller_monitoring(), path).await?;
        if status != 200 {
            return Err(MeshError::Io(std::io::Error::other(format!(
                "GET {path}: {status} {body}"
            ))));
        }
        Ok(body)
    }

    /// Restarts the controller (after [`Mesh::kill_controller`]) and waits for it.
    pub async fn restart_controller(&mut self) -> Result<(), MeshError> {
        self.controller.kill();
        self.controller = spawn_controller(&self.lab, &self.options, &self.manifests)?;
        self.wait_controller().await
    }

    fn with_logs(&self, e: MeshError) -> MeshError {
        match e {
            MeshError::NotReady {
                what,
                waited,
                detail,
            } => MeshError::NotReady {
                what,
                waited,
                detail: format!("{detail}\n--- logs ---\n{}", self.logs(20)),
            },
            other => other,
        }
    }

    async fn start_node(&mut self, node: &str) -> Result<(), MeshError> {
        let dir = self.lab.run_dir.join(format!("node-{node}"));
        std::fs::create_dir_all(&dir)?;
        let agent = self.spawn_agent(node, &dir)?;
        self.nodes.insert(
            node.to_string(),
            NodeProcs {
                agent,
                ztunnel: None,
                dir,
            },
        );
        self.wait_agent(node).await?;
        self.start_ztunnel(node).await
    }

    fn spawn_agent(&self, node: &str, dir: &Path) -> Result<Proc, MeshError> {
        let n = self.lab.node(node);
        let env = [("RUST_LOG", self.options.log_filter.as_str())];
        let mut args = AgentArgs::new(
            dir.join("ztunnel.sock"),
            dir.join("cni.sock"),
            Some(dir.join("agent-state.json")),
        );
        // On an API server the agent watches its node's pods and decides enrolment for the
        // CNI plugin ([`Mesh::run_cni_plugin`]), as on a real node.
        if let Some(kubeconfig) = &self.options.kubeconfig {
            args.node_name = Some(node.to_string());
            args.kubeconfig = Some(kubeconfig.clone());
        }
        let program = Program::multi_call(&self.options.exe, "node-agent");
        Ok(Proc::spawn(
            &format!("node-agent-{node}"),
            &n.netns,
            &program.exe,
            &program.args(args.to_args()),
            &self
                .lab
                .run_dir
                .join("logs")
                .join(format!("node-agent-{node}.log")),
            &env,
        )?)
    }

    async fn wait_agent(&self, node: &str) -> Result<(), MeshError> {
        let cni = self.cni(node)?;
        wait_for(
            &format!("node agent on {node}"),
            Duration::from_secs(20),
            || {
                let cni = cni.clone();
                async move { cni.pods().await.map(Some).map_err(|e| e.to_string()) }
            },
        )
        .await
        .map_err(|e| self.with_logs(e))?;
        Ok(())
    }

    /// Kills `node`'s agent and starts a new one, which reloads its pods from its state file.
    pub async fn restart_agent(&mut self, node: &str) -> Result<(), MeshError> {
        let dir = self
            .nodes
            .get(node)
            .ok_or_else(|| MeshError::Unknown(format!("node {node}")))?
            .dir
            .clone();
        self.nodes.get_mut(node).expect("checked").agent.kill();
        let agent = self.spawn_agent(node, &dir)?;
        self.nodes.get_mut(node).expect("checked").agent = agent;
        self.wait_agent(node).await
    }

    /// Starts again every node agent that exited, as a node's kubelet restarts a crashed
    /// container; returns those nodes, each with how its restart went.
    pub async fn revive_agents(&mut self) -> Vec<(String, Result<(), MeshError>)> {
        let dead: Vec<String> = self
            .nodes
            .iter_mut()
            .filter_map(|(node, p)| p.agent.exited().map(|_| node.clone()))
            .collect();
        let mut out = Vec::new();
        for node in dead {
            let restarted = self.restart_agent(&node).await;
            out.push((node, restarted));
        }
        out
    }

    /// Starts (or restarts) the ztunnel of `node` and waits for it to be ready.
    pub async fn start_ztunnel(&mut self, node: &str) -> Result<(), MeshError> {
        let ztunnel = self.spawn_ztunnel(node)?;
        self.nodes.get_mut(node).expect("checked").ztunnel = Some(ztunnel);
        self.wait_ztunnel_ready(node, None).await
    }

    /// Replaces the ztunnel of `node` as a rolling update with surge does: a new process starts
    /// beside the running one (their listeners share ports), and once the new one is ready the
    /// old one gets SIGTERM and drains. Returns the old process, still draining.
    pub async fn upgrade_ztunnel(&mut self, node: &str) -> Result<Proc, MeshError> {
        let new = self.spawn_ztunnel(node)?;
        let pid = new.pid();
        let old = self
            .nodes
            .get_mut(node)
            .expect("checked")
            .ztunnel
            .replace(new)
            .ok_or_else(|| MeshError::Unknown(format!("a running ztunnel on {node}")))?;
        self.wait_ztunnel_ready(node, Some(pid)).await?;
        old.sigterm();
        Ok(old)
    }

    /// The process id of `node`'s running ztunnel.
    pub fn ztunnel_pid(&self, node: &str) -> Option<u32> {
        self.nodes.get(node)?.ztunnel.as_ref().map(Proc::pid)
    }

    fn spawn_ztunnel(&self, node: &str) -> Result<Proc, MeshError> {
        let n = self.lab.node(node);
        let netns = n.netns.clone();
        let procs = self
            .nodes
            .get(node)
            .ok_or_else(|| MeshError::Unknown(format!("node {node}")))?;
        let dir = procs.dir.clone();
        let run = self.lab.run_dir.clone();
        let env: Vec<(&str, &str)> =
            std::iter::once(("RUST_LOG", self.options.log_filter.as_str()))
                .chain(ambient_controller::deployer::PROXY_ENV.iter().copied())
                .collect();
        if let Some(foreign) = &self.options.foreign_ztunnel {
            let fill = [
                ("node", node.to_string()),
                ("node_ip", n.ip.to_string()),
                ("xds", format!("https://{}", controller_grpc())),
                (
                    "root_ca",
                    run.join("ca").join("root-cert.pem").display().to_string(),
                ),
                ("token", self.token_path(node).display().to_string()),
                ("zds", dir.join("ztunnel.sock").display().to_string()),
                ("dir", dir.display().to_string()),
            ];
            let own = foreign.environment(&fill);
            let env: Vec<(&str, &str)> = env
                .iter()
                .copied()
                .chain(own.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .collect();
            return Ok(Proc::spawn(
                &format!("ztunnel-{node}"),
                &netns,
                &foreign.exe,
                &self.options.ztunnel_args,
                &run.join("logs").join(format!("ztunnel-{node}.log")),
                &env,
            )?);
        }
        let program = match &self.options.ztunnel_exe {
            Some(standalone) => Program::standalone(standalone),
            None => Program::multi_call(&self.options.exe, "ztunnel"),
        };
        let mut args = ZtunnelArgs {
            trust_domain: self.options.trust_domain.clone(),
            zds_socket: dir.join("ztunnel.sock"),
            ..ZtunnelArgs::new(
                node,
                &self.lab.node(node).ip.to_string(),
                &format!("https://{}", controller_grpc()),
                run.join("ca").join("root-cert.pem"),
                run.join("tokens").join(format!("{node}.token")),
            )
        };
        args.control_plane.workload_cert_ttl_secs = self.options.workload_cert_ttl.as_secs().max(1);
        if let Some(drain) = self.options.ztunnel_drain {
            args.drain_seconds = drain.as_secs();
        }
        args.otlp = proxy_core::otlp::OtlpArgs::from_export(self.options.otlp.as_ref());
        let ztunnel = Proc::spawn(
            &format!("ztunnel-{node}"),
            &netns,
            &program.exe,
            &program.args(
                args.to_args()
                    .into_iter()
                    .chain(self.options.ztunnel_args.iter().cloned()),
            ),
            &run.join("logs").join(format!("ztunnel-{node}.log")),
            &env,
        )?;
        Ok(ztunnel)
    }

    /// Waits until `node`'s ztunnel answers ready; with `pid`, until that process does (where
    /// two processes share the readiness port, each answer names its own).
    async fn wait_ztunnel_ready(&self, node: &str, pid: Option<u32>) -> Result<(), MeshError> {
        let netns = self.lab.node(node).netns.clone();
        let which = pid.map(|p| format!("pid {p}\n"));
        wait_for(
            &format!("ztunnel on {node}"),
            Duration::from_secs(30),
            || {
                let netns = netns.clone();
                let which = which.clone();
                async move {
                    match http::get(
                        &netns,
                        "127.0.0.1:15021".parse().expect("addr"),
                        "/healthz/ready",
                    )
                    .await
                    {
                        Ok((200, b)) if which.as_ref().is_none_or(|w| b.contains(w.as_str())) => {
                            Ok(Some(()))
                        }
                        Ok((s, b)) => Err(format!("{s}: {b}")),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await
        .map_err(|e| self.with_logs(e))
    }

    /// Stops every component: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some(z) = n.ztunnel.as_mut() {
                z.terminate(Duration::from_secs(2));
            }
            n.agent.terminate(Duration::from_secs(2));
        }
        self.controller.terminate(Duration::from_secs(3));
    }

    /// Kills the controller with SIGKILL: the control plane goes away.
    pub fn kill_controller(&mut self) {
        self.controller.kill();
    }

    /// Releases a pod: its agent removes the capture and ztunnel stops serving it.
    pub async fn release(&self, namespace: &str, name: &str) -> Result<(), MeshError> {
        let pod = self
            .lab
            .pods
            .get(&format!("{namespace}/{name}"))
            .ok_or_else(|| MeshError::Unknown(format!("pod {namespace}/{name}")))?;
        self.cni(&pod.node)?
            .del(&format!("Kubernetes//Pod/{namespace}/{name}"))
            .await?;
        Ok(())
    }

    /// Runs the CNI plugin (`ambient-cni`, beside the multi-call binary) for a pod as a
    /// container runtime does, `command` being `ADD`, `CHECK` or `DEL`: the pod's network
    /// (its interface and address, set up by the lab) is the previous result, and the node's
    /// agent decides from the API server's labels. Kubernetes mode only (the agent needs its
    /// pod watch).
    pub async fn run_cni_plugin(
        &self,
        command: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), MeshError> {
        let key = format!("{namespace}/{name}");
        let pod = self
            .lab
            .pods
            .get(&key)
            .ok_or_else(|| MeshError::Unknown(format!("pod {key}")))?;
        let procs = self
            .nodes
            .get(&pod.node)
            .ok_or_else(|| MeshError::Unknown(format!("node {}", pod.node)))?;
        let plugin = self.options.exe.with_file_name("ambient-cni");
        if !plugin.is_file() {
            return Err(MeshError::CniPlugin(format!(
                "no CNI plugin at {} (build it: cargo build -p ztunnel)",
                plugin.display()
            )));
        }
        let config = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "ambient-local",
            "type": "ambient-cni",
            "agentSocket": procs.dir.join("cni.sock"),
            "kubeconfig": self.options.kubeconfig,
            "excludeNamespaces": [],
            "prevResult": {
                "cniVersion": "1.1.0",
                "interfaces": [{"name": "eth0", "sandbox": pod.netns_path}],
                "ips": [{"address": format!("{}/24", pod.ip), "interface": 0}],
            },
        });
        let mut child = tokio::process::Command::new(&plugin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("{namespace}_{name}"))
            .env("CNI_NETNS", &pod.netns_path)
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"),
            )
            .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().expect("piped");
            stdin.write_all(config.to_string().as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(MeshError::CniPlugin(format!(
                "CNI {command} of pod {key}: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            )))
        }
    }

    /// What `node`'s agent holds.
    pub async fn agent_pods(
        &self,
        node: &str,
    ) -> Result<Vec<ztunnel::agent::PodStatus>, MeshError> {
        Ok(self.cni(node)?.pods().await?)
    }

    /// Waits for `node`'s ztunnel to exit on its own; returns its exit status.
    pub async fn wait_ztunnel_exit(
        &mut self,
        node: &str,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus, MeshError> {
        let start = Instant::now();
        loop {
            let procs = self
                .nodes
                .get_mut(node)
                .ok_or_else(|| MeshError::Unknown(format!("node {node}")))?;
            let z = procs
                .ztunnel
                .as_mut()
                .ok_or_else(|| MeshError::Unknown(format!("ztunnel on {node}")))?;
            if let Some(status) = z.exited() {
                procs.ztunnel = None;
                return Ok(status);
            }
            if start.elapsed() > timeout {
                return Err(MeshError::NotReady {
                    what: format!("ztunnel on {node} to exit"),
                    waited: timeout,
                    detail: "still running".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills `node`'s ztunnel with SIGKILL, as a crash would.
    pub fn kill_ztunnel(&mut self, node: &str) -> Result<(), MeshError> {
        let procs = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| MeshError::Unknown(format!("node {node}")))?;
        if let Some(mut z) = procs.ztunnel.take() {
            z.kill();
        }
        Ok(())
    }

    fn cni(&self, node: &str) -> Result<CniClient, MeshError> {
        let procs = self
            .nodes
            .get(node)
            .ok_or_else(|| MeshError::Unknown(format!("node {node}")))?;
        Ok(CniClient::new(procs.dir.join("cni.sock")))
    }

    /// Enrols a pod: its node's agent captures it and hands it to ztunnel.
    pub async fn enrol(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
    ) -> Result<(), MeshError> {
        let pod = self
            .lab
            .pods
            .get(&format!("{namespace}/{name}"))
            .ok_or_else(|| MeshError::Unknown(format!("pod {namespace}/{name}")))?;
        let uid = format!("Kubernetes//Pod/{namespace}/{name}");
        self.cni(&pod.node)?
            .add(&PodEvent {
                uid,
                name: name.to_string(),
                namespace: namespace.to_string(),
                service_account: service_account.to_string(),
                netns: pod.netns_path.clone(),
            })
            .await?;
        Ok(())
    }

    /// `GET path` on a node's ztunnel `port` (15000 admin, 15020 metrics, 15021 readiness).
    pub async fn ztunnel_get(
        &self,
        node: &str,
        port: u16,
        path: &str,
    ) -> Result<String, MeshError> {
        let netns = &self.lab.node(node).netns;
        let (status, body) =
            http::get(netns, SocketAddr::from(([127, 0, 0, 1], port)), path).await?;
        if status != 200 {
            return Err(MeshError::Io(std::io::Error::other(format!(
                "GET {path}: {status} {body}"
            ))));
        }
        Ok(body)
    }

    pub async fn metrics(&self, node: &str) -> Result<String, MeshError> {
        self.ztunnel_get(node, 15020, "/metrics").await
    }

    pub async fn config_dump(&self, node: &str) -> Result<serde_json::Value, MeshError> {
        let body = self.ztunnel_get(node, 15000, "/config_dump").await?;
        serde_json::from_str(&body).map_err(|e| MeshError::Config(e.to_string()))
    }

    /// Where the CA keeps its key material.
    pub fn ca_dir(&self) -> PathBuf {
        self.lab.run_dir.join("ca")
    }

    pub fn token_path(&self, node: &str) -> PathBuf {
        self.lab
            .run_dir
            .join("tokens")
            .join(format!("{node}.token"))
    }

    /// The last `lines` lines of every component's log.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = format!(
            "== {} ==\n{}\n",
            self.controller.name,
            self.controller.log_tail(lines)
        );
        for n in self.nodes.values() {
            out.push_str(&format!(
                "== {} ==\n{}\n",
                n.agent.name,
                n.agent.log_tail(lines)
            ));
            if let Some(z) = &n.ztunnel {
                out.push_str(&format!("== {} ==\n{}\n", z.name, z.log_tail(lines)));
            }
        }
        out
    }

    /// The full log of one component (`controller`, `ztunnel-<node>`, `node-agent-<node>`).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.lab.run_dir.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }
}

/// Starts the controller on the underlay, reading `manifests` (and the runtime's
/// allocations file next to them).
fn spawn_controller(lab: &Lab, options: &MeshOptions, manifests: &Path) -> std::io::Result<Proc> {
    let run = &lab.run_dir;
    let mut args = ControllerArgs {
        grpc_addr: controller_grpc(),
        monitoring_addr: controller_monitoring(),
        trust_domain: options.trust_domain.clone(),
        token_dir: run.join("tokens"),
        debounce_quiet_ms: options.debounce_quiet.as_millis() as u64,
        ..ControllerArgs::new(run.join("ca"))
    };
    match &options.kubeconfig {
        None => {
            args.manifests = Some(manifests.to_path_buf());
            args.allocations = Some(allocations_path(lab));
            args.nodes = lab.nodes.keys().cloned().collect();
        }
        Some(kubeconfig) => {
            args.kubeconfig = Some(kubeconfig.clone());
            args.waypoint_controller_address = Some(format!("https://{}", controller_grpc()));
            args.waypoint_local_exe = Some(options.exe.clone());
            args.waypoint_local_run_dir = Some(run.clone());
            args.waypoint_local_log_filter = options.log_filter.clone();
            // The waypoints the controller deploys export where the local ones would.
            args.set_waypoint_otlp(options.otlp.as_ref());
        }
    }
    let program = Program::multi_call(&options.exe, "controller");
    Proc::spawn(
        "controller",
        &lab.underlay,
        &program.exe,
        &program.args(args.to_args()),
        &run.join("logs").join("controller.log"),
        &[("RUST_LOG", options.log_filter.as_str())],
    )
}

/// Where the local runtime records pod placements and service addresses for the controller.
pub fn allocations_path(lab: &Lab) -> PathBuf {
    lab.run_dir.join("allocations.json")
}

fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_ztunnel_gets_its_node_in_its_environment() {
        let foreign = ForeignZtunnel::new(
            "/opt/other/ztunnel".into(),
            &[
                "NODE_NAME={node}".into(),
                "XDS_ADDRESS={xds}".into(),
                "INPOD_UDS={zds}".into(),
                "GREETING=a=b".into(),
            ],
        )
        .unwrap();
        let env = foreign.environment(&[
            ("node", "node-a".into()),
            ("xds", "https://10.0.0.1:15012".into()),
            ("zds", "/run/node-a/ztunnel.sock".into()),
        ]);
        assert_eq!(
            env,
            [
                ("NODE_NAME".to_string(), "node-a".to_string()),
                ("XDS_ADDRESS".into(), "https://10.0.0.1:15012".into()),
                ("INPOD_UDS".into(), "/run/node-a/ztunnel.sock".into()),
                ("GREETING".into(), "a=b".into()),
            ]
        );
        let bad = ForeignZtunnel::new("/x".into(), &["NO_VALUE".into()]).unwrap_err();
        assert!(bad.contains("NAME=value"), "{bad}");
        assert!(ForeignZtunnel::new("/x".into(), &["=v".into()]).is_err());
    }
}
