//! The client half of HBONE: one mutual-TLS HTTP/2 connection to a peer, carrying many
//! CONNECT streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::read_ahead::ReadAhead;
use super::{ConnectRequest, H2Settings, H2Stream, HboneError, describe_tls_failure};
use crate::identity::Identity;
use crate::tls::leaf_identity;

/// An established HBONE connection. Cloning shares the connection.
#[derive(Clone)]
pub struct HboneConnection {
    send: h2::client::SendRequest<Bytes>,
    peer_identity: Identity,
    peer_addr: SocketAddr,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for HboneConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneConnection")
            .field("peer_identity", &self.peer_identity.to_string())
            .field("peer_addr", &self.peer_addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl HboneConnection {
    /// Runs the TLS and HTTP/2 handshakes over `io` (already connected to `peer_addr`).
    /// `tls` decides which server identities are acceptable.
    pub async fn handshake<IO>(
        io: IO,
        peer_addr: SocketAddr,
        tls: Arc<ClientConfig>,
        settings: &H2Settings,
    ) -> Result<Self, HboneError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connector = TlsConnector::from(tls);
        // SNI is disabled in the config; the name only satisfies the API.
        let name = ServerName::IpAddress(peer_addr.ip().into());
        let io = ReadAhead::new(io, settings.read_ahead);
        let mut tls = tokio::time::timeout(settings.handshake_timeout, connector.connect(name, io))
            .await
            .map_err(|_| HboneError::Timeout(settings.handshake_timeout))?
            .map_err(|e| {
                let (reason, detail) = describe_tls_failure(&e);
                HboneError::Tls {
                    addr: peer_addr,
                    reason,
                    detail,
                }
            })?;
        tls.get_mut()
            .1
            .set_buffer_limit(Some(settings.tls_send_buffer));
        let peer_identity = {
            let (_, session) = tls.get_ref();
            let leaf = session
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| HboneError::BadRequest("server sent no certificate".into()))?;
            leaf_identity(leaf).map_err(|e| HboneError::BadRequest(e.to_string()))?
        };
        let (send, connection) = tokio::time::timeout(
            settings.handshake_timeout,
            settings.client_builder().handshake::<_, Bytes>(tls),
        )
        .await
        .map_err(|_| HboneError::Timeout(settings.handshake_timeout))??;
        let closed = Arc::new(AtomicBool::new(false));
        let closed_flag = closed.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(peer = %peer_addr, error = %e, "HBONE connection ended");
            }
            closed_flag.store(true, Ordering::Release);
        });
        Ok(HboneConnection {
            send,
            peer_identity,
            peer_addr,
            closed,
        })
    }

    /// Opens one CONNECT stream. Fails with [`HboneError::Status`] when the peer refuses.
    pub async fn connect(&self, req: &ConnectRequest) -> Result<H2Stream, HboneError> {
        // A connection the peer is closing (GOAWAY) or that broke takes no more streams: marked
        // closed at once, so a pool stops choosing it while its last streams finish.
        let dead = |e: h2::Error| {
            if e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                self.closed.store(true, Ordering::Release);
            }
            HboneError::from(e)
        };
        let mut send = self.send.clone().ready().await.map_err(dead)?;
        let (response, send_stream) = send.send_request(req.to_http()?, false).map_err(dead)?;
        let response = response.await.map_err(dead)?;
        if response.status() != http::StatusCode::OK {
            return Err(HboneError::Status(response.status()));
        }
        Ok(H2Stream {
            send: send_stream,
            recv: response.into_body(),
        })
    }

    /// The identity the server proved in the handshake.
    pub fn peer_identity(&self) -> &Identity {
        &self.peer_identity
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// True once the connection takes no new streams: it ended, its peer is draining (GOAWAY),
    /// it broke, or a pool retired it.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Takes the connection out of a pool's choice; the streams it carries go on.
    pub(crate) fn retire(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// How many streams the peer lets us run at once on this connection.
    pub fn max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }
}
