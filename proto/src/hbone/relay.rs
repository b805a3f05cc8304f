//! Copies bytes between a plain socket and an HBONE stream.
//!
//! Reads land in one reusable buffer whose filled part is handed to h2 without copying; the
//! allocation is reclaimed once h2 has written it, so steady-state relaying allocates nothing.
//! Each direction half-closes independently, as TCP does.

use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::H2Stream;

/// Size of one read from the plain side.
const READ_BUFFER: usize = 256 * 1024;

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
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut total = 0u64;
    loop {
        if buf.capacity() < READ_BUFFER / 4 {
            buf.reserve(READ_BUFFER);
        }
        let n = reader.read_buf(&mut buf).await?;
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
