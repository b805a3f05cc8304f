//! `ambient-controller` command line (also reachable as `ambientctl component controller`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use proxy_core::logging::{LogFormat, init_logging};
use serde::Serialize;

use crate::deployer::render::PodRuntime;
use crate::index::IndexConfig;
use crate::push::Debounce;
use crate::server::{ControllerConfig, SourceConfig, WaypointDeployment, run_with};

#[derive(Clone, Debug, PartialEq, Parser, Serialize)]
#[command(
    name = "ambient-controller",
    about = "ambient-rs control plane and certificate authority"
)]
pub struct Args {
    /// TLS gRPC listener (delta xDS and the certificate service).
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// Monitoring listener (/ready, /metrics, /debug/...).
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub monitoring_addr: SocketAddr,
    #[arg(long, default_value = ambient_proto::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// CA key material directory (Istio plug-in CA file names; generated when empty).
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// Read manifests from this directory instead of a Kubernetes API server.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// The local runtime's placements and addresses for the manifests' Pods and Services
    /// (manifest mode; written by `ambientctl up`).
    #[arg(long)]
    pub allocations: Option<PathBuf>,
    /// Directory for per-node CA tokens (manifest mode).
    #[arg(long, default_value = "tokens")]
    pub token_dir: PathBuf,
    /// Nodes to issue tokens for at start (manifest mode).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Kubeconfig to use (Kubernetes mode; default: in-cluster or $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Service accounts (`namespace/name`) ztunnels run as (Kubernetes mode).
    #[arg(long, value_delimiter = ',', default_value = "istio-system/ztunnel")]
    pub ztunnel_service_accounts: Vec<String>,
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Default workload certificate lifetime, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub workload_ttl_secs: u64,
    /// Push after this many milliseconds without further changes...
    #[arg(long, default_value_t = 100)]
    pub debounce_quiet_ms: u64,
    /// ...or this many after the first change of a burst.
    #[arg(long, default_value_t = 1000)]
    pub debounce_max_ms: u64,
    /// Deploy a ServiceAccount, Service and Deployment for each Gateway of class
    /// istio-waypoint, and write the Gateways' status (Kubernetes mode).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub deploy_waypoints: bool,
    /// Image of the waypoint pods (it runs `waypoint`).
    #[arg(long, default_value = crate::server::DEFAULT_WAYPOINT_IMAGE)]
    pub waypoint_image: String,
    /// Controller address given to waypoint pods (default:
    /// https://ambient-controller.<root namespace>.svc:15012).
    #[arg(long)]
    pub waypoint_controller_address: Option<String>,
    /// Waypoint pods run on the local runtime (`ambientctl up --kubernetes`, which plays
    /// the kubelet): their command is `EXE component waypoint`, their files in the run
    /// directory (`--waypoint-local-run-dir`). Without it, pods run the image.
    #[arg(long, value_name = "EXE", requires = "waypoint_local_run_dir")]
    pub waypoint_local_exe: Option<PathBuf>,
    /// The local mesh's run directory (CA root, node tokens), with `--waypoint-local-exe`.
    #[arg(long, value_name = "DIR", requires = "waypoint_local_exe")]
    pub waypoint_local_run_dir: Option<PathBuf>,
    /// `RUST_LOG` of local waypoint pods.
    #[arg(long, default_value = "info")]
    pub waypoint_local_log_filter: String,
    /// The deployed waypoints export their request spans and access logs over OTLP to this
    /// receiver (their `--otlp-endpoint`; a mesh Service's name works).
    #[arg(long, value_name = "URL", value_parser = waypoint::cli::parse_otlp_endpoint)]
    pub waypoint_otlp_endpoint: Option<String>,
    /// The waypoints' `--otlp-protocol` (default grpc).
    #[arg(long, value_enum, requires = "waypoint_otlp_endpoint")]
    pub waypoint_otlp_protocol: Option<waypoint::otlp::Protocol>,
    /// The waypoints' `--otlp-ca-cert`: a path the waypoint can read, so for pods of the
    /// local runtime (`--waypoint-local-exe`) only; the waypoint image carries no such file.
    #[arg(long, value_name = "PEM", requires = "waypoint_local_exe")]
    pub waypoint_otlp_ca_cert: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Args {
    /// Where the deployed waypoints export (`--waypoint-otlp-*`), if anywhere.
    pub fn waypoint_otlp(&self) -> Option<waypoint::otlp::Export> {
        Some(waypoint::otlp::Export {
            endpoint: self.waypoint_otlp_endpoint.clone()?,
            protocol: self.waypoint_otlp_protocol.unwrap_or_default(),
            ca_cert: self.waypoint_otlp_ca_cert.clone(),
        })
    }

    /// Sets `--waypoint-otlp-*` from where the waypoints should export (none: unset).
    pub fn set_waypoint_otlp(&mut self, export: Option<&waypoint::otlp::Export>) {
        self.waypoint_otlp_endpoint = export.map(|e| e.endpoint.clone());
        self.waypoint_otlp_protocol = export.map(|e| e.protocol);
        self.waypoint_otlp_ca_cert = export.and_then(|e| e.ca_cert.clone());
    }

    /// The controller's defaults, keeping its CA material in `ca_dir`.
    pub fn new(ca_dir: PathBuf) -> Self {
        Self::parse_from([
            OsString::from("ambient-controller"),
            "--ca-dir".into(),
            ca_dir.into_os_string(),
        ])
    }

    /// This command line as arguments (without the program name).
    pub fn to_args(&self) -> Vec<String> {
        proxy_core::command_line::render(self)
    }
}

/// Runs the controller with command-line `args` (program name first).
pub fn main(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    let args = Args::parse_from(args);
    init_logging(args.log_format);
    let waypoint_otlp = args.waypoint_otlp();
    let source = match args.manifests {
        Some(dir) => SourceConfig::Manifests {
            dir,
            token_dir: args.token_dir,
            nodes: args.nodes,
            allocations: args.allocations,
        },
        None => SourceConfig::Kubernetes {
            kubeconfig: args.kubeconfig,
            ztunnel_accounts: args.ztunnel_service_accounts,
        },
    };
    let config = ControllerConfig {
        grpc_addr: args.grpc_addr,
        monitoring_addr: args.monitoring_addr,
        ca_dir: args.ca_dir,
        source,
        index: IndexConfig {
            cluster_id: args.cluster_id,
            trust_domain: args.trust_domain,
            root_namespace: args.root_namespace,
            ..IndexConfig::default()
        },
        debounce: Debounce {
            quiet: Duration::from_millis(args.debounce_quiet_ms),
            max_delay: Duration::from_millis(args.debounce_max_ms.max(args.debounce_quiet_ms)),
        },
        workload_ttl: Duration::from_secs(args.workload_ttl_secs),
    };
    let waypoints = WaypointDeployment {
        otlp: waypoint_otlp,
        enabled: args.deploy_waypoints,
        image: args.waypoint_image,
        controller_address: args.waypoint_controller_address,
        pod: match (args.waypoint_local_exe, args.waypoint_local_run_dir) {
            (Some(exe), Some(run_dir)) => PodRuntime::Local {
                exe,
                run_dir,
                log_filter: args.waypoint_local_log_filter,
            },
            _ => PodRuntime::Kubernetes,
        },
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
            // Streams to proxies never end on their own: give them a moment, then go.
            tokio::spawn(async {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                std::process::exit(0);
            });
        };
        run_with(config, waypoints, metrics, shutdown).await
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_round_trips() {
        let parse = |a: &Args| {
            Args::try_parse_from(
                std::iter::once("ambient-controller".to_string()).chain(a.to_args()),
            )
            .unwrap()
        };
        let mut args = Args::new("/var/run/ambient/ca".into());
        assert_eq!(parse(&args), args);
        args.manifests = Some("/etc/mesh".into());
        args.nodes = vec!["node-a".into(), "node-b".into()];
        args.ztunnel_service_accounts = vec!["mesh/ztunnel".into()];
        args.deploy_waypoints = false;
        args.waypoint_controller_address = Some("https://c:15012".into());
        args.log_format = LogFormat::Json;
        assert_eq!(parse(&args), args);
        let export = waypoint::otlp::Export {
            endpoint: "http://collector.observability:4318".into(),
            protocol: waypoint::otlp::Protocol::HttpProtobuf,
            ca_cert: Some("/run/collector-ca.pem".into()),
        };
        args.waypoint_local_exe = Some("/usr/bin/ambientctl".into());
        args.waypoint_local_run_dir = Some("/run/mesh".into());
        args.set_waypoint_otlp(Some(&export));
        assert_eq!(parse(&args), args);
        assert_eq!(parse(&args).waypoint_otlp(), Some(export));
        args.set_waypoint_otlp(None);
        assert!(!args.to_args().iter().any(|a| a.contains("otlp")));
    }

    #[test]
    fn waypoint_otlp_flags_are_checked() {
        let parse = |extra: &[&str]| {
            Args::try_parse_from(
                ["ambient-controller", "--ca-dir", "/ca"]
                    .iter()
                    .chain(extra)
                    .copied(),
            )
        };
        let grpc = parse(&["--waypoint-otlp-endpoint", "http://c.observability:4317"]).unwrap();
        assert_eq!(
            grpc.waypoint_otlp().map(|e| e.protocol),
            Some(waypoint::otlp::Protocol::Grpc),
            "gRPC unless told otherwise"
        );
        for bad in [
            // A protocol with nowhere to send.
            &["--waypoint-otlp-protocol", "grpc"][..],
            // Not a URL the exporter can use.
            &["--waypoint-otlp-endpoint", "ftp://collector:4317"][..],
            // A CA file in a cluster's waypoint pod, where the image has none.
            &[
                "--waypoint-otlp-endpoint",
                "https://c:4317",
                "--waypoint-otlp-ca-cert",
                "/ca.pem",
            ][..],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
