//! Bulk streams for throughput, and idle connections held open for memory.
//!
//! The sink reads until end of stream and answers with the byte count it received (8 bytes,
//! big-endian), so the figure is what arrived, not what was buffered on the way.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Dial;

/// Size of each write from the source and each read at the sink.
const CHUNK: usize = 256 * 1024;

/// Reads every accepted connection to its end, then answers with the byte count.
pub async fn serve_sink(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = sink(stream).await;
        });
    }
}

async fn sink(mut stream: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(&total.to_be_bytes()).await?;
    stream.shutdown().await
}

/// Echoes whatever arrives on each accepted connection (a few bytes at a time).
pub async fn serve_echo(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = echo(stream).await;
        });
    }
}

async fn echo(mut stream: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 64];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

/// What a bulk transfer moved.
#[derive(Clone, Copy, Debug, Default)]
pub struct Transfer {
    /// Bytes the sink received.
    pub bytes: u64,
    /// From the common start until the last stream's count came back.
    pub seconds: f64,
}

impl Transfer {
    pub fn gbit_per_s(&self) -> f64 {
        if self.seconds <= 0.0 {
            return 0.0;
        }
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
}

/// Sends as fast as possible on `streams` connections to a [`serve_sink`] for `duration`
/// (all streams start together), then half-closes each and waits for its count.
pub fn upload(dial: &Dial, streams: usize, duration: Duration) -> std::io::Result<Transfer> {
    let conns = (0..streams.max(1))
        .map(|_| dial())
        .collect::<std::io::Result<Vec<_>>>()?;
    let go = Arc::new(Barrier::new(conns.len() + 1));
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            let go = go.clone();
            std::thread::spawn(move || -> std::io::Result<(u64, Instant)> {
                let data = vec![0x5au8; CHUNK];
                go.wait();
                let deadline = Instant::now() + duration;
                while Instant::now() < deadline {
                    s.write_all(&data)?;
                }
                s.shutdown(Shutdown::Write)?;
                let mut count = [0u8; 8];
                s.read_exact(&mut count)?;
                Ok((u64::from_be_bytes(count), Instant::now()))
            })
        })
        .collect();
    go.wait();
    let start = Instant::now();
    let mut total = Transfer::default();
    for w in workers {
        let (bytes, done) = w.join().expect("upload thread")?;
        total.bytes += bytes;
        total.seconds = total.seconds.max((done - start).as_secs_f64());
    }
    Ok(total)
}

/// Opens `n` connections to a [`serve_echo`] and proves each works end to end (one byte
/// there and back), using `threads` threads; returns them open and idle.
pub fn hold_open(dial: &Dial, n: usize, threads: usize) -> std::io::Result<Vec<TcpStream>> {
    let threads = threads.clamp(1, n.max(1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let dial = dial.clone();
            let count = n / threads + usize::from(t < n % threads);
            std::thread::spawn(move || -> std::io::Result<Vec<TcpStream>> {
                let mut held = Vec::with_capacity(count);
                for _ in 0..count {
                    let mut s = dial()?;
                    s.write_all(b"?")?;
                    let mut one = [0u8; 1];
                    s.read_exact(&mut one)?;
                    held.push(s);
                }
                Ok(held)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.extend(w.join().expect("hold thread")?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn upload_counts_what_the_sink_received() {
        let rt = runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let dial = crate::dial_addr(listener.local_addr().unwrap());
        rt.spawn(serve_sink(listener));
        let t = upload(&dial, 2, Duration::from_millis(100)).unwrap();
        assert!(t.bytes >= 2 * CHUNK as u64, "{t:?}");
        assert!(t.gbit_per_s() > 0.0);
    }

    #[test]
    fn holds_connections_open() {
        let rt = runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let dial = crate::dial_addr(listener.local_addr().unwrap());
        rt.spawn(serve_echo(listener));
        let held = hold_open(&dial, 25, 4).unwrap();
        assert_eq!(held.len(), 25);
    }
}
