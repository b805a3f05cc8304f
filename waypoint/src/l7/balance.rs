//! Endpoint selection within one service (`DestinationRule` `loadBalancer`), skipping
//! endpoints that outlier detection ejected.
//!
//! - `LEAST_REQUEST`: power of two choices — two distinct random endpoints, the one with fewer
//!   requests in flight wins (counted by [`Pick`] guards).
//! - `PEAK_EWMA`: power of two choices by cost = latency estimate × (requests in flight + 1),
//!   the estimate a peak-sensitive moving average of response times (a slower response
//!   replaces it at once, faster ones pull it down with a 10 s decay, and it decays while
//!   nothing is observed so a once-slow endpoint is tried again): Linkerd's balancer.
//! - `ROUND_ROBIN`: a shared atomic cursor; an ejected endpoint's turn goes to the next one.
//! - `RANDOM`: uniform.
//! - `CONSISTENT_HASH`: a hash ring (virtual nodes hashed from each endpoint's key, so the
//!   ring is stable across endpoint set changes: only keys of removed or added endpoints
//!   move); an ejected endpoint's keys go to the next endpoint on the ring; no header: random.
//!
//! Ejected endpoints are skipped unless every endpoint is ejected, in which case ejection is
//! ignored (Envoy's panic mode, at a threshold of 0 % healthy). A retry can ask to avoid the
//! endpoint that just failed; that too yields when nothing else is left.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ambient_proto::ambient::waypoint::v1 as pb;
use http::{HeaderMap, HeaderName};
use pb::load_balancer::Kind;
use rand::RngCore;

use super::outlier::{Ejection, EndpointHealth, OutlierDetector};
use super::{Outcome, Problem, below};

/// Virtual nodes per endpoint on a consistent-hash ring...
const VNODES: usize = 128;
/// ...unless that would make the ring larger than this.
const MAX_RING: usize = 1 << 17;
/// Random draws tried before counting the usable endpoints.
const DRAWS: usize = 8;
/// Peak-EWMA: a response time observed this long ago weighs 1/e (Linkerd's default).
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Peak-EWMA: the response time assumed of an endpoint not yet observed (Linkerd's default).
const EWMA_DEFAULT_RTT: Duration = Duration::from_millis(30);

/// Nanoseconds since the first call (timestamps fit one atomic).
fn nanos(now: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(|| now);
    now.saturating_duration_since(base).as_nanos() as u64
}

/// An endpoint's peak-EWMA response time. Two atomics, not one lock: a race between two
/// observations loses one of them, which an estimate can afford.
#[derive(Debug, Default)]
struct LatencyEstimate {
    /// Nanoseconds, as `f64` bits; 0: nothing observed yet.
    ewma: AtomicU64,
    /// When it was last updated ([`nanos`]).
    at: AtomicU64,
}

impl LatencyEstimate {
    /// The estimate at `now`, decayed since its last update (`None`: never observed), and
    /// the decay's weight.
    fn decayed(&self, now: u64) -> Option<(f64, f64)> {
        let ewma = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        if ewma == 0.0 {
            return None;
        }
        let elapsed = now.saturating_sub(self.at.load(Ordering::Relaxed)) as f64;
        let w = (-elapsed / EWMA_DECAY.as_nanos() as f64).exp();
        Some((ewma * w, w))
    }

    fn at(&self, now: u64) -> Option<f64> {
        self.decayed(now).map(|(estimate, _)| estimate)
    }

    fn observe(&self, rtt: Duration, now: u64) {
        let rtt = (rtt.as_nanos() as f64).max(1.0);
        let next = match self.decayed(now) {
            // Below the estimate: blended in (the stored value weighs w, already applied).
            Some((current, w)) if rtt < current => current + rtt * (1.0 - w),
            // A peak (or a first response) replaces the estimate at once.
            _ => rtt,
        };
        self.ewma.store(next.to_bits(), Ordering::Relaxed);
        self.at.store(now, Ordering::Relaxed);
    }
}

/// A service's load-balancing settings, compiled once per configuration update and shared by
/// every [`Balancer`] built for the service's endpoint sets.
#[derive(Debug)]
pub struct BalancerPolicy {
    kind: Kind,
    hash_header: Option<HeaderName>,
    outlier: Option<OutlierDetector>,
}

impl BalancerPolicy {
    /// Compiles a `TrafficPolicy`'s load balancer and outlier detection (absent: least
    /// request, no detection). A hash header that is not a header name is a [`Problem`]; the
    /// policy then balances at random, as for a request without the header.
    pub fn compile(policy: Option<&pb::TrafficPolicy>) -> (Arc<Self>, Vec<Problem>) {
        let mut problems = Vec::new();
        let lb = policy.and_then(|p| p.load_balancer.as_ref());
        let kind = lb
            .and_then(|l| Kind::try_from(l.kind).ok())
            .unwrap_or(Kind::LeastRequest);
        let hash_header = match (kind, lb) {
            (Kind::ConsistentHash, Some(l)) => HeaderName::from_bytes(l.hash_header.as_bytes())
                .map_err(|_| problems.push(Problem::HeaderName(l.hash_header.clone())))
                .ok(),
            _ => None,
        };
        let outlier = policy
            .and_then(|p| p.outlier_detection.as_ref())
            .and_then(OutlierDetector::new);
        (
            Arc::new(BalancerPolicy {
                kind,
                hash_header,
                outlier,
            }),
            problems,
        )
    }
}

/// An endpoint of the service: the proxy's opaque key (e.g. workload uid and address), its
/// requests in flight and its health. Shared across balancer rebuilds.
#[derive(Debug)]
pub struct Endpoint<K> {
    key: K,
    in_flight: AtomicU64,
    health: EndpointHealth,
    latency: LatencyEstimate,
}

impl<K> Endpoint<K> {
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Requests sent to it and not yet finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> &EndpointHealth {
        &self.health
    }

    /// Its peak-EWMA response time at `now` (`None`: never observed).
    pub fn latency(&self, now: Instant) -> Option<Duration> {
        self.latency
            .at(nanos(now))
            .map(|ns| Duration::from_nanos(ns as u64))
    }

    /// Peak-EWMA's cost: the latency estimate (or the default) × (requests in flight + 1).
    fn cost(&self, now: u64) -> f64 {
        let rtt = self
            .latency
            .at(now)
            .unwrap_or(EWMA_DEFAULT_RTT.as_nanos() as f64);
        rtt * (self.in_flight() + 1) as f64
    }
}

/// A chosen endpoint, counted in flight until dropped: hold it for the whole attempt.
#[derive(Debug)]
#[must_use = "the endpoint is only counted in flight while the pick lives"]
pub struct Pick<K> {
    endpoint: Arc<Endpoint<K>>,
}

impl<K> Pick<K> {
    pub fn key(&self) -> &K {
        &self.endpoint.key
    }

    pub fn endpoint(&self) -> &Endpoint<K> {
        &self.endpoint
    }
}

impl<K> Drop for Pick<K> {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How strictly a candidate must qualify; relaxed step by step when nothing qualifies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    /// Not ejected, not the endpoint to avoid.
    Strict,
    /// Not ejected.
    Healthy,
    /// Anything (panic mode).
    Any,
}

const LEVELS: [Level; 3] = [Level::Strict, Level::Healthy, Level::Any];

/// One service's endpoint set and how to choose among it. Rebuild it when the endpoint set or
/// the policy changes, passing the previous one so counts and ejections carry over.
#[derive(Debug)]
pub struct Balancer<K> {
    policy: Arc<BalancerPolicy>,
    endpoints: Box<[Arc<Endpoint<K>>]>,
    /// `CONSISTENT_HASH` only: (point, endpoint index), sorted by point.
    ring: Box<[(u64, u32)]>,
    cursor: AtomicUsize,
}

fn hash_of(value: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

impl<K: Hash + Eq + Clone> Balancer<K> {
    /// A balancer over `keys` (duplicates ignored), reusing the state of endpoints already in
    /// `previous`. `now` dates the new endpoints.
    pub fn new(
        policy: Arc<BalancerPolicy>,
        keys: impl IntoIterator<Item = K>,
        previous: Option<&Balancer<K>>,
        now: Instant,
    ) -> Self {
        let mut known: HashMap<&K, &Arc<Endpoint<K>>> = previous
            .map(|p| p.endpoints.iter().map(|e| (&e.key, e)).collect())
            .unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        let mut endpoints = Vec::new();
        for key in keys {
            if !seen.insert(key.clone()) {
                continue;
            }
            let endpoint = match known.remove(&key) {
                Some(e) => e.clone(),
                None => Arc::new(Endpoint {
                    key,
                    in_flight: AtomicU64::new(0),
                    health: EndpointHealth::new(now),
                    latency: LatencyEstimate::default(),
                }),
            };
            endpoints.push(endpoint);
        }
        let ring = if policy.kind == Kind::ConsistentHash && !endpoints.is_empty() {
            let vnodes = (MAX_RING / endpoints.len()).clamp(1, VNODES);
            let mut ring: Vec<(u64, u32)> = endpoints
                .iter()
                .enumerate()
                .flat_map(|(i, e)| (0..vnodes).map(move |v| (hash_of((&e.key, v)), i as u32)))
                .collect();
            ring.sort_unstable();
            ring.into()
        } else {
            Box::default()
        };
        Balancer {
            policy,
            endpoints: endpoints.into(),
            ring,
            cursor: AtomicUsize::new(previous.map_or(0, |p| p.cursor.load(Ordering::Relaxed))),
        }
    }
}

impl<K: PartialEq> Balancer<K> {
    /// Chooses an endpoint for a request (`headers` for `CONSISTENT_HASH`), avoiding `avoid`
    /// (the endpoint a retry follows) when another is usable. `None`: no endpoints.
    pub fn pick(
        &self,
        headers: &HeaderMap,
        avoid: Option<&K>,
        now: Instant,
        rng: &mut (impl RngCore + ?Sized),
    ) -> Option<Pick<K>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let usable = |i: usize, level: Level| -> bool {
            let e = &self.endpoints[i];
            match level {
                Level::Any => true,
                Level::Healthy => !self.ejected(e, now),
                Level::Strict => !self.ejected(e, now) && avoid.is_none_or(|a| *a != e.key),
            }
        };
        let index = if n == 1 {
            0
        } else {
            match self.policy.kind {
                Kind::Random => self.random(n, &usable, rng),
                Kind::RoundRobin => {
                    let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
                    LEVELS
                        .iter()
                        .find_map(|&l| (0..n).map(|o| (start + o) % n).find(|&i| usable(i, l)))
                        .unwrap_or(start)
                }
                Kind::LeastRequest => self.two_choices(n, &usable, rng, |e| e.in_flight() as f64),
                Kind::PeakEwma => {
                    let t = nanos(now);
                    self.two_choices(n, &usable, rng, |e| e.cost(t))
                }
                Kind::ConsistentHash => {
                    let value = self
                        .policy
                        .hash_header
                        .as_ref()
                        .and_then(|h| headers.get(h));
                    match value {
                        Some(v) => self.on_ring(hash_of(v.as_bytes()), &usable),
                        None => self.random(n, &usable, rng),
                    }
                }
            }
        };
        let endpoint = self.endpoints[index].clone();
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Pick { endpoint })
    }

    /// Records how an attempt on a picked endpoint ended (outlier detection); returns the
    /// ejection it caused, for logs and metrics.
    pub fn record(&self, pick: &Pick<K>, outcome: Outcome, now: Instant) -> Option<Ejection> {
        let detector = self.policy.outlier.as_ref()?;
        detector.record(
            &pick.endpoint.health,
            outcome,
            now,
            self.endpoints.iter().map(|e| &e.health),
        )
    }

    /// Records how long a picked endpoint took to answer (response head), for `PEAK_EWMA`.
    pub fn observe(&self, pick: &Pick<K>, rtt: Duration, now: Instant) {
        if self.policy.kind == Kind::PeakEwma {
            pick.endpoint.latency.observe(rtt, nanos(now));
        }
    }

    /// The endpoints, e.g. for the admin dump.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint<K>> {
        self.endpoints.iter().map(|e| &**e)
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    fn ejected(&self, e: &Endpoint<K>, now: Instant) -> bool {
        self.policy.outlier.is_some() && e.health.is_ejected(now)
    }

    /// A uniformly random endpoint usable at `level`, if any.
    fn random_at(
        &self,
        n: usize,
        level: Level,
        usable: &impl Fn(usize, Level) -> bool,
        rng: &mut (impl RngCore + ?Sized),
        except: Option<usize>,
    ) -> Option<usize> {
        let ok = |i: usize| Some(i) != except && usable(i, level);
        for _ in 0..DRAWS {
            let i = below(rng, n as u64) as usize;
            if ok(i) {
                return Some(i);
            }
        }
        // Most are unusable: count them (no allocation) and draw among the rest, unbiased.
        let count = (0..n).filter(|&i| ok(i)).count();
        if count == 0 {
            return None;
        }
        let k = below(rng, count as u64) as usize;
        (0..n).filter(|&i| ok(i)).nth(k)
    }

    fn random(
        &self,
        n: usize,
        usable: &impl Fn(usize, Level) -> bool,
        rng: &mut (impl RngCore + ?Sized),
    ) -> usize {
        LEVELS
            .iter()
            .find_map(|&l| self.random_at(n, l, usable, rng, None))
            .unwrap_or(0)
    }

    /// Power of two choices: two distinct random usable endpoints, the one of lower `cost`.
    fn two_choices(
        &self,
        n: usize,
        usable: &impl Fn(usize, Level) -> bool,
        rng: &mut (impl RngCore + ?Sized),
        cost: impl Fn(&Endpoint<K>) -> f64,
    ) -> usize {
        for level in LEVELS {
            let Some(a) = self.random_at(n, level, usable, rng, None) else {
                continue;
            };
            let Some(b) = self.random_at(n, level, usable, rng, Some(a)) else {
                return a;
            };
            let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
            return if cost(eb) < cost(ea) { b } else { a };
        }
        0
    }

    fn on_ring(&self, point: u64, usable: &impl Fn(usize, Level) -> bool) -> usize {
        let start = self.ring.partition_point(|&(p, _)| p < point);
        let len = self.ring.len();
        LEVELS
            .iter()
            .find_map(|&l| {
                (0..len)
                    .map(|o| self.ring[(start + o) % len].1 as usize)
                    .find(|&i| usable(i, l))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, StatusCode};
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use std::time::Duration;

    fn policy(kind: Kind, outlier: bool) -> Arc<BalancerPolicy> {
        let tp = pb::TrafficPolicy {
            load_balancer: Some(pb::LoadBalancer {
                kind: kind as i32,
                hash_header: "x-user".into(),
            }),
            outlier_detection: outlier.then(|| pb::OutlierDetection {
                consecutive_5xx: 1,
                max_ejection_percent: 100,
                ..Default::default()
            }),
            connection_pool: None,
            ..Default::default()
        };
        let (p, problems) = BalancerPolicy::compile(Some(&tp));
        assert!(problems.is_empty());
        p
    }

    fn balancer(kind: Kind, n: usize, outlier: bool) -> Balancer<String> {
        Balancer::new(
            policy(kind, outlier),
            (0..n).map(|i| format!("ep{i}")),
            None,
            Instant::now(),
        )
    }

    fn pick_counts(
        b: &Balancer<String>,
        headers: &HeaderMap,
        draws: usize,
        seed: u64,
    ) -> HashMap<String, usize> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut counts = HashMap::new();
        for _ in 0..draws {
            let p = b.pick(headers, None, Instant::now(), &mut rng).unwrap();
            *counts.entry(p.key().clone()).or_default() += 1;
        }
        counts
    }

    fn eject(b: &Balancer<String>, key: &str) {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(0);
        loop {
            let p = b.pick(&HeaderMap::new(), None, now, &mut rng).unwrap();
            if p.key() == key {
                assert!(
                    b.record(&p, Outcome::Status(StatusCode::BAD_GATEWAY), now)
                        .is_some()
                );
                return;
            }
        }
    }

    #[test]
    fn random_is_uniform() {
        let b = balancer(Kind::Random, 4, false);
        let n = 40_000;
        let c = pick_counts(&b, &HeaderMap::new(), n, 1);
        let sd = (n as f64 * 0.25 * 0.75).sqrt();
        for v in c.values() {
            assert!((*v as f64 - 10_000.0).abs() < 5.0 * sd, "{c:?}");
        }
    }

    #[test]
    fn round_robin_cycles() {
        let b = balancer(Kind::RoundRobin, 3, false);
        let mut rng = SmallRng::seed_from_u64(1);
        let keys: Vec<String> = (0..6)
            .map(|_| {
                b.pick(&HeaderMap::new(), None, Instant::now(), &mut rng)
                    .unwrap()
                    .key()
                    .clone()
            })
            .collect();
        assert_eq!(keys, ["ep0", "ep1", "ep2", "ep0", "ep1", "ep2"]);
    }

    #[test]
    fn the_latency_estimate_follows_peaks_at_once_and_falls_slowly() {
        let e = LatencyEstimate::default();
        assert_eq!(e.at(0), None);
        let ms = |v: u64| Duration::from_millis(v);
        let sec = 1_000_000_000u64;
        e.observe(ms(10), 0);
        assert_eq!(e.at(0), Some(10e6));
        // A slower response replaces the estimate at once.
        e.observe(ms(100), sec);
        assert_eq!(e.at(sec), Some(100e6));
        // A fast one a second later barely moves it (decay 10 s: weight e^-0.1 ≈ 0.905).
        e.observe(ms(1), 2 * sec);
        let after = e.at(2 * sec).unwrap();
        let expected = 100e6 * (-0.1f64).exp() + 1e6 * (1.0 - (-0.1f64).exp());
        assert!((after - expected).abs() < 1e3, "{after} vs {expected}");
        // Untouched, it decays: by e after 10 s.
        let later = e.at(12 * sec).unwrap();
        assert!((later - after / std::f64::consts::E).abs() < 1e3, "{later}");
    }

    #[test]
    fn peak_ewma_prefers_the_fast_endpoint_until_it_is_loaded() {
        let b = balancer(Kind::PeakEwma, 2, false);
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(5);
        let headers = HeaderMap::new();
        // ep0 answered in 100 ms, ep1 in 5 ms.
        let p0 = loop {
            let p = b.pick(&headers, None, now, &mut rng).unwrap();
            if p.key() == "ep0" {
                break p;
            }
        };
        b.observe(&p0, Duration::from_millis(100), now);
        drop(p0);
        let p1 = b.pick(&headers, None, now, &mut rng).unwrap();
        assert_eq!(p1.key(), "ep1", "ep0 now costs more than the 30 ms default");
        b.observe(&p1, Duration::from_millis(5), now);
        drop(p1);
        // With two endpoints both are always the candidates: the cheaper one wins.
        for _ in 0..100 {
            assert_eq!(b.pick(&headers, None, now, &mut rng).unwrap().key(), "ep1");
        }
        // Twenty requests in flight on ep1 cost 5 × 21 = 105 > 100 × 1: ep0 again.
        let held: Vec<_> = (0..20)
            .map(|_| b.pick(&headers, None, now, &mut rng).unwrap())
            .collect();
        assert!(held.iter().all(|p| p.key() == "ep1"));
        assert_eq!(b.pick(&headers, None, now, &mut rng).unwrap().key(), "ep0");
        // Other algorithms ignore response times.
        let least = balancer(Kind::LeastRequest, 2, false);
        let p = least.pick(&headers, None, now, &mut rng).unwrap();
        least.observe(&p, Duration::from_secs(1), now);
        assert!(least.endpoints().all(|e| e.latency(now).is_none()));
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        // Hold five requests on ep0 (picked at random), then balance by least request over
        // the same endpoints.
        let random = balancer(Kind::Random, 3, false);
        let mut rng = SmallRng::seed_from_u64(2);
        let mut held = Vec::new();
        while held.len() < 5 {
            let p = random
                .pick(&HeaderMap::new(), None, Instant::now(), &mut rng)
                .unwrap();
            if p.key() == "ep0" {
                held.push(p);
            }
        }
        let keys = random
            .endpoints()
            .map(|e| e.key().clone())
            .collect::<Vec<_>>();
        let b = Balancer::new(
            policy(Kind::LeastRequest, false),
            keys,
            Some(&random),
            Instant::now(),
        );
        assert_eq!(b.endpoints().next().unwrap().in_flight(), 5);
        // Two distinct candidates out of three always include a less busy one.
        let c = pick_counts(&b, &HeaderMap::new(), 3_000, 3);
        assert_eq!(c.get("ep0"), None, "{c:?}");
        drop(held);
        assert_eq!(b.endpoints().map(|e| e.in_flight()).sum::<u64>(), 0);
        let c = pick_counts(&b, &HeaderMap::new(), 3_000, 4);
        assert!(c["ep0"] > 500, "{c:?}");
    }

    #[test]
    fn ejected_endpoints_are_skipped_unless_all_are() {
        for kind in [
            Kind::Random,
            Kind::RoundRobin,
            Kind::LeastRequest,
            Kind::ConsistentHash,
        ] {
            let b = balancer(kind, 3, true);
            eject(&b, "ep1");
            let mut headers = HeaderMap::new();
            let mut seen = HashMap::new();
            for i in 0..600 {
                headers.insert("x-user", HeaderValue::from(i));
                seen.extend(pick_counts(&b, &headers, 1, i as u64));
            }
            assert!(!seen.contains_key("ep1"), "{kind:?} {seen:?}");
            assert_eq!(seen.len(), 2, "{kind:?}");
            eject(&b, "ep0");
            eject(&b, "ep2");
            // All ejected: ejection is ignored.
            let c = pick_counts(&b, &HeaderMap::new(), 300, 9);
            assert_eq!(c.len(), 3, "{kind:?} {c:?}");
        }
    }

    #[test]
    fn ejection_ends_with_time() {
        let b = balancer(Kind::Random, 2, true);
        eject(&b, "ep0");
        let later = Instant::now() + Duration::from_secs(31);
        let mut rng = SmallRng::seed_from_u64(5);
        let keys: std::collections::HashSet<String> = (0..200)
            .map(|_| {
                b.pick(&HeaderMap::new(), None, later, &mut rng)
                    .unwrap()
                    .key()
                    .clone()
            })
            .collect();
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn avoid_previous_endpoint_on_retry() {
        for kind in [
            Kind::Random,
            Kind::RoundRobin,
            Kind::LeastRequest,
            Kind::ConsistentHash,
        ] {
            let b = balancer(kind, 2, false);
            let mut rng = SmallRng::seed_from_u64(6);
            let mut headers = HeaderMap::new();
            headers.insert("x-user", HeaderValue::from_static("alice"));
            let avoid = "ep0".to_string();
            for _ in 0..100 {
                let p = b
                    .pick(&headers, Some(&avoid), Instant::now(), &mut rng)
                    .unwrap();
                assert_eq!(p.key(), "ep1", "{kind:?}");
            }
            // The only endpoint is picked even if it is to be avoided.
            let one = balancer(kind, 1, false);
            assert!(
                one.pick(&headers, Some(&avoid), Instant::now(), &mut rng)
                    .is_some()
            );
        }
    }

    #[test]
    fn consistent_hash_is_sticky_and_stable_across_changes() {
        let p = policy(Kind::ConsistentHash, false);
        let keys: Vec<String> = (0..10).map(|i| format!("ep{i}")).collect();
        let b = Balancer::new(p.clone(), keys.clone(), None, Instant::now());
        let mut rng = SmallRng::seed_from_u64(7);
        let assign = |b: &Balancer<String>, rng: &mut SmallRng| -> Vec<String> {
            (0..2_000)
                .map(|u| {
                    let mut h = HeaderMap::new();
                    h.insert("x-user", HeaderValue::from(u));
                    b.pick(&h, None, Instant::now(), rng).unwrap().key().clone()
                })
                .collect()
        };
        let before = assign(&b, &mut rng);
        assert_eq!(before, assign(&b, &mut rng), "sticky");
        // Reasonably balanced: every endpoint gets between 5 % and 15 % of 2000 users.
        let mut per: HashMap<&String, usize> = HashMap::new();
        for k in &before {
            *per.entry(k).or_default() += 1;
        }
        assert!(per.values().all(|&c| (100..=300).contains(&c)), "{per:?}");
        // Remove ep3: only its users move.
        let fewer: Vec<String> = keys.iter().filter(|k| *k != "ep3").cloned().collect();
        let b2 = Balancer::new(p.clone(), fewer, Some(&b), Instant::now());
        let after = assign(&b2, &mut rng);
        for (x, y) in before.iter().zip(&after) {
            if x != "ep3" {
                assert_eq!(x, y);
            }
        }
        // Absent header: spread at random.
        let c = pick_counts(&b, &HeaderMap::new(), 2_000, 8);
        assert_eq!(c.len(), 10);
    }

    #[test]
    fn state_carries_over_rebuilds() {
        let p = policy(Kind::LeastRequest, true);
        let old = Balancer::new(
            p.clone(),
            ["a".to_string(), "b".to_string()],
            None,
            Instant::now(),
        );
        let mut rng = SmallRng::seed_from_u64(10);
        let held = old
            .pick(&HeaderMap::new(), None, Instant::now(), &mut rng)
            .unwrap();
        let held_key = held.key().clone();
        let new = Balancer::new(
            p,
            [
                "a".to_string(),
                "b".to_string(),
                "c".to_string(),
                "a".to_string(),
            ],
            Some(&old),
            Instant::now(),
        );
        assert_eq!(new.len(), 3);
        let e = new.endpoints().find(|e| *e.key() == held_key).unwrap();
        assert_eq!(e.in_flight(), 1);
        drop(held);
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn empty_and_bad_hash_header() {
        let b = balancer(Kind::Random, 0, false);
        assert!(
            b.pick(&HeaderMap::new(), None, Instant::now(), &mut rand::rng())
                .is_none()
        );
        let tp = pb::TrafficPolicy {
            load_balancer: Some(pb::LoadBalancer {
                kind: Kind::ConsistentHash as i32,
                hash_header: "bad header".into(),
            }),
            ..Default::default()
        };
        let (_, problems) = BalancerPolicy::compile(Some(&tp));
        assert_eq!(problems.len(), 1);
    }
}
