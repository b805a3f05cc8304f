//! The `ambientctl` command line.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use ambientctl::demo::{DemoOptions, two_node};
use ambientctl::lab::sandbox;

// mimalloc returns freed memory to the OS promptly; glibc's per-thread arenas kept several
// times the live heap resident in the controller benchmark (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ambientctl",
    version,
    about = "The ambient-rs mesh CLI and local runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version.
    Version,
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
}

#[derive(Subcommand)]
enum Demo {
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("ambientctl {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Component { name, args } => ambientctl::component::run(&name, args),
        Command::Demo {
            which:
                Demo::TwoNode {
                    requests,
                    interval,
                    keep,
                },
        } => {
            let Some(run_dir) = sandbox::inside() else {
                let args: Vec<OsString> = std::env::args_os().skip(1).collect();
                let status =
                    sandbox::reexec(&args, "demo", keep).context("entering the sandbox")?;
                std::process::exit(status.code().unwrap_or(1));
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(two_node(
                run_dir,
                DemoOptions {
                    exe: std::env::current_exe()?,
                    requests,
                    interval: Duration::from_secs_f64(interval.max(0.01)),
                },
            ))
        }
    }
}
