//! The controller's monitoring port (15014): `/ready`, Prometheus `/metrics`, and JSON debug
//! views for the CLI: `/debug/proxies` (connected proxies and their sync state),
//! `/debug/diagnostics` (manifest problems and index warnings) and `/debug/gateways` (each
//! waypoint Gateway: `namespace`, `name`, `class`, `trafficType`, `address` (string or null),
//! `programmed`, `reason`, `message`) and `/debug/policies` (each LocalRateLimitPolicy: `kind`,
//! `namespace`, `name`, `accepted`, `reason`, `message`, `attached`) and `/debug/rollouts` (each
//! Rollout as the rollout engine judges it: phase, step, canary weight, last analysis,
//! events).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use proxy_core::admin::{self, Body, json, not_found, respond};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::index::Warning;
use crate::push::Published;
use crate::source::Diagnostic;
use crate::xds::server::ProxyRegistry;

/// What the monitoring port shows.
pub struct Monitoring {
    pub metrics: PrometheusHandle,
    pub ready: Arc<AtomicBool>,
    pub registry: Arc<ProxyRegistry>,
    pub published: Arc<Published>,
    pub diagnostics: Arc<Mutex<Vec<Diagnostic>>>,
}

#[derive(Serialize)]
struct DiagnosticsView {
    manifests: Vec<Diagnostic>,
    index: Vec<Warning>,
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<Monitoring>) {
    let route = move |req: Request<Incoming>| route(&req, &state);
    admin::serve(listener, CancellationToken::new(), route).await
}

fn route<B>(req: &Request<B>, m: &Monitoring) -> Response<Body> {
    match req.uri().path() {
        "/ready" if m.ready.load(Ordering::Acquire) => {
            respond(StatusCode::OK, "text/plain", "ready\n")
        }
        "/ready" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "waiting for the initial configuration\n",
        ),
        "/metrics" => admin::metrics(&m.metrics),
        "/debug/proxies" => json(&m.registry.list()),
        "/debug/gateways" => match m.registry.served() {
            Some(snapshot) => json(snapshot.gateways.as_ref()),
            None => json(&Vec::<()>::new()),
        },
        "/debug/rollouts" => json(&*m.published.rollouts.lock().expect("poisoned")),
        "/debug/policies" => match m.registry.served() {
            Some(snapshot) => json(snapshot.policies.as_ref()),
            None => json(&Vec::<()>::new()),
        },
        "/debug/diagnostics" => json(&DiagnosticsView {
            manifests: m.diagnostics.lock().expect("poisoned").clone(),
            index: m.published.warnings.lock().expect("poisoned").clone(),
        }),
        _ => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tokio::sync::watch;

    use super::*;
    use crate::index::Index;
    use crate::index::l7::status::GatewayStatus;
    use crate::xds::Snapshot;

    async fn get(m: &Monitoring, path: &str) -> serde_json::Value {
        let req = Request::builder().uri(path).body(()).unwrap();
        let resp = route(&req, m);
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn gateways_view() {
        let m = Monitoring {
            metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle(),
            ready: Arc::default(),
            registry: Arc::new(ProxyRegistry::default()),
            published: Arc::default(),
            diagnostics: Arc::default(),
        };
        assert_eq!(get(&m, "/debug/gateways").await, serde_json::json!([]));
        let mut idx = Index::default();
        idx.gateways.push(GatewayStatus {
            namespace: "bookinfo".into(),
            name: "waypoint".into(),
            class: "istio-waypoint".into(),
            traffic_type: "service".into(),
            address: None,
            programmed: false,
            reason: "NoAddress".into(),
            message: "Service bookinfo/waypoint does not exist".into(),
            conditions: vec![],
        });
        let (_tx, rx) = watch::channel(Arc::new(Snapshot::next(&Snapshot::default(), &idx)));
        m.registry.serve_from(rx);
        assert_eq!(
            get(&m, "/debug/gateways").await,
            serde_json::json!([{
                "namespace": "bookinfo",
                "name": "waypoint",
                "class": "istio-waypoint",
                "trafficType": "service",
                "address": null,
                "programmed": false,
                "reason": "NoAddress",
                "message": "Service bookinfo/waypoint does not exist",
            }])
        );
    }
}
