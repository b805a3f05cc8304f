//! The host's way to the API server of `up --kubernetes`. The API server listens on the
//! sandbox's loopback, which the host cannot reach; `ambientctl up` binds a port on the
//! host's loopback and hands the listening socket to the supervisor (a socket keeps the
//! network namespace it was made in), which relays each connection to the API server.
//! TLS passes through untouched: clients check the API server's own certificate.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// The environment variable naming the inherited listener's descriptor.
pub const LISTENER_ENV: &str = "AMBIENT_API_LISTENER_FD";

/// Relays every connection of `listener` to `api_server` until the task is dropped.
pub async fn relay(listener: TcpListener, api_server: SocketAddr) {
    loop {
        let (mut client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accepting on the host's API port");
                // EMFILE and the like: give the process a moment to free descriptors.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let mut server = match TcpStream::connect(api_server).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(%peer, error = %e, "reaching the API server");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            match tokio::io::copy_bidirectional(&mut client, &mut server).await {
                Ok((up, down)) => debug!(%peer, up, down, "API connection closed"),
                Err(e) => debug!(%peer, error = %e, "API connection ended"),
            }
        });
    }
}
