//! The supervisor's HTTP API on a Unix socket in the mesh's home, for the other
//! `ambientctl` commands (which run outside the mesh's namespaces):
//!
//! - `GET /status`: nodes, pods, services and manifest findings ([`StatusReport`]);
//! - `GET /ztunnel/<node>/<port>/<path>`: a GET on that node's ztunnel (admin 15000,
//!   metrics 15020, readiness 15021);
//! - `GET /controller/<path>`: a GET on the controller's monitoring port (15014).

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

use crate::lab::http;

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
    /// Problems in the manifest directory (file:line: reason).
    pub diagnostics: Vec<String>,
}

/// What the API reads: a fresh status on demand, and where the proxies are.
pub trait StatusSource: Send + Sync + 'static {
    fn status(&self) -> impl std::future::Future<Output = StatusReport> + Send;
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
    if req.method() != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", false);
    }
    if path == "/status" {
        let body = serde_json::to_vec(&source.status().await).expect("plain data");
        return reply(StatusCode::OK, body, true);
    }
    if let Some(rest) = path.strip_prefix("/controller") {
        let rest = if rest.is_empty() { "/" } else { rest };
        return forward(&endpoints.underlay, endpoints.controller_monitoring, rest).await;
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
    #[error("GET {path}: {status} {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
    #[error("GET {path}: bad JSON: {reason}")]
    Json { path: String, reason: String },
}

/// A blocking `GET path` on the control socket; the body when the status is 200.
pub fn get(socket: &Path, path: &str) -> Result<String, ControlError> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|source| {
        ControlError::Connect {
            path: socket.display().to_string(),
            source,
        }
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: ambient\r\n\r\n").as_bytes())?;
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
