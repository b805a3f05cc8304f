//! Retries: which attempt outcomes are retried, the attempts budget, jittered exponential
//! backoff and the per-try timeout.

use std::time::Duration;

use ambient_proto::ambient::waypoint::v1 as pb;
use rand::RngCore;

use super::{Outcome, Problem, below};

/// Envoy's default base backoff.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// The backoff never exceeds this many times the base (Envoy's default maximum).
const MAX_BACKOFF_FACTOR: u32 = 10;

/// A route's compiled retry policy.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    attempts: u32,
    per_try_timeout: Option<Duration>,
    /// Sorted.
    codes: Box<[u16]>,
    on_connect_failure: bool,
    base: Duration,
}

impl RetryPolicy {
    /// `None` when the policy neither retries nor limits a try. Codes that are not HTTP
    /// statuses are a [`Problem`].
    pub fn compile(p: &pb::RetryPolicy) -> Result<Option<Self>, Problem> {
        let mut codes = p
            .codes
            .iter()
            .map(|&c| {
                u16::try_from(c)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or(Problem::RetryCode(c))
            })
            .collect::<Result<Vec<_>, _>>()?;
        codes.sort_unstable();
        codes.dedup();
        let per_try_timeout =
            (p.per_try_timeout_ms > 0).then(|| Duration::from_millis(p.per_try_timeout_ms));
        if p.attempts == 0 && per_try_timeout.is_none() {
            return Ok(None);
        }
        Ok(Some(RetryPolicy {
            attempts: p.attempts,
            per_try_timeout,
            codes: codes.into(),
            on_connect_failure: p.on_connect_failure,
            base: match p.backoff_ms {
                0 => DEFAULT_BACKOFF,
                ms => Duration::from_millis(ms),
            },
        }))
    }

    /// How long one attempt may take before it counts as [`Outcome::Timeout`].
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// Retries allowed after the first attempt.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether an outcome may be retried: a listed status; a connect failure or reset when
    /// `on_connect_failure`; a per-try timeout when 504 is listed (it is what the client
    /// would otherwise get).
    pub fn retriable(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Status(s) => self.codes.binary_search(&s.as_u16()).is_ok(),
            Outcome::ConnectFailure | Outcome::Reset => self.on_connect_failure,
            Outcome::Timeout => self.codes.binary_search(&504).is_ok(),
        }
    }

    /// The state of one request's retries.
    pub fn start(&self) -> RetryState<'_> {
        RetryState {
            policy: self,
            retries: 0,
        }
    }
}

/// What to do after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait, then try again (preferably on another endpoint).
    Retry { backoff: Duration },
    /// The outcome is final: pass it on.
    Done,
    /// Retriable, but the budget is spent: pass the last outcome on (response flag `URX`).
    Exhausted,
}

/// One request's retries: how many were made.
#[derive(Clone, Debug)]
pub struct RetryState<'a> {
    policy: &'a RetryPolicy,
    retries: u32,
}

impl RetryState<'_> {
    /// Judges an attempt's outcome. The backoff before retry `n` (1-based) is uniform in
    /// `[0, base × (2^n − 1))`, capped at 10 × base: fully jittered, so retries of many
    /// clients do not synchronise.
    pub fn next(&mut self, outcome: Outcome, rng: &mut (impl RngCore + ?Sized)) -> RetryDecision {
        if !self.policy.retriable(outcome) {
            return RetryDecision::Done;
        }
        if self.retries >= self.policy.attempts {
            return RetryDecision::Exhausted;
        }
        self.retries += 1;
        let base = self.policy.base.as_nanos() as u64;
        let factor = (1u64 << self.retries.min(32)) - 1;
        let ceiling = base
            .saturating_mul(factor)
            .min(base.saturating_mul(u64::from(MAX_BACKOFF_FACTOR)));
        let backoff = if ceiling == 0 { 0 } else { below(rng, ceiling) };
        RetryDecision::Retry {
            backoff: Duration::from_nanos(backoff),
        }
    }

    /// Retries made so far (`x-envoy-attempt-count` is this plus one).
    pub fn retries(&self) -> u32 {
        self.retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn policy(
        attempts: u32,
        codes: &[u32],
        on_connect_failure: bool,
        backoff_ms: u64,
    ) -> RetryPolicy {
        RetryPolicy::compile(&pb::RetryPolicy {
            attempts,
            per_try_timeout_ms: 0,
            codes: codes.to_vec(),
            on_connect_failure,
            backoff_ms,
        })
        .unwrap()
        .unwrap()
    }

    fn status(code: u16) -> Outcome {
        Outcome::Status(StatusCode::from_u16(code).unwrap())
    }

    #[test]
    fn retriable_outcomes() {
        let p = policy(2, &[503, 502], false, 0);
        assert!(p.retriable(status(503)) && p.retriable(status(502)));
        assert!(!p.retriable(status(500)) && !p.retriable(status(200)));
        assert!(!p.retriable(Outcome::ConnectFailure) && !p.retriable(Outcome::Reset));
        assert!(!p.retriable(Outcome::Timeout));
        let p = policy(2, &[504], true, 0);
        assert!(p.retriable(Outcome::ConnectFailure) && p.retriable(Outcome::Reset));
        assert!(p.retriable(Outcome::Timeout));
    }

    #[test]
    fn budget_then_exhausted() {
        let p = policy(2, &[503], false, 10);
        let mut rng = SmallRng::seed_from_u64(5);
        let mut s = p.start();
        assert!(matches!(
            s.next(status(503), &mut rng),
            RetryDecision::Retry { .. }
        ));
        assert!(matches!(
            s.next(status(503), &mut rng),
            RetryDecision::Retry { .. }
        ));
        assert_eq!(s.next(status(503), &mut rng), RetryDecision::Exhausted);
        assert_eq!(s.retries(), 2);
        let mut s = p.start();
        assert_eq!(s.next(status(200), &mut rng), RetryDecision::Done);
        assert_eq!(s.retries(), 0);
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        // Default base 25 ms: retry n draws from [0, 25 × (2^n − 1)) ms, at most 250 ms.
        let p = policy(10, &[503], false, 0);
        let mut rng = SmallRng::seed_from_u64(11);
        let mut max_seen = [Duration::ZERO; 6];
        let mut sum_first = Duration::ZERO;
        let runs = 2_000;
        for _ in 0..runs {
            let mut s = p.start();
            for seen in max_seen.iter_mut() {
                let RetryDecision::Retry { backoff } = s.next(status(503), &mut rng) else {
                    panic!()
                };
                *seen = (*seen).max(backoff);
            }
            let mut s = p.start();
            let RetryDecision::Retry { backoff } = s.next(status(503), &mut rng) else {
                panic!()
            };
            sum_first += backoff;
        }
        let ms = |n: u64| Duration::from_millis(n);
        let ceilings = [ms(25), ms(75), ms(175), ms(250), ms(250), ms(250)];
        for (seen, ceiling) in max_seen.iter().zip(ceilings) {
            assert!(*seen < ceiling, "{max_seen:?}");
            // Over 2000 draws the maximum comes close to the ceiling.
            assert!(*seen > ceiling.mul_f64(0.95), "{max_seen:?}");
        }
        // Uniform: the mean of the first backoff is about 12.5 ms.
        let mean = sum_first / runs;
        assert!(mean > ms(11) && mean < ms(14), "{mean:?}");
    }

    #[test]
    fn compile_rules() {
        assert!(
            RetryPolicy::compile(&pb::RetryPolicy::default())
                .unwrap()
                .is_none()
        );
        let p = RetryPolicy::compile(&pb::RetryPolicy {
            per_try_timeout_ms: 300,
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(p.per_try_timeout(), Some(Duration::from_millis(300)));
        assert_eq!(p.attempts(), 0);
        assert_eq!(
            RetryPolicy::compile(&pb::RetryPolicy {
                attempts: 1,
                codes: vec![1000],
                ..Default::default()
            })
            .unwrap_err(),
            Problem::RetryCode(1000)
        );
    }
}
