//! The HTTP/1.1 server every role runs: accepts connections, answers `/health`, hands other
//! GET requests to the role and writes an access log line per request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, SERVER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

use crate::access_log::{self, OutboundCall};
use crate::model::ErrorResponse;
use crate::pod::PodInfo;

/// Headers passed on to the services a request leads to, so traces and request ids follow
/// the call graph.
const PROPAGATED: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "baggage",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "end-user",
];

/// The response header naming the pod that answered.
pub const POD_HEADER: &str = "x-demo-pod";

/// Failures to start serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the listening address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// A request, as a role sees it.
#[derive(Debug)]
pub struct RoleRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
}

impl RoleRequest {
    /// The request's tracing headers, to send along on outbound calls.
    pub fn propagated_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        PROPAGATED
            .iter()
            .filter_map(|name| {
                let value = self.headers.get(*name)?;
                Some((HeaderName::from_static(name), value.clone()))
            })
            .collect()
    }
}

/// A role's answer, and the calls it made to produce it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
    pub outbound: Vec<OutboundCall>,
}

impl Reply {
    /// A JSON body (with a trailing newline, for terminals).
    pub fn json(status: StatusCode, value: &impl Serialize) -> Self {
        let mut body = serde_json::to_vec(value).unwrap_or_else(|e| {
            format!("{{\"error\":\"cannot encode the response: {e}\"}}").into_bytes()
        });
        body.push(b'\n');
        Self {
            status,
            content_type: "application/json",
            body: body.into(),
            outbound: Vec::new(),
        }
    }

    /// A JSON `{"error": ..., "pod": ...}`.
    pub fn error(status: StatusCode, pod: &PodInfo, message: impl Into<String>) -> Self {
        Self::json(
            status,
            &ErrorResponse {
                error: message.into(),
                pod: pod.name.clone(),
            },
        )
    }

    /// An HTML body.
    pub fn html(status: StatusCode, body: String) -> Self {
        Self {
            status,
            content_type: "text/html; charset=utf-8",
            body: body.into(),
            outbound: Vec::new(),
        }
    }

    /// Adds the calls made while producing this reply.
    pub fn with_outbound(mut self, calls: Vec<OutboundCall>) -> Self {
        self.outbound = calls;
        self
    }
}

/// What a server role does with the GET requests that are not `/health`.
pub trait Role: Send + Sync + 'static {
    /// The role's name, as in the access log.
    fn name(&self) -> &'static str;
    /// The replica running the role.
    fn pod(&self) -> &PodInfo;
    /// Answers one request.
    fn handle(&self, request: RoleRequest) -> impl Future<Output = Reply> + Send;
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(Error::LocalAddr)?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listener, for servers that are not a [`Role`] (such as `echo`).
    pub fn into_listener(self) -> TcpListener {
        self.listener
    }

    /// Serves `role` until the task is dropped.
    pub async fn run<R: Role>(self, role: Arc<R>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_connection(stream, peer, Arc::clone(&role)));
                }
                Err(e) => {
                    // Out of descriptors and the like: say so and retry shortly.
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn serve_connection<R: Role>(stream: TcpStream, peer: SocketAddr, role: Arc<R>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let role = Arc::clone(&role);
        async move { Ok::<_, Infallible>(respond(role.as_ref(), request, peer).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        // Clients that go away mid-request are routine; note them without failing anything.
        if !e.is_incomplete_message() {
            eprintln!("connection from {peer}: {e}");
        }
    }
}

async fn respond<R: Role>(
    role: &R,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let at = SystemTime::now();
    let (head, _body) = request.into_parts();
    let path = head.uri.path().to_owned();
    let method = head.method;

    let reply = if method != Method::GET && method != Method::HEAD {
        Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            role.pod(),
            format!("method {method} is not allowed"),
        )
    } else if path == "/health" {
        Reply::json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "pod": role.pod().name}),
        )
    } else {
        role.handle(RoleRequest {
            method: method.clone(),
            path: path.clone(),
            headers: head.headers,
        })
        .await
    };

    access_log::write(&access_log::Entry {
        at,
        role: role.name(),
        pod: &role.pod().name,
        method: &method,
        path: &path,
        status: reply.status,
        duration: started.elapsed(),
        peer,
        outbound: &reply.outbound,
    });

    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    headers.insert(SERVER, HeaderValue::from_static("demo-app"));
    if let Ok(pod) = HeaderValue::from_str(&role.pod().name) {
        headers.insert(POD_HEADER, pod);
    }
    if reply.status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}
