//! The `ambientctl` command-line grammar.

use std::ffi::OsString;

use clap::{Parser, Subcommand};

use crate::cmd::mesh::UpArgs;
use crate::cmd::output::Format;
use crate::cmd::proxy_config::ZtunnelView;

#[derive(clap::Subcommand, Debug)]
pub enum CaCommand {
    /// Write `root-cert.pem`, `ca-cert.pem` and `ca-key.pem` (owner-only) into DIR.
    Create {
        dir: std::path::PathBuf,
        #[arg(long, default_value = ambient_proto::identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
}

#[derive(Parser)]
#[command(
    name = "ambientctl",
    version,
    about = "The ambient-rs mesh CLI and local runtime",
    long_about = "The ambient-rs mesh CLI and local runtime.\n\nRun a whole ambient mesh on this machine (no Kubernetes, no root) with `ambientctl up DIR`, then inspect it with the istioctl-like commands."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a mesh from a directory of manifests: every Pod becomes a network namespace
    /// running its containers' commands; edits to the directory apply live.
    Up(UpArgs),
    /// Stop the running mesh (every process, namespace and mount it made).
    Down {
        /// Seconds to wait for a clean stop before killing.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Print the path of the kubeconfig for kubectl of a mesh started with
    /// `up --kubernetes` (`export KUBECONFIG=$(ambientctl kubeconfig)`).
    Kubeconfig,
    /// Nodes, pods and services of the running mesh.
    Status {
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Run a command inside a pod (its network namespace); stdin, stdout and the exit code
    /// pass through.
    Exec {
        #[arg(short, long, default_value = "default")]
        namespace: String,
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// Print a pod's container log, or a mesh component's (`--component ztunnel-node-1`,
    /// `controller`, `node-agent-node-1`).
    Logs {
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(required_unless_present = "component")]
        pod: Option<String>,
        #[arg(short, long)]
        container: Option<String>,
        #[arg(long, conflicts_with = "pod")]
        component: Option<String>,
    },
    /// What the ztunnels hold: workloads, services, policies, certificates, connections.
    ZtunnelConfig {
        #[arg(value_enum)]
        view: ZtunnelView,
        /// Only this node's ztunnel.
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Each proxy connected to the controller, what it subscribed to, and whether it is in
    /// sync (exit code 1 when one is not).
    ProxyStatus {
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Validate a directory of manifests (default: the running mesh's): stable codes, the
    /// object concerned, file and line; exit 1 on errors.
    Analyze(crate::cmd::analyze::AnalyzeArgs),
    /// Render (or apply to a cluster) the Kubernetes manifests that run ambient-rs.
    Install(crate::cmd::install::InstallArgs),
    /// The mesh CA: `ca create DIR` writes a new root as Istio's plug-in CA files (for the Helm
    /// chart's `ca` values or `install --ca-dir`).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Remove from a cluster what install created (each node's CNI configuration restored).
    Uninstall(crate::cmd::uninstall::UninstallArgs),
    /// Waypoints (L7 proxies): generate, apply, list, status, delete (as istioctl's).
    Waypoint {
        #[command(subcommand)]
        command: crate::cmd::waypoint::WaypointCommand,
    },
    /// Canary rollouts: status, promote, abort.
    Rollout {
        #[command(subcommand)]
        command: crate::cmd::rollout::RolloutCommand,
    },
    /// A local web page with the live service graph: requests/s or bytes/s, errors, p99
    /// and mTLS per edge, golden signals per workload, certificate expiry.
    Dashboard(crate::cmd::dashboard::DashboardArgs),
    /// Print a Prometheus configuration that scrapes every proxy of the running mesh
    /// (through its scrape port; `--kubernetes`: the pod-annotation job for a cluster).
    PrometheusConfig(crate::cmd::prometheus::PrometheusArgs),
    /// Shell completions for bash, zsh, fish, elvish or powershell.
    Completion { shell: clap_complete::Shell },
    /// Print the version.
    Version {
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Run an example mesh on this machine (no root, no Kubernetes).
    Demo {
        #[command(subcommand)]
        which: Demo,
    },
    /// Run a mesh component (used by the local runtime).
    #[command(hide = true)]
    Component {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// The root process of a local mesh (started by `up`).
    #[command(hide = true)]
    Supervise(UpArgs),
}

#[derive(Subcommand)]
pub enum Demo {
    /// Two nodes, a client and a server pod, HBONE between them.
    TwoNode {
        /// Stop after this many requests (default: until Ctrl-C).
        #[arg(long)]
        requests: Option<u64>,
        /// Seconds between requests.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Keep the lab directory (logs, certificates) afterwards.
        #[arg(long)]
        keep: bool,
    },
}
