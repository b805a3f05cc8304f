//! Sockets as the tunnel makes them: inside a pod's namespace, carrying the mark that capture
//! rules exempt, and the original destination of redirected connections.

use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use crate::inpod::netns::Netns;

/// The packet mark on every socket ztunnel opens (istio-cni's `InpodMark`); capture rules let
/// marked traffic pass, and stamp marked connections into the pod so the app's replies come
/// back (`agent::capture`).
pub const TUNNEL_MARK: u32 = 0x539;

/// Backlog for in-pod listeners.
const BACKLOG: i32 = 1024;

fn new_socket(netns: &Netns, addr: &SocketAddr) -> std::io::Result<Socket> {
    new_socket_of(netns, addr, Type::STREAM, Protocol::TCP)
}

fn new_socket_of(
    netns: &Netns,
    addr: &SocketAddr,
    ty: Type,
    protocol: Protocol,
) -> std::io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = netns.run(|| Socket::new(domain, ty.nonblocking(), Some(protocol)))??;
    socket.set_mark(TUNNEL_MARK)?;
    Ok(socket)
}

/// A listener bound to `addr` inside `netns`. It is transparent, so that istio-cni's TPROXY
/// rules (which deliver only to transparent sockets) reach it as well as our `redirect`. It
/// shares its port (`SO_REUSEPORT`) so that a new ztunnel process can listen beside this one
/// before this one closes: with the pod's `tcp_migrate_req` on (the node agent sets it), the
/// connections queued on a closing listener move to the other instead of being reset.
pub fn listen_in(netns: &Netns, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = new_socket(netns, &addr)?;
    set_transparent(&socket, &addr)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A UDP socket bound to `addr` inside `netns`, sharing its port as [`listen_in`]'s do.
pub fn udp_in(netns: &Netns, addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = new_socket_of(netns, &addr, Type::DGRAM, Protocol::UDP)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Connects to `dst` from inside `netns`, with the tunnel mark so capture lets it through.
pub async fn connect_in(netns: &Netns, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = new_socket(netns, &dst)?;
    socket.set_tcp_nodelay(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.connect(dst).await
}

/// Connects to the app at `dst` from inside `netns`, appearing to come from `src`'s address
/// (a transparent socket), so the app sees its real client.
pub async fn connect_as(netns: &Netns, src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    if src.is_ipv4() != dst.is_ipv4() || src.is_unspecified() {
        return connect_in(netns, dst).await;
    }
    let socket = new_socket(netns, &dst)?;
    set_transparent(&socket, &dst)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&SocketAddr::new(src, 0).into())?;
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.connect(dst).await
}

fn set_transparent(socket: &Socket, addr: &SocketAddr) -> std::io::Result<()> {
    if addr.is_ipv4() {
        socket.set_ip_transparent_v4(true)
    } else {
        socket.set_ip_transparent_v6(true)
    }
}

/// Where a redirected connection was going before capture sent it to us.
pub fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "original destination is not IP",
        )
    })
}
