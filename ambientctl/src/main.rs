//! The `ambientctl` command line.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};

use ambient_lab::sandbox;
use ambientctl::cli::{Cli, Command, Demo};
use ambientctl::cmd::mesh::{self, LogTarget};
use ambientctl::cmd::output::{Format, print};
use ambientctl::cmd::proxy_config;
use ambientctl::demo::{DemoOptions, two_node};

// mimalloc returns freed memory to the OS promptly; glibc's per-thread arenas kept several
// times the live heap resident in the controller benchmark (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ambientctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) => mesh::up(args),
        Command::Supervise(args) => mesh::supervise(args),
        Command::Down { timeout } => mesh::down(Duration::from_secs(timeout)),
        Command::Status { output } => mesh::status(output),
        Command::Kubeconfig => ambientctl::cmd::kubeconfig::print_local(),
        // Must stay single-threaded until the command runs (joining a user namespace).
        Command::Exec {
            namespace,
            pod,
            command,
        } => Ok(mesh::exec(&namespace, &pod, &command)),
        Command::Logs {
            namespace,
            pod,
            container,
            component,
        } => mesh::logs(match (component, pod) {
            (Some(c), _) => LogTarget::Component(c),
            (None, Some(name)) => LogTarget::Pod {
                namespace,
                name,
                container,
            },
            (None, None) => unreachable!("clap requires one"),
        }),
        Command::ZtunnelConfig { view, node, output } => {
            proxy_config::ztunnel_config(view, node.as_deref(), output)
        }
        Command::ProxyStatus { output } => proxy_config::proxy_status(output),
        Command::Analyze(args) => ambientctl::cmd::analyze::run(args),
        Command::Install(args) => ambientctl::cmd::install::run(args),
        Command::Uninstall(args) => ambientctl::cmd::uninstall::run(args),
        Command::Ca {
            command: ambientctl::cli::CaCommand::Create { dir, trust_domain },
        } => {
            ambientctl::cmd::install::CaMaterial::generate(&trust_domain)?.write(&dir)?;
            println!("CA written to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Waypoint { command } => ambientctl::cmd::waypoint::run(command),
        Command::Rollout { command } => ambientctl::cmd::rollout::run(command),
        Command::Dashboard(args) => ambientctl::cmd::dashboard::run(args),
        Command::PrometheusConfig(args) => {
            ambientctl::cmd::prometheus::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "ambientctl",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Version { output } => {
            let v = serde_json::json!({
                "client": { "version": env!("CARGO_PKG_VERSION") },
                "xdsProtocol": "delta ADS (istio.workload.Address, istio.security.Authorization)",
            });
            let format = output;
            if format == Format::Table {
                println!("ambientctl {}", env!("CARGO_PKG_VERSION"));
            } else {
                print(format, &v, |_| String::new());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Component { name, args } => {
            ambient_lab::component::run(&name, args).map(|()| ExitCode::SUCCESS)
        }
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
                return Ok(ExitCode::from(status.code().unwrap_or(1) as u8));
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
            ))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
