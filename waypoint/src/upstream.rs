//! Connections to endpoints: HBONE to the endpoint's ztunnel (pooled per destination
//! identity and address, as ztunnel pools them), and HTTP connections riding on those
//! tunnels (HTTP/1.1 kept alive and reused, HTTP/2 multiplexed on one connection).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use ambient_proto::hbone::pool::StreamGuard;
use ambient_proto::hbone::{
    ConnectRequest, H2Stream, HBONE_PORT, HboneConnection, HboneError, Pool, PoolSettings,
};
use ambient_proto::identity::Identity;
use ambient_proto::tls;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_core::state::Workload;
use tracing::debug;

use crate::context::Ctx;
use crate::stream::StreamIo;

/// Request and response bodies as the proxy passes them on.
pub type Body = BoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// HBONE pool key: (our identity, the destination's identity, its HBONE address).
pub type PoolKey = (Identity, Identity, SocketAddr);

/// HTTP/1 connections kept per endpoint; more are closed when their exchange ends.
const MAX_IDLE_HTTP1: usize = 256;

/// One endpoint of a service: the workload and the address its app listens on.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub addr: SocketAddr,
}

/// How a request was sent upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

/// Why an upstream exchange failed (the response flag tells which).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No tunnel to the endpoint (`UF`).
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: SocketAddr,
        source: HboneError,
    },
    /// The HTTP exchange broke (`UC` / reset).
    #[error("HTTP exchange with {endpoint}: {source}")]
    Exchange {
        endpoint: SocketAddr,
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// Envoy's response flag for this failure.
    pub fn response_flag(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "UF",
            UpstreamError::Exchange { .. } => "UC",
        }
    }
}

/// The request context carried on the CONNECT.
#[derive(Clone, Debug, Default)]
pub struct TunnelContext {
    pub client_ip: Option<IpAddr>,
    pub traceparent: Option<String>,
}

/// HBONE and HTTP connections to endpoints.
pub struct Upstreams {
    pool: Pool<PoolKey>,
    http1: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<Body>>>>,
    http2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

impl Upstreams {
    pub fn new(settings: PoolSettings) -> Self {
        Upstreams {
            pool: Pool::new(settings),
            http1: Mutex::new(HashMap::new()),
            http2: Mutex::new(HashMap::new()),
        }
    }

    /// A CONNECT stream to `endpoint` through its ztunnel.
    pub async fn tunnel(
        &self,
        ctx: &Ctx,
        endpoint: &Endpoint,
        tunnel: &TunnelContext,
    ) -> Result<(H2Stream, StreamGuard), UpstreamError> {
        let hbone_addr = SocketAddr::new(endpoint.addr.ip(), HBONE_PORT);
        let expected = endpoint.workload.identity.clone();
        let key = (ctx.identity.clone(), expected.clone(), hbone_addr);
        let request = ConnectRequest {
            authority: endpoint.addr,
            forwarded_for: tunnel.client_ip,
            baggage: None,
            traceparent: tunnel.traceparent.clone(),
        };
        self.pool
            .stream(&key, &request, || dial(ctx, hbone_addr, expected))
            .await
            .map(|s| s.into_parts())
            .map_err(|source| UpstreamError::Connect {
                endpoint: endpoint.addr,
                source,
            })
    }

    /// Sends `req` to `endpoint`, reusing an HTTP connection when one is free.
    pub async fn send(
        &self,
        ctx: &Ctx,
        endpoint: &Endpoint,
        version: HttpVersion,
        req: http::Request<Body>,
        tunnel: &TunnelContext,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let exchange = |source| UpstreamError::Exchange {
            endpoint: endpoint.addr,
            source,
        };
        match version {
            HttpVersion::Http1 => {
                let mut sender = match self.idle_http1(endpoint.addr) {
                    Some(s) => s,
                    None => {
                        let (stream, guard) = self.tunnel(ctx, endpoint, tunnel).await?;
                        let (sender, conn) = http1::handshake(TokioIo::new(StreamIo::new(stream)))
                            .await
                            .map_err(exchange)?;
                        tokio::spawn(async move {
                            let _guard = guard;
                            if let Err(e) = conn.await {
                                debug!(error = %e, "upstream HTTP/1 connection ended");
                            }
                        });
                        sender
                    }
                };
                let response = sender.send_request(req).await.map_err(exchange);
                // Reusable once this exchange's body is done; `idle_http1` checks readiness.
                self.return_http1(endpoint.addr, sender);
                response
            }
            HttpVersion::Http2 => {
                let mut sender = match self.live_http2(endpoint.addr) {
                    Some(s) => s,
                    None => {
                        let (stream, guard) = self.tunnel(ctx, endpoint, tunnel).await?;
                        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                            .initial_stream_window_size(1024 * 1024)
                            .initial_connection_window_size(4 * 1024 * 1024)
                            .handshake(TokioIo::new(StreamIo::new(stream)))
                            .await
                            .map_err(exchange)?;
                        tokio::spawn(async move {
                            let _guard = guard;
                            if let Err(e) = conn.await {
                                debug!(error = %e, "upstream HTTP/2 connection ended");
                            }
                        });
                        self.http2
                            .lock()
                            .expect("poisoned")
                            .insert(endpoint.addr, sender.clone());
                        sender
                    }
                };
                sender.send_request(req).await.map_err(exchange)
            }
        }
    }

    fn idle_http1(&self, addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut all = self.http1.lock().expect("poisoned");
        let list = all.get_mut(&addr)?;
        list.retain(|s| !s.is_closed());
        let ready = list.iter().position(|s| s.is_ready())?;
        Some(list.swap_remove(ready))
    }

    fn return_http1(&self, addr: SocketAddr, sender: http1::SendRequest<Body>) {
        let mut all = self.http1.lock().expect("poisoned");
        let list = all.entry(addr).or_default();
        if list.len() < MAX_IDLE_HTTP1 && !sender.is_closed() {
            list.push(sender);
        }
    }

    fn live_http2(&self, addr: SocketAddr) -> Option<http2::SendRequest<Body>> {
        let mut all = self.http2.lock().expect("poisoned");
        match all.get(&addr) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                all.remove(&addr);
                None
            }
            None => None,
        }
    }

    /// Forgets HTTP connections to endpoints that are gone.
    pub fn retain_endpoints(&self, live: impl Fn(&SocketAddr) -> bool) {
        self.http1.lock().expect("poisoned").retain(|a, _| live(a));
        self.http2.lock().expect("poisoned").retain(|a, _| live(a));
    }
}

/// A new HBONE connection as the waypoint's identity, expecting `expected` on the other end.
async fn dial(
    ctx: &Ctx,
    addr: SocketAddr,
    expected: Identity,
) -> Result<HboneConnection, HboneError> {
    let cert = ctx
        .certs
        .get(&ctx.identity, ctx.cert_wait)
        .await
        .map_err(|e| HboneError::NoCertificate(e.to_string()))?;
    let config = tls::client_config(&cert, &ctx.bundle, vec![expected])?;
    let tcp = tokio::time::timeout(ctx.connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| HboneError::Timeout(ctx.connect_timeout))?
        .map_err(|source| HboneError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    HboneConnection::handshake(tcp, addr, Arc::new(config), &ctx.h2).await
}
