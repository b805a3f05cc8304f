//! Plain TCP ↔ TCP copying (passthrough and plaintext inbound), counted as it goes.

use std::future::poll_fn;

use ambient_proto::hbone::{LeanBuffer, ReadReady};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::metrics::ConnectionRecord;

/// Copies both ways until both sides have closed; each direction half-closes on its own.
/// `downstream` is the client side: its bytes count as the request.
pub async fn relay_tcp(
    downstream: &mut TcpStream,
    upstream: &mut TcpStream,
    record: &ConnectionRecord,
) -> std::io::Result<()> {
    let (mut dr, mut dw) = downstream.split();
    let (mut ur, mut uw) = upstream.split();
    let request = copy(&mut dr, &mut uw, |n| record.request_bytes(n));
    let response = copy(&mut ur, &mut dw, |n| record.response_bytes(n));
    futures::future::try_join(request, response)
        .await
        .map(|_| ())
}

/// Copies until end of stream, then half-closes `w`. A buffer is held only while data is
/// moving (see [`LeanBuffer`]), so idle connections cost no buffer memory.
async fn copy<R, W>(r: &mut R, w: &mut W, counted: impl Fn(usize)) -> std::io::Result<()>
where
    R: ReadReady,
    W: AsyncWrite + Unpin,
{
    let mut buf = LeanBuffer::new();
    loop {
        let n = poll_fn(|cx| buf.poll_read(r, cx)).await?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(buf.data()).await?;
        buf.data().clear();
        counted(n);
    }
}
