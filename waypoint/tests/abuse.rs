//! Abusive clients against the waypoint's HTTP server exactly as configured
//! ([`waypoint::http_server::builder`]): HTTP/2 rapid reset, SETTINGS and CONTINUATION floods,
//! oversized headers and slow clients. Each attack runs on real loopback sockets while a
//! well-behaved client keeps being served, and the process's memory must stay bounded.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A server answering `ok` to everything, counting requests it handled.
async fn server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let counter = handled.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    }
                });
                let _ = waypoint::http_server::builder()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, handled)
}

/// A well-behaved HTTP/1.1 request; true when answered 200 within a second.
async fn good_client(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header field without indexing, new name.
fn literal(name: &str, value_len: usize) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_int(&mut out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(&mut out, 0, 7, value_len);
    out.extend(std::iter::repeat_n(b'a', value_len));
    out
}

fn resident_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Writes `frames` until the server closes the connection or `budget` bytes went out;
/// returns the bytes written before the server stopped taking them.
async fn flood(
    addr: SocketAddr,
    opening: Vec<u8>,
    next: impl Fn(u64) -> Vec<u8>,
    budget: u64,
) -> u64 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    // Drain what the server says (SETTINGS, ACKs, GOAWAY) so only its own limits stop us.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let mut sent = 0u64;
    if wr.write_all(&opening).await.is_err() {
        return 0;
    }
    let mut i = 0;
    while sent < budget {
        let f = next(i);
        i += 1;
        match tokio::time::timeout(Duration::from_secs(2), wr.write_all(&f)).await {
            Ok(Ok(())) => sent += f.len() as u64,
            // Closed by the server, or it stopped reading: either way the flood is bounded.
            _ => break,
        }
        if reader.is_finished() {
            break;
        }
    }
    reader.abort();
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_clients_do_not_hurt_others() {
    let (addr, handled) = server().await;
    assert!(good_client(addr).await, "baseline");
    let baseline_kb = resident_kb();

    // HTTP/2 rapid reset (CVE-2023-44487): open and cancel streams as fast as possible.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(connection);
    let before = handled.load(Ordering::Relaxed);
    let mut opened = 0u64;
    for _ in 0..20_000 {
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        client = ready;
        let req = http::Request::builder()
            .uri(format!("http://{addr}/"))
            .body(())
            .unwrap();
        match client.send_request(req, true) {
            Ok((_, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(_) => break,
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        matches!(closed, Ok(Ok(Err(_)))) || opened < 20_000,
        "the server must end a rapid-reset connection (opened {opened})"
    );
    let served = handled.load(Ordering::Relaxed) - before;
    eprintln!("rapid reset: {opened} streams opened and reset, {served} reached the handler");
    assert!(good_client(addr).await, "served during rapid reset");

    // SETTINGS flood: empty SETTINGS frames, a megabyte of them.
    let settings = frame(0x4, 0, 0, &[]);
    let mut opening = PREFACE.to_vec();
    opening.extend(frame(0x4, 0, 0, &[]));
    let sent = flood(addr, opening, |_| settings.clone(), 1 << 20).await;
    eprintln!("SETTINGS flood: {sent} bytes taken");
    assert!(good_client(addr).await, "served after a SETTINGS flood");

    // CONTINUATION flood: one header block that never ends.
    let mut opening = PREFACE.to_vec();
    opening.extend(frame(0x4, 0, 0, &[]));
    let mut start = Vec::new();
    start.push(0x82); // :method GET
    start.push(0x86); // :scheme http
    start.push(0x84); // :path /
    start.extend(literal("x-first", 16));
    opening.extend(frame(0x1, 0x1, 1, &start)); // HEADERS, END_STREAM, no END_HEADERS
    let budget = 64 << 20;
    let sent = flood(
        addr,
        opening,
        |i| frame(0x9, 0, 1, &literal(&format!("x-{i}"), 8 * 1024)),
        budget,
    )
    .await;
    eprintln!("CONTINUATION flood: {sent} bytes taken before the server stopped it");
    assert!(
        sent < budget,
        "the server must refuse an endless header block"
    );
    assert!(good_client(addr).await, "served after a CONTINUATION flood");

    // Oversized HTTP/1 headers: refused (431) rather than buffered.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let big = "a".repeat(256 * 1024);
    let req = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    let _ = tcp.write_all(req.as_bytes()).await;
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut head))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(
        n == 0 || answer.starts_with("HTTP/1.1 431"),
        "oversized headers: {answer:?}"
    );
    assert!(good_client(addr).await, "served after oversized headers");

    // Slow clients: 100 connections trickling a request head; others are still served, and
    // the server drops the trickles at its header deadline.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        slow.push(tokio::spawn(async move {
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if tcp.write_all(b"x-slow: 1\r\n").await.is_err() {
                    return true;
                }
            }
            let mut buf = [0u8; 256];
            // Closed (or answered 408) once the deadline passed.
            matches!(tcp.read(&mut buf).await, Ok(0) | Err(_)) || buf.starts_with(b"HTTP/1.1 408")
        }));
    }
    assert!(good_client(addr).await, "served while 100 clients trickle");
    for s in slow {
        assert!(s.await.unwrap(), "a trickling client was not cut off");
    }

    let grown_kb = resident_kb().saturating_sub(baseline_kb);
    eprintln!("resident memory grew by {grown_kb} kB over all attacks");
    assert!(
        grown_kb < 64 * 1024,
        "memory must stay bounded: +{grown_kb} kB"
    );
}
