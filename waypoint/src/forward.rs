//! One HTTP request through the waypoint, top to bottom:
//! authorize → route → fault → redirect / rewrite → backend → limits → endpoint → send
//! (with retries, per-try and route timeouts) → response filters → telemetry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tracing::debug;

use crate::context::Ctx;
use crate::inbound::{Downstream, Target};
use crate::l7::authz::RequestAttributes;
use crate::l7::backend::BackendRef;
use crate::l7::retry::RetryDecision;
use crate::l7::{Outcome, authz, path};
use crate::routing::{RoutingSnapshot, ServiceRouting};
use crate::telemetry::{MeteredBody, RequestLog};
use crate::trace::Span;
use crate::upstream::{Body, BoxError, Endpoint, HttpVersion, TunnelContext};

/// Request bodies are held for replay (retries, mirrors) only up to this size; larger ones are
/// streamed once and not retried.
const MAX_BUFFERED_BODY: usize = 1024 * 1024;

/// Headers that describe one hop's connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(n);
    }
    // `te: trailers` must reach gRPC servers; any other TE value is hop-by-hop.
    if headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

/// The request body, either held (replayable) or a stream that can be sent once.
enum RequestBody {
    Held(Bytes),
    Streaming(Option<Incoming>),
}

impl RequestBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            RequestBody::Held(b) => Some(full(b.clone())),
            RequestBody::Streaming(s) => s
                .take()
                .map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()),
        }
    }

    fn len(&self) -> u64 {
        match self {
            RequestBody::Held(b) => b.len() as u64,
            RequestBody::Streaming(_) => 0,
        }
    }
}

/// What the request path decided when it answers by itself.
struct Local {
    status: StatusCode,
    flags: &'static str,
    body: &'static str,
}

impl Local {
    fn response(&self) -> Response<Body> {
        let mut r = Response::new(full(self.body));
        *r.status_mut() = self.status;
        if !self.body.is_empty() {
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        r
    }
}

pub async fn handle(
    ctx: Arc<Ctx>,
    target: Arc<Target>,
    downstream: Arc<Downstream>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let routing = ctx.routing.load();
    let (service_routing, port) = match target.as_ref() {
        Target::Service { service, port } => (routing.service(&service.key()).cloned(), *port),
        Target::Workload { port, .. } => (None, *port),
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
    let service = match target.as_ref() {
        Target::Service { service, .. } => Some(service.clone()),
        Target::Workload { .. } => None,
    };
    let mut log = RequestLog::start(started, downstream.clone(), service, &parts, span.clone());
    let result = route_and_send(
        &ctx,
        &routing,
        service_routing.as_deref(),
        &target,
        &downstream,
        port,
        &mut parts,
        body,
        &span,
        &mut log,
    )
    .await;
    let response = match result {
        Ok(r) => r,
        Err(local) => {
            log.flags = local.flags;
            local.response()
        }
    };
    let (mut rparts, rbody) = response.into_parts();
    log.status = rparts.status.as_u16();
    if let Some(s) = rparts
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        log.grpc_status = Some(s.to_string());
    }
    strip_hop_by_hop(&mut rparts.headers);
    Response::from_parts(rparts, MeteredBody::new(rbody, log).boxed())
}

#[allow(clippy::too_many_arguments)]
async fn route_and_send(
    ctx: &Arc<Ctx>,
    routing: &RoutingSnapshot,
    service: Option<&ServiceRouting>,
    target: &Target,
    downstream: &Downstream,
    port: u16,
    parts: &mut http::request::Parts,
    body: Incoming,
    span: &Span,
    log: &mut RequestLog,
) -> Result<Response<Body>, Local> {
    // Routing and authorization see one normalized path.
    if let std::borrow::Cow::Owned(p) = path::normalize(parts.uri.path()) {
        let with_query = match parts.uri.query() {
            Some(q) => format!("{p}?{q}"),
            None => p,
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = with_query.parse().ok();
        parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    }
    let attrs = RequestAttributes::http(
        &downstream.identity,
        downstream.addr.ip(),
        downstream.dst,
        parts,
    );
    let none = authz::Policies::default();
    let verdict = authz::evaluate(
        &routing.gateway_policies,
        service.map(|s| &s.policies).unwrap_or(&none),
        &attrs,
    );
    if !verdict.audited.is_empty() {
        tracing::info!(target: "audit", src = %downstream.identity, path = %parts.uri.path(), policies = ?verdict.audited, allowed = verdict.allowed, "audited request");
    }
    if !verdict.allowed {
        debug!(src = %downstream.identity, path = %parts.uri.path(), policy = verdict.policy.unwrap_or("no ALLOW policy matched"), "request denied by policy");
        return Err(Local {
            status: StatusCode::FORBIDDEN,
            flags: "-",
            body: "RBAC: access denied",
        });
    }

    // A workload addressed directly (waypoint-for workload): no routes, straight to it.
    let table = match (target, service) {
        (Target::Service { .. }, Some(s)) => match s.ports.get(&port) {
            Some(t) => t,
            None => {
                return Err(Local {
                    status: StatusCode::NOT_FOUND,
                    flags: "NR",
                    body: "",
                });
            }
        },
        (Target::Workload { workload, port }, _) => {
            let endpoint = Endpoint {
                workload: workload.clone(),
                addr: std::net::SocketAddr::new(
                    workload.addresses.first().copied().ok_or(Local {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        flags: "UH",
                        body: "no healthy upstream",
                    })?,
                    *port,
                ),
            };
            return send_once(ctx, downstream, parts, body, endpoint, span, log).await;
        }
        (Target::Service { .. }, None) => {
            return Err(Local {
                status: StatusCode::SERVICE_UNAVAILABLE,
                flags: "NR",
                body: "no configuration for this service yet",
            });
        }
    };
    let Some(selected) = table.select(parts) else {
        return Err(Local {
            status: StatusCode::NOT_FOUND,
            flags: "NR",
            body: "",
        });
    };
    let route = selected.route;
    log.route = route.name.to_string();
    if route.is_invalid() {
        return Err(Local {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            flags: "NR",
            body: "route configuration is invalid",
        });
    }

    let injection = route
        .fault
        .as_ref()
        .map(|f| f.decide(&mut rand::rng()))
        .unwrap_or_default();
    if let Some(delay) = injection.delay {
        tokio::time::sleep(delay).await;
        log.flags = "DI";
    }
    if let Some(abort) = injection.abort {
        log.flags = "FI";
        let (rparts, ()) = abort.response().into_parts();
        return Ok(Response::from_parts(
            rparts,
            full(Bytes::from_static(b"fault filter abort")),
        ));
    }

    if let Some(redirect) = route.filters.redirect(parts, selected.capture, port) {
        return match redirect {
            Ok(r) => {
                let (mut rparts, ()) = r.into_parts();
                route.filters.apply_response(&mut rparts.headers);
                Ok(Response::from_parts(rparts, full(Bytes::new())))
            }
            Err(_) => Err(Local {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                flags: "-",
                body: "redirect could not be built",
            }),
        };
    }
    let filter_failed = Local {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        flags: "-",
        body: "request filter failed",
    };
    route
        .filters
        .apply_request(parts, selected.capture)
        .map_err(|_| filter_failed)?;
    let Some(backend) = route.backends.choose(&mut rand::rng()) else {
        return Err(Local {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            flags: "NR",
            body: "no backend",
        });
    };
    backend
        .filters
        .apply_request(parts, selected.capture)
        .map_err(|_| Local {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            flags: "-",
            body: "request filter failed",
        })?;

    let mirrors: Vec<BackendRef> = route
        .filters
        .mirrors()
        .iter()
        .chain(backend.filters.mirrors())
        .filter(|m| m.sampled(&mut rand::rng()))
        .map(|m| m.target.clone())
        .collect();
    // Hold the body when it may be sent more than once.
    let replay = route.retry.is_some() || !mirrors.is_empty();
    let mut body = if replay && body_fits(parts) {
        match Limited::new(body, MAX_BUFFERED_BODY).collect().await {
            Ok(c) => RequestBody::Held(c.to_bytes()),
            Err(_) => {
                return Err(Local {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    flags: "-",
                    body: "request body too large to retry or mirror",
                });
            }
        }
    } else {
        RequestBody::Streaming(Some(body))
    };
    log.request_bytes = body.len();

    for mirror in mirrors {
        if let RequestBody::Held(b) = &body {
            spawn_mirror(ctx, routing, &mirror, parts, b.clone(), downstream);
        }
    }

    let backend_service = routing
        .service(&backend.target.service)
        .cloned()
        .ok_or(Local {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flags: "UH",
            body: "no healthy upstream",
        })?;
    let _permit = backend_service.limits.try_request().map_err(|_| Local {
        status: StatusCode::SERVICE_UNAVAILABLE,
        flags: "UO",
        body: "upstream connect error or disconnect/reset before headers. reset reason: overflow",
    })?;
    let attempts = async {
        let mut retry = route.retry.as_ref().map(|r| r.start());
        let mut last: Option<Result<Response<Body>, Local>> = None;
        let mut avoid = None;
        loop {
            log.attempts += 1;
            let picked = backend_service.balancer.pick(
                &parts.headers,
                avoid.as_ref(),
                Instant::now(),
                &mut rand::rng(),
            );
            let Some(picked) = picked else {
                return last.unwrap_or(Err(Local {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    flags: "UH",
                    body: "no healthy upstream",
                }));
            };
            let endpoint = backend_service.endpoint(&picked, backend.target.port);
            log.upstream = Some(endpoint.clone());
            let Some(req_body) = body.take() else {
                // A streamed body cannot be sent twice: the last answer stands.
                return last.unwrap_or(Err(Local {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    flags: "URX",
                    body: "upstream failed and the request cannot be retried",
                }));
            };
            let request = upstream_request(parts, req_body, is_h2(parts, table.protocol()));
            let tunnel = TunnelContext {
                client_ip: Some(downstream.addr.ip()),
                traceparent: Some(span.traceparent().to_str().unwrap_or_default().to_string()),
            };
            let version = if is_h2(parts, table.protocol()) {
                HttpVersion::Http2
            } else {
                HttpVersion::Http1
            };
            let send = ctx
                .upstreams
                .send(ctx, &endpoint, version, request, &tunnel);
            let per_try = retry
                .as_ref()
                .and_then(|_| route.retry.as_ref().and_then(|r| r.per_try_timeout()));
            let sent = match per_try {
                Some(t) => tokio::time::timeout(t, send).await.ok(),
                None => Some(send.await),
            };
            let (outcome, result) = match sent {
                None => (
                    Outcome::Timeout,
                    Err(Local {
                        status: StatusCode::GATEWAY_TIMEOUT,
                        flags: "UT",
                        body: "upstream request timeout",
                    }),
                ),
                Some(Err(e)) => {
                    debug!(error = %e, "upstream failed");
                    let outcome = match e.response_flag() {
                        "UF" => Outcome::ConnectFailure,
                        _ => Outcome::Reset,
                    };
                    (
                        outcome,
                        Err(Local {
                            status: StatusCode::SERVICE_UNAVAILABLE,
                            flags: e.response_flag(),
                            body: "upstream connect error or disconnect/reset before headers",
                        }),
                    )
                }
                Some(Ok(r)) => (
                    Outcome::Status(r.status()),
                    Ok(r.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed())),
                ),
            };
            if let Some(ejection) =
                backend_service
                    .balancer
                    .record(&picked, outcome, Instant::now())
            {
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
                    log.flags = "URX";
                    return result;
                }
                RetryDecision::Retry { backoff } => {
                    last = Some(result);
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    };
    let response = match route.timeout {
        Some(t) => match tokio::time::timeout(t, attempts).await {
            Ok(r) => r,
            Err(_) => Err(Local {
                status: StatusCode::GATEWAY_TIMEOUT,
                flags: "UT",
                body: "upstream request timeout",
            }),
        },
        None => attempts.await,
    }?;
    let (mut rparts, rbody) = response.into_parts();
    backend.filters.apply_response(&mut rparts.headers);
    route.filters.apply_response(&mut rparts.headers);
    Ok(Response::from_parts(rparts, rbody))
}

/// Whether a request's declared length allows holding it.
fn body_fits(parts: &http::request::Parts) -> bool {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_none_or(|n| n <= MAX_BUFFERED_BODY)
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
fn upstream_request(parts: &http::request::Parts, body: Body, h2: bool) -> Request<Body> {
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

/// Sends a request to one known endpoint (workload-addressed traffic).
async fn send_once(
    ctx: &Ctx,
    downstream: &Downstream,
    parts: &http::request::Parts,
    body: Incoming,
    endpoint: Endpoint,
    span: &Span,
    log: &mut RequestLog,
) -> Result<Response<Body>, Local> {
    log.attempts = 1;
    log.upstream = Some(endpoint.clone());
    let h2 = parts.version == Version::HTTP_2;
    let request = upstream_request(parts, body.map_err(|e| Box::new(e) as BoxError).boxed(), h2);
    let tunnel = TunnelContext {
        client_ip: Some(downstream.addr.ip()),
        traceparent: Some(span.traceparent().to_str().unwrap_or_default().to_string()),
    };
    let version = if h2 {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    };
    match ctx
        .upstreams
        .send(ctx, &endpoint, version, request, &tunnel)
        .await
    {
        Ok(r) => Ok(r.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed())),
        Err(e) => Err(Local {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flags: e.response_flag(),
            body: "upstream connect error or disconnect/reset before headers",
        }),
    }
}

/// Sends a copy of the request to `target` and ignores the answer (`RequestMirror`).
fn spawn_mirror(
    ctx: &Arc<Ctx>,
    routing: &RoutingSnapshot,
    target: &BackendRef,
    parts: &http::request::Parts,
    body: Bytes,
    downstream: &Downstream,
) {
    let Some(service) = routing.service(&target.service).cloned() else {
        return;
    };
    let Some(picked) =
        service
            .balancer
            .pick(&parts.headers, None, Instant::now(), &mut rand::rng())
    else {
        return;
    };
    let endpoint = service.endpoint(&picked, target.port);
    let h2 = parts.version == Version::HTTP_2;
    let mut request = upstream_request(parts, full(body), h2);
    // Envoy marks mirrored requests by suffixing the host with `-shadow`.
    if let Some(host) = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| HeaderValue::try_from(format!("{h}-shadow")).ok())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    let tunnel = TunnelContext {
        client_ip: Some(downstream.addr.ip()),
        traceparent: None,
    };
    let version = if h2 {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    };
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let _picked = picked;
        let send = ctx
            .upstreams
            .send(&ctx, &endpoint, version, request, &tunnel);
        match tokio::time::timeout(Duration::from_secs(30), send).await {
            Ok(Ok(r)) => {
                // Drain so the connection can be reused.
                let _ = r.into_body().collect().await;
            }
            Ok(Err(e)) => debug!(error = %e, "mirror failed"),
            Err(_) => debug!("mirror timed out"),
        }
    });
}
