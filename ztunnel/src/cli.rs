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
use tracing_subscriber::filter::Targets;

use crate::agent::{self, NodeAgent};
use crate::app::{self, Config, ConfigSource};
use crate::control_plane::ControlPlane;

#[derive(Debug, Parser)]
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
    /// The controller (xDS and CA): `https://host:15012`.
    #[arg(long, alias = "ca-address")]
    pub controller_address: String,
    /// PEM roots of the mesh; they also sign the controller's serving certificate.
    #[arg(long)]
    pub ca_root: PathBuf,
    /// Name on the controller's serving certificate.
    #[arg(
        long,
        alias = "ca-server-name",
        default_value = "istiod.istio-system.svc"
    )]
    pub controller_server_name: String,
    /// File holding this node's bearer token for the controller.
    #[arg(long, alias = "ca-token-file")]
    pub token_file: PathBuf,
    /// Workload certificate lifetime to ask for, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub workload_cert_ttl_secs: u64,
    /// The node agent's ZDS socket.
    #[arg(long, default_value = "/var/run/ztunnel/ztunnel.sock")]
    pub zds_socket: PathBuf,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,
}

#[derive(Debug, Parser)]
#[command(
    name = "node-agent",
    about = "ambient-rs node agent: capture rules and ZDS"
)]
pub struct AgentArgs {
    /// Where ztunnel connects for ZDS.
    #[arg(long, default_value = "/var/run/ztunnel/ztunnel.sock")]
    pub zds_socket: PathBuf,
    /// Where pods are announced.
    #[arg(long, default_value = "/var/run/ambient/cni.sock")]
    pub cni_socket: PathBuf,
    /// Persisted pod list, so a restarted agent still knows its pods.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Installs the global tracing subscriber (stderr, `RUST_LOG` or `info`).
///
/// `RUST_LOG` takes `level` and `target=level` directives separated by commas (for example
/// `info,ztunnel::proxy=debug`). These are [`Targets`] rather than `EnvFilter`: the span and
/// field filters of the latter need a regex engine, which would add about half a megabyte to
/// every proxy's resident memory.
pub fn init_logging(format: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, refused) = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    if format == "json" {
        registry.with(output.json()).init();
    } else {
        registry.with(output).init();
    }
    if let Some(e) = refused {
        tracing::warn!(error = %e, "RUST_LOG not understood; logging at info");
    }
}

/// The log filter for a `RUST_LOG` value: `info` when unset, and also when it does not parse
/// (with the reason, to be reported once logging is up).
fn log_filter(spec: Option<&str>) -> (Targets, Option<String>) {
    let info = || Targets::new().with_default(tracing::Level::INFO);
    match spec.map(str::trim).filter(|s| !s.is_empty()) {
        None => (info(), None),
        Some(spec) => match spec.parse::<Targets>() {
            Ok(targets) => (targets, None),
            Err(e) => (info(), Some(format!("{spec:?}: {e}"))),
        },
    }
}

fn shutdown_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
}

/// Runs ztunnel with command-line `args` (program name first).
pub fn ztunnel_main(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    crate::memory::avoid_transparent_huge_pages();
    let args = ZtunnelArgs::parse_from(args);
    init_logging(&args.log_format);
    let roots = std::fs::read(&args.ca_root)
        .with_context(|| format!("reading {}", args.ca_root.display()))?;
    let config = Config {
        node_name: args.node_name,
        instance_ip: args.instance_ip,
        trust_domain: args.trust_domain,
        source: match args.config_file {
            Some(path) => ConfigSource::File(path),
            None => ConfigSource::Xds,
        },
        control_plane: ControlPlane {
            address: args.controller_address,
            root_pem: roots.clone(),
            server_name: args.controller_server_name,
            token_file: args.token_file,
        },
        workload_cert_ttl: Duration::from_secs(args.workload_cert_ttl_secs),
        mesh_roots_pem: roots,
        zds_socket: args.zds_socket,
        admin_addr: args.admin_addr,
        metrics_addr: args.metrics_addr,
        readiness_addr: args.readiness_addr,
        cert_wait: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
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
        shutdown_on_signal(shutdown.clone());
        app::run(config, metrics, shutdown).await
    })?;
    Ok(())
}

/// Runs the node agent with command-line `args` (program name first).
pub fn agent_main(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    let args = AgentArgs::parse_from(args);
    init_logging(&args.log_format);
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
        tokio::spawn(agent::zds_server::serve(node_agent.clone(), zds));
        tokio::spawn(agent::cni::serve(node_agent, cni));
        tracing::info!(zds = %args.zds_socket.display(), cni = %args.cni_socket.display(), "node agent running");
        let shutdown = CancellationToken::new();
        shutdown_on_signal(shutdown.clone());
        shutdown.cancelled().await;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::filter::LevelFilter;

    use super::log_filter;

    #[test]
    fn rust_log_directives_set_levels_per_target() {
        let (filter, refused) = log_filter(Some("warn,ztunnel::proxy=debug"));
        assert_eq!(refused, None);
        assert!(filter.would_enable("ztunnel::proxy::inbound", &Level::DEBUG));
        assert!(!filter.would_enable("ztunnel::proxy::inbound", &Level::TRACE));
        assert!(!filter.would_enable("ztunnel::xds", &Level::INFO));
        assert!(filter.would_enable("ztunnel::xds", &Level::WARN));
    }

    #[test]
    fn unset_or_unparsable_rust_log_means_info_and_says_why() {
        for unset in [None, Some(""), Some("  ")] {
            let (filter, refused) = log_filter(unset);
            assert_eq!(filter.default_level(), Some(LevelFilter::INFO));
            assert_eq!(refused, None);
        }
        let (filter, refused) = log_filter(Some("ztunnel=loud"));
        assert_eq!(filter.default_level(), Some(LevelFilter::INFO));
        assert!(refused.expect("a reason").contains("ztunnel=loud"));
    }
}
