//! The SPIFFE certificate verifiers of HBONE, on arbitrary DER chains: the server's check of
//! a client (`SpiffeClientVerifier`: an X.509-SVID of our trust domain, chained to our root
//! by webpki) and the client's check of a server (`SpiffeServerVerifier`: chained to our root
//! and one of the expected identities), and `leaf_identity`, which every HBONE connection
//! uses to name its peer.
//!
//! Input: DER certificates one after the other (leaf first), or a PEM bundle. The root is
//! the seed generator's (`fuzz/fixtures/root.der`); time stands still at 2030-01-01.
//!
//! Checks: whatever a verifier accepts is signed by the root — through the given
//! intermediates, each signature checked here with ring, apart from webpki —, valid at that
//! time, not a CA, a workload identity of our trust domain and, for a server, one of those
//! expected. A chain not signed by the root is never accepted.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use ambient_fuzz::{TRUST_DOMAIN, VERIFY_AT_UNIX, read_fixture, signed_by};
use ambient_proto::identity::Identity;
use ambient_proto::tls::{
    SpiffeClientVerifier, SpiffeServerVerifier, TrustBundle, certs_from_pem, certs_to_pem,
    leaf_identity, provider,
};
use libfuzzer_sys::fuzz_target;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The identities a client expects of the server it dials.
const EXPECTED: [&str; 2] = [
    "spiffe://cluster.local/ns/shop/sa/web",
    "spiffe://cluster.local/ns/data/sa/db",
];

struct Fixture {
    root: Vec<u8>,
    client_check: SpiffeClientVerifier,
    server_check: SpiffeServerVerifier,
    expected: Vec<Identity>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let root = read_fixture("root.der");
    let pem = certs_to_pem(&[CertificateDer::from(root.clone())]);
    let bundle = TrustBundle::from_pem(TRUST_DOMAIN, pem.as_bytes()).expect("a root");
    let webpki = WebPkiClientVerifier::builder_with_provider(bundle.roots().clone(), provider())
        .build()
        .expect("a verifier");
    let expected: Vec<Identity> = EXPECTED.iter().map(|s| s.parse().expect("valid")).collect();
    Fixture {
        client_check: SpiffeClientVerifier::new(webpki, TRUST_DOMAIN),
        server_check: SpiffeServerVerifier::new(
            bundle.roots().clone(),
            expected.clone(),
            provider(),
        ),
        expected,
        root,
    }
});

fuzz_target!(|data: &[u8]| {
    let chain: Vec<CertificateDer<'static>> = if data.starts_with(b"-----BEGIN") {
        match certs_from_pem(data) {
            Ok(certs) => certs,
            Err(_) => return,
        }
    } else {
        split_der(data)
            .into_iter()
            .map(|c| CertificateDer::from(c.to_vec()))
            .collect()
    };
    let Some((leaf, intermediates)) = chain.split_first() else {
        return;
    };
    let f = &*FIXTURE;
    let now = UnixTime::since_unix_epoch(Duration::from_secs(VERIFY_AT_UNIX));
    let identity = leaf_identity(leaf);

    let as_client = f.client_check.verify_client_cert(leaf, intermediates, now);
    if as_client.is_ok() {
        let id = accepted(f, leaf, intermediates, &identity, "client");
        assert_eq!(id.trust_domain(), TRUST_DOMAIN);
    }
    let name = ServerName::try_from("hbone").expect("a name");
    let as_server = f
        .server_check
        .verify_server_cert(leaf, intermediates, &name, &[], now);
    if as_server.is_ok() {
        let id = accepted(f, leaf, intermediates, &identity, "server");
        assert!(f.expected.contains(&id), "server {id} was not expected");
    }
});

/// What must hold of any accepted chain; returns the peer's identity.
fn accepted(
    f: &Fixture,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    identity: &Result<Identity, ambient_proto::tls::PeerCertError>,
    role: &str,
) -> Identity {
    let id = identity
        .clone()
        .unwrap_or_else(|e| panic!("{role} accepted without an identity: {e}"));
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .unwrap_or_else(|e| panic!("{role} accepted an unparsable leaf: {e}"));
    assert!(!cert.is_ca(), "{role} accepted a CA leaf");
    let now = VERIFY_AT_UNIX as i64;
    let validity = cert.validity();
    assert!(
        validity.not_before.timestamp() <= now && now <= validity.not_after.timestamp(),
        "{role} accepted a leaf outside its validity"
    );
    let (_, root) = x509_parser::parse_x509_certificate(&f.root).expect("the root parses");
    let parsed: Vec<X509Certificate<'_>> = intermediates
        .iter()
        .filter_map(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
        .map(|(_, c)| c)
        .collect();
    assert!(
        chains_to(
            &cert,
            root.public_key(),
            &parsed,
            &mut vec![false; parsed.len()],
            0
        ),
        "{role} accepted a chain that the root did not sign"
    );
    id
}

/// Whether `cert` is signed by `root`, directly or through unused `intermediates`.
fn chains_to(
    cert: &X509Certificate<'_>,
    root: &SubjectPublicKeyInfo<'_>,
    intermediates: &[X509Certificate<'_>],
    used: &mut [bool],
    depth: usize,
) -> bool {
    if signed_by(cert, root) {
        return true;
    }
    if depth >= 6 {
        return false;
    }
    for i in 0..intermediates.len() {
        if used[i] || !signed_by(cert, intermediates[i].public_key()) {
            continue;
        }
        used[i] = true;
        let ok = chains_to(&intermediates[i], root, intermediates, used, depth + 1);
        used[i] = false;
        if ok {
            return true;
        }
    }
    false
}

/// DER values one after the other; what does not frame as one is the last piece.
fn split_der(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !data.is_empty() && out.len() < 8 {
        match der_len(data) {
            Some(n) if n <= data.len() => {
                out.push(&data[..n]);
                data = &data[n..];
            }
            _ => {
                out.push(data);
                break;
            }
        }
    }
    out
}

fn der_len(d: &[u8]) -> Option<usize> {
    let first = *d.get(1)?;
    if first < 0x80 {
        return Some(2 + usize::from(first));
    }
    let k = usize::from(first & 0x7f);
    if k == 0 || k > 4 || d.len() < 2 + k {
        return None;
    }
    let n = d[2..2 + k]
        .iter()
        .fold(0usize, |n, b| (n << 8) | usize::from(*b));
    Some(2 + k + n)
}
