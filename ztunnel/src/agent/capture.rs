//! The capture rules installed in each enrolled pod's network namespace (the job istio-cni
//! does with iptables, here as one nf_tables table written over netlink):
//!
//! ```text
//! table inet ambient {
//!   chain output {            # type nat hook output priority -100
//!     meta mark 0x539 accept          # the tunnel's own sockets
//!     oifname "lo" accept             # loopback, including the pod's own address
//!     meta l4proto tcp redirect to :15001
//!   }
//!   chain prerouting {        # type nat hook prerouting priority -100
//!     iifname "lo" accept
//!     meta mark 0x539 accept
//!     tcp dport 15008 accept          # HBONE goes straight to ztunnel's listener
//!     meta l4proto tcp redirect to :15006
//!   }
//! }
//! ```

use crate::inpod::netns::Netns;
use crate::proxy::socket::TUNNEL_MARK;
use crate::proxy::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};

use super::nftables::{
    Batch, Expr, Hook, MetaKey, NFPROTO_INET, NfSocket, NftError, PayloadBase, REG_1, Verdict,
    ifname,
};

/// The table every rule lives in; deleting it releases the pod.
pub const TABLE: &str = "ambient";
/// Netfilter's priority for destination NAT.
const NAT_DST_PRIORITY: i32 = -100;
const IPPROTO_TCP: u8 = 6;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("entering the pod's network namespace: {0}")]
    Netns(std::io::Error),
    #[error(transparent)]
    Nft(#[from] NftError),
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

/// Installs (or reinstalls, atomically replacing what was there) the capture rules.
pub fn install(netns: &Netns) -> Result<(), CaptureError> {
    let socket = socket_in(netns)?;
    let mark = TUNNEL_MARK.to_ne_bytes().to_vec();
    let mut b = Batch::new();
    // Create-then-delete makes the delete safe when the table is absent.
    b.add_table(NFPROTO_INET, TABLE);
    b.delete_table(NFPROTO_INET, TABLE);
    b.add_table(NFPROTO_INET, TABLE);
    b.add_nat_chain(
        NFPROTO_INET,
        TABLE,
        "output",
        Hook::LocalOut,
        NAT_DST_PRIORITY,
    );
    b.add_nat_chain(
        NFPROTO_INET,
        TABLE,
        "prerouting",
        Hook::PreRouting,
        NAT_DST_PRIORITY,
    );

    b.add_rule(
        NFPROTO_INET,
        TABLE,
        "output",
        &accept_if(meta(MetaKey::Mark), mark.clone()),
    );
    b.add_rule(
        NFPROTO_INET,
        TABLE,
        "output",
        &accept_if(meta(MetaKey::OifName), ifname("lo")),
    );
    b.add_rule(NFPROTO_INET, TABLE, "output", &tcp_redirect(OUTBOUND_PORT));

    b.add_rule(
        NFPROTO_INET,
        TABLE,
        "prerouting",
        &accept_if(meta(MetaKey::IifName), ifname("lo")),
    );
    b.add_rule(
        NFPROTO_INET,
        TABLE,
        "prerouting",
        &accept_if(meta(MetaKey::Mark), mark),
    );
    b.add_rule(
        NFPROTO_INET,
        TABLE,
        "prerouting",
        &[
            meta(MetaKey::L4Proto),
            Expr::CmpEq {
                sreg: REG_1,
                data: vec![IPPROTO_TCP],
            },
            Expr::Payload {
                base: PayloadBase::Transport,
                offset: 2,
                len: 2,
                dreg: REG_1,
            },
            Expr::CmpEq {
                sreg: REG_1,
                data: HBONE_PORT.to_be_bytes().to_vec(),
            },
            Expr::Verdict(Verdict::Accept),
        ],
    );
    b.add_rule(
        NFPROTO_INET,
        TABLE,
        "prerouting",
        &tcp_redirect(INBOUND_PLAINTEXT_PORT),
    );
    b.commit(&socket)?;
    Ok(())
}

/// Removes the capture rules (the pod leaves the mesh). Absent rules are not an error.
pub fn remove(netns: &Netns) -> Result<(), CaptureError> {
    let socket = socket_in(netns)?;
    let mut b = Batch::new();
    b.add_table(NFPROTO_INET, TABLE);
    b.delete_table(NFPROTO_INET, TABLE);
    b.commit(&socket)?;
    Ok(())
}

/// Whether the capture rules are present.
pub fn installed(netns: &Netns) -> Result<bool, CaptureError> {
    Ok(socket_in(netns)?.table_exists(NFPROTO_INET, TABLE)?)
}
