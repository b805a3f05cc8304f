//! A proxy's small HTTP endpoints in its own namespace: the admin port (15000, loopback
//! only), readiness (15021, `/healthz/ready`) and Prometheus metrics (15020, `/metrics` and
//! Istio's `/stats/prometheus`). Each is a plain function from request to response, served
//! by [`serve`]; a proxy adds its own admin routes (`/config_dump`, ...) on top.

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::readiness::Readiness;

/// Every admin answer is small and complete.
pub type Body = Full<Bytes>;

/// A complete response.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response")
}

/// `200` with `value` as pretty JSON (or `500` saying why it could not be encoded).
pub fn json<T: Serialize + ?Sized>(value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

/// `404`.
pub fn not_found() -> Response<Body> {
    respond(StatusCode::NOT_FOUND, "text/plain", "not found\n")
}

/// Prometheus' text exposition of everything recorded.
pub fn metrics(handle: &PrometheusHandle) -> Response<Body> {
    respond(StatusCode::OK, "text/plain; version=0.0.4", handle.render())
}

/// The admin port's routes every proxy has: `GET /config_dump` answers `dump()` as JSON, and
/// `/quitquitquit` stops the process (as Envoy's and Istio's ztunnel's do).
pub fn admin_routes<D, T>(
    dump: D,
    shutdown: CancellationToken,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static
where
    D: Fn() -> T + Clone + Send + Sync + 'static,
    T: Serialize,
{
    move |req| match (req.method(), req.uri().path()) {
        (&Method::GET, "/config_dump") => json(&dump()),
        (&Method::POST | &Method::GET, "/quitquitquit") => {
            shutdown.cancel();
            respond(StatusCode::OK, "text/plain", "exiting\n")
        }
        _ => not_found(),
    }
}

/// Serves `route` on every connection `listener` accepts, until `cancel`.
pub async fn serve<F>(listener: TcpListener, cancel: CancellationToken, route: F)
where
    F: Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static,
{
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { debug!(error = %e, "admin accept failed"); continue; }
            },
        };
        let route = route.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let route = route.clone();
                async move { Ok::<_, Infallible>(route(req)) }
            });
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

/// The readiness port's route.
pub fn readiness_routes(
    readiness: Readiness,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    move |req| match req.uri().path() {
        // The process id tells processes apart where two share the port (a restart in the
        // node's own network namespace: the new process is ready before the old one leaves).
        "/healthz/ready" if readiness.is_ready() => respond(
            StatusCode::OK,
            "text/plain",
            format!("ready\npid {}\n", std::process::id()),
        ),
        "/healthz/ready" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!(
                "not ready: waiting for {}\n",
                readiness.pending().join(", ")
            ),
        ),
        _ => not_found(),
    }
}

/// The metrics port's routes.
pub fn metrics_routes(
    handle: PrometheusHandle,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    move |req| match req.uri().path() {
        "/metrics" | "/stats/prometheus" => metrics(&handle),
        _ => not_found(),
    }
}
