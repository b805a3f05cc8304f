//! Just enough of the nf_tables netlink protocol to install and remove one table of rules,
//! with no `nft` binary and no C library.
//!
//! Messages are built by hand: netlink header, `nfgenmsg`, then attributes (numeric ones in
//! network byte order, as nf_tables expects). Changes go in one batch, which the kernel
//! applies atomically.

use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::TimeVal;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

/// Address family of an `inet` table (both IPv4 and IPv6).
pub const NFPROTO_INET: u8 = 1;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

/// Netfilter hooks.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    PreRouting = 0,
    LocalOut = 3,
}

/// The first general-purpose 128-bit register.
pub const REG_1: u32 = 1;
/// The second, for a value kept while a masked copy of it is compared.
pub const REG_2: u32 = 2;
const REG_VERDICT: u32 = 0;

/// `meta` keys used here.
#[derive(Clone, Copy, Debug)]
pub enum MetaKey {
    Mark = 3,
    IifName = 6,
    OifName = 7,
    L4Proto = 16,
}

/// Where a `payload` load starts.
#[derive(Clone, Copy, Debug)]
pub enum PayloadBase {
    Transport = 2,
}

/// Verdicts (`NF_ACCEPT` etc.).
#[derive(Clone, Copy, Debug)]
pub enum Verdict {
    Accept = 1,
}

/// One nf_tables expression.
#[derive(Clone, Debug)]
pub enum Expr {
    /// Load packet metadata into `dreg`.
    Meta { key: MetaKey, dreg: u32 },
    /// Load `len` bytes at `offset` of a header into `dreg`.
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// Continue only if `sreg` equals `data`.
    CmpEq { sreg: u32, data: Vec<u8> },
    /// Put `data` into `dreg`.
    Immediate { dreg: u32, data: Vec<u8> },
    /// Stop with a verdict.
    Verdict(Verdict),
    /// Redirect to the local port held (big-endian) in `port_reg`.
    Redirect { port_reg: u32 },
    /// Set packet metadata from `sreg`.
    MetaSet { key: MetaKey, sreg: u32 },
    /// Load connection-tracking state into `dreg`.
    CtGet { key: CtKey, dreg: u32 },
    /// Set connection-tracking state from `sreg`.
    CtSet { key: CtKey, sreg: u32 },
    /// `dreg = (sreg & mask) ^ xor`, on `mask.len()` bytes (`mask` and `xor` alike long).
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
}

/// `ct` keys used here.
#[derive(Clone, Copy, Debug)]
pub enum CtKey {
    Mark = 3,
}

/// Base chain types.
#[derive(Clone, Copy, Debug)]
pub enum ChainType {
    /// Plain matching and marking (iptables' mangle on PREROUTING).
    Filter,
    /// Address translation (redirect).
    Nat,
    /// Like filter, but a changed mark re-routes the packet.
    Route,
}

impl ChainType {
    fn as_str(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("nf_tables refused the change: {0}")]
    Kernel(std::io::Error),
    #[error("malformed netlink reply")]
    Malformed,
}

/// Appends netlink attributes to a message buffer.
struct Attrs<'a>(&'a mut Vec<u8>);

impl Attrs<'_> {
    fn raw(&mut self, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn str(&mut self, kind: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.raw(kind, &v);
    }

    fn be32(&mut self, kind: u16, v: u32) {
        self.raw(kind, &v.to_be_bytes());
    }

    fn nested(&mut self, kind: u16, f: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        f(&mut Attrs(self.0));
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.pad();
    }

    fn expr(&mut self, e: &Expr) {
        self.nested(NFTA_LIST_ELEM, |elem| {
            elem.str(NFTA_EXPR_NAME, e.name());
            elem.nested(NFTA_EXPR_DATA, |d| e.encode(d));
        });
    }
}

impl Expr {
    /// The kernel module's name for the expression.
    fn name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::CtGet { .. } | Expr::CtSet { .. } => "ct",
            Expr::Payload { .. } => "payload",
            Expr::CmpEq { .. } => "cmp",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Redirect { .. } => "redir",
            Expr::Bitwise { .. } => "bitwise",
        }
    }

    /// The expression's own attributes (`NFTA_<NAME>_*`).
    fn encode(&self, a: &mut Attrs<'_>) {
        match self {
            Expr::Meta { key, dreg } => {
                a.be32(1, *dreg); // NFTA_META_DREG
                a.be32(2, *key as u32); // NFTA_META_KEY
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                a.be32(1, *dreg); // NFTA_PAYLOAD_DREG
                a.be32(2, *base as u32); // NFTA_PAYLOAD_BASE
                a.be32(3, *offset); // NFTA_PAYLOAD_OFFSET
                a.be32(4, *len); // NFTA_PAYLOAD_LEN
            }
            Expr::CmpEq { sreg, data } => {
                a.be32(1, *sreg); // NFTA_CMP_SREG
                a.be32(2, 0); // NFTA_CMP_OP = NFT_CMP_EQ
                a.nested(3, |d| d.raw(NFTA_DATA_VALUE, data)); // NFTA_CMP_DATA
            }
            Expr::Immediate { dreg, data } => {
                a.be32(1, *dreg); // NFTA_IMMEDIATE_DREG
                a.nested(2, |d| d.raw(NFTA_DATA_VALUE, data)); // NFTA_IMMEDIATE_DATA
            }
            Expr::Verdict(v) => {
                a.be32(1, REG_VERDICT);
                a.nested(2, |d| {
                    d.nested(NFTA_DATA_VERDICT, |v2| {
                        v2.be32(NFTA_VERDICT_CODE, *v as u32)
                    })
                });
            }
            Expr::Redirect { port_reg } => {
                a.be32(1, *port_reg); // NFTA_REDIR_REG_PROTO_MIN
                a.be32(2, *port_reg); // NFTA_REDIR_REG_PROTO_MAX
            }
            Expr::MetaSet { key, sreg } => {
                a.be32(2, *key as u32); // NFTA_META_KEY
                a.be32(3, *sreg); // NFTA_META_SREG
            }
            Expr::CtGet { key, dreg } => {
                a.be32(1, *dreg); // NFTA_CT_DREG
                a.be32(2, *key as u32); // NFTA_CT_KEY
            }
            Expr::CtSet { key, sreg } => {
                a.be32(2, *key as u32); // NFTA_CT_KEY
                a.be32(4, *sreg); // NFTA_CT_SREG
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                a.be32(1, *sreg); // NFTA_BITWISE_SREG
                a.be32(2, *dreg); // NFTA_BITWISE_DREG
                a.be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
                a.nested(4, |d| d.raw(NFTA_DATA_VALUE, mask)); // NFTA_BITWISE_MASK
                a.nested(5, |d| d.raw(NFTA_DATA_VALUE, xor)); // NFTA_BITWISE_XOR
            }
        }
    }
}

/// A batch of nf_tables changes, applied atomically by [`Batch::commit`].
pub struct Batch {
    buf: Vec<u8>,
    next_seq: u32,
    acked: Vec<u32>,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        let mut b = Batch {
            buf: Vec::with_capacity(4096),
            next_seq: 1,
            acked: Vec::new(),
        };
        b.message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        b
    }

    fn message(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        attrs: impl FnOnce(&mut Attrs<'_>),
    ) -> u32 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]); // length, patched below
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        attrs(&mut Attrs(&mut self.buf));
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        seq
    }

    fn change(&mut self, msg: u16, flags: u16, family: u8, attrs: impl FnOnce(&mut Attrs<'_>)) {
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        let seq = self.message(kind, NLM_F_REQUEST | NLM_F_ACK | flags, family, 0, attrs);
        self.acked.push(seq);
    }

    pub fn add_table(&mut self, family: u8, name: &str) {
        self.change(NFT_MSG_NEWTABLE, NLM_F_CREATE, family, |a| {
            a.str(NFTA_TABLE_NAME, name)
        });
    }

    pub fn delete_table(&mut self, family: u8, name: &str) {
        self.change(NFT_MSG_DELTABLE, 0, family, |a| {
            a.str(NFTA_TABLE_NAME, name)
        });
    }

    /// A base chain of `kind` on `hook` with accept policy.
    pub fn add_base_chain(
        &mut self,
        family: u8,
        table: &str,
        name: &str,
        kind: ChainType,
        hook: Hook,
        priority: i32,
    ) {
        self.change(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family, |a| {
            a.str(NFTA_CHAIN_TABLE, table);
            a.str(NFTA_CHAIN_NAME, name);
            a.nested(NFTA_CHAIN_HOOK, |h| {
                h.be32(NFTA_HOOK_HOOKNUM, hook as u32);
                h.be32(NFTA_HOOK_PRIORITY, priority as u32);
            });
            a.be32(NFTA_CHAIN_POLICY, Verdict::Accept as u32);
            a.str(NFTA_CHAIN_TYPE, kind.as_str());
        });
    }

    /// Appends a rule made of `exprs` to a chain.
    pub fn add_rule(&mut self, family: u8, table: &str, chain: &str, exprs: &[Expr]) {
        self.change(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family, |a| {
            a.str(NFTA_RULE_TABLE, table);
            a.str(NFTA_RULE_CHAIN, chain);
            a.nested(NFTA_RULE_EXPRESSIONS, |list| {
                for e in exprs {
                    list.expr(e);
                }
            });
        });
    }

    /// Sends the batch over `socket` and waits for every change to be acknowledged.
    pub fn commit(mut self, socket: &NfSocket) -> Result<(), NftError> {
        self.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        socket.socket.send(&self.buf, 0)?;
        let mut waiting: std::collections::BTreeSet<u32> = self.acked.into_iter().collect();
        while !waiting.is_empty() {
            for (seq, errno) in socket.receive_acks()? {
                if errno != 0 {
                    return Err(NftError::Kernel(std::io::Error::from_raw_os_error(-errno)));
                }
                waiting.remove(&seq);
            }
        }
        Ok(())
    }
}

/// A netlink socket to nf_tables, in the namespace it was created in.
pub struct NfSocket {
    socket: Socket,
}

impl NfSocket {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn open() -> Result<Self, NftError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        // Never hang on a kernel that does not answer.
        setsockopt(&socket, ReceiveTimeout, &TimeVal::new(5, 0)).map_err(std::io::Error::from)?;
        Ok(NfSocket { socket })
    }

    /// Reads one datagram of replies: (sequence, errno) for every ack or error in it; other
    /// messages are skipped.
    fn receive_acks(&self) -> Result<Vec<(u32, i32)>, NftError> {
        let mut buf = Vec::with_capacity(64 * 1024);
        self.socket.recv(&mut buf, 0)?;
        let mut out = Vec::new();
        let mut rest = buf.as_slice();
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            if len < 16 || len > rest.len() {
                return Err(NftError::Malformed);
            }
            let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
            let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
            if kind == NLMSG_ERROR {
                if len < 20 {
                    return Err(NftError::Malformed);
                }
                let errno = i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
                out.push((seq, errno));
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
        Ok(out)
    }

    /// Whether a table exists.
    pub fn table_exists(&self, family: u8, name: &str) -> Result<bool, NftError> {
        let mut b = Batch {
            buf: Vec::new(),
            next_seq: 1,
            acked: Vec::new(),
        };
        let seq = b.message(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
            NLM_F_REQUEST | NLM_F_ACK,
            family,
            0,
            |a| a.str(NFTA_TABLE_NAME, name),
        );
        self.socket.send(&b.buf, 0)?;
        loop {
            for (s, errno) in self.receive_acks()? {
                if s != seq {
                    continue;
                }
                return match errno {
                    0 => Ok(true),
                    e if -e == libc::ENOENT => Ok(false),
                    e => Err(NftError::Kernel(std::io::Error::from_raw_os_error(-e))),
                };
            }
        }
    }
}

/// A 16-byte interface name, as `meta iifname/oifname` compare it.
pub fn ifname(name: &str) -> Vec<u8> {
    let mut v = vec![0u8; 16];
    v[..name.len()].copy_from_slice(name.as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_aligned_and_length_prefixed() {
        let mut b = Batch::new();
        b.add_table(NFPROTO_INET, "ambient");
        b.add_rule(
            NFPROTO_INET,
            "ambient",
            "output",
            &[
                Expr::Meta {
                    key: MetaKey::L4Proto,
                    dreg: REG_1,
                },
                Expr::CmpEq {
                    sreg: REG_1,
                    data: vec![6],
                },
                Expr::Verdict(Verdict::Accept),
            ],
        );
        // Walk the buffer: every message length is a multiple of 4 and they tile it exactly.
        let mut rest = b.buf.as_slice();
        let mut count = 0;
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            rest = &rest[len..];
            count += 1;
        }
        assert_eq!(count, 3, "begin, table, rule");
        assert_eq!(b.acked, vec![2, 3]);
    }
}
