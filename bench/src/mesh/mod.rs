//! Mesh overhead against direct TCP, measured in one run on the same simulated cluster.
//!
//! The benchmark builds a lab (the test harness: a sandbox of user, mount and network
//! namespaces, two nodes, pods as network namespaces) and starts the mesh on it (controller,
//! node agents, ztunnels as real processes). Two pairs of pods, a client on `node-a` and a
//! server on `node-b`, carry every figure:
//!
//! - **direct**: namespace `direct`, not enrolled: plain TCP pod → node → node → pod;
//! - **mesh**: namespace `mesh`, enrolled: captured by ztunnel in the client pod, HBONE
//!   (mutual TLS, HTTP/2 CONNECT) to the server node's ztunnel, then to the server.
//!
//! - **waypoint**: namespace `waypoint`, enrolled, its `server` Service labelled
//!   `istio.io/use-waypoint`: the client calls the Service address; its ztunnel sends the
//!   request over HBONE to the namespace's waypoint (on `node-b`), which parses the HTTP,
//!   routes it and opens HBONE to the server's ztunnel. Only the request figures (latency,
//!   rates) are measured on it, as for Istio's published waypoint figures.
//!
//! The pairs cross the same veths, bridges and underlay, so the ratio isolates what the mesh
//! adds. Each server pod runs `bench mesh-server` (HTTP/1.1 with 1 kB bodies, a bulk sink, an
//! echo); the load generator ([`loadgen`]) runs in this process, its sockets opened inside the
//! client pod's namespace.

pub(crate) mod plot;
pub(crate) mod procfs;
mod report;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambient_lab::component::Program;
use ambient_lab::process::Proc;
use ambient_lab::{Lab, Mesh, MeshOptions, manifest};
use anyhow::Context;
use loadgen::{ClosedLoop, ConnectionRate, Dial, OpenLoop, Percentiles};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use ztunnel::inpod::netns::Netns;

use report::{Figure, Machine, Target};

pub(crate) const HTTP_PORT: u16 = 8080;
const SINK_PORT: u16 = 5001;
pub(crate) const ECHO_PORT: u16 = 5002;
pub(crate) const NODES: [&str; 2] = ["node-a", "node-b"];
/// The waypoint path's Service addresses (the lab has no Service allocator).
const WAYPOINT_SERVER_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 31);
/// The waypoint Gateway (and its pod's service account), in the `waypoint` namespace.
const WAYPOINT_NAME: &str = "waypoint";

/// The standalone `ztunnel` binary built next to this one (`cargo build --release -p ztunnel`
/// in the same command line as the benchmark, so it is current): what a node runs.
/// Otherwise ztunnels run from this multi-call binary, whose much larger image adds resident
/// pages of its own (relocated data), so memory figures are higher than a node's.
/// The standalone `name` executable (`ztunnel`, `waypoint`) when it was built next to this
/// one, as a node runs it: its memory figures are the deployed ones, where the benchmark's
/// own multi-call binary maps far more code.
fn standalone(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?.with_file_name(name);
    exe.is_file().then_some(exe)
}

/// `standalone` or `multi-call`, for the report.
fn binary_kind(exe: &Option<PathBuf>) -> &'static str {
    if exe.is_some() {
        "standalone"
    } else {
        "multi-call"
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Seconds measured for each throughput, maximum-rate and connection-rate figure.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds measured at the fixed request rate (p99.9 wants ≥ 10,000 samples).
    #[arg(long, default_value_t = 10.0)]
    latency_duration: f64,
    /// Seconds of load before each measurement, not recorded.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Fixed request rate of the latency figures (requests/s over 4 connections).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Open connections at which ztunnel memory is measured.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10000])]
    idle_connections: Vec<usize>,
    /// Only these groups of figures: throughput, latency, rps, conns, memory (default all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Tiny durations and counts: proves the benchmark runs (CI); the figures mean nothing.
    #[arg(long)]
    quick: bool,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the SVG plots into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Keep the sandbox directory (every component's log) and print where it is.
    #[arg(long)]
    keep: bool,
    /// Extra command-line flags for both ztunnels (e.g. `--worker-threads 1`), to compare
    /// settings.
    #[arg(long, allow_hyphen_values = true)]
    ztunnel_args: Option<String>,
    /// Extra command-line flags for the waypoint (e.g. `--worker-threads 1`).
    #[arg(long, allow_hyphen_values = true)]
    waypoint_args: Option<String>,
    /// Run this ztunnel binary (one of ours, e.g. an older build) instead of the one built
    /// next to the benchmark.
    #[arg(long, conflicts_with = "foreign_ztunnel")]
    ztunnel_exe: Option<PathBuf>,
    /// Run another ztunnel implementation in both nodes instead of ours, configured only by
    /// `--foreign-ztunnel-env` (plus `--ztunnel-args`), to compare it in the same lab.
    #[arg(long)]
    foreign_ztunnel: Option<PathBuf>,
    /// `NAME=value` for the foreign ztunnel's environment (repeatable); values may name the
    /// node's `{node}`, `{node_ip}`, `{xds}`, `{root_ca}`, `{token}`, `{zds}`, `{dir}`.
    #[arg(long, requires = "foreign_ztunnel")]
    foreign_ztunnel_env: Vec<String>,
    /// RUST_LOG of the mesh components (`info` logs one access line per connection, as
    /// deployed).
    #[arg(long, default_value = "info")]
    log: String,
}

impl Options {
    fn effective(mut self) -> Self {
        if self.quick {
            self.duration = self.duration.min(0.3);
            self.latency_duration = self.latency_duration.min(0.5);
            self.warmup = self.warmup.min(0.1);
            self.idle_connections = vec![50, 100];
        }
        self
    }

    fn runs(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }
}

/// A way from the client pod to the server pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    /// Not enrolled: plain TCP.
    Direct,
    /// Enrolled: ztunnel → HBONE → ztunnel.
    Mesh,
    /// Enrolled, through the Service's waypoint: ztunnel → HBONE → waypoint → HBONE → ztunnel.
    Waypoint,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Direct, Path::Mesh, Path::Waypoint];
    /// The paths of the L4 figures (throughput, ztunnel memory).
    pub const L4: [Path; 2] = [Path::Direct, Path::Mesh];

    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Mesh => "mesh",
            Path::Waypoint => "waypoint",
        }
    }

    /// The Kubernetes namespace of this path's pods.
    fn namespace(self) -> &'static str {
        self.name()
    }

    fn enrolled(self) -> bool {
        self != Path::Direct
    }
}

/// Entry: outside the sandbox, re-run inside one; inside, run the benchmark.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let nofile = procfs::raise_nofile();
    let keep = opts.keep;
    crate::sandboxed("bench-mesh", keep, move |run_dir| {
        measure(run_dir, opts.effective(), nofile)
    })
}

/// The running cluster and how to reach each path's server.
pub(crate) struct Bench {
    pub(crate) mesh: Mesh,
    clients: BTreeMap<Path, Arc<Netns>>,
    /// Where each path's client sends: the server pod, or for the waypoint path its Service.
    servers: BTreeMap<Path, Ipv4Addr>,
    /// One `bench mesh-server` per path (killed on drop), then the waypoint.
    _procs: Vec<Proc>,
    /// (node, pid) of each ztunnel.
    pub(crate) ztunnels: Vec<(&'static str, u32)>,
    pub(crate) waypoint_pid: u32,
    waypoint_netns: Arc<Netns>,
    /// `standalone` (the `ztunnel` binary) or `multi-call` (`bench component ztunnel`).
    ztunnel_binary: &'static str,
    /// Likewise for the waypoint.
    waypoint_binary: &'static str,
    /// How the waypoint was started (to restart it).
    waypoint_start: WaypointStart,
}

/// What [`start_waypoint`] needs again to restart the waypoint.
struct WaypointStart {
    exe: PathBuf,
    standalone: Option<PathBuf>,
    extra_args: Vec<String>,
    run_dir: PathBuf,
    log: String,
}

/// The settings [`Bench::start`] reads, as the command line gives them.
#[derive(Clone, Debug, Default)]
pub(crate) struct BenchSettings {
    pub(crate) log: String,
    pub(crate) ztunnel_args: Option<String>,
    pub(crate) waypoint_args: Option<String>,
    /// Which ztunnel binary: ours built next to the benchmark unless one is given.
    pub(crate) ztunnel_exe: Option<PathBuf>,
    pub(crate) foreign_ztunnel: Option<ambient_lab::mesh::ForeignZtunnel>,
    /// Lifetime of workload certificates (default: the mesh's, 24 h).
    pub(crate) workload_cert_ttl: Option<Duration>,
    /// The ztunnels' drain period (default: ztunnel's).
    pub(crate) ztunnel_drain: Option<Duration>,
}

impl Options {
    fn settings(&self) -> BenchSettings {
        BenchSettings {
            log: self.log.clone(),
            ztunnel_args: self.ztunnel_args.clone(),
            waypoint_args: self.waypoint_args.clone(),
            ztunnel_exe: self.ztunnel_exe.clone(),
            foreign_ztunnel: self.foreign_ztunnel.as_ref().map(|exe| {
                ambient_lab::mesh::ForeignZtunnel::new(exe.clone(), &self.foreign_ztunnel_env)
                    .unwrap_or_else(|e| {
                        eprintln!("--foreign-ztunnel-env: {e}");
                        std::process::exit(2)
                    })
            }),
            workload_cert_ttl: None,
            ztunnel_drain: None,
        }
    }
}

impl Bench {
    pub(crate) async fn start(run_dir: PathBuf, opts: &BenchSettings) -> anyhow::Result<Bench> {
        let log = opts.log.as_str();
        let exe = std::env::current_exe()?;
        let mut lab = Lab::new(&run_dir)?;
        for node in NODES {
            lab.add_node(node)?;
        }
        // The waypoint pod talks to the controller on the underlay.
        lab.route_pods_from_underlay()?;
        let mut manifests = Vec::new();
        for path in Path::ALL {
            let ns = path.namespace();
            manifests.push((
                format!("namespace-{ns}.yaml"),
                manifest::namespace(ns, path.enrolled()),
            ));
            for (name, node) in [("client", NODES[0]), ("server", NODES[1])] {
                let pod = lab.add_pod(ns, name, node)?;
                manifests.push((
                    format!("pod-{ns}-{name}.yaml"),
                    manifest::pod(pod, name, &[("app", name)], &[("http", HTTP_PORT)]),
                ));
            }
        }
        let ns = Path::Waypoint.namespace();
        let waypoint_pod = lab.add_pod(ns, WAYPOINT_NAME, NODES[1])?;
        manifests.push(("waypoint.yaml".into(), waypoint_manifests(waypoint_pod)));
        let waypoint_netns = waypoint_pod.netns.clone();
        let clients = Path::ALL
            .iter()
            .map(|p| (*p, lab.pod(p.namespace(), "client").netns.clone()))
            .collect();
        let servers = Path::ALL
            .iter()
            .map(|p| match p {
                Path::Waypoint => (*p, WAYPOINT_SERVER_VIP),
                _ => (*p, lab.pod(p.namespace(), "server").ip),
            })
            .collect();
        let mut procs = Vec::new();
        for path in Path::ALL {
            let pod = lab.pod(path.namespace(), "server");
            let log_file = run_dir.join(format!("server-{}.log", path.name()));
            let args: Vec<String> = [
                "mesh-server",
                "--http",
                &HTTP_PORT.to_string(),
                "--sink",
                &SINK_PORT.to_string(),
                "--echo",
                &ECHO_PORT.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            procs.push(Proc::spawn(
                &format!("server-{}", path.name()),
                &pod.netns,
                &exe,
                &args,
                &log_file,
                &[],
            )?);
        }
        let refs: Vec<(&str, String)> = manifests
            .iter()
            .map(|(n, y)| (n.as_str(), y.clone()))
            .collect();
        let mut options = MeshOptions::new(exe.clone());
        options.log_filter = log.to_string();
        options.ztunnel_args = split_args(opts.ztunnel_args.as_deref());
        options.ztunnel_exe = opts.ztunnel_exe.clone().or_else(|| standalone("ztunnel"));
        options.foreign_ztunnel = opts.foreign_ztunnel.clone();
        options.ztunnel_drain = opts.ztunnel_drain;
        if let Some(ttl) = opts.workload_cert_ttl {
            options.workload_cert_ttl = ttl;
        }
        let ztunnel_binary = match options.foreign_ztunnel {
            Some(_) => "foreign",
            None => binary_kind(&options.ztunnel_exe),
        };
        let waypoint_exe = standalone("waypoint");
        let waypoint_binary = binary_kind(&waypoint_exe);
        if let Some(foreign) = &options.foreign_ztunnel {
            eprintln!("ztunnel binary (foreign): {}", foreign.exe.display());
        }
        let ours = [("ztunnel", &options.ztunnel_exe)]
            .into_iter()
            .filter(|_| options.foreign_ztunnel.is_none());
        for (name, standalone) in ours.chain([("waypoint", &waypoint_exe)]) {
            match standalone {
                Some(p) => eprintln!("{name} binary: {}", p.display()),
                None => eprintln!(
                    "{name} binary: {} component {name} (build the standalone one with `cargo \
                     build --release -p {name}` for a node's memory figures)",
                    exe.display()
                ),
            }
        }
        let mesh = Mesh::start(lab, &refs, options).await?;
        let waypoint_start = WaypointStart {
            exe: exe.clone(),
            standalone: waypoint_exe.clone(),
            extra_args: split_args(opts.waypoint_args.as_deref()),
            run_dir: run_dir.clone(),
            log: log.to_string(),
        };
        let waypoint = start_waypoint(&mesh, &waypoint_start, &waypoint_netns).await?;
        let waypoint_pid = waypoint.pid();
        procs.push(waypoint);
        for path in Path::ALL.into_iter().filter(|p| p.enrolled()) {
            for name in ["client", "server"] {
                mesh.enrol(path.namespace(), name, name).await?;
            }
        }
        let ztunnels = NODES
            .iter()
            .map(|node| {
                mesh.ztunnel_pid(node)
                    .map(|pid| (*node, pid))
                    .with_context(|| format!("finding the ztunnel of {node}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Bench {
            mesh,
            clients,
            servers,
            _procs: procs,
            ztunnels,
            waypoint_pid,
            waypoint_netns,
            ztunnel_binary,
            waypoint_binary,
            waypoint_start,
        })
    }

    /// Kills the waypoint (as a crash or an evicted pod would end it) and starts a new one
    /// in its pod; returns once the new one is ready.
    pub(crate) async fn restart_waypoint(&mut self) -> anyhow::Result<()> {
        let mut old = self._procs.pop().context("no waypoint to restart")?;
        old.kill();
        let waypoint =
            start_waypoint(&self.mesh, &self.waypoint_start, &self.waypoint_netns).await?;
        self.waypoint_pid = waypoint.pid();
        self._procs.push(waypoint);
        Ok(())
    }

    /// The waypoint's Prometheus text.
    async fn waypoint_metrics(&self) -> anyhow::Result<String> {
        let (status, body) = ambient_lab::http::get(
            &self.waypoint_netns,
            SocketAddr::from(([127, 0, 0, 1], 15020)),
            "/metrics",
        )
        .await?;
        anyhow::ensure!(status == 200, "waypoint metrics: {status}");
        Ok(body)
    }

    /// Requests the waypoint answered for the waypoint path's server, over mutual TLS.
    async fn waypoint_requests(&self) -> anyhow::Result<f64> {
        let text = self.waypoint_metrics().await?;
        let samples = proxy_core::exposition::parse(&text).map_err(anyhow::Error::msg)?;
        Ok(proxy_core::exposition::sum(
            &samples,
            "istio_requests_total",
            &[
                ("reporter", "waypoint"),
                ("destination_workload", "server"),
                ("connection_security_policy", "mutual_tls"),
            ],
        ))
    }

    /// Opens connections from `path`'s client pod to its server on `port`.
    fn dial(&self, path: Path, port: u16) -> Dial {
        // A broken path fails the run instead of hanging it.
        self.dial_with(path, port, Duration::from_secs(20))
    }

    /// [`Bench::dial`] with `timeout` for connecting, each read and each write.
    pub(crate) fn dial_with(&self, path: Path, port: u16, timeout: Duration) -> Dial {
        let netns = self.clients[&path].clone();
        let addr = SocketAddr::new(IpAddr::V4(self.servers[&path]), port);
        Arc::new(move || {
            let socket =
                netns.run(|| Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)))??;
            socket.set_tcp_nodelay(true)?;
            socket.set_read_timeout(Some(timeout))?;
            socket.set_write_timeout(Some(timeout))?;
            socket.connect_timeout(&addr.into(), timeout.min(Duration::from_secs(10)))?;
            Ok(socket.into())
        })
    }

    fn waypoint_cpu(&self) -> f64 {
        procfs::cpu_seconds(self.waypoint_pid)
    }

    fn waypoint_rss(&self) -> u64 {
        procfs::rss_bytes(self.waypoint_pid)
    }

    /// Both ztunnels' CPU seconds so far.
    fn ztunnel_cpu(&self) -> f64 {
        self.ztunnels
            .iter()
            .map(|(_, pid)| procfs::cpu_seconds(*pid))
            .sum()
    }

    fn ztunnel_rss(&self) -> Vec<u64> {
        self.ztunnels
            .iter()
            .map(|(_, pid)| procfs::rss_bytes(*pid))
            .collect()
    }

    fn ztunnel_rss_anon(&self) -> Vec<u64> {
        self.ztunnels
            .iter()
            .map(|(_, pid)| procfs::rss_anon_bytes(*pid))
            .collect()
    }

    /// Connections node-a's ztunnel has opened to `path`'s server over mutual TLS.
    async fn mtls_connections(&self, path: Path) -> anyhow::Result<f64> {
        let text = self.mesh.metrics(NODES[0]).await?;
        let want = [
            ("reporter", "source".to_string()),
            ("destination_workload", "server".to_string()),
            (
                "destination_workload_namespace",
                path.namespace().to_string(),
            ),
            ("connection_security_policy", "mutual_tls".to_string()),
        ];
        Ok(text
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .filter(|l| {
                want.iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .fold(0.0, |a, b| a + b))
    }
}

/// Runs blocking load-generator work off the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// The waypoint path's objects: its Service (using the waypoint), the waypoint Gateway, and
/// what Istio's deployment controller would make for it (Service, pod labels), as the local
/// runtime makes them.
fn waypoint_manifests(pod: &ambient_lab::topology::Pod) -> String {
    let ns = &pod.namespace;
    let name = WAYPOINT_NAME;
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: {ns}
  labels:
    istio.io/use-waypoint: {name}
spec:
  clusterIP: {WAYPOINT_SERVER_VIP}
  selector:
    app: server
  ports:
  - name: http
    port: {HTTP_PORT}
    targetPort: {HTTP_PORT}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {ns}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
  labels:
    gateway.networking.k8s.io/gateway-name: {name}
spec:
  clusterIP: {WAYPOINT_VIP}
  selector:
    gateway.networking.k8s.io/gateway-name: {name}
  ports:
  - name: mesh
    port: 15008
    targetPort: 15008
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels:
    gateway.networking.k8s.io/gateway-name: {name}
    istio.io/dataplane-mode: none
spec:
  nodeName: {node}
  serviceAccountName: {name}
  containers:
  - name: istio-proxy
    image: waypoint
status:
  phase: Running
  podIP: {ip}
",
        node = pod.node,
        ip = pod.ip,
    )
}

/// Flags given as one string on the command line.
fn split_args(args: Option<&str>) -> Vec<String> {
    args.unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Starts the waypoint process in its pod (as the local runtime's pod would) and waits until
/// it is ready (certificate issued, configuration received). `exe` is this benchmark's
/// multi-call binary and the standalone waypoint, which is run when there is one.
async fn start_waypoint(
    mesh: &Mesh,
    how: &WaypointStart,
    netns: &Arc<Netns>,
) -> anyhow::Result<Proc> {
    let (extra_args, run_dir, log) = (&how.extra_args, &how.run_dir, how.log.as_str());
    let pod = mesh.lab.pod(Path::Waypoint.namespace(), WAYPOINT_NAME);
    let program = match &how.standalone {
        Some(standalone) => Program::standalone(standalone),
        None => Program::multi_call(&how.exe, "waypoint"),
    };
    let waypoint = waypoint::cli::Args {
        service_account: Some(WAYPOINT_NAME.into()),
        trust_domain: mesh.options.trust_domain.clone(),
        node_name: pod.node.clone(),
        instance_ip: pod.ip.to_string(),
        ..waypoint::cli::Args::new(
            &format!("{}/{WAYPOINT_NAME}", pod.namespace),
            &format!("https://{}", ambient_lab::mesh::controller_grpc()),
            mesh.ca_dir().join("root-cert.pem"),
            mesh.token_path(&pod.node),
        )
    };
    let args = program.args(
        waypoint
            .to_args()
            .into_iter()
            .chain(extra_args.iter().cloned()),
    );
    let proc = Proc::spawn(
        "waypoint",
        netns,
        &program.exe,
        &args,
        &run_dir.join("logs").join("waypoint.log"),
        &std::iter::once(("RUST_LOG", log))
            .chain(ambient_controller::deployer::PROXY_ENV.iter().copied())
            .collect::<Vec<_>>(),
    )?;
    let ready = SocketAddr::from(([127, 0, 0, 1], 15021));
    let start = Instant::now();
    loop {
        match ambient_lab::http::get(netns, ready, "/healthz/ready").await {
            Ok((200, _)) => return Ok(proc),
            other if start.elapsed() > Duration::from_secs(30) => {
                anyhow::bail!(
                    "the waypoint is not ready after 30 s ({other:?}):\n{}",
                    proc.log_tail(20)
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until one HTTP request on `dial` succeeds.
pub(crate) async fn reachable(dial: Dial, what: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let d = dial.clone();
        let attempt = blocking(move || loadgen::http::HttpClient::new(d()?).get_and_close()).await;
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                return Err(e.context(format!("{what} not reachable after 30 s")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[derive(Serialize)]
struct Results {
    benchmark: &'static str,
    date: String,
    commit: Option<String>,
    command: String,
    machine: Machine,
    settings: Settings,
    figures: Vec<Figure>,
    /// Path → percentiles (ms) at the fixed rate, from the intended send time.
    latency_ms: BTreeMap<&'static str, Percentiles>,
    /// Path → percentiles (ms) at the fixed rate, from the actual send time.
    service_time_ms: BTreeMap<&'static str, Percentiles>,
    /// Path → connection-rate failures.
    connection_errors: BTreeMap<&'static str, u64>,
    /// mTLS connections node-a's ztunnel reported to the mesh server (proves the mesh path
    /// was taken), and to the direct server (must be 0).
    mtls_connections: BTreeMap<&'static str, f64>,
    /// Requests the waypoint reported for its path's server over mutual TLS (proves the
    /// waypoint path was taken).
    waypoint_requests: f64,
}

#[derive(Serialize)]
struct Settings {
    duration_s: f64,
    latency_duration_s: f64,
    warmup_s: f64,
    rate: f64,
    latency_connections: usize,
    max_rate_connections: usize,
    connection_rate_concurrency: usize,
    response_bytes: usize,
    idle_connections: Vec<usize>,
    nofile_limit: u64,
    /// `MIMALLOC_*` variables the proxies ran with (they change memory figures): the
    /// deployed settings, then any inherited from this process.
    allocator_env: Vec<String>,
    /// Which ztunnel binary ran: `standalone` (as on a node) or `multi-call`.
    ztunnel_binary: &'static str,
    /// Likewise for the waypoint.
    waypoint_binary: &'static str,
    quick: bool,
}

/// (key, name, how to read it from [`Percentiles`]).
type Quantile = (&'static str, &'static str, fn(&Percentiles) -> f64);

const LATENCY_CONNECTIONS: usize = 4;
const MAX_RATE_CONNECTIONS: usize = 8;
const CONNECTION_RATE_CONCURRENCY: usize = 8;

fn progress(what: &str, path: Path, value: String) {
    eprintln!("  {what:<58} {:<7} {value}", path.name());
}

async fn measure(run_dir: PathBuf, opts: Options, nofile: u64) -> anyhow::Result<()> {
    let setup = Instant::now();
    let bench = Bench::start(run_dir, &opts.settings()).await?;
    for path in Path::ALL {
        reachable(bench.dial(path, HTTP_PORT), path.name()).await?;
    }
    eprintln!(
        "mesh up and every path reachable in {:.1} s; ztunnel pids {:?}, waypoint pid {}",
        setup.elapsed().as_secs_f64(),
        bench.ztunnels,
        bench.waypoint_pid
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = bench.ztunnel_rss();
    let idle_anon = bench.ztunnel_rss_anon();
    let waypoint_idle_rss = bench.waypoint_rss();

    let mut figures: Vec<Figure> = Vec::new();
    let (duration, warmup) = (opts.duration(), opts.warmup());

    // L4 throughput.
    let mut cpu_bulk = 0.0;
    let mut bytes_bulk = 0u64;
    for streams in [1usize, 8].into_iter().filter(|_| opts.runs("throughput")) {
        let mut f = Figure::new(
            format!("throughput_{streams}"),
            format!(
                "L4 throughput, {streams} stream{}",
                if streams == 1 { "" } else { "s" }
            ),
            "Gbit/s",
        );
        for path in Path::L4 {
            let dial = bench.dial(path, SINK_PORT);
            let d = dial.clone();
            blocking(move || loadgen::bulk::upload(&d, streams, warmup)).await?;
            let cpu = bench.ztunnel_cpu();
            let t = blocking(move || loadgen::bulk::upload(&dial, streams, duration)).await?;
            if path == Path::Mesh {
                cpu_bulk += bench.ztunnel_cpu() - cpu;
                bytes_bulk += t.bytes;
            }
            progress(&f.label, path, format!("{:.2} Gbit/s", t.gbit_per_s()));
            f.set(path, t.gbit_per_s());
        }
        f.target(Target::RatioAtLeast(if streams == 1 { 0.5 } else { 0.35 }));
        figures.push(f);
    }

    // Latency at a fixed rate.
    let mut latency = BTreeMap::new();
    let mut service = BTreeMap::new();
    let open = OpenLoop {
        rate: opts.rate,
        connections: LATENCY_CONNECTIONS,
        duration: Duration::from_secs_f64(opts.latency_duration),
        warmup,
    };
    // vCPU used at the fixed rate: ztunnels (both nodes) on the mesh path, the waypoint on
    // its path (Istio publishes both per 1,000 requests/s).
    let mut vcpu_at_rate = BTreeMap::new();
    for path in Path::ALL.into_iter().filter(|_| opts.runs("latency")) {
        let dial = bench.dial(path, HTTP_PORT);
        let (zt, wp, t) = (bench.ztunnel_cpu(), bench.waypoint_cpu(), Instant::now());
        let r = blocking(move || loadgen::open_loop(&dial, &open)).await?;
        let seconds = t.elapsed().as_secs_f64();
        vcpu_at_rate.insert(
            path,
            (
                (bench.ztunnel_cpu() - zt) / seconds,
                (bench.waypoint_cpu() - wp) / seconds,
            ),
        );
        let p = r.latency.percentiles();
        progress(
            "HTTP latency at fixed rate",
            path,
            format!(
                "p50 {:.3} p99 {:.3} p99.9 {:.3} ms ({} requests)",
                p.p50, p.p99, p.p999, r.requests
            ),
        );
        latency.insert(path.name(), p);
        service.insert(path.name(), r.service_time.percentiles());
    }
    let rate_label = report_rate(opts.rate);
    let quantiles: [Quantile; 4] = [
        ("p50", "p50", |p| p.p50),
        ("p90", "p90", |p| p.p90),
        ("p99", "p99", |p| p.p99),
        ("p999", "p99.9", |p| p.p999),
    ];
    for (key, name, get) in quantiles.into_iter().filter(|_| opts.runs("latency")) {
        let mut f = Figure::new(
            format!("latency_{key}"),
            format!("HTTP/1.1 latency {name} at {rate_label} req/s, 4 conns, 1 kB"),
            "ms",
        );
        for path in Path::ALL {
            f.set(path, get(&latency[path.name()]));
        }
        if key == "p99" {
            f.target(Target::AddedAtMost(0.3));
        }
        figures.push(f);
    }
    for (key, name, get) in quantiles.into_iter().filter(|_| opts.runs("latency")) {
        let mut f = Figure::new(
            format!("latency_added_{key}"),
            format!("latency added by the mesh, {name}"),
            "ms",
        );
        for path in Path::ALL.into_iter().filter(|p| *p != Path::Direct) {
            f.values.insert(
                path.name(),
                get(&latency[path.name()]) - get(&latency[Path::Direct.name()]),
            );
        }
        if key == "p99" {
            f.target(Target::AtMost(0.3));
        }
        figures.push(f);
    }

    if opts.runs("latency") {
        let mut f = Figure::new(
            "ztunnel_vcpu_at_rate",
            format!("ztunnel vCPU at {rate_label} req/s (both nodes)"),
            "vCPU",
        );
        f.values
            .insert(Path::Mesh.name(), vcpu_at_rate[&Path::Mesh].0);
        f.values
            .insert(Path::Waypoint.name(), vcpu_at_rate[&Path::Waypoint].0);
        figures.push(f);
        let mut f = Figure::new(
            "waypoint_vcpu_at_rate",
            format!("waypoint vCPU at {rate_label} req/s"),
            "vCPU",
        );
        f.values
            .insert(Path::Waypoint.name(), vcpu_at_rate[&Path::Waypoint].1);
        figures.push(f);
    }

    // Maximum request rate.
    let mut cpu_requests = (0.0, 0u64);
    let mut waypoint_cpu_requests = (0.0, 0u64);
    let mut f = Figure::new(
        "max_rps",
        "HTTP/1.1 max requests/s, closed loop, 8 conns",
        "req/s",
    );
    let closed = ClosedLoop {
        connections: MAX_RATE_CONNECTIONS,
        duration,
        warmup,
    };
    for path in Path::ALL.into_iter().filter(|_| opts.runs("rps")) {
        let dial = bench.dial(path, HTTP_PORT);
        let (cpu, wp_cpu) = (bench.ztunnel_cpu(), bench.waypoint_cpu());
        let r = blocking(move || loadgen::closed_loop(&dial, &closed)).await?;
        // The warm-up's requests are not counted, so neither is its CPU: scale to the
        // measured window.
        let measured = duration.as_secs_f64() / (warmup.as_secs_f64() + duration.as_secs_f64());
        match path {
            Path::Mesh => cpu_requests = ((bench.ztunnel_cpu() - cpu) * measured, r.requests),
            Path::Waypoint => {
                waypoint_cpu_requests = ((bench.waypoint_cpu() - wp_cpu) * measured, r.requests)
            }
            Path::Direct => {}
        }
        progress(&f.label, path, format!("{:.0} req/s", r.rate()));
        f.set(path, r.rate());
    }
    f.target(Target::RatioAtLeast(0.25));
    f.target_on(Path::Waypoint, Target::RatioAtLeast(0.5));
    if opts.runs("rps") {
        figures.push(f);
    }

    // New connections per second.
    let mut connection_errors = BTreeMap::new();
    let mut f = Figure::new(
        "connections_per_s",
        "new connections/s (connect, 1 request, close), 8 at once",
        "conn/s",
    );
    let churn = ConnectionRate {
        concurrency: CONNECTION_RATE_CONCURRENCY,
        duration,
        warmup,
    };
    for path in Path::ALL.into_iter().filter(|_| opts.runs("conns")) {
        let dial = bench.dial(path, HTTP_PORT);
        let r = blocking(move || loadgen::connection_rate(&dial, &churn)).await?;
        progress(
            &f.label,
            path,
            format!("{:.0} conn/s ({} errors)", r.rate(), r.errors),
        );
        connection_errors.insert(path.name(), r.errors);
        f.set(path, r.rate());
    }
    f.target(Target::RatioAtLeast(0.35));
    if opts.runs("conns") {
        figures.push(f);
    }

    // ztunnel CPU.
    let gb = bytes_bulk as f64 / 1e9;
    let mut f = Figure::new(
        "ztunnel_cpu_per_gb",
        "ztunnel CPU per GB moved (both nodes)",
        "s/GB",
    );
    f.values.insert(Path::Mesh.name(), cpu_bulk / gb.max(1e-9));
    if opts.runs("throughput") {
        figures.push(f);
    }
    let mut f = Figure::new(
        "ztunnel_cpu_per_10k_requests",
        "ztunnel CPU per 10,000 requests (both nodes)",
        "s",
    );
    f.values.insert(
        Path::Mesh.name(),
        cpu_requests.0 / (cpu_requests.1.max(1) as f64) * 10_000.0,
    );
    if opts.runs("rps") {
        figures.push(f);
    }
    let mut f = Figure::new(
        "waypoint_cpu_per_10k_requests",
        "waypoint CPU per 10,000 requests",
        "s",
    );
    f.values.insert(
        Path::Waypoint.name(),
        waypoint_cpu_requests.0 / (waypoint_cpu_requests.1.max(1) as f64) * 10_000.0,
    );
    if opts.runs("rps") {
        figures.push(f);
    }

    // Waypoint memory: when the mesh came up, and after every request figure.
    for (key, label, bytes) in [
        (
            "waypoint_rss_idle",
            "waypoint memory idle",
            waypoint_idle_rss,
        ),
        (
            "waypoint_rss_after",
            "waypoint memory after the request figures",
            bench.waypoint_rss(),
        ),
    ] {
        let mut f = Figure::new(key, label, "MB");
        f.values.insert(Path::Waypoint.name(), bytes as f64 / 1e6);
        figures.push(f);
    }

    // ztunnel memory: idle, then with connections held open (through the mesh only).
    let sides = ["client node", "server node"];
    for (i, side) in sides.iter().enumerate() {
        let mut f = Figure::new(
            format!("ztunnel_rss_idle_{i}"),
            format!("ztunnel memory idle, {side}"),
            "MB",
        );
        f.values.insert(Path::Mesh.name(), idle_rss[i] as f64 / 1e6);
        f.target(Target::AtMost(8.0));
        figures.push(f);
        let mut f = Figure::new(
            format!("ztunnel_anon_idle_{i}"),
            format!("ztunnel memory idle, {side}, anonymous (heap) part"),
            "MB",
        );
        f.values
            .insert(Path::Mesh.name(), idle_anon[i] as f64 / 1e6);
        figures.push(f);
    }
    let limit = usize::try_from(nofile.saturating_sub(256)).unwrap_or(usize::MAX);
    let counts = if opts.runs("memory") {
        opts.idle_connections.clone()
    } else {
        Vec::new()
    };
    for wanted in counts {
        let n = wanted.min(limit);
        if n < wanted {
            eprintln!(
                "  only {n} connections instead of {wanted}: the open-file limit is {nofile}"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let baseline = bench.ztunnel_rss();
        let dial = bench.dial(Path::Mesh, ECHO_PORT);
        let held = blocking(move || loadgen::bulk::hold_open(&dial, n, 8)).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = bench.ztunnel_rss();
        for (i, side) in sides.iter().enumerate() {
            let mut f = Figure::new(
                format!("ztunnel_rss_{n}_{i}"),
                format!(
                    "ztunnel memory, {} open connections, {side}",
                    report_rate(n as f64)
                ),
                "MB",
            );
            f.values.insert(Path::Mesh.name(), rss[i] as f64 / 1e6);
            figures.push(f);
            let per = (rss[i] as f64 - baseline[i] as f64) / n as f64;
            let mut f = Figure::new(
                format!("ztunnel_bytes_per_connection_{n}_{i}"),
                format!(
                    "ztunnel memory per open connection at {}, {side}",
                    report_rate(n as f64)
                ),
                "kB",
            );
            f.values.insert(Path::Mesh.name(), per / 1e3);
            f.target(Target::AtMost(4.0));
            figures.push(f);
            progress(
                &format!("ztunnel memory, {n} conns, {side}"),
                Path::Mesh,
                format!("{:.1} MB ({:.2} kB/conn)", rss[i] as f64 / 1e6, per / 1e3),
            );
        }
        drop(held);
    }

    let mut mtls = BTreeMap::new();
    for path in Path::L4 {
        mtls.insert(path.name(), bench.mtls_connections(path).await?);
    }
    anyhow::ensure!(
        mtls[Path::Mesh.name()] > 0.0 && mtls[Path::Direct.name()] == 0.0,
        "the mesh path must go through ztunnel over mutual TLS and the direct path must not: {mtls:?}"
    );
    let waypoint_requests = bench.waypoint_requests().await?;
    anyhow::ensure!(
        waypoint_requests > 0.0,
        "the waypoint path must go through the waypoint over mutual TLS (it reported no requests)"
    );

    let results = Results {
        benchmark: "mesh",
        date: report::today(),
        commit: report::commit(),
        command: format!(
            "cargo run --release -p bench -- {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        ),
        machine: Machine::here(),
        settings: Settings {
            duration_s: opts.duration,
            latency_duration_s: opts.latency_duration,
            warmup_s: opts.warmup,
            rate: opts.rate,
            latency_connections: LATENCY_CONNECTIONS,
            max_rate_connections: MAX_RATE_CONNECTIONS,
            connection_rate_concurrency: CONNECTION_RATE_CONCURRENCY,
            response_bytes: loadgen::http::DEFAULT_BODY,
            idle_connections: opts.idle_connections.clone(),
            nofile_limit: nofile,
            allocator_env: ambient_controller::deployer::PROXY_ENV
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain(
                    std::env::vars()
                        .filter(|(k, _)| k.starts_with("MIMALLOC_"))
                        .map(|(k, v)| format!("{k}={v}")),
                )
                .collect(),
            ztunnel_binary: bench.ztunnel_binary,
            waypoint_binary: bench.waypoint_binary,
            quick: opts.quick,
        },
        figures,
        latency_ms: latency,
        service_time_ms: service,
        connection_errors,
        mtls_connections: mtls,
        waypoint_requests,
    };
    println!(
        "\nMesh vs direct TCP — {} ({} cores), Linux {}, {}{}\n",
        results.machine.cpu,
        results.machine.cores,
        results.machine.kernel,
        results.date,
        results
            .commit
            .as_deref()
            .map(|c| format!(", commit {}", &c[..c.len().min(12)]))
            .unwrap_or_default()
    );
    println!("{}", report::table(&results.figures));
    println!(
        "mTLS connections seen by the client node's ztunnel: mesh {}, direct {}; requests \
         served by the waypoint over mTLS: {}",
        results.mtls_connections["mesh"],
        results.mtls_connections["direct"],
        results.waypoint_requests
    );
    if let Some(path) = &opts.json {
        report::write_json(path, &results)?;
        println!("figures written to {}", path.display());
    }
    if let Some(dir) = &opts.plots {
        plots(dir, &results)?;
        println!("plots written to {}", dir.display());
    }
    Ok(())
}

/// 1000 → "1,000".
fn report_rate(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn plots(dir: &std::path::Path, r: &Results) -> anyhow::Result<()> {
    let colors = |p: Path| match p {
        Path::Direct => plot::DIRECT,
        Path::Mesh => plot::MESH,
        Path::Waypoint => plot::WAYPOINT,
    };
    let value = |key: &str, p: Path| {
        r.figures
            .iter()
            .find(|f| f.key == key)
            .and_then(|f| f.get(p))
            .unwrap_or(f64::NAN)
    };
    let latency: Vec<plot::Series<'_>> = Path::ALL
        .iter()
        .map(|p| {
            let l = r.latency_ms.get(p.name()).copied().unwrap_or_default();
            plot::Series {
                name: p.name(),
                color: colors(*p),
                values: vec![l.p50, l.p90, l.p99, l.p999],
            }
        })
        .collect();
    plot::grouped_bars(
        &dir.join("mesh-latency.svg"),
        &format!(
            "HTTP/1.1 latency at {} req/s (4 connections, 1 kB responses)",
            report_rate(r.settings.rate)
        ),
        "milliseconds",
        &["p50", "p90", "p99", "p99.9"].map(String::from),
        &latency,
        &[],
    )?;
    let throughput: Vec<plot::Series<'_>> = Path::L4
        .iter()
        .map(|p| plot::Series {
            name: p.name(),
            color: colors(*p),
            values: vec![value("throughput_1", *p), value("throughput_8", *p)],
        })
        .collect();
    plot::grouped_bars(
        &dir.join("mesh-throughput.svg"),
        "L4 throughput between two nodes",
        "Gbit/s",
        &["1 stream", "8 streams"].map(String::from),
        &throughput,
        &[],
    )?;
    // Every compared figure as a fraction of direct, with its target.
    let compared: Vec<&Figure> = r
        .figures
        .iter()
        .filter(|f| {
            [
                "throughput_1",
                "throughput_8",
                "max_rps",
                "connections_per_s",
            ]
            .contains(&f.key.as_str())
        })
        .collect();
    let groups: Vec<String> = ["1 stream", "8 streams", "max req/s", "new conn/s"]
        .map(String::from)
        .to_vec();
    let ratios: Vec<plot::Series<'_>> = Path::ALL
        .iter()
        .filter(|p| **p != Path::Direct)
        .map(|p| plot::Series {
            name: p.name(),
            color: colors(*p),
            values: compared
                .iter()
                .map(|f| f.ratio_to_direct.get(p.name()).copied().unwrap_or(f64::NAN))
                .collect(),
        })
        .collect();
    // Targets: the mesh's for each group (series 0), the waypoint's maximum rate (series 1).
    let marks: Vec<plot::Mark> = [0.5, 0.35, 0.25, 0.35]
        .iter()
        .enumerate()
        .map(|(group, value)| plot::Mark {
            group,
            series: 0,
            value: *value,
        })
        .chain(std::iter::once(plot::Mark {
            group: 2,
            series: 1,
            value: 0.5,
        }))
        .collect();
    plot::grouped_bars(
        &dir.join("mesh-ratios.svg"),
        "Mesh and waypoint as a fraction of direct TCP (red: target)",
        "path ÷ direct",
        &groups,
        &ratios,
        &marks,
    )?;
    Ok(())
}
