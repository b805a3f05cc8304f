//! `bench soak`: the chaos benchmark's steady traffic for a long time (30 minutes by
//! default), with churn of every kind the mesh absorbs: connections (a new one per request),
//! pods (one created, enrolled, released and deleted every few seconds), policies (an
//! edit every two seconds) and certificates (short-lived). Each proxy's and the
//! controller's resident memory and open descriptors are sampled every few seconds; the
//! report compares the first minute after warm-up with the last, and plots every sample.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use plotters::style::RGBColor;
use serde::Serialize;

use crate::chaos::{Traffic, storm_policy, wait_reachable};
use crate::mesh::plot::{self, Line};
use crate::mesh::{Bench, BenchSettings, NODES, procfs};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Minutes of soak (warm-up included).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Minutes of warm-up, left out of the growth figure.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 5.0)]
    sample: f64,
    /// Seconds between pod churn steps (one pod created and enrolled, the previous one
    /// released and deleted).
    #[arg(long, default_value_t = 5.0)]
    pod_churn: f64,
    /// Lifetime of workload certificates, seconds.
    #[arg(long, default_value_t = 60)]
    cert_ttl: u64,
    /// Requests per second of each load.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Write the samples as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the plots (memory, descriptors) into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Keep the sandbox directory (every component's log) and print where it is.
    #[arg(long)]
    keep: bool,
    /// RUST_LOG of the mesh components.
    #[arg(long, default_value = "info")]
    log: String,
}

/// One process watched.
#[derive(Clone, Debug, Serialize)]
struct Watched {
    name: String,
    pid: u32,
}

/// One sample of every watched process.
#[derive(Clone, Debug, Serialize)]
struct Sample {
    /// Seconds since the traffic started.
    at: f64,
    /// Resident bytes, per watched process (same order).
    rss: Vec<u64>,
    /// Open descriptors, per watched process.
    fds: Vec<u64>,
}

#[derive(Serialize)]
struct Report {
    minutes: f64,
    warmup_minutes: f64,
    processes: Vec<Watched>,
    samples: Vec<Sample>,
    exchanges: u64,
    failed: u64,
    pods_churned: u64,
    policy_edits: u64,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let keep = opts.keep;
    crate::sandboxed("bench-soak", keep, move |run_dir| soak(run_dir, opts))
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

async fn soak(run_dir: PathBuf, opts: Options) -> anyhow::Result<()> {
    let settings = BenchSettings {
        log: opts.log.clone(),
        workload_cert_ttl: Some(Duration::from_secs(opts.cert_ttl.max(1))),
        ..BenchSettings::default()
    };
    let mut bench = Bench::start(run_dir, &settings).await?;
    wait_reachable(&bench).await?;
    let mut watched: Vec<Watched> = bench
        .ztunnels
        .iter()
        .map(|(node, pid)| Watched {
            name: format!("ztunnel {node}"),
            pid: *pid,
        })
        .collect();
    watched.push(Watched {
        name: "waypoint".into(),
        pid: bench.waypoint_pid,
    });
    watched.push(Watched {
        name: "controller".into(),
        pid: procfs::find_process(&["component", "controller"])
            .context("finding the controller")?,
    });

    let traffic = Traffic::start(&bench, opts.rate);
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(opts.minutes * 60.0);
    let every = Duration::from_secs_f64(opts.sample);
    let churn_every = Duration::from_secs_f64(opts.pod_churn);
    let policy_every = Duration::from_secs(2);
    let (mut next_sample, mut next_churn, mut next_policy) = (started, started, started);
    let mut samples = Vec::new();
    let mut churn = PodChurn::default();
    let mut policy_edits = 0u64;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_sample {
            samples.push(Sample {
                at: now.duration_since(started).as_secs_f64(),
                rss: watched.iter().map(|w| procfs::rss_bytes(w.pid)).collect(),
                fds: watched.iter().map(|w| open_fds(w.pid)).collect(),
            });
            next_sample += every;
        }
        if now >= next_churn {
            churn.step(&mut bench).await?;
            next_churn += churn_every;
        }
        if now >= next_policy {
            bench
                .mesh
                .write_manifest("churn-policy.yaml", &storm_policy(policy_edits as u32))?;
            policy_edits += 1;
            next_policy += policy_every;
        }
        let wake = next_sample.min(next_churn).min(next_policy);
        tokio::time::sleep(wake.saturating_duration_since(Instant::now())).await;
    }
    let (exchanges, failed) = traffic.counts();
    traffic.stop();

    let report = Report {
        minutes: opts.minutes,
        warmup_minutes: opts.warmup,
        processes: watched,
        samples,
        exchanges,
        failed,
        pods_churned: churn.created,
        policy_edits,
    };
    print_report(&report);
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(dir) = &opts.plots {
        plots(dir, &report)?;
    }
    Ok(())
}

/// The mean of `metric` over the samples in `[from, to)` seconds, per process.
fn mean(samples: &[Sample], from: f64, to: f64, metric: fn(&Sample) -> &Vec<u64>) -> Vec<f64> {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .collect();
    let n = window.first().map_or(0, |s| metric(s).len());
    (0..n)
        .map(|i| window.iter().map(|s| metric(s)[i] as f64).sum::<f64>() / window.len() as f64)
        .collect()
}

fn print_report(r: &Report) {
    let warm = r.warmup_minutes * 60.0;
    let last = r.samples.last().map_or(0.0, |s| s.at);
    // Growth: the first minute after warm-up against the last minute.
    let first_window = (warm, warm + 60.0);
    let last_window = ((last - 60.0).max(warm), last + 1.0);
    fn rss(s: &Sample) -> &Vec<u64> {
        &s.rss
    }
    fn fds(s: &Sample) -> &Vec<u64> {
        &s.fds
    }
    let (rss0, rss1) = (
        mean(&r.samples, first_window.0, first_window.1, rss),
        mean(&r.samples, last_window.0, last_window.1, rss),
    );
    let (fds0, fds1) = (
        mean(&r.samples, first_window.0, first_window.1, fds),
        mean(&r.samples, last_window.0, last_window.1, fds),
    );
    println!(
        "\nbench soak: {:.1} min ({:.1} warm-up), {} exchanges ({} failed), {} pods churned, {} policy edits",
        r.minutes, r.warmup_minutes, r.exchanges, r.failed, r.pods_churned, r.policy_edits
    );
    println!(
        "{:<16} {:>12} {:>12} {:>8} {:>10} {:>10} {:>8}",
        "process", "RSS after wu", "RSS at end", "growth", "fds after", "fds end", "growth"
    );
    for (i, w) in r.processes.iter().enumerate() {
        let growth = |a: &[f64], b: &[f64]| match (a.get(i), b.get(i)) {
            (Some(a), Some(b)) if *a > 0.0 => format!("{:+.1} %", (b - a) / a * 100.0),
            _ => "—".into(),
        };
        let mb = |v: &[f64]| {
            v.get(i)
                .map_or("—".into(), |b| format!("{:.2} MB", b / 1e6))
        };
        let n = |v: &[f64]| v.get(i).map_or("—".into(), |f| format!("{f:.0}"));
        println!(
            "{:<16} {:>12} {:>12} {:>8} {:>10} {:>10} {:>8}",
            w.name,
            mb(&rss0),
            mb(&rss1),
            growth(&rss0, &rss1),
            n(&fds0),
            n(&fds1),
            growth(&fds0, &fds1)
        );
    }
}

const COLORS: [RGBColor; 4] = [
    RGBColor(33, 102, 172),
    RGBColor(103, 169, 207),
    RGBColor(230, 140, 30),
    RGBColor(90, 90, 90),
];

fn plots(dir: &std::path::Path, r: &Report) -> anyhow::Result<()> {
    let series = |metric: fn(&Sample, usize) -> f64| -> Vec<Line<'_>> {
        r.processes
            .iter()
            .enumerate()
            .map(|(i, w)| Line {
                name: &w.name,
                color: COLORS[i % COLORS.len()],
                points: r
                    .samples
                    .iter()
                    .map(|s| (s.at / 60.0, metric(s, i)))
                    .collect(),
            })
            .collect()
    };
    plot::lines(
        &dir.join("soak-memory.svg"),
        "Resident memory under churn",
        ("minutes", "MB"),
        &series(|s, i| s.rss[i] as f64 / 1e6),
    )?;
    plot::lines(
        &dir.join("soak-fds.svg"),
        "Open descriptors under churn",
        ("minutes", "descriptors"),
        &series(|s, i| s.fds[i] as f64),
    )?;
    Ok(())
}

/// Pods that come and go on the server node: each step creates one (in the lab, in the
/// controller's manifests, enrolled) and removes the one before it.
#[derive(Default)]
struct PodChurn {
    created: u64,
    live: Option<String>,
}

const CHURN_NAMESPACE: &str = "mesh";

impl PodChurn {
    async fn step(&mut self, bench: &mut Bench) -> anyhow::Result<()> {
        let name = format!("churn-{}", self.created);
        let pod = bench.mesh.lab.add_pod(CHURN_NAMESPACE, &name, NODES[1])?;
        let manifest = ambient_lab::manifest::pod(pod, "churn", &[("app", "churn")], &[]);
        bench
            .mesh
            .write_manifest(&format!("{name}.yaml"), &manifest)?;
        bench.mesh.enrol(CHURN_NAMESPACE, &name, "churn").await?;
        self.created += 1;
        if let Some(old) = self.live.replace(name) {
            bench.mesh.release(CHURN_NAMESPACE, &old).await?;
            bench.mesh.remove_manifest(&format!("{old}.yaml"))?;
            bench.mesh.lab.remove_pod(CHURN_NAMESPACE, &old)?;
        }
        Ok(())
    }
}
