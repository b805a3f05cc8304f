//! The HBONE listener (15008): terminate mutual TLS and HTTP/2, check each CONNECT names a
//! service or workload that uses this waypoint, then hand the stream to the HTTP proxy or the
//! TCP passthrough according to the port's protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambient_proto::ambient::waypoint::v1 as pb;
use ambient_proto::hbone::{ConnectStatus, InboundConnect, serve_connection};
use ambient_proto::identity::Identity;
use proxy_core::state::{Service, Workload};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::context::Ctx;
use crate::l7::protocol::{self, Detected};
use crate::rewind::Rewind;
use crate::stream::StreamIo;
use crate::workers::Workers;
use crate::{http_server, tcp, telemetry};

/// How long a client may stay silent before its stream is treated as plain TCP (server-first
/// protocols never speak first).
const DETECT_TIMEOUT: Duration = Duration::from_millis(200);
/// Bytes looked at to recognise HTTP.
const DETECT_BYTES: usize = 64;

/// What a CONNECT asked for.
#[derive(Clone, Debug)]
pub enum Target {
    Service { service: Arc<Service>, port: u16 },
    Workload { workload: Arc<Workload>, port: u16 },
}

/// Who is on the other end of the tunnel.
#[derive(Clone, Debug)]
pub struct Downstream {
    pub identity: Identity,
    /// The client pod's address (the tunnel's source, or `forwarded`).
    pub addr: SocketAddr,
    pub workload: Option<Arc<Workload>>,
    /// The CONNECT's `:authority`.
    pub dst: SocketAddr,
}

/// Accepts HBONE connections until `cancel`, each served on the next of `workers`.
pub async fn serve(
    ctx: Arc<Ctx>,
    workers: Workers,
    listener: TcpListener,
    cancel: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        // The socket moves to the worker's runtime: registered there, polled only there.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                warn!(%peer, error = %e, "accepted HBONE connection unusable");
                continue;
            }
        };
        let ctx = ctx.clone();
        workers.spawn(move || async move {
            match TcpStream::from_std(tcp) {
                Ok(tcp) => serve_one(ctx, tcp, peer).await,
                Err(e) => warn!(%peer, error = %e, "accepted HBONE connection unusable"),
            }
        });
    }
}

/// Terminates one HBONE connection and serves its CONNECT streams.
async fn serve_one(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr) {
    let handler_ctx = ctx.clone();
    let handler = move |inbound: InboundConnect| {
        let ctx = handler_ctx.clone();
        async move { connect(ctx, inbound).await }
    };
    if let Err(e) = serve_connection(tcp, peer, ctx.acceptor.clone(), ctx.h2, handler).await {
        telemetry::hbone_rejected(e.reason.as_str());
        debug!(peer = %e.peer, reason = e.reason.as_str(), detail = %e.detail, "HBONE connection refused");
    }
}

/// The target of `dst` if it uses this waypoint.
fn target(ctx: &Ctx, dst: SocketAddr) -> Option<Target> {
    let snapshot = ctx.state.load();
    if let Some(service) = snapshot.service_by_vip(dst.ip()) {
        let mine = service
            .waypoint
            .as_ref()
            .is_some_and(|w| ctx.is_me(&snapshot, w));
        return mine.then(|| Target::Service {
            service: service.clone(),
            port: dst.port(),
        });
    }
    let workload = snapshot.workload_by_ip(dst.ip())?;
    let mine = workload
        .waypoint
        .as_ref()
        .is_some_and(|w| ctx.is_me(&snapshot, w));
    mine.then(|| Target::Workload {
        workload: workload.clone(),
        port: dst.port(),
    })
}

async fn connect(ctx: Arc<Ctx>, inbound: InboundConnect) {
    let dst = match inbound.authority() {
        Ok(d) => d,
        Err(e) => {
            debug!(error = %e, "bad CONNECT");
            inbound.reject(ConnectStatus::BadRequest);
            return;
        }
    };
    let Some(target) = target(&ctx, dst) else {
        warn!(%dst, peer = %inbound.peer_identity(), "CONNECT to a destination that does not use this waypoint");
        inbound.reject(ConnectStatus::BadRequest);
        return;
    };
    let peer_identity = inbound.peer_identity().clone();
    let addr = SocketAddr::new(
        inbound.forwarded_for().unwrap_or(inbound.peer_addr().ip()),
        inbound.peer_addr().port(),
    );
    let workload = ctx
        .state
        .load()
        .workload_by_ip(addr.ip())
        .filter(|w| w.identity == peer_identity)
        .cloned();
    let downstream = Downstream {
        identity: peer_identity,
        addr,
        workload,
        dst,
    };
    let declared = match &target {
        Target::Service { service, port } => ctx
            .l7
            .load()
            .services
            .get(&service.key())
            .and_then(|c| c.ports.iter().find(|p| p.port == u32::from(*port)))
            .map(|p| p.protocol())
            .unwrap_or(pb::AppProtocol::Detect),
        Target::Workload { .. } => pb::AppProtocol::Detect,
    };
    let stream = match inbound.accept() {
        Ok(s) => StreamIo::new(s),
        Err(e) => {
            debug!(error = %e, "peer left before the tunnel opened");
            return;
        }
    };
    match declared {
        pb::AppProtocol::Tcp => {
            tcp::passthrough(ctx, target, downstream, Rewind::new(stream)).await
        }
        pb::AppProtocol::Http1 | pb::AppProtocol::Http2 | pb::AppProtocol::Grpc => {
            http_server::serve(ctx, target, downstream, Rewind::new(stream)).await
        }
        pb::AppProtocol::Detect => {
            let (is_http, stream) = detect(stream).await;
            if is_http {
                http_server::serve(ctx, target, downstream, stream).await
            } else {
                tcp::passthrough(ctx, target, downstream, stream).await
            }
        }
    }
}

/// Reads the first bytes (without losing them) and says whether they are HTTP.
async fn detect(mut stream: StreamIo) -> (bool, Rewind<StreamIo>) {
    let mut buf = Vec::with_capacity(DETECT_BYTES);
    let deadline = tokio::time::Instant::now() + DETECT_TIMEOUT;
    let is_http = loop {
        let mut chunk = [0u8; DETECT_BYTES];
        let room = DETECT_BYTES - buf.len();
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..room])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break false,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        match protocol::detect(&buf) {
            Detected::NeedMore if buf.len() < DETECT_BYTES => continue,
            Detected::NeedMore | Detected::Tcp => break false,
            Detected::Http1 | Detected::Http2 => break true,
        }
    };
    (is_http, Rewind::with_prefix(buf.into(), stream))
}
