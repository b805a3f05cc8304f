//! A throwaway CA for unit tests: issues good and deliberately bad leaves.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::{TrustBundle, WorkloadCertificate};

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

/// What to put in a leaf.
pub struct LeafSpec {
    pub uri: String,
    pub ca: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    pub fn valid(uri: &str) -> Self {
        LeafSpec {
            uri: uri.to_string(),
            ca: false,
            not_before: OffsetDateTime::now_utc() - Duration::from_secs(60),
            not_after: OffsetDateTime::now_utc() + Duration::from_secs(3600),
        }
    }
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            issuer: Issuer::new(params, key),
            root: cert.der().clone(),
        }
    }

    pub fn bundle(&self, trust_domain: &str) -> TrustBundle {
        TrustBundle::from_pem(
            trust_domain,
            super::certs_to_pem(std::slice::from_ref(&self.root)).as_bytes(),
        )
        .unwrap()
    }

    /// A leaf as raw DER, whatever its defects.
    pub fn issue_raw(
        &self,
        spec: LeafSpec,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(spec.uri.as_str().try_into().unwrap())];
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        if spec.ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }

    /// A good workload certificate.
    pub fn issue(&self, uri: &str) -> Arc<WorkloadCertificate> {
        let (chain, key) = self.issue_raw(LeafSpec::valid(uri));
        Arc::new(WorkloadCertificate::from_der(chain, key).unwrap())
    }
}
