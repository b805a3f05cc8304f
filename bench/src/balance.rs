//! `bench balance`: the waypoint's load balancers against a backend set where one endpoint is
//! slow. The real `waypoint::l7::balance::Balancer` picks every request (its in-flight counts
//! kept by its own `Pick` guards, peak-EWMA fed the response times) in a discrete-event
//! simulation: Poisson arrivals, each endpoint a pod serving a few requests at once from a
//! FIFO queue, service times exponential. Virtual time, so the figures are the algorithms',
//! not this machine's; the same seed gives the same figures.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use ambient_proto::ambient::waypoint::v1 as pb;
use http::HeaderMap;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use waypoint::l7::balance::{Balancer, BalancerPolicy, Pick};

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Endpoints of the service.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Requests each endpoint serves at once (more wait in its queue).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Mean service time of a healthy endpoint, ms.
    #[arg(long, default_value_t = 5.0)]
    pub service_ms: f64,
    /// Mean service time of the slow endpoint, ms.
    #[arg(long, default_value_t = 50.0)]
    pub slow_ms: f64,
    /// Offered load as a share of the healthy endpoints' capacity.
    #[arg(long, default_value_t = 0.6)]
    pub load: f64,
    /// Requests simulated per algorithm.
    #[arg(long, default_value_t = 200_000)]
    pub requests: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One algorithm's figures.
#[derive(Debug, serde::Serialize)]
pub struct Figures {
    pub algorithm: &'static str,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Share of the requests the slow endpoint served.
    pub slow_share: f64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A request finished on an endpoint (the request's slot).
    Done {
        endpoint: usize,
        slot: usize,
    },
    Arrival,
}

/// A request in flight: when it arrived and its pick (counted in flight while it lives).
struct InFlight {
    arrived: Duration,
    pick: Pick<usize>,
}

/// Exponentially distributed, with this mean.
fn exponential(rng: &mut SmallRng, mean: Duration) -> Duration {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    mean.mul_f64(-u.ln())
}

fn simulate(opts: &Options, kind: pb::load_balancer::Kind, name: &'static str) -> Figures {
    let traffic = pb::TrafficPolicy {
        load_balancer: Some(pb::LoadBalancer {
            kind: kind as i32,
            hash_header: String::new(),
        }),
        ..Default::default()
    };
    let (policy, _) = BalancerPolicy::compile(Some(&traffic));
    let epoch = Instant::now();
    let balancer = Balancer::new(policy, 0..opts.endpoints, None, epoch);
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let service = |e: usize| {
        Duration::from_secs_f64(
            if e == 0 {
                opts.slow_ms
            } else {
                opts.service_ms
            } / 1000.0,
        )
    };
    // Healthy capacity: (endpoints - 1) × concurrency / service time.
    let capacity =
        (opts.endpoints - 1) as f64 * opts.concurrency as f64 / (opts.service_ms / 1000.0);
    let gap = Duration::from_secs_f64(1.0 / (capacity * opts.load));

    let mut events: BinaryHeap<Reverse<(Duration, Event)>> = BinaryHeap::new();
    events.push(Reverse((Duration::ZERO, Event::Arrival)));
    let mut slots: Vec<Option<InFlight>> = Vec::new();
    let mut free_slots: Vec<usize> = Vec::new();
    let mut busy = vec![0usize; opts.endpoints];
    let mut queues: Vec<VecDeque<usize>> = vec![VecDeque::new(); opts.endpoints];
    let mut latencies: Vec<Duration> = Vec::with_capacity(opts.requests);
    let mut slow_served = 0usize;
    let mut arrivals = 0usize;
    let headers = HeaderMap::new();

    while let Some(Reverse((t, event))) = events.pop() {
        let now = epoch + t;
        match event {
            Event::Arrival => {
                arrivals += 1;
                if arrivals < opts.requests {
                    events.push(Reverse((t + exponential(&mut rng, gap), Event::Arrival)));
                }
                let pick = balancer
                    .pick(&headers, None, now, &mut rng)
                    .expect("endpoints");
                let endpoint = *pick.key();
                let slot = free_slots.pop().unwrap_or_else(|| {
                    slots.push(None);
                    slots.len() - 1
                });
                slots[slot] = Some(InFlight { arrived: t, pick });
                if busy[endpoint] < opts.concurrency {
                    busy[endpoint] += 1;
                    let done = t + exponential(&mut rng, service(endpoint));
                    events.push(Reverse((done, Event::Done { endpoint, slot })));
                } else {
                    queues[endpoint].push_back(slot);
                }
            }
            Event::Done { endpoint, slot } => {
                let request = slots[slot].take().expect("in flight");
                let latency = t - request.arrived;
                balancer.observe(&request.pick, latency, now);
                drop(request.pick);
                free_slots.push(slot);
                latencies.push(latency);
                if endpoint == 0 {
                    slow_served += 1;
                }
                match queues[endpoint].pop_front() {
                    Some(next) => {
                        let done = t + exponential(&mut rng, service(endpoint));
                        events.push(Reverse((
                            done,
                            Event::Done {
                                endpoint,
                                slot: next,
                            },
                        )));
                    }
                    None => busy[endpoint] -= 1,
                }
            }
        }
    }
    latencies.sort_unstable();
    let q = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    Figures {
        algorithm: name,
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        slow_share: slow_served as f64 / latencies.len() as f64,
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    anyhow::ensure!(opts.endpoints >= 2, "--endpoints: at least 2");
    anyhow::ensure!(
        opts.load > 0.0 && opts.load < 1.0,
        "--load: a share of capacity in (0, 1)"
    );
    use pb::load_balancer::Kind;
    println!(
        "{} endpoints serving {} at once, one with a mean service time of {} ms and the others \
         {} ms; Poisson arrivals at {:.0} % of the healthy endpoints' capacity; {} requests, \
         seed {}",
        opts.endpoints,
        opts.concurrency,
        opts.slow_ms,
        opts.service_ms,
        opts.load * 100.0,
        opts.requests,
        opts.seed
    );
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "algorithm", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "slow share"
    );
    let mut all = Vec::new();
    for (kind, name) in [
        (Kind::LeastRequest, "least-request"),
        (Kind::PeakEwma, "peak-ewma"),
        (Kind::RoundRobin, "round-robin"),
        (Kind::Random, "random"),
    ] {
        let f = simulate(&opts, kind, name);
        println!(
            "{:<14} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}%",
            f.algorithm,
            f.p50_ms,
            f.p90_ms,
            f.p99_ms,
            f.p999_ms,
            f.slow_share * 100.0
        );
        all.push(f);
    }
    if let [least, ewma, ..] = all.as_slice() {
        println!(
            "peak-ewma / least-request: p99 × {:.2}, p99.9 × {:.2}",
            ewma.p99_ms / least.p99_ms,
            ewma.p999_ms / least.p999_ms
        );
    }
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&all)?)?;
    }
    Ok(())
}
