//! Plain TCP ↔ TCP copying (passthrough and plaintext inbound), counted as it goes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::metrics::ConnectionRecord;

/// One buffer per direction per connection; reused for every read.
const BUFFER: usize = 64 * 1024;

/// Copies both ways until both sides have closed; each direction half-closes on its own.
/// `downstream` is the client side: its bytes count as the request.
pub async fn relay_tcp(
    downstream: &mut TcpStream,
    upstream: &mut TcpStream,
    record: &ConnectionRecord,
) -> std::io::Result<()> {
    let (mut dr, mut dw) = downstream.split();
    let (mut ur, mut uw) = upstream.split();
    let request = async {
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = dr.read(&mut buf).await?;
            if n == 0 {
                let _ = uw.shutdown().await;
                return Ok::<_, std::io::Error>(());
            }
            uw.write_all(&buf[..n]).await?;
            record.request_bytes(n);
        }
    };
    let response = async {
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = ur.read(&mut buf).await?;
            if n == 0 {
                let _ = dw.shutdown().await;
                return Ok::<_, std::io::Error>(());
            }
            dw.write_all(&buf[..n]).await?;
            record.response_bytes(n);
        }
    };
    futures::future::try_join(request, response)
        .await
        .map(|_| ())
}
