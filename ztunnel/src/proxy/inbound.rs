//! Inbound HBONE (port 15008 in the pod): terminate mutual TLS and HTTP/2, then connect each
//! CONNECT stream to the app inside the pod.

use std::net::SocketAddr;
use std::sync::Arc;

use ambient_proto::hbone::{ConnectStatus, InboundConnect, relay, serve_connection};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::{PodContext, RESERVED_PORTS, accept_loop, socket};
use crate::metrics::{self, ConnectionInfo, ConnectionRecord, Reporter, Security};

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
    let handler = move |inbound: InboundConnect| {
        let ctx = handler_ctx.clone();
        async move { connect(ctx, inbound).await }
    };
    let served = serve_connection(tcp, peer, ctx.acceptor.clone(), ctx.shared.h2, handler).await;
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

async fn connect(ctx: Arc<PodContext>, inbound: InboundConnect) {
    let peer_id = inbound.peer_identity().clone();
    let dst = match inbound.authority() {
        Ok(d) => d,
        Err(e) => {
            warn!(pod = %ctx.name, peer = %peer_id, error = %e, "bad CONNECT");
            inbound.reject(ConnectStatus::BadRequest);
            return;
        }
    };
    let Some(me) = ctx.workload() else {
        warn!(pod = %ctx.name, %dst, "CONNECT for a pod the control plane has not described");
        inbound.reject(ConnectStatus::Unavailable);
        return;
    };
    if !me.addresses.contains(&dst.ip()) || RESERVED_PORTS.contains(&dst.port()) {
        warn!(pod = %ctx.name, %dst, peer = %peer_id, "CONNECT to an address this pod does not serve");
        inbound.reject(ConnectStatus::BadRequest);
        return;
    }
    let snapshot = ctx.shared.state.load();
    // In-pod mode: the tunnel's TCP source is the client pod's own address.
    let src_workload = snapshot
        .workload_by_ip(inbound.peer_addr().ip())
        .filter(|w| w.identity == peer_id)
        .cloned();
    // The tunnel's own TCP source is the client pod (sockets live in pod namespaces), so the
    // app is shown that address.
    let client_ip = inbound.peer_addr().ip();
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
            return;
        }
        Err(_) => {
            debug!(pod = %ctx.name, %dst, "app did not accept in time");
            inbound.reject(ConnectStatus::Unavailable);
            return;
        }
    };
    let src_addr = SocketAddr::new(
        inbound.forwarded_for().unwrap_or(inbound.peer_addr().ip()),
        inbound.peer_addr().port(),
    );
    let stream = match inbound.accept() {
        Ok(s) => s,
        Err(e) => {
            debug!(pod = %ctx.name, error = %e, "peer went away before the tunnel opened");
            return;
        }
    };
    let mut record = ConnectionRecord::open(ConnectionInfo {
        reporter: Reporter::Destination,
        src_addr,
        src_workload,
        src_identity: Some(peer_id),
        dst_addr: dst,
        dst_hbone_addr: Some(dst),
        dst_workload: Some(me),
        dst_identity: Some(ctx.identity.clone()),
        dst_service: None,
        security: Security::MutualTls,
        response_flags: "-",
    });
    let (r, w) = upstream.into_split();
    if let Err(e) = relay(r, w, stream, &record.inbound_observer()).await {
        record.set_error(e);
    }
}
