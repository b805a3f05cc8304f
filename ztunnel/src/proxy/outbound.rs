//! Outbound (port 15001 in the pod): the app dialed somewhere; capture sent it here.
//!
//! original destination → workload or service VIP (one endpoint picked) → HBONE to the
//! endpoint's 15008 when it is in the mesh, else plain TCP straight to the destination.

use std::net::SocketAddr;
use std::sync::Arc;

use ambient_proto::hbone::{
    ConnectRequest, H2Stream, HboneConnection, HboneError, StreamGuard, relay,
};
use ambient_proto::identity::Identity;
use ambient_proto::tls;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::{HBONE_PORT, Opened, PodContext, RESERVED_PORTS, accept_loop, open_then_relay, socket};
use crate::metrics::{self, ConnectionInfo, ConnectionRecord, Reporter, Security};
use proxy_core::state::{Protocol, Upstream, Workload};

pub(crate) async fn serve(ctx: Arc<PodContext>, listener: tokio::net::TcpListener) {
    accept_loop(ctx, listener, "outbound", handle).await
}

/// A connection whose upstream is open, holding only what its relay needs.
enum Ready {
    /// In an HBONE stream; the guard holds the stream's place in the pooled connection.
    Tunnel {
        downstream: TcpStream,
        stream: H2Stream,
        _guard: StreamGuard,
        record: ConnectionRecord,
    },
    /// Plain TCP to a destination outside the mesh (or a workload that does not take HBONE).
    Plain {
        downstream: TcpStream,
        upstream: TcpStream,
        record: ConnectionRecord,
    },
}

fn handle(
    ctx: Arc<PodContext>,
    downstream: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    open_then_relay(open(ctx, downstream, peer))
}

impl Opened for Ready {
    async fn relay(&mut self) {
        match self {
            Ready::Tunnel {
                downstream,
                stream,
                record,
                ..
            } => {
                let (r, w) = downstream.split();
                if let Err(e) = relay(r, w, stream, &record.outbound_observer()).await {
                    record.set_error(e);
                }
            }
            Ready::Plain {
                downstream,
                upstream,
                record,
            } => {
                if let Err(e) = super::relay::relay_tcp(downstream, upstream, record).await {
                    record.set_error(e);
                }
            }
        }
    }
}

/// Resolves the original destination and opens the way there; `None` when it cannot be
/// (the failure is already logged and counted).
async fn open(ctx: Arc<PodContext>, downstream: TcpStream, peer: SocketAddr) -> Option<Ready> {
    let dst = match socket::original_dst(&downstream) {
        Ok(d) => d,
        Err(e) => {
            warn!(pod = %ctx.name, %peer, error = %e, "outbound connection without an original destination");
            return None;
        }
    };
    let me = ctx.workload();
    if RESERVED_PORTS.contains(&dst.port())
        && me.as_ref().is_some_and(|w| w.addresses.contains(&dst.ip()))
    {
        debug!(pod = %ctx.name, %dst, "refusing a connection to the tunnel's own port");
        return None;
    }
    let snapshot = ctx.shared.state.load();
    match snapshot.resolve(dst, &ctx.namespace) {
        Err(e) => {
            warn!(pod = %ctx.name, %dst, error = %e, "outbound destination unusable");
            let mut record = ConnectionRecord::open(info(&ctx, me, peer, dst, None, "NR"));
            record.set_error(e);
            None
        }
        Ok(Some(up)) if up.waypoint.is_some() || up.workload.protocol == Protocol::Hbone => {
            hbone(&ctx, downstream, peer, dst, me, up).await
        }
        Ok(Some(up)) => {
            let target = up.addr;
            direct(&ctx, downstream, peer, dst, target, me, Some(up)).await
        }
        Ok(None)
            if ctx.shared.mesh.registry_only() && !declared(&snapshot, dst, &ctx.namespace) =>
        {
            warn!(pod = %ctx.name, %dst, "outbound connection refused: REGISTRY_ONLY, and no service or ServiceEntry declares the destination");
            let mut record = ConnectionRecord::open(info(&ctx, me, peer, dst, None, "NR"));
            record.set_error(format!(
                "outbound traffic policy REGISTRY_ONLY: {dst} is not in the mesh's registry"
            ));
            None
        }
        Ok(None) => direct(&ctx, downstream, peer, dst, dst, me, None).await,
    }
}

/// Whether a destination outside the mesh is one a service the client sees declares (a
/// `resolution: NONE` ServiceEntry's address: passed through, also under REGISTRY_ONLY).
fn declared(snapshot: &proxy_core::state::Snapshot, dst: SocketAddr, namespace: &str) -> bool {
    snapshot
        .service_by_vip(dst.ip())
        .is_some_and(|s| s.visible_to(namespace))
}

fn info(
    ctx: &PodContext,
    me: Option<Arc<Workload>>,
    peer: SocketAddr,
    dst: SocketAddr,
    up: Option<&Upstream>,
    flags: &'static str,
) -> ConnectionInfo {
    let hbone = up.is_some_and(|u| u.waypoint.is_some() || u.workload.protocol == Protocol::Hbone);
    ConnectionInfo {
        reporter: Reporter::Source,
        src_addr: peer,
        src_workload: me,
        src_identity: Some(ctx.identity.clone()),
        // Where the bytes go: the HBONE endpoint, the chosen plain endpoint, or (unresolved)
        // the original destination; the tunnel's inner address apart.
        dst_addr: match up {
            Some(u) if hbone => hbone_endpoint(u),
            Some(u) => u.addr,
            None => dst,
        },
        dst_hbone_addr: up.filter(|_| hbone).map(|u| u.addr),
        dst_workload: up.map(|u| u.workload.clone()),
        dst_identity: up.filter(|_| hbone).map(|u| u.workload.identity.clone()),
        dst_service: up.and_then(|u| u.service.clone()),
        security: if hbone {
            Security::MutualTls
        } else {
            Security::None
        },
        response_flags: flags,
    }
}

/// Where the HBONE connection for `up` goes: its waypoint, or its ztunnel's port on the
/// endpoint's address.
fn hbone_endpoint(up: &Upstream) -> SocketAddr {
    up.waypoint
        .unwrap_or_else(|| SocketAddr::new(up.addr.ip(), HBONE_PORT))
}

/// Plain TCP from the pod's namespace to `target` (a non-mesh workload or outside the mesh),
/// or, for an endpoint known by name, to the first of its addresses that answers.
async fn direct(
    ctx: &PodContext,
    downstream: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    target: SocketAddr,
    me: Option<Arc<Workload>>,
    mut up: Option<Upstream>,
) -> Option<Ready> {
    let named = up.as_ref().and_then(|u| u.hostname.clone());
    let connect = tokio::time::timeout(ctx.shared.connect_timeout, async {
        let Some(host) = &named else {
            return socket::connect_in(&ctx.netns, target)
                .await
                .map(|s| (s, target))
                .map_err(|e| format!("connect {target}: {e}"));
        };
        let addrs = ctx
            .shared
            .named_endpoints
            .resolve(host, target.port())
            .await
            .map_err(|e| format!("resolve {host}: {e}"))?;
        let mut last = String::new();
        for addr in addrs {
            match socket::connect_in(&ctx.netns, addr).await {
                Ok(s) => return Ok((s, addr)),
                Err(e) => last = format!("connect {addr} ({host}): {e}"),
            }
        }
        Err(last)
    })
    .await;
    let upstream = match connect {
        Ok(Ok((s, reached))) => {
            // The address the name gave: what telemetry reports as the destination.
            if let Some(u) = up.as_mut() {
                u.addr = reached;
            }
            s
        }
        Ok(Err(e)) => {
            let mut r = ConnectionRecord::open(info(ctx, me, peer, dst, up.as_ref(), "UF"));
            r.set_error(e);
            return None;
        }
        Err(_) => {
            let mut r = ConnectionRecord::open(info(ctx, me, peer, dst, up.as_ref(), "UF"));
            let what = named.unwrap_or_else(|| target.to_string());
            r.set_error(format!("connect {what}: timed out"));
            return None;
        }
    };
    let record = ConnectionRecord::open(info(ctx, me, peer, dst, up.as_ref(), "-"));
    Some(Ready::Plain {
        downstream,
        upstream,
        record,
    })
}

/// HBONE to the endpoint's ztunnel (or to the waypoint in front of it, asking for the original
/// destination), on a pooled connection when one is free.
async fn hbone(
    ctx: &PodContext,
    downstream: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    me: Option<Arc<Workload>>,
    up: Upstream,
) -> Option<Ready> {
    let hbone_addr = hbone_endpoint(&up);
    // The pool key and the CONNECT request (identities, baggage, traceparent: a few hundred
    // bytes of strings) are only needed to open the stream: scoped so they are freed before
    // the relay, which may hold the connection open for hours.
    let stream = {
        let dst_identity = up.workload.identity.clone();
        let key = (ctx.identity.clone(), dst_identity.clone(), hbone_addr);
        let request = ConnectRequest {
            authority: up.addr,
            forwarded_for: Some(peer.ip()),
            baggage: me.as_deref().map(baggage),
            traceparent: Some(new_traceparent()),
        };
        ctx.pool
            .stream(&key, &request, || dial(ctx, hbone_addr, dst_identity))
            .await
    };
    let stream = match stream {
        Ok(s) => s,
        Err(e) => {
            if let Some(reason) = e.rejection() {
                metrics::hbone_rejected("outbound", reason.as_str());
            }
            let flags = match &e {
                HboneError::Status(s) if s.as_u16() == 401 => "DENY",
                _ => "UF",
            };
            warn!(pod = %ctx.name, %dst, endpoint = %hbone_addr, error = %e, "HBONE connection failed");
            let mut r = ConnectionRecord::open(info(ctx, me, peer, dst, Some(&up), flags));
            r.set_error(e);
            return None;
        }
    };
    let (stream, guard) = stream.into_parts();
    let record = ConnectionRecord::open(info(ctx, me, peer, dst, Some(&up), "-"));
    Some(Ready::Tunnel {
        downstream,
        stream,
        _guard: guard,
        record,
    })
}

/// A new HBONE connection from the pod's namespace, as the pod's identity, expecting
/// `expected` on the other end.
async fn dial(
    ctx: &PodContext,
    addr: SocketAddr,
    expected: Identity,
) -> Result<HboneConnection, HboneError> {
    let cert = ctx
        .shared
        .certs
        .get(&ctx.identity, ctx.shared.cert_wait)
        .await
        .map_err(|e| HboneError::NoCertificate(e.to_string()))?;
    let config = tls::client_config(&cert, &ctx.shared.bundle, vec![expected])?;
    let tcp = tokio::time::timeout(
        ctx.shared.connect_timeout,
        socket::connect_in(&ctx.netns, addr),
    )
    .await
    .map_err(|_| HboneError::Timeout(ctx.shared.connect_timeout))?
    .map_err(|source| HboneError::Connect { addr, source })?;
    HboneConnection::handshake(tcp, addr, Arc::new(config), &ctx.shared.h2).await
}

/// W3C baggage describing the source workload, as Istio's ztunnel sends it.
fn baggage(w: &Workload) -> String {
    let mut parts = vec![
        format!("k8s.namespace.name={}", w.namespace),
        format!("k8s.pod.name={}", w.name),
    ];
    if !w.cluster_id.is_empty() {
        parts.push(format!("k8s.cluster.name={}", w.cluster_id));
    }
    if !w.canonical_name.is_empty() {
        parts.push(format!("service.name={}", w.canonical_name));
    }
    if !w.canonical_revision.is_empty() {
        parts.push(format!("service.version={}", w.canonical_revision));
    }
    parts.join(",")
}

/// A fresh W3C trace context (sampled flag off: ztunnel starts traces, it does not sample).
fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-00")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_w3c_shaped() {
        let t = new_traceparent();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "00")
        );
    }
}
