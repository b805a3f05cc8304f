//! Command-line flags (the same spellings as ztunnel's where they mean the same thing).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use proxy_core::control_plane::ControlPlaneArgs;
use proxy_core::logging::LogFormat;
use serde::Serialize;

/// The waypoint for one Gateway.
#[derive(Parser, Debug, Clone, PartialEq, Serialize)]
#[command(name = "waypoint", version, about = "ambient-rs waypoint (L7 proxy)")]
pub struct Args {
    /// The Gateway this waypoint serves, as `<namespace>/<name>`.
    #[arg(long, env = "GATEWAY")]
    pub gateway: String,
    /// Service account the waypoint runs as (its identity); defaults to the Gateway's name.
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    #[arg(long, default_value = ambient_proto::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Node the waypoint runs on (for the controller's proxy status).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    /// The waypoint pod's own address.
    #[arg(long, env = "POD_IP", default_value = "")]
    pub instance_ip: String,
    /// How to reach the controller (xDS and CA).
    #[command(flatten)]
    #[serde(flatten)]
    pub control_plane: ControlPlaneArgs,
    #[arg(long, default_value = "0.0.0.0:15008")]
    pub hbone_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Access log and diagnostics format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Data-plane threads, each with its own runtime and upstream pools; 0: one per CPU.
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,
    /// Where request spans and access log records go (OTLP).
    #[command(flatten)]
    #[serde(flatten)]
    pub otlp: proxy_core::otlp::OtlpArgs,
    /// Percentage of the traces this waypoint starts that are sampled (requests without a
    /// valid `traceparent`); a caller's `traceparent` keeps its own sampled flag.
    #[arg(long, value_name = "PERCENT", default_value_t = 100.0, value_parser = percent)]
    pub trace_sampling: f64,
}

impl Args {
    /// The flags a waypoint cannot do without; every other flag keeps its default (clap's,
    /// written once). Values read from the environment when a flag is missing (`NODE_NAME`,
    /// `POD_IP`, `SERVICE_ACCOUNT`, `OTEL_EXPORTER_OTLP_ENDPOINT`) are not taken from this
    /// process's environment: whoever starts a waypoint sets them.
    pub fn new(
        gateway: &str,
        controller_address: &str,
        ca_root: PathBuf,
        token_file: PathBuf,
    ) -> Self {
        let required = [
            OsString::from("waypoint"),
            "--gateway".into(),
            gateway.into(),
            "--controller-address".into(),
            controller_address.into(),
            "--ca-root".into(),
            ca_root.into_os_string(),
            "--token-file".into(),
            token_file.into_os_string(),
        ];
        Args {
            service_account: None,
            node_name: String::new(),
            instance_ip: String::new(),
            otlp: proxy_core::otlp::OtlpArgs::default(),
            ..Self::parse_from(required)
        }
    }

    /// This command line as arguments (without the program name).
    pub fn to_args(&self) -> Vec<String> {
        proxy_core::command_line::render(self)
    }

    /// Sets where spans go (`None`: nowhere).
    pub fn set_otlp(&mut self, export: Option<&crate::otlp::Export>) {
        self.otlp = proxy_core::otlp::OtlpArgs::from_export(export);
    }
}

/// Checks an OTLP endpoint as `--otlp-endpoint` takes it (for tools that pass one on; the
/// protocol is checked with it when the waypoint starts).
pub fn parse_otlp_endpoint(s: &str) -> Result<String, String> {
    use crate::otlp::{Protocol, Target};
    Target::parse_as(s, Protocol::HttpProtobuf)?;
    Ok(s.trim().to_string())
}

fn percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?}: expected a percentage from 0 to 100")),
    }
}

/// Runs the waypoint with command-line `args` (program name first).
pub fn main(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    proxy_core::memory::avoid_transparent_huge_pages();
    let args = Args::parse_from(args);
    proxy_core::logging::init_logging(args.log_format);
    // The control plane's runtime (xDS, certificates, admin, accepting connections); the
    // data plane runs on `--worker-threads` threads of its own (see `workers`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::app::run(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_round_trips() {
        let mut args = Args::new(
            "bookinfo/waypoint",
            "https://ambient-controller.istio-system.svc:15012",
            "/var/run/ambient/ca-root/root-cert.pem".into(),
            "/var/run/secrets/tokens/ambient-token".into(),
        );
        let parse = |a: &Args| {
            Args::try_parse_from(std::iter::once("waypoint".to_string()).chain(a.to_args()))
                .unwrap()
        };
        assert_eq!(parse(&args), args);
        args.service_account = Some("waypoint".into());
        args.node_name = "$(NODE_NAME)".into();
        args.instance_ip = "$(POD_IP)".into();
        args.set_otlp(Some(&crate::otlp::Export {
            endpoint: "https://otel-sink.observability:4318/otlp".into(),
            protocol: crate::otlp::Protocol::HttpProtobuf,
            ca_cert: Some("/etc/otlp/ca.pem".into()),
        }));
        args.trace_sampling = 12.5;
        args.log_format = LogFormat::Json;
        assert_eq!(parse(&args), args);
    }
}
