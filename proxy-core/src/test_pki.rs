//! A throwaway certificate authority and a server certificate it signed: what tests of TLS
//! to servers outside the mesh need (a trace collector, an egress endpoint). Not an API.

use std::path::{Path, PathBuf};

/// A CA and a server certificate for some names, in PEM.
pub struct ServerPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A new CA, and a certificate it signed for `names` (DNS names).
pub fn server_pki(names: &[&str]) -> ServerPki {
    let ca_key = rcgen::KeyPair::generate().expect("a CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("a CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("a server key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("a server certificate");
    ServerPki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

impl ServerPki {
    /// Writes `ca.pem`, `<name>.pem` and `<name>-key.pem` into `dir`; the CA's path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        std::fs::write(dir.join(format!("{name}.pem")), &self.cert_pem).expect("write the cert");
        std::fs::write(dir.join(format!("{name}-key.pem")), &self.key_pem).expect("write the key");
        std::fs::write(dir.join("ca.pem"), &self.ca_pem).expect("write the CA");
        dir.join("ca.pem")
    }
}
