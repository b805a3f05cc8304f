//! Backend health as this waypoint sees it, reported to the controller: requests, errors and
//! latencies per backend service the routes chose, cumulative since start, sent about once a
//! second (`ambient.rollout.v1.BackendHealth/Report`). The controller judges rollouts by
//! them, so no metrics system is needed for canary analysis.
//!
//! Recording is three atomic increments in a lock-free map per finished request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use ambient_proto::ambient::rollout::v1 as pb;
use pb::backend_health_client::BackendHealthClient;
use proxy_core::control_plane::ControlPlane;
use tracing::{debug, warn};

/// Upper bounds of the latency buckets, in milliseconds (then one unbounded bucket).
pub const LATENCY_BOUNDS_MS: [f64; 16] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0,
    10000.0, 30000.0,
];

/// One backend's counters.
#[derive(Default)]
pub struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
}

impl Counters {
    fn record(&self, status: u16, elapsed_ms: f64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        // 0: no response at all.
        if status >= 500 || status == 0 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| elapsed_ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self, service: &str) -> pb::BackendCounters {
        pb::BackendCounters {
            service: service.to_string(),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Counters by backend service (`namespace/hostname`).
pub struct Registry {
    started: Instant,
    backends: papaya::HashMap<Arc<str>, Counters>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            started: Instant::now(),
            backends: papaya::HashMap::new(),
        }
    }
}

impl Registry {
    pub fn record(&self, backend: &Arc<str>, status: u16, elapsed_ms: f64) {
        let backends = self.backends.pin();
        match backends.get(backend) {
            Some(c) => c.record(status, elapsed_ms),
            None => backends
                .get_or_insert_with(backend.clone(), Counters::default)
                .record(status, elapsed_ms),
        }
    }

    /// The report of this instance.
    pub fn report(&self, instance: &str, gateway: &str) -> pb::HealthReport {
        let backends = self.backends.pin();
        let mut list: Vec<pb::BackendCounters> =
            backends.iter().map(|(k, c)| c.snapshot(k)).collect();
        list.sort_by(|a, b| a.service.cmp(&b.service));
        pb::HealthReport {
            instance: instance.to_string(),
            gateway: gateway.to_string(),
            backends: list,
            latency_bounds_ms: LATENCY_BOUNDS_MS.to_vec(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

/// Records one finished request through `backend` (status 0: it got no response).
pub fn record(backend: &Arc<str>, status: u16, elapsed_ms: f64) {
    REGISTRY.record(backend, status, elapsed_ms);
}

/// Sends this instance's report to the controller every `every`, forever. Failures are
/// logged and retried on the next tick (the counters are cumulative, nothing is lost).
pub async fn report_forever(
    control_plane: ControlPlane,
    instance: String,
    gateway: String,
    every: Duration,
) {
    let channel = match control_plane.channel(Some(Duration::from_secs(5))) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "backend health reports disabled: no channel to the controller");
            return;
        }
    };
    let mut client = BackendHealthClient::new(channel);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let report = REGISTRY.report(&instance, &gateway);
        if report.backends.is_empty() {
            continue;
        }
        let mut request = tonic::Request::new(report);
        match control_plane.bearer() {
            Ok(b) => {
                request.metadata_mut().insert("authorization", b);
            }
            Err(e) => {
                warn!(error = %e, "backend health report not sent");
                continue;
            }
        }
        if let Err(e) = client.report(request).await {
            debug!(error = %e, "backend health report failed; sent again next time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_errors_and_latency_buckets_per_backend() {
        let r = Registry::default();
        let a: Arc<str> = "shop/a.shop.svc.cluster.local".into();
        let b: Arc<str> = "shop/b.shop.svc.cluster.local".into();
        r.record(&a, 200, 0.5);
        r.record(&a, 503, 3.0);
        r.record(&a, 0, 40_000.0);
        r.record(&b, 404, 7.0);
        let report = r.report("shop/waypoint-0", "shop/waypoint");
        assert_eq!(
            report.latency_bounds_ms.len() + 1,
            report.backends[0].latency.len()
        );
        let first = &report.backends[0];
        assert_eq!(
            (first.service.as_str(), first.requests, first.errors),
            (&*a, 3, 2)
        );
        assert_eq!(first.latency[0], 1, "0.5 ms ≤ 1 ms");
        assert_eq!(first.latency[2], 1, "3 ms ≤ 5 ms");
        assert_eq!(*first.latency.last().unwrap(), 1, "past every bound");
        let second = &report.backends[1];
        assert_eq!(
            (second.requests, second.errors),
            (1, 0),
            "a 404 is no error"
        );
    }
}
