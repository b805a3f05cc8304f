//! What the fuzz targets (`fuzz_targets/`) and the seed generator (`src/bin/seeds.rs`) share:
//! the small mesh some targets answer against, xDS responses as the controller would frame
//! them, the fixed clock of the certificate target, and the checks every xDS target makes.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use ambient_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use ambient_proto::google::protobuf::Any;
use proxy_core::state::local::LocalConfig;
use proxy_core::state::{StateStore, Update};

/// The trust domain of every target that needs one.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The instant the certificate target verifies at (2030-01-01T00:00:00Z): inside the validity
/// of the committed seed certificates (2025–2035), so the seeds stay good whatever the date.
pub const VERIFY_AT_UNIX: u64 = 1_893_456_000;

/// A small mesh: two namespaces, workloads with IPv4 and IPv6 addresses, services with and
/// without addresses, one behind a waypoint, one external hostname.
pub const MESH: &str = r#"
workloads:
  - name: web-0
    namespace: shop
    serviceAccount: web
    addresses: [10.244.1.10]
    tunnelProtocol: HBONE
    services: {"shop/web.shop.svc.cluster.local": [{servicePort: 80, targetPort: 8080}]}
  - name: db-0
    namespace: data
    serviceAccount: db
    addresses: [10.244.2.20, "fd00::20"]
    tunnelProtocol: HBONE
    services: {"data/db.data.svc.cluster.local": []}
  - name: waypoint-0
    namespace: shop
    serviceAccount: waypoint
    addresses: [10.244.1.99]
    tunnelProtocol: HBONE
    services: {"shop/waypoint.shop.svc.cluster.local": []}
services:
  - name: web
    namespace: shop
    hostname: web.shop.svc.cluster.local
    addresses: [10.96.0.10]
    ports: [{servicePort: 80, targetPort: 8080}]
  - name: db
    namespace: data
    hostname: db.data.svc.cluster.local
    addresses: [10.96.0.20, "fd00:96::20"]
    ports: [{servicePort: 5432}]
  - name: headless
    namespace: shop
    hostname: headless.shop.svc.cluster.local
    ports: [{servicePort: 80}]
  - name: waypoint
    namespace: shop
    hostname: waypoint.shop.svc.cluster.local
    addresses: [10.96.0.99]
    ports: [{servicePort: 15008}]
  - name: external
    namespace: shop
    hostname: api.example.com
    addresses: [10.96.0.30]
    ports: [{servicePort: 443}]
"#;

/// A store holding [`MESH`].
pub fn mesh_store() -> StateStore {
    let store = StateStore::new();
    let rejected = store.apply(Update {
        upserts: LocalConfig::parse(MESH)
            .expect("MESH is a valid local config")
            .to_addresses(),
        replace_all: true,
        ..Default::default()
    });
    assert!(rejected.is_empty(), "{rejected:?}");
    store
}

/// A delta xDS response carrying `resources` (name, body) of `type_url`, as the controller
/// frames them.
pub fn response(
    type_url: &str,
    resources: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        resources: resources
            .into_iter()
            .map(|(name, body)| Resource {
                name,
                version: "v1".into(),
                resource: Some(Any {
                    type_url: type_url.into(),
                    value: body.into(),
                }),
                ..Default::default()
            })
            .collect(),
        nonce: "1".into(),
        ..Default::default()
    }
}

/// One resource, `name`, whose body is `body`.
pub fn one_resource(type_url: &str, name: &str, body: &[u8]) -> DeltaDiscoveryResponse {
    response(type_url, [(name.to_string(), body.to_vec())])
}

/// The xDS client remembers a resource's version exactly when its store took the resource:
/// a version held for a rejected resource would tell the controller, on reconnect, that the
/// proxy has what it refused.
///
/// `accepted` says, for one resource of `response`, under which key its store files it and
/// whether the store holds it now (`None`: no key, the body did not decode or names nothing;
/// it must then not be held). Resources whose name or key another resource of the response
/// shares, or that the response also removes, are skipped: which one wins is not what this
/// checks.
pub fn check_held_versions(
    response: &DeltaDiscoveryResponse,
    held: &HashMap<String, String>,
    accepted: impl Fn(&Resource) -> Option<(String, bool)>,
) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<String, usize> = HashMap::new();
    let judged: Vec<Option<(String, bool)>> = response.resources.iter().map(&accepted).collect();
    for (r, j) in response.resources.iter().zip(&judged) {
        *names.entry(r.name.as_str()).or_default() += 1;
        if let Some((key, _)) = j {
            *keys.entry(key.clone()).or_default() += 1;
        }
    }
    let removed: HashSet<&str> = response
        .removed_resources
        .iter()
        .map(String::as_str)
        .collect();
    for (r, j) in response.resources.iter().zip(judged) {
        if names[r.name.as_str()] > 1 || removed.contains(r.name.as_str()) {
            continue;
        }
        let taken = match j {
            Some((key, _)) if keys[&key] > 1 || removed.contains(key.as_str()) => continue,
            Some((_, taken)) => taken,
            None => false,
        };
        let remembered = held.get(&r.name) == Some(&r.version);
        assert_eq!(
            remembered, taken,
            "resource {:?}: version remembered = {remembered}, taken by the store = {taken}",
            r.name
        );
    }
}

/// Every name the response removes is no longer held.
pub fn check_removed(response: &DeltaDiscoveryResponse, held: &HashMap<String, String>) {
    for name in &response.removed_resources {
        assert!(!held.contains_key(name), "removed {name:?} is still held");
    }
}

/// A file beside this crate's manifest (fixtures the seed generator wrote).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Reads a fixture, with a message saying how to make it when it is missing.
pub fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixture(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run `fuzz/run.sh --seeds` to write the fixtures)",
            path.display()
        )
    })
}

/// Checks `cert`'s signature with `issuer`'s key, with ring (apart from webpki and rcgen).
pub fn signed_by(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    issuer: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> bool {
    verifies(
        &cert.signature_algorithm.algorithm.to_id_string(),
        issuer,
        cert.tbs_certificate.as_ref(),
        &cert.signature_value.data,
    )
}

/// Whether `signature` (by the algorithm named by the OID `algorithm`) over `message` verifies
/// with `key`, with ring, for the algorithms a mesh CA or a workload may use.
pub fn verifies(
    algorithm: &str,
    key: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    message: &[u8],
    signature: &[u8],
) -> bool {
    use ring::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
    let algorithms: &[&dyn VerificationAlgorithm] = match algorithm {
        "1.2.840.10045.4.3.2" => &[&sig::ECDSA_P256_SHA256_ASN1, &sig::ECDSA_P384_SHA256_ASN1],
        "1.2.840.10045.4.3.3" => &[&sig::ECDSA_P256_SHA384_ASN1, &sig::ECDSA_P384_SHA384_ASN1],
        "1.3.101.112" => &[&sig::ED25519],
        "1.2.840.113549.1.1.11" => &[&sig::RSA_PKCS1_2048_8192_SHA256],
        "1.2.840.113549.1.1.12" => &[&sig::RSA_PKCS1_2048_8192_SHA384],
        "1.2.840.113549.1.1.13" => &[&sig::RSA_PKCS1_2048_8192_SHA512],
        "1.2.840.113549.1.1.10" => &[
            &sig::RSA_PSS_2048_8192_SHA256,
            &sig::RSA_PSS_2048_8192_SHA384,
            &sig::RSA_PSS_2048_8192_SHA512,
        ],
        _ => &[],
    };
    algorithms.iter().any(|alg| {
        UnparsedPublicKey::new(*alg, &key.subject_public_key.data)
            .verify(message, signature)
            .is_ok()
    })
}
