//! Where the proxies are and how their endpoints are read.
//!
//! - **Local mesh**: the supervisor's control socket: `/status` lists the nodes and the
//!   waypoint pods; `/ztunnel/<node>/15020/metrics`, `/ztunnel/<node>/15000/config_dump`
//!   and `/pod/<ns>/<pod>/15020/metrics` reach them inside the mesh's namespaces.
//! - **Kubernetes**: the API server lists ztunnel pods (`app=ztunnel` in the Istio
//!   namespace) and waypoint pods (label `gateway.networking.k8s.io/gateway-name`), and its
//!   pod proxy (`/api/v1/namespaces/<ns>/pods/<pod>:<port>/proxy/<path>`) reads them.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::task::JoinSet;

use super::graph::{ProxyInfo, ProxyScrape, Round};
use crate::runtime::control;

/// The waypoint pods' label (Istio's deployment controller sets it; so does the local runtime).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// How long one proxy may take to answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

pub enum Source {
    Local {
        socket: PathBuf,
    },
    Kube {
        client: kube::Client,
        istio_namespace: String,
    },
}

/// Where a proxy's endpoints are.
struct Target {
    info: ProxyInfo,
    metrics: String,
    config_dump: Option<String>,
}

impl Source {
    /// `local` or `kubernetes`.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Local { .. } => "local",
            Source::Kube { .. } => "kubernetes",
        }
    }

    /// One round: list the proxies, then read them all at once.
    pub async fn scrape(&self, at: f64) -> Round {
        let now_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let targets = match self.discover().await {
            Ok(t) => t,
            Err(e) => {
                return Round {
                    at,
                    now_unix,
                    proxies: Vec::new(),
                    discovery_error: Some(e),
                };
            }
        };
        let mut set = JoinSet::new();
        for (i, t) in targets.into_iter().enumerate() {
            let fetch = self.fetcher();
            set.spawn(async move {
                let metrics = fetch.get(&t.metrics).await;
                let certificates = match (&metrics, &t.config_dump) {
                    (Ok(_), Some(path)) => Some(fetch.get(path).await.and_then(|body| {
                        let v: Value = serde_json::from_str(&body)
                            .map_err(|e| format!("config_dump: bad JSON: {e}"))?;
                        Ok(v["certificates"].as_array().cloned().unwrap_or_default())
                    })),
                    _ => None,
                };
                (
                    i,
                    ProxyScrape {
                        proxy: t.info,
                        metrics,
                        certificates,
                    },
                )
            });
        }
        let mut proxies = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(p) = r {
                proxies.push(p);
            }
        }
        proxies.sort_by_key(|(i, _)| *i);
        Round {
            at,
            now_unix,
            proxies: proxies.into_iter().map(|(_, p)| p).collect(),
            discovery_error: None,
        }
    }

    fn fetcher(&self) -> Fetcher {
        match self {
            Source::Local { socket } => Fetcher::Local(socket.clone()),
            Source::Kube { client, .. } => Fetcher::Kube(client.clone()),
        }
    }

    async fn discover(&self) -> Result<Vec<Target>, String> {
        match self {
            Source::Local { socket } => {
                let socket = socket.clone();
                let status: Value = tokio::task::spawn_blocking(move || {
                    control::get_json::<Value>(&socket, "/status")
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("the local mesh: {e}"))?;
                Ok(local_targets(&status))
            }
            Source::Kube {
                client,
                istio_namespace,
            } => kube_targets(client, istio_namespace).await,
        }
    }
}

/// The proxies of the local mesh, from its `/status`.
fn local_targets(status: &Value) -> Vec<Target> {
    let mut out = Vec::new();
    for n in status["nodes"].as_array().into_iter().flatten() {
        let Some(node) = n["name"].as_str() else {
            continue;
        };
        out.push(Target {
            info: ProxyInfo::ztunnel(node),
            metrics: format!("/ztunnel/{node}/15020/metrics"),
            config_dump: Some(format!("/ztunnel/{node}/15000/config_dump")),
        });
    }
    for p in status["pods"].as_array().into_iter().flatten() {
        let Some((gw_ns, gw)) = p["waypoint"].as_str().and_then(|w| w.split_once('/')) else {
            continue;
        };
        let (Some(ns), Some(name)) = (p["namespace"].as_str(), p["name"].as_str()) else {
            continue;
        };
        debug_assert_eq!(gw_ns, ns);
        out.push(Target {
            info: ProxyInfo::waypoint(ns, name, gw, p["node"].as_str().map(str::to_string)),
            metrics: format!("/pod/{ns}/{name}/15020/metrics"),
            config_dump: None,
        });
    }
    out
}

fn pod_proxy(ns: &str, pod: &str, port: u16, path: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/{path}")
}

async fn kube_targets(client: &kube::Client, istio_ns: &str) -> Result<Vec<Target>, String> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};
    let list = |api: Api<Pod>, selector: &str| {
        let params = ListParams::default().labels(selector);
        async move { api.list(&params).await }
    };
    let ztunnels = list(Api::namespaced(client.clone(), istio_ns), "app=ztunnel")
        .await
        .map_err(|e| format!("listing ztunnel pods in {istio_ns}: {e}"))?;
    let waypoints = list(Api::all(client.clone()), GATEWAY_NAME_LABEL)
        .await
        .map_err(|e| format!("listing waypoint pods: {e}"))?;
    let mut out = Vec::new();
    for p in &ztunnels.items {
        let name = p.metadata.name.clone().unwrap_or_default();
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| name.clone());
        let mut info = ProxyInfo::ztunnel(&node);
        info.id = format!("ztunnel/{node}");
        info.namespace = Some(istio_ns.to_string());
        info.name = name.clone();
        out.push(Target {
            info,
            metrics: pod_proxy(istio_ns, &name, 15020, "metrics"),
            config_dump: Some(pod_proxy(istio_ns, &name, 15000, "config_dump")),
        });
    }
    for p in &waypoints.items {
        let name = p.metadata.name.clone().unwrap_or_default();
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let gw = p
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(GATEWAY_NAME_LABEL).cloned())
            .unwrap_or_default();
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        out.push(Target {
            info: ProxyInfo::waypoint(&ns, &name, &gw, node),
            metrics: pod_proxy(&ns, &name, 15020, "metrics"),
            config_dump: None,
        });
    }
    Ok(out)
}

#[derive(Clone)]
enum Fetcher {
    Local(PathBuf),
    Kube(kube::Client),
}

impl Fetcher {
    async fn get(&self, path: &str) -> Result<String, String> {
        let fetch = async {
            match self {
                Fetcher::Local(socket) => {
                    let socket = socket.clone();
                    let path = path.to_string();
                    tokio::task::spawn_blocking(move || control::get(&socket, &path))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| match e {
                            control::ControlError::Status { status, body, .. } => {
                                format!("{status}: {body}")
                            }
                            other => other.to_string(),
                        })
                }
                Fetcher::Kube(client) => {
                    let request = hyper::Request::get(path)
                        .body(Vec::new())
                        .map_err(|e| e.to_string())?;
                    client
                        .request_text(request)
                        .await
                        .map_err(|e| e.to_string())
                }
            }
        };
        tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("no answer in {SCRAPE_TIMEOUT:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_targets_are_every_ztunnel_and_every_waypoint_pod() {
        let status = serde_json::json!({
            "nodes": [{"name": "node-1"}, {"name": "node-2"}],
            "pods": [
                {"namespace": "bookinfo", "name": "sleep", "node": "node-2"},
                {"namespace": "bookinfo", "name": "waypoint-x1", "node": "node-1",
                 "waypoint": "bookinfo/waypoint"}
            ]
        });
        let t = local_targets(&status);
        let paths: Vec<(&str, &str)> = t
            .iter()
            .map(|t| (t.info.id.as_str(), t.metrics.as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                ("ztunnel/node-1", "/ztunnel/node-1/15020/metrics"),
                ("ztunnel/node-2", "/ztunnel/node-2/15020/metrics"),
                (
                    "waypoint/bookinfo/waypoint-x1",
                    "/pod/bookinfo/waypoint-x1/15020/metrics"
                ),
            ]
        );
        assert_eq!(
            t[0].config_dump.as_deref(),
            Some("/ztunnel/node-1/15000/config_dump")
        );
        assert_eq!(t[2].info.gateway.as_deref(), Some("bookinfo/waypoint"));
    }

    /// A minimal API server: pod lists by label selector and the pod proxy.
    async fn fake_api_server() -> std::net::SocketAddr {
        use bytes::Bytes;
        use http_body_util::Full;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pod = |ns: &str, name: &str, node: &str, labels: Value| {
            serde_json::json!({"metadata": {"namespace": ns, "name": name, "labels": labels},
                "spec": {"nodeName": node, "containers": []}})
        };
        let ztunnels = serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [pod("istio-system", "ztunnel-abc", "worker-1", serde_json::json!({"app": "ztunnel"}))]});
        let waypoints = serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [pod("shop", "waypoint-7d9f-x", "worker-2",
                serde_json::json!({GATEWAY_NAME_LABEL: "waypoint"}))]});
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (ztunnels, waypoints) = (ztunnels.clone(), waypoints.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let uri = req.uri().to_string();
                        let (status, body) = if uri
                            .starts_with("/api/v1/namespaces/istio-system/pods?")
                            && uri.contains("labelSelector=app%3Dztunnel")
                        {
                            (200, ztunnels.to_string())
                        } else if uri.starts_with("/api/v1/pods?") {
                            (200, waypoints.to_string())
                        } else if uri
                            == "/api/v1/namespaces/istio-system/pods/ztunnel-abc:15020/proxy/metrics"
                        {
                            (
                                200,
                                "istio_tcp_sent_bytes_total{reporter=\"source\"} 5\n".to_string(),
                            )
                        } else {
                            (
                                503,
                                format!(
                                    "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\"message\":\"no endpoint {uri}\",\"reason\":\"ServiceUnavailable\",\"code\":503}}"
                                ),
                            )
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn kubernetes_proxies_are_read_through_the_api_servers_pod_proxy() {
        let addr = fake_api_server().await;
        let mut config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        config.default_retry = false;
        let source = Source::Kube {
            client: kube::Client::try_from(config).unwrap(),
            istio_namespace: "istio-system".into(),
        };
        let round = source.scrape(0.0).await;
        assert_eq!(round.discovery_error, None);
        let ids: Vec<&str> = round.proxies.iter().map(|p| p.proxy.id.as_str()).collect();
        assert_eq!(ids, ["ztunnel/worker-1", "waypoint/shop/waypoint-7d9f-x"]);
        let zt = &round.proxies[0];
        assert!(
            zt.metrics
                .as_ref()
                .unwrap()
                .contains("istio_tcp_sent_bytes_total")
        );
        // ztunnel's admin port listens on loopback only: no certificates, said so.
        assert!(matches!(&zt.certificates, Some(Err(_))), "{zt:?}");
        let wp = &round.proxies[1];
        assert_eq!(wp.proxy.gateway.as_deref(), Some("shop/waypoint"));
        assert!(
            wp.metrics.as_ref().unwrap_err().contains("no endpoint"),
            "{wp:?}"
        );
    }

    #[test]
    fn pod_proxy_paths() {
        assert_eq!(
            pod_proxy("istio-system", "ztunnel-abc", 15020, "metrics"),
            "/api/v1/namespaces/istio-system/pods/ztunnel-abc:15020/proxy/metrics"
        );
    }
}
