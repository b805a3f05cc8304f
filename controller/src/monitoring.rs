//! The controller's monitoring port (15014): `/ready` and Prometheus `/metrics`.

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tracing::debug;

/// Serves until the listener fails.
pub async fn serve(listener: TcpListener, metrics: PrometheusHandle) -> std::io::Result<()> {
    loop {
        let (tcp, peer) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(route(&req, &metrics)) }
            });
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                debug!(%peer, error = %e, "monitoring connection ended");
            }
        });
    }
}

fn route<B>(req: &Request<B>, metrics: &PrometheusHandle) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/ready" => (StatusCode::OK, "ready\n".to_string()),
        "/metrics" => (StatusCode::OK, metrics.render()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}
