//! Stage 3: local rate limits (`LocalRateLimitPolicy`): the waypoint Gateway's, then the
//! service's, then the chosen route rule's. The first limit that refuses answers 429 with
//! `Retry-After`, response flag `RL`, the policy and bucket in the access log and a count in
//! `ambient_rate_limited_total`. Tokens an earlier limit gave a refused request are not
//! returned (the limits are independent, as Envoy's chained local rate limits are).

use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::{Answer, Exchange, full};
use crate::l7::ratelimit::Limited;
use crate::l7::route::Route;
use crate::upstream::Body;

/// Response flag of a rate-limited request (Envoy's).
pub const FLAG: &str = "RL";

#[expect(
    clippy::result_large_err,
    reason = "the large error is the 429 response itself, moved once; boxing it would cost an \
              allocation"
)]
pub fn check<B>(x: &mut Exchange<'_, B>, route: Option<&Route>) -> Result<(), Answer> {
    let service = x
        .service
        .map(|s| &s.compiled.rate_limits[..])
        .unwrap_or_default();
    let on_route = route.map(|r| &r.rate_limits[..]).unwrap_or_default();
    let mut limiters = x
        .routing
        .gateway_rate_limits
        .iter()
        .chain(service)
        .chain(on_route)
        .peekable();
    if limiters.peek().is_none() {
        return Ok(());
    }
    let now = Instant::now();
    for limiter in limiters {
        if let Err(limited) = limiter.check(&x.downstream.identity, &x.parts, now) {
            limiter.count_refused(limited.bucket);
            x.log.flags = FLAG;
            x.log.rate_limit = Some(format!("{}:{}", limiter.name(), limited.bucket.as_str()));
            return Err(Answer::Response(too_many_requests(&limited)));
        }
    }
    Ok(())
}

fn too_many_requests(limited: &Limited) -> Response<Body> {
    let mut r = Response::new(full("local_rate_limited"));
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(limited.retry_after_secs()),
    );
    r
}

#[cfg(test)]
mod tests {
    use ambient_proto::ambient::waypoint::v1 as pb;

    use super::*;
    use crate::pipeline::route;
    use crate::pipeline::testing::{API, Fixture, get, route_to};

    fn limit(name: &str, rps: f64, burst: u32) -> pb::RateLimit {
        pb::RateLimit {
            namespace: "shop".into(),
            name: name.into(),
            total: Some(pb::RateLimitRate {
                requests_per_second: rps,
                burst,
            }),
            ..Default::default()
        }
    }

    /// Sends `n` requests to the fixture at once; returns the refusals' responses and logs.
    fn send(f: &Fixture, n: usize) -> Vec<(Response<Body>, crate::telemetry::RequestLog)> {
        (0..n)
            .filter_map(|_| {
                let mut x = f.exchange(get("/"));
                let routed = match route::select(&mut x).ok()? {
                    route::Decision::Route(r) => r,
                    route::Decision::Direct(_) => unreachable!(),
                };
                match check(&mut x, Some(routed.route)) {
                    Ok(()) => None,
                    Err(Answer::Response(r)) => Some((r, x.log)),
                    Err(other) => panic!("{other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn over_the_limit_is_429_with_retry_after_and_logged() {
        let mut f = Fixture::new();
        f.rate_limits(&[], &[limit("web-limit", 0.5, 2)]);
        let refused = send(&f, 3);
        assert_eq!(refused.len(), 1);
        let (response, log) = &refused[0];
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(log.flags, "RL");
        assert_eq!(log.rate_limit.as_deref(), Some("shop/web-limit:total"));
    }

    #[test]
    fn gateway_service_and_route_limits_all_apply() {
        let mut f = Fixture::new();
        let mut r = route_to("r", vec![], API);
        r.rate_limits = vec![limit("route-limit", 1.0, 1)];
        f.routes(vec![r]);
        f.rate_limits(
            &[limit("gateway-limit", 1.0, 3)],
            &[limit("web-limit", 1.0, 2)],
        );
        assert!(send(&f, 1).is_empty());
        let refused = send(&f, 1);
        assert_eq!(
            refused[0].1.rate_limit.as_deref(),
            Some("shop/route-limit:total")
        );
        // Without the route's limit, the service's (its two tokens spent) refuses next.
        f.routes(vec![route_to("r", vec![], API)]);
        let refused = send(&f, 1);
        assert_eq!(
            refused[0].1.rate_limit.as_deref(),
            Some("shop/web-limit:total")
        );
        // And the Gateway's, alone, holds for every service it carries.
        f.rate_limits(&[limit("gateway-limit", 1.0, 1)], &[]);
        assert!(send(&f, 1).is_empty());
        let refused = send(&f, 1);
        assert_eq!(
            refused[0].1.rate_limit.as_deref(),
            Some("shop/gateway-limit:total")
        );
    }

    #[test]
    fn without_limits_nothing_is_refused() {
        let f = Fixture::new();
        assert!(send(&f, 100).is_empty());
    }
}
