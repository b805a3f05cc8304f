//! Inbound HBONE (port 15008 in the pod): terminate mutual TLS and HTTP/2, then connect each
//! CONNECT stream to the app inside the pod.

use std::net::SocketAddr;
use std::sync::Arc;

use ambient_proto::hbone::{
    ConnectStatus, H2Stream, InboundConnect, relay, serve_connection_until,
};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::connection_manager::{Admission, Registration};
use super::{
    HBONE_PORT, Opened, PodContext, RESERVED_PORTS, UNKNOWN_POD, accept_loop, open_then_relay,
    socket,
};
use crate::metrics::{self, ConnectionInfo, ConnectionRecord, Reporter, Security};
use proxy_core::rbac::Connection;

pub(crate) async fn serve(ctx: Arc<PodContext>, listener: tokio::net::TcpListener) {
    accept_loop(ctx, listener, "inbound", handle).await
}

async fn handle(ctx: Arc<PodContext>, tcp: TcpStream, peer: SocketAddr) {
    // A pod can be dialed before its first certificate arrives: hold the handshake until
    // there is one to present.
    if let Err(e) = ctx
        .shared
        .certs
        .get(&ctx.identity, ctx.shared.cert_wait)
        .await
    {
        warn!(pod = %ctx.name, %peer, error = %e, "no certificate to serve HBONE with");
        return;
    }
    let handler_ctx = ctx.clone();
    let handler = move |inbound: InboundConnect| connect(handler_ctx.clone(), inbound);
    // A draining process sends GOAWAY: the peer's pool takes new streams to the process that
    // now holds the listener, while this connection's streams finish here.
    let draining = ctx.shared.draining.clone();
    let served = serve_connection_until(
        tcp,
        peer,
        ctx.acceptor.clone(),
        ctx.shared.h2,
        handler,
        draining.cancelled_owned(),
    )
    .await;
    if let Err(e) = served {
        metrics::hbone_rejected("inbound", e.reason.as_str());
        warn!(
            pod = %ctx.name,
            peer = %e.peer,
            reason = e.reason.as_str(),
            detail = %e.detail,
            "HBONE connection refused"
        );
    }
}

/// An accepted CONNECT whose app connection is open, holding only what its relay needs.
struct Admitted {
    upstream: TcpStream,
    stream: H2Stream,
    record: ConnectionRecord,
    /// Cancelled when a policy change denies the connection.
    cancel: CancellationToken,
    _registration: Registration,
}

fn connect(ctx: Arc<PodContext>, inbound: InboundConnect) -> impl Future<Output = ()> + Send {
    open_then_relay(admit(ctx, inbound))
}

impl Opened for Admitted {
    async fn relay(&mut self) {
        let Admitted {
            upstream,
            stream,
            record,
            cancel,
            ..
        } = self;
        let (r, w) = upstream.split();
        let outcome = {
            let observer = record.inbound_observer();
            tokio::select! {
                result = relay(r, w, stream, &observer) => result.err().map(|e| e.to_string()),
                _ = cancel.cancelled() => Some("closed: denied by a policy change".to_string()),
            }
        };
        if let Some(e) = outcome {
            record.set_error(e);
        }
    }
}

/// Checks a CONNECT against the pod and its policies and connects to the app; `None` when
/// refused or failed (the peer has been answered and the outcome logged).
async fn admit(ctx: Arc<PodContext>, inbound: InboundConnect) -> Option<Admitted> {
    let peer_id = inbound.peer_identity().clone();
    let dst = match inbound.authority() {
        Ok(d) => d,
        Err(e) => {
            warn!(pod = %ctx.name, peer = %peer_id, error = %e, "bad CONNECT");
            inbound.reject(ConnectStatus::BadRequest);
            return None;
        }
    };
    // In-pod mode: the tunnel's TCP source is the client pod's own address.
    let peer_addr = inbound.peer_addr();
    let admission =
        ctx.shared
            .connections
            .admit(&ctx, Some(peer_id.clone()), peer_addr.ip(), dst, || {
                ctx.shared.state.load()
            });
    let Some(Admission {
        registration,
        cancel,
        snapshot,
        workload: me,
    }) = admission
    else {
        warn!(pod = %ctx.name, %dst, peer = %peer_id, "CONNECT for a pod the control plane has not described");
        ConnectionRecord::open(ConnectionInfo {
            reporter: Reporter::Destination,
            src_addr: peer_addr,
            src_workload: None,
            src_identity: Some(peer_id),
            dst_addr: SocketAddr::new(dst.ip(), HBONE_PORT),
            dst_hbone_addr: Some(dst),
            dst_workload: None,
            dst_identity: Some(ctx.identity.clone()),
            dst_service: None,
            security: Security::MutualTls,
            response_flags: UNKNOWN_POD,
        })
        .set_error("destination pod not described by the control plane yet");
        inbound.reject(ConnectStatus::Unavailable);
        return None;
    };
    if !me.addresses.contains(&dst.ip()) || RESERVED_PORTS.contains(&dst.port()) {
        warn!(pod = %ctx.name, %dst, peer = %peer_id, "CONNECT to an address this pod does not serve");
        inbound.reject(ConnectStatus::BadRequest);
        return None;
    }
    let src_workload = snapshot
        .workload_by_ip(peer_addr.ip())
        .filter(|w| w.identity == peer_id)
        .cloned();
    let info = |flags| ConnectionInfo {
        reporter: Reporter::Destination,
        src_addr: peer_addr,
        src_workload: src_workload.clone(),
        src_identity: Some(peer_id.clone()),
        dst_addr: SocketAddr::new(dst.ip(), HBONE_PORT),
        dst_hbone_addr: Some(dst),
        dst_workload: Some(me.clone()),
        dst_identity: Some(ctx.identity.clone()),
        dst_service: None,
        security: Security::MutualTls,
        response_flags: flags,
    };
    let attrs = Connection {
        src_identity: Some(&peer_id),
        src_ip: peer_addr.ip(),
        dst,
    };
    if let Err(denial) = snapshot.authorize(&me, &attrs) {
        info!(pod = %ctx.name, peer = %peer_id, %dst, reason = %denial, "connection denied by policy");
        ConnectionRecord::open(info("DENY")).set_error(denial);
        inbound.reject(ConnectStatus::Denied);
        return None;
    }
    // The state snapshot and the lookups made in it are released before connecting, so a
    // long connection pins no old configuration.
    drop(snapshot);
    // The tunnel's own TCP source is the client pod (sockets live in pod namespaces), so the
    // app is shown that address.
    let client_ip = peer_addr.ip();
    let connect = tokio::time::timeout(
        ctx.shared.connect_timeout,
        socket::connect_as(&ctx.netns, client_ip, dst),
    )
    .await;
    let upstream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(pod = %ctx.name, %dst, error = %e, "app refused the connection");
            inbound.reject(ConnectStatus::Unavailable);
            return None;
        }
        Err(_) => {
            debug!(pod = %ctx.name, %dst, "app did not accept in time");
            inbound.reject(ConnectStatus::Unavailable);
            return None;
        }
    };
    if cancel.is_cancelled() {
        info!(pod = %ctx.name, peer = %peer_id, %dst, "connection denied by a policy change while connecting");
        ConnectionRecord::open(info("DENY"))
            .set_error("denied by a policy change while connecting");
        inbound.reject(ConnectStatus::Denied);
        return None;
    }
    let stream = match inbound.accept() {
        Ok(s) => s,
        Err(e) => {
            debug!(pod = %ctx.name, error = %e, "peer went away before the tunnel opened");
            return None;
        }
    };
    let record = ConnectionRecord::open(info("-"));
    Some(Admitted {
        upstream,
        stream,
        record,
        cancel,
        _registration: registration,
    })
}
