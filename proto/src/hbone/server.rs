//! The server half of HBONE: TLS 1.3 with a required client certificate, then HTTP/2, then
//! each CONNECT stream handed to a handler that decides where (and whether) it leads.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use super::read_ahead::ReadAhead;
use super::{ConnectStatus, H2Settings, H2Stream, describe_tls_failure};
use crate::identity::Identity;
use crate::tls::Rejection;
use crate::tls::leaf_identity;

/// Why a connection to the HBONE port was refused or ended badly.
#[derive(Debug, thiserror::Error)]
#[error("HBONE peer {peer} refused ({reason}): {detail}")]
pub struct ServeError {
    pub peer: SocketAddr,
    pub reason: Rejection,
    pub detail: String,
}

/// One CONNECT request from an authenticated peer. The handler must answer it with
/// [`InboundConnect::accept`] or [`InboundConnect::reject`].
pub struct InboundConnect {
    request: http::Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    peer_identity: Identity,
    peer_addr: SocketAddr,
}

/// A CONNECT request that does not say where to go.
#[derive(Debug, thiserror::Error)]
pub enum ConnectParseError {
    #[error("method {0} is not CONNECT")]
    NotConnect(http::Method),
    #[error("authority {0:?} is not ip:port")]
    BadAuthority(String),
}

impl InboundConnect {
    /// The destination the client asked for: `:authority` as `ip:port`.
    pub fn authority(&self) -> Result<SocketAddr, ConnectParseError> {
        connect_authority(self.request.method(), self.request.uri())
    }

    /// The verified SPIFFE identity of the peer.
    pub fn peer_identity(&self) -> &Identity {
        &self.peer_identity
    }

    /// The TCP address the HBONE connection came from.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn headers(&self) -> &http::HeaderMap {
        self.request.headers()
    }

    /// The original client address from `forwarded: for=...`, if present and well formed.
    pub fn forwarded_for(&self) -> Option<IpAddr> {
        forwarded_for(self.headers())
    }

    /// Resets the stream with REFUSED_STREAM, which tells the client the request was not
    /// processed and may be sent again on another connection (RFC 9113 §8.7), as a peer that
    /// is going away does with streams it will not serve.
    #[cfg(test)]
    pub(crate) fn refuse_unprocessed(mut self) {
        self.respond.send_reset(h2::Reason::REFUSED_STREAM);
    }

    /// Opens the tunnel (200) and returns the stream.
    pub fn accept(mut self) -> Result<H2Stream, h2::Error> {
        let response = http::Response::builder()
            .status(ConnectStatus::Ok.code())
            .body(())
            .expect("static response");
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream {
            send,
            recv: self.request.into_body(),
        })
    }

    /// Refuses the tunnel with `status`.
    pub fn reject(mut self, status: ConnectStatus) {
        let response = http::Response::builder()
            .status(status.code())
            .body(())
            .expect("static response");
        // If the peer already went away there is no one left to tell.
        let _ = self.respond.send_response(response, true);
    }
}

// The two parsers of a CONNECT request's head, apart from the h2 stream that carries it so
// that they can be tested (and fuzzed, fuzz/fuzz_targets/hbone_connect.rs) on their own.

/// The destination a CONNECT request asks for: its `:authority` as `ip:port`.
pub fn connect_authority(
    method: &http::Method,
    uri: &http::Uri,
) -> Result<SocketAddr, ConnectParseError> {
    if method != http::Method::CONNECT {
        return Err(ConnectParseError::NotConnect(method.clone()));
    }
    let raw = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    raw.parse()
        .map_err(|_| ConnectParseError::BadAuthority(raw.to_string()))
}

/// The original client address of a CONNECT request, from its first `forwarded` header's
/// first well-formed `for=` (`for=10.0.0.1`, `for="[fd00::1]"`).
pub fn forwarded_for(headers: &http::HeaderMap) -> Option<IpAddr> {
    let v = headers.get("forwarded")?.to_str().ok()?;
    v.split([';', ','])
        .filter_map(|part| part.trim().strip_prefix("for="))
        .map(|s| {
            s.trim_matches('"')
                .trim_start_matches('[')
                .trim_end_matches(']')
        })
        .find_map(|s| s.parse().ok())
}

/// Serves one accepted connection to the HBONE port until it closes. Each CONNECT runs the
/// handler on its own task. Returns an error (with a stable [`Rejection`]) when the peer failed
/// TLS or HTTP/2; a peer that simply disconnects is not an error.
pub async fn serve_connection<IO, H, F>(
    io: IO,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    settings: H2Settings,
    handler: H,
) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(InboundConnect) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    serve_connection_until(
        io,
        peer,
        acceptor,
        settings,
        handler,
        std::future::pending(),
    )
    .await
}

/// [`serve_connection`], and when `drain` completes, a graceful GOAWAY: the streams already
/// open run to their end, the peer opens new ones elsewhere (a pool dials a new connection),
/// and the connection closes when its last stream does.
pub async fn serve_connection_until<IO, H, F>(
    io: IO,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    settings: H2Settings,
    handler: H,
    drain: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(InboundConnect) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let refuse = |reason: Rejection, detail: String| ServeError {
        peer,
        reason,
        detail,
    };
    let io = ReadAhead::new(io, settings.read_ahead);
    let mut tls = match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(io)).await
    {
        Err(_) => return Err(refuse(Rejection::Timeout, "TLS handshake timed out".into())),
        Ok(Err(e)) => {
            let (reason, detail) = describe_tls_failure(&e);
            return Err(refuse(reason, detail));
        }
        Ok(Ok(tls)) => tls,
    };
    tls.get_mut()
        .1
        .set_buffer_limit(Some(settings.tls_send_buffer));
    let peer_identity = {
        let (_, session) = tls.get_ref();
        // The verifier has already required and checked the certificate.
        let leaf = session
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| refuse(Rejection::NoClientCertificate, "no certificate".into()))?;
        leaf_identity(leaf).map_err(|e| refuse(Rejection::NoSpiffeId, e.to_string()))?
    };
    let handshake = settings.server_builder().handshake::<_, Bytes>(tls);
    let mut connection = match tokio::time::timeout(settings.handshake_timeout, handshake).await {
        Err(_) => {
            return Err(refuse(
                Rejection::Timeout,
                "HTTP/2 preface timed out".into(),
            ));
        }
        Ok(Err(e)) => return Err(refuse(Rejection::Http2Protocol, e.to_string())),
        Ok(Ok(c)) => c,
    };
    let mut drain = std::pin::pin!(drain);
    let mut draining = false;
    loop {
        let next = if draining {
            connection.accept().await
        } else {
            tokio::select! {
                next = connection.accept() => next,
                () = &mut drain => {
                    draining = true;
                    connection.graceful_shutdown();
                    continue;
                }
            }
        };
        let Some(next) = next else { break };
        match next {
            Ok((request, respond)) => {
                let inbound = InboundConnect {
                    request,
                    respond,
                    peer_identity: peer_identity.clone(),
                    peer_addr: peer,
                };
                tokio::spawn(handler.clone()(inbound));
            }
            Err(e) if e.is_io() || e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR) => {
                return Ok(());
            }
            Err(e) => return Err(refuse(Rejection::Http2Protocol, e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(authority: &str) -> http::Uri {
        let mut parts = http::uri::Parts::default();
        parts.authority = Some(authority.parse().unwrap());
        http::Uri::from_parts(parts).unwrap()
    }

    #[test]
    fn connect_authority_is_an_ip_and_port() {
        let connect = http::Method::CONNECT;
        assert_eq!(
            connect_authority(&connect, &uri("10.0.0.1:80")).unwrap(),
            "10.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_authority(&connect, &uri("[fd00::1]:8080")).unwrap(),
            "[fd00::1]:8080".parse::<SocketAddr>().unwrap()
        );
        for bad in ["web.shop:80", "10.0.0.1", "10.0.0.1:99999"] {
            assert!(
                matches!(
                    connect_authority(&connect, &uri(bad)),
                    Err(ConnectParseError::BadAuthority(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            connect_authority(&http::Method::GET, &uri("10.0.0.1:80")),
            Err(ConnectParseError::NotConnect(_))
        ));
    }

    #[test]
    fn forwarded_for_takes_the_first_well_formed_address() {
        let headers = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("forwarded", v.parse().unwrap());
            h
        };
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        assert_eq!(forwarded_for(&headers("for=10.0.0.2")), ip("10.0.0.2"));
        assert_eq!(forwarded_for(&headers("for=\"[fd00::2]\"")), ip("fd00::2"));
        assert_eq!(
            forwarded_for(&headers("by=x;for=\"_hidden\", for=192.0.2.60;proto=http")),
            ip("192.0.2.60")
        );
        assert_eq!(forwarded_for(&headers("for=unknown")), None);
        assert_eq!(forwarded_for(&http::HeaderMap::new()), None);
    }
}
