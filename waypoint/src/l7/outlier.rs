//! Outlier detection (`DestinationRule` `outlierDetection`, passive health checking): count
//! consecutive failures per endpoint, eject an endpoint that reaches a threshold for
//! `base_ejection_time × times ejected`, and bring it back when that time has passed.
//!
//! Time is a parameter (`now: Instant`), so behaviour is deterministic under test.
//!
//! Choices, after Envoy (which Istio configures):
//! - **Max ejection percent**: an ejection is allowed while the share of endpoints already
//!   ejected is *below* `max_ejection_percent` (Envoy's long-standing check, made before
//!   counting the new ejection). So one endpoint can always be ejected when the percentage is
//!   above 0 — what newer Envoy calls `always_eject_one_host` — and the share can overshoot by
//!   one endpoint (4 endpoints, 30 %: the second ejection is refused, the first is allowed).
//!   0 means Istio's default, 10 %.
//! - **Ejection time**: `base × n`, `n` the times ejected, capped at Envoy's
//!   `max_ejection_time` default of 300 s (or `base` if larger; `n` stops growing there).
//!   `n` decays by one per
//!   `interval` the endpoint stays in service. An endpoint returns exactly when its time is
//!   up, not at the next interval sweep as in Envoy, so ejections can end up to one interval
//!   sooner.
//! - **What counts**: 5xx and no-response outcomes ([`Outcome`]) count towards
//!   `consecutive_5xx`; 502/503/504 and no-response towards `consecutive_gateway_errors`; any
//!   other answer (4xx included) resets both; a 500 resets the gateway counter only.
//!   Crossing a threshold while ejection is refused tries again on the next failure.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambient_proto::ambient::waypoint::v1 as pb;

use super::Outcome;

/// Istio's and Envoy's default base ejection time.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's default interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Envoy's default `max_ejection_time`.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Envoy's default `max_ejection_percent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// Why an endpoint was ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectionReason {
    Consecutive5xx,
    ConsecutiveGatewayErrors,
}

/// An ejection that just happened, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    pub reason: EjectionReason,
    pub duration: Duration,
}

/// One endpoint's health as outlier detection sees it: atomics read on every pick and
/// updated on every result, without locks.
#[derive(Debug)]
pub struct EndpointHealth {
    /// Times below are nanoseconds since this instant.
    since: Instant,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// When the current or last ejection ends; 0: never ejected.
    ejected_until: AtomicU64,
    /// The ejection multiplier.
    ejections: AtomicU32,
}

impl EndpointHealth {
    /// A healthy endpoint, first seen at `now`.
    pub fn new(now: Instant) -> Self {
        EndpointHealth {
            since: now,
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }
    }

    fn ticks(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.since).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the endpoint is out of service at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.load(Ordering::Acquire) > self.ticks(now)
    }
}

/// A service's outlier detection settings, and the lock that serialises ejection decisions
/// (taken only when a threshold is crossed).
#[derive(Debug)]
pub struct OutlierDetector {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    base: Duration,
    interval: Duration,
    max_ejection_time: Duration,
    max_percent: u32,
    decisions: Mutex<()>,
}

impl OutlierDetector {
    /// `None` when both thresholds are 0 (detection disabled).
    pub fn new(cfg: &pb::OutlierDetection) -> Option<Self> {
        if cfg.consecutive_5xx == 0 && cfg.consecutive_gateway_errors == 0 {
            return None;
        }
        let ms = |v: u64, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_millis(v)
            }
        };
        let base = ms(cfg.base_ejection_time_ms, DEFAULT_BASE_EJECTION_TIME);
        Some(OutlierDetector {
            consecutive_5xx: cfg.consecutive_5xx,
            consecutive_gateway: cfg.consecutive_gateway_errors,
            base,
            interval: ms(cfg.interval_ms, DEFAULT_INTERVAL),
            max_ejection_time: MAX_EJECTION_TIME.max(base),
            max_percent: match cfg.max_ejection_percent {
                0 => DEFAULT_MAX_EJECTION_PERCENT,
                p => p.min(100),
            },
            decisions: Mutex::new(()),
        })
    }

    /// Records an attempt's outcome on `endpoint`; `population` is every endpoint of the
    /// service (for the max ejection percent). Returns the ejection it caused, if any.
    pub fn record<'a>(
        &self,
        endpoint: &EndpointHealth,
        outcome: Outcome,
        now: Instant,
        population: impl IntoIterator<Item = &'a EndpointHealth>,
    ) -> Option<Ejection> {
        if !outcome.is_5xx() {
            endpoint.consecutive_5xx.store(0, Ordering::Relaxed);
            endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
            return None;
        }
        let gateway = if outcome.is_gateway_error() {
            endpoint
                .consecutive_gateway
                .fetch_add(1, Ordering::AcqRel)
                .saturating_add(1)
        } else {
            endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let errors = endpoint
            .consecutive_5xx
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let reason = if self.consecutive_5xx > 0 && errors >= self.consecutive_5xx {
            EjectionReason::Consecutive5xx
        } else if self.consecutive_gateway > 0 && gateway >= self.consecutive_gateway {
            EjectionReason::ConsecutiveGatewayErrors
        } else {
            return None;
        };
        self.eject(endpoint, reason, now, population)
    }

    fn eject<'a>(
        &self,
        endpoint: &EndpointHealth,
        reason: EjectionReason,
        now: Instant,
        population: impl IntoIterator<Item = &'a EndpointHealth>,
    ) -> Option<Ejection> {
        let _decision = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        if endpoint.is_ejected(now) {
            return None;
        }
        let (mut total, mut ejected) = (0u64, 0u64);
        for e in population {
            total += 1;
            ejected += u64::from(e.is_ejected(now));
        }
        if total == 0 || ejected * 100 >= u64::from(self.max_percent) * total {
            return None;
        }
        let now_ticks = endpoint.ticks(now);
        let last_until = endpoint.ejected_until.load(Ordering::Acquire);
        let mut times = endpoint.ejections.load(Ordering::Relaxed);
        if last_until != 0 {
            let healthy = now_ticks.saturating_sub(last_until);
            let intervals = healthy / (self.interval.as_nanos() as u64).max(1);
            times = times.saturating_sub(u32::try_from(intervals).unwrap_or(u32::MAX));
        }
        // Beyond the cap a larger multiplier would only slow the decay.
        let cap = self
            .max_ejection_time
            .as_nanos()
            .div_ceil(self.base.as_nanos().max(1));
        times = times
            .saturating_add(1)
            .min(u32::try_from(cap).unwrap_or(u32::MAX));
        let duration = self.base.saturating_mul(times).min(self.max_ejection_time);
        endpoint.ejections.store(times, Ordering::Relaxed);
        endpoint.consecutive_5xx.store(0, Ordering::Relaxed);
        endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
        let until = now_ticks.saturating_add(duration.as_nanos() as u64).max(1);
        endpoint.ejected_until.store(until, Ordering::Release);
        Some(Ejection { reason, duration })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn detector(c5xx: u32, gw: u32, percent: u32) -> OutlierDetector {
        OutlierDetector::new(&pb::OutlierDetection {
            consecutive_5xx: c5xx,
            consecutive_gateway_errors: gw,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: percent,
        })
        .unwrap()
    }

    fn status(code: u16) -> Outcome {
        Outcome::Status(StatusCode::from_u16(code).unwrap())
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn ejects_after_consecutive_5xx_and_returns_after_base_time() {
        let t0 = Instant::now();
        let d = detector(3, 0, 100);
        let eps: Vec<_> = (0..2).map(|_| EndpointHealth::new(t0)).collect();
        let e = &eps[0];
        assert_eq!(d.record(e, status(500), t0, &eps), None);
        assert_eq!(d.record(e, status(503), t0, &eps), None);
        // A success resets the count.
        assert_eq!(d.record(e, status(404), t0, &eps), None);
        assert_eq!(d.record(e, status(500), t0, &eps), None);
        assert_eq!(d.record(e, Outcome::ConnectFailure, t0, &eps), None);
        let ejection = d.record(e, Outcome::Reset, t0, &eps).unwrap();
        assert_eq!(ejection.reason, EjectionReason::Consecutive5xx);
        assert_eq!(ejection.duration, secs(30));
        assert!(e.is_ejected(t0 + secs(29)));
        assert!(!e.is_ejected(t0 + secs(30)));
        assert!(!eps[1].is_ejected(t0));
    }

    #[test]
    fn gateway_errors_counter_ignores_plain_500() {
        let t0 = Instant::now();
        let d = detector(0, 2, 100);
        let eps = [EndpointHealth::new(t0)];
        assert_eq!(d.record(&eps[0], status(502), t0, &eps), None);
        // 500 is a 5xx but not a gateway error: the gateway count restarts.
        assert_eq!(d.record(&eps[0], status(500), t0, &eps), None);
        assert_eq!(d.record(&eps[0], status(504), t0, &eps), None);
        let ejection = d.record(&eps[0], Outcome::Timeout, t0, &eps).unwrap();
        assert_eq!(ejection.reason, EjectionReason::ConsecutiveGatewayErrors);
    }

    #[test]
    fn ejection_time_grows_is_capped_and_decays() {
        let t0 = Instant::now();
        let d = detector(1, 0, 100);
        let eps = [EndpointHealth::new(t0), EndpointHealth::new(t0)];
        let e = &eps[0];
        let mut now = t0;
        let mut durations = Vec::new();
        for _ in 0..12 {
            let ej = d.record(e, status(500), now, &eps).unwrap();
            durations.push(ej.duration.as_secs());
            // Fail again the moment it is back.
            now += ej.duration;
        }
        assert_eq!(&durations[..4], [30, 60, 90, 120]);
        assert_eq!(*durations.last().unwrap(), 300);
        // In service for 5 intervals (50 s): the multiplier (10 by now) drops by 5 → 6 × 30.
        now += secs(50);
        assert_eq!(
            d.record(e, status(500), now, &eps).unwrap().duration,
            secs(180)
        );
    }

    #[test]
    fn max_ejection_percent_but_always_one() {
        let t0 = Instant::now();
        // 10 %: with 4 endpoints the first ejection is allowed (0 % ejected), not the second.
        let d = detector(1, 0, 10);
        let eps: Vec<_> = (0..4).map(|_| EndpointHealth::new(t0)).collect();
        assert!(d.record(&eps[0], status(500), t0, &eps).is_some());
        assert!(d.record(&eps[1], status(500), t0, &eps).is_none());
        assert!(!eps[1].is_ejected(t0));
        // Once the first is back, the still-failing second one is ejected on its next failure.
        let later = t0 + secs(31);
        assert!(d.record(&eps[1], status(500), later, &eps).is_some());

        // 50 % of 4: two ejections, not three.
        let d = detector(1, 0, 50);
        let eps: Vec<_> = (0..4).map(|_| EndpointHealth::new(t0)).collect();
        let ejected = eps
            .iter()
            .filter(|e| d.record(e, status(503), t0, &eps).is_some())
            .count();
        assert_eq!(ejected, 2);

        // 0 means Istio's default (10 %).
        let d = detector(1, 0, 0);
        let eps: Vec<_> = (0..20).map(|_| EndpointHealth::new(t0)).collect();
        let ejected = eps
            .iter()
            .filter(|e| d.record(e, status(503), t0, &eps).is_some())
            .count();
        assert_eq!(ejected, 2);
    }

    #[test]
    fn disabled_and_already_ejected() {
        assert!(OutlierDetector::new(&pb::OutlierDetection::default()).is_none());
        let t0 = Instant::now();
        let d = detector(1, 0, 100);
        let eps = [EndpointHealth::new(t0), EndpointHealth::new(t0)];
        assert!(d.record(&eps[0], status(500), t0, &eps).is_some());
        // In-flight failures landing while ejected do not extend the ejection.
        assert!(d.record(&eps[0], status(500), t0 + secs(1), &eps).is_none());
        assert!(!eps[0].is_ejected(t0 + secs(30)));
    }
}
