//! `ambient-controller` command line (also reachable as `ambientctl component controller`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::server::{ControllerConfig, run};

#[derive(Debug, Parser)]
#[command(
    name = "ambient-controller",
    about = "ambient-rs control plane and certificate authority"
)]
pub struct Args {
    /// TLS gRPC listener (certificate service).
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// Monitoring listener (/ready, /metrics).
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub monitoring_addr: SocketAddr,
    #[arg(long, default_value = ambient_proto::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// CA key material directory (Istio plug-in CA file names; generated when empty).
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// Directory for per-node CA tokens.
    #[arg(long)]
    pub token_dir: PathBuf,
    /// Static workload file (which pods run on which node).
    #[arg(long)]
    pub workloads: PathBuf,
    /// Extra nodes to issue tokens for.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Default workload certificate lifetime, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub workload_ttl_secs: u64,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Runs the controller with command-line `args` (program name first).
pub fn main(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    let args = Args::parse_from(args);
    init_logging(&args.log_format);
    let config = ControllerConfig {
        grpc_addr: args.grpc_addr,
        monitoring_addr: args.monitoring_addr,
        trust_domain: args.trust_domain,
        ca_dir: args.ca_dir,
        token_dir: args.token_dir,
        workloads_file: args.workloads,
        nodes: args.nodes,
        workload_ttl: Duration::from_secs(args.workload_ttl_secs),
    };
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
        };
        run(config, metrics, shutdown).await
    })?;
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
