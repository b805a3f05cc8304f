//! Connection-pool limits of a service (`DestinationRule` `connectionPool`): concurrent
//! requests and requests waiting for a connection, counted with atomics and released by RAII
//! permits; plus the upstream pool settings the proxy's connection pool applies.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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
}

#[derive(Debug, Default)]
struct Counters {
    active: AtomicU32,
    pending: AtomicU32,
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
    counters: Arc<Counters>,
}

impl ConnectionLimits {
    /// Limits from a `ConnectionPool` (0 or absent: unlimited), sharing the counters of
    /// `previous`.
    pub fn new(pool: Option<&pb::ConnectionPool>, previous: Option<&ConnectionLimits>) -> Self {
        ConnectionLimits {
            max_requests: pool.and_then(|p| NonZeroU32::new(p.max_requests)),
            max_pending: pool.and_then(|p| NonZeroU32::new(p.max_pending_requests)),
            counters: previous.map(|p| p.counters.clone()).unwrap_or_default(),
        }
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

/// How the proxy's upstream connection pool treats a service's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections per endpoint (HTTP/1); `None`: unlimited.
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
