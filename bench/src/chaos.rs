//! `bench chaos`: steady traffic between known workloads while the mesh's components fail,
//! one event at a time, and what each event cost: requests that failed, connections that
//! dropped, and how long until new connections succeeded again.
//!
//! The cluster is `bench mesh`'s (a client and a server pod per path, node-a → node-b, a
//! waypoint on node-b). The traffic, all from the client pods, runs for the whole benchmark:
//!
//! - keep-alive HTTP through the ztunnels (mesh path) and through the waypoint, each on a
//!   few connections at a fixed rate; a connection that fails is replaced at once;
//! - a new connection for every request (mesh path), at a fixed rate;
//! - long-lived streams (mesh path) that echo 8 bytes every 100 ms.
//!
//! Workload certificates live `--cert-ttl` seconds (short, so every window also spans
//! rotations); the `rotation` event is a window in which nothing else happens.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use loadgen::Dial;
use loadgen::http::HttpClient;

use crate::mesh::{Bench, BenchSettings, ECHO_PORT, HTTP_PORT, NODES, Path, reachable};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Only these events (default all): controller, agent, ztunnel, ztunnel-upgrade, waypoint,
    /// rotation, policy-storm.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Seconds the controller stays down.
    #[arg(long, default_value_t = 30.0)]
    controller_outage: f64,
    /// Seconds of traffic observed after each event ends (and before the next begins).
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Lifetime of workload certificates, seconds.
    #[arg(long, default_value_t = 20)]
    cert_ttl: u64,
    /// The ztunnels' drain period (`--drain-seconds`): how long a replaced ztunnel goes on
    /// relaying its open connections.
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// Requests per second of each keep-alive load, and of new connections.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Short outage, settle and storm: proves the benchmark runs; the figures mean little.
    #[arg(long)]
    quick: bool,
    /// Keep the sandbox directory (every component's log) and print where it is.
    #[arg(long)]
    keep: bool,
    /// RUST_LOG of the mesh components.
    #[arg(long, default_value = "info")]
    log: String,
}

/// A kind of traffic, each measured on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Load {
    /// Keep-alive HTTP, ztunnel to ztunnel.
    KeepAlive,
    /// Keep-alive HTTP through the waypoint.
    KeepAliveWaypoint,
    /// One connection per request, ztunnel to ztunnel.
    NewConnections,
    /// Long-lived echo streams, ztunnel to ztunnel.
    Streams,
}

/// One request or exchange, as a load saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    at: Instant,
    load: Load,
    ok: bool,
    /// An established connection broke (not a refused or failed new one).
    dropped: bool,
}

pub(crate) type Samples = Arc<Mutex<Vec<Sample>>>;

/// The failures to inject, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Controller,
    Agent,
    Ztunnel,
    ZtunnelUpgrade,
    Waypoint,
    Rotation,
    PolicyStorm,
}

impl Event {
    const ALL: [Event; 7] = [
        Event::Controller,
        Event::Agent,
        Event::Ztunnel,
        Event::ZtunnelUpgrade,
        Event::Waypoint,
        Event::Rotation,
        Event::PolicyStorm,
    ];

    fn name(self) -> &'static str {
        match self {
            Event::Controller => "controller",
            Event::Agent => "agent",
            Event::Ztunnel => "ztunnel",
            Event::ZtunnelUpgrade => "ztunnel-upgrade",
            Event::Waypoint => "waypoint",
            Event::Rotation => "rotation",
            Event::PolicyStorm => "policy-storm",
        }
    }

    fn describe(self, opts: &Options) -> String {
        match self {
            Event::Controller => format!(
                "controller killed, restarted after {:.0} s",
                opts.controller_outage
            ),
            Event::Agent => "server node's agent restarted".into(),
            Event::Ztunnel => "server node's ztunnel killed and restarted".into(),
            Event::ZtunnelUpgrade => format!(
                "server node's ztunnel replaced (new one ready, old one drains {} s)",
                opts.drain_seconds
            ),
            Event::Waypoint => "waypoint killed and restarted".into(),
            Event::Rotation => format!("certificates rotating ({} s TTL)", opts.cert_ttl),
            Event::PolicyStorm => "50 unrelated policy edits/s for 10 s".into(),
        }
    }

    /// The target for this event.
    fn target(self) -> &'static str {
        match self {
            Event::Controller | Event::Agent | Event::Rotation | Event::PolicyStorm => {
                "0 failed requests"
            }
            Event::Ztunnel => "new connections succeed within 1 s",
            Event::ZtunnelUpgrade => "0 refused; open ones go on for the drain period",
            Event::Waypoint => "under 1 s of failures",
        }
    }
}

/// What one event cost.
struct Outcome {
    event: Event,
    failed: BTreeMap<Load, u64>,
    total: BTreeMap<Load, u64>,
    dropped: u64,
    /// From the event's start to the first new connection that succeeded after the last
    /// one that failed (zero when none failed).
    recovery: Duration,
    /// From the first failure to the last, over every load.
    failing_for: Duration,
}

/// Entry: outside the sandbox, re-run inside one; inside, run the events.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let keep = opts.keep;
    crate::sandboxed("bench-chaos", keep, move |run_dir| chaos(run_dir, opts))
}

/// The loads of a chaos or soak run, on threads of their own until [`Traffic::stop`].
pub(crate) struct Traffic {
    pub(crate) samples: Samples,
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// Short timeouts: a stalled exchange counts as a failure within a second or two.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until both the mesh path and the waypoint path answer.
pub(crate) async fn wait_reachable(bench: &Bench) -> anyhow::Result<()> {
    reachable(
        bench.dial_with(Path::Mesh, HTTP_PORT, EXCHANGE_TIMEOUT),
        "mesh",
    )
    .await?;
    reachable(
        bench.dial_with(Path::Waypoint, HTTP_PORT, EXCHANGE_TIMEOUT),
        "waypoint",
    )
    .await
}

impl Traffic {
    /// Starts every load at `rate` requests per second each.
    pub(crate) fn start(bench: &Bench, rate: f64) -> Traffic {
        let http = |path| bench.dial_with(path, HTTP_PORT, EXCHANGE_TIMEOUT);
        let (mesh_http, waypoint_http) = (http(Path::Mesh), http(Path::Waypoint));
        let echo = bench.dial_with(Path::Mesh, ECHO_PORT, EXCHANGE_TIMEOUT);
        let samples: Samples = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
        let mut workers = Vec::new();
        for (load, dial, connections) in [
            (Load::KeepAlive, &mesh_http, 4),
            (Load::KeepAliveWaypoint, &waypoint_http, 4),
        ] {
            for _ in 0..connections {
                let (dial, samples, stop) = (dial.clone(), samples.clone(), stop.clone());
                let every = interval * connections;
                workers.push(std::thread::spawn(move || {
                    keep_alive(load, &dial, every, &samples, &stop)
                }));
            }
        }
        {
            let (dial, samples, stop) = (mesh_http.clone(), samples.clone(), stop.clone());
            workers.push(std::thread::spawn(move || {
                new_connections(&dial, interval, &samples, &stop)
            }));
        }
        for _ in 0..4 {
            let (dial, samples, stop) = (echo.clone(), samples.clone(), stop.clone());
            workers.push(std::thread::spawn(move || {
                streams(&dial, Duration::from_millis(100), &samples, &stop)
            }));
        }
        Traffic {
            samples,
            stop,
            workers,
        }
    }

    /// Exchanges so far and how many failed.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let samples = self.samples.lock().expect("poisoned");
        let failed = samples.iter().filter(|s| !s.ok).count() as u64;
        (samples.len() as u64, failed)
    }

    /// Stops every load and waits for its thread.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            let _ = w.join();
        }
    }
}

async fn chaos(run_dir: std::path::PathBuf, mut opts: Options) -> anyhow::Result<()> {
    if opts.quick {
        opts.controller_outage = opts.controller_outage.min(2.0);
        opts.settle = opts.settle.min(1.0);
    }
    let settings = BenchSettings {
        log: opts.log.clone(),
        workload_cert_ttl: Some(Duration::from_secs(opts.cert_ttl.max(1))),
        ztunnel_drain: Some(Duration::from_secs(opts.drain_seconds)),
        ..BenchSettings::default()
    };
    let mut bench = Bench::start(run_dir, &settings).await?;
    wait_reachable(&bench).await?;

    let traffic = Traffic::start(&bench, opts.rate);
    let samples = traffic.samples.clone();
    let settle = Duration::from_secs_f64(opts.settle);
    tokio::time::sleep(settle).await;
    let baseline = summarize(
        Event::Rotation,
        &samples,
        Instant::now() - settle,
        Instant::now(),
    );
    let baseline_failed: u64 = baseline.failed.values().sum();
    eprintln!(
        "traffic steady: {} exchanges in {:.0} s before the first event, {baseline_failed} failed",
        baseline.total.values().sum::<u64>(),
        settle.as_secs_f64()
    );

    let mut outcomes = Vec::new();
    for event in Event::ALL
        .into_iter()
        .filter(|e| opts.only.is_empty() || opts.only.iter().any(|o| o == e.name()))
    {
        eprintln!("event: {}", event.describe(&opts));
        let start = Instant::now();
        inject(event, &mut bench, &opts).await?;
        tokio::time::sleep(settle).await;
        let outcome = summarize(event, &samples, start, Instant::now());
        eprintln!("  {}", row(&outcome));
        outcomes.push(outcome);
    }
    traffic.stop();

    println!(
        "\nbench chaos: {} req/s per load, certificates live {} s",
        opts.rate, opts.cert_ttl
    );
    println!(
        "{:<13} {:>17} {:>17} {:>13} {:>8} {:>9} {:>9}  {:<36} target",
        "event",
        "keep-alive failed",
        "via waypoint",
        "new conns",
        "dropped",
        "recovery",
        "failing",
        "what"
    );
    for o in &outcomes {
        println!(
            "{}  {:<36} {}",
            row(o),
            o.event.describe(&opts),
            o.event.target()
        );
    }
    Ok(())
}

/// One line of the table: each load's failures out of its total, drops, recovery.
fn row(o: &Outcome) -> String {
    let of = |load| {
        format!(
            "{}/{}",
            o.failed.get(&load).copied().unwrap_or(0),
            o.total.get(&load).copied().unwrap_or(0)
        )
    };
    format!(
        "{:<13} {:>17} {:>17} {:>13} {:>8} {:>8.2}s {:>8.2}s",
        o.event.name(),
        of(Load::KeepAlive),
        of(Load::KeepAliveWaypoint),
        of(Load::NewConnections),
        o.dropped,
        o.recovery.as_secs_f64(),
        o.failing_for.as_secs_f64()
    )
}

async fn inject(event: Event, bench: &mut Bench, opts: &Options) -> anyhow::Result<()> {
    let server_node = NODES[1];
    match event {
        Event::Controller => {
            bench.mesh.kill_controller();
            tokio::time::sleep(Duration::from_secs_f64(opts.controller_outage)).await;
            bench.mesh.restart_controller().await?;
        }
        Event::Agent => bench.mesh.restart_agent(server_node).await?,
        Event::Ztunnel => {
            bench.mesh.kill_ztunnel(server_node)?;
            bench.mesh.start_ztunnel(server_node).await?;
        }
        Event::ZtunnelUpgrade => {
            let mut old = bench.mesh.upgrade_ztunnel(server_node).await?;
            let replaced = Instant::now();
            let limit = Duration::from_secs(opts.drain_seconds + 10);
            match old.exit_within(limit).await {
                Some(status) => eprintln!(
                    "  the old ztunnel exited {:.2} s after SIGTERM ({status})",
                    replaced.elapsed().as_secs_f64()
                ),
                None => {
                    old.kill();
                    anyhow::bail!("the old ztunnel was still running {limit:?} after SIGTERM");
                }
            }
        }
        Event::Waypoint => bench.restart_waypoint().await?,
        Event::Rotation => {
            // Two lifetimes: every certificate is replaced at least once.
            let window = Duration::from_secs(opts.cert_ttl.max(1) * 2);
            tokio::time::sleep(if opts.quick {
                window.min(Duration::from_secs(2))
            } else {
                window
            })
            .await;
        }
        Event::PolicyStorm => {
            let edits = if opts.quick { 50 } else { 500 };
            for i in 0..edits {
                bench
                    .mesh
                    .write_manifest("storm.yaml", &storm_policy(i))
                    .context("writing a policy")?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            bench.mesh.remove_manifest("storm.yaml")?;
        }
    }
    Ok(())
}

/// An AuthorizationPolicy of a namespace no workload runs in, different at every edit.
pub(crate) fn storm_policy(i: u32) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: storm
  namespace: elsewhere
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: [\"{}\"]
",
        1000 + i % 50_000
    )
}

fn summarize(event: Event, samples: &Samples, from: Instant, to: Instant) -> Outcome {
    let window: Vec<Sample> = samples
        .lock()
        .expect("poisoned")
        .iter()
        .filter(|s| s.at >= from && s.at <= to)
        .copied()
        .collect();
    let mut outcome = Outcome {
        event,
        failed: BTreeMap::new(),
        total: BTreeMap::new(),
        dropped: 0,
        recovery: Duration::ZERO,
        failing_for: Duration::ZERO,
    };
    for s in &window {
        *outcome.total.entry(s.load).or_default() += 1;
        if !s.ok {
            *outcome.failed.entry(s.load).or_default() += 1;
        }
        outcome.dropped += u64::from(s.dropped);
    }
    let failures: Vec<Instant> = window.iter().filter(|s| !s.ok).map(|s| s.at).collect();
    if let (Some(first), Some(last)) = (failures.iter().min(), failures.iter().max()) {
        outcome.failing_for = *last - *first;
    }
    let new = |ok: bool| {
        window
            .iter()
            .filter(move |s| s.load == Load::NewConnections && s.ok == ok)
    };
    if let Some(last_failure) = new(false).map(|s| s.at).max() {
        outcome.recovery = new(true)
            .map(|s| s.at)
            .filter(|at| *at > last_failure)
            .min()
            .map_or(to - from, |at| at - from);
    }
    outcome
}

fn record(samples: &Samples, load: Load, ok: bool, dropped: bool) {
    samples.lock().expect("poisoned").push(Sample {
        at: Instant::now(),
        load,
        ok,
        dropped,
    });
}

/// Sleeps until `next`, then moves it one `every` on (skipping ticks already missed).
fn tick(next: &mut Instant, every: Duration) {
    let now = Instant::now();
    if *next > now {
        std::thread::sleep(*next - now);
    }
    *next += every;
    if *next < Instant::now() {
        *next = Instant::now() + every;
    }
}

/// One connection at a time, opened with `open` and used for one `exchange` every `every`;
/// a failed exchange drops it (counted as dropped) and the next tick dials a new one.
fn persistent<C>(
    load: Load,
    (dial, every): (&Dial, Duration),
    (samples, stop): (&Samples, &AtomicBool),
    open: impl Fn(std::net::TcpStream) -> C,
    mut exchange: impl FnMut(&mut C) -> bool,
) {
    let mut connection: Option<C> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tick(&mut next, every);
        let established = connection.is_some();
        let mut c = match connection.take() {
            Some(c) => c,
            None => match dial() {
                Ok(s) => open(s),
                Err(_) => {
                    record(samples, load, false, false);
                    continue;
                }
            },
        };
        let ok = exchange(&mut c);
        record(samples, load, ok, !ok && established);
        if ok {
            connection = Some(c);
        }
    }
}

fn keep_alive(load: Load, dial: &Dial, every: Duration, samples: &Samples, stop: &AtomicBool) {
    persistent(load, (dial, every), (samples, stop), HttpClient::new, |c| {
        c.get().is_ok()
    });
}

fn new_connections(dial: &Dial, every: Duration, samples: &Samples, stop: &AtomicBool) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tick(&mut next, every);
        let ok = dial()
            .and_then(|s| HttpClient::new(s).get_and_close())
            .is_ok();
        record(samples, Load::NewConnections, ok, false);
    }
}

fn streams(dial: &Dial, every: Duration, samples: &Samples, stop: &AtomicBool) {
    let mut buf = [0u8; 8];
    persistent(
        Load::Streams,
        (dial, every),
        (samples, stop),
        |s| s,
        |s| {
            s.write_all(b"ambient!")
                .and_then(|()| s.read_exact(&mut buf))
                .is_ok()
                && &buf == b"ambient!"
        },
    );
}
