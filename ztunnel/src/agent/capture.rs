//! The capture rules installed in each enrolled pod's network namespace (the job istio-cni
//! does with iptables, here as one nf_tables table and one routing rule, written over
//! netlink). Marks, connmark, routing table and rule priority are istio-cni's in-pod scheme,
//! so Istio's ztunnel works behind this node agent and ours behind istio-cni:
//!
//! ```text
//! table inet ambient {
//!   chain prerouting_mark {   # type filter hook prerouting priority -150  (mangle)
//!     meta mark & 0xfff == 0x539 ct mark set ct mark & ~0xfff ^ 0x111
//!   }
//!   chain route_output {      # type route hook output priority -150       (mangle)
//!     ct mark & 0xfff == 0x111 meta mark set ct mark
//!   }
//!   chain output {            # type nat hook output priority -100
//!     meta mark & 0xfff == 0x539 accept   # the tunnel's own sockets
//!     meta l4proto tcp meta mark & 0xfff == 0x111 accept
//!     udp dport 53 redirect to :15053     # DNS, to any nameserver (loopback ones too)
//!     tcp dport 53 redirect to :15053
//!     oifname "lo" accept                 # loopback, including the pod's own address
//!     meta l4proto tcp redirect to :15001
//!   }
//!   chain prerouting {        # type nat hook prerouting priority -100
//!     iifname "lo" accept
//!     meta mark & 0xfff == 0x539 accept
//!     tcp dport 15008 accept              # HBONE goes straight to ztunnel's listener
//!     meta l4proto tcp redirect to :15006
//!   }
//! }
//! ip rule add fwmark 0x111/0xfff pref 32764 lookup 100        # and `ip -6` alike
//! ip route add local 0.0.0.0/0 dev lo table 100             # and `local ::/0`
//! ```
//!
//! The marking and routing keep the client's address visible to the app: ztunnel connects to
//! the app from a transparent socket bound to the client's address and marked 0x539 like all
//! its sockets; the SYN comes back in over `lo`, where PREROUTING stamps the connection 0x111.
//! The app's replies to that (non-local) address get the mark back in OUTPUT, and the
//! fwmark rule routes them into the pod's own `lo`, to ztunnel, instead of out of the pod.
//! istio-cni intercepts inbound traffic with TPROXY where this uses `redirect`; ztunnel's
//! in-pod listeners accept both (see `proxy::socket`).

use crate::inpod::netns::Netns;
use crate::proxy::socket::TUNNEL_MARK;
use crate::proxy::{DNS_PORT, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};

use super::nftables::{
    Batch, ChainType, CtKey, Expr, Hook, MetaKey, NFPROTO_INET, NfSocket, NftError, PayloadBase,
    REG_1, REG_2, Verdict, ifname,
};
use super::rtnl::{Rtnl, RtnlError};
use netlink_packet_route::AddressFamily;

/// The table every rule lives in; deleting it releases the pod.
pub const TABLE: &str = "ambient";
/// The connection mark (and restored packet mark) of ztunnel's connections to an app; the
/// fwmark rule routes packets carrying it to the pod's own `lo` (istio-cni's
/// `InpodTProxyMark`).
pub const REPLY_MARK: u32 = 0x111;
/// Routing table that delivers marked replies locally (istio-cni's `RouteTableInbound`).
pub const ROUTE_TABLE: u8 = 100;
/// Priority of the fwmark rule: after `local` (0), before `main` (32766); istio-cni's.
pub const RULE_PRIORITY: u32 = 32764;
/// The bits of the packet and connection marks the scheme owns; the rest belong to others.
const MARK_MASK: u32 = 0xfff;
/// Netfilter's priorities for destination NAT and for mangling.
const NAT_DST_PRIORITY: i32 = -100;
const MANGLE_PRIORITY: i32 = -150;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Where pods send DNS queries.
const DNS_SERVER_PORT: u16 = 53;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("entering the pod's network namespace: {0}")]
    Netns(std::io::Error),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("routing: {0}")]
    Route(#[from] RtnlError),
}

fn socket_in(netns: &Netns) -> Result<NfSocket, CaptureError> {
    netns
        .run(NfSocket::open)
        .map_err(CaptureError::Netns)?
        .map_err(Into::into)
}

/// "if `load` equals `value`".
fn is(load: Expr, value: Vec<u8>) -> Vec<Expr> {
    vec![
        load,
        Expr::CmpEq {
            sreg: REG_1,
            data: value,
        },
    ]
}

fn accept_if(load: Expr, value: Vec<u8>) -> Vec<Expr> {
    let mut exprs = is(load, value);
    exprs.push(accept());
    exprs
}

fn meta(key: MetaKey) -> Expr {
    Expr::Meta { key, dreg: REG_1 }
}

fn tcp_redirect(port: u16) -> Vec<Expr> {
    vec![
        meta(MetaKey::L4Proto),
        Expr::CmpEq {
            sreg: REG_1,
            data: vec![IPPROTO_TCP],
        },
        Expr::Immediate {
            dreg: REG_1,
            data: port.to_be_bytes().to_vec(),
        },
        Expr::Redirect { port_reg: REG_1 },
    ]
}

/// "if the packet is `protocol` (TCP or UDP) to destination port `port`".
fn dport_is(protocol: u8, port: u16) -> Vec<Expr> {
    vec![
        meta(MetaKey::L4Proto),
        Expr::CmpEq {
            sreg: REG_1,
            data: vec![protocol],
        },
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
            dreg: REG_1,
        },
        Expr::CmpEq {
            sreg: REG_1,
            data: port.to_be_bytes().to_vec(),
        },
    ]
}

/// `<protocol> dport <port> redirect to :<to>`.
fn dport_redirect(protocol: u8, port: u16, to: u16) -> Vec<Expr> {
    let mut exprs = dport_is(protocol, port);
    exprs.extend([
        Expr::Immediate {
            dreg: REG_1,
            data: to.to_be_bytes().to_vec(),
        },
        Expr::Redirect { port_reg: REG_1 },
    ]);
    exprs
}

/// "if `load` & [`MARK_MASK`] equals `value`", leaving `load`'s full value in `REG_1`.
fn masked_is(load: Expr, value: u32) -> Vec<Expr> {
    vec![
        load,
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_2,
            mask: MARK_MASK.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::CmpEq {
            sreg: REG_2,
            data: value.to_ne_bytes().to_vec(),
        },
    ]
}

fn meta_mark() -> Expr {
    meta(MetaKey::Mark)
}

fn ct_mark() -> Expr {
    Expr::CtGet {
        key: CtKey::Mark,
        dreg: REG_1,
    }
}

fn accept() -> Expr {
    Expr::Verdict(Verdict::Accept)
}

/// Installs (or reinstalls, atomically replacing what was there) the capture rules.
pub fn install(netns: &Netns) -> Result<(), CaptureError> {
    let socket = socket_in(netns)?;
    let (family, t) = (NFPROTO_INET, TABLE);
    let mut b = Batch::new();
    // Create-then-delete makes the delete safe when the table is absent.
    b.add_table(family, t);
    b.delete_table(family, t);
    b.add_table(family, t);
    let chains = [
        (
            "prerouting_mark",
            ChainType::Filter,
            Hook::PreRouting,
            MANGLE_PRIORITY,
        ),
        (
            "route_output",
            ChainType::Route,
            Hook::LocalOut,
            MANGLE_PRIORITY,
        ),
        ("output", ChainType::Nat, Hook::LocalOut, NAT_DST_PRIORITY),
        (
            "prerouting",
            ChainType::Nat,
            Hook::PreRouting,
            NAT_DST_PRIORITY,
        ),
    ];
    for (name, kind, hook, priority) in chains {
        b.add_base_chain(family, t, name, kind, hook, priority);
    }

    // ztunnel's connections that loop back into the pod (to the app) are stamped 0x111;
    // `ct mark set (ct mark & ~mask) ^ 0x111` keeps the bits outside the mask, like CONNMARK.
    let mut stamp = masked_is(meta_mark(), TUNNEL_MARK);
    stamp.extend([
        ct_mark(),
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: (!MARK_MASK).to_ne_bytes().to_vec(),
            xor: REPLY_MARK.to_ne_bytes().to_vec(),
        },
        Expr::CtSet {
            key: CtKey::Mark,
            sreg: REG_1,
        },
    ]);
    b.add_rule(family, t, "prerouting_mark", &stamp);
    // Every packet of such a connection leaving a socket here (the app's replies above all)
    // gets the connection's mark back, which re-routes it by the fwmark rule.
    let mut restore = masked_is(ct_mark(), REPLY_MARK);
    restore.push(Expr::MetaSet {
        key: MetaKey::Mark,
        sreg: REG_1,
    });
    b.add_rule(family, t, "route_output", &restore);

    b.add_rule(
        family,
        t,
        "output",
        &[masked_is(meta_mark(), TUNNEL_MARK), vec![accept()]].concat(),
    );
    b.add_rule(
        family,
        t,
        "output",
        &[
            is(meta(MetaKey::L4Proto), vec![IPPROTO_TCP]),
            masked_is(meta_mark(), REPLY_MARK),
            vec![accept()],
        ]
        .concat(),
    );
    // Before the loopback exemption, so that a stub resolver on 127.0.0.53 is captured too.
    for protocol in [IPPROTO_UDP, IPPROTO_TCP] {
        b.add_rule(
            family,
            t,
            "output",
            &dport_redirect(protocol, DNS_SERVER_PORT, DNS_PORT),
        );
    }
    b.add_rule(
        family,
        t,
        "output",
        &accept_if(meta(MetaKey::OifName), ifname("lo")),
    );
    b.add_rule(family, t, "output", &tcp_redirect(OUTBOUND_PORT));

    b.add_rule(
        family,
        t,
        "prerouting",
        &accept_if(meta(MetaKey::IifName), ifname("lo")),
    );
    b.add_rule(
        family,
        t,
        "prerouting",
        &[masked_is(meta_mark(), TUNNEL_MARK), vec![accept()]].concat(),
    );
    b.add_rule(
        family,
        t,
        "prerouting",
        &[dport_is(IPPROTO_TCP, HBONE_PORT), vec![accept()]].concat(),
    );
    b.add_rule(
        family,
        t,
        "prerouting",
        &tcp_redirect(INBOUND_PLAINTEXT_PORT),
    );
    b.commit(&socket)?;

    let mut rtnl = Rtnl::open_in(netns).map_err(route_error)?;
    install_routing(&mut rtnl, AddressFamily::Inet)?;
    // IPv6 where the pod has it (istio-cni does the same when IPv6 is on); a namespace
    // without IPv6 refuses the route, and then nothing there speaks IPv6 to reply to.
    if let Err(e) = install_routing(&mut rtnl, AddressFamily::Inet6) {
        tracing::debug!(error = %e, "no IPv6 routing for original-source replies");
    }
    // Not a capture rule, but what a ztunnel restart needs from the pod: ztunnel's listeners
    // share their ports with the next process's, and with this on, connections queued on a
    // listener that closes move to the other one instead of being reset. Without it (an older
    // kernel) a restart may reset the few connections in flight, nothing worse.
    if let Err(e) = netns
        .run(|| std::fs::write(TCP_MIGRATE_REQ, "1"))
        .and_then(|r| r)
    {
        tracing::warn!(error = %e, "cannot set {TCP_MIGRATE_REQ}: a ztunnel restart may reset queued connections");
    }
    Ok(())
}

/// Per network namespace (read and written through the calling thread's namespace).
pub const TCP_MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// The reply route and the fwmark rule of one address family.
fn install_routing(rtnl: &mut Rtnl, family: AddressFamily) -> Result<(), RtnlError> {
    rtnl.ensure_local_default_route(family, ROUTE_TABLE)?;
    rtnl.ensure_fwmark_rule(
        family,
        REPLY_MARK,
        MARK_MASK,
        u32::from(ROUTE_TABLE),
        RULE_PRIORITY,
    )
}

fn route_error(e: RtnlError) -> CaptureError {
    CaptureError::Route(e)
}

/// Removes the capture rules (the pod leaves the mesh). Absent rules are not an error.
pub fn remove(netns: &Netns) -> Result<(), CaptureError> {
    let socket = socket_in(netns)?;
    let mut b = Batch::new();
    b.add_table(NFPROTO_INET, TABLE);
    b.delete_table(NFPROTO_INET, TABLE);
    b.commit(&socket)?;
    let mut rtnl = Rtnl::open_in(netns)?;
    remove_routing(&mut rtnl, AddressFamily::Inet)?;
    if let Err(e) = remove_routing(&mut rtnl, AddressFamily::Inet6) {
        tracing::debug!(error = %e, "no IPv6 routing to remove");
    }
    Ok(())
}

fn remove_routing(rtnl: &mut Rtnl, family: AddressFamily) -> Result<(), RtnlError> {
    rtnl.remove_fwmark_rule(
        family,
        REPLY_MARK,
        MARK_MASK,
        u32::from(ROUTE_TABLE),
        RULE_PRIORITY,
    )?;
    rtnl.remove_local_default_route(family, ROUTE_TABLE)
}

/// Whether the capture rules are present.
pub fn installed(netns: &Netns) -> Result<bool, CaptureError> {
    Ok(socket_in(netns)?.table_exists(NFPROTO_INET, TABLE)?)
}
