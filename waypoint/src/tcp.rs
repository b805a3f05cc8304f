//! Plain TCP through the waypoint: L4 authorization, the service's `maxConnections` (over
//! it: refused, `UO`), one endpoint, bytes relayed between the two tunnels.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info};

use crate::context::Ctx;
use crate::egress::Alpn;
use crate::inbound::{Downstream, Target};
use crate::rewind::Rewind;
use crate::routing::TcpRefusal;
use crate::stream::StreamIo;
use crate::telemetry::TcpRecord;
use crate::upstream::{Endpoint, TunnelContext};

pub async fn passthrough(
    ctx: Arc<Ctx>,
    target: Target,
    downstream: Downstream,
    mut stream: Rewind<StreamIo>,
) {
    let started = Instant::now();
    let routing = ctx.routing.load();
    let service = match &target {
        Target::Service { service, .. } => Some(service.clone()),
        Target::Workload { .. } => None,
    };
    let mut record = TcpRecord::new(&downstream, service.clone());
    match routing.authorize_tcp(&target, &downstream) {
        Ok(()) => {}
        Err(TcpRefusal::NotConfigured) => {
            info!(src = %downstream.identity, dst = %downstream.dst, "connection refused: no configuration for this service yet");
            record.finish("NR", None, 0, 0, started);
            return;
        }
        Err(TcpRefusal::Denied(policy)) => {
            info!(src = %downstream.identity, dst = %downstream.dst, policy = %policy, "connection denied by policy");
            record.finish("DENY", None, 0, 0, started);
            return;
        }
    }
    let (endpoint, _pick) = match &target {
        Target::Service { service, port } => {
            match routing.endpoint(service, *port, downstream.identity.namespace()) {
                Some((e, pick)) => (Some(e), Some(pick)),
                None => (None, None),
            }
        }
        Target::Workload { workload, port } => (
            workload
                .addresses
                .first()
                .map(|ip| Endpoint::new(workload.clone(), SocketAddr::new(*ip, *port))),
            None,
        ),
    };
    let Some(mut endpoint) = endpoint else {
        debug!(dst = %downstream.dst, "no healthy endpoint");
        record.finish("UH", None, 0, 0, started);
        return;
    };
    let limits = service
        .as_ref()
        .and_then(|s| routing.service(&s.key()))
        .map(|s| s.limits.clone());
    // Counted against the service's maxConnections for as long as the relay lasts.
    let _connection = match &limits {
        Some(l) => match l.try_connection() {
            Some(permit) => Some(permit),
            None => {
                info!(src = %downstream.identity, dst = %downstream.dst, "connection refused: the service's maxConnections is reached");
                record.finish("UO", Some(&endpoint), 0, 0, started);
                return;
            }
        },
        None => None,
    };
    let connect_timeout = limits
        .as_ref()
        .map_or(ctx.connect_timeout, |l| l.pool().connect_timeout);
    let tunnel = TunnelContext {
        client_ip: Some(downstream.addr.ip()),
        traceparent: None,
    };
    let upstreams = ctx.upstreams.local();
    if let Err(e) = upstreams.resolve(&mut endpoint).await {
        debug!(error = %e, "endpoint has no address");
        record.finish(e.response_flag(), Some(&endpoint), 0, 0, started);
        return;
    }
    let (mut up, _guard) = match upstreams
        .connect(&ctx, &endpoint, &tunnel, connect_timeout, Alpn::Opaque)
        .await
    {
        Ok(x) => x,
        Err(e) => {
            debug!(error = %e, "upstream connection failed");
            record.finish(e.response_flag(), Some(&endpoint), 0, 0, started);
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut stream, &mut up).await {
        Ok((sent, received)) => record.finish("-", Some(&endpoint), sent, received, started),
        Err(e) => {
            debug!(error = %e, "relay ended with an error");
            record.finish("-", Some(&endpoint), 0, 0, started);
        }
    }
}
