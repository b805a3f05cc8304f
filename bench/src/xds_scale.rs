//! How fast the controller gets a change to every proxy in a large cluster.
//!
//! A fake Kubernetes API server holds the cluster (pods spread over nodes, services selecting
//! pods, enrolled namespaces); the controller runs as its own process in Kubernetes mode
//! against it; `clients` xDS clients (real TLS gRPC streams, authenticated by TokenReview,
//! ACKing like ztunnel) subscribe to everything. Figures: time until every client holds the
//! initial configuration; for each of `changes` single-pod edits, the time from the API
//! write until every client has the new version (p50/p90/p99/max); bytes pushed per change;
//! the controller's resident memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambient_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use ambient_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambient_proto::istio::workload as wds;
use ambient_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use anyhow::Context;
use fake_apiserver::FakeApiServer;
use prost::Message;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// xDS clients (simulated ztunnels).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Single-pod changes to time.
    #[arg(long, default_value_t = 40)]
    changes: usize,
    /// Then a burst of this many single-pod changes, written at once (0: none).
    #[arg(long, default_value_t = 1_000)]
    burst: usize,
    /// The controller's debounce quiet period.
    #[arg(long, default_value_t = 100)]
    debounce_quiet_ms: u64,
    /// Write the figures here as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Results {
    pods: usize,
    services: usize,
    clients: usize,
    changes: usize,
    debounce_quiet_ms: u64,
    initial_sync_seconds: f64,
    initial_bytes_per_client: u64,
    change_to_all_clients_ms: Percentiles,
    change_to_first_client_ms: Percentiles,
    bytes_pushed_per_change_per_client: f64,
    burst: Option<Burst>,
    controller_rss_mb_after_sync: f64,
    controller_rss_mb_after_changes: f64,
    controller_peak_rss_mb: f64,
}

/// The burst: from its first API write until every client holds every change.
#[derive(Serialize)]
struct Burst {
    changes: usize,
    /// Writing them all into the API server.
    write_ms: f64,
    /// First write → every client has every change.
    to_all_clients_ms: f64,
    /// Last write → every client has every change.
    after_last_write_ms: f64,
    /// Responses one client received for the burst (pushes it took).
    responses_per_client: u64,
}

#[derive(Serialize)]
pub(crate) struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

pub(crate) fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: *v.last().expect("non-empty"),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn rss_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// What every client saw, shared with the measuring task.
#[derive(Default)]
struct Observed {
    /// client → resources held.
    held: Vec<usize>,
    /// client → bytes received.
    bytes: Vec<u64>,
    /// client → responses received.
    responses: Vec<u64>,
    /// (pod uid, revision) → arrival instants at each client.
    arrivals: HashMap<(String, String), Vec<Instant>>,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(opts))
}

/// Pod `i` of a cluster of `namespaces` namespaces, `services` services and `nodes` nodes:
/// spread over namespaces round robin, selected by one service of its namespace.
pub(crate) fn pod(
    i: usize,
    namespaces: usize,
    services: usize,
    nodes: usize,
    revision: &str,
) -> serde_json::Value {
    let ns = format!("ns-{}", i % namespaces);
    let svc = (i / namespaces) % (services / namespaces).max(1);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i}"), "namespace": ns,
                     "labels": {"app": format!("svc-{svc}"), "version": revision}},
        "spec": {"nodeName": format!("node-{}", i % nodes), "serviceAccountName": format!("sa-{svc}"),
                 "containers": [{"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256),
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// Service `s` (`svc-<n>` in `ns-<s mod namespaces>`), selecting its pods' `http` port.
pub(crate) fn service(s: usize, namespaces: usize) -> serde_json::Value {
    let local = s / namespaces;
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{local}"), "namespace": format!("ns-{}", s % namespaces)},
        "spec": {"clusterIP": format!("10.96.{}.{}", s / 256, s % 256),
                 "selector": {"app": format!("svc-{local}")},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
}

async fn bench(opts: Options) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let api = FakeApiServer::start().await?;
    println!(
        "building the cluster: {} pods, {} services, {} namespaces, {} nodes",
        opts.pods, opts.services, opts.namespaces, opts.nodes
    );
    for n in 0..opts.namespaces {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns-{n}"), "labels": {"istio.io/dataplane-mode": "ambient"}}}));
    }
    for s in 0..opts.services {
        api.apply(service(s, opts.namespaces));
    }
    for i in 0..opts.pods {
        api.apply(pod(i, opts.namespaces, opts.services, opts.nodes, "v0"));
    }
    for c in 0..opts.clients {
        api.add_token(
            &format!("token-{c}"),
            "system:serviceaccount:istio-system:ztunnel",
            Some(&format!("node-{c}")),
        );
    }
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let monitoring: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;

    let start = Instant::now();
    // BENCH_CONTROLLER_WRAPPER (e.g. "valgrind --tool=massif") runs the controller under a tool.
    let wrapper = std::env::var("BENCH_CONTROLLER_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut controller = match words.next() {
        Some(tool) => {
            let mut c = std::process::Command::new(tool);
            c.args(words).arg(std::env::current_exe()?);
            c
        }
        None => std::process::Command::new(std::env::current_exe()?),
    };
    let mut controller = controller
        .args(["controller", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--grpc-addr",
            &grpc.to_string(),
            "--monitoring-addr",
            &monitoring.to_string(),
        ])
        .arg("--ca-dir")
        .arg(dir.path().join("ca"))
        .args(["--debounce-quiet-ms", &opts.debounce_quiet_ms.to_string()])
        .env("RUST_LOG", "warn")
        .envs(std::env::var("BENCH_CONTROLLER_ENV").ok().and_then(|v| {
            v.split_once("=")
                .map(|(k, v)| (k.to_string(), v.to_string()))
        }))
        .spawn()
        .context("starting the controller")?;
    let pid = controller.id();
    let root = loop {
        if let Ok(r) = std::fs::read(dir.path().join("ca").join("root-cert.pem")) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let observed = Arc::new(Mutex::new(Observed {
        held: vec![0; opts.clients],
        bytes: vec![0; opts.clients],
        responses: vec![0; opts.clients],
        ..Default::default()
    }));
    let progress = Arc::new(Notify::new());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&root))
        .domain_name("istiod.istio-system.svc");
    for c in 0..opts.clients {
        let endpoint = Endpoint::from_shared(format!("https://{grpc}"))?.tls_config(tls.clone())?;
        tokio::spawn(client(c, endpoint, observed.clone(), progress.clone()));
    }
    let expected = opts.pods + opts.services;
    loop {
        let done = observed
            .lock()
            .expect("poisoned")
            .held
            .iter()
            .all(|h| *h >= expected);
        if done {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("initial sync did not finish in 10 minutes");
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), progress.notified()).await;
    }
    let initial_sync = start.elapsed();
    let initial_bytes =
        observed.lock().expect("poisoned").bytes.iter().sum::<u64>() / opts.clients as u64;
    let rss_after_sync = rss_mb(pid, "VmRSS:");
    println!(
        "initial sync: every client holds {expected} resources after {:.2} s ({:.1} MB each)",
        initial_sync.as_secs_f64(),
        initial_bytes as f64 / 1e6
    );

    let bytes_before = observed.lock().expect("poisoned").bytes.iter().sum::<u64>();
    let mut to_all = Vec::new();
    let mut to_first = Vec::new();
    for k in 1..=opts.changes {
        let i = (k * 7919) % opts.pods;
        let revision = format!("v{k}");
        let key = (
            format!("Kubernetes//Pod/ns-{}/pod-{i}", i % opts.namespaces),
            revision.clone(),
        );
        // Each change alone: nothing else pushed for twice the quiet period.
        tokio::time::sleep(Duration::from_millis(opts.debounce_quiet_ms * 2)).await;
        let t0 = Instant::now();
        api.apply(pod(
            i,
            opts.namespaces,
            opts.services,
            opts.nodes,
            &revision,
        ));
        loop {
            let arrived = observed
                .lock()
                .expect("poisoned")
                .arrivals
                .get(&key)
                .map(|v| v.len())
                .unwrap_or(0);
            if arrived >= opts.clients {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("change {k} did not reach every client within 60 s ({arrived} did)");
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), progress.notified()).await;
        }
        let arrivals = observed.lock().expect("poisoned").arrivals[&key].clone();
        let ms = |t: &Instant| t.duration_since(t0).as_secs_f64() * 1000.0;
        to_all.push(arrivals.iter().map(ms).fold(0.0, f64::max));
        to_first.push(arrivals.iter().map(ms).fold(f64::MAX, f64::min));
    }
    let bytes_after = observed.lock().expect("poisoned").bytes.iter().sum::<u64>();
    let burst = match opts.burst {
        0 => None,
        n => Some(burst(&api, &opts, n, &observed, &progress).await?),
    };
    let results = Results {
        pods: opts.pods,
        services: opts.services,
        clients: opts.clients,
        changes: opts.changes,
        debounce_quiet_ms: opts.debounce_quiet_ms,
        initial_sync_seconds: initial_sync.as_secs_f64(),
        initial_bytes_per_client: initial_bytes,
        change_to_all_clients_ms: percentiles(to_all),
        change_to_first_client_ms: percentiles(to_first),
        bytes_pushed_per_change_per_client: (bytes_after - bytes_before) as f64
            / opts.changes as f64
            / opts.clients as f64,
        burst,
        controller_rss_mb_after_sync: rss_after_sync,
        controller_rss_mb_after_changes: rss_mb(pid, "VmRSS:"),
        controller_peak_rss_mb: rss_mb(pid, "VmHWM:"),
    };
    // SIGTERM first, so a wrapping tool (a profiler) can write its output.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    for _ in 0..100 {
        if controller.try_wait()?.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = controller.kill();
    let _ = controller.wait();
    let c = &results.change_to_all_clients_ms;
    let f = &results.change_to_first_client_ms;
    println!(
        "change → every client ({} changes, debounce quiet {} ms): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        opts.changes, opts.debounce_quiet_ms, c.p50, c.p90, c.p99, c.max
    );
    println!(
        "change → first client: p50 {:.1} ms, p99 {:.1} ms",
        f.p50, f.p99
    );
    println!(
        "bytes pushed per change per client: {:.0}",
        results.bytes_pushed_per_change_per_client
    );
    if let Some(b) = &results.burst {
        println!(
            "burst of {} changes (written in {:.1} ms) → every client: {:.1} ms from the first write, {:.1} ms after the last, in {} responses",
            b.changes,
            b.write_ms,
            b.to_all_clients_ms,
            b.after_last_write_ms,
            b.responses_per_client
        );
    }
    println!(
        "controller resident memory: {:.1} MB after sync, {:.1} MB after the changes, peak {:.1} MB",
        results.controller_rss_mb_after_sync,
        results.controller_rss_mb_after_changes,
        results.controller_peak_rss_mb
    );
    let text = serde_json::to_string_pretty(&results)?;
    match &opts.json {
        Some(p) => std::fs::write(p, text)?,
        None => println!("{text}"),
    }
    Ok(())
}

/// Writes `n` changes of distinct pods at once and waits until every client holds them all.
async fn burst(
    api: &FakeApiServer,
    opts: &Options,
    n: usize,
    observed: &Mutex<Observed>,
    progress: &Notify,
) -> anyhow::Result<Burst> {
    // Quiet first, so the burst starts as a lone change would.
    tokio::time::sleep(Duration::from_millis(opts.debounce_quiet_ms * 2)).await;
    let n = n.min(opts.pods);
    let pods: Vec<usize> = (0..n).map(|j| (j * 7919 + 1) % opts.pods).collect();
    let keys: Vec<(String, String)> = pods
        .iter()
        .enumerate()
        .map(|(j, i)| {
            (
                format!("Kubernetes//Pod/ns-{}/pod-{i}", i % opts.namespaces),
                format!("b{j}"),
            )
        })
        .collect();
    let responses_before = observed.lock().expect("poisoned").responses[0];
    let t0 = Instant::now();
    for (i, (_, revision)) in pods.iter().zip(&keys) {
        api.apply(pod(
            *i,
            opts.namespaces,
            opts.services,
            opts.nodes,
            revision,
        ));
    }
    let written = t0.elapsed();
    loop {
        let missing = {
            let o = observed.lock().expect("poisoned");
            keys.iter()
                .filter(|k| o.arrivals.get(*k).map(Vec::len).unwrap_or(0) < opts.clients)
                .count()
        };
        if missing == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            anyhow::bail!(
                "{missing} of the burst's {n} changes missing at some client after 120 s"
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), progress.notified()).await;
    }
    let o = observed.lock().expect("poisoned");
    let last = keys
        .iter()
        .flat_map(|k| o.arrivals[k].iter())
        .max()
        .copied()
        .expect("arrivals");
    Ok(Burst {
        changes: n,
        write_ms: written.as_secs_f64() * 1000.0,
        to_all_clients_ms: last.duration_since(t0).as_secs_f64() * 1000.0,
        after_last_write_ms: last.duration_since(t0 + written).as_secs_f64() * 1000.0,
        responses_per_client: o.responses[0] - responses_before,
    })
}

/// One simulated ztunnel: subscribes to everything, counts what it holds, ACKs each response,
/// and notes when each workload revision arrives.
async fn client(
    c: usize,
    endpoint: Endpoint,
    observed: Arc<Mutex<Observed>>,
    progress: Arc<Notify>,
) {
    let channel = loop {
        match endpoint.connect().await {
            Ok(ch) => break ch,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut ads = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(1 << 30);
    let (tx, rx) = mpsc::channel(4);
    for t in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
        let _ = tx
            .send(DeltaDiscoveryRequest {
                type_url: t.into(),
                ..Default::default()
            })
            .await;
    }
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer token-{c}").parse().expect("header"),
    );
    let mut stream = match ads.delta_aggregated_resources(req).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            eprintln!("client {c}: {e}");
            return;
        }
    };
    let mut held = std::collections::HashSet::new();
    while let Ok(Some(r)) = stream.message().await {
        let now = Instant::now();
        let mut bytes = 0u64;
        let mut revisions = Vec::new();
        for res in &r.resources {
            if let Some(any) = &res.resource {
                bytes += any.value.len() as u64;
                if r.type_url == ADDRESS_TYPE_URL
                    && res.name.starts_with("Kubernetes//Pod/")
                    && held.contains(&res.name)
                {
                    // An update of a pod we hold: what the benchmark times.
                    if let Ok(wds::Address {
                        r#type: Some(wds::address::Type::Workload(w)),
                    }) = wds::Address::decode(any.value.as_ref())
                    {
                        revisions.push((res.name.clone(), w.canonical_revision));
                    }
                }
            }
            if r.type_url == ADDRESS_TYPE_URL {
                held.insert(res.name.clone());
            }
        }
        for n in &r.removed_resources {
            held.remove(n);
        }
        {
            let mut o = observed.lock().expect("poisoned");
            o.held[c] = held.len();
            o.bytes[c] += bytes;
            o.responses[c] += 1;
            for key in revisions {
                o.arrivals.entry(key).or_default().push(now);
            }
        }
        progress.notify_waiters();
        let _ = tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await;
    }
}
