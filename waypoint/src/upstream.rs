//! Connections to endpoints: HBONE to the endpoint's ztunnel (pooled per destination
//! identity and address, as ztunnel pools them), or, for endpoints outside the mesh, plain
//! TCP or originated TLS ([`crate::egress`]); and HTTP connections riding on those (HTTP/1.1 kept alive and reused, HTTP/2 multiplexed on one connection), pooled
//! per service so that its `DestinationRule` `connectionPool` applies: at most
//! `maxConnections` (past it a request waits, counted against `http1MaxPendingRequests`:
//! overflow is 503 `UO`), `maxRequestsPerConnection` exchanges each, closed after
//! `idleTimeout` unused, opened within `connectTimeout`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambient_proto::hbone::pool::StreamGuard;
use ambient_proto::hbone::{
    ConnectRequest, H2Stream, HBONE_PORT, HboneConnection, HboneError, Pool,
    PoolSettings as HbonePoolSettings,
};
use ambient_proto::identity::Identity;
use ambient_proto::tls;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_core::named_endpoint::NamedEndpoints;
use proxy_core::state::{Protocol, Workload};
use tokio::sync::futures::Notified;
use tracing::debug;

use crate::context::Ctx;
use crate::egress::{self, Alpn, DirectError, Origination, UpstreamIo};
use crate::l7::limits::{ConnectionLimits, ConnectionPermit, PendingPermit, PoolSettings};
use crate::stream::StreamIo;
use crate::workers::{self, PerWorker};

/// Request and response bodies as the proxy passes them on.
pub type Body = BoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// HBONE pool key: (our identity, the destination's identity, its HBONE address).
pub type PoolKey = (Identity, Identity, SocketAddr);

/// HTTP/1 connections kept per endpoint; more are closed when their exchange ends.
const MAX_IDLE_HTTP1: usize = 256;
/// How often a request waiting for a connection of a full pool looks again, besides being
/// woken when one comes back (a connection returned before its response body ended becomes
/// usable later, silently).
const POOL_RECHECK: Duration = Duration::from_millis(20);

/// HTTP connections are pooled per service (its limits' pool id; 0 for workload-addressed
/// traffic), endpoint and TLS origination settings (their id; 0 for none), so that a
/// connection is never reused under settings other than those it was opened with.
type HttpKey = (u64, SocketAddr, u64);

/// An HTTP/1 connection in the pool.
struct Http1 {
    sender: http1::SendRequest<Body>,
    /// Exchanges it carried.
    served: u32,
    /// When it came back from its last exchange.
    since: Instant,
    idle_timeout: Duration,
    /// The worker thread whose runtime drives it (see [`Upstreams::idle_http1`]).
    worker: usize,
}

/// A service's HTTP/2 connection to an endpoint.
struct Http2 {
    sender: http2::SendRequest<Body>,
    /// Requests sent on it.
    served: u32,
    last_used: Instant,
    idle_timeout: Duration,
}

/// One endpoint of a service: the workload and the address its app listens on (for an
/// endpoint known by name, the unspecified address until [`Upstreams::resolve`]).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub addr: SocketAddr,
    /// TLS to originate (endpoints outside the mesh only).
    pub origination: Option<Origination>,
}

impl Endpoint {
    /// An endpoint at `addr`, without TLS origination.
    pub fn new(workload: Arc<Workload>, addr: SocketAddr) -> Self {
        Endpoint {
            workload,
            addr,
            origination: None,
        }
    }

    /// Whether it is reached through an HBONE tunnel (a mesh workload).
    pub fn in_mesh(&self) -> bool {
        self.workload.protocol == Protocol::Hbone
    }
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
    /// The service's connections are all in use and too many requests wait already (`UO`).
    #[error("connection pool overflow (max_connections and max_pending_requests reached)")]
    Overflow,
    /// No tunnel to the endpoint (`UF`).
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: SocketAddr,
        source: HboneError,
    },
    /// No connection to an endpoint outside the mesh, or no TLS with it (`UF`).
    #[error("connecting to {endpoint}: {source}")]
    Direct {
        endpoint: SocketAddr,
        source: DirectError,
    },
    /// An endpoint known by name has no address (`DF`, Envoy's DNS resolution failure).
    #[error("resolving {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
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
            UpstreamError::Overflow => "UO",
            UpstreamError::Connect { .. } | UpstreamError::Direct { .. } => "UF",
            UpstreamError::Resolve { .. } => "DF",
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

/// HBONE and HTTP connections to endpoints, as one worker thread sees them.
pub struct Upstreams {
    /// HBONE tunnels: this worker's own.
    pool: Pool<PoolKey>,
    /// Endpoints known by name, resolved when picked.
    named: NamedEndpoints,
    /// HTTP connections: shared by every worker, because a service's `maxConnections` spans
    /// them, so a connection idle on one worker must be able to serve a request waiting on
    /// another (each worker still takes its own first).
    http1: SharedHttp1,
    http2: SharedHttp2,
}

type SharedHttp1 = Arc<Mutex<HashMap<HttpKey, Vec<Http1>>>>;
type SharedHttp2 = Arc<Mutex<HashMap<HttpKey, Http2>>>;

impl Upstreams {
    /// A set with HTTP pools of its own (tests).
    #[cfg(test)]
    pub fn new(settings: HbonePoolSettings) -> Self {
        Upstreams::with_http_pools(settings, Arc::default(), Arc::default())
    }

    /// A set for each of `workers` workers: its own HBONE pool and name cache, the same HTTP
    /// pools for all.
    pub fn per_worker(workers: usize, settings: HbonePoolSettings) -> PerWorker<Upstreams> {
        let http1 = Arc::default();
        let http2 = Arc::default();
        PerWorker::new(workers, |_| {
            Upstreams::with_http_pools(settings, Arc::clone(&http1), Arc::clone(&http2))
        })
    }

    fn with_http_pools(
        settings: HbonePoolSettings,
        http1: SharedHttp1,
        http2: SharedHttp2,
    ) -> Self {
        Upstreams {
            pool: Pool::new(settings),
            named: NamedEndpoints::default(),
            http1,
            http2,
        }
    }

    /// Gives an endpoint known by name the address it has now (the first the system resolver
    /// answers, kept for a while: see [`NamedEndpoints`]).
    pub async fn resolve(&self, endpoint: &mut Endpoint) -> Result<(), UpstreamError> {
        let Some(host) = endpoint.workload.hostname.as_deref() else {
            return Ok(());
        };
        let addrs = self
            .named
            .resolve(host, endpoint.addr.port())
            .await
            .map_err(|source| UpstreamError::Resolve {
                host: host.to_string(),
                source,
            })?;
        endpoint.addr = addrs[0];
        Ok(())
    }

    /// A connection to `endpoint` (new ones are given `connect_timeout`): a CONNECT stream
    /// through its ztunnel, holding the tunnel's guard, or a direct one outside the mesh
    /// (TLS spoken as `alpn` says when it is originated).
    pub async fn connect(
        &self,
        ctx: &Ctx,
        endpoint: &Endpoint,
        tunnel: &TunnelContext,
        connect_timeout: Duration,
        alpn: Alpn,
    ) -> Result<(UpstreamIo, Option<StreamGuard>), UpstreamError> {
        if endpoint.in_mesh() {
            let (stream, guard) = self.tunnel(ctx, endpoint, tunnel, connect_timeout).await?;
            return Ok((UpstreamIo::Tunnel(StreamIo::new(stream)), Some(guard)));
        }
        let io = egress::connect(
            endpoint.addr,
            connect_timeout,
            endpoint.origination.as_ref(),
            alpn,
        )
        .await
        .map_err(|source| UpstreamError::Direct {
            endpoint: endpoint.addr,
            source,
        })?;
        Ok((io, None))
    }

    /// A CONNECT stream to `endpoint` through its ztunnel (a new HBONE connection is given
    /// `connect_timeout`).
    async fn tunnel(
        &self,
        ctx: &Ctx,
        endpoint: &Endpoint,
        tunnel: &TunnelContext,
        connect_timeout: Duration,
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
            .stream(&key, &request, || {
                dial(ctx, hbone_addr, expected, connect_timeout)
            })
            .await
            .map(|s| s.into_parts())
            .map_err(|source| UpstreamError::Connect {
                endpoint: endpoint.addr,
                source,
            })
    }

    /// Sends `req` to `endpoint` on a connection of the service whose `limits` apply (none:
    /// workload-addressed traffic, unlimited), reusing one when it is free.
    pub async fn send(
        &self,
        ctx: &Ctx,
        endpoint: &Endpoint,
        version: HttpVersion,
        req: http::Request<Body>,
        tunnel: &TunnelContext,
        limits: Option<&ConnectionLimits>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let key = (
            limits.map_or(0, ConnectionLimits::pool_id),
            endpoint.addr,
            endpoint.origination.as_ref().map_or(0, Origination::id),
        );
        let settings = limits.map_or_else(|| PoolSettings::new(None), |l| *l.pool());
        match version {
            HttpVersion::Http1 => {
                let (mut sender, served, worker) = self
                    .http1_connection(ctx, endpoint, tunnel, key, &settings, limits)
                    .await?;
                let response =
                    sender
                        .send_request(req)
                        .await
                        .map_err(|source| UpstreamError::Exchange {
                            endpoint: endpoint.addr,
                            source,
                        });
                let served = served + 1;
                // maxRequestsPerConnection: dropping the sender closes the connection once
                // this exchange's body is done.
                let spent = settings
                    .max_requests_per_connection
                    .is_some_and(|max| served >= max.get());
                if !spent {
                    // Reusable once this exchange's body is done; `idle_http1` checks readiness.
                    self.return_http1(
                        key,
                        Http1 {
                            sender,
                            served,
                            since: Instant::now(),
                            idle_timeout: settings.idle_timeout,
                            worker,
                        },
                    );
                    if let Some(l) = limits {
                        l.connection_returned();
                    }
                }
                response
            }
            HttpVersion::Http2 => {
                let mut sender = self
                    .http2_connection(ctx, endpoint, tunnel, key, &settings, limits)
                    .await?;
                sender
                    .send_request(req)
                    .await
                    .map_err(|source| UpstreamError::Exchange {
                        endpoint: endpoint.addr,
                        source,
                    })
            }
        }
    }

    /// An HTTP/1 connection for one exchange and the exchanges it carried before: a free one
    /// of the pool, else a new one if `maxConnections` allows, else the next to come free
    /// (waiting counted against `maxPendingRequests`).
    async fn http1_connection(
        &self,
        ctx: &Ctx,
        endpoint: &Endpoint,
        tunnel: &TunnelContext,
        key: HttpKey,
        settings: &PoolSettings,
        limits: Option<&ConnectionLimits>,
    ) -> Result<(http1::SendRequest<Body>, u32, usize), UpstreamError> {
        let mut waiting = None;
        loop {
            let released = limits.map(ConnectionLimits::released);
            tokio::pin!(released);
            if let Some(r) = released.as_mut().as_pin_mut() {
                r.enable();
            }
            if let Some(idle) = self.idle_http1(key, Instant::now(), true) {
                return Ok((idle.sender, idle.served, idle.worker));
            }
            match slot(limits, &mut waiting)? {
                Slot::Open(permit) => {
                    let sender = self
                        .open_http1(ctx, endpoint, tunnel, settings, permit)
                        .await?;
                    return Ok((sender, 0, workers::current()));
                }
                Slot::Full => {
                    // A connection of the pool still finishing its exchange: take it and wait
                    // for it to be free.
                    if let Some(mut busy) = self.idle_http1(key, Instant::now(), false)
                        && busy.sender.ready().await.is_ok()
                    {
                        return Ok((busy.sender, busy.served, busy.worker));
                    }
                    until_released(released.as_mut().as_pin_mut()).await;
                }
            }
        }
    }

    async fn open_http1(
        &self,
        ctx: &Ctx,
        endpoint: &Endpoint,
        tunnel: &TunnelContext,
        settings: &PoolSettings,
        permit: Option<ConnectionPermit>,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let (stream, guard) = self
            .connect(ctx, endpoint, tunnel, settings.connect_timeout, Alpn::Http1)
            .await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Exchange {
                endpoint: endpoint.addr,
                source,
            })?;
        drive(conn, permit, guard, "HTTP/1");
        Ok(sender)
    }

    /// The service's HTTP/2 connection to the endpoint, opened if there is none (or the last
    /// one carried `maxRequestsPerConnection` requests) and `maxConnections` allows, else
    /// after waiting for one to close.
    async fn http2_connection(
        &self,
        ctx: &Ctx,
        endpoint: &Endpoint,
        tunnel: &TunnelContext,
        key: HttpKey,
        settings: &PoolSettings,
        limits: Option<&ConnectionLimits>,
    ) -> Result<http2::SendRequest<Body>, UpstreamError> {
        let mut waiting = None;
        loop {
            let released = limits.map(ConnectionLimits::released);
            tokio::pin!(released);
            if let Some(r) = released.as_mut().as_pin_mut() {
                r.enable();
            }
            if let Some(sender) = self.live_http2(key, settings) {
                return Ok(sender);
            }
            let permit = match slot(limits, &mut waiting)? {
                Slot::Open(permit) => permit,
                Slot::Full => {
                    until_released(released.as_mut().as_pin_mut()).await;
                    continue;
                }
            };
            let (stream, guard) = self
                .connect(ctx, endpoint, tunnel, settings.connect_timeout, Alpn::Http2)
                .await?;
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(1024 * 1024)
                .initial_connection_window_size(4 * 1024 * 1024)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|source| UpstreamError::Exchange {
                    endpoint: endpoint.addr,
                    source,
                })?;
            drive(conn, permit, guard, "HTTP/2");
            self.http2.lock().expect("poisoned").insert(
                key,
                Http2 {
                    sender: sender.clone(),
                    served: 1,
                    last_used: Instant::now(),
                    idle_timeout: settings.idle_timeout,
                },
            );
            return Ok(sender);
        }
    }

    /// A pooled HTTP/1 connection: a free one (`ready`), or else (`!ready`) one still
    /// finishing its exchange; this worker's own first, so a request's tasks stay on its
    /// thread. Connections closed or idle past their timeout are dropped.
    fn idle_http1(&self, key: HttpKey, now: Instant, ready: bool) -> Option<Http1> {
        let mut all = self.http1.lock().expect("poisoned");
        let list = all.get_mut(&key)?;
        list.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < c.idle_timeout);
        let me = workers::current();
        let at = list
            .iter()
            .position(|c| c.sender.is_ready() == ready && c.worker == me)
            .or_else(|| list.iter().position(|c| c.sender.is_ready() == ready))?;
        Some(list.swap_remove(at))
    }

    fn return_http1(&self, key: HttpKey, conn: Http1) {
        let mut all = self.http1.lock().expect("poisoned");
        let list = all.entry(key).or_default();
        if list.len() < MAX_IDLE_HTTP1 && !conn.sender.is_closed() {
            list.push(conn);
        }
    }

    /// The pooled HTTP/2 connection, counting one more request on it; none (and forgotten)
    /// when closed, idle past its timeout, or done with `maxRequestsPerConnection`.
    fn live_http2(
        &self,
        key: HttpKey,
        settings: &PoolSettings,
    ) -> Option<http2::SendRequest<Body>> {
        let mut all = self.http2.lock().expect("poisoned");
        let now = Instant::now();
        let conn = all.get_mut(&key)?;
        let spent = settings
            .max_requests_per_connection
            .is_some_and(|max| conn.served >= max.get());
        if conn.sender.is_closed()
            || spent
            || now.duration_since(conn.last_used) >= conn.idle_timeout
        {
            // Requests in flight keep their clones; the connection closes after them.
            all.remove(&key);
            return None;
        }
        conn.served += 1;
        conn.last_used = now;
        Some(conn.sender.clone())
    }

    /// Closes pooled connections idle past their service's `idleTimeout` (run periodically;
    /// a connection in use is never closed by this).
    pub fn close_idle(&self, now: Instant) {
        self.http1.lock().expect("poisoned").retain(|_, list| {
            list.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < c.idle_timeout);
            !list.is_empty()
        });
        self.http2.lock().expect("poisoned").retain(|_, c| {
            !c.sender.is_closed() && now.duration_since(c.last_used) < c.idle_timeout
        });
    }

    /// Forgets HTTP connections to endpoints that are gone.
    pub fn retain_endpoints(&self, live: impl Fn(&SocketAddr) -> bool) {
        self.http1
            .lock()
            .expect("poisoned")
            .retain(|(_, a, _), _| live(a));
        self.http2
            .lock()
            .expect("poisoned")
            .retain(|(_, a, _), _| live(a));
    }
}

/// Whether a request may open a connection of its service.
enum Slot {
    /// Yes, counted by the permit (none: no limits).
    Open(Option<ConnectionPermit>),
    /// No: `maxConnections` is reached; the request is counted as waiting.
    Full,
}

/// A slot for a new connection of the service, or, past `maxConnections`, the request counted
/// as waiting (once; past `http1MaxPendingRequests`: overflow, 503 `UO`).
fn slot(
    limits: Option<&ConnectionLimits>,
    waiting: &mut Option<PendingPermit>,
) -> Result<Slot, UpstreamError> {
    let Some(l) = limits else {
        return Ok(Slot::Open(None));
    };
    if let Some(permit) = l.try_connection() {
        return Ok(Slot::Open(Some(permit)));
    }
    if waiting.is_none() {
        *waiting = Some(l.try_pending().map_err(|_| UpstreamError::Overflow)?);
    }
    Ok(Slot::Full)
}

/// Waits until a connection of the service closes or comes back to the pool, or
/// `POOL_RECHECK` passes.
async fn until_released(released: Option<Pin<&mut Notified<'_>>>) {
    let recheck = tokio::time::sleep(POOL_RECHECK);
    match released {
        Some(r) => tokio::select! { () = r => {}, () = recheck => {} },
        None => recheck.await,
    }
}

/// Drives an upstream HTTP connection until it ends, counted against its service's
/// `maxConnections` and holding its tunnel (if any) meanwhile.
fn drive(
    conn: impl Future<Output = Result<(), hyper::Error>> + Send + 'static,
    permit: Option<ConnectionPermit>,
    guard: Option<StreamGuard>,
    what: &'static str,
) {
    tokio::spawn(async move {
        let _permit = permit;
        let _guard = guard;
        if let Err(e) = conn.await {
            debug!(error = %e, "upstream {what} connection ended");
        }
    });
}

/// A new HBONE connection as the waypoint's identity, expecting `expected` on the other end.
async fn dial(
    ctx: &Ctx,
    addr: SocketAddr,
    expected: Identity,
    connect_timeout: Duration,
) -> Result<HboneConnection, HboneError> {
    let cert = ctx
        .certs
        .get(&ctx.identity, ctx.cert_wait)
        .await
        .map_err(|e| HboneError::NoCertificate(e.to_string()))?;
    let config = tls::client_config(&cert, &ctx.bundle, vec![expected])?;
    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| HboneError::Timeout(connect_timeout))?
        .map_err(|source| HboneError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    HboneConnection::handshake(tcp, addr, Arc::new(config), &ctx.h2).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1 client connection over an in-memory pipe (nothing answers on the other end;
    /// the pool never sends on it here).
    async fn http1_sender() -> (http1::SendRequest<Body>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (sender, conn) = http1::handshake(TokioIo::new(ours))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        (sender, theirs)
    }

    /// A ServiceEntry's `resolution: DNS` endpoint, outside the mesh, known by `host`.
    fn named(host: &str) -> Endpoint {
        let mut w = (*crate::pipeline::testing::workload("ext", "")).clone();
        w.hostname = Some(host.into());
        w.protocol = Protocol::Tcp;
        Endpoint::new(Arc::new(w), "0.0.0.0:8443".parse().unwrap())
    }

    #[tokio::test]
    async fn named_endpoints_get_their_address_when_picked() {
        let upstreams = Upstreams::new(HbonePoolSettings::default());
        let mut endpoint = named("localhost");
        assert!(!endpoint.in_mesh());
        upstreams.resolve(&mut endpoint).await.unwrap();
        assert!(endpoint.addr.ip().is_loopback(), "{}", endpoint.addr);
        assert_eq!(endpoint.addr.port(), 8443);
        // A name with no address (RFC 6761's `.invalid`): Envoy's DNS failure flag.
        let mut missing = named("nothing.invalid");
        let e = upstreams.resolve(&mut missing).await.unwrap_err();
        assert_eq!(e.response_flag(), "DF");
    }

    #[tokio::test]
    async fn idle_connections_close_after_their_services_timeout() {
        let upstreams = Upstreams::new(HbonePoolSettings::default());
        let addr: SocketAddr = "10.244.1.5:8080".parse().unwrap();
        let now = Instant::now();
        let (fresh, _a) = http1_sender().await;
        let (stale, _b) = http1_sender().await;
        let idle = |sender, since, secs| Http1 {
            sender,
            served: 1,
            since,
            idle_timeout: Duration::from_secs(secs),
            worker: 0,
        };
        // Service 1's connection has been idle 5 s of its 2 s; service 2's 5 s of its 60 s.
        let five_ago = now - Duration::from_secs(5);
        upstreams.return_http1((1, addr, 0), idle(stale, five_ago, 2));
        upstreams.return_http1((2, addr, 0), idle(fresh, five_ago, 60));
        let pooled = |u: &Upstreams| {
            let mut keys: Vec<u64> = u.http1.lock().unwrap().keys().map(|k| k.0).collect();
            keys.sort_unstable();
            keys
        };
        assert_eq!(pooled(&upstreams), [1, 2]);
        upstreams.close_idle(now);
        assert_eq!(pooled(&upstreams), [2], "service 1's connection closed");
        // Service 2's, idle 55 s of its 60, stays; at 125 s it goes.
        upstreams.close_idle(now + Duration::from_secs(50));
        assert_eq!(pooled(&upstreams), [2]);
        upstreams.close_idle(now + Duration::from_secs(120));
        assert!(pooled(&upstreams).is_empty());
        // Taking one also drops what expired meanwhile, and pools are per service.
        let (sender, _c) = http1_sender().await;
        upstreams.return_http1((2, addr, 0), idle(sender, five_ago, 2));
        assert!(upstreams.idle_http1((2, addr, 0), now, false).is_none());
        assert!(pooled(&upstreams).iter().all(|k| *k == 2));
        let (sender, _d) = http1_sender().await;
        upstreams.return_http1((2, addr, 0), idle(sender, now, 60));
        assert!(
            upstreams.idle_http1((1, addr, 0), now, false).is_none(),
            "not service 1's"
        );
        assert!(upstreams.idle_http1((2, addr, 0), now, false).is_some());
    }
}
