//! Backend health reported by the waypoints (`ambient.rollout.v1.BackendHealth`), kept as a
//! short history of cumulative counters per reporting instance, and the window statistics
//! the rollout engine judges: requests, errors and the 99th percentile latency of a backend
//! over the last `window`, summed over every instance.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ambient_proto::ambient::rollout::v1 as pb;

/// How long samples are kept (longer than any sensible analysis window).
const KEEP: Duration = Duration::from_secs(600);

/// One report's counters for one backend, at the time it arrived.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    requests: u64,
    errors: u64,
    latency: Vec<u64>,
}

#[derive(Default)]
struct Series {
    bounds_ms: Vec<f64>,
    samples: VecDeque<Sample>,
}

/// What is known of a reporting instance.
#[derive(Clone, Copy)]
struct Instance {
    /// Its first report to this controller.
    first_heard: Instant,
    last_heard: Instant,
    /// When it started (its counters count from then).
    started: Instant,
}

impl Series {
    /// The counters at time `t`: the latest sample at or before it; else zero when every
    /// count came after `t` (the instance started after `t`, or was already reporting
    /// without this backend); else the earliest sample (counts from before this controller
    /// heard of the instance are not attributed to the window).
    fn at(&self, t: Instant, instance: Option<Instance>) -> Option<Sample> {
        if let Some(s) = self.samples.iter().rev().find(|s| s.at <= t) {
            return Some(s.clone());
        }
        let counted_after = instance.is_some_and(|i| i.started > t || i.first_heard <= t);
        if counted_after {
            return Some(Sample {
                at: t,
                requests: 0,
                errors: 0,
                latency: Vec::new(),
            });
        }
        self.samples.front().cloned()
    }
}

/// What a backend did over a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    /// The upper bound of the bucket holding the 99th percentile (`None`: no requests;
    /// infinity: past every bound).
    pub p99_ms: Option<f64>,
}

impl Window {
    /// Percent of requests answered below 500 (100 without requests).
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            return 100.0;
        }
        100.0 * (self.requests - self.errors.min(self.requests)) as f64 / self.requests as f64
    }
}

/// Reports by (instance, backend service).
#[derive(Default)]
pub struct HealthStore {
    series: Mutex<BTreeMap<(String, String), Series>>,
    instances: Mutex<BTreeMap<String, Instance>>,
}

impl HealthStore {
    /// Takes one instance's report, received at `now`.
    pub fn record(&self, report: &pb::HealthReport, now: Instant) {
        let started = now
            .checked_sub(Duration::from_millis(report.uptime_ms))
            .unwrap_or(now);
        {
            let mut instances = self.instances.lock().expect("poisoned");
            let i = instances
                .entry(report.instance.clone())
                .or_insert(Instance {
                    first_heard: now,
                    last_heard: now,
                    started,
                });
            i.started = started;
            i.last_heard = now;
            instances.retain(|_, i| now.duration_since(i.last_heard) <= KEEP);
        }
        let mut series = self.series.lock().expect("poisoned");
        for b in &report.backends {
            let s = series
                .entry((report.instance.clone(), b.service.clone()))
                .or_default();
            s.bounds_ms.clone_from(&report.latency_bounds_ms);
            // Counters going down: the instance restarted under the same name; start over.
            if s.samples
                .back()
                .is_some_and(|last| b.requests < last.requests)
            {
                s.samples.clear();
            }
            s.samples.push_back(Sample {
                at: now,
                requests: b.requests,
                errors: b.errors,
                latency: b.latency.clone(),
            });
            while s
                .samples
                .front()
                .is_some_and(|f| now.duration_since(f.at) > KEEP)
            {
                s.samples.pop_front();
            }
        }
        series.retain(|_, s| {
            s.samples
                .back()
                .is_some_and(|l| now.duration_since(l.at) <= KEEP)
        });
    }

    /// `service` (`namespace/hostname`) over `(now - window, now]`, all instances summed.
    pub fn window(&self, service: &str, window: Duration, now: Instant) -> Window {
        let since = now.checked_sub(window).unwrap_or(now);
        let instances = self.instances.lock().expect("poisoned").clone();
        let series = self.series.lock().expect("poisoned");
        let mut requests = 0;
        let mut errors = 0;
        let mut latency: Vec<u64> = Vec::new();
        let mut bounds: &[f64] = &[];
        for ((instance, s_service), s) in series.iter() {
            if s_service != service {
                continue;
            }
            let (Some(end), Some(start)) = (
                s.samples.back(),
                s.at(since, instances.get(instance).copied()),
            ) else {
                continue;
            };
            if end.at <= since {
                continue;
            }
            requests += end.requests.saturating_sub(start.requests);
            errors += end.errors.saturating_sub(start.errors);
            if latency.len() < end.latency.len() {
                latency.resize(end.latency.len(), 0);
            }
            for (i, n) in end.latency.iter().enumerate() {
                latency[i] += n.saturating_sub(start.latency.get(i).copied().unwrap_or(0));
            }
            bounds = &s.bounds_ms;
        }
        Window {
            requests,
            errors,
            p99_ms: p99(&latency, bounds),
        }
    }
}

/// The upper bound of the bucket where the 99th percentile falls.
fn p99(latency: &[u64], bounds: &[f64]) -> Option<f64> {
    let total: u64 = latency.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * 0.99).ceil() as u64;
    let mut seen = 0;
    for (i, n) in latency.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bounds.get(i).copied().unwrap_or(f64::INFINITY));
        }
    }
    Some(f64::INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(instance: &str, requests: u64, errors: u64, latency: &[u64]) -> pb::HealthReport {
        pb::HealthReport {
            instance: instance.into(),
            gateway: "shop/waypoint".into(),
            backends: vec![pb::BackendCounters {
                service: "shop/canary.shop.svc.cluster.local".into(),
                requests,
                errors,
                latency: latency.to_vec(),
            }],
            latency_bounds_ms: vec![10.0, 100.0, 1000.0],
            uptime_ms: 3_600_000,
        }
    }

    const CANARY: &str = "shop/canary.shop.svc.cluster.local";

    #[test]
    fn windows_sum_instances_over_the_last_interval() {
        let store = HealthStore::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        store.record(&report("a", 100, 0, &[100, 0, 0, 0]), t0);
        store.record(&report("b", 50, 0, &[50, 0, 0, 0]), t0);
        store.record(&report("a", 200, 10, &[150, 40, 10, 0]), t0 + 5 * s);
        store.record(&report("b", 60, 0, &[60, 0, 0, 0]), t0 + 5 * s);
        let w = store.window(CANARY, 4 * s, t0 + 5 * s);
        assert_eq!((w.requests, w.errors), (110, 10));
        assert!((w.success_rate() - 90.909).abs() < 0.01);
        // 110 requests: the 109th is in the third bucket (≤ 1000 ms).
        assert_eq!(w.p99_ms, Some(1000.0));
        // Nothing new since: an empty window.
        let later = store.window(CANARY, 4 * s, t0 + 10 * s);
        assert_eq!(later.requests, 0);
        assert_eq!(later.p99_ms, None);
        assert_eq!(later.success_rate(), 100.0);
    }

    #[test]
    fn an_instance_heard_of_late_counts_from_its_first_report() {
        let store = HealthStore::default();
        let t0 = Instant::now() + Duration::from_secs(10);
        let s = Duration::from_secs(1);
        store.record(&report("new", 40, 1, &[40, 0, 0, 0]), t0 + 3 * s);
        store.record(&report("new", 70, 4, &[70, 0, 0, 0]), t0 + 4 * s);
        let w = store.window(CANARY, 10 * s, t0 + 4 * s);
        assert_eq!((w.requests, w.errors), (30, 3));
        // A restart (counters going down) starts the series over.
        store.record(&report("new", 5, 5, &[0, 0, 0, 5]), t0 + 5 * s);
        store.record(&report("new", 9, 9, &[0, 0, 0, 9]), t0 + 6 * s);
        let w = store.window(CANARY, 10 * s, t0 + 6 * s);
        assert_eq!((w.requests, w.errors), (4, 4));
        assert_eq!(w.p99_ms, Some(f64::INFINITY));
    }
}

#[cfg(test)]
mod baseline_tests {
    use super::*;

    fn report(instance: &str, service: &str, requests: u64, uptime_ms: u64) -> pb::HealthReport {
        pb::HealthReport {
            instance: instance.into(),
            gateway: "shop/waypoint".into(),
            backends: vec![pb::BackendCounters {
                service: service.into(),
                requests,
                errors: requests,
                latency: vec![requests],
            }],
            latency_bounds_ms: vec![],
            uptime_ms,
        }
    }

    #[test]
    fn counts_that_began_within_the_window_all_count() {
        let store = HealthStore::default();
        let t0 = Instant::now() + Duration::from_secs(100);
        let s = Duration::from_secs(1);
        // An instance that started 2 s ago: its first report counts whole.
        store.record(&report("young", "a", 12, 2000), t0);
        assert_eq!(store.window("a", 10 * s, t0).requests, 12);
        // A backend first seen from an instance already reporting: counts whole too.
        store.record(&report("old", "x", 1, 3_600_000), t0);
        store.record(&report("old", "b", 7, 3_600_000), t0 + 20 * s);
        assert_eq!(store.window("b", 10 * s, t0 + 20 * s).requests, 7);
    }
}
