//! The capture rules installed in each enrolled pod's network namespace (the job istio-cni
//! does with iptables, here as one nf_tables table and one routing rule, written over
//! netlink):
//!
//! ```text
//! table inet ambient {
//!   chain output {            # type nat hook output priority -100
//!     meta mark 0x539 accept          # the tunnel's own sockets
//!     udp dport 53 redirect to :15053 # DNS, to any nameserver (loopback ones too)
//!     tcp dport 53 redirect to :15053
//!     oifname "lo" accept             # loopback, including the pod's own address
//!     meta l4proto tcp redirect to :15001
//!   }
//!   chain prerouting {        # type nat hook prerouting priority -100
//!     iifname "lo" accept
//!     meta mark 0x539 accept
//!     tcp dport 15008 accept          # HBONE goes straight to ztunnel's listener
//!     meta l4proto tcp redirect to :15006
//!   }
//!   chain route_output {      # type route hook output priority -150
//!     meta mark 0x111 ct mark set 0x111   # ztunnel → app, from the client's own address
//!     ct mark 0x111 meta mark set 0x111   # the app's replies on those connections
//!   }
//! }
//! ip rule fwmark 0x111/0xfff lookup 133;  ip route add local 0.0.0.0/0 dev lo table 133
//! ```
//!
//! The last two pieces keep the client's address visible to the app: ztunnel connects to the
//! app from a transparent socket bound to the client's address, and the app's replies to
//! that (non-local) address are routed back into the pod to ztunnel instead of out of it.

use crate::inpod::netns::Netns;
use crate::proxy::socket::{TRANSPARENT_MARK, TUNNEL_MARK};
use crate::proxy::{DNS_PORT, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};

use super::nftables::{
    Batch, ChainType, CtKey, Expr, Hook, MetaKey, NFPROTO_INET, NfSocket, NftError, PayloadBase,
    REG_1, Verdict, ifname,
};
use super::rtnl::{Rtnl, RtnlError};

/// The table every rule lives in; deleting it releases the pod.
pub const TABLE: &str = "ambient";
/// Routing table that delivers marked replies locally.
pub const ROUTE_TABLE: u8 = 133;
/// Priority of the fwmark rule: after `local` (0), before `main` (32766).
pub const RULE_PRIORITY: u32 = 32000;
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

fn accept_if(load: Expr, value: Vec<u8>) -> Vec<Expr> {
    vec![
        load,
        Expr::CmpEq {
            sreg: REG_1,
            data: value,
        },
        Expr::Verdict(Verdict::Accept),
    ]
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

/// "if `load` equals the transparent mark, store the mark with `store`".
fn copy_mark(load: Expr, store: Expr) -> Vec<Expr> {
    let mark = TRANSPARENT_MARK.to_ne_bytes().to_vec();
    vec![
        load,
        Expr::CmpEq {
            sreg: REG_1,
            data: mark.clone(),
        },
        Expr::Immediate {
            dreg: REG_1,
            data: mark,
        },
        store,
    ]
}

/// Installs (or reinstalls, atomically replacing what was there) the capture rules.
pub fn install(netns: &Netns) -> Result<(), CaptureError> {
    let socket = socket_in(netns)?;
    let mark = TUNNEL_MARK.to_ne_bytes().to_vec();
    let (family, t) = (NFPROTO_INET, TABLE);
    let mut b = Batch::new();
    // Create-then-delete makes the delete safe when the table is absent.
    b.add_table(family, t);
    b.delete_table(family, t);
    b.add_table(family, t);
    b.add_base_chain(
        family,
        t,
        "output",
        ChainType::Nat,
        Hook::LocalOut,
        NAT_DST_PRIORITY,
    );
    b.add_base_chain(
        family,
        t,
        "prerouting",
        ChainType::Nat,
        Hook::PreRouting,
        NAT_DST_PRIORITY,
    );
    b.add_base_chain(
        family,
        t,
        "route_output",
        ChainType::Route,
        Hook::LocalOut,
        MANGLE_PRIORITY,
    );

    b.add_rule(
        family,
        t,
        "output",
        &accept_if(meta(MetaKey::Mark), mark.clone()),
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
        &accept_if(meta(MetaKey::Mark), mark),
    );
    b.add_rule(
        family,
        t,
        "prerouting",
        &[
            dport_is(IPPROTO_TCP, HBONE_PORT),
            vec![Expr::Verdict(Verdict::Accept)],
        ]
        .concat(),
    );
    b.add_rule(
        family,
        t,
        "prerouting",
        &tcp_redirect(INBOUND_PLAINTEXT_PORT),
    );

    b.add_rule(
        family,
        t,
        "route_output",
        &copy_mark(
            meta(MetaKey::Mark),
            Expr::CtSet {
                key: CtKey::Mark,
                sreg: REG_1,
            },
        ),
    );
    b.add_rule(
        family,
        t,
        "route_output",
        &copy_mark(
            Expr::CtGet {
                key: CtKey::Mark,
                dreg: REG_1,
            },
            Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: REG_1,
            },
        ),
    );
    b.commit(&socket)?;

    let mut rtnl = Rtnl::open_in(netns).map_err(route_error)?;
    rtnl.ensure_local_default_route(ROUTE_TABLE)?;
    rtnl.ensure_fwmark_rule(
        TRANSPARENT_MARK,
        MARK_MASK,
        u32::from(ROUTE_TABLE),
        RULE_PRIORITY,
    )?;
    Ok(())
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
    rtnl.remove_fwmark_rule(
        TRANSPARENT_MARK,
        MARK_MASK,
        u32::from(ROUTE_TABLE),
        RULE_PRIORITY,
    )?;
    rtnl.remove_local_default_route(ROUTE_TABLE)?;
    Ok(())
}

/// Whether the capture rules are present.
pub fn installed(netns: &Netns) -> Result<bool, CaptureError> {
    Ok(socket_in(netns)?.table_exists(NFPROTO_INET, TABLE)?)
}
