//! The host's port for Prometheus. The mesh's proxies listen inside its own network
//! namespaces, which a Prometheus on the host cannot reach (and must not: mesh addresses
//! from the host's namespace would leave by its default route). `ambientctl up` binds a
//! port on the host's loopback and hands it to the supervisor, which serves there, read
//! only:
//!
//! - `GET /targets`: Prometheus' HTTP service discovery (`http_sd_configs`): one target
//!   group per proxy (each node's ztunnel, each waypoint pod, the controller), all at this
//!   port, told apart by `__metrics_path__`, labelled as Kubernetes' pod discovery would
//!   (`namespace`, `pod`, `node`, `instance` = the proxy's own address and 15020). A pod that
//!   comes or goes changes the list at once; Prometheus follows at its refresh interval.
//! - `GET /ztunnel/<node>/metrics`, `/pod/<namespace>/<name>/metrics`,
//!   `/controller/metrics`: that proxy's Prometheus text, fetched from inside the mesh.
//!
//! Nothing else: no admin port (config dumps), no readiness, no writes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::warn;

use super::control::{self, Endpoints, StatusReport, StatusSource};

/// The environment variable naming the inherited listener's descriptor.
pub const LISTENER_ENV: &str = "AMBIENT_SCRAPE_LISTENER_FD";

/// The proxies' metrics port (ztunnel and waypoint).
const METRICS_PORT: u16 = 15020;
/// The controller's monitoring port.
const CONTROLLER_PORT: u16 = 15014;

/// One entry of an `http_sd_configs` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The scrape targets of the mesh as `status` describes it, all served at `me`.
pub fn targets(status: &StatusReport, me: SocketAddr, controller: SocketAddr) -> Vec<TargetGroup> {
    let group = |path: String, labels: &[(&str, &str)]| TargetGroup {
        targets: vec![me.to_string()],
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("__metrics_path__".to_string(), path)])
            .collect(),
    };
    let mut out = vec![group(
        "/controller/metrics".into(),
        &[
            ("component", "controller"),
            (
                "instance",
                &format!("{}:{CONTROLLER_PORT}", controller.ip()),
            ),
        ],
    )];
    for n in &status.nodes {
        out.push(group(
            format!("/ztunnel/{}/metrics", n.name),
            &[
                ("component", "ztunnel"),
                ("node", &n.name),
                ("instance", &format!("{}:{METRICS_PORT}", n.ip)),
            ],
        ));
    }
    for p in &status.pods {
        let (Some(gateway), Some(ns), Some(name)) = (
            p["waypoint"]
                .as_str()
                .and_then(|w| w.split_once('/'))
                .map(|(_, gw)| gw),
            p["namespace"].as_str(),
            p["name"].as_str(),
        ) else {
            continue;
        };
        // Not scraped until it has an address: its series would say `instance=""`.
        let Some(ip) = p["ip"].as_str().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        out.push(group(
            format!("/pod/{ns}/{name}/metrics"),
            &[
                ("component", "waypoint"),
                ("namespace", ns),
                ("pod", name),
                ("gateway", gateway),
                ("node", p["node"].as_str().unwrap_or_default()),
                ("instance", &format!("{ip}:{METRICS_PORT}")),
            ],
        ));
    }
    out
}

/// The control API path that reads the metrics behind a scrape `path`, or `None` for any
/// path this port does not serve.
pub fn control_path(path: &str) -> Option<String> {
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '?', '#', '%']);
    if path == "/controller/metrics" {
        return Some("/controller/metrics".into());
    }
    if let Some(node) = path
        .strip_prefix("/ztunnel/")
        .and_then(|r| r.strip_suffix("/metrics"))
        .filter(|n| plain(n))
    {
        return Some(format!("/ztunnel/{node}/{METRICS_PORT}/metrics"));
    }
    let (ns, name) = path
        .strip_prefix("/pod/")?
        .strip_suffix("/metrics")?
        .split_once('/')?;
    (plain(ns) && plain(name)).then(|| format!("/pod/{ns}/{name}/{METRICS_PORT}/metrics"))
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

async fn route<S: StatusSource>(
    method: &hyper::Method,
    path: &str,
    source: &S,
    endpoints: &Endpoints,
    me: SocketAddr,
) -> Response<Full<Bytes>> {
    if method != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    if path == "/targets" {
        let groups = targets(&source.status().await, me, endpoints.controller_monitoring);
        let body = serde_json::to_vec(&groups).expect("plain data");
        return reply(StatusCode::OK, "application/json", body);
    }
    match control_path(path) {
        Some(inner) => control::get_path(&inner, source, endpoints).await,
        None => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no route {path}: this port serves /targets and the proxies' /metrics only\n"),
        ),
    }
}

/// Serves the port until the task is dropped.
pub async fn serve<S: StatusSource>(listener: TcpListener, source: Arc<S>, endpoints: Endpoints) {
    let me = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "the scrape port has no address; not serving it");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "accepting on the scrape port");
                // EMFILE and the like: give the process a moment to free descriptors.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let source = source.clone();
                let endpoints = endpoints.clone();
                async move {
                    let path = req.uri().path().to_string();
                    Ok::<_, Infallible>(
                        route(req.method(), &path, source.as_ref(), &endpoints, me).await,
                    )
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::control::NodeReport;

    fn status() -> StatusReport {
        StatusReport {
            manifests: "/m".into(),
            phase: "ready".into(),
            nodes: vec![NodeReport {
                name: "node-1".into(),
                ip: "172.30.0.2".into(),
                pod_cidr: "10.244.1.0/24".into(),
                ztunnel_ready: true,
            }],
            pods: vec![
                serde_json::json!({"namespace": "shop", "name": "web-1", "ip": "10.244.1.5",
                    "node": "node-1"}),
                serde_json::json!({"namespace": "shop", "name": "waypoint-ab", "ip": "10.244.1.9",
                    "node": "node-1", "waypoint": "shop/waypoint"}),
                serde_json::json!({"namespace": "shop", "name": "waypoint-cd", "ip": "",
                    "node": "node-1", "waypoint": "shop/waypoint"}),
            ],
            services: BTreeMap::new(),
            diagnostics: vec![],
        }
    }

    #[test]
    fn one_group_per_proxy_all_at_this_port() {
        let me: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let groups = targets(&status(), me, "172.30.0.254:15014".parse().unwrap());
        let paths: Vec<&str> = groups
            .iter()
            .map(|g| g.labels["__metrics_path__"].as_str())
            .collect();
        // The app pod has no proxy; the waypoint pod without an address waits.
        assert_eq!(
            paths,
            [
                "/controller/metrics",
                "/ztunnel/node-1/metrics",
                "/pod/shop/waypoint-ab/metrics"
            ]
        );
        assert!(groups.iter().all(|g| g.targets == ["127.0.0.1:4000"]));
        let waypoint = &groups[2].labels;
        assert_eq!(waypoint["instance"], "10.244.1.9:15020");
        assert_eq!(waypoint["namespace"], "shop");
        assert_eq!(waypoint["pod"], "waypoint-ab");
        assert_eq!(waypoint["gateway"], "waypoint");
        assert_eq!(groups[1].labels["instance"], "172.30.0.2:15020");
        assert_eq!(groups[0].labels["instance"], "172.30.0.254:15014");
    }

    #[test]
    fn only_metrics_paths_are_served() {
        assert_eq!(
            control_path("/ztunnel/node-1/metrics").as_deref(),
            Some("/ztunnel/node-1/15020/metrics")
        );
        assert_eq!(
            control_path("/pod/shop/waypoint-ab/metrics").as_deref(),
            Some("/pod/shop/waypoint-ab/15020/metrics")
        );
        assert_eq!(
            control_path("/controller/metrics").as_deref(),
            Some("/controller/metrics")
        );
        for refused in [
            "/ztunnel/node-1/config_dump",
            "/ztunnel/node-1/15000/metrics",
            "/ztunnel//metrics",
            "/pod/shop/metrics",
            "/pod/shop/a/b/metrics",
            "/pod/shop/%2e%2e/metrics",
            "/controller/debug",
            "/status",
            "/apply",
        ] {
            assert_eq!(control_path(refused), None, "{refused}");
        }
    }
}
