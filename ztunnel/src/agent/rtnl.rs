//! Links, addresses, routes and rules over rtnetlink: what the node agent needs in a pod's
//! namespace, and what the local runtime needs to build its network, with no `ip` binary.
//!
//! A socket acts in the namespace it was created in: open one inside the target namespace
//! (see [`Netns::run`](ztunnel::inpod::netns::Netns::run)).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use crate::inpod::netns::Netns;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    BridgeStpState, InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, constants::NETLINK_ROUTE};

#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("{op}: {source}")]
    Kernel { op: String, source: std::io::Error },
    #[error("no link named {0}")]
    NoLink(String),
    #[error("malformed netlink reply: {0}")]
    Decode(String),
}

/// An rtnetlink socket in one namespace.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

/// One link as a dump reports it.
#[derive(Clone, Debug)]
pub struct LinkSummary {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
}

impl Rtnl {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> Result<Self, RtnlError> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        Ok(Rtnl { socket, seq: 1 })
    }

    /// Opens a socket inside `netns`.
    pub fn open_in(netns: &Netns) -> Result<Self, RtnlError> {
        netns.run(Rtnl::open)?
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, RtnlError> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        self.seq += 1;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(header.sequence_number)
    }

    /// Sends a change and waits for the kernel's ack.
    fn change(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<(), RtnlError> {
        let seq = self.send(msg, NLM_F_ACK | flags)?;
        loop {
            for reply in self.receive()? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                if let NetlinkPayload::Error(e) = reply.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(code) => Err(RtnlError::Kernel {
                            op: op.to_string(),
                            source: std::io::Error::from_raw_os_error(-code.get()),
                        }),
                    };
                }
            }
        }
    }

    fn receive(&mut self) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, RtnlError> {
        let mut buf = Vec::with_capacity(64 * 1024);
        self.socket.recv(&mut buf, 0)?;
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < buf.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                .map_err(|e| RtnlError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            offset += len.next_multiple_of(4);
            out.push(msg);
        }
        Ok(out)
    }

    /// Index of a link in this namespace.
    pub fn index(&mut self, name: &str) -> Result<u32, RtnlError> {
        self.links()?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .ok_or_else(|| RtnlError::NoLink(name.to_string()))
    }

    /// Every link in this namespace.
    pub fn links(&mut self) -> Result<Vec<LinkSummary>, RtnlError> {
        let seq = self.send(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        loop {
            for reply in self.receive()? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(RtnlError::Decode(format!("link dump failed: {e:?}")));
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        let mut summary = LinkSummary {
                            index: link.header.index,
                            name: String::new(),
                            kind: None,
                        };
                        for attr in link.attributes {
                            match attr {
                                LinkAttribute::IfName(n) => summary.name = n,
                                LinkAttribute::LinkInfo(infos) => {
                                    for i in infos {
                                        if let LinkInfo::Kind(k) = i {
                                            summary.kind = Some(k.to_string());
                                        }
                                    }
                                }
                                _ => {}
                            }
                        }
                        out.push(summary);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Creates a veth pair; the peer is created directly inside `peer_netns` when given.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<&Netns>,
    ) -> Result<(), RtnlError> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        if let Some(ns) = peer_netns {
            peer_msg
                .attributes
                .push(LinkAttribute::NetNsFd(ns.fd().as_raw_fd()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.change(
            &format!("create veth {name}/{peer}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Deletes a link (a veth's peer goes with it).
    pub fn delete_link(&mut self, name: &str) -> Result<(), RtnlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = self.index(name)?;
        self.change(
            &format!("delete link {name}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
    }

    pub fn add_bridge(&mut self, name: &str) -> Result<(), RtnlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            // No spanning tree: ports forward at once.
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::StpState(
                BridgeStpState::Disabled,
            )])),
        ]));
        self.change(
            &format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Brings a link up, optionally attaching it to a bridge.
    pub fn set_up(&mut self, name: &str, master: Option<&str>) -> Result<(), RtnlError> {
        let index = self.index(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if let Some(m) = master {
            let m = self.index(m)?;
            msg.attributes.push(LinkAttribute::Controller(m));
        }
        self.change(
            &format!("set {name} up"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    pub fn add_address(&mut self, name: &str, ip: IpAddr, prefix: u8) -> Result<(), RtnlError> {
        let index = self.index(name)?;
        let mut msg = AddressMessage::default();
        msg.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        self.change(
            &format!("add {ip}/{prefix} to {name}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Adds an IPv4 route to `dst/prefix` via `gateway` (or directly on `dev`).
    pub fn add_route(
        &mut self,
        dst: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        dev: Option<&str>,
    ) -> Result<(), RtnlError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.header.kind = RouteType::Unicast;
        if prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        }
        if let Some(gw) = gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(dev) = dev {
            let index = self.index(dev)?;
            msg.attributes.push(RouteAttribute::Oif(index));
        }
        self.change(
            &format!("route {dst}/{prefix}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `ip [-6] rule add fwmark <mark>/<mask> lookup <table> priority <priority>`; an
    /// identical rule already present is fine.
    pub fn ensure_fwmark_rule(
        &mut self,
        family: AddressFamily,
        mark: u32,
        mask: u32,
        table: u32,
        priority: u32,
    ) -> Result<(), RtnlError> {
        let msg = fwmark_rule(family, mark, mask, table, priority);
        tolerate(
            self.change(
                "add fwmark rule",
                RouteNetlinkMessage::NewRule(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            libc::EEXIST,
        )
    }

    /// Removes that rule; an absent rule is fine.
    pub fn remove_fwmark_rule(
        &mut self,
        family: AddressFamily,
        mark: u32,
        mask: u32,
        table: u32,
        priority: u32,
    ) -> Result<(), RtnlError> {
        let msg = fwmark_rule(family, mark, mask, table, priority);
        tolerate(
            self.change("delete fwmark rule", RouteNetlinkMessage::DelRule(msg), 0),
            libc::ENOENT,
        )
    }

    /// `ip route add local 0.0.0.0/0 dev lo table <table>` (or `::/0`): everything looked up
    /// in that table is delivered locally. Already present is fine.
    pub fn ensure_local_default_route(
        &mut self,
        family: AddressFamily,
        table: u8,
    ) -> Result<(), RtnlError> {
        let msg = self.local_default_route(family, table)?;
        tolerate(
            self.change(
                "add local route",
                RouteNetlinkMessage::NewRoute(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            libc::EEXIST,
        )
    }

    /// Removes that route; absent is fine.
    pub fn remove_local_default_route(
        &mut self,
        family: AddressFamily,
        table: u8,
    ) -> Result<(), RtnlError> {
        let msg = self.local_default_route(family, table)?;
        tolerate(
            self.change("delete local route", RouteNetlinkMessage::DelRoute(msg), 0),
            libc::ESRCH,
        )
    }

    fn local_default_route(
        &mut self,
        family: AddressFamily,
        table: u8,
    ) -> Result<RouteMessage, RtnlError> {
        let lo = self.index("lo")?;
        let mut msg = RouteMessage::default();
        msg.header.address_family = family;
        msg.header.table = table;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = RouteScope::Host;
        msg.header.kind = RouteType::Local;
        msg.attributes.push(RouteAttribute::Oif(lo));
        Ok(msg)
    }
}

fn fwmark_rule(
    family: AddressFamily,
    mark: u32,
    mask: u32,
    table: u32,
    priority: u32,
) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = family;
    msg.header.action = RuleAction::ToTable;
    msg.attributes.push(RuleAttribute::FwMark(mark));
    msg.attributes.push(RuleAttribute::FwMask(mask));
    msg.attributes.push(RuleAttribute::Table(table));
    msg.attributes.push(RuleAttribute::Priority(priority));
    msg
}

/// Treats the kernel's `errno` answer as success (idempotent add or delete).
fn tolerate(result: Result<(), RtnlError>, errno: i32) -> Result<(), RtnlError> {
    match result {
        Err(RtnlError::Kernel { source, .. }) if source.raw_os_error() == Some(errno) => Ok(()),
        other => other,
    }
}
