//! Connection-pool limits of a service (`DestinationRule` `connectionPool`): concurrent
//! requests, requests waiting for a connection and outstanding retries (a fixed
//! `maxRetries`, or a retry budget relative to the requests in flight), counted with atomics
//! and released by RAII permits; plus the upstream pool settings the proxy's connection pool
//! applies.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use ambient_proto::ambient::waypoint::v1 as pb;

/// Istio's default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's default idle timeout of upstream connections.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A limit was reached: the proxy answers 503 with response flag `UO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    #[error("too many concurrent requests to the service (max_requests)")]
    Requests,
    #[error("too many requests waiting for a connection (max_pending_requests)")]
    Pending,
    #[error("too many retries outstanding (max_retries or the retry budget)")]
    Retries,
}

/// Ids of services' connection pools (0: no service, workload-addressed traffic).
static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct Counters {
    /// The service's own upstream connections are pooled under this id.
    pool: u64,
    active: AtomicU32,
    pending: AtomicU32,
    retries: AtomicU32,
    connections: AtomicU32,
    /// A connection of the service closed or came back to the pool: waiting requests look
    /// again.
    released: Notify,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            pool: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
            active: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            connections: AtomicU32::new(0),
            released: Notify::new(),
        }
    }
}

/// How many retries may be outstanding at once.
#[derive(Clone, Copy, Debug, PartialEq)]
enum RetryLimit {
    Unlimited,
    Fixed(NonZeroU32),
    /// At least `min`, else `percent` of the requests in flight and waiting (Envoy's
    /// `retry_budget`).
    Budget {
        percent: f64,
        min: u32,
    },
}

fn acquire(counter: &AtomicU32, limit: Option<NonZeroU32>) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match limit {
            Some(max) if n >= max.get() => None,
            _ => Some(n + 1),
        })
        .is_ok()
}

/// One service's request limits. The counters survive configuration updates
/// ([`ConnectionLimits::new`] with the previous value), so requests in flight keep counting.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    max_requests: Option<NonZeroU32>,
    max_pending: Option<NonZeroU32>,
    retries: RetryLimit,
    pool: PoolSettings,
    counters: Arc<Counters>,
}

impl ConnectionLimits {
    /// Limits from a `ConnectionPool` (0 or absent: unlimited), sharing the counters of
    /// `previous`.
    pub fn new(pool: Option<&pb::ConnectionPool>, previous: Option<&ConnectionLimits>) -> Self {
        let retries = match pool {
            Some(pb::ConnectionPool {
                retry_budget: Some(b),
                ..
            }) => RetryLimit::Budget {
                percent: b.percent.clamp(0.0, 100.0),
                min: b.min_retry_concurrency,
            },
            Some(p) => {
                NonZeroU32::new(p.max_retries).map_or(RetryLimit::Unlimited, RetryLimit::Fixed)
            }
            None => RetryLimit::Unlimited,
        };
        ConnectionLimits {
            max_requests: pool.and_then(|p| NonZeroU32::new(p.max_requests)),
            max_pending: pool.and_then(|p| NonZeroU32::new(p.max_pending_requests)),
            retries,
            pool: PoolSettings::new(pool),
            counters: previous.map(|p| p.counters.clone()).unwrap_or_default(),
        }
    }

    /// How the service's upstream connections are opened, reused and closed.
    pub fn pool(&self) -> &PoolSettings {
        &self.pool
    }

    /// The id the service's upstream connections are pooled under (kept across updates).
    pub fn pool_id(&self) -> u64 {
        self.counters.pool
    }

    /// Counts one more upstream connection of the service, if `max_connections` allows it;
    /// the permit lives as long as the connection.
    pub fn try_connection(&self) -> Option<ConnectionPermit> {
        acquire(&self.counters.connections, self.pool.max_connections)
            .then(|| ConnectionPermit(self.counters.clone()))
    }

    /// Upstream connections of the service open now.
    pub fn connections(&self) -> u32 {
        self.counters.connections.load(Ordering::Relaxed)
    }

    /// Resolves once a connection of the service closes or comes back to the pool (create
    /// it, `enable` it, then look, then await: a release in between is not missed).
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.counters.released.notified()
    }

    /// Says that a connection came back to the pool.
    pub fn connection_returned(&self) {
        self.counters.released.notify_waiters();
    }

    /// Retries that may be outstanding now (`None`: no limit).
    fn retry_limit(&self) -> Option<u32> {
        match self.retries {
            RetryLimit::Unlimited => None,
            RetryLimit::Fixed(n) => Some(n.get()),
            RetryLimit::Budget { percent, min } => {
                let load = self.active() + self.pending();
                let share = (f64::from(load) * percent / 100.0) as u32;
                Some(share.max(min))
            }
        }
    }

    /// Admits one retry for as long as the permit lives: the attempt it makes, with its
    /// backoff before it. A retry refused leaves the last answer standing (`URX`).
    pub fn try_retry(&self) -> Result<RetryPermit, Overflow> {
        let limit = self.retry_limit();
        let admitted = self
            .counters
            .retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match limit {
                Some(max) if n >= max => None,
                _ => Some(n + 1),
            })
            .is_ok();
        if admitted {
            Ok(RetryPermit(self.counters.clone()))
        } else {
            Err(Overflow::Retries)
        }
    }

    /// Retries outstanding now.
    pub fn retries(&self) -> u32 {
        self.counters.retries.load(Ordering::Relaxed)
    }

    /// Admits one request to the service for as long as the permit lives.
    pub fn try_request(&self) -> Result<RequestPermit, Overflow> {
        if acquire(&self.counters.active, self.max_requests) {
            Ok(RequestPermit(self.counters.clone()))
        } else {
            Err(Overflow::Requests)
        }
    }

    /// Admits one request to wait for an upstream connection; drop the permit once it has
    /// one.
    pub fn try_pending(&self) -> Result<PendingPermit, Overflow> {
        if acquire(&self.counters.pending, self.max_pending) {
            Ok(PendingPermit(self.counters.clone()))
        } else {
            Err(Overflow::Pending)
        }
    }

    /// Requests in flight now.
    pub fn active(&self) -> u32 {
        self.counters.active.load(Ordering::Relaxed)
    }

    /// Requests waiting for a connection now.
    pub fn pending(&self) -> u32 {
        self.counters.pending.load(Ordering::Relaxed)
    }
}

/// A request counted against `max_requests`; released on drop.
#[derive(Debug)]
#[must_use = "the request is only counted while the permit lives"]
pub struct RequestPermit(Arc<Counters>);

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request counted against `max_pending_requests`; released on drop.
#[derive(Debug)]
#[must_use = "the request is only counted while the permit lives"]
pub struct PendingPermit(Arc<Counters>);

impl Drop for PendingPermit {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An upstream connection counted against `max_connections`; released when it closes.
#[derive(Debug)]
#[must_use = "the connection is only counted while the permit lives"]
pub struct ConnectionPermit(Arc<Counters>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.released.notify_waiters();
    }
}

/// A retry counted against `max_retries` or the retry budget; released on drop.
#[derive(Debug)]
#[must_use = "the retry is only counted while the permit lives"]
pub struct RetryPermit(Arc<Counters>);

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How the proxy's upstream connection pool treats a service's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// Upstream connections of the service (HTTP/1 and HTTP/2); `None`: unlimited. Past it,
    /// requests wait for one (as pending) rather than open another.
    pub max_connections: Option<NonZeroU32>,
    /// Requests per connection before it is closed; `None`: unlimited.
    pub max_requests_per_connection: Option<NonZeroU32>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

impl PoolSettings {
    /// Settings from a `ConnectionPool`, 0 meaning unlimited or Istio's default.
    pub fn new(pool: Option<&pb::ConnectionPool>) -> Self {
        let ms = |v: u64, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_millis(v)
            }
        };
        PoolSettings {
            max_connections: pool.and_then(|p| NonZeroU32::new(p.max_connections)),
            max_requests_per_connection: pool
                .and_then(|p| NonZeroU32::new(p.max_requests_per_connection)),
            connect_timeout: ms(
                pool.map_or(0, |p| p.connect_timeout_ms),
                DEFAULT_CONNECT_TIMEOUT,
            ),
            idle_timeout: ms(pool.map_or(0, |p| p.idle_timeout_ms), DEFAULT_IDLE_TIMEOUT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_requests: u32, max_pending_requests: u32) -> pb::ConnectionPool {
        pb::ConnectionPool {
            max_requests,
            max_pending_requests,
            ..Default::default()
        }
    }

    #[test]
    fn max_requests_with_raii_release() {
        let limits = ConnectionLimits::new(Some(&pool(2, 0)), None);
        let a = limits.try_request().unwrap();
        let b = limits.try_request().unwrap();
        assert_eq!(limits.try_request().unwrap_err(), Overflow::Requests);
        assert_eq!(limits.active(), 2);
        drop(a);
        let c = limits.try_request().unwrap();
        drop((b, c));
        assert_eq!(limits.active(), 0);
    }

    #[test]
    fn pending_limit_and_unlimited() {
        let limits = ConnectionLimits::new(Some(&pool(0, 1)), None);
        let p = limits.try_pending().unwrap();
        assert_eq!(limits.try_pending().unwrap_err(), Overflow::Pending);
        let many: Vec<_> = (0..1000).map(|_| limits.try_request().unwrap()).collect();
        assert_eq!(limits.active(), 1000);
        drop((p, many));
        assert_eq!((limits.active(), limits.pending()), (0, 0));
        let none = ConnectionLimits::new(None, None);
        assert!(none.try_pending().is_ok());
    }

    #[test]
    fn max_retries_is_a_fixed_ceiling_on_outstanding_retries() {
        let limits = ConnectionLimits::new(
            Some(&pb::ConnectionPool {
                max_retries: 2,
                ..Default::default()
            }),
            None,
        );
        let a = limits.try_retry().unwrap();
        let b = limits.try_retry().unwrap();
        assert_eq!(limits.try_retry().unwrap_err(), Overflow::Retries);
        drop(a);
        let c = limits.try_retry().unwrap();
        drop((b, c));
        assert_eq!(limits.retries(), 0);
        // Unset: Istio's default, no ceiling.
        let open = ConnectionLimits::new(Some(&pool(1, 1)), None);
        let many: Vec<_> = (0..1000).map(|_| open.try_retry().unwrap()).collect();
        assert_eq!(open.retries(), 1000);
        drop(many);
    }

    #[test]
    fn the_retry_budget_follows_the_requests_in_flight() {
        let budget = |percent, min| pb::ConnectionPool {
            // Replaced by the budget, as in Envoy.
            max_retries: 1,
            retry_budget: Some(pb::RetryBudget {
                percent,
                min_retry_concurrency: min,
            }),
            ..Default::default()
        };
        let limits = ConnectionLimits::new(Some(&budget(20.0, 3)), None);
        // Idle: the floor.
        let floor: Vec<_> = (0..3).map(|_| limits.try_retry().unwrap()).collect();
        assert_eq!(limits.try_retry().unwrap_err(), Overflow::Retries);
        drop(floor);
        // 40 requests in flight and 10 waiting: 20 % of 50.
        let requests: Vec<_> = (0..40).map(|_| limits.try_request().unwrap()).collect();
        let waiting: Vec<_> = (0..10).map(|_| limits.try_pending().unwrap()).collect();
        let retries: Vec<_> = (0..10).map(|_| limits.try_retry().unwrap()).collect();
        assert_eq!(limits.try_retry().unwrap_err(), Overflow::Retries);
        // Load going away shrinks the budget back to the floor; outstanding retries stay
        // counted until they end.
        drop((requests, waiting));
        assert_eq!(limits.try_retry().unwrap_err(), Overflow::Retries);
        drop(retries);
        assert!(limits.try_retry().is_ok());
        // 0 %: only the floor, and a floor of 0 refuses every retry.
        let none = ConnectionLimits::new(Some(&budget(0.0, 0)), None);
        let _load: Vec<_> = (0..100).map(|_| none.try_request().unwrap()).collect();
        assert_eq!(none.try_retry().unwrap_err(), Overflow::Retries);
    }

    #[test]
    fn counters_survive_updates() {
        let old = ConnectionLimits::new(Some(&pool(2, 0)), None);
        let held = old.try_request().unwrap();
        let new = ConnectionLimits::new(Some(&pool(1, 0)), Some(&old));
        assert_eq!(new.try_request().unwrap_err(), Overflow::Requests);
        drop(held);
        assert!(new.try_request().is_ok());
    }

    #[test]
    fn concurrent_permits_never_exceed_the_limit() {
        let limits = ConnectionLimits::new(Some(&pool(3, 0)), None);
        let peak = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (limits, peak) = (&limits, &peak);
                s.spawn(move || {
                    for _ in 0..10_000 {
                        if let Ok(p) = limits.try_request() {
                            peak.fetch_max(limits.active(), Ordering::Relaxed);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(limits.active(), 0);
    }

    #[test]
    fn pool_settings_defaults() {
        let s = PoolSettings::new(None);
        assert_eq!(s.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(s.max_connections, None);
        let s = PoolSettings::new(Some(&pb::ConnectionPool {
            max_connections: 5,
            connect_timeout_ms: 250,
            ..Default::default()
        }));
        assert_eq!(s.max_connections, NonZeroU32::new(5));
        assert_eq!(s.connect_timeout, Duration::from_millis(250));
    }
}
