//! A tiny HTTP/1.0 GET for the lab: reach a process's admin or metrics port from inside the
//! namespace it runs in.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::inpod::netns::Netns;

/// A plain (unmarked) TCP connection from inside `netns`: what an app in a pod would make.
pub async fn connect_from(
    netns: &Netns,
    dst: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = netns.run(|| {
        if dst.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
    })??;
    socket.connect(dst).await
}

/// A listener inside `netns`.
pub fn listen_in(netns: &Netns, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = netns.run(|| {
        if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
    })??;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// `GET path` against `addr` from inside `netns`; returns (status, body).
pub async fn get(netns: &Netns, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut s = connect_from(netns, addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP GET timed out"))?
}
