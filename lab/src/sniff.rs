//! A packet capture for tests: an AF_PACKET socket in one namespace records every frame on
//! every link there, so a test can prove what did (and did not) cross the wire.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType, recvfrom, setsockopt, socket,
    sockopt::ReceiveTimeout,
};
use nix::sys::time::TimeVal;
use ztunnel::inpod::netns::Netns;

/// Frames seen leaving a host (as opposed to arriving) are marked outgoing by the kernel.
const PACKET_OUTGOING: u8 = 4;

/// One captured frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub ifindex: i32,
    pub data: Vec<u8>,
}

/// A TCP segment decoded from a frame.
#[derive(Clone, Debug)]
pub struct TcpSegment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// A running capture.
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Frame>>,
}

impl Sniffer {
    /// Starts capturing in `netns` (all links, each frame once: arrivals only).
    pub fn start(netns: &Netns) -> std::io::Result<Self> {
        let fd = netns.run(|| {
            socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
        })??;
        setsockopt(&fd, ReceiveTimeout, &TimeVal::new(0, 100_000))?;
        // A large buffer, so a busy machine drops fewer frames (forcing past rmem_max works
        // as root of the sandbox; otherwise the default size stays).
        let _ = setsockopt(&fd, nix::sys::socket::sockopt::RcvBufForce, &(32 << 20));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536 + 64];
            // Once asked to stop, read on until the queue is empty, so every frame queued
            // before `finish` is kept (bounded, in case the link never goes quiet).
            let mut stop_by: Option<Instant> = None;
            loop {
                use std::os::fd::AsRawFd;
                if stop_by.is_none() && flag.load(Ordering::Acquire) {
                    stop_by = Some(Instant::now() + Duration::from_secs(1));
                }
                let stopping = stop_by.is_some();
                if stop_by.is_some_and(|t| Instant::now() > t) {
                    break;
                }
                match recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
                    Ok((n, Some(addr))) => {
                        if addr.pkttype() != PACKET_OUTGOING {
                            frames.push(Frame {
                                ifindex: addr.ifindex() as i32,
                                data: buf[..n].to_vec(),
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(nix::errno::Errno::EAGAIN) if stopping => break,
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
            frames
        });
        Ok(Sniffer { stop, thread })
    }

    /// Stops and returns what was captured: every frame that arrived before this call.
    pub fn finish(self) -> Capture {
        self.stop.store(true, Ordering::Release);
        Capture {
            frames: self.thread.join().unwrap_or_default(),
        }
    }
}

/// Everything a [`Sniffer`] saw.
pub struct Capture {
    pub frames: Vec<Frame>,
}

impl Capture {
    /// IPv4 TCP segments, decoded.
    pub fn tcp(&self) -> Vec<TcpSegment> {
        self.frames
            .iter()
            .filter_map(|f| decode_tcp(&f.data))
            .collect()
    }

    /// Whether `needle` occurs in any frame at all.
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.frames
            .iter()
            .any(|f| f.data.windows(needle.len()).any(|w| w == needle))
    }
}

/// An Ethernet frame's IPv4 TCP segment, if it carries one.
pub fn decode_tcp(frame: &[u8]) -> Option<TcpSegment> {
    // Ethernet II, IPv4 only.
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let tcp = ip.get(ihl..total)?;
    if tcp.len() < 20 {
        return None;
    }
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let offset = usize::from(tcp[12] >> 4) * 4;
    Some(TcpSegment {
        src: SocketAddr::V4(SocketAddrV4::new(src, sport)),
        dst: SocketAddr::V4(SocketAddrV4::new(dst, dport)),
        payload: tcp.get(offset..)?.to_vec(),
    })
}
