//! Endpoints outside the mesh (a ServiceEntry's, or pods not enrolled): reached over plain
//! TCP from the waypoint itself, not through an HBONE tunnel, and, when a DestinationRule
//! asks for it (`tls.mode: SIMPLE`), over TLS the waypoint originates, so an app's plain
//! HTTP leaves the mesh as HTTPS.
//!
//! A port whose TLS cannot be set up (an unreadable CA file) fails its connections instead
//! of sending in the clear: TLS asked for is never silently dropped.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use ambient_proto::ambient::waypoint::v1 as pb;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::stream::StreamIo;

/// TLS originated towards one service port's endpoints outside the mesh, or why it cannot be.
#[derive(Clone, Debug)]
pub enum Origination {
    Tls(Arc<TlsClient>),
    /// Asked for but unusable: connections fail with this reason.
    Broken(Arc<str>),
}

/// A compiled `ClientTls`: configurations for HTTP/1.1 and HTTP/2 (they differ in ALPN) and
/// the name sent as SNI.
pub struct TlsClient {
    /// Unique among every compiled origination: pooled connections carry it.
    id: u64,
    http1: TlsConnector,
    http2: TlsConnector,
    /// For TCP passthrough: no ALPN.
    opaque: TlsConnector,
    server_name: ServerName<'static>,
    /// What it was compiled from (a rebuild with the same settings keeps it).
    pub source: pb::ClientTls,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// How the bytes above TLS are spoken, for ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    Http2,
    Opaque,
}

impl Origination {
    /// Compiles `tls` for a service whose hostname is `host` (the SNI name by default).
    pub fn compile(tls: &pb::ClientTls, host: &str) -> Origination {
        match TlsClient::new(tls, host) {
            Ok(c) => Origination::Tls(Arc::new(c)),
            Err(e) => Origination::Broken(e.into()),
        }
    }

    /// Tells compiled settings apart (never 0): connections opened under one are pooled
    /// under it.
    pub fn id(&self) -> u64 {
        match self {
            Origination::Tls(c) => c.id,
            // Nothing is ever opened under it.
            Origination::Broken(_) => u64::MAX,
        }
    }

    /// The settings it was compiled from, when usable.
    pub fn source(&self) -> Option<&pb::ClientTls> {
        match self {
            Origination::Tls(c) => Some(&c.source),
            Origination::Broken(_) => None,
        }
    }
}

impl TlsClient {
    fn new(tls: &pb::ClientTls, host: &str) -> Result<TlsClient, String> {
        let sni = if tls.sni.is_empty() { host } else { &tls.sni };
        let server_name = ServerName::try_from(sni.to_string())
            .map_err(|e| format!("SNI {sni:?} is not a server name: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
            Arc::new(AnyCertificate {
                provider: provider.clone(),
            })
        } else {
            let roots = roots(&tls.ca_certificates)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("certificate verifier: {e}"))?;
            let names = tls
                .subject_alt_names
                .iter()
                .map(|n| {
                    ServerName::try_from(n.clone())
                        .map_err(|e| format!("subjectAltName {n:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if names.is_empty() {
                webpki
            } else {
                Arc::new(AnyOfNames { webpki, names })
            }
        };
        let config = |alpn: &[&[u8]]| -> Result<TlsConnector, String> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS configuration: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(TlsConnector::from(Arc::new(c)))
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(TlsClient {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            http1: config(&[b"http/1.1"])?,
            http2: config(&[b"h2"])?,
            opaque: config(&[])?,
            server_name,
            source: tls.clone(),
        })
    }

    /// The TLS handshake over `tcp`.
    pub async fn handshake(&self, tcp: TcpStream, alpn: Alpn) -> io::Result<TlsStream<TcpStream>> {
        let connector = match alpn {
            Alpn::Http1 => &self.http1,
            Alpn::Http2 => &self.http2,
            Alpn::Opaque => &self.opaque,
        };
        connector.connect(self.server_name.clone(), tcp).await
    }
}

/// The authorities trusted: those of the PEM file at `path`, or the system's store.
fn roots(path: &str) -> Result<Arc<RootCertStore>, String> {
    if path.is_empty() {
        return system_roots();
    }
    let pem = std::fs::read(path).map_err(|e| format!("caCertificates {path}: {e}"))?;
    let certs = ambient_proto::tls::certs_from_pem(&pem)
        .map_err(|e| format!("caCertificates {path}: {e}"))?;
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("caCertificates {path}: no usable certificate"));
    }
    Ok(Arc::new(store))
}

/// The system's trust store, read once.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static SYSTEM: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(format!(
                    "the system's trust store has no certificate ({} errors); set caCertificates",
                    found.errors.len()
                ));
            }
            Ok(Arc::new(store))
        })
        .clone()
}

/// Accepts a certificate valid for any of `names` (DestinationRule `subjectAltNames`),
/// whatever the SNI name was.
#[derive(Debug)]
struct AnyOfNames {
    webpki: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AnyOfNames {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("no subjectAltNames".into());
        for name in &self.names {
            match self
                .webpki
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `insecureSkipVerify`: any certificate; the handshake's signatures are still checked (the
/// peer holds the key of the certificate it showed).
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A connection to an endpoint: a CONNECT stream through its ztunnel, or, outside the mesh,
/// TCP or TLS over TCP.
pub enum UpstreamIo {
    Tunnel(StreamIo),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A plain TCP connection to `addr` within `timeout`, then TLS when `origination` asks.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    origination: Option<&Origination>,
    alpn: Alpn,
) -> Result<UpstreamIo, DirectError> {
    // Checked first: a port whose TLS is broken never opens a plain connection.
    let tls = match origination {
        Some(Origination::Broken(reason)) => return Err(DirectError::Tls(reason.to_string())),
        Some(Origination::Tls(c)) => Some(c),
        None => None,
    };
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| DirectError::Timeout(timeout))?
        .map_err(DirectError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(UpstreamIo::Tcp(tcp));
    };
    match tokio::time::timeout(timeout, tls.handshake(tcp, alpn)).await {
        Err(_) => Err(DirectError::Timeout(timeout)),
        Ok(Err(e)) => Err(DirectError::Tls(e.to_string())),
        Ok(Ok(stream)) => Ok(UpstreamIo::Tls(Box::new(stream))),
    }
}

/// Why a connection outside the mesh failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("TCP connect: {0}")]
    Connect(io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS origination: {0}")]
    Tls(String),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tunnel(s) => s.is_write_vectored(),
            UpstreamIo::Tcp(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A CA, and a certificate it signed for `api.example.test`: (CA PEM, cert PEM, key PEM).
    fn server_certificate() -> (String, String, String) {
        let pki = proxy_core::test_pki::server_pki(&["api.example.test"]);
        (pki.ca_pem, pki.cert_pem, pki.key_pem)
    }

    /// A TLS server answering each connection with the ALPN protocol it agreed on, then
    /// echoing one read.
    async fn serve_tls(cert: &str, key: &str) -> SocketAddr {
        let certs = ambient_proto::tls::certs_from_pem(cert.as_bytes()).unwrap();
        let key: rustls::pki_types::PrivateKeyDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return; // the client refused our certificate
                    };
                    let alpn = tls.get_ref().1.alpn_protocol().unwrap_or(b"none").to_vec();
                    let mut buf = [0u8; 64];
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    let mut answer = alpn;
                    answer.push(b' ');
                    answer.extend_from_slice(&buf[..n]);
                    let _ = tls.write_all(&answer).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    fn settings(ca: &str) -> pb::ClientTls {
        pb::ClientTls {
            mode: pb::client_tls::Mode::Simple as i32,
            ca_certificates: ca.into(),
            ..Default::default()
        }
    }

    async fn exchange(
        addr: SocketAddr,
        origination: &Origination,
        alpn: Alpn,
    ) -> Result<String, DirectError> {
        let mut io = connect(addr, Duration::from_secs(5), Some(origination), alpn).await?;
        io.write_all(b"hello").await.unwrap();
        let mut answer = String::new();
        io.read_to_string(&mut answer).await.unwrap();
        Ok(answer)
    }

    #[tokio::test]
    async fn originates_tls_verified_against_the_given_authorities() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = server_certificate();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca).unwrap();
        let ca_path = ca_file.to_str().unwrap();
        let addr = serve_tls(&cert, &key).await;

        // The service's hostname is the SNI name by default; ALPN follows the protocol.
        let tls = Origination::compile(&settings(ca_path), "api.example.test");
        assert_eq!(
            exchange(addr, &tls, Alpn::Http1).await.unwrap(),
            "http/1.1 hello"
        );
        assert_eq!(exchange(addr, &tls, Alpn::Http2).await.unwrap(), "h2 hello");
        assert_eq!(
            exchange(addr, &tls, Alpn::Opaque).await.unwrap(),
            "none hello"
        );

        // A name the certificate does not hold is refused...
        let wrong = Origination::compile(&settings(ca_path), "other.example.test");
        let err = exchange(addr, &wrong, Alpn::Http1).await.unwrap_err();
        assert!(matches!(err, DirectError::Tls(_)), "{err}");
        // ...unless subjectAltNames accept what it holds.
        let sans = pb::ClientTls {
            subject_alt_names: vec!["api.example.test".into()],
            ..settings(ca_path)
        };
        let tls = Origination::compile(&sans, "other.example.test");
        assert_eq!(
            exchange(addr, &tls, Alpn::Http1).await.unwrap(),
            "http/1.1 hello"
        );

        // Another authority's certificate is refused; insecureSkipVerify takes any.
        let (other_ca, _, _) = server_certificate();
        let other_file = dir.path().join("other.pem");
        std::fs::write(&other_file, other_ca).unwrap();
        let untrusted =
            Origination::compile(&settings(other_file.to_str().unwrap()), "api.example.test");
        assert!(matches!(
            exchange(addr, &untrusted, Alpn::Http1).await,
            Err(DirectError::Tls(_))
        ));
        let skip = pb::ClientTls {
            insecure_skip_verify: true,
            ..settings(other_file.to_str().unwrap())
        };
        let tls = Origination::compile(&skip, "api.example.test");
        assert_eq!(
            exchange(addr, &tls, Alpn::Http1).await.unwrap(),
            "http/1.1 hello"
        );
    }

    #[tokio::test]
    async fn unusable_tls_fails_before_any_connection_is_opened() {
        let broken = Origination::compile(&settings("/nonexistent/ca.pem"), "api.example.test");
        let Origination::Broken(reason) = &broken else {
            panic!("{broken:?}");
        };
        assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");
        // Nothing listens there: a plain connection attempt would fail with Connect.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let err = exchange(addr, &broken, Alpn::Http1).await.unwrap_err();
        assert!(matches!(err, DirectError::Tls(_)), "{err}");

        let bad_sni = pb::ClientTls {
            sni: "not a name!".into(),
            ..settings("")
        };
        assert!(matches!(
            Origination::compile(&bad_sni, "api.example.test"),
            Origination::Broken(_)
        ));
    }
}
