//! L7 decisions, free of I/O: each module takes the controller's configuration
//! (`ambient_proto::ambient::waypoint::v1`) and a request's parts and says what to do.
//!
//! Configuration is compiled once per update (regexes, header names, CIDRs, weights, hash
//! rings); a request then costs lookups and atomics only. A request's path through them:
//!
//! 1. [`protocol::detect`] on the first bytes of a stream whose port is `DETECT`.
//! 2. [`path::normalize`] the request path once; routing and authorization both see it.
//! 3. [`authz::evaluate`] the gateway's and the service's [`authz::Policies`].
//! 4. [`route::RouteTable::select`] a route (none: 404); an invalid route answers 500.
//! 5. [`fault::Fault::decide`] delay and abort.
//! 6. [`filters::Filters::redirect`] answers instead of forwarding; otherwise
//!    [`filters::Filters::apply_request`], then [`backend::Backends::choose`] a backend (none:
//!    500) and apply its own filters; [`filters::Filters::mirrors`] lists the copies to send.
//! 7. [`limits::ConnectionLimits::try_request`] on the backend service (overflow: 503 `UO`).
//! 8. [`balance::Balancer::pick`] an endpoint, send, [`balance::Balancer::record`] the
//!    [`Outcome`] (outlier detection), and ask [`retry::RetryState::next`] whether to try again.
//! 9. [`filters::Filters::apply_response`] on the answer.
//!
//! Problems found while compiling are [`ConfigError`]s returned alongside what could be
//! compiled, so one bad route or policy never takes down the rest of a service.

pub mod authz;
pub mod backend;
pub mod balance;
pub mod fault;
pub mod filters;
pub mod jwks;
pub mod jwt;
#[doc(hidden)]
pub mod jwt_testing;
pub mod limits;
pub mod matcher;
pub mod outlier;
pub mod path;
pub mod protocol;
pub mod ratelimit;
pub mod retry;
pub mod route;

use http::StatusCode;
use rand::RngCore;

/// A configuration problem, naming where it is (`HTTPRoute ns/name#0`, `policy ns/name`) and
/// what is wrong, so the controller's author and the operator can find it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct ConfigError {
    /// The route or policy the problem is in.
    pub origin: String,
    pub problem: Problem,
}

/// What is wrong with a piece of configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("invalid regex {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    #[error("invalid value for header {0:?}")]
    HeaderValue(String),
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("invalid path {0:?}: it must start with '/' and be a valid URI path")]
    Path(String),
    #[error("invalid hostname {0:?}")]
    Hostname(String),
    #[error("invalid scheme {0:?}")]
    Scheme(String),
    #[error("invalid port {0:?}")]
    Port(String),
    #[error("redirect status {0} is not one of 301, 302, 303, 307, 308")]
    RedirectStatus(u32),
    #[error("fault abort status {0} is not an HTTP status (200-599)")]
    AbortStatus(u32),
    #[error("retry code {0} is not an HTTP status")]
    RetryCode(u32),
    #[error("a match, filter or path modifier has no kind (unknown to this waypoint)")]
    Unknown,
    #[error("ReplacePrefixMatch needs every match of the route to be a path prefix match")]
    PrefixRewriteWithoutPrefixMatch,
    #[error("a route cannot both redirect and rewrite, nor redirect twice")]
    ConflictingFilters,
    #[error("a backend cannot redirect")]
    BackendRedirect,
    #[error("backend {0:?} has no service or no valid port")]
    Backend(String),
    #[error("invalid address or CIDR {0:?}")]
    Cidr(String),
    #[error("unsupported condition key {0:?}")]
    ConditionKey(String),
    #[error("unsupported pattern {0:?}")]
    Pattern(String),
}

/// How one attempt to reach an upstream endpoint ended: what retries and outlier detection
/// both judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status.
    Status(StatusCode),
    /// No connection (refused, unreachable, connect timeout, HBONE tunnel refused).
    ConnectFailure,
    /// The connection or stream was reset before a response arrived.
    Reset,
    /// The per-try timeout expired before a response arrived.
    Timeout,
}

impl Outcome {
    /// A server-side failure (5xx or no response): what `consecutive_5xx` counts.
    pub fn is_5xx(self) -> bool {
        match self {
            Outcome::Status(s) => s.is_server_error(),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => true,
        }
    }

    /// 502, 503, 504 or no response: what `consecutive_gateway_errors` counts.
    pub fn is_gateway_error(self) -> bool {
        match self {
            Outcome::Status(s) => matches!(s.as_u16(), 502..=504),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => true,
        }
    }
}

/// A uniformly distributed integer in `0..n` (`n > 0`), exactly unbiased (multiply-shift
/// with rejection), so weights and endpoint draws carry no modulo bias.
pub(crate) fn below(rng: &mut (impl RngCore + ?Sized), n: u64) -> u64 {
    debug_assert!(n > 0);
    let mut wide = u128::from(rng.next_u64()) * u128::from(n);
    if (wide as u64) < n {
        // Values of the low half below `2^64 mod n` would over-represent some results.
        let threshold = n.wrapping_neg() % n;
        while (wide as u64) < threshold {
            wide = u128::from(rng.next_u64()) * u128::from(n);
        }
    }
    (wide >> 64) as u64
}

/// True with probability `percent / 100` (fractional percentages kept; `<= 0` never,
/// `>= 100` always, NaN never).
pub(crate) fn chance(rng: &mut (impl RngCore + ?Sized), percent: f64) -> bool {
    if percent.is_nan() || percent <= 0.0 {
        return false;
    }
    if percent >= 100.0 {
        return true;
    }
    // 53 random bits as a fraction in [0, 1).
    let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    unit * 100.0 < percent
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn below_is_uniform_and_in_range() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[below(&mut rng, 3) as usize] += 1;
        }
        for c in counts {
            // Expected 10000, sd ≈ 82: 5 sd.
            assert!((9_590..=10_410).contains(&c), "{counts:?}");
        }
        assert_eq!(below(&mut rng, 1), 0);
    }

    #[test]
    fn chance_keeps_fractions() {
        let mut rng = SmallRng::seed_from_u64(3);
        let n = 200_000;
        let hits = (0..n).filter(|_| chance(&mut rng, 0.5)).count();
        // Expected 1000, sd ≈ 31.6.
        assert!((840..=1_160).contains(&hits), "{hits}");
        assert!(!chance(&mut rng, 0.0));
        assert!(!chance(&mut rng, f64::NAN));
        assert!(chance(&mut rng, 100.0));
    }

    #[test]
    fn outcome_classes() {
        assert!(Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR).is_5xx());
        assert!(!Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR).is_gateway_error());
        assert!(Outcome::Status(StatusCode::BAD_GATEWAY).is_gateway_error());
        assert!(!Outcome::Status(StatusCode::NOT_FOUND).is_5xx());
        assert!(Outcome::ConnectFailure.is_gateway_error() && Outcome::Reset.is_5xx());
    }
}
