//! HTTP/1.1, just enough of it: `GET` with keep-alive (or `connection: close`), responses
//! with a `content-length` body. No allocation per request on either side.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Body size the benchmarks use.
pub const DEFAULT_BODY: usize = 1024;

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: loadgen\r\n\r\n";
const GET_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nhost: loadgen\r\nconnection: close\r\n\r\n";

/// Largest request or response head either side accepts.
const MAX_HEAD: usize = 8 * 1024;

fn invalid(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// Where the head ends (just past the blank line), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The header lines of a head (after its first line), as (name, value).
fn headers(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.split(|&b| b == b'\n').skip(1).filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        Some((&line[..colon], line[colon + 1..].trim_ascii()))
    })
}

fn wants_close(head: &[u8]) -> bool {
    headers(head)
        .any(|(k, v)| k.eq_ignore_ascii_case(b"connection") && v.eq_ignore_ascii_case(b"close"))
}

/// Status and body length of a response head.
fn parse_response(head: &[u8]) -> std::io::Result<(u16, usize)> {
    let status = head
        .split(|&b| b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| invalid("response without a status"))?;
    let length = headers(head)
        .find(|(k, _)| k.eq_ignore_ascii_case(b"content-length"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
        .ok_or_else(|| invalid("response without content-length"))?;
    Ok((status, length))
}

/// One client connection (blocking). Responses must carry `content-length`.
pub struct HttpClient {
    stream: TcpStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl HttpClient {
    pub fn new(stream: TcpStream) -> Self {
        HttpClient {
            stream,
            buf: vec![0; 16 * 1024].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// `GET /` on the kept-alive connection; returns the body length.
    pub fn get(&mut self) -> std::io::Result<usize> {
        self.exchange(GET)
    }

    /// `GET /` with `connection: close`, then closes.
    pub fn get_and_close(mut self) -> std::io::Result<usize> {
        self.exchange(GET_CLOSE)
    }

    fn exchange(&mut self, request: &[u8]) -> std::io::Result<usize> {
        self.stream.write_all(request)?;
        let head_len = loop {
            if let Some(n) = head_end(&self.buf[self.start..self.end]) {
                break n;
            }
            if self.end == self.buf.len() {
                if self.start == 0 {
                    return Err(invalid("response head too large"));
                }
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            self.fill()?;
        };
        let (status, length) = parse_response(&self.buf[self.start..self.start + head_len])?;
        if status != 200 {
            return Err(invalid(format!("status {status}")));
        }
        self.start += head_len;
        let mut remaining = length;
        loop {
            let have = remaining.min(self.end - self.start);
            self.start += have;
            remaining -= have;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            if remaining == 0 {
                return Ok(length);
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let n = self.stream.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }
}

/// A response with a `body`-byte body.
fn response(body: usize, close: bool) -> Arc<[u8]> {
    let connection = if close { "connection: close\r\n" } else { "" };
    let mut r = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {body}\r\n{connection}\r\n"
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b'x', body));
    r.into()
}

/// Serves `GET` (any path) with a `body`-byte body on every connection `listener` accepts,
/// keeping connections alive unless the client asks to close. Request bodies are not
/// supported.
pub async fn serve_http(listener: tokio::net::TcpListener, body: usize) -> std::io::Result<()> {
    let keep = response(body, false);
    let close = response(body, true);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (keep, close) = (keep.clone(), close.clone());
        tokio::spawn(async move {
            let _ = serve_connection(stream, keep, close).await;
        });
    }
}

async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    keep: Arc<[u8]>,
    close: Arc<[u8]>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut start = 0;
        while let Some(len) = head_end(&buf[start..filled]) {
            let head = &buf[start..start + len];
            if wants_close(head) {
                stream.write_all(&close).await?;
                return stream.shutdown().await;
            }
            stream.write_all(&keep).await?;
            start += len;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            return Err(invalid("request head too large"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response_head() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: x\r\nContent-Length:  1024 \r\n\r\n";
        assert_eq!(head_end(head), Some(head.len()));
        assert_eq!(parse_response(head).unwrap(), (200, 1024));
        assert!(wants_close(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!wants_close(GET));
    }

    #[test]
    fn client_and_server_on_loopback() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(serve_http(listener, 3000));
        let mut c = HttpClient::new(TcpStream::connect(addr).unwrap());
        for _ in 0..20 {
            assert_eq!(c.get().unwrap(), 3000);
        }
        let c = HttpClient::new(TcpStream::connect(addr).unwrap());
        assert_eq!(c.get_and_close().unwrap(), 3000);
    }
}
