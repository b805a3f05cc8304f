//! `cargo run --release -p bench -- <benchmark>`: runs a benchmark and prints its figures.

#![forbid(unsafe_code)]

mod balance;
mod chaos;
mod mesh;
mod server;
mod soak;
mod waypoint_config;
mod xds_scale;

// The same allocator as the shipped binaries, so measured memory is what they would use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::ffi::OsString;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "ambient-rs benchmarks (figures printed, never asserted)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The waypoint's load balancers (least-request, peak-EWMA, round robin, random) against
    /// a backend set where one endpoint is slow: latency percentiles, in a simulation.
    Balance(balance::Options),
    /// Control plane at scale: a simulated cluster on a fake API server, many xDS clients.
    Xds(xds_scale::Options),
    /// What a pod change costs a waypoint in a large mesh: the WDS store updated and the
    /// routing compiled again, timed in-process.
    WaypointConfig(waypoint_config::Options),
    /// Mesh overhead against direct TCP: throughput, latency, request and connection rates,
    /// ztunnel CPU and memory, on a two-node cluster in namespaces the benchmark creates.
    Mesh(mesh::Options),
    /// Steady traffic while components fail, one event at a time (controller loss, node
    /// agent, ztunnel and waypoint restarts, certificate rotation, a policy storm): failed
    /// requests, dropped connections, time to recover.
    Chaos(chaos::Options),
    /// The chaos traffic for a long time (30 min) with connection, pod, policy and
    /// certificate churn: each proxy's and the controller's memory and descriptors, sampled
    /// and plotted.
    Soak(soak::Options),
    /// The servers the mesh benchmark drives (run inside the server pod).
    #[command(hide = true)]
    MeshServer(server::ServerArgs),
    /// Runs a mesh component (controller, ztunnel, node-agent), as `ambientctl component`
    /// does: the lab starts them from this binary.
    #[command(hide = true)]
    Component {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Runs the controller (the benchmark starts it as a separate process to measure it).
    #[command(hide = true)]
    Controller {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Balance(opts) => balance::run(opts),
        Command::Xds(opts) => xds_scale::run(opts),
        Command::WaypointConfig(opts) => waypoint_config::run(opts),
        Command::Mesh(opts) => mesh::run(opts),
        Command::Chaos(opts) => chaos::run(opts),
        Command::Soak(opts) => soak::run(opts),
        Command::MeshServer(args) => server::run(args),
        Command::Component { name, args } => ambient_lab::component::run(&name, args),
        Command::Controller { args } => {
            ambient_controller::cli::main(std::iter::once(OsString::from("controller")).chain(args))
        }
    }
}

/// Runs `body` inside a new sandbox (re-running this command there first); `marker` names
/// the sandbox, `keep` keeps its directory.
pub(crate) fn sandboxed<F, Fut>(marker: &str, keep: bool, body: F) -> anyhow::Result<()>
where
    F: FnOnce(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let Some(run_dir) = ambient_lab::sandbox::inside() else {
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let status =
            ambient_lab::sandbox::reexec(&args, marker, keep).context("entering the sandbox")?;
        anyhow::ensure!(status.success(), "the benchmark failed ({status})");
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(body(run_dir))
}
