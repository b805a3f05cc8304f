//! ztunnel's HTTP endpoints in its own namespace: admin on 15000 (loopback only:
//! `/config_dump`, `/quitquitquit`), readiness on 15021 (`/healthz/ready`), Prometheus
//! metrics on 15020 (`/metrics`, `/stats/prometheus`).

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::identity::{CertificateDump, CertificateManager};
use crate::inpod::{PodDump, WorkloadManager};
use crate::proxy::connection_manager::{ConnectionDump, ConnectionManager};
use crate::rbac::Policy;
use crate::readiness::Readiness;
use crate::state::{Service, StateStore, Workload};

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response")
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

/// What `/config_dump` returns.
#[derive(Serialize)]
pub struct ConfigDump {
    pub node: String,
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Arc<Service>>,
    pub pods: Vec<PodDump>,
    pub policies: Vec<Arc<Policy>>,
    /// Live inbound connections (the ones policy changes are checked against).
    pub connections: Vec<ConnectionDump>,
    pub certificates: Vec<CertificateDump>,
}

/// The admin port's routes.
pub fn admin_routes(
    node: String,
    state: Arc<StateStore>,
    pods: Arc<WorkloadManager>,
    certs: Arc<CertificateManager>,
    connections: Arc<ConnectionManager>,
    shutdown: CancellationToken,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    move |req| match (req.method(), req.uri().path()) {
        (&Method::GET, "/config_dump") => {
            let snapshot = state.load();
            let mut workloads: Vec<_> = snapshot.workloads().cloned().collect();
            workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
            let mut services: Vec<_> = snapshot.services().cloned().collect();
            services.sort_by_key(|s| s.key());
            let mut policies: Vec<_> = snapshot.policies().cloned().collect();
            policies.sort_by_key(|p| p.key());
            let dump = ConfigDump {
                node: node.clone(),
                workloads,
                services,
                pods: pods.dump(),
                policies,
                connections: connections.dump(&snapshot),
                certificates: certs.dump(),
            };
            match serde_json::to_vec_pretty(&dump) {
                Ok(body) => respond(StatusCode::OK, "application/json", body),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        (&Method::POST | &Method::GET, "/quitquitquit") => {
            shutdown.cancel();
            respond(StatusCode::OK, "text/plain", "exiting\n")
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// The readiness port's route.
pub fn readiness_routes(
    readiness: Readiness,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    move |req| match req.uri().path() {
        "/healthz/ready" if readiness.is_ready() => {
            respond(StatusCode::OK, "text/plain", "ready\n")
        }
        "/healthz/ready" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!(
                "not ready: waiting for {}\n",
                readiness.pending().join(", ")
            ),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// The metrics port's routes.
pub fn metrics_routes(
    handle: PrometheusHandle,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    move |req| match req.uri().path() {
        "/metrics" | "/stats/prometheus" => {
            respond(StatusCode::OK, "text/plain; version=0.0.4", handle.render())
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
