//! Local rate limiting (`LocalRateLimitPolicy`): whether a request may pass the limits of one
//! attachment point (the waypoint Gateway, a Service, or a route rule).
//!
//! Each limit is a GCRA bucket (the generic cell rate algorithm: a token bucket kept as one
//! "theoretical arrival time", so taking a token is a single compare-and-swap and a bucket
//! nobody uses costs nothing to refill). A request takes a token from its client's bucket
//! first (the first override that applies, else the per-identity limit), then from the total
//! bucket; a client refused by its own bucket never spends the total, so one noisy client
//! cannot starve the others. Per-client buckets live in a lock-free map, swept of buckets that
//! have refilled (a full bucket is the same as no bucket).
//!
//! Several waypoint instances share a policy by each enforcing `1/replicas` of every rate and
//! burst, as the controller counts them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambient_proto::ambient::waypoint::v1 as pb;
use ambient_proto::identity::Identity;

use super::matcher::Pattern;
use super::route::Match;
use super::{ConfigError, Problem};

/// One rate as a GCRA: a request every `emission_ns`, up to `tolerance_ns` ahead of time
/// (the burst).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rate {
    emission_ns: u64,
    tolerance_ns: u64,
}

impl Rate {
    /// This instance's share of `rate`. A rate of zero (or one that is not a number) lets no
    /// request through: a broken limit fails closed.
    fn new(rate: &pb::RateLimitRate, replicas: u32) -> Rate {
        let replicas = replicas.max(1);
        let per_second = rate.requests_per_second / f64::from(replicas);
        if !(per_second.is_finite() && per_second > 0.0) {
            return Rate {
                emission_ns: u64::MAX,
                tolerance_ns: 0,
            };
        }
        let emission_ns = (1e9 / per_second).clamp(1.0, u64::MAX as f64 / 4.0) as u64;
        let burst = if rate.burst == 0 {
            rate.requests_per_second.ceil().max(1.0) as u64
        } else {
            u64::from(rate.burst)
        };
        let burst = burst.div_ceil(u64::from(replicas)).max(1);
        Rate {
            emission_ns,
            tolerance_ns: emission_ns.saturating_mul(burst),
        }
    }

    /// Takes a token from the bucket whose state is `tat` at time `now` (ns since the
    /// limiter's epoch); `Err` holds how long until one is free.
    fn take(&self, tat: &AtomicU64, now: u64) -> Result<(), Duration> {
        if self.tolerance_ns == 0 {
            return Err(Duration::from_secs(1));
        }
        let mut current = tat.load(Ordering::Acquire);
        loop {
            let next = current.max(now).saturating_add(self.emission_ns);
            let ahead = next - now;
            if ahead > self.tolerance_ns {
                return Err(Duration::from_nanos(ahead - self.tolerance_ns));
            }
            match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }

    /// Gives back a token taken by [`Rate::take`] (the request was refused by another bucket).
    fn give_back(&self, tat: &AtomicU64) {
        let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
            Some(t.saturating_sub(self.emission_ns))
        });
    }
}

/// The principal as policies write it (`td/ns/<ns>/sa/<sa>`).
fn principal(id: &Identity) -> &str {
    id.as_uri().strip_prefix("spiffe://").unwrap_or("")
}

/// Which bucket refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Total,
    Identity,
    /// The override at this index.
    Override(usize),
}

impl Bucket {
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Total => "total",
            Bucket::Identity => "identity",
            Bucket::Override(_) => "override",
        }
    }
}

/// A refused request: the bucket that refused it and when to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub bucket: Bucket,
    pub retry_after: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

struct Override {
    rate: Rate,
    /// Empty: any client.
    principals: Vec<Pattern>,
    /// Empty: any request; else OR-ed.
    matches: Vec<Match>,
}

impl Override {
    fn applies(&self, client: &Identity, req: &http::request::Parts) -> bool {
        let principal_ok = self.principals.is_empty() || {
            let principal = principal(client);
            self.principals.iter().any(|p| p.matches(principal))
        };
        principal_ok
            && (self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req).is_some()))
    }
}

/// The per-client bucket slot: 0 the identity limit, `i + 1` override `i`.
type ClientKey = (u32, Identity);

/// One policy at one attachment point, with its buckets.
pub struct RateLimiter {
    /// What it was built from: a rebuild with the same keeps the buckets.
    spec: pb::RateLimit,
    /// `namespace/name`, for logs and metrics.
    name: Box<str>,
    epoch: Instant,
    total: Option<(Rate, AtomicU64)>,
    identity: Option<Rate>,
    overrides: Vec<Override>,
    clients: papaya::HashMap<ClientKey, AtomicU64>,
    /// `ambient_rate_limited_total` of this policy, by bucket (total, identity, override),
    /// registered once: a flood of refused requests must not allocate label sets.
    refused: [metrics::Counter; 3],
}

/// Requests refused by a LocalRateLimitPolicy, by policy and bucket.
pub const RATE_LIMITED: &str = "ambient_rate_limited_total";

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.name)
            .field("clients", &self.clients.len())
            .finish()
    }
}

impl RateLimiter {
    /// Compiles `spec`; `origin` names the attachment point in errors. An override whose
    /// principal or match cannot be compiled is dropped and reported (the identity and total
    /// limits still hold).
    pub fn compile(spec: &pb::RateLimit, origin: &str, errors: &mut Vec<ConfigError>) -> Self {
        let mut problem = |p: Problem| {
            errors.push(ConfigError {
                origin: format!(
                    "{origin}: LocalRateLimitPolicy {}/{}",
                    spec.namespace, spec.name
                ),
                problem: p,
            })
        };
        let overrides = spec
            .overrides
            .iter()
            .filter_map(|o| {
                let principals = o
                    .principals
                    .iter()
                    .map(|p| Pattern::parse(p))
                    .collect::<Result<Vec<_>, _>>();
                let matches = o
                    .matches
                    .iter()
                    .map(Match::compile)
                    .collect::<Result<Vec<_>, _>>();
                match (principals, matches) {
                    (Ok(principals), Ok(matches)) => Some(Override {
                        rate: Rate::new(&o.rate.unwrap_or_default(), spec.replicas),
                        principals,
                        matches,
                    }),
                    (Err(p), _) | (_, Err(p)) => {
                        problem(p);
                        None
                    }
                }
            })
            .collect();
        let name: Box<str> = format!("{}/{}", spec.namespace, spec.name).into();
        let refused = [Bucket::Total, Bucket::Identity, Bucket::Override(0)].map(|b| {
            metrics::counter!(RATE_LIMITED, "policy" => name.to_string(), "bucket" => b.as_str())
        });
        RateLimiter {
            spec: spec.clone(),
            name,
            refused,
            epoch: Instant::now(),
            total: spec
                .total
                .as_ref()
                .map(|r| (Rate::new(r, spec.replicas), AtomicU64::new(0))),
            identity: spec.identity.as_ref().map(|r| Rate::new(r, spec.replicas)),
            overrides,
            clients: papaya::HashMap::new(),
        }
    }

    /// `namespace/name` of the policy.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts a request `bucket` refused.
    pub fn count_refused(&self, bucket: Bucket) {
        let i = match bucket {
            Bucket::Total => 0,
            Bucket::Identity => 1,
            Bucket::Override(_) => 2,
        };
        self.refused[i].increment(1);
    }

    /// Whether this limiter was built from `spec` (then a rebuild keeps it, buckets and all).
    pub fn is_built_from(&self, spec: &pb::RateLimit) -> bool {
        &self.spec == spec
    }

    fn nanos(&self, now: Instant) -> u64 {
        // +1: a bucket's state 0 means "never used", which must read as full at any time.
        now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    /// Takes a token for one request from `client`, or says which bucket refused it.
    pub fn check(
        &self,
        client: &Identity,
        req: &http::request::Parts,
        now: Instant,
    ) -> Result<(), Limited> {
        let now = self.nanos(now);
        let own = match self.overrides.iter().position(|o| o.applies(client, req)) {
            Some(i) => Some((Bucket::Override(i), self.overrides[i].rate, i as u32 + 1)),
            None => self.identity.map(|r| (Bucket::Identity, r, 0)),
        };
        let clients = self.clients.pin();
        let taken = match own {
            Some((bucket, rate, slot)) => {
                let tat = clients.get_or_insert_with((slot, client.clone()), || AtomicU64::new(0));
                rate.take(tat, now).map_err(|retry_after| Limited {
                    bucket,
                    retry_after,
                })?;
                Some((rate, tat))
            }
            None => None,
        };
        if let Some((rate, tat)) = &self.total
            && let Err(retry_after) = rate.take(tat, now)
        {
            if let Some((own_rate, own_tat)) = taken {
                own_rate.give_back(own_tat);
            }
            return Err(Limited {
                bucket: Bucket::Total,
                retry_after,
            });
        }
        Ok(())
    }

    /// Forgets client buckets that have refilled by `now`; returns how many remain.
    pub fn sweep(&self, now: Instant) -> usize {
        let now = self.nanos(now);
        let clients = self.clients.pin();
        clients.retain(|_, tat| tat.load(Ordering::Acquire) > now);
        clients.len()
    }

    /// Client buckets currently held.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }
}

/// Rate limiters by attachment point and policy, carried across configuration rebuilds: the
/// same policy, unchanged, at the same attachment point keeps its buckets (a push of
/// unrelated configuration must not hand every client a fresh burst).
#[derive(Debug, Default)]
pub struct Limiters {
    previous: Arc<HashMap<LimiterKey, Arc<RateLimiter>>>,
    current: HashMap<LimiterKey, Arc<RateLimiter>>,
}

/// Attachment point and policy (`namespace/name`).
pub type LimiterKey = (String, String);

impl Limiters {
    /// A rebuild that may reuse the limiters `previous` holds.
    pub fn rebuilding(previous: &Limiters) -> Limiters {
        Limiters {
            previous: Arc::new(previous.current.clone()),
            current: HashMap::new(),
        }
    }

    /// The limiters of one part of a rebuild (a service), reusing the same previous ones;
    /// the whole then [`keep`](Self::keep)s what the part attached.
    pub fn part(&self) -> Limiters {
        Limiters {
            previous: self.previous.clone(),
            current: HashMap::new(),
        }
    }

    /// What this part attached.
    pub fn into_attached(self) -> Vec<(LimiterKey, Arc<RateLimiter>)> {
        self.current.into_iter().collect()
    }

    /// Takes limiters a part attached, in this rebuild or in an earlier one whose result is
    /// kept.
    pub fn keep(&mut self, attached: &[(LimiterKey, Arc<RateLimiter>)]) {
        for (key, limiter) in attached {
            self.current.insert(key.clone(), limiter.clone());
        }
    }

    /// The limiters of `specs` at attachment point `at` (`service shop/a`, `gateway ...`,
    /// `shop/a:80 HTTPRoute shop/r#0`).
    pub fn attach(
        &mut self,
        at: &str,
        specs: &[pb::RateLimit],
        errors: &mut Vec<ConfigError>,
    ) -> Box<[Arc<RateLimiter>]> {
        specs
            .iter()
            .map(|spec| {
                let key = (at.to_string(), format!("{}/{}", spec.namespace, spec.name));
                let limiter = match self.previous.get(&key) {
                    Some(l) if l.is_built_from(spec) => l.clone(),
                    _ => Arc::new(RateLimiter::compile(spec, at, errors)),
                };
                self.current.insert(key, limiter.clone());
                limiter
            })
            .collect()
    }

    /// Every limiter in use.
    pub fn all(&self) -> impl Iterator<Item = &Arc<RateLimiter>> {
        self.current.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(rps: f64, burst: u32) -> Option<pb::RateLimitRate> {
        Some(pb::RateLimitRate {
            requests_per_second: rps,
            burst,
        })
    }

    fn limiter(spec: pb::RateLimit) -> RateLimiter {
        let mut errors = Vec::new();
        let l = RateLimiter::compile(&spec, "test", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        l
    }

    fn client(sa: &str) -> Identity {
        Identity::new("cluster.local", "shop", sa).unwrap()
    }

    fn get(path: &str) -> http::request::Parts {
        http::Request::get(path).body(()).unwrap().into_parts().0
    }

    /// Requests from `c` at `per_second` for `secs`, starting at `start`: how many passed.
    fn drive(l: &RateLimiter, c: &Identity, start: Instant, per_second: u64, secs: u64) -> u64 {
        let step = Duration::from_nanos(1_000_000_000 / per_second);
        (0..per_second * secs)
            .filter(|i| l.check(c, &get("/"), start + step * (*i as u32)).is_ok())
            .count() as u64
    }

    #[test]
    fn total_rate_holds_over_time_after_the_burst() {
        let l = limiter(pb::RateLimit {
            total: rate(100.0, 10),
            ..Default::default()
        });
        let start = Instant::now();
        // 400 requests a second for 10 s: the burst, then 100 a second.
        let passed = drive(&l, &client("a"), start, 400, 10);
        assert!((1000..=1011).contains(&passed), "{passed}");
    }

    #[test]
    fn a_refused_request_says_when_to_come_back() {
        let l = limiter(pb::RateLimit {
            total: rate(2.0, 1),
            ..Default::default()
        });
        let now = Instant::now();
        assert!(l.check(&client("a"), &get("/"), now).is_ok());
        let refused = l.check(&client("a"), &get("/"), now).unwrap_err();
        assert_eq!(refused.bucket, Bucket::Total);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(
            l.check(&client("a"), &get("/"), now + Duration::from_millis(500))
                .is_ok()
        );
    }

    #[test]
    fn each_identity_has_its_own_bucket_and_a_refused_one_spends_no_total() {
        let l = limiter(pb::RateLimit {
            total: rate(100.0, 100),
            identity: rate(10.0, 10),
            ..Default::default()
        });
        let now = Instant::now();
        let noisy = client("noisy");
        let refused = (0..1000)
            .filter(|_| l.check(&noisy, &get("/"), now).is_err())
            .count();
        assert_eq!(refused, 990);
        // The noisy client's 990 refusals left the total untouched for everyone else.
        let quiet = (0..9)
            .map(|i| client(&format!("quiet{i}")))
            .map(|c| {
                (0..10)
                    .filter(|_| l.check(&c, &get("/"), now).is_ok())
                    .count()
            })
            .sum::<usize>();
        assert_eq!(quiet, 90);
        let last = l.check(&client("one-more"), &get("/"), now).unwrap_err();
        assert_eq!(last.bucket, Bucket::Total);
    }

    #[test]
    fn a_client_refused_by_the_total_keeps_its_own_token() {
        let l = limiter(pb::RateLimit {
            total: rate(1.0, 1),
            identity: rate(1.0, 2),
            ..Default::default()
        });
        let now = Instant::now();
        assert!(l.check(&client("a"), &get("/"), now).is_ok());
        // b's own bucket allows, the total refuses: b's token is given back ...
        let refused = l.check(&client("b"), &get("/"), now).unwrap_err();
        assert_eq!(refused.bucket, Bucket::Total);
        // ... so b still has both of its burst once the total refills.
        let later = now + Duration::from_secs(1);
        assert!(l.check(&client("b"), &get("/"), later).is_ok());
        let again = l.check(&client("b"), &get("/"), later).unwrap_err();
        assert_eq!(
            again.bucket,
            Bucket::Total,
            "b's own bucket still had a token"
        );
    }

    #[test]
    fn overrides_apply_by_principal_and_by_request_in_order() {
        let l = limiter(pb::RateLimit {
            identity: rate(1.0, 1),
            overrides: vec![
                pb::RateLimitOverride {
                    rate: rate(5.0, 5),
                    principals: vec!["cluster.local/ns/shop/sa/vip".into()],
                    matches: vec![],
                },
                pb::RateLimitOverride {
                    rate: rate(3.0, 3),
                    principals: vec![],
                    matches: vec![pb::RouteMatch {
                        method: "POST".into(),
                        ..Default::default()
                    }],
                },
            ],
            ..Default::default()
        });
        let now = Instant::now();
        let passed = |c: &Identity, req: &http::request::Parts| {
            (0..10).filter(|_| l.check(c, req, now).is_ok()).count()
        };
        assert_eq!(passed(&client("vip"), &get("/")), 5);
        assert_eq!(passed(&client("plain"), &get("/")), 1);
        let mut post = get("/");
        post.method = http::Method::POST;
        assert_eq!(passed(&client("poster"), &post), 3);
        let refused = l.check(&client("poster"), &post, now).unwrap_err();
        assert_eq!(refused.bucket, Bucket::Override(1));
        // The first override that applies wins: vip's POSTs use its own override.
        let l2_vip = client("vip");
        assert_eq!(
            l.check(&l2_vip, &post, now).unwrap_err().bucket,
            Bucket::Override(0)
        );
    }

    #[test]
    fn replicas_share_the_rate_and_the_burst() {
        let l = limiter(pb::RateLimit {
            total: rate(100.0, 10),
            replicas: 4,
            ..Default::default()
        });
        let passed = drive(&l, &client("a"), Instant::now(), 400, 10);
        assert!((250..=253).contains(&passed), "{passed}");
    }

    #[test]
    fn a_zero_rate_refuses_everything() {
        let l = limiter(pb::RateLimit {
            total: rate(0.0, 0),
            ..Default::default()
        });
        let refused = l
            .check(&client("a"), &get("/"), Instant::now())
            .unwrap_err();
        assert_eq!(refused.retry_after_secs(), 1);
    }

    #[test]
    fn refilled_client_buckets_are_swept() {
        let l = limiter(pb::RateLimit {
            identity: rate(10.0, 1),
            ..Default::default()
        });
        let now = Instant::now();
        for i in 0..50 {
            l.check(&client(&format!("c{i}")), &get("/"), now).unwrap();
        }
        assert_eq!(l.sweep(now), 50);
        assert_eq!(l.sweep(now + Duration::from_millis(100)), 0);
    }

    #[test]
    fn a_rebuild_keeps_the_buckets_of_an_unchanged_policy_only() {
        let spec = pb::RateLimit {
            namespace: "shop".into(),
            name: "rl".into(),
            total: rate(1.0, 1),
            ..Default::default()
        };
        let mut errors = Vec::new();
        let mut first = Limiters::default();
        let a = first.attach("service shop/a", std::slice::from_ref(&spec), &mut errors);
        assert!(a[0].check(&client("x"), &get("/"), Instant::now()).is_ok());
        let mut second = Limiters::rebuilding(&first);
        let same = second.attach("service shop/a", std::slice::from_ref(&spec), &mut errors);
        assert!(Arc::ptr_eq(&a[0], &same[0]));
        let elsewhere = second.attach("service shop/b", std::slice::from_ref(&spec), &mut errors);
        assert!(!Arc::ptr_eq(&a[0], &elsewhere[0]));
        let mut third = Limiters::rebuilding(&second);
        let changed = pb::RateLimit {
            total: rate(2.0, 1),
            ..spec
        };
        let new = third.attach("service shop/a", &[changed], &mut errors);
        assert!(!Arc::ptr_eq(&a[0], &new[0]));
        assert_eq!(third.all().count(), 1);
    }

    #[test]
    fn a_broken_override_is_reported_and_dropped() {
        let mut errors = Vec::new();
        let l = RateLimiter::compile(
            &pb::RateLimit {
                namespace: "shop".into(),
                name: "rl".into(),
                identity: rate(1.0, 1),
                overrides: vec![pb::RateLimitOverride {
                    rate: rate(100.0, 100),
                    principals: vec!["{**}".into()],
                    matches: vec![],
                }],
                ..Default::default()
            },
            "service shop/a",
            &mut errors,
        );
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .to_string()
                .contains("LocalRateLimitPolicy shop/rl")
        );
        let now = Instant::now();
        assert!(l.check(&client("a"), &get("/"), now).is_ok());
        assert!(l.check(&client("a"), &get("/"), now).is_err());
    }
}
