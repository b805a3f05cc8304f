//! HBONE: TCP streams tunnelled as HTTP/2 CONNECT inside mutual TLS 1.3.
//!
//! - [`client`]: one TLS + HTTP/2 connection to a peer's port 15008, many CONNECT streams on it.
//! - [`pool`]: those connections shared per (source identity, destination identity, address).
//! - [`server`]: accepts the TLS + HTTP/2 connection and hands each CONNECT to a handler.
//! - [`relay`]: copies bytes between a TCP socket and a CONNECT stream, honouring flow control.

pub mod client;
pub mod pool;
pub mod read_ahead;
pub mod relay;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;

use crate::tls::Rejection;

pub use client::HboneConnection;
pub use pool::{Pool, PoolSettings, PooledStream, StreamGuard};
pub use relay::{LeanBuffer, ReadReady, RelayObserver, relay};
pub use server::{
    InboundConnect, connect_authority, forwarded_for, serve_connection, serve_connection_until,
};

/// HBONE listens here, on every mesh address.
pub const HBONE_PORT: u16 = 15008;

/// HTTP/2 settings tuned for bulk throughput over one TCP connection: windows in megabytes so
/// a single stream is not throttled by round trips, large frames to cut per-frame overhead.
#[derive(Clone, Copy, Debug)]
pub struct H2Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    pub max_concurrent_streams: u32,
    pub max_send_buffer: usize,
    pub handshake_timeout: Duration,
    /// Socket reads under TLS take up to this many bytes at once (0: as rustls asks, about
    /// one TLS record per read); see [`read_ahead`]. Off by default: on the benchmark
    /// machine the copy cost more than the syscalls it saved (docs/benchmarks.md).
    pub read_ahead: usize,
    /// Encrypted bytes TLS may queue before writing them out, so one write carries this
    /// much (rustls's default is 64 KiB).
    pub tls_send_buffer: usize,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_concurrent_streams: 100,
            max_send_buffer: 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            read_ahead: 0,
            tls_send_buffer: 64 * 1024,
        }
    }
}

impl H2Settings {
    fn client_builder(&self) -> h2::client::Builder {
        let mut b = h2::client::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_send_buffer_size(self.max_send_buffer)
            .enable_push(false);
        b
    }

    fn server_builder(&self) -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_send_buffer_size(self.max_send_buffer);
        b
    }
}

/// The CONNECT response codes HBONE uses (DESIGN.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectStatus {
    /// 200: tunnel open.
    Ok,
    /// 400: malformed request, or an address this endpoint does not own.
    BadRequest,
    /// 401: denied by policy.
    Denied,
    /// 503: destination unknown, or it refused the connection.
    Unavailable,
}

impl ConnectStatus {
    pub fn code(self) -> http::StatusCode {
        match self {
            ConnectStatus::Ok => http::StatusCode::OK,
            ConnectStatus::BadRequest => http::StatusCode::BAD_REQUEST,
            ConnectStatus::Denied => http::StatusCode::UNAUTHORIZED,
            ConnectStatus::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn from_code(code: http::StatusCode) -> Option<Self> {
        match code.as_u16() {
            200 => Some(ConnectStatus::Ok),
            400 => Some(ConnectStatus::BadRequest),
            401 => Some(ConnectStatus::Denied),
            503 => Some(ConnectStatus::Unavailable),
            _ => None,
        }
    }
}

/// What the client asks of the peer: where the tunnel should lead, and the request context
/// carried as headers.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    /// The original destination `ip:port`; sent as `:authority`.
    pub authority: SocketAddr,
    /// The original client address; sent as `forwarded: for=...`.
    pub forwarded_for: Option<IpAddr>,
    /// W3C baggage describing the source workload.
    pub baggage: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
}

impl ConnectRequest {
    pub fn new(authority: SocketAddr) -> Self {
        ConnectRequest {
            authority,
            forwarded_for: None,
            baggage: None,
            traceparent: None,
        }
    }

    /// The request head as sent. Public so that the CONNECT fuzz target can check that what
    /// the client writes, the server's parsers read back.
    #[doc(hidden)]
    pub fn to_http(&self) -> Result<http::Request<()>, HboneError> {
        let mut b = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(self.authority.to_string())
            .version(http::Version::HTTP_2);
        if let Some(ip) = self.forwarded_for {
            let v = match ip {
                IpAddr::V4(v4) => format!("for={v4}"),
                IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
            };
            b = b.header("forwarded", v);
        }
        if let Some(v) = &self.baggage {
            b = b.header("baggage", v.as_str());
        }
        if let Some(v) = &self.traceparent {
            b = b.header("traceparent", v.as_str());
        }
        b.body(())
            .map_err(|e| HboneError::BadRequest(e.to_string()))
    }
}

/// A CONNECT stream once open: the two halves of the HTTP/2 stream.
#[derive(Debug)]
pub struct H2Stream {
    pub send: h2::SendStream<Bytes>,
    pub recv: h2::RecvStream,
}

/// Failures of the HBONE client side.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} refused ({reason}): {detail}")]
    Tls {
        addr: SocketAddr,
        reason: Rejection,
        detail: String,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP/2: {0}")]
    Http2(#[from] h2::Error),
    #[error("bad CONNECT request: {0}")]
    BadRequest(String),
    #[error("peer answered CONNECT with {0}")]
    Status(http::StatusCode),
    #[error("TLS configuration: {0}")]
    Config(#[from] crate::tls::TlsError),
    #[error("no certificate to present: {0}")]
    NoCertificate(String),
}

impl HboneError {
    /// The refusal cause, when the peer failed our TLS checks.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            HboneError::Tls { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// Extracts the rustls error tokio-rustls wraps in an `io::Error`.
pub(crate) fn tls_error_of(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Classifies a failed handshake and describes it for a log line (our own certificate
/// checks by their message rather than rustls' debug form).
pub(crate) fn describe_tls_failure(e: &std::io::Error) -> (Rejection, String) {
    let Some(tls) = tls_error_of(e) else {
        return (Rejection::TlsProtocol, e.to_string());
    };
    let detail = match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            inner,
        ))) => format!("invalid peer certificate: {inner}"),
        other => other.to_string(),
    };
    (Rejection::from_tls_error(tls), detail)
}

#[cfg(test)]
mod tests;
