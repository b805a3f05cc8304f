//! Plaintext inbound (port 15006 in the pod): a client outside the mesh (or not using HBONE)
//! dialed the pod; capture sent it here. Connect it to the app it was meant for.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::connection_manager::{Admission, Registration};
use super::{
    Opened, PodContext, RESERVED_PORTS, UNKNOWN_POD, accept_loop, open_then_relay, socket,
};
use crate::metrics::{ConnectionInfo, ConnectionRecord, Reporter, Security};
use proxy_core::rbac::Connection;
use proxy_core::state::Workload;

pub(crate) async fn serve(ctx: Arc<PodContext>, listener: tokio::net::TcpListener) {
    accept_loop(ctx, listener, "inbound_passthrough", handle).await
}

/// An admitted connection with the app's side open, holding only what its relay needs.
struct Admitted {
    downstream: TcpStream,
    upstream: TcpStream,
    record: ConnectionRecord,
    /// Cancelled when a policy change denies the connection.
    cancel: CancellationToken,
    _registration: Registration,
}

fn handle(
    ctx: Arc<PodContext>,
    downstream: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    // Neither admission's state nor the configuration snapshot it looked at lives as long as
    // the connection.
    open_then_relay(admit(ctx, downstream, peer))
}

impl Opened for Admitted {
    async fn relay(&mut self) {
        let Admitted {
            downstream,
            upstream,
            record,
            cancel,
            ..
        } = self;
        let outcome = tokio::select! {
            result = super::relay::relay_tcp(downstream, upstream, record) => {
                result.err().map(|e| e.to_string())
            }
            _ = cancel.cancelled() => Some("closed: denied by a policy change".to_string()),
        };
        if let Some(e) = outcome {
            record.set_error(e);
        }
    }
}

/// Checks the connection against the pod's policies and connects to the app; `None` when
/// refused or failed (the outcome is logged and counted).
async fn admit(ctx: Arc<PodContext>, downstream: TcpStream, peer: SocketAddr) -> Option<Admitted> {
    let dst = match socket::original_dst(&downstream) {
        Ok(d) => d,
        Err(e) => {
            warn!(pod = %ctx.name, %peer, error = %e, "plaintext connection without an original destination");
            return None;
        }
    };
    if RESERVED_PORTS.contains(&dst.port()) {
        debug!(pod = %ctx.name, %dst, "refusing plaintext to the tunnel's own port");
        return None;
    }
    let admission = ctx
        .shared
        .connections
        .admit(&ctx, None, peer.ip(), dst, || ctx.shared.state.load());
    let Some(Admission {
        registration,
        cancel,
        snapshot,
        workload: me,
    }) = admission
    else {
        // Between a pod's capture and its workload reaching us, no policy of it is known:
        // STRICT mTLS and DENY rules cannot be checked, so nothing gets through.
        let src_workload = ctx.shared.state.load().workload_by_ip(peer.ip()).cloned();
        info!(pod = %ctx.name, %peer, %dst, "plaintext connection refused: the control plane has not described this pod yet");
        ConnectionRecord::open(info(&ctx, peer, dst, src_workload, None, UNKNOWN_POD))
            .set_error("destination pod not described by the control plane yet");
        return None;
    };
    let src_workload = snapshot.workload_by_ip(peer.ip()).cloned();
    let info = |flags| {
        info(
            &ctx,
            peer,
            dst,
            src_workload.clone(),
            Some(me.clone()),
            flags,
        )
    };
    let attrs = Connection {
        src_identity: None,
        src_ip: peer.ip(),
        dst,
    };
    if let Err(denial) = snapshot.authorize(&me, &attrs) {
        info!(pod = %ctx.name, %peer, %dst, reason = %denial, "plaintext connection denied by policy");
        ConnectionRecord::open(info("DENY")).set_error(denial);
        return None;
    }
    // Nothing of the configuration is held while connecting or relaying.
    drop(snapshot);
    let connect = tokio::time::timeout(
        ctx.shared.connect_timeout,
        socket::connect_as(&ctx.netns, peer.ip(), dst),
    )
    .await;
    let upstream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ConnectionRecord::open(info("UF")).set_error(format!("connect {dst}: {e}"));
            return None;
        }
        Err(_) => {
            ConnectionRecord::open(info("UF")).set_error(format!("connect {dst}: timed out"));
            return None;
        }
    };
    if cancel.is_cancelled() {
        info!(pod = %ctx.name, %peer, %dst, "plaintext connection denied by a policy change while connecting");
        ConnectionRecord::open(info("DENY"))
            .set_error("denied by a policy change while connecting");
        return None;
    }
    let record = ConnectionRecord::open(info("-"));
    Some(Admitted {
        downstream,
        upstream,
        record,
        cancel,
        _registration: registration,
    })
}

/// What the metrics and the access log say of a plaintext connection to `me`.
fn info(
    ctx: &PodContext,
    peer: SocketAddr,
    dst: SocketAddr,
    src_workload: Option<Arc<Workload>>,
    me: Option<Arc<Workload>>,
    flags: &'static str,
) -> ConnectionInfo {
    ConnectionInfo {
        reporter: Reporter::Destination,
        src_addr: peer,
        src_workload,
        src_identity: None,
        dst_addr: dst,
        dst_hbone_addr: None,
        dst_workload: me,
        dst_identity: Some(ctx.identity.clone()),
        dst_service: None,
        security: Security::None,
        response_flags: flags,
    }
}
