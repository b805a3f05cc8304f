//! An HBONE CONNECT stream as a byte stream, so hyper (and `copy_bidirectional`) can run on it.
//!
//! Reading hands out the DATA frames h2 already buffered and returns their flow-control
//! capacity as soon as they are consumed; writing asks h2 for send capacity and never queues
//! more than it grants, so a slow peer pushes back instead of growing memory.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use ambient_proto::hbone::H2Stream;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One CONNECT stream (either side) as `AsyncRead + AsyncWrite`.
pub struct StreamIo {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    /// Received bytes not yet read.
    pending: Bytes,
    recv_done: bool,
    send_done: bool,
}

impl StreamIo {
    pub fn new(stream: H2Stream) -> Self {
        StreamIo {
            send: stream.send,
            recv: stream.recv,
            pending: Bytes::new(),
            recv_done: false,
            send_done: false,
        }
    }
}

fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"))
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    }
}

impl AsyncRead for StreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.recv_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Consumed from h2's point of view: let the peer send more.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => self.recv_done = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => self.recv_done = true,
            }
        }
    }
}

impl AsyncWrite for StreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.send_done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    self.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes frames as its connection task gets to them; nothing is held here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.send_done {
            self.send_done = true;
            self.send.send_data(Bytes::new(), true).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for StreamIo {
    fn drop(&mut self) {
        if !self.send_done {
            // The peer must learn the stream is over even if nobody shut it down cleanly.
            self.send.send_reset(h2::Reason::CANCEL);
        }
    }
}
