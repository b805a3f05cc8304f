//! Command lines of the `ztunnel` and `node-agent` binaries (also reachable as
//! `ambientctl component ztunnel|node-agent`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, NodeAgent};
use crate::app::{self, Config, ConfigSource};
use ambient_proto::hbone::{H2Settings, PoolSettings};
use proxy_core::control_plane::ControlPlaneArgs;
use proxy_core::logging::{LogFormat, init_logging};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Parser, Serialize)]
#[command(name = "ztunnel", about = "ambient-rs node tunnel")]
pub struct ZtunnelArgs {
    /// Name of the node this ztunnel serves.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    #[arg(long, default_value = ambient_proto::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// This node's IP (reported to the controller).
    #[arg(long, env = "INSTANCE_IP", default_value = "")]
    pub instance_ip: String,
    /// Read workloads and services from this WDS file instead of the controller's xDS
    /// (for debugging).
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// How to reach the controller (xDS and CA).
    #[command(flatten)]
    #[serde(flatten)]
    pub control_plane: ControlPlaneArgs,
    /// The node agent's ZDS socket.
    #[arg(long, default_value = "/var/run/ztunnel/ztunnel.sock")]
    pub zds_socket: PathBuf,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,
    /// On SIGTERM, how long open connections may go on after the listeners closed (a new
    /// ztunnel process takes the new ones). Keep it below the pod's termination grace period.
    #[arg(long, default_value_t = 20)]
    pub drain_seconds: u64,
    /// Where the access log also goes, as OTLP log records.
    #[command(flatten)]
    #[serde(flatten)]
    pub otlp: proxy_core::otlp::OtlpArgs,
    /// Socket reads under TLS take up to this many bytes at once; 0 reads as rustls asks,
    /// about one TLS record at a time [default: 0].
    #[arg(long, help_heading = "HBONE tuning")]
    pub hbone_read_ahead: Option<usize>,
    /// Encrypted bytes queued before a socket write [default: 65536].
    #[arg(long, help_heading = "HBONE tuning")]
    pub hbone_tls_send_buffer: Option<usize>,
    /// HTTP/2 bytes buffered per stream before its sender waits [default: 1048576].
    #[arg(long, help_heading = "HBONE tuning")]
    pub hbone_stream_send_buffer: Option<usize>,
    /// Concurrent streams to one peer are spread over up to this many HBONE connections
    /// [default: one per worker thread].
    #[arg(long, help_heading = "HBONE tuning")]
    pub hbone_connections_per_peer: Option<usize>,
}

impl ZtunnelArgs {
    /// HTTP/2 and pool settings: the defaults, with what the command line changed.
    fn hbone(&self, workers: usize) -> (H2Settings, PoolSettings) {
        let mut h2 = H2Settings::default();
        if let Some(n) = self.hbone_read_ahead {
            h2.read_ahead = n;
        }
        if let Some(n) = self.hbone_tls_send_buffer {
            h2.tls_send_buffer = n;
        }
        if let Some(n) = self.hbone_stream_send_buffer {
            h2.max_send_buffer = n;
        }
        let pool = PoolSettings {
            spread: self.hbone_connections_per_peer.unwrap_or(workers).max(1),
            ..PoolSettings::default()
        };
        (h2, pool)
    }
}

#[derive(Clone, Debug, PartialEq, Parser, Serialize)]
#[command(
    name = "node-agent",
    about = "ambient-rs node agent: capture rules and ZDS"
)]
pub struct AgentArgs {
    /// Where ztunnel connects for ZDS.
    #[arg(long, default_value = "/var/run/ztunnel/ztunnel.sock")]
    pub zds_socket: PathBuf,
    /// Where pods are announced (the CNI plugin's `agentSocket`).
    #[arg(long, default_value = crate::cni_plugin::spec::DEFAULT_AGENT_SOCKET)]
    pub cni_socket: PathBuf,
    /// This node's name. With it the agent watches the node's pods on the API server,
    /// decides enrolment for the CNI plugin and follows label changes (in a DaemonSet, from
    /// the downward API); without it, pods arrive already decided (`/cmdadd`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The API server's kubeconfig, for `--node-name` (default: in-cluster). Also what the
    /// installed CNI plugin is given.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Install our CNI plugin into the node's network configuration in this directory (the
    /// host's `/etc/cni/net.d`, mounted), and keep it there.
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// Where the plugin binary goes (the host's `/opt/cni/bin`, mounted).
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The plugin binary to install (default: `ambient-cni` beside this program).
    #[arg(long)]
    pub cni_plugin: Option<PathBuf>,
    /// When to take the plugin out of the node's configuration as the agent exits.
    #[arg(long, value_enum, default_value_t = CniRemoval::WhenUninstalled)]
    pub cni_remove_on_exit: CniRemoval,
    /// The DaemonSet this agent runs in (`namespace/name`): while it exists, an exiting
    /// agent is being restarted or upgraded and leaves the plugin in place.
    #[arg(long)]
    pub daemonset: Option<String>,
    /// Where the host's processes are listed (the host's `/proc`, mounted): pods that ran
    /// before the agent are found among their network namespaces.
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Serve readiness (`/healthz/ready`) here: ready once the pod watch has listed and the
    /// plugin is in place.
    #[arg(long)]
    pub readiness_addr: Option<SocketAddr>,
    /// Persisted pod list, so a restarted agent still knows its pods.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// When an exiting node agent takes its CNI plugin out of the node's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CniRemoval {
    /// Only when its DaemonSet (`--daemonset`) is gone or being deleted: an uninstall. A
    /// restart or upgrade leaves the plugin, so pods that start meanwhile wait for the agent
    /// instead of starting uncaptured.
    WhenUninstalled,
    Always,
    Never,
}

impl ZtunnelArgs {
    /// The flags a ztunnel cannot do without; every other flag keeps its default (the
    /// defaults are clap's, so they are written once). Values read from the environment when
    /// a flag is missing (`INSTANCE_IP`) are not taken from this process's environment.
    pub fn new(
        node_name: &str,
        instance_ip: &str,
        controller_address: &str,
        ca_root: PathBuf,
        token_file: PathBuf,
    ) -> Self {
        let mut args = Self::parse_from(
            [
                "ztunnel",
                "--node-name",
                node_name,
                "--controller-address",
                controller_address,
            ]
            .into_iter()
            .map(OsString::from)
            .chain([
                "--ca-root".into(),
                ca_root.into_os_string(),
                "--token-file".into(),
                token_file.into_os_string(),
            ]),
        );
        args.instance_ip = instance_ip.to_string();
        args
    }

    /// This command line as arguments (without the program name).
    pub fn to_args(&self) -> Vec<String> {
        proxy_core::command_line::render(self)
    }
}

impl AgentArgs {
    /// The node agent's defaults, with its sockets and state file given.
    pub fn new(zds_socket: PathBuf, cni_socket: PathBuf, state_file: Option<PathBuf>) -> Self {
        AgentArgs {
            zds_socket,
            cni_socket,
            state_file,
            // Not from this process's `NODE_NAME`.
            node_name: None,
            ..Self::parse_from(["node-agent"])
        }
    }

    /// This command line as arguments (without the program name).
    pub fn to_args(&self) -> Vec<String> {
        proxy_core::command_line::render(self)
    }
}

/// Runs ztunnel with command-line `args` (program name first).
pub fn ztunnel_main(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    proxy_core::memory::avoid_transparent_huge_pages();
    let args = ZtunnelArgs::parse_from(args);
    init_logging(args.log_format);
    let control_plane = args.control_plane.control_plane()?;
    let otlp = args
        .otlp
        .export()
        .map(|export| export.target())
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--otlp-endpoint")?;
    let workers = match args.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (h2, pool) = args.hbone(workers);
    let config = Config {
        h2,
        pool,
        node_name: args.node_name,
        instance_ip: args.instance_ip,
        trust_domain: args.trust_domain,
        source: match args.config_file {
            Some(path) => ConfigSource::File(path),
            None => ConfigSource::Xds,
        },
        workload_cert_ttl: args.control_plane.workload_cert_ttl(),
        mesh_roots_pem: control_plane.root_pem.clone(),
        control_plane,
        zds_socket: args.zds_socket,
        admin_addr: args.admin_addr,
        metrics_addr: args.metrics_addr,
        readiness_addr: args.readiness_addr,
        drain_timeout: Duration::from_secs(args.drain_seconds),
        cert_wait: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        otlp,
    };
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.worker_threads > 0 {
        runtime.worker_threads(args.worker_threads);
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        proxy_core::shutdown::on_signal(shutdown.clone());
        app::run(config, metrics, shutdown).await
    })?;
    Ok(())
}

/// Runs the node agent with command-line `args` (program name first).
pub fn agent_main(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    let args = AgentArgs::parse_from(args);
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        for path in [&args.zds_socket, &args.cni_socket] {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let node_agent = Arc::new(NodeAgent::new(args.state_file.clone())?);
        let zds = ambient_proto::zds::ZdsListener::bind(&args.zds_socket)
            .with_context(|| format!("binding {}", args.zds_socket.display()))?;
        let cni = agent::cni::bind(&args.cni_socket)
            .with_context(|| format!("binding {}", args.cni_socket.display()))?;
        let shutdown = CancellationToken::new();
        proxy_core::shutdown::on_signal(shutdown.clone());
        let mut gates = Vec::new();
        if args.node_name.is_some() {
            gates.push(agent::kube_pods::READY_GATE);
        }
        if args.cni_conf_dir.is_some() {
            gates.push(agent::cni_install::READY_GATE);
        }
        let readiness = proxy_core::readiness::Readiness::new(&gates);
        if let Some(addr) = args.readiness_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding readiness on {addr}"))?;
            tokio::spawn(proxy_core::admin::serve(
                listener,
                shutdown.clone(),
                proxy_core::admin::readiness_routes(readiness.clone()),
            ));
        }
        let client = match &args.node_name {
            Some(_) => Some(
                agent::kube_pods::client(args.kubeconfig.as_deref())
                    .await
                    .context("connecting to the API server")?,
            ),
            None => None,
        };
        let kube_pods = match (&args.node_name, &client) {
            (Some(node), Some(client)) => {
                let pods = agent::kube_pods::KubePods::new(
                    node_agent.clone(),
                    client.clone(),
                    node.clone(),
                    args.proc_root.clone(),
                );
                tokio::spawn(pods.clone().run(readiness.clone()));
                Some(pods)
            }
            _ => None,
        };
        let install = match &args.cni_conf_dir {
            Some(conf_dir) => {
                let plugin = match &args.cni_plugin {
                    Some(p) => p.clone(),
                    None => std::env::current_exe()
                        .context("finding this program")?
                        .with_file_name(agent::cni_install::PLUGIN_TYPE),
                };
                let mut install =
                    agent::cni_install::CniInstall::new(conf_dir.clone(), args.cni_bin_dir.clone(), plugin);
                install.agent_socket = args.cni_socket.clone();
                let kubeconfig = match &args.kubeconfig {
                    Some(path) => agent::cni_install::KubeconfigSource::File(path.clone()),
                    None => agent::cni_install::KubeconfigSource::InCluster,
                };
                tokio::spawn(agent::cni_install::keep_in_place(
                    install.clone(),
                    kubeconfig,
                    readiness.clone(),
                    shutdown.clone(),
                ));
                Some(install)
            }
            None => None,
        };
        tokio::spawn(agent::zds_server::serve(node_agent.clone(), zds));
        tokio::spawn(agent::cni::serve(node_agent, kube_pods, cni));
        tracing::info!(zds = %args.zds_socket.display(), cni = %args.cni_socket.display(), "node agent running");
        shutdown.cancelled().await;
        if let Some(install) = install {
            agent::cni_install::on_exit(
                &install,
                args.cni_remove_on_exit,
                client.as_ref(),
                args.daemonset.as_deref(),
            )
            .await;
        }
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: Parser>(name: &str, args: Vec<String>) -> T {
        T::try_parse_from(std::iter::once(name.to_string()).chain(args)).unwrap()
    }

    #[test]
    fn ztunnel_command_line_round_trips() {
        let mut args = ZtunnelArgs::new(
            "$(NODE_NAME)",
            "$(INSTANCE_IP)",
            "https://ambient-controller.istio-system.svc:15012",
            "/var/run/ambient/ca-root/root-cert.pem".into(),
            "/var/run/secrets/tokens/ambient-token".into(),
        );
        assert_eq!(parse::<ZtunnelArgs>("ztunnel", args.to_args()), args);
        args.config_file = Some("/etc/wds.yaml".into());
        args.log_format = LogFormat::Json;
        args.worker_threads = 2;
        assert_eq!(parse::<ZtunnelArgs>("ztunnel", args.to_args()), args);
    }

    #[test]
    fn node_agent_command_line_round_trips() {
        let args = AgentArgs::new("/run/z.sock".into(), "/run/c.sock".into(), None);
        assert_eq!(parse::<AgentArgs>("node-agent", args.to_args()), args);
        let with_state = AgentArgs {
            state_file: Some("/run/state.json".into()),
            ..args
        };
        assert_eq!(
            parse::<AgentArgs>("node-agent", with_state.to_args()),
            with_state
        );
    }
}
