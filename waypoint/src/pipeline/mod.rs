//! One HTTP request through the waypoint, as a pipeline of stages in the order a request
//! meets them, each in its own file:
//!
//! [`authenticate`] → [`authorize`] → [`route`] → [`limit`] → [`fault`] → [`redirect`] (and request rewrites) → [`backend`]
//! (weighted choice, mirrors, body hold, limits) → [`send`] (endpoint, retries, timeouts) →
//! [`respond`] (hop-by-hop headers, telemetry).
//!
//! Every stage takes the request's [`Exchange`] and either lets it go on or answers it
//! ([`Local`], or a whole response as [`Answer`]). What the request carries and every stage
//! may change (head, body held or streaming, access-log record) lives in the `Exchange`; what
//! a stage decides for the stages after it is its return value ([`route::Routed`]: route and
//! capture; [`backend::Chosen`]: backend, its service and the limits permit), so a stage
//! cannot run before the one it depends on. The decisions themselves are the I/O-free ones
//! of [`crate::l7`]; the only I/O, sending upstream, goes through the [`Upstream`] trait (the
//! real connections, or a test double), so each stage is tested alone.

mod authenticate;
mod authorize;
mod backend;
mod fault;
pub mod limit;
mod redirect;
mod respond;
mod route;
mod send;
#[cfg(test)]
pub(crate) mod testing;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::context::Ctx;
use crate::inbound::{Downstream, Target};
use crate::l7::path;
use crate::routing::{RoutingSnapshot, ServiceRouting};
use crate::telemetry::RequestLog;
use crate::trace::Span;
use crate::upstream::{Body, BoxError};

pub use send::Upstream;

/// Serves one request: the stages in order, then the response on its way back.
pub async fn handle(
    ctx: Arc<Ctx>,
    target: Arc<Target>,
    downstream: Arc<Downstream>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let routing = ctx.routing.load();
    let mut x = Exchange::new(started, req, &target, &downstream, &routing);
    let answer = run(&mut x, &ctx).await;
    respond::finish(answer, x.log)
}

/// The stages, in the order a request meets them.
async fn run<B: InboundBody, U: Upstream>(
    x: &mut Exchange<'_, B>,
    upstream: &Arc<U>,
) -> Result<Response<Body>, Answer> {
    authenticate::check(x).await?;
    authorize::check(x)?;
    let routed = match route::select(x)? {
        route::Decision::Route(routed) => routed,
        route::Decision::Direct(endpoint) => {
            limit::check(x, None)?;
            return Ok(send::direct(x, endpoint, &**upstream).await?);
        }
    };
    limit::check(x, Some(routed.route))?;
    fault::inject(x, routed.route).await?;
    redirect::apply(x, routed)?;
    let chosen = backend::choose(x, routed, upstream).await?;
    Ok(send::send(x, routed, &chosen, &**upstream).await?)
}

/// What the pipeline accepts as a request body: hyper's `Incoming` in service, any body of
/// bytes in tests.
pub trait InboundBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static
{
}

impl<T> InboundBody for T where
    T: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static
{
}

/// One request on its way through the stages: the request, where it was sent and by whom,
/// the configuration it is judged by (loaded once), and its access-log record.
pub struct Exchange<'r, B> {
    /// The request head; the path is normalized, filters rewrite it.
    pub parts: http::request::Parts,
    pub body: RequestBody<B>,
    pub target: &'r Target,
    pub downstream: &'r Downstream,
    pub routing: &'r RoutingSnapshot,
    /// The addressed service's routing (`None`: a workload, or a service whose L7
    /// configuration has not arrived, which the route stage refuses).
    pub service: Option<&'r ServiceRouting>,
    /// Filled in by the stages; carries the request's span.
    pub log: RequestLog,
    /// The claims of the request's valid JWT (none: no token, or no RequestAuthentication).
    pub auth: Option<crate::l7::jwt::Claims>,
}

impl<'r, B> Exchange<'r, B> {
    /// A request as it arrives: joined to (or starting) a trace, given an `x-request-id`,
    /// recorded, then its path normalized so routing and authorization see one path.
    pub fn new(
        started: Instant,
        req: Request<B>,
        target: &'r Target,
        downstream: &'r Arc<Downstream>,
        routing: &'r RoutingSnapshot,
    ) -> Self {
        let (mut parts, body) = req.into_parts();
        let (service, routing_of) = match target {
            Target::Service { service, .. } => {
                (Some(service.clone()), routing.configured(&service.key()))
            }
            Target::Workload { .. } => (None, None),
        };
        let mut span = Span::for_request(&parts.headers);
        if span.parent_id.is_none() {
            // A trace this waypoint starts: `--trace-sampling` decides (a caller's traceparent
            // decides for itself).
            span.sampled = crate::otlp::sample_new_trace();
        }
        parts.headers.insert("traceparent", span.traceparent());
        if !parts.headers.contains_key("x-request-id") {
            let id = format!("{:032x}", rand::random::<u128>());
            parts.headers.insert(
                "x-request-id",
                HeaderValue::try_from(id).expect("hex is a valid header value"),
            );
        }
        let log = RequestLog::start(started, downstream.clone(), service, &parts, span);
        normalize_path(&mut parts.uri);
        Exchange {
            parts,
            body: RequestBody::Streaming(Some(body)),
            target,
            downstream,
            routing,
            service: routing_of.map(|s| &**s),
            log,
            auth: None,
        }
    }

    /// The service (or workload) port the request was sent to.
    pub fn port(&self) -> u16 {
        match self.target {
            Target::Service { port, .. } | Target::Workload { port, .. } => *port,
        }
    }
}

fn normalize_path(uri: &mut Uri) {
    if let Cow::Owned(p) = path::normalize(uri.path()) {
        let with_query = match uri.query() {
            Some(q) => format!("{p}?{q}"),
            None => p,
        };
        let mut parts = std::mem::take(uri).into_parts();
        parts.path_and_query = with_query.parse().ok();
        *uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    }
}

/// The request body: a stream that can be sent once, or held (replayable) once a stage needs
/// to send it more than once.
pub enum RequestBody<B> {
    Held(Bytes),
    Streaming(Option<B>),
}

impl<B: InboundBody> RequestBody<B> {
    /// The body for one upstream request; `None` when a stream was already sent.
    fn take(&mut self) -> Option<Body> {
        match self {
            RequestBody::Held(b) => Some(full(b.clone())),
            RequestBody::Streaming(s) => s.take().map(|b| b.map_err(Into::into).boxed()),
        }
    }
}

impl<B> RequestBody<B> {
    /// The bytes of a held body; 0 for a stream (not counted).
    fn len(&self) -> u64 {
        match self {
            RequestBody::Held(b) => b.len() as u64,
            RequestBody::Streaming(_) => 0,
        }
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// How a stage ends a request early.
#[derive(Debug)]
pub enum Answer {
    /// The waypoint answers by itself; its response flag goes to the log.
    Local(Local),
    /// A complete response (fault abort, redirect); stages set the log's flags themselves.
    Response(Response<Body>),
}

impl From<Local> for Answer {
    fn from(local: Local) -> Self {
        Answer::Local(local)
    }
}

/// What the request path decided when it answers by itself: status, response flag, body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    pub status: StatusCode,
    pub flags: &'static str,
    pub body: &'static str,
}

impl Local {
    const fn new(status: StatusCode, flags: &'static str, body: &'static str) -> Self {
        Local {
            status,
            flags,
            body,
        }
    }

    pub const DENIED: Local = Local::new(StatusCode::FORBIDDEN, "-", "RBAC: access denied");
    pub const NO_ROUTE: Local = Local::new(StatusCode::NOT_FOUND, "NR", "");
    pub const NOT_CONFIGURED: Local = Local::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "NR",
        "no configuration for this service yet",
    );
    pub const INVALID_ROUTE: Local = Local::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "NR",
        "route configuration is invalid",
    );
    pub const REDIRECT_FAILED: Local = Local::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "-",
        "redirect could not be built",
    );
    pub const FILTER_FAILED: Local = Local::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "-",
        "request filter failed",
    );
    pub const NO_BACKEND: Local = Local::new(StatusCode::INTERNAL_SERVER_ERROR, "NR", "no backend");
    pub const TOO_LARGE: Local = Local::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "-",
        "request body too large to retry or mirror",
    );
    pub const NO_HEALTHY_UPSTREAM: Local =
        Local::new(StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream");
    pub const OVERFLOW: Local = Local::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "UO",
        "upstream connect error or disconnect/reset before headers. reset reason: overflow",
    );
    pub const NOT_RETRIABLE: Local = Local::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "URX",
        "upstream failed and the request cannot be retried",
    );
    pub const TIMEOUT: Local = Local::new(
        StatusCode::GATEWAY_TIMEOUT,
        "UT",
        "upstream request timeout",
    );

    /// An upstream exchange that failed with response flag `flags` (`UF`, `UC`).
    pub const fn upstream_failed(flags: &'static str) -> Self {
        Local::new(
            StatusCode::SERVICE_UNAVAILABLE,
            flags,
            "upstream connect error or disconnect/reset before headers",
        )
    }

    /// A request whose JWT is refused (RequestAuthentication): 401 with the reason.
    pub fn unauthenticated(e: crate::l7::jwt::JwtError) -> Self {
        Local::new(StatusCode::UNAUTHORIZED, "-", e.message())
    }

    pub fn response(&self) -> Response<Body> {
        let mut r = Response::new(full(self.body));
        *r.status_mut() = self.status;
        if !self.body.is_empty() {
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use ambient_proto::ambient::waypoint::v1 as pb;

    use super::*;
    use testing::{FakeUpstream, Fixture, Reply, get, retry};

    /// The whole pipeline, then the response as it leaves.
    async fn serve(f: &Fixture, upstream: &Arc<FakeUpstream>) -> (Response<Body>, RequestLog) {
        let mut x = f.exchange(get("/"));
        let answer = run(&mut x, upstream).await;
        let mut log = x.log;
        let response = respond::settle(answer, &mut log);
        (response, log)
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_meets_every_stage_in_order() {
        let f = Fixture::one_route(|r| r.retry = Some(retry(1, &[503])));
        let upstream = FakeUpstream::replying([Reply::Status(503)]);
        let (response, log) = serve(&f, &upstream).await;
        assert_eq!(response.status(), 200);
        assert_eq!((log.status, log.flags, log.attempts), (200, "-", 2));
        assert_eq!((log.route.as_str(), log.path.as_str()), ("r", "/"));
        assert_eq!(log.upstream.unwrap().addr, upstream.sent()[1].addr);
    }

    #[tokio::test]
    async fn a_local_answer_is_logged_with_its_flag() {
        let f = Fixture::one_route(|r| r.backends[0].service = "shop/gone".into());
        let (response, log) = serve(&f, &FakeUpstream::new()).await;
        assert_eq!(response.status(), 503);
        assert_eq!((log.status, log.flags), (503, "UH"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_failure_is_logged_with_the_failure_flag() {
        let f = Fixture::one_route(|r| {
            r.retry = Some(pb::RetryPolicy {
                on_connect_failure: true,
                ..retry(1, &[])
            })
        });
        let upstream = FakeUpstream::replying([Reply::ConnectFailure; 2]);
        let (response, log) = serve(&f, &upstream).await;
        assert_eq!(response.status(), 503);
        assert_eq!((log.flags, log.attempts), ("UF", 2));
    }
}
