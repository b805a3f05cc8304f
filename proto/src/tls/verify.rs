//! SPIFFE peer verification for HBONE, and the reasons a peer is refused.
//!
//! Both verifiers first check the leaf as an X.509-SVID (our own clear reasons), then delegate
//! chain, signature and validity-period checks to webpki.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::ParsedExtension;

use crate::identity::Identity;

/// A peer certificate problem found by our own SPIFFE checks.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PeerCertError {
    #[error("certificate does not parse: {0}")]
    Malformed(String),
    #[error("leaf certificate has the CA flag set")]
    CaFlag,
    #[error("certificate has no single SPIFFE ID in its URI SAN: {0}")]
    NoSpiffeId(String),
    #[error("{0}")]
    NotWorkload(String),
    #[error("trust domain {found} is not {expected}")]
    TrustDomain { found: String, expected: String },
    #[error("server identity {found} is not one of the expected [{expected}]")]
    IdentityMismatch { found: String, expected: String },
}

impl From<PeerCertError> for Error {
    fn from(e: PeerCertError) -> Self {
        Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

/// Why an HBONE peer was refused: one stable label per cause, for logs and the
/// `ambient_hbone_rejected_total{reason}` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The first bytes were not a TLS handshake.
    NotTls,
    /// TLS failed for a reason other than the certificate (versions, ALPN, alerts...).
    TlsProtocol,
    /// The client presented no certificate.
    NoClientCertificate,
    /// The chain does not lead to our trust roots.
    UnknownIssuer,
    Expired,
    NotYetValid,
    /// The leaf is a CA certificate.
    CaCertificateAsLeaf,
    /// The leaf carries no (or more than one) SPIFFE ID, or not a workload one.
    NoSpiffeId,
    /// A SPIFFE ID from another trust domain.
    TrustDomainMismatch,
    /// A server whose identity is not the one expected for the destination.
    IdentityMismatch,
    /// Any other certificate defect (bad signature, wrong key usage...).
    BadCertificate,
    /// After a good handshake the peer did not speak HTTP/2.
    Http2Protocol,
    /// The peer took too long.
    Timeout,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::NotTls => "not_tls",
            Rejection::TlsProtocol => "tls_protocol",
            Rejection::NoClientCertificate => "no_client_certificate",
            Rejection::UnknownIssuer => "unknown_issuer",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::CaCertificateAsLeaf => "ca_certificate_as_leaf",
            Rejection::NoSpiffeId => "no_spiffe_id",
            Rejection::TrustDomainMismatch => "trust_domain_mismatch",
            Rejection::IdentityMismatch => "identity_mismatch",
            Rejection::BadCertificate => "bad_certificate",
            Rejection::Http2Protocol => "http2_protocol",
            Rejection::Timeout => "timeout",
        }
    }

    /// Classifies a rustls error raised by our side of a handshake.
    pub fn from_tls_error(e: &Error) -> Rejection {
        match e {
            Error::NoCertificatesPresented => Rejection::NoClientCertificate,
            Error::InvalidMessage(_) => Rejection::NotTls,
            Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => Rejection::UnknownIssuer,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Rejection::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Rejection::NotYetValid
                }
                CertificateError::Other(OtherError(inner)) => {
                    match inner.downcast_ref::<PeerCertError>() {
                        Some(PeerCertError::CaFlag) => Rejection::CaCertificateAsLeaf,
                        Some(PeerCertError::NoSpiffeId(_) | PeerCertError::NotWorkload(_)) => {
                            Rejection::NoSpiffeId
                        }
                        Some(PeerCertError::TrustDomain { .. }) => Rejection::TrustDomainMismatch,
                        Some(PeerCertError::IdentityMismatch { .. }) => Rejection::IdentityMismatch,
                        Some(PeerCertError::Malformed(_)) | None => Rejection::BadCertificate,
                    }
                }
                _ => Rejection::BadCertificate,
            },
            _ => Rejection::TlsProtocol,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a leaf as an X.509-SVID and returns its mesh identity.
pub fn leaf_identity(der: &CertificateDer<'_>) -> Result<Identity, PeerCertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| PeerCertError::Malformed(e.to_string()))?;
    for ext in cert.extensions() {
        if let ParsedExtension::BasicConstraints(bc) = ext.parsed_extension()
            && bc.ca
        {
            return Err(PeerCertError::CaFlag);
        }
    }
    let id = spiffe::cert::spiffe_id_from_der(der.as_ref())
        .map_err(|e| PeerCertError::NoSpiffeId(e.to_string()))?;
    Identity::try_from(&id).map_err(|e| PeerCertError::NotWorkload(e.to_string()))
}

/// Server side: any SPIFFE workload ID of our trust domain, chained to our roots.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl SpiffeClientVerifier {
    pub fn new(webpki: Arc<dyn ClientCertVerifier>, trust_domain: &str) -> Self {
        SpiffeClientVerifier {
            webpki,
            trust_domain: trust_domain.to_string(),
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: they would list our CA's name to anyone who connects.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let id = leaf_identity(end_entity)?;
        if id.trust_domain() != self.trust_domain {
            return Err(PeerCertError::TrustDomain {
                found: id.trust_domain().to_string(),
                expected: self.trust_domain.clone(),
            }
            .into());
        }
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// Client side: the server must chain to our roots and be one of the expected identities.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: Vec<Identity>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        SpiffeServerVerifier {
            roots,
            expected,
            provider,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let id = leaf_identity(end_entity)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !self.expected.contains(&id) {
            let expected = self
                .expected
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(PeerCertError::IdentityMismatch {
                found: id.to_string(),
                expected,
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
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
    ) -> Result<HandshakeSignatureValid, Error> {
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
