//! Fault injection (Istio `VirtualService` `fault`): per request, an independent draw for a
//! delay and one for an abort, each with its own percentage (fractions kept).

use std::time::Duration;

use ambient_proto::ambient::waypoint::v1 as pb;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use rand::RngCore;

use super::{Problem, chance};

/// How an aborted request is answered: an HTTP status, or for gRPC a `grpc-status` carried in
/// an HTTP 200.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abort {
    pub status: StatusCode,
    pub grpc_status: Option<u32>,
}

impl Abort {
    /// The answer, without body (Envoy sends `fault filter abort`; response flag `FI`). A gRPC
    /// abort is a trailers-only response: `grpc-status` in the headers of a 200.
    pub fn response(&self) -> http::Response<()> {
        let mut response = http::Response::new(());
        *response.status_mut() = self.status;
        if let Some(code) = self.grpc_status {
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from(code));
            headers.insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
        }
        response
    }
}

/// What a request suffers: wait `delay` first (response flag `DI`), then answer with `abort`
/// instead of forwarding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injection {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

/// A route's compiled fault configuration.
#[derive(Clone, Debug)]
pub struct Fault {
    delay: Option<(f64, Duration)>,
    abort: Option<(f64, Abort)>,
}

impl Fault {
    /// `None` when nothing can ever be injected. An abort status outside 200..=599 (without a
    /// gRPC status) is a [`Problem`].
    pub fn compile(f: &pb::Fault) -> Result<Option<Self>, Problem> {
        let delay = f
            .delay
            .as_ref()
            .filter(|d| d.delay_ms > 0 && d.percent > 0.0)
            .map(|d| (d.percent, Duration::from_millis(d.delay_ms)));
        let abort = match f.abort.as_ref().filter(|a| a.percent > 0.0) {
            None => None,
            Some(a) if a.grpc_status != 0 => Some((
                a.percent,
                Abort {
                    status: StatusCode::OK,
                    grpc_status: Some(a.grpc_status),
                },
            )),
            Some(a) => {
                let status = u16::try_from(a.http_status)
                    .ok()
                    .filter(|s| (200..=599).contains(s))
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or(Problem::AbortStatus(a.http_status))?;
                Some((
                    a.percent,
                    Abort {
                        status,
                        grpc_status: None,
                    },
                ))
            }
        };
        Ok((delay.is_some() || abort.is_some()).then_some(Fault { delay, abort }))
    }

    /// Draws this request's fate; delay and abort are independent.
    pub fn decide(&self, rng: &mut (impl RngCore + ?Sized)) -> Injection {
        Injection {
            delay: self.delay.filter(|(p, _)| chance(rng, *p)).map(|(_, d)| d),
            abort: self.abort.filter(|(p, _)| chance(rng, *p)).map(|(_, a)| a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn fault(delay: Option<(f64, u64)>, abort: Option<(f64, u32, u32)>) -> pb::Fault {
        pb::Fault {
            delay: delay.map(|(percent, delay_ms)| pb::FaultDelay { percent, delay_ms }),
            abort: abort.map(|(percent, http_status, grpc_status)| pb::FaultAbort {
                percent,
                http_status,
                grpc_status,
            }),
        }
    }

    #[test]
    fn independent_draws_with_fractional_percent() {
        let f = Fault::compile(&fault(Some((50.0, 100)), Some((10.5, 503, 0))))
            .unwrap()
            .unwrap();
        let mut rng = SmallRng::seed_from_u64(9);
        let n = 100_000;
        let (mut delays, mut aborts, mut both) = (0, 0, 0);
        for _ in 0..n {
            let i = f.decide(&mut rng);
            if let Some(d) = i.delay {
                assert_eq!(d, Duration::from_millis(100));
                delays += 1;
            }
            if let Some(a) = i.abort {
                assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
                aborts += 1;
            }
            both += usize::from(i.delay.is_some() && i.abort.is_some());
        }
        let within = |count: usize, p: f64| {
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            (count as f64 - n as f64 * p).abs() < 5.0 * sd
        };
        assert!(within(delays, 0.5), "{delays}");
        assert!(within(aborts, 0.105), "{aborts}");
        // Independence: P(both) = 0.5 × 0.105.
        assert!(within(both, 0.0525), "{both}");
    }

    #[test]
    fn always_never_and_grpc() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert!(
            Fault::compile(&fault(Some((0.0, 100)), Some((0.0, 503, 0))))
                .unwrap()
                .is_none()
        );
        assert!(Fault::compile(&pb::Fault::default()).unwrap().is_none());
        let f = Fault::compile(&fault(None, Some((100.0, 0, 14))))
            .unwrap()
            .unwrap();
        let abort = f.decide(&mut rng).abort.unwrap();
        let resp = abort.response();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/grpc");
        assert!(f.decide(&mut rng).delay.is_none());
    }

    #[test]
    fn bad_abort_status_is_a_problem() {
        assert_eq!(
            Fault::compile(&fault(None, Some((1.0, 99, 0)))).unwrap_err(),
            Problem::AbortStatus(99)
        );
        assert!(Fault::compile(&fault(None, Some((1.0, 600, 0)))).is_err());
    }
}
