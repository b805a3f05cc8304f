//! Stage 7: sending upstream: an endpoint picked by the balancer for each attempt, retries
//! with backoff, per-try and route timeouts, outcomes recorded for outlier detection, and
//! the response header filters on the answer.
//!
//! The one piece of I/O, an exchange with an endpoint, is the [`Upstream`] trait: the
//! waypoint's pooled HBONE connections in service ([`Ctx`]), a scripted double in tests.

use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

use super::backend::Chosen;
use super::respond::strip_hop_by_hop;
use super::route::Routed;
use super::{Exchange, InboundBody, Local};
use crate::context::Ctx;
use crate::inbound::Downstream;
use crate::l7::Outcome;
use crate::l7::limits::ConnectionLimits;
use crate::l7::retry::RetryDecision;
use crate::upstream::{Body, BoxError, Endpoint, HttpVersion, TunnelContext, UpstreamError};

/// Sends one request to one endpoint and returns its response head (the body streams).
pub trait Upstream: Send + Sync + 'static {
    type Body: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static;

    /// `limits`: the service's connection pool settings and limits (none: workload-addressed
    /// traffic).
    fn send(
        &self,
        endpoint: &Endpoint,
        version: HttpVersion,
        req: Request<Body>,
        tunnel: &TunnelContext,
        limits: Option<&ConnectionLimits>,
    ) -> impl Future<Output = Result<Response<Self::Body>, UpstreamError>> + Send;

    /// Gives an endpoint known by name its address (`DF` when it has none).
    fn resolve(
        &self,
        endpoint: &mut Endpoint,
    ) -> impl Future<Output = Result<(), UpstreamError>> + Send {
        let _ = endpoint;
        async { Ok(()) }
    }
}

/// The waypoint's HBONE tunnels and HTTP connections to endpoints.
impl Upstream for Ctx {
    type Body = Incoming;

    fn send(
        &self,
        endpoint: &Endpoint,
        version: HttpVersion,
        req: Request<Body>,
        tunnel: &TunnelContext,
        limits: Option<&ConnectionLimits>,
    ) -> impl Future<Output = Result<Response<Incoming>, UpstreamError>> + Send {
        self.upstreams
            .local()
            .send(self, endpoint, version, req, tunnel, limits)
    }

    fn resolve(
        &self,
        endpoint: &mut Endpoint,
    ) -> impl Future<Output = Result<(), UpstreamError>> + Send {
        self.upstreams.local().resolve(endpoint)
    }
}

/// Sends the request to the chosen backend (the route's timeout bounds every attempt and
/// backoff: 504 `UT`), then applies the backend's and the route's response header edits.
pub async fn send<'r, B: InboundBody, U: Upstream>(
    x: &mut Exchange<'r, B>,
    routed: Routed<'r>,
    chosen: &Chosen<'r>,
    upstream: &U,
) -> Result<Response<Body>, Local> {
    let attempts = attempts(x, routed, chosen, upstream);
    let response = match routed.route.timeout {
        Some(t) => tokio::time::timeout(t, attempts)
            .await
            .unwrap_or(Err(Local::TIMEOUT)),
        None => attempts.await,
    }?;
    let (mut parts, body) = response.into_parts();
    chosen.backend.filters.apply_response(&mut parts.headers);
    routed.route.filters.apply_response(&mut parts.headers);
    Ok(Response::from_parts(parts, body))
}

/// Attempts until one is final, the route's retries are spent or the service's retry limit
/// refuses one (`URX` either way), or no endpoint is left.
async fn attempts<'r, B: InboundBody, U: Upstream>(
    x: &mut Exchange<'r, B>,
    routed: Routed<'r>,
    chosen: &Chosen<'r>,
    upstream: &U,
) -> Result<Response<Body>, Local> {
    let Routed { table, route, .. } = routed;
    let balancer = &chosen.service.balancer;
    let h2 = is_h2(&x.parts, table.protocol());
    let per_try = route.retry.as_ref().and_then(|r| r.per_try_timeout());
    let mut retry = route.retry.as_ref().map(|r| r.start());
    let mut last: Option<Result<Response<Body>, Local>> = None;
    let mut avoid = None;
    // Held through each retry's backoff and attempt (max_retries, the retry budget).
    let mut _retry_permit = None;
    loop {
        x.log.attempts += 1;
        let picked = balancer.pick(
            &x.parts.headers,
            avoid.as_ref(),
            Instant::now(),
            &mut rand::rng(),
        );
        let Some(picked) = picked else {
            return last.unwrap_or(Err(Local::NO_HEALTHY_UPSTREAM));
        };
        let mut endpoint = chosen.service.endpoint(&picked, chosen.backend.target.port);
        let resolved = upstream.resolve(&mut endpoint).await;
        x.log.upstream = Some(endpoint.clone());
        let started = Instant::now();
        let sent = match resolved {
            // The body stays for the next attempt.
            Err(e) => Some(Err(e)),
            Ok(()) => {
                let Some(body) = x.body.take() else {
                    // A streamed body cannot be sent twice: the last answer stands.
                    return last.unwrap_or(Err(Local::NOT_RETRIABLE));
                };
                let request = upstream_request(&x.parts, body, h2);
                let tunnel = tunnel(x.downstream, Some(&x.log.span.traceparent()));
                let send = upstream.send(
                    &endpoint,
                    version(h2),
                    request,
                    &tunnel,
                    Some(&chosen.service.limits),
                );
                match per_try {
                    Some(t) => tokio::time::timeout(t, send).await.ok(),
                    None => Some(send.await),
                }
            }
        };
        // Response times (and per-try timeouts, as what they cost) feed peak-EWMA; failures
        // do not: a fast refusal must not make an endpoint look attractive.
        if matches!(sent, None | Some(Ok(_))) {
            let now = Instant::now();
            balancer.observe(&picked, now.saturating_duration_since(started), now);
        }
        let (outcome, result) = match sent {
            // The service's pool is full: not the endpoint's fault, and no retry helps.
            Some(Err(UpstreamError::Overflow)) => return Err(Local::OVERFLOW),
            None => (Outcome::Timeout, Err(Local::TIMEOUT)),
            Some(sent) => judge(sent),
        };
        if let Some(ejection) = balancer.record(&picked, outcome, Instant::now()) {
            debug!(endpoint = %endpoint.addr, ?ejection, "endpoint ejected");
        }
        avoid = Some(picked.key().clone());
        drop(picked);
        let Some(state) = retry.as_mut() else {
            return result;
        };
        let decision = state.next(outcome, &mut rand::rng());
        match decision {
            RetryDecision::Done => return result,
            RetryDecision::Exhausted => {
                x.log.flags = "URX";
                return result;
            }
            RetryDecision::Retry { backoff } => {
                _retry_permit = None;
                match chosen.service.limits.try_retry() {
                    Ok(permit) => _retry_permit = Some(permit),
                    Err(overflow) => {
                        // Envoy's retry overflow: no more attempts, the last answer stands.
                        debug!(%overflow, "retry refused");
                        x.log.flags = "URX";
                        return result;
                    }
                }
                last = Some(result);
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// An exchange's outcome, as retries and outlier detection judge it, and its answer.
fn judge<T>(sent: Result<Response<T>, UpstreamError>) -> (Outcome, Result<Response<Body>, Local>)
where
    T: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static,
{
    match sent {
        Ok(r) => (Outcome::Status(r.status()), Ok(boxed(r))),
        Err(e) => {
            debug!(error = %e, "upstream failed");
            let outcome = match e.response_flag() {
                "UF" | "DF" => Outcome::ConnectFailure,
                _ => Outcome::Reset,
            };
            (outcome, Err(Local::upstream_failed(e.response_flag())))
        }
    }
}

/// Sends a request to one known endpoint (workload-addressed traffic): one attempt, no
/// timeout but the client's.
pub async fn direct<B: InboundBody, U: Upstream>(
    x: &mut Exchange<'_, B>,
    endpoint: Endpoint,
    upstream: &U,
) -> Result<Response<Body>, Local> {
    x.log.attempts = 1;
    x.log.upstream = Some(endpoint.clone());
    let h2 = x.parts.version == Version::HTTP_2;
    let Some(body) = x.body.take() else {
        return Err(Local::NOT_RETRIABLE);
    };
    let request = upstream_request(&x.parts, body, h2);
    let tunnel = tunnel(x.downstream, Some(&x.log.span.traceparent()));
    match upstream
        .send(&endpoint, version(h2), request, &tunnel, None)
        .await
    {
        Ok(r) => Ok(boxed(r)),
        Err(e) => Err(Local::upstream_failed(e.response_flag())),
    }
}

fn boxed<T>(r: Response<T>) -> Response<Body>
where
    T: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static,
{
    r.map(|b| b.map_err(Into::into).boxed())
}

/// The request context carried on the CONNECT: the client's address, and the trace the
/// request belongs to (mirrors carry none).
pub(super) fn tunnel(downstream: &Downstream, traceparent: Option<&HeaderValue>) -> TunnelContext {
    TunnelContext {
        client_ip: Some(downstream.addr.ip()),
        traceparent: traceparent.map(|t| t.to_str().unwrap_or_default().to_string()),
    }
}

pub(super) fn version(h2: bool) -> HttpVersion {
    if h2 {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    }
}

/// HTTP/2 upstream for HTTP/2 downstream requests and gRPC / HTTP2 ports.
fn is_h2(
    parts: &http::request::Parts,
    declared: ambient_proto::ambient::waypoint::v1::AppProtocol,
) -> bool {
    use ambient_proto::ambient::waypoint::v1::AppProtocol;
    parts.version == Version::HTTP_2 || matches!(declared, AppProtocol::Http2 | AppProtocol::Grpc)
}

/// The request as sent upstream: hop-by-hop headers removed; origin-form with `Host` for
/// HTTP/1.1, absolute-form for HTTP/2 (`:authority` from `Host`).
pub(super) fn upstream_request(
    parts: &http::request::Parts,
    body: Body,
    h2: bool,
) -> Request<Body> {
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "localhost".to_string());
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri = if h2 {
        headers.remove(header::HOST);
        Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
    } else {
        if !headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::try_from(authority.as_str())
        {
            headers.insert(header::HOST, v);
        }
        Uri::builder().path_and_query(path).build()
    }
    .unwrap_or_else(|_| Uri::from_static("/"));
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    req
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use ambient_proto::ambient::waypoint::v1 as pb;
    use tokio::time::Instant as Clock;

    use super::*;
    use crate::pipeline::backend::choose;
    use crate::pipeline::route::{Decision, select};
    use crate::pipeline::testing::{
        API, FakeUpstream, Fixture, Reply, Request, endpoint_addr, get, post, retry,
    };
    use crate::telemetry::RequestLog;

    /// Routes the request, chooses its backend, then runs this stage.
    async fn run(
        f: &Fixture,
        req: Request,
        upstream: &Arc<FakeUpstream>,
    ) -> (Result<Response<Body>, Local>, RequestLog) {
        let mut x = f.exchange(req);
        let Ok(Decision::Route(routed)) = select(&mut x) else {
            panic!("routed")
        };
        let chosen = choose(&mut x, routed, upstream).await.expect("a backend");
        let result = send(&mut x, routed, &chosen, &**upstream).await;
        (result, x.log)
    }

    fn status(result: &Result<Response<Body>, Local>) -> Result<u16, Local> {
        result.as_ref().map(|r| r.status().as_u16()).map_err(|l| *l)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_counting_attempts() {
        let f = Fixture::one_route(|r| r.retry = Some(retry(2, &[503])));
        let upstream = FakeUpstream::replying([Reply::Status(503), Reply::Status(503)]);
        let (result, log) = run(&f, post("/", "hello"), &upstream).await;
        assert_eq!(status(&result), Ok(200));
        assert_eq!((log.attempts, log.flags), (3, "-"));
        let sent = upstream.sent();
        assert_eq!(sent.len(), 3);
        assert!(
            sent.iter().all(|s| s.body == "hello"),
            "the held body each time"
        );
        // A retry avoids the endpoint that just failed.
        assert_ne!(sent[0].addr, sent[1].addr);
        assert_eq!(log.upstream.unwrap().addr, sent[2].addr);
        assert!(sent[0].traceparent.as_deref().unwrap().starts_with("00-"));
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_retries_pass_the_last_answer_on_flagged_urx() {
        let f = Fixture::one_route(|r| r.retry = Some(retry(2, &[503])));
        let upstream = FakeUpstream::replying([Reply::Status(503); 3]);
        let (result, log) = run(&f, get("/"), &upstream).await;
        assert_eq!(status(&result), Ok(503));
        assert_eq!((log.attempts, log.flags), (3, "URX"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_answer_is_not_retried() {
        let f = Fixture::one_route(|r| r.retry = Some(retry(2, &[503])));
        let upstream = FakeUpstream::replying([Reply::Status(500)]);
        let (result, log) = run(&f, get("/"), &upstream).await;
        assert_eq!(status(&result), Ok(500));
        assert_eq!((log.attempts, log.flags), (1, "-"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_per_try_timeout_is_retried() {
        let f = Fixture::one_route(|r| {
            r.retry = Some(pb::RetryPolicy {
                per_try_timeout_ms: 100,
                ..retry(1, &[504])
            })
        });
        let upstream = FakeUpstream::replying([Reply::Hang]);
        let started = Clock::now();
        let (result, log) = run(&f, get("/"), &upstream).await;
        assert_eq!(status(&result), Ok(200));
        assert_eq!(log.attempts, 2);
        assert!(started.elapsed() >= Duration::from_millis(100));

        // Timed out again with no budget left: 504 `UT`.
        let upstream = FakeUpstream::replying([Reply::Hang, Reply::Hang]);
        let (result, log) = run(&f, get("/"), &upstream).await;
        assert_eq!(status(&result), Err(Local::TIMEOUT));
        assert_eq!(log.attempts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_timeout_answers_504_ut() {
        let f = Fixture::one_route(|r| r.timeout_ms = 1500);
        let upstream = FakeUpstream::replying([Reply::Hang]);
        let started = Clock::now();
        let (result, _) = run(&f, get("/"), &upstream).await;
        assert_eq!(status(&result), Err(Local::TIMEOUT));
        assert_eq!(
            (Local::TIMEOUT.status.as_u16(), Local::TIMEOUT.flags),
            (504, "UT")
        );
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_timeout_covers_retries_and_backoff() {
        let f = Fixture::one_route(|r| {
            r.timeout_ms = 1000;
            r.retry = Some(pb::RetryPolicy {
                per_try_timeout_ms: 300,
                ..retry(100, &[504])
            });
        });
        let upstream = FakeUpstream::replying([Reply::Hang; 100]);
        let started = Clock::now();
        let (result, log) = run(&f, get("/"), &upstream).await;
        assert_eq!(status(&result), Err(Local::TIMEOUT));
        assert_eq!(started.elapsed(), Duration::from_millis(1000));
        assert!((3..=4).contains(&log.attempts), "{}", log.attempts);
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_body_is_not_sent_twice() {
        let f = Fixture::one_route(|r| r.retry = Some(retry(2, &[503])));
        // Declared too large to hold: it streams.
        let mut req = post("/", "hello");
        req.headers_mut().insert(
            header::CONTENT_LENGTH,
            (crate::pipeline::backend::MAX_BUFFERED_BODY + 1).into(),
        );
        let upstream = FakeUpstream::replying([Reply::Status(503)]);
        let (result, log) = run(&f, req, &upstream).await;
        // The retry finds the body gone: the last answer stands.
        assert_eq!(status(&result), Ok(503));
        assert_eq!(upstream.sent().len(), 1);
        assert_eq!((log.attempts, log.flags), (2, "-"));
    }

    #[tokio::test(start_paused = true)]
    async fn connect_failures_are_retried_when_asked() {
        let f = Fixture::one_route(|r| {
            r.retry = Some(pb::RetryPolicy {
                on_connect_failure: true,
                ..retry(1, &[])
            })
        });
        let upstream = FakeUpstream::replying([Reply::ConnectFailure]);
        let (result, log) = run(&f, get("/"), &upstream).await;
        assert_eq!(status(&result), Ok(200));
        assert_eq!(log.attempts, 2);

        let f = Fixture::one_route(|_| {});
        let upstream = FakeUpstream::replying([Reply::ConnectFailure]);
        let (result, log) = run(&f, get("/"), &upstream).await;
        assert_eq!(status(&result), Err(Local::upstream_failed("UF")));
        assert_eq!(log.attempts, 1);
    }

    #[tokio::test]
    async fn outcomes_are_recorded_for_outlier_detection() {
        let mut f = Fixture::one_route(|_| {});
        f.traffic(
            API,
            pb::TrafficPolicy {
                outlier_detection: Some(pb::OutlierDetection {
                    consecutive_5xx: 1,
                    max_ejection_percent: 100,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let upstream = FakeUpstream::replying([Reply::Status(502)]);
        let (result, log) = run(&f, get("/"), &upstream).await;
        assert_eq!(status(&result), Ok(502));
        let now = std::time::Instant::now();
        let ejected: Vec<_> = f
            .service(API)
            .balancer
            .endpoints()
            .filter(|e| e.health().is_ejected(now))
            .map(|e| e.key().0.addresses[0])
            .collect();
        assert_eq!(ejected, [log.upstream.unwrap().addr.ip()]);
        // The next request goes to the other endpoint.
        let (_, next) = run(&f, get("/"), &upstream).await;
        assert_ne!(next.upstream.unwrap().addr.ip(), ejected[0]);
    }

    #[tokio::test]
    async fn no_endpoint_is_503_uh() {
        let mut f = Fixture::one_route(|_| {});
        f.no_endpoints(API);
        let upstream = FakeUpstream::new();
        let (result, log) = run(&f, get("/"), &upstream).await;
        assert_eq!(status(&result), Err(Local::NO_HEALTHY_UPSTREAM));
        assert_eq!(log.attempts, 1);
        assert!(upstream.sent().is_empty());
    }

    #[tokio::test]
    async fn response_filters_of_backend_and_route_apply() {
        let edit = |name: &str| pb::Filter {
            kind: Some(pb::filter::Kind::ResponseHeaders(pb::HeaderModifier {
                set: vec![pb::Header {
                    name: name.into(),
                    value: "1".into(),
                }],
                ..Default::default()
            })),
        };
        let f = Fixture::one_route(|r| {
            r.filters.push(edit("x-route"));
            r.backends[0].filters.push(edit("x-backend"));
        });
        let (result, _) = run(&f, get("/"), &FakeUpstream::new()).await;
        let r = result.unwrap();
        assert_eq!(r.headers()["x-route"], "1");
        assert_eq!(r.headers()["x-backend"], "1");
    }

    #[tokio::test]
    async fn the_upstream_request_is_origin_form_for_http1_absolute_for_http2() {
        let f = Fixture::one_route(|_| {});
        let upstream = FakeUpstream::new();
        let mut req = get("/a?b=c");
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        run(&f, req, &upstream).await.0.unwrap();
        let mut req = get("/a?b=c");
        *req.version_mut() = Version::HTTP_2;
        run(&f, req, &upstream).await.0.unwrap();
        let sent = upstream.sent();
        assert_eq!(sent[0].version, HttpVersion::Http1);
        assert_eq!(sent[0].head.uri, "/a?b=c");
        assert_eq!(sent[0].head.headers[header::HOST], "web.shop:80");
        assert!(!sent[0].head.headers.contains_key(header::CONNECTION));
        assert!(sent[0].head.headers.contains_key("x-request-id"));
        assert_eq!(sent[1].version, HttpVersion::Http2);
        assert_eq!(sent[1].head.uri, "http://web.shop:80/a?b=c");
        assert!(!sent[1].head.headers.contains_key(header::HOST));
        assert!([endpoint_addr("10.244.1.1"), endpoint_addr("10.244.1.2")].contains(&sent[0].addr));
    }

    #[tokio::test]
    async fn a_workload_is_sent_the_request_once() {
        let f = Fixture::new().workload_target();
        let upstream = FakeUpstream::replying([Reply::Status(503)]);
        let mut x = f.exchange(post("/", "hi"));
        let Ok(Decision::Direct(endpoint)) = select(&mut x) else {
            panic!("direct")
        };
        let result = direct(&mut x, endpoint, &*upstream).await;
        assert_eq!(status(&result), Ok(503));
        assert_eq!(x.log.attempts, 1);
        {
            let sent = upstream.sent();
            assert_eq!(sent[0].addr, "10.244.0.10:80".parse().unwrap());
            assert_eq!(sent[0].body, "hi");
            assert_eq!(x.log.upstream.as_ref().unwrap().addr, sent[0].addr);
        }

        let upstream = FakeUpstream::replying([Reply::ConnectFailure]);
        let mut x = f.exchange(get("/"));
        let Ok(Decision::Direct(endpoint)) = select(&mut x) else {
            panic!("direct")
        };
        let result = direct(&mut x, endpoint, &*upstream).await;
        assert_eq!(status(&result), Err(Local::upstream_failed("UF")));
    }

    /// Twenty requests at once against a backend answering nothing but 503, each route
    /// allowing five retries: `(upstream attempts, requests refused a retry)`.
    async fn storm(pool: Option<pb::ConnectionPool>) -> (usize, usize) {
        let mut f = Fixture::one_route(|r| r.retry = Some(retry(5, &[503])));
        f.traffic(
            API,
            pb::TrafficPolicy {
                connection_pool: pool,
                ..Default::default()
            },
        );
        let upstream = FakeUpstream::replying(std::iter::repeat_n(Reply::Status(503), 1000));
        let results =
            futures::future::join_all((0..20).map(|_| run(&f, get("/"), &upstream))).await;
        assert!(results.iter().all(|(r, _)| status(r) == Ok(503)));
        assert!(
            results.iter().all(|(_, log)| log.flags == "URX"),
            "exhausted or refused, the last answer stands with URX"
        );
        let refused = results.iter().filter(|(_, log)| log.attempts == 1).count();
        let sent = upstream.sent().len();
        (sent, refused)
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_storm_is_held_to_the_budget() {
        // Unbounded (Istio's default): every request retries five times.
        assert_eq!(storm(None).await, (20 * 6, 0));
        // A budget with no share of the load and a floor of two: two requests retry, one
        // retry outstanding each at a time; the other eighteen are answered at once.
        let budget = pb::ConnectionPool {
            retry_budget: Some(pb::RetryBudget {
                percent: 0.0,
                min_retry_concurrency: 2,
            }),
            ..Default::default()
        };
        assert_eq!(storm(Some(budget)).await, (20 + 2 * 5, 18));
        // maxRetries: 3 the same way.
        let fixed = pb::ConnectionPool {
            max_retries: 3,
            ..Default::default()
        };
        assert_eq!(storm(Some(fixed)).await, (20 + 3 * 5, 17));
    }
}
