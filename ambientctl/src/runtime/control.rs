//! The supervisor's HTTP API on a Unix socket in the mesh's home, for the other
//! `ambientctl` commands (which run outside the mesh's namespaces):
//!
//! - `GET /status`: nodes, pods, services and manifest findings ([`StatusReport`]);
//! - `GET /ztunnel/<node>/<port>/<path>`: a GET on that node's ztunnel (admin 15000,
//!   metrics 15020, readiness 15021);
//! - `GET /controller/<path>`: a GET on the controller's monitoring port (15014);
//! - `GET /pod/<namespace>/<name>/<port>/<path>`: a GET on a pod's port, made from its
//!   node's network namespace (how `dashboard` reads waypoints' metrics, `:15020/metrics`);
//! - `POST /apply` ([`ApplyRequest`]): adds objects to the mesh (kept in the run directory,
//!   published to the controller with the runtime's own objects) and label overlays;
//! - `POST /delete` ([`DeleteRequest`]): removes objects added with `/apply`.
//!
//! Errors are plain text with a status: 400 bad request, 409 conflict with the manifest
//! directory.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use ztunnel::inpod::netns::Netns;

use ambient_lab::http;

/// A node as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub name: String,
    pub ip: String,
    pub pod_cidr: String,
    pub ztunnel_ready: bool,
}

/// `GET /status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub manifests: String,
    pub phase: String,
    pub nodes: Vec<NodeReport>,
    pub pods: Vec<serde_json::Value>,
    /// `namespace/name` → cluster IP.
    pub services: BTreeMap<String, String>,
    /// Problems in the manifest directory (file:line:column: reason).
    pub diagnostics: Vec<String>,
}

/// `POST /apply`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// Kubernetes objects (kinds the controller reads).
    #[serde(default)]
    pub objects: Vec<serde_json::Value>,
    /// `Kind/namespace/name` → label → value (`null` removes the label).
    #[serde(default)]
    pub labels: BTreeMap<String, BTreeMap<String, Option<String>>>,
}

/// What `/apply` did to one object.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied {
    /// `Kind/namespace/name`.
    pub object: String,
    /// `created`, `configured` or `unchanged`.
    pub action: String,
    /// The manifest that already defines it, identically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// `POST /apply`'s answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApplyResult {
    pub objects: Vec<Applied>,
    /// The objects whose labels were set.
    pub labels: Vec<String>,
}

/// `POST /delete`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub kind: String,
    pub namespace: String,
    #[serde(default)]
    pub names: Vec<String>,
    /// Every waypoint Gateway of the namespace (with `kind: Gateway`).
    #[serde(default)]
    pub all_waypoints: bool,
    /// Remove this label overlay from the namespace when its value names a deleted object.
    #[serde(default)]
    pub namespace_label: Option<String>,
}

/// An object `/delete` would not remove: a manifest defines it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Refused {
    pub object: String,
    pub file: String,
}

/// `POST /delete`'s answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeleteResult {
    pub deleted: Vec<String>,
    pub refused: Vec<Refused>,
    pub missing: Vec<String>,
    /// Namespaces whose label was removed.
    pub unlabeled: Vec<String>,
}

/// A refused API request.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError {
            status: 409,
            message: message.into(),
        }
    }
}

/// What the API reads and changes: a fresh status on demand, and the mesh's added objects.
pub trait StatusSource: Send + Sync + 'static {
    fn status(&self) -> impl std::future::Future<Output = StatusReport> + Send;
    fn apply(
        &self,
        request: ApplyRequest,
    ) -> impl std::future::Future<Output = Result<ApplyResult, ApiError>> + Send;
    fn delete(
        &self,
        request: DeleteRequest,
    ) -> impl std::future::Future<Output = Result<DeleteResult, ApiError>> + Send;
}

/// The largest request body accepted.
const MAX_BODY: usize = 1 << 20;

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    use http_body_util::BodyExt;
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad JSON: {e}")))
}

fn answer<T: Serialize>(result: Result<T, ApiError>) -> Response<Full<Bytes>> {
    match result {
        Ok(v) => reply(
            StatusCode::OK,
            serde_json::to_vec(&v).expect("plain data"),
            true,
        ),
        Err(e) => reply(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.message + "\n",
            false,
        ),
    }
}

/// Where to reach the mesh's processes.
#[derive(Clone)]
pub struct Endpoints {
    pub underlay: Arc<Netns>,
    pub controller_monitoring: SocketAddr,
    pub nodes: BTreeMap<String, Arc<Netns>>,
}

const ZTUNNEL_PORTS: [u16; 3] = [15000, 15020, 15021];

fn reply(status: StatusCode, body: impl Into<Bytes>, json: bool) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(
            "content-type",
            if json {
                "application/json"
            } else {
                "text/plain"
            },
        )
        .body(Full::new(body.into()))
        .expect("valid response")
}

async fn forward(netns: &Netns, addr: SocketAddr, path: &str) -> Response<Full<Bytes>> {
    match http::get(netns, addr, path).await {
        Ok((code, body)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            let json = body.trim_start().starts_with(['{', '[']);
            reply(status, body, json)
        }
        Err(e) => reply(
            StatusCode::BAD_GATEWAY,
            format!("{addr} unreachable: {e}\n"),
            false,
        ),
    }
}

async fn route<S: StatusSource>(
    req: Request<Incoming>,
    source: Arc<S>,
    endpoints: Endpoints,
) -> Response<Full<Bytes>> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if req.method() == hyper::Method::POST {
        return match path.as_str() {
            "/apply" => match read_json(req).await {
                Ok(r) => answer(source.apply(r).await),
                Err(e) => answer::<()>(Err(e)),
            },
            "/delete" => match read_json(req).await {
                Ok(r) => answer(source.delete(r).await),
                Err(e) => answer::<()>(Err(e)),
            },
            _ => reply(
                StatusCode::NOT_FOUND,
                format!("no route POST {path}\n"),
                false,
            ),
        };
    }
    if req.method() != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only\n", false);
    }
    get_path(&path, source.as_ref(), &endpoints).await
}

/// The answer to `GET path` (status, or a proxy's port reached inside the mesh); also what
/// the scrape port ([`super::scrape_port`]) serves its few paths with.
pub async fn get_path<S: StatusSource>(
    path: &str,
    source: &S,
    endpoints: &Endpoints,
) -> Response<Full<Bytes>> {
    if path == "/status" {
        let body = serde_json::to_vec(&source.status().await).expect("plain data");
        return reply(StatusCode::OK, body, true);
    }
    if let Some(rest) = path.strip_prefix("/controller") {
        let rest = if rest.is_empty() { "/" } else { rest };
        return forward(&endpoints.underlay, endpoints.controller_monitoring, rest).await;
    }
    if let Some(rest) = path.strip_prefix("/pod/") {
        return pod_get(rest, source, endpoints).await;
    }
    if let Some(rest) = path.strip_prefix("/ztunnel/") {
        let mut parts = rest.splitn(3, '/');
        let node = parts.next().unwrap_or_default();
        let port: Option<u16> = parts.next().and_then(|p| p.parse().ok());
        let tail = format!("/{}", parts.next().unwrap_or_default());
        let Some(netns) = endpoints.nodes.get(node) else {
            return reply(StatusCode::NOT_FOUND, format!("no node {node:?}\n"), false);
        };
        let Some(port) = port.filter(|p| ZTUNNEL_PORTS.contains(p)) else {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("port must be one of {ZTUNNEL_PORTS:?}\n"),
                false,
            );
        };
        return forward(netns, SocketAddr::from(([127, 0, 0, 1], port)), &tail).await;
    }
    reply(StatusCode::NOT_FOUND, format!("no route {path}\n"), false)
}

/// `GET /pod/<namespace>/<name>/<port>/<path>`: the pod's address and node come from the
/// current status; the request is made from the node's network namespace, which reaches its
/// pods over the node's bridge (a pod outside the mesh is not captured, so this is a plain
/// connection to its port).
async fn pod_get<S: StatusSource>(
    rest: &str,
    source: &S,
    endpoints: &Endpoints,
) -> Response<Full<Bytes>> {
    let mut parts = rest.splitn(4, '/');
    let (Some(ns), Some(name), Some(port)) = (parts.next(), parts.next(), parts.next()) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "expected /pod/<namespace>/<name>/<port>/<path>\n",
            false,
        );
    };
    let Ok(port) = port.parse::<u16>() else {
        return reply(
            StatusCode::BAD_REQUEST,
            format!("bad port {port:?}\n"),
            false,
        );
    };
    let tail = format!("/{}", parts.next().unwrap_or_default());
    let status = source.status().await;
    let Some(pod) = status
        .pods
        .iter()
        .find(|p| p["namespace"] == ns && p["name"] == name)
    else {
        return reply(
            StatusCode::NOT_FOUND,
            format!("no pod {ns}/{name}\n"),
            false,
        );
    };
    let ip = pod["ip"]
        .as_str()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
    let netns = pod["node"].as_str().and_then(|n| endpoints.nodes.get(n));
    match (ip, netns) {
        (Some(ip), Some(netns)) => forward(netns, SocketAddr::new(ip, port), &tail).await,
        _ => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("pod {ns}/{name} has no address or node yet\n"),
            false,
        ),
    }
}

/// Serves the API on `socket` until the task is dropped.
pub async fn serve<S: StatusSource>(listener: UnixListener, source: Arc<S>, endpoints: Endpoints) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let source = source.clone();
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let source = source.clone();
                let endpoints = endpoints.clone();
                async move { Ok::<_, Infallible>(route(req, source, endpoints).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the mesh's control socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the mesh: {0}")]
    Io(#[from] std::io::Error),
    #[error("{method} {path}: {status} {body}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    #[error("GET {path}: bad JSON: {reason}")]
    Json { path: String, reason: String },
}

/// A blocking `GET path` on the control socket; the body when the status is 200.
pub fn get(socket: &Path, path: &str) -> Result<String, ControlError> {
    request(socket, "GET", path, None)
}

/// A blocking `POST path` of `body` as JSON, its answer parsed as JSON. A refusal is
/// [`ControlError::Status`] with the server's message as `body`.
pub fn post_json<T: serde::de::DeserializeOwned>(
    socket: &Path,
    path: &str,
    body: &impl Serialize,
) -> Result<T, ControlError> {
    let body = serde_json::to_vec(body).expect("plain data");
    let text = request(socket, "POST", path, Some(&body))?;
    serde_json::from_str(&text).map_err(|e| ControlError::Json {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

fn request(
    socket: &Path,
    method: &'static str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<String, ControlError> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|source| {
        ControlError::Connect {
            path: socket.display().to_string(),
            source,
        }
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: ambient\r\n");
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut raw_request = head.into_bytes();
    raw_request.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&raw_request)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 200 {
        return Err(ControlError::Status {
            method,
            path: path.to_string(),
            status,
            body: body.trim().to_string(),
        });
    }
    Ok(body.to_string())
}

/// [`get`], parsed as JSON.
pub fn get_json<T: serde::de::DeserializeOwned>(
    socket: &Path,
    path: &str,
) -> Result<T, ControlError> {
    let body = get(socket, path)?;
    serde_json::from_str(&body).map_err(|e| ControlError::Json {
        path: path.to_string(),
        reason: e.to_string(),
    })
}
