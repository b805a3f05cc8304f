//! Larger socket reads under TLS.
//!
//! rustls reads at most one TLS record (≈ 16 KiB) per call, so a bulk transfer costs one
//! `recvfrom` per record on the receiving side: about 16 syscalls per 256 KiB moved, against
//! one to send them (measured with strace, docs/benchmarks.md). [`ReadAhead`] sits between
//! the TCP socket and rustls and reads the socket in chunks of several records, handing
//! rustls what it asks for from memory. Copying ciphertext once more costs less than the
//! syscalls it saves.
//!
//! The buffer exists only while bytes are arriving: it is released as soon as the socket has
//! nothing more to give, so an idle pooled HBONE connection holds no read buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads the underlying stream `chunk` bytes at a time; writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<IO> {
    io: IO,
    buf: BytesMut,
    chunk: usize,
}

impl<IO> ReadAhead<IO> {
    /// `chunk` of 0 turns read-ahead off (every read goes to `io` as asked).
    pub fn new(io: IO, chunk: usize) -> Self {
        ReadAhead {
            io,
            buf: BytesMut::new(),
            chunk,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Bytes read from `io` and not yet handed out (for tests and memory accounting).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Capacity held for reading ahead: 0 while the stream is idle.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            // A caller asking for at least a chunk gains nothing from a copy.
            if dst.remaining() >= this.chunk {
                return Pin::new(&mut this.io).poll_read(cx, dst);
            }
            // Reclaims the whole allocation once everything handed out has been consumed.
            this.buf.reserve(this.chunk);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.buf = BytesMut::new();
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    // Nothing is arriving: hold no buffer while waiting.
                    this.buf = BytesMut::new();
                    return Poll::Pending;
                }
            }
            // End of stream reads as an empty buffer, and is passed on as one.
        }
        let n = dst.remaining().min(this.buf.len());
        dst.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadAhead<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Counts the reads that reach the inner stream.
    struct Counted<IO> {
        io: IO,
        reads: usize,
    }

    impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.reads += 1;
            Pin::new(&mut this.io).poll_read(cx, buf)
        }
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read() {
        let (mut peer, io) = tokio::io::duplex(1024 * 1024);
        let sent: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.unwrap();
        drop(peer);
        let mut reader = ReadAhead::new(Counted { io, reads: 0 }, 64 * 1024);
        let mut got = Vec::new();
        let mut record = [0u8; 16 * 1024 + 5];
        loop {
            let n = reader.read(&mut record).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&record[..n]);
        }
        assert_eq!(got, sent, "every byte, in order");
        // One read of the whole 64 KiB, one that finds the end of the stream.
        assert_eq!(reader.get_ref().reads, 2);
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_buffer() {
        let (mut peer, io) = tokio::io::duplex(1024 * 1024);
        let mut reader = ReadAhead::new(io, 64 * 1024);
        peer.write_all(b"hello").await.unwrap();
        let mut five = [0u8; 5];
        reader.read_exact(&mut five).await.unwrap();
        assert_eq!(&five, b"hello");
        let idle = futures::poll!(std::pin::pin!(reader.read(&mut five)));
        assert!(idle.is_pending());
        assert_eq!(reader.capacity(), 0, "no buffer while nothing arrives");
        assert_eq!(reader.buffered(), 0);
    }

    #[tokio::test]
    async fn a_large_read_bypasses_the_buffer() {
        let (mut peer, io) = tokio::io::duplex(1024 * 1024);
        let mut reader = ReadAhead::new(io, 16);
        peer.write_all(&[1u8; 100]).await.unwrap();
        let mut big = [0u8; 100];
        let n = reader.read(&mut big).await.unwrap();
        assert_eq!(n, 100);
        assert_eq!(
            reader.capacity(),
            0,
            "read straight into the caller's buffer"
        );
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (mut peer, io) = tokio::io::duplex(1024);
        let mut stream = ReadAhead::new(io, 64 * 1024);
        stream.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        peer.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
    }
}
