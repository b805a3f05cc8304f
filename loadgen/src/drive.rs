//! Load shapes: one OS thread per connection, blocking sockets.

use std::time::{Duration, Instant};

use crate::Dial;
use crate::http::HttpClient;
use crate::latency::Latency;

/// Requests at a fixed rate, whatever the responses do (an open loop).
#[derive(Clone, Copy, Debug)]
pub struct OpenLoop {
    /// Requests per second, across all connections.
    pub rate: f64,
    pub connections: usize,
    /// Measured time (after the warm-up).
    pub duration: Duration,
    /// Sent but not recorded.
    pub warmup: Duration,
}

#[derive(Clone, Debug)]
pub struct OpenLoopReport {
    /// Recorded requests.
    pub requests: u64,
    /// From each request's *intended* send time to its response: a stalled response delays
    /// the requests behind it, and that wait counts (no coordinated omission).
    pub latency: Latency,
    /// From the actual send to the response (what a closed-loop client would report).
    pub service_time: Latency,
}

/// Connection `i` of `n` sends request `k` at `start + (i + k n) / rate`: the connections
/// interleave evenly. A late response makes the next request late, and the lateness is
/// charged to that request's latency.
pub fn open_loop(dial: &Dial, cfg: &OpenLoop) -> std::io::Result<OpenLoopReport> {
    let n = cfg.connections.max(1);
    let clients = connect(dial, n)?;
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let rate = cfg.rate.max(1.0);
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            std::thread::spawn(move || -> std::io::Result<(Latency, Latency)> {
                precise_sleeps();
                let mut latency = Latency::new();
                let mut service = Latency::new();
                for k in 0u64.. {
                    let intended =
                        start + Duration::from_secs_f64((i as u64 + k * n as u64) as f64 / rate);
                    if intended >= end {
                        break;
                    }
                    let now = Instant::now();
                    if intended > now {
                        std::thread::sleep(intended - now);
                    }
                    let sent = Instant::now();
                    client.get()?;
                    let done = Instant::now();
                    if intended >= measure_from {
                        latency.record(done - intended);
                        service.record(done - sent);
                    }
                }
                Ok((latency, service))
            })
        })
        .collect();
    let mut report = OpenLoopReport {
        requests: 0,
        latency: Latency::new(),
        service_time: Latency::new(),
    };
    for w in workers {
        let (l, s) = w.join().expect("open-loop thread")?;
        report.latency.add(&l);
        report.service_time.add(&s);
    }
    report.requests = report.latency.count();
    Ok(report)
}

/// Each connection sends its next request as soon as the previous response arrives.
#[derive(Clone, Copy, Debug)]
pub struct ClosedLoop {
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
}

#[derive(Clone, Debug)]
pub struct ClosedLoopReport {
    /// Requests completed in the measured window.
    pub requests: u64,
    pub seconds: f64,
    pub latency: Latency,
}

impl ClosedLoopReport {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
}

/// The maximum request rate `connections` keep-alive connections sustain.
pub fn closed_loop(dial: &Dial, cfg: &ClosedLoop) -> std::io::Result<ClosedLoopReport> {
    let clients = connect(dial, cfg.connections.max(1))?;
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let workers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || -> std::io::Result<Latency> {
                precise_sleeps();
                let now = Instant::now();
                if start > now {
                    std::thread::sleep(start - now);
                }
                let mut latency = Latency::new();
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        return Ok(latency);
                    }
                    client.get()?;
                    let done = Instant::now();
                    if sent >= measure_from && done <= end {
                        latency.record(done - sent);
                    }
                }
            })
        })
        .collect();
    let mut latency = Latency::new();
    for w in workers {
        latency.add(&w.join().expect("closed-loop thread")?);
    }
    Ok(ClosedLoopReport {
        requests: latency.count(),
        seconds: cfg.duration.as_secs_f64(),
        latency,
    })
}

/// New connections as fast as `concurrency` threads make them: connect, one request with
/// `connection: close`, close.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionRate {
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
}

#[derive(Clone, Debug)]
pub struct ConnectionRateReport {
    /// Connections that completed their request in the measured window.
    pub connections: u64,
    /// Connections that failed (connect or exchange), anywhere in the run.
    pub errors: u64,
    pub seconds: f64,
    /// Connect + request + response, per connection.
    pub latency: Latency,
}

impl ConnectionRateReport {
    pub fn rate(&self) -> f64 {
        self.connections as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
}

pub fn connection_rate(dial: &Dial, cfg: &ConnectionRate) -> std::io::Result<ConnectionRateReport> {
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let workers: Vec<_> = (0..cfg.concurrency.max(1))
        .map(|_| {
            let dial = dial.clone();
            std::thread::spawn(move || -> (Latency, u64, Option<std::io::Error>) {
                let mut latency = Latency::new();
                let mut errors = 0u64;
                let mut last_error = None;
                let now = Instant::now();
                if start > now {
                    std::thread::sleep(start - now);
                }
                loop {
                    let begun = Instant::now();
                    if begun >= end {
                        break;
                    }
                    match dial().and_then(|s| HttpClient::new(s).get_and_close()) {
                        Ok(_) => {
                            let done = Instant::now();
                            if begun >= measure_from && done <= end {
                                latency.record(done - begun);
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            last_error = Some(e);
                            // Back off a little: a refusing path should not become a spin.
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                (latency, errors, last_error)
            })
        })
        .collect();
    let mut report = ConnectionRateReport {
        connections: 0,
        errors: 0,
        seconds: cfg.duration.as_secs_f64(),
        latency: Latency::new(),
    };
    let mut last_error = None;
    for w in workers {
        let (l, e, last) = w.join().expect("connection-rate thread");
        report.latency.add(&l);
        report.errors += e;
        last_error = last_error.or(last);
    }
    report.connections = report.latency.count();
    match last_error {
        Some(e) if report.connections == 0 => Err(e),
        _ => Ok(report),
    }
}

fn connect(dial: &Dial, n: usize) -> std::io::Result<Vec<HttpClient>> {
    (0..n)
        .map(|_| dial().map(HttpClient::new))
        .collect::<std::io::Result<Vec<_>>>()
}

/// Sleeps on this thread wake within microseconds of their deadline instead of the default
/// 50 µs timer slack. Best effort.
fn precise_sleeps() {
    let _ = nix::sys::prctl::set_timerslack(1_000);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (tokio::runtime::Runtime, Dial) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let dial = crate::dial_addr(listener.local_addr().unwrap());
        rt.spawn(crate::http::serve_http(listener, 1024));
        (rt, dial)
    }

    #[test]
    fn open_loop_keeps_its_rate() {
        let (_rt, dial) = server();
        let r = open_loop(
            &dial,
            &OpenLoop {
                rate: 500.0,
                connections: 2,
                duration: Duration::from_millis(400),
                warmup: Duration::from_millis(100),
            },
        )
        .unwrap();
        assert!((180..=220).contains(&r.requests), "{}", r.requests);
        assert!(r.latency.percentiles().p50 > 0.0);
    }

    #[test]
    fn closed_loop_and_connection_rate_count() {
        let (_rt, dial) = server();
        let c = closed_loop(
            &dial,
            &ClosedLoop {
                connections: 2,
                duration: Duration::from_millis(200),
                warmup: Duration::from_millis(50),
            },
        )
        .unwrap();
        assert!(c.requests > 10 && c.rate() > 50.0, "{c:?}");
        let n = connection_rate(
            &dial,
            &ConnectionRate {
                concurrency: 2,
                duration: Duration::from_millis(200),
                warmup: Duration::from_millis(50),
            },
        )
        .unwrap();
        assert!(n.connections > 10 && n.errors == 0, "{n:?}");
    }
}
