//! `up`, `down`, `status`, `logs` and `exec`: the local mesh's lifecycle.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::output::{Format, print, table};
use crate::runtime::control::{self, StatusReport};
use crate::runtime::home::{Home, HomeError, Phase};
use crate::runtime::{api_port, enter, scrape_port, supervisor};
use ambient_lab::sandbox::{INSIDE_ENV, RUN_DIR_ENV};
use ambient_lab::spawn::{self, Entry, Lifetime};

/// `ambientctl up` options.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Directory of Kubernetes manifests (Namespaces, Pods, Services, policies, ...).
    pub dir: PathBuf,
    /// Simulated nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub nodes: u16,
    /// Return once the mesh is ready, leaving it running (stop it with `ambientctl down`).
    #[arg(long, short)]
    pub detach: bool,
    /// Pod addresses (a /16; each node gets a /24 of it).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub pod_cidr: String,
    /// Service VIPs (a /16).
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: String,
    /// Log filter for the mesh's components (RUST_LOG syntax).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Seconds `--detach` waits for the mesh to be ready.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// Waypoints export one span per request over OTLP/gRPC to this receiver
    /// (`http://HOST[:PORT]`). A Service of the mesh (`http://otel-sink.observability:4317`)
    /// is resolved by the waypoints themselves; see docs/observability.md.
    #[arg(long, value_name = "URL", value_parser = waypoint::cli::parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// The waypoints' OTLP transport: `grpc` (port 4317) or `http/protobuf` (4318,
    /// `/v1/traces`).
    #[arg(long, value_enum, default_value_t, requires = "otlp_endpoint")]
    pub otlp_protocol: waypoint::otlp::Protocol,
    /// PEM roots for an `https://` OTLP endpoint (default: the system's CA bundle).
    #[arg(long, value_name = "PEM", requires = "otlp_endpoint")]
    pub otlp_ca_cert: Option<PathBuf>,
    /// Back the mesh with a real Kubernetes control plane (kube-lab, built by
    /// `tools/build.sh`): DIR is applied to its API server, the controller watches it, and
    /// this runtime is the kubelet of the simulated nodes. `ambientctl kubeconfig` prints
    /// the kubeconfig for kubectl.
    #[arg(long)]
    pub kubernetes: bool,
    /// The host's loopback port to the API server with `--kubernetes` (0: any free one).
    #[arg(long, default_value_t = 0, requires = "kubernetes")]
    pub api_port: u16,
    /// The host's loopback port Prometheus scrapes the mesh through (0: any free one;
    /// `ambientctl prometheus-config` names it).
    #[arg(long, default_value_t = 0)]
    pub scrape_port: u16,
}

/// The first two octets of an `a.b.0.0/16`.
pub fn slash16(cidr: &str) -> anyhow::Result<[u8; 2]> {
    let (ip, len) = cidr
        .split_once('/')
        .with_context(|| format!("{cidr:?}: expected a.b.0.0/16"))?;
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .with_context(|| format!("{cidr:?}: bad address"))?;
    if len != "16" || ip.octets()[2..] != [0, 0] {
        bail!("{cidr:?}: the local runtime needs a /16 such as 10.244.0.0/16");
    }
    let [a, b, _, _] = ip.octets();
    Ok([a, b])
}

/// `ambientctl up`, outside the sandbox: checks, then starts the supervisor inside new
/// namespaces and either follows it (foreground) or waits for it to be ready (`--detach`).
pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("{}: no such directory", args.dir.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    slash16(&args.pod_cidr)?;
    slash16(&args.service_cidr)?;
    spawn::sandbox_supported().map_err(anyhow::Error::msg)?;
    if args.kubernetes {
        // Say what is missing before anything starts.
        ambient_lab::kube::executable()?;
        ambient_lab::kube::crd_modules()?;
    }
    let home = Home::locate();
    match home.lock() {
        Ok(lock) => drop(lock),
        Err(e @ (HomeError::Busy { .. } | HomeError::Locked(_))) => {
            eprintln!("ambientctl: {e}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    }
    home.clean()?;
    let logs = home.logs_dir();
    std::fs::create_dir_all(&logs)?;

    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(&exe);
    cmd.arg("supervise")
        .arg(&dir)
        .args(["--nodes", &args.nodes.to_string()])
        .args(["--pod-cidr", &args.pod_cidr])
        .args(["--service-cidr", &args.service_cidr])
        .args(["--log-level", &args.log_level])
        .env(INSIDE_ENV, "up")
        .env(RUN_DIR_ENV, home.run_dir());
    if let Some(endpoint) = &args.otlp_endpoint {
        // Checked here, with the CA read, rather than by each waypoint as it starts.
        let ca_cert = args
            .otlp_ca_cert
            .as_deref()
            .map(std::fs::canonicalize)
            .transpose()
            .context("--otlp-ca-cert")?;
        waypoint::otlp::Export {
            endpoint: endpoint.clone(),
            protocol: args.otlp_protocol,
            ca_cert: ca_cert.clone(),
        }
        .target()
        .map_err(anyhow::Error::msg)?;
        cmd.args(["--otlp-endpoint", endpoint]);
        cmd.args(["--otlp-protocol", args.otlp_protocol.name()]);
        if let Some(ca) = &ca_cert {
            cmd.arg("--otlp-ca-cert").arg(ca);
        }
    }
    // Bound here, in the host's network namespace, and inherited by the supervisor.
    let api_listener = if args.kubernetes {
        let listener = std::net::TcpListener::bind(("127.0.0.1", args.api_port))
            .with_context(|| format!("binding 127.0.0.1:{} for the API server", args.api_port))?;
        spawn::pass_listener(&mut cmd, &listener, api_port::LISTENER_ENV)?;
        cmd.arg("--kubernetes");
        Some(listener)
    } else {
        None
    };
    let scrape_listener = std::net::TcpListener::bind(("127.0.0.1", args.scrape_port))
        .with_context(|| format!("binding 127.0.0.1:{} for Prometheus", args.scrape_port))?;
    spawn::pass_listener(&mut cmd, &scrape_listener, scrape_port::LISTENER_ENV)?;
    if args.detach {
        let log = std::fs::File::create(logs.join("runtime.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        spawn::configure_with(&mut cmd, Entry::NewSandbox, Lifetime::Detached);
        let mut child = cmd.spawn().context("starting the mesh")?;
        drop(api_listener);
        drop(scrape_listener);
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        loop {
            if let Some(status) = child.try_wait()? {
                eprintln!("ambientctl: the mesh exited during start ({status}):");
                eprintln!("{}", tail(&logs.join("runtime.log"), 30));
                return Ok(ExitCode::FAILURE);
            }
            if let Ok(info) = home.info()
                && info.phase == Phase::Ready
            {
                break;
            }
            if Instant::now() > deadline {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
                eprintln!(
                    "ambientctl: the mesh was not ready after {}s; stopped it. Log:\n{}",
                    args.timeout,
                    tail(&logs.join("runtime.log"), 30)
                );
                return Ok(ExitCode::FAILURE);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let status: StatusReport = control::get_json(&home.control_socket(), "/status")?;
        print!("{}", render_status(&status));
        println!(
            "\nmesh running in the background (logs: {}); stop it with `ambientctl down`",
            logs.display()
        );
        if args.kubernetes {
            println!("kubectl: export KUBECONFIG=$(ambientctl kubeconfig)");
        }
        return Ok(ExitCode::SUCCESS);
    }

    // Foreground: the terminal's Ctrl-C reaches the supervisor too (same process group);
    // this process only stays alive to report how it ended.
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    spawn::configure_with(&mut cmd, Entry::NewSandbox, Lifetime::WithParent);
    let mut child = cmd.spawn().context("starting the mesh")?;
    drop(api_listener);
    drop(scrape_listener);
    let mut forwarded = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if interrupted.load(Ordering::Relaxed) && !forwarded {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !home.is_locked() {
        home.clean()?;
    }
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `ambientctl supervise`, inside the sandbox (hidden; `up` runs it).
pub fn supervise(args: UpArgs) -> anyhow::Result<ExitCode> {
    let home = Home::locate();
    let _lock = match home.lock() {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("ambientctl: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    init_logging(&args.log_level);
    let options = supervisor::UpOptions {
        manifests: args.dir,
        nodes: usize::from(args.nodes),
        pod_prefix: slash16(&args.pod_cidr)?,
        service_prefix: slash16(&args.service_cidr)?,
        log_filter: args.log_level,
        otlp: args.otlp_endpoint.map(|endpoint| waypoint::otlp::Export {
            endpoint,
            protocol: args.otlp_protocol,
            ca_cert: args.otlp_ca_cert,
        }),
        kubernetes: args.kubernetes,
    };
    let api_listener = spawn::inherited_listener(api_port::LISTENER_ENV)
        .context("adopting the host's API port")?;
    if args.kubernetes && api_listener.is_none() {
        anyhow::bail!("--kubernetes needs the API port `ambientctl up` passes down");
    }
    let scrape_listener = spawn::inherited_listener(scrape_port::LISTENER_ENV)
        .context("adopting the host's scrape port")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(supervisor::run(
        home.clone(),
        options,
        std::env::current_exe()?,
        supervisor::HostPorts {
            api: api_listener,
            scrape: scrape_listener,
        },
    ));
    if let Err(e) = &result {
        tracing::error!("{e:#}");
        let _ = std::fs::remove_file(home.info_path());
        let _ = std::fs::remove_file(home.control_socket());
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    result.map(|()| ExitCode::SUCCESS)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `ambientctl down`.
pub fn down(timeout: Duration) -> anyhow::Result<ExitCode> {
    let home = Home::locate();
    let info = match home.info() {
        Ok(info) => info,
        Err(HomeError::NotRunning) if !home.is_locked() => {
            home.clean()?;
            println!("no mesh is running");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    if home.is_locked() {
        let pid = Pid::from_raw(info.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while home.is_locked() {
            if Instant::now() > deadline {
                eprintln!("ambientctl: the mesh did not stop in {timeout:?}; killing it");
                let _ = kill(pid, Signal::SIGKILL);
                std::thread::sleep(Duration::from_millis(500));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    home.clean()?;
    println!("mesh stopped (manifests {})", info.manifests.display());
    Ok(ExitCode::SUCCESS)
}

fn running_status(home: &Home) -> anyhow::Result<StatusReport> {
    home.running()?;
    Ok(control::get_json(&home.control_socket(), "/status")?)
}

/// `ambientctl status`.
pub fn status(format: Format) -> anyhow::Result<ExitCode> {
    let home = Home::locate();
    let status = match running_status(&home) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ambientctl: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    print(format, &status, render_status);
    Ok(ExitCode::SUCCESS)
}

fn render_status(s: &StatusReport) -> String {
    let mut out = format!("Mesh: {} ({})\n\n", s.manifests, s.phase);
    let nodes: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.ip.clone(),
                n.pod_cidr.clone(),
                if n.ztunnel_ready { "Ready" } else { "NotReady" }.into(),
            ]
        })
        .collect();
    out.push_str(&table(&["NODE", "ADDRESS", "POD CIDR", "ZTUNNEL"], &nodes));
    out.push('\n');
    let pods: Vec<Vec<String>> = s
        .pods
        .iter()
        .map(|p| {
            let restarts: u64 = p["containers"]
                .as_array()
                .map(|cs| cs.iter().filter_map(|c| c["restarts"].as_u64()).sum())
                .unwrap_or(0);
            let waiting: Vec<&str> = p["containers"]
                .as_array()
                .map(|cs| cs.iter().filter_map(|c| c["reason"].as_str()).collect())
                .unwrap_or_default();
            vec![
                p["namespace"].as_str().unwrap_or_default().to_string(),
                p["name"].as_str().unwrap_or_default().to_string(),
                p["node"].as_str().unwrap_or_default().to_string(),
                p["ip"].as_str().unwrap_or_default().to_string(),
                // Waypoints are out of ztunnel's capture; they speak HBONE themselves.
                if p["waypoint"].is_string() {
                    "waypoint".to_string()
                } else {
                    p["dataplane"].as_str().unwrap_or_default().to_string()
                },
                p["phase"].as_str().unwrap_or_default().to_string(),
                restarts.to_string(),
                waiting.join("; "),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NAMESPACE",
            "POD",
            "NODE",
            "IP",
            "DATAPLANE",
            "STATUS",
            "RESTARTS",
            "MESSAGE",
        ],
        &pods,
    ));
    if !s.services.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .services
            .iter()
            .map(|(k, ip)| {
                let (ns, name) = k.split_once('/').unwrap_or(("", k));
                vec![ns.to_string(), name.to_string(), ip.clone()]
            })
            .collect();
        out.push_str(&table(&["NAMESPACE", "SERVICE", "CLUSTER-IP"], &rows));
    }
    if !s.diagnostics.is_empty() {
        out.push_str("\nProblems in the manifests (ignored, the rest is running):\n");
        for d in &s.diagnostics {
            out.push_str(&format!("  {d}\n"));
        }
    }
    out
}

/// Which log `ambientctl logs` shows.
pub enum LogTarget {
    Pod {
        namespace: String,
        name: String,
        container: Option<String>,
    },
    Component(String),
}

/// `ambientctl logs`.
pub fn logs(target: LogTarget) -> anyhow::Result<ExitCode> {
    let home = Home::locate();
    let dir = home.logs_dir();
    let path = match target {
        LogTarget::Component(name) => dir.join(format!("{name}.log")),
        LogTarget::Pod {
            namespace,
            name,
            container,
        } => {
            let prefix = format!("{namespace}_{name}_");
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("pods"))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| {
                            p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with(&prefix))
                        })
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            match (container, found.len()) {
                (Some(c), _) => dir.join("pods").join(format!("{prefix}{c}.log")),
                (None, 1) => found.remove(0),
                (None, 0) => {
                    eprintln!("ambientctl: no logs for pod {namespace}/{name}");
                    return Ok(ExitCode::FAILURE);
                }
                (None, _) => {
                    eprintln!(
                        "ambientctl: pod {namespace}/{name} has several containers; pick one with -c"
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("ambientctl: {}: {e}", path.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `ambientctl exec`: returns only on error (the command replaces this process).
pub fn exec(namespace: &str, pod: &str, command: &[OsString]) -> ExitCode {
    let home = Home::locate();
    let e = enter::exec_in_pod(&home, namespace, pod, command);
    eprintln!("ambientctl: {e}");
    match e {
        enter::EnterError::NoCommand(_) => ExitCode::from(127),
        _ => ExitCode::FAILURE,
    }
}
