//! Copies bytes between a plain socket and an HBONE stream.
//!
//! Plain → tunnel: a read buffer exists only while data is waiting. The relay first waits for
//! the socket to become readable with an empty read (no buffer), then reads into a buffer of
//! [`READ_BUFFER`] bytes and hands the filled part to h2 without copying; the rest of that
//! buffer takes the following reads while data keeps coming, and is let go as soon as the
//! socket has nothing more. So an idle connection holds no buffer at all, and a busy one
//! allocates one medium-sized buffer per [`READ_BUFFER`] bytes, a size the allocator keeps
//! warm (larger ones came back as fresh pages, each a page fault, on every refill).
//! Each direction half-closes independently, as TCP does.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::H2Stream;

/// Size of each read buffer from the plain side.
pub const READ_BUFFER: usize = 64 * 1024;

/// A buffer with less room than this left is not read into again: a fresh one is taken.
const MIN_READ: usize = 16 * 1024;

/// Told about bytes as they move, so counters advance during long-lived connections.
pub trait RelayObserver {
    /// `n` bytes went from the plain socket into the tunnel.
    fn entered_tunnel(&self, n: usize);
    /// `n` bytes came out of the tunnel into the plain socket.
    fn left_tunnel(&self, n: usize);
}

impl RelayObserver for () {
    fn entered_tunnel(&self, _n: usize) {}
    fn left_tunnel(&self, _n: usize) {}
}

/// Bytes moved each way over a relay's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayTotals {
    pub to_tunnel: u64,
    pub from_tunnel: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP/2 stream: {0}")]
    Http2(#[from] h2::Error),
    #[error("HTTP/2 stream closed by the peer")]
    StreamClosed,
}

/// Relays until both directions have finished. On an error either way, the stream is reset
/// and the socket halves are dropped (the caller closes the socket).
pub async fn relay<R, W, O>(
    reader: R,
    writer: W,
    stream: H2Stream,
    observer: &O,
) -> Result<RelayTotals, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    O: RelayObserver + ?Sized,
{
    let H2Stream { mut send, mut recv } = stream;
    let result = futures::future::try_join(
        plain_to_tunnel(reader, &mut send, observer),
        tunnel_to_plain(&mut recv, writer, observer),
    )
    .await;
    match result {
        Ok((to_tunnel, from_tunnel)) => Ok(RelayTotals {
            to_tunnel,
            from_tunnel,
        }),
        Err(e) => {
            send.send_reset(h2::Reason::CANCEL);
            Err(e)
        }
    }
}

async fn plain_to_tunnel<R, O>(
    mut reader: R,
    send: &mut h2::SendStream<Bytes>,
    observer: &O,
) -> Result<u64, RelayError>
where
    R: AsyncRead + Unpin,
    O: RelayObserver + ?Sized,
{
    let mut buf = BytesMut::new();
    let mut total = 0u64;
    loop {
        let n = poll_fn(|cx| poll_read_lean(&mut reader, &mut buf, cx)).await?;
        if n == 0 {
            send.send_data(Bytes::new(), true)?;
            return Ok(total);
        }
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(RelayError::StreamClosed),
            };
            if granted == 0 {
                continue;
            }
            let part = chunk.split_to(granted.min(chunk.len()));
            send.send_data(part, false)?;
        }
        observer.entered_tunnel(n);
        total += n as u64;
    }
}

/// Reads into `buf` (taking a fresh [`READ_BUFFER`] when it has too little room), holding
/// no buffer while the socket has nothing to read: `buf` is emptied whenever this returns
/// `Pending`. Returns the bytes read, 0 at end of stream.
pub fn poll_read_lean<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    // An empty read completes once the socket is readable (or closed), without consuming
    // anything; for a tokio socket it waits on readiness.
    let mut nothing = ReadBuf::new(&mut []);
    if let Poll::Pending = Pin::new(&mut *reader).poll_read(cx, &mut nothing) {
        *buf = BytesMut::new();
        return Poll::Pending;
    }
    if buf.capacity() - buf.len() < MIN_READ {
        *buf = BytesMut::with_capacity(READ_BUFFER);
    }
    match pin!(reader.read_buf(buf)).poll(cx) {
        Poll::Pending => {
            // Readiness was stale; the read registered for the next wake-up.
            *buf = BytesMut::new();
            Poll::Pending
        }
        done => done,
    }
}

async fn tunnel_to_plain<W, O>(
    recv: &mut h2::RecvStream,
    mut writer: W,
    observer: &O,
) -> Result<u64, RelayError>
where
    W: AsyncWrite + Unpin,
    O: RelayObserver + ?Sized,
{
    let mut total = 0u64;
    while let Some(data) = recv.data().await {
        let data = data?;
        let n = data.len();
        writer.write_all(&data).await?;
        // Released after the write, so a slow reader pushes back on the sender.
        recv.flow_control().release_capacity(n)?;
        observer.left_tunnel(n);
        total += n as u64;
    }
    // The app may already have closed its side; a failed half-close loses nothing.
    let _ = writer.shutdown().await;
    Ok(total)
}
