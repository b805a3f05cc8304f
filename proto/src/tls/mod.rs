//! X.509-SVIDs and the rustls configurations that carry mutual TLS 1.3 between workloads.
//!
//! Rules (DESIGN.md, "HBONE"): TLS 1.3 only, ALPN `h2`, client certificate required, no SNI.
//! The server accepts any SPIFFE ID of its trust domain and leaves the rest to authorization;
//! the client accepts only the identities it expects for the destination.

mod verify;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::Identity;

pub use verify::{
    PeerCertError, Rejection, SpiffeClientVerifier, SpiffeServerVerifier, leaf_identity,
};

/// ALPN protocol of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors building certificates, bundles and TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate found in PEM input")]
    NoCertificate,
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("not a valid X.509-SVID: {0}")]
    InvalidSvid(String),
    #[error("certificate does not carry a mesh identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("private key does not match the certificate or is unsupported: {0}")]
    Key(rustls::Error),
    #[error("invalid trust root: {0}")]
    Root(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider every ambient-rs TLS config uses: ring, TLS 1.3 suites only,
/// AES-128-GCM first. Every byte of the mesh is sealed twice per hop pair, and AES-128 costs
/// about 30 % less CPU than AES-256 (ring's default first choice) at the same 128-bit
/// security level TLS 1.3 requires; peers that prefer otherwise still agree on a suite.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::ring::cipher_suite as suite;
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    suite::TLS13_AES_128_GCM_SHA256,
                    suite::TLS13_AES_256_GCM_SHA384,
                    suite::TLS13_CHACHA20_POLY1305_SHA256,
                ],
                ..rustls::crypto::ring::default_provider()
            })
        })
        .clone()
}

/// Parses every certificate of a PEM bundle.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// Encodes DER certificates as one PEM bundle.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for c in certs {
        out.push_str(&der_to_pem("CERTIFICATE", c.as_ref()));
    }
    out
}

/// Encodes one DER object as PEM.
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The roots that sign workload certificates, and the trust domain they sign for.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    trust_domain: String,
    roots: Arc<RootCertStore>,
    root_ders: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// Builds a bundle from PEM roots.
    pub fn from_pem(trust_domain: impl Into<String>, pem: &[u8]) -> Result<Self, TlsError> {
        let root_ders = certs_from_pem(pem)?;
        let mut roots = RootCertStore::empty();
        for der in &root_ders {
            roots
                .add(der.clone())
                .map_err(|e| TlsError::Root(e.to_string()))?;
        }
        Ok(TrustBundle {
            trust_domain: trust_domain.into(),
            roots: Arc::new(roots),
            root_ders,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    pub fn root_certs(&self) -> &[CertificateDer<'static>] {
        &self.root_ders
    }
}

/// An X.509-SVID with its private key, ready to present in TLS.
///
/// Construction checks the chain against the SPIFFE X.509-SVID rules (one SPIFFE URI SAN, no CA
/// flag, digitalSignature) and that the key matches, so a bad answer from a CA is refused here
/// instead of failing later inside a handshake.
#[derive(Debug)]
pub struct WorkloadCertificate {
    identity: Identity,
    certified: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
}

impl WorkloadCertificate {
    /// `chain`: leaf first, then intermediates (a trailing root is harmless and dropped from
    /// what is presented). `key`: PKCS#8 DER.
    pub fn from_der(
        mut chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        if chain.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let leaf = chain[0].clone();
        // The spiffe crate enforces the X.509-SVID rules on the leaf.
        let mut concatenated = Vec::new();
        for c in &chain {
            concatenated.extend_from_slice(c.as_ref());
        }
        let svid = spiffe::X509Svid::parse_from_der(&concatenated, key.secret_der())
            .map_err(|e| TlsError::InvalidSvid(e.to_string()))?;
        let identity = Identity::try_from(svid.spiffe_id())?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| TlsError::InvalidSvid(e.to_string()))?;
        let not_before = to_system_time(parsed.validity().not_before.timestamp());
        let not_after = to_system_time(parsed.validity().not_after.timestamp());
        let serial = parsed.tbs_certificate.raw_serial_as_string();
        // Drop a self-signed root at the end of the chain: peers have it already.
        if chain.len() > 1 {
            let last = chain.last().expect("non-empty");
            if let Ok((_, c)) = x509_parser::parse_x509_certificate(last.as_ref())
                && c.subject() == c.issuer()
            {
                chain.pop();
            }
        }
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Key)?;
        Ok(WorkloadCertificate {
            identity,
            certified: Arc::new(certified),
            not_before,
            not_after,
            serial,
        })
    }

    /// Parses a PEM chain and a PEM private key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = certs_from_pem(chain_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem(e.to_string()))?;
        Self::from_der(chain, key)
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Serial number as colon-separated hex, as `openssl x509` prints it.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// Presented chain (leaf first), in DER.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH
    }
}

/// The server side's current certificate, swapped in place on rotation so that new
/// handshakes pick it up without rebuilding the server config. Reads are lock-free.
#[derive(Debug, Default)]
pub struct CertSlot {
    current: ArcSwapOption<WorkloadCertificate>,
}

impl CertSlot {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn store(&self, cert: Arc<WorkloadCertificate>) {
        self.current.store(Some(cert));
    }

    pub fn load(&self) -> Option<Arc<WorkloadCertificate>> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No certificate yet means the handshake fails; the caller fetches one before serving.
        self.current.load().as_ref().map(|c| c.certified.clone())
    }
}

/// Presents one fixed certificate as the TLS client.
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The HBONE server config: requires a client certificate from our trust domain and presents
/// whatever `certs` resolves (a [`CertSlot`] for rotating workload certificates).
pub fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    bundle: &TrustBundle,
) -> Result<ServerConfig, TlsError> {
    let webpki = WebPkiClientVerifier::builder_with_provider(bundle.roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = Arc::new(SpiffeClientVerifier::new(webpki, bundle.trust_domain()));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // HBONE clients never resume (each connection is built for one destination identity).
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The HBONE client config for one destination: presents `cert` and accepts only a server
/// whose SPIFFE ID is one of `expected`.
pub fn client_config(
    cert: &WorkloadCertificate,
    bundle: &TrustBundle,
    expected: Vec<Identity>,
) -> Result<ClientConfig, TlsError> {
    let verifier = Arc::new(SpiffeServerVerifier::new(
        bundle.roots.clone(),
        expected,
        provider(),
    ));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(FixedClientCert(cert.certified.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::testing::TestCa;
    use super::*;

    const TD: &str = "cluster.local";

    /// A full in-memory handshake between our client and server configs.
    fn handshake(
        client: ClientConfig,
        server: ServerConfig,
    ) -> (rustls::ClientConnection, rustls::ServerConnection) {
        let name = rustls_pki_types::ServerName::try_from("hbone").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        let mut wire = Vec::new();
        while c.is_handshaking() || s.is_handshaking() {
            wire.clear();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            wire.clear();
            s.write_tls(&mut wire).unwrap();
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        (c, s)
    }

    #[test]
    fn mesh_connections_use_tls13_with_aes_128_gcm() {
        let ca = TestCa::new("root");
        let bundle = ca.bundle(TD);
        let server_id = "spiffe://cluster.local/ns/shop/sa/server";
        let slot = Arc::new(CertSlot::new());
        slot.store(ca.issue(server_id));
        let client = client_config(
            &ca.issue("spiffe://cluster.local/ns/shop/sa/client"),
            &bundle,
            vec![server_id.parse().unwrap()],
        )
        .unwrap();
        let (c, s) = handshake(client, server_config(slot.clone(), &bundle).unwrap());
        for suite in [c.negotiated_cipher_suite(), s.negotiated_cipher_suite()] {
            assert_eq!(
                suite.map(|s| s.suite()),
                Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
            );
        }
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));

        // A peer that offers only AES-256 (as another implementation might) still connects.
        let aes256_only = Arc::new(CryptoProvider {
            cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384],
            ..rustls::crypto::ring::default_provider()
        });
        let cert = ca.issue("spiffe://cluster.local/ns/shop/sa/client");
        let verifier = Arc::new(SpiffeServerVerifier::new(
            bundle.roots.clone(),
            vec![server_id.parse().unwrap()],
            aes256_only.clone(),
        ));
        let other = ClientConfig::builder_with_provider(aes256_only)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(FixedClientCert(cert.certified.clone())));
        let (c, _) = handshake(other, server_config(slot, &bundle).unwrap());
        assert_eq!(
            c.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384)
        );
    }
}
