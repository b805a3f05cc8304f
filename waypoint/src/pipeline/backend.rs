//! Stage 6: the backend: drawn by weight, its request filters applied, mirrors sent a copy,
//! the body held when it may be sent more than once, and the backend service's request
//! limit taken.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Limited};
use tracing::debug;

use super::route::Routed;
use super::send::{Upstream, tunnel, upstream_request, version};
use super::{Exchange, InboundBody, Local, RequestBody, full};
use crate::l7::backend::{Backend, BackendRef};
use crate::l7::limits::RequestPermit;
use crate::routing::ServiceRouting;

/// Request bodies are held for replay (retries, mirrors) only up to this size; larger ones are
/// streamed once and not retried.
pub const MAX_BUFFERED_BODY: usize = 1024 * 1024;

/// How long a mirrored request may take.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// The backend a request goes to, and its admission to the backend service.
pub struct Chosen<'r> {
    pub backend: &'r Backend,
    pub service: &'r ServiceRouting,
    /// Counts the request against the service's `max_requests` while it lives.
    _permit: RequestPermit,
}

/// Chooses the backend. No backend: 500 `NR`; a body too large to hold for retries or
/// mirrors: 413; an unknown backend service: 503 `UH`; its request limit reached: 503 `UO`.
pub async fn choose<'r, B: InboundBody, U: Upstream>(
    x: &mut Exchange<'r, B>,
    routed: Routed<'r>,
    upstream: &Arc<U>,
) -> Result<Chosen<'r>, Local> {
    let route = routed.route;
    let backend = route
        .backends
        .choose(&mut rand::rng())
        .ok_or(Local::NO_BACKEND)?;
    x.log.backend = Some(backend.target.service.clone());
    backend
        .filters
        .apply_request(&mut x.parts, routed.capture)
        .map_err(|_| Local::FILTER_FAILED)?;

    let mirrors: Vec<&BackendRef> = route
        .filters
        .mirrors()
        .iter()
        .chain(backend.filters.mirrors())
        .filter(|m| m.sampled(&mut rand::rng()))
        .map(|m| &m.target)
        .collect();
    // Hold the body when it may be sent more than once.
    if (route.retry.is_some() || !mirrors.is_empty())
        && body_fits(&x.parts)
        && let RequestBody::Streaming(stream) = &mut x.body
        && let Some(body) = stream.take()
    {
        let held = Limited::new(body, MAX_BUFFERED_BODY).collect().await;
        x.body = RequestBody::Held(held.map_err(|_| Local::TOO_LARGE)?.to_bytes());
    }
    x.log.request_bytes = x.body.len();
    if let RequestBody::Held(body) = &x.body {
        for mirror in mirrors {
            spawn_mirror(x, upstream, mirror, body.clone());
        }
    }

    let service = x
        .routing
        .service(&backend.target.service)
        .ok_or(Local::NO_HEALTHY_UPSTREAM)?;
    let permit = service.limits.try_request().map_err(|_| Local::OVERFLOW)?;
    Ok(Chosen {
        backend,
        service,
        _permit: permit,
    })
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

/// Sends a copy of the request to `target` and ignores the answer (`RequestMirror`).
fn spawn_mirror<B, U: Upstream>(
    x: &Exchange<'_, B>,
    upstream: &Arc<U>,
    target: &BackendRef,
    body: Bytes,
) {
    let Some(service) = x.routing.service(&target.service) else {
        return;
    };
    let Some(picked) =
        service
            .balancer
            .pick(&x.parts.headers, None, Instant::now(), &mut rand::rng())
    else {
        return;
    };
    let mut endpoint = service.endpoint(&picked, target.port);
    let h2 = x.parts.version == http::Version::HTTP_2;
    let mut request = upstream_request(&x.parts, full(body), h2);
    // Envoy marks mirrored requests by suffixing the host with `-shadow`.
    if let Some(host) = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| http::HeaderValue::try_from(format!("{h}-shadow")).ok())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    let tunnel = tunnel(x.downstream, None);
    let upstream = upstream.clone();
    let limits = service.limits.clone();
    tokio::spawn(async move {
        let _picked = picked;
        let send = async {
            upstream.resolve(&mut endpoint).await?;
            upstream
                .send(&endpoint, version(h2), request, &tunnel, Some(&limits))
                .await
        };
        match tokio::time::timeout(MIRROR_TIMEOUT, send).await {
            Ok(Ok(r)) => {
                // Drain so the connection can be reused.
                let _ = r.into_body().collect().await;
            }
            Ok(Err(e)) => debug!(error = %e, "mirror failed"),
            Err(_) => debug!("mirror timed out"),
        }
    });
}

#[cfg(test)]
mod tests {
    use ambient_proto::ambient::waypoint::v1 as pb;
    use http::header::HOST;

    use super::*;
    use crate::pipeline::route::{Decision, select};
    use crate::pipeline::testing::{API, FakeUpstream, Fixture, Request, get, post, retry};

    /// Routes the request, then runs this stage.
    async fn run(
        f: &Fixture,
        req: Request,
        upstream: &Arc<FakeUpstream>,
    ) -> (Result<(), Local>, Option<Bytes>, u64) {
        let mut x = f.exchange(req);
        let Ok(Decision::Route(routed)) = select(&mut x) else {
            panic!("routed")
        };
        let chosen = choose(&mut x, routed, upstream).await.map(|c| {
            assert_eq!(&*c.backend.target.service, API);
            assert_eq!(c.service.service.key(), API);
        });
        let held = match &x.body {
            RequestBody::Held(b) => Some(b.clone()),
            RequestBody::Streaming(_) => None,
        };
        (chosen, held, x.log.request_bytes)
    }

    fn mirror_to(target: &str) -> pb::Filter {
        pb::Filter {
            kind: Some(pb::filter::Kind::Mirror(pb::Mirror {
                backend: Some(pb::Backend {
                    service: target.into(),
                    port: 80,
                    weight: 1,
                    filters: vec![],
                }),
                percent: 100.0,
            })),
        }
    }

    #[tokio::test]
    async fn the_backend_is_chosen_and_the_body_streams_without_retries() {
        let f = Fixture::one_route(|_| {});
        let upstream = FakeUpstream::new();
        let (result, held, bytes) = run(&f, post("/", "hello"), &upstream).await;
        assert_eq!(result, Ok(()));
        assert_eq!(held, None, "streamed");
        assert_eq!(bytes, 0);
    }

    #[tokio::test]
    async fn retries_hold_the_body() {
        let f = Fixture::one_route(|r| r.retry = Some(retry(2, &[503])));
        let upstream = FakeUpstream::new();
        let (result, held, bytes) = run(&f, post("/", "hello"), &upstream).await;
        assert_eq!(result, Ok(()));
        assert_eq!(held.as_deref(), Some(&b"hello"[..]));
        assert_eq!(bytes, 5);
    }

    #[tokio::test]
    async fn no_backend_is_500() {
        let f = Fixture::one_route(|r| r.backends[0].weight = 0);
        let (result, ..) = run(&f, get("/"), &FakeUpstream::new()).await;
        assert_eq!(result, Err(Local::NO_BACKEND));
        assert_eq!(
            (Local::NO_BACKEND.status.as_u16(), Local::NO_BACKEND.flags),
            (500, "NR")
        );
    }

    #[tokio::test]
    async fn an_unknown_backend_service_is_503_uh() {
        let f = Fixture::one_route(|r| {
            r.backends[0].service = "shop/gone.shop.svc.cluster.local".into()
        });
        let mut x = f.exchange(get("/"));
        let Ok(Decision::Route(routed)) = select(&mut x) else {
            panic!("routed")
        };
        let result = choose(&mut x, routed, &FakeUpstream::new()).await;
        assert_eq!(result.err(), Some(Local::NO_HEALTHY_UPSTREAM));
        assert_eq!(Local::NO_HEALTHY_UPSTREAM.flags, "UH");
    }

    #[tokio::test]
    async fn the_request_limit_overflows_503_uo_until_released() {
        let mut f = Fixture::one_route(|_| {});
        f.traffic(
            API,
            pb::TrafficPolicy {
                connection_pool: Some(pb::ConnectionPool {
                    max_requests: 1,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let upstream = FakeUpstream::new();
        let mut first = f.exchange(get("/"));
        let Ok(Decision::Route(routed)) = select(&mut first) else {
            panic!("routed")
        };
        let held = choose(&mut first, routed, &upstream).await;
        assert!(held.is_ok());
        let (result, ..) = run(&f, get("/"), &upstream).await;
        assert_eq!(result, Err(Local::OVERFLOW));
        assert_eq!(
            (Local::OVERFLOW.status.as_u16(), Local::OVERFLOW.flags),
            (503, "UO")
        );
        drop(held);
        assert_eq!(run(&f, get("/"), &upstream).await.0, Ok(()));
    }

    #[tokio::test]
    async fn a_body_too_large_to_hold_for_retries_is_413() {
        let f = Fixture::one_route(|r| r.retry = Some(retry(2, &[503])));
        let big = vec![b'x'; MAX_BUFFERED_BODY + 1];
        let (result, ..) = run(&f, post("/", big), &FakeUpstream::new()).await;
        assert_eq!(result, Err(Local::TOO_LARGE));
        assert_eq!(Local::TOO_LARGE.status.as_u16(), 413);
    }

    #[tokio::test]
    async fn a_declared_length_too_large_to_hold_streams() {
        let f = Fixture::one_route(|r| r.retry = Some(retry(2, &[503])));
        let mut req = post("/", "hello");
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, (MAX_BUFFERED_BODY + 1).into());
        let (result, held, _) = run(&f, req, &FakeUpstream::new()).await;
        assert_eq!(result, Ok(()));
        assert_eq!(held, None);
    }

    #[tokio::test]
    async fn mirrors_get_a_copy_of_the_request() {
        let f = Fixture::one_route(|r| r.filters.push(mirror_to(API)));
        let upstream = FakeUpstream::new();
        let (result, held, _) = run(&f, post("/orders", "order"), &upstream).await;
        assert_eq!(result, Ok(()));
        assert_eq!(held.as_deref(), Some(&b"order"[..]), "held for the mirror");
        let sent = upstream.wait_for(1).await;
        let copy = &sent[0];
        assert_eq!(copy.head.uri, "/orders");
        assert_eq!(copy.head.headers[HOST], "web.shop:80-shadow");
        assert_eq!(copy.body, "order");
        assert_eq!(copy.traceparent, None);
    }

    #[tokio::test]
    async fn backend_filters_apply_to_the_request() {
        let f = Fixture::one_route(|r| {
            r.backends[0].filters.push(pb::Filter {
                kind: Some(pb::filter::Kind::RequestHeaders(pb::HeaderModifier {
                    add: vec![pb::Header {
                        name: "x-backend".into(),
                        value: "api".into(),
                    }],
                    ..Default::default()
                })),
            })
        });
        let mut x = f.exchange(get("/"));
        let Ok(Decision::Route(routed)) = select(&mut x) else {
            panic!("routed")
        };
        assert!(choose(&mut x, routed, &FakeUpstream::new()).await.is_ok());
        assert_eq!(x.parts.headers["x-backend"], "api");
    }
}
