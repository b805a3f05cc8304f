//! The signing key and certificate of the mesh, and how workload certificates are issued.
//!
//! Key material lives in a directory with Istio's plug-in CA file names, so a root or an
//! intermediate made elsewhere can be dropped in:
//!
//! | file | holds |
//! |---|---|
//! | `ca-cert.pem` | the certificate that signs workloads (a root, or an intermediate) |
//! | `ca-key.pem` | its private key (PKCS#8, mode 0600) |
//! | `cert-chain.pem` | optional: intermediates from `ca-cert.pem` up to the root |
//! | `root-cert.pem` | the root peers trust |
//!
//! When the directory holds none of these, a self-signed root is generated and written there.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambient_proto::identity::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Workload certificate lifetime when the request does not ask for one (Istio's default).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime a request may ask for.
pub const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of a generated self-signed root.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issued certificates start this far in the past, for peers whose clocks run behind.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadKeyMaterial { path: PathBuf, reason: String },
    #[error("{0} exists but {1} is missing: plug-in CA files must come together")]
    Incomplete(PathBuf, PathBuf),
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    #[error("CSR asks for {requested} but the caller is authorized for {authorized}")]
    CsrIdentityMismatch {
        requested: String,
        authorized: String,
    },
    #[error("requested lifetime {0}s is not positive")]
    BadTtl(i64),
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// Issues X.509-SVIDs: one URI SAN (the SPIFFE ID), no CA flag, digitalSignature and
/// keyEncipherment, client and server auth.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the signing certificate followed by any intermediates and the root: appended to
    /// every leaf so peers can build the path.
    chain_pem: Vec<String>,
    root_pem: String,
    trust_domain: String,
    default_ttl: Duration,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, reason: impl ToString) -> CaError {
    CaError::BadKeyMaterial {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))
}

fn split_pem_certs(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in pem.lines() {
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END") {
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

/// What every root we make looks like: the trust domain as organization, a CA that may sign
/// certificates and CRLs, backdated for peers whose clocks are behind.
fn root_params(trust_domain: &str) -> Result<(CertificateParams, KeyPair), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    params
        .distinguished_name
        .push(DnType::CommonName, "ambient-rs root CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_TTL;
    params.serial_number = Some(random_serial());
    Ok((params, key))
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, generating a self-signed root there on first use.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let cert_path = dir.join("ca-cert.pem");
        let key_path = dir.join("ca-key.pem");
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(dir, trust_domain),
            (false, false) => {
                fs::create_dir_all(dir).map_err(io_err(dir))?;
                Self::generate(dir, trust_domain)
            }
            (true, false) => Err(CaError::Incomplete(cert_path, key_path)),
            (false, true) => Err(CaError::Incomplete(key_path, cert_path)),
        }
    }

    fn generate(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let (params, key) = root_params(trust_domain)?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        write_private(&dir.join("ca-key.pem"), &key.serialize_pem())?;
        fs::write(dir.join("ca-cert.pem"), &cert_pem).map_err(io_err(dir))?;
        fs::write(dir.join("root-cert.pem"), &cert_pem).map_err(io_err(dir))?;
        tracing::info!(dir = %dir.display(), "generated a self-signed root CA");
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            chain_pem: vec![cert_pem.clone()],
            root_pem: cert_pem,
            trust_domain: trust_domain.to_string(),
            default_ttl: DEFAULT_WORKLOAD_TTL,
        })
    }

    /// A new self-signed root for `trust_domain`: (certificate PEM, key PEM), as written
    /// into a CA directory or a `cacerts` Secret.
    pub fn generate_root_pem(trust_domain: &str) -> Result<(String, String), CaError> {
        let (params, key) = root_params(trust_domain)?;
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    fn load(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let cert_path = dir.join("ca-cert.pem");
        let key_path = dir.join("ca-key.pem");
        let chain_path = dir.join("cert-chain.pem");
        let root_path = dir.join("root-cert.pem");
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key_path, e))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad(&cert_path, e))?;
        check_is_ca(&cert_path, &cert_pem)?;
        let root_pem = if root_path.exists() {
            fs::read_to_string(&root_path).map_err(io_err(&root_path))?
        } else {
            cert_pem.clone()
        };
        if split_pem_certs(&root_pem).is_empty() {
            return Err(bad(&root_path, "no certificate"));
        }
        let mut chain_pem = split_pem_certs(&cert_pem);
        if chain_path.exists() {
            let chain = fs::read_to_string(&chain_path).map_err(io_err(&chain_path))?;
            for c in split_pem_certs(&chain) {
                if !chain_pem.contains(&c) {
                    chain_pem.push(c);
                }
            }
        }
        for r in split_pem_certs(&root_pem) {
            if !chain_pem.contains(&r) {
                chain_pem.push(r);
            }
        }
        Ok(CertificateAuthority {
            issuer,
            chain_pem,
            root_pem,
            trust_domain: trust_domain.to_string(),
            default_ttl: DEFAULT_WORKLOAD_TTL,
        })
    }

    /// Sets the lifetime used when a request does not ask for one.
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The roots peers should trust, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Signs `csr_pem` for `identity`. Everything but the public key comes from the CA: a SAN
    /// in the CSR must name the same identity, and is otherwise ignored.
    /// `requested_ttl_secs` of 0 means the default; longer than [`MAX_WORKLOAD_TTL`] is capped.
    /// Returns the chain as PEM strings, leaf first and root last.
    pub fn sign_workload(
        &self,
        csr_pem: &str,
        identity: &Identity,
        requested_ttl_secs: i64,
    ) -> Result<Vec<String>, CaError> {
        let ttl = match requested_ttl_secs {
            0 => self.default_ttl,
            s if s < 0 => return Err(CaError::BadTtl(s)),
            s => Duration::from_secs(s as u64).min(MAX_WORKLOAD_TTL),
        };
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::MalformedCsr(e.to_string()))?;
        let authorized = identity.to_string();
        for san in &csr.params.subject_alt_names {
            let requested = match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            };
            if requested != authorized {
                return Err(CaError::CsrIdentityMismatch {
                    requested,
                    authorized,
                });
            }
        }
        csr.params = self.leaf_params(identity, ttl)?;
        let leaf = csr.signed_by(&self.issuer)?;
        let mut chain = vec![leaf.pem()];
        chain.extend(self.chain_pem.iter().cloned());
        Ok(chain)
    }

    /// A server certificate for the controller's own TLS endpoint, with a fresh key.
    /// Returns (chain PEM, key PEM).
    pub fn issue_server(
        &self,
        dns_names: &[String],
        identity: &Identity,
        ttl: Duration,
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate()?;
        let mut params = self.leaf_params(identity, ttl)?;
        for name in dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| CaError::Sign(e))?,
            ));
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = cert.pem();
        for c in &self.chain_pem {
            chain.push_str(c);
        }
        Ok((chain, key.serialize_pem()))
    }

    fn leaf_params(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        // No subject (rcgen's default names itself): the identity is the URI name alone, which
        // is then marked critical (RFC 5280 4.2.1.6), as Istio's CA issues them.
        params.distinguished_name = DistinguishedName::new();
        let uri = identity.to_string();
        params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ttl;
        params.serial_number = Some(random_serial());
        Ok(params)
    }
}

fn check_is_ca(path: &Path, pem: &str) -> Result<(), CaError> {
    let der = ambient_proto::tls::certs_from_pem(pem.as_bytes()).map_err(|e| bad(path, e))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der[0].as_ref()).map_err(|e| bad(path, e))?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .map(|bc| bc.value.ca)
        .unwrap_or(false);
    if is_ca {
        Ok(())
    } else {
        Err(bad(
            path,
            "not a CA certificate (basicConstraints CA:FALSE)",
        ))
    }
}

/// 16 random bytes with the top bit clear, so the DER integer stays positive.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambient_proto::tls::WorkloadCertificate;

    fn csr_for(uri: Option<&str>) -> (String, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        }
        let csr = params.serialize_request(&key).unwrap();
        (csr.pem().unwrap(), key)
    }

    #[test]
    fn generates_persists_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_generate(dir.path(), "cluster.local").unwrap();
        let again = CertificateAuthority::load_or_generate(dir.path(), "cluster.local").unwrap();
        assert_eq!(ca.root_pem(), again.root_pem());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.path().join("ca-key.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn issues_valid_svids() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_generate(dir.path(), "cluster.local").unwrap();
        let id: Identity = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        let (csr, key) = csr_for(Some(&id.to_string()));
        let chain = ca.sign_workload(&csr, &id, 0).unwrap();
        assert_eq!(chain.len(), 2, "leaf + root");
        let cert = WorkloadCertificate::from_pem(
            chain.concat().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .unwrap();
        assert_eq!(cert.identity(), &id);
        let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
        assert_eq!(lifetime, DEFAULT_WORKLOAD_TTL + BACKDATE);
        // The identity is the only name: an empty subject and a critical URI name.
        let der = ambient_proto::tls::certs_from_pem(chain[0].as_bytes()).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(der[0].as_ref()).unwrap();
        assert_eq!(
            leaf.subject().iter().count(),
            0,
            "subject {}",
            leaf.subject()
        );
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical);
        // A CSR without SANs is fine: the CA decides the identity.
        let (csr, _) = csr_for(None);
        ca.sign_workload(&csr, &id, 3600).unwrap();
    }

    #[test]
    fn refuses_bad_requests() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_generate(dir.path(), "cluster.local").unwrap();
        let id: Identity = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        assert!(matches!(
            ca.sign_workload(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &id,
                0
            ),
            Err(CaError::MalformedCsr(_))
        ));
        assert!(matches!(
            ca.sign_workload("hello", &id, 0),
            Err(CaError::MalformedCsr(_))
        ));
        let (csr, _) = csr_for(Some("spiffe://cluster.local/ns/default/sa/admin"));
        assert!(matches!(
            ca.sign_workload(&csr, &id, 0),
            Err(CaError::CsrIdentityMismatch { .. })
        ));
        let (csr, _) = csr_for(None);
        assert!(matches!(
            ca.sign_workload(&csr, &id, -5),
            Err(CaError::BadTtl(-5))
        ));
    }

    #[test]
    fn loads_a_plugged_intermediate() {
        // A root made elsewhere signs an intermediate; the CA signs with the intermediate.
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::default();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        root_params
            .distinguished_name
            .push(DnType::CommonName, "offline root");
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let int_key = KeyPair::generate().unwrap();
        let mut int_params = CertificateParams::default();
        int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        int_params
            .distinguished_name
            .push(DnType::CommonName, "cluster intermediate");
        let int = int_params.signed_by(&int_key, &root_issuer).unwrap();

        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ca-cert.pem"), int.pem()).unwrap();
        fs::write(dir.path().join("ca-key.pem"), int_key.serialize_pem()).unwrap();
        fs::write(
            dir.path().join("cert-chain.pem"),
            format!("{}{}", int.pem(), root.pem()),
        )
        .unwrap();
        fs::write(dir.path().join("root-cert.pem"), root.pem()).unwrap();
        let ca = CertificateAuthority::load_or_generate(dir.path(), "cluster.local").unwrap();
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let (csr, key) = csr_for(None);
        let chain = ca.sign_workload(&csr, &id, 0).unwrap();
        assert_eq!(chain.len(), 3, "leaf, intermediate, root");
        let cert = WorkloadCertificate::from_pem(
            chain.concat().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .unwrap();
        assert_eq!(cert.chain().len(), 2, "root is not presented");
        // It verifies against the offline root.
        let bundle =
            ambient_proto::tls::TrustBundle::from_pem("cluster.local", root.pem().as_bytes())
                .unwrap();
        let parsed = rustls::server::ParsedCertificate::try_from(&cert.chain()[0]).unwrap();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            bundle.roots(),
            &cert.chain()[1..],
            rustls_pki_types::UnixTime::now(),
            ambient_proto::tls::provider()
                .signature_verification_algorithms
                .all,
        )
        .unwrap();
    }

    #[test]
    fn refuses_half_a_plugged_ca_and_a_non_ca_cert() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ca-cert.pem"), "x").unwrap();
        assert!(matches!(
            CertificateAuthority::load_or_generate(dir.path(), "cluster.local"),
            Err(CaError::Incomplete(..))
        ));
        // A leaf certificate is not a signing certificate.
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["x.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        fs::write(dir.path().join("ca-cert.pem"), cert.pem()).unwrap();
        fs::write(dir.path().join("ca-key.pem"), key.serialize_pem()).unwrap();
        let err = CertificateAuthority::load_or_generate(dir.path(), "cluster.local")
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a CA certificate"), "{err}");
    }
}
