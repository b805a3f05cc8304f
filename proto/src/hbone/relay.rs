//! Copies bytes between a plain socket and an HBONE stream.
//!
//! Plain → tunnel: reads land in a [`LeanBuffer`], which exists only while data is waiting
//! (an idle connection holds no buffer at all) and grows from a small buffer for
//! request/response traffic to a large one for bulk transfers; the filled part goes to h2
//! without copying. Each direction half-closes independently, as TCP does.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::FutureExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::H2Stream;

/// First read after the socket was idle: enough for a request or a response head.
pub const SMALL_READ: usize = 16 * 1024;

/// Reads once a read has filled its buffer (a bulk transfer): fewer, larger reads, frames
/// and writes cut the CPU spent per byte (64 KiB reads cost a third more than these).
pub const LARGE_READ: usize = 256 * 1024;

/// A reader whose readiness can be awaited without reading (and so without a syscall).
pub trait ReadReady: AsyncRead + Unpin {
    /// Ready once a read would find data or the end of the stream (possibly stale: the read
    /// that follows may still be told to wait).
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
}

impl ReadReady for TcpStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl ReadReady for tokio::net::tcp::ReadHalf<'_> {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsRef::<TcpStream>::as_ref(self).poll_read_ready(cx)
    }
}

impl ReadReady for tokio::net::tcp::OwnedReadHalf {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsRef::<TcpStream>::as_ref(self).poll_read_ready(cx)
    }
}

impl<T: ReadReady + ?Sized> ReadReady for &mut T {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        (**self).poll_read_ready(cx)
    }
}

/// An in-memory pipe has no readiness apart from its data: an empty read stands in (it
/// consumes nothing and costs no syscall).
impl ReadReady for tokio::io::DuplexStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self).poll_read(cx, &mut ReadBuf::new(&mut []))
    }
}

impl<T: AsyncRead + Unpin> ReadReady for tokio::io::ReadHalf<T> {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self).poll_read(cx, &mut ReadBuf::new(&mut []))
    }
}

/// A read buffer that is there only while data flows.
///
/// Before reading it waits for the socket to be readable (on its readiness, without a
/// read), and drops its buffer whenever the socket has nothing more;
/// so a held-open idle connection costs no buffer memory. The first read after idling gets
/// [`SMALL_READ`] bytes of room, and once a read fills all its room the next buffers are
/// [`LARGE_READ`]. Filled bytes are taken with [`LeanBuffer::data`] (and `split` for
/// zero-copy hand-off); a buffer with too little room left is replaced, not grown.
#[derive(Debug)]
pub struct LeanBuffer {
    buf: BytesMut,
    next: usize,
}

impl Default for LeanBuffer {
    fn default() -> Self {
        LeanBuffer {
            buf: BytesMut::new(),
            next: SMALL_READ,
        }
    }
}

impl LeanBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes read and not yet taken.
    pub fn data(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Reads once from `reader`; returns the bytes read, 0 at end of stream.
    pub fn poll_read<R: ReadReady>(
        &mut self,
        reader: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        // A socket error shows in the read that follows.
        if reader.poll_read_ready(cx).is_pending() {
            self.idle();
            return Poll::Pending;
        }
        if self.buf.capacity() - self.buf.len() < self.next / 4 {
            self.buf = BytesMut::with_capacity(self.next);
        }
        let room = self.buf.capacity() - self.buf.len();
        match pin!(reader.read_buf(&mut self.buf)).poll(cx) {
            Poll::Pending => {
                // Readiness was stale; the read registered for the next wake-up.
                self.idle();
                Poll::Pending
            }
            Poll::Ready(Ok(n)) => {
                if n == room {
                    self.next = LARGE_READ;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    fn idle(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        self.next = SMALL_READ;
    }
}

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
/// and the socket halves are dropped (the caller closes the socket). The stream is borrowed
/// so that a caller holding it in a larger value does not move it into a second place in
/// its (long-lived) future.
pub async fn relay<R, W, O>(
    reader: R,
    writer: W,
    stream: &mut H2Stream,
    observer: &O,
) -> Result<RelayTotals, RelayError>
where
    R: ReadReady,
    W: AsyncWrite + Unpin,
    O: RelayObserver + ?Sized,
{
    let H2Stream { send, recv } = stream;
    let result = futures::future::try_join(
        plain_to_tunnel(reader, send, observer),
        tunnel_to_plain(recv, writer, observer),
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
    R: ReadReady,
    O: RelayObserver + ?Sized,
{
    let mut buf = LeanBuffer::new();
    let mut total = 0u64;
    loop {
        let n = poll_fn(|cx| buf.poll_read(&mut reader, cx)).await?;
        if n == 0 {
            match send.send_data(Bytes::new(), true) {
                Ok(()) => return Ok(total),
                Err(_) if peer_finished(send) => return Ok(total),
                Err(e) => return Err(e.into()),
            }
        }
        let mut chunk = buf.data().split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                _ if peer_finished(send) => return Ok(total),
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

/// Whether the peer ended the stream with `RST_STREAM(NO_ERROR)`: a server that has sent its
/// whole response may stop the request this way instead of waiting for its end (RFC 9113
/// §8.1; h2 does so when a handler drops an unfinished request). Whatever we had left to
/// send is then not wanted: the exchange ended cleanly, nothing was lost.
fn peer_finished(send: &mut h2::SendStream<Bytes>) -> bool {
    matches!(
        poll_fn(|cx| send.poll_reset(cx)).now_or_never(),
        Some(Ok(h2::Reason::NO_ERROR))
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(buf: &mut LeanBuffer, r: &mut tokio::io::DuplexStream) -> usize {
        poll_fn(|cx| buf.poll_read(r, cx)).await.unwrap()
    }

    /// A server that answers, ends its side and drops the request before the client ended
    /// its own (h2 then sends `RST_STREAM(NO_ERROR)`); the client's app closes only after the
    /// reset has reached the client. The relay must end cleanly, not with "inactive stream".
    #[tokio::test]
    async fn a_server_that_finished_first_ends_the_relay_cleanly() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (reset_seen_tx, reset_seen_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.unwrap();
            let (request, mut respond) = conn.accept().await.unwrap().unwrap();
            let mut ping_pong = conn.ping_pong().unwrap();
            let conn = tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            let mut body = request.into_body();
            let first = body.data().await.unwrap().unwrap();
            assert_eq!(&first[..], b"GET");
            send.send_data(Bytes::from_static(b"200 OK"), true).unwrap();
            // The request is still open: dropping every handle resets the stream with
            // NO_ERROR (the server's side is closed, the client's still streaming).
            drop((body, send, respond));
            // A ping answered means the client has read every frame sent before it.
            ping_pong.ping(h2::Ping::opaque()).await.unwrap();
            reset_seen_tx.send(()).unwrap();
            // The connection stays up until the client's relay has ended.
            let _ = done_rx.await;
            conn.abort();
        });
        let (h2, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(conn);
        let mut h2 = h2.ready().await.unwrap();
        let request = http::Request::connect("http://10.0.0.2:80")
            .body(())
            .unwrap();
        let (response, send) = h2.send_request(request, false).unwrap();
        let recv = response.await.unwrap().into_body();
        let mut stream = H2Stream { send, recv };

        let (mut app, relay_side) = tokio::io::duplex(64 * 1024);
        let (reader, writer) = tokio::io::split(relay_side);
        let app_task = tokio::spawn(async move {
            app.write_all(b"GET").await.unwrap();
            let mut answer = Vec::new();
            app.read_to_end(&mut answer).await.unwrap();
            reset_seen_rx.await.unwrap();
            drop(app);
            answer
        });
        let totals = relay(reader, writer, &mut stream, &()).await;
        assert_eq!(app_task.await.unwrap(), b"200 OK");
        let totals = totals.expect("a clean exchange ends the relay without an error");
        assert_eq!((totals.to_tunnel, totals.from_tunnel), (3, 6));
        done_tx.send(()).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn lean_buffer_holds_nothing_while_idle_and_grows_for_bulk() {
        let (mut app, mut socket) = tokio::io::duplex(1024 * 1024);
        let mut buf = LeanBuffer::new();
        let idle = futures::poll!(poll_fn(|cx| buf.poll_read(&mut socket, cx)));
        assert!(idle.is_pending());
        assert_eq!(buf.data().capacity(), 0, "no buffer while idle");

        app.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let n = read(&mut buf, &mut socket).await;
        assert_eq!(n, 18);
        assert!(
            buf.data().capacity() <= SMALL_READ,
            "a request gets a small buffer"
        );
        buf.data().clear();

        app.write_all(&vec![7u8; 600 * 1024]).await.unwrap();
        let first = read(&mut buf, &mut socket).await;
        assert_eq!(first, SMALL_READ, "fills the small buffer");
        buf.data().clear();
        let second = read(&mut buf, &mut socket).await;
        assert_eq!(second, LARGE_READ, "then reads in large buffers");
        let mut total = first + second;
        while total < 600 * 1024 {
            buf.data().clear();
            total += read(&mut buf, &mut socket).await;
        }
        buf.data().clear();
        let idle = futures::poll!(poll_fn(|cx| buf.poll_read(&mut socket, cx)));
        assert!(idle.is_pending());
        assert_eq!(buf.data().capacity(), 0, "buffer let go once drained");

        drop(app);
        assert_eq!(read(&mut buf, &mut socket).await, 0, "end of stream");
    }
}
