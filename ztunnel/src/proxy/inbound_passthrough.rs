//! Plaintext inbound (port 15006 in the pod): a client outside the mesh (or not using HBONE)
//! dialed the pod; capture sent it here. Connect it to the app it was meant for.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::connection_manager::Tracked;
use super::{PodContext, RESERVED_PORTS, accept_loop, socket};
use crate::metrics::{ConnectionInfo, ConnectionRecord, Reporter, Security};
use crate::rbac::Connection;

pub(crate) async fn serve(ctx: Arc<PodContext>, listener: tokio::net::TcpListener) {
    accept_loop(ctx, listener, "inbound_passthrough", handle).await
}

async fn handle(ctx: Arc<PodContext>, mut downstream: TcpStream, peer: SocketAddr) {
    let dst = match socket::original_dst(&downstream) {
        Ok(d) => d,
        Err(e) => {
            warn!(pod = %ctx.name, %peer, error = %e, "plaintext connection without an original destination");
            return;
        }
    };
    if RESERVED_PORTS.contains(&dst.port()) {
        debug!(pod = %ctx.name, %dst, "refusing plaintext to the tunnel's own port");
        return;
    }
    let me = ctx.workload();
    let snapshot = ctx.shared.state.load();
    let src_workload = snapshot.workload_by_ip(peer.ip()).cloned();
    let info = |flags| ConnectionInfo {
        reporter: Reporter::Destination,
        src_addr: peer,
        src_workload: src_workload.clone(),
        src_identity: None,
        dst_addr: dst,
        dst_hbone_addr: None,
        dst_workload: me.clone(),
        dst_identity: Some(ctx.identity.clone()),
        dst_service: None,
        security: Security::None,
        response_flags: flags,
    };
    if let Some(me) = &me {
        let attrs = Connection {
            src_identity: None,
            src_ip: peer.ip(),
            dst,
        };
        if let Err(denial) = snapshot.authorize(me, &attrs) {
            info!(pod = %ctx.name, %peer, %dst, reason = %denial, "plaintext connection denied by policy");
            ConnectionRecord::open(info("DENY")).set_error(denial);
            return;
        }
    }
    let connect = tokio::time::timeout(
        ctx.shared.connect_timeout,
        socket::connect_as(&ctx.netns, peer.ip(), dst),
    )
    .await;
    let mut upstream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ConnectionRecord::open(info("UF")).set_error(format!("connect {dst}: {e}"));
            return;
        }
        Err(_) => {
            ConnectionRecord::open(info("UF")).set_error(format!("connect {dst}: timed out"));
            return;
        }
    };
    let mut record = ConnectionRecord::open(info("-"));
    let cancel = ctx.cancel.child_token();
    let _registration = ctx.shared.connections.register(Tracked {
        pod: ctx.clone(),
        src_identity: None,
        src_ip: peer.ip(),
        dst,
        cancel: cancel.clone(),
    });
    tokio::select! {
        result = super::relay::relay_tcp(&mut downstream, &mut upstream, &record) => {
            if let Err(e) = result {
                record.set_error(e);
            }
        }
        _ = cancel.cancelled() => record.set_error("closed: denied by a policy change"),
    }
}
