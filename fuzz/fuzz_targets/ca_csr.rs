//! The mesh CA's `CreateCertificate` (`ambient_controller::ca::CaService`), as a ztunnel or a
//! waypoint calls it: the caller's bearer token, an `IstioCertificateRequest` (a CSR in PEM,
//! a lifetime, the `ImpersonatedIdentity` metadata), through authentication, the decision of
//! which identity the caller may have, the CSR's parsing and proof of possession, and the
//! signing.
//!
//! Input: one byte, then the rest. The byte's low two bits pick the caller's token (node-a's
//! ztunnel, node-b's, the `shop/waypoint` waypoint, an unknown token). Its top bit picks how
//! the rest is read:
//! - clear: the rest is the request as protobuf, as it comes off the wire;
//! - set: the rest chooses a request (`arbitrary`) whose CSR the target builds and signs
//!   itself, with subject alternative names, metadata and lifetime of the fuzzer's choice,
//!   so that the CA's decisions past the CSR's signature are reached.
//!
//! Checks, for every request: the outcome agrees with a reference reading of the rules written
//! here (unknown token: unauthenticated; an identity a caller may not have: permission
//! denied; a negative lifetime: invalid argument) and the CA never answers "internal". For a
//! built CSR (always well formed) the outcome is exactly the reference's, certificate or code.
//! Whatever is issued: the CSR parses and its signature verifies with its own key (checked
//! with ring, apart from rcgen); every name it asked for is the granted identity; the leaf is
//! signed by the CA, carries the CSR's key, is not a CA, has no subject and names exactly the
//! granted identity (critical) and no other name, has only the extensions the CA sets, and
//! lives exactly the lifetime asked for (0: the default; capped at the maximum) plus the
//! backdating.

#![no_main]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};

use ambient_controller::ca::auth::AuthError;
use ambient_controller::ca::authority::{DEFAULT_WORKLOAD_TTL, MAX_WORKLOAD_TTL};
use ambient_controller::ca::{Authenticator, CaService, Caller, CertificateAuthority};
use ambient_controller::nodes::NodeDirectory;
use ambient_fuzz::{TRUST_DOMAIN, signed_by, verifies};
use ambient_proto::google::protobuf::value::Kind;
use ambient_proto::google::protobuf::{Struct, Value};
use ambient_proto::identity::Identity;
use ambient_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use ambient_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use ambient_proto::tls::certs_from_pem;
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::{Code, Status};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// The identities the built requests choose among (one of another trust domain).
const IDENTITIES: [&str; 6] = [
    "spiffe://cluster.local/ns/shop/sa/web",
    "spiffe://cluster.local/ns/shop/sa/reviews",
    "spiffe://cluster.local/ns/data/sa/db",
    "spiffe://cluster.local/ns/istio-system/sa/ztunnel",
    "spiffe://cluster.local/ns/shop/sa/waypoint",
    "spiffe://example.org/ns/shop/sa/web",
];

/// Which pods' identities run on which node.
const RUNS_ON: [(&str, &str); 3] = [
    ("node-a", "spiffe://cluster.local/ns/shop/sa/web"),
    ("node-a", "spiffe://cluster.local/ns/shop/sa/reviews"),
    ("node-b", "spiffe://cluster.local/ns/data/sa/db"),
];

/// The tokens of the four callers, by the input's low two bits.
const TOKENS: [&str; 4] = ["node-a", "node-b", "waypoint", "forged"];

/// The waypoint's service account.
const WAYPOINT: (&str, &str) = ("shop", "waypoint");

/// Issued certificates start this far in the past (the CA's backdating).
const BACKDATE_SECS: i64 = 60;

/// The extensions the CA puts in a workload certificate: subject alternative name, basic
/// constraints, key usage, extended key usage, authority and subject key identifiers.
const LEAF_EXTENSIONS: [&str; 6] = [
    "2.5.29.17",
    "2.5.29.19",
    "2.5.29.15",
    "2.5.29.37",
    "2.5.29.35",
    "2.5.29.14",
];

struct Tokens;

impl Authenticator for Tokens {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, AuthError>> + Send + 'a>> {
        Box::pin(std::future::ready(
            caller_of(token).ok_or(AuthError::UnknownToken),
        ))
    }
}

fn caller_of(token: &str) -> Option<Caller> {
    match token {
        "node-a" | "node-b" => Some(Caller::Node(token.to_string())),
        "waypoint" => Some(Caller::Waypoint {
            namespace: WAYPOINT.0.into(),
            service_account: WAYPOINT.1.into(),
            pod: "waypoint-0".into(),
            node: "node-b".into(),
        }),
        _ => None,
    }
}

struct Directory;

impl NodeDirectory for Directory {
    fn runs_on(&self, node: &str, identity: &Identity) -> bool {
        let id = identity.to_string();
        RUNS_ON.iter().any(|(n, i)| *n == node && *i == id)
    }
    fn nodes(&self) -> Vec<String> {
        vec!["node-a".into(), "node-b".into()]
    }
}

struct Fixture {
    service: CaService,
    /// The CA's certificate (self-signed root), DER.
    ca_der: Vec<u8>,
    /// The chain after the leaf, as the CA appends it.
    chain_tail: Vec<String>,
    /// Keys the built CSRs are signed with (ECDSA P-256, Ed25519).
    keys: [KeyPair; 2],
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    // A fresh CA a process: generated into a directory of its own, which is removed once read.
    let dir = std::env::temp_dir().join(format!("ambient-fuzz-ca-{}", std::process::id()));
    let ca = CertificateAuthority::load_or_generate(&dir, TRUST_DOMAIN).expect("a CA");
    let _ = std::fs::remove_dir_all(&dir);
    let root = ca.root_pem().to_string();
    let ca_der = certs_from_pem(root.as_bytes()).expect("the CA's certificate")[0].to_vec();
    Fixture {
        service: CaService::new(Arc::new(ca), Arc::new(Tokens), Arc::new(Directory)),
        ca_der,
        chain_tail: vec![root],
        keys: [
            KeyPair::generate().expect("a P-256 key"),
            KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("an Ed25519 key"),
        ],
    }
});

#[derive(Arbitrary, Debug)]
enum Name {
    Identity(u8),
    Uri(String),
    Dns(String),
    Ip([u8; 4]),
    Email(String),
}

#[derive(Arbitrary, Debug)]
enum Impersonation {
    Absent,
    Identity(u8),
    Text(String),
    Number(f64),
}

#[derive(Arbitrary, Debug)]
enum Lifetime {
    Default,
    Hours(u16),
    Days(u16),
    Seconds(i64),
}

#[derive(Arbitrary, Debug)]
struct Built {
    names: Vec<Name>,
    impersonation: Impersonation,
    lifetime: Lifetime,
    ed25519: bool,
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let token = TOKENS[usize::from(first & 3)];
    let built = first & 0x80 != 0;
    let request = if built {
        match build(&mut Unstructured::new(rest)) {
            Some(r) => r,
            None => return,
        }
    } else {
        match IstioCertificateRequest::decode(rest) {
            Ok(r) => r,
            Err(_) => return,
        }
    };
    let expected = reference(token, &request);
    let outcome = create_certificate(token, request.clone());
    match (&outcome, &expected) {
        (_, Err(code)) => assert_eq!(
            outcome.as_ref().map_err(Status::code).err(),
            Some(*code),
            "the reference refuses with {code:?}; the CA answered {outcome:?}"
        ),
        (Ok(response), Ok(identity)) => issued(response, &request, identity),
        (Err(status), Ok(identity)) => {
            // Refused for the CSR's sake only: malformed, or naming someone else.
            assert!(
                !built || status.code() == Code::PermissionDenied,
                "a CSR built here refused: {status:?}"
            );
            match status.code() {
                Code::InvalidArgument => {}
                Code::PermissionDenied => assert!(
                    names_other_than(&request.csr, identity) != Some(false),
                    "refused {identity} to a CSR naming only it: {status:?}"
                ),
                code => panic!("the CA answered {code:?}: {status:?}"),
            }
            if built {
                assert_eq!(
                    names_other_than(&request.csr, identity),
                    Some(true),
                    "{status:?}"
                );
            }
        }
    }
});

/// Runs the service's handler with `token` as the bearer; it never has to wait here.
fn create_certificate(
    token: &str,
    request: IstioCertificateRequest,
) -> Result<IstioCertificateResponse, Status> {
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("an ASCII header"),
    );
    let mut call = FIXTURE.service.create_certificate(request);
    match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(outcome) => outcome.map(tonic::Response::into_inner),
        Poll::Pending => panic!("the CA waited with nothing to wait for"),
    }
}

/// A request whose CSR is built and signed here.
fn build(u: &mut Unstructured<'_>) -> Option<IstioCertificateRequest> {
    let b = Built::arbitrary(u).ok()?;
    let mut params = CertificateParams::default();
    for name in b.names.iter().take(4) {
        params.subject_alt_names.push(match name {
            Name::Identity(i) => SanType::URI(pick(*i).try_into().ok()?),
            Name::Uri(s) => SanType::URI(s.as_str().try_into().ok()?),
            Name::Dns(s) => SanType::DnsName(s.as_str().try_into().ok()?),
            Name::Ip(a) => SanType::IpAddress(std::net::Ipv4Addr::from(*a).into()),
            Name::Email(s) => SanType::Rfc822Name(s.as_str().try_into().ok()?),
        });
    }
    let key = &FIXTURE.keys[usize::from(b.ed25519)];
    let csr = params.serialize_request(key).ok()?.pem().ok()?;
    let value = |kind| Value { kind: Some(kind) };
    let impersonation = match b.impersonation {
        Impersonation::Absent => None,
        Impersonation::Identity(i) => Some(value(Kind::StringValue(pick(i).into()))),
        Impersonation::Text(s) => Some(value(Kind::StringValue(s))),
        Impersonation::Number(n) => Some(value(Kind::NumberValue(n))),
    };
    Some(IstioCertificateRequest {
        csr,
        validity_duration: match b.lifetime {
            Lifetime::Default => 0,
            Lifetime::Hours(h) => i64::from(h) * 3600,
            Lifetime::Days(d) => i64::from(d) * 86_400,
            Lifetime::Seconds(s) => s,
        },
        metadata: impersonation.map(|v| Struct {
            fields: [("ImpersonatedIdentity".to_string(), v)].into(),
        }),
    })
}

fn pick(i: u8) -> &'static str {
    IDENTITIES[usize::from(i) % IDENTITIES.len()]
}

/// The rules, read independently of the service: which identity `token`'s caller obtains
/// with this request, or the code that refuses it before the CSR is looked at.
fn reference(token: &str, request: &IstioCertificateRequest) -> Result<Identity, Code> {
    let caller = caller_of(token).ok_or(Code::Unauthenticated)?;
    let requested = match request
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("ImpersonatedIdentity"))
    {
        None => None,
        Some(Value {
            kind: Some(Kind::StringValue(s)),
        }) => Some(s.parse::<Identity>().map_err(|_| Code::InvalidArgument)?),
        Some(_) => return Err(Code::InvalidArgument),
    };
    let identity = match caller {
        Caller::Node(node) => {
            let id = requested.ok_or(Code::PermissionDenied)?;
            let text = id.to_string();
            let on_node = RUNS_ON.iter().any(|(n, i)| *n == node && *i == text);
            if id.trust_domain() != TRUST_DOMAIN
                || !(on_node || text == "spiffe://cluster.local/ns/istio-system/sa/ztunnel")
            {
                return Err(Code::PermissionDenied);
            }
            id
        }
        Caller::Waypoint {
            namespace,
            service_account,
            ..
        } => {
            let own = Identity::new(TRUST_DOMAIN, &namespace, &service_account)
                .map_err(|_| Code::PermissionDenied)?;
            if requested.is_some_and(|id| id != own) {
                return Err(Code::PermissionDenied);
            }
            own
        }
    };
    if request.validity_duration < 0 {
        return Err(Code::InvalidArgument);
    }
    Ok(identity)
}

/// Whether the CSR names anything but `identity` (None: it does not parse here).
fn names_other_than(csr_pem: &str, identity: &Identity) -> Option<bool> {
    let der = pem_der(csr_pem)?;
    let (_, csr) = X509CertificationRequest::from_der(&der).ok()?;
    let wanted = identity.to_string();
    let mut other = false;
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            other |= san
                .general_names
                .iter()
                .any(|n| !matches!(n, GeneralName::URI(u) if *u == wanted));
        }
    }
    Some(other)
}

fn pem_der(text: &str) -> Option<Vec<u8>> {
    pem::parse(text).ok().map(|p| p.contents().to_vec())
}

/// What must hold of every certificate the CA issues.
fn issued(response: &IstioCertificateResponse, request: &IstioCertificateRequest, id: &Identity) {
    let f = &*FIXTURE;
    let wanted = id.to_string();

    // Proof of possession, checked apart from rcgen: the CSR verifies with its own key.
    let der = pem_der(&request.csr).expect("an accepted CSR is PEM");
    let (_, csr) = X509CertificationRequest::from_der(&der).expect("an accepted CSR parses");
    let info = &csr.certification_request_info;
    assert!(
        verifies(
            &csr.signature_algorithm.algorithm.to_id_string(),
            &info.subject_pki,
            info.raw,
            &csr.signature_value.data,
        ),
        "issued for a CSR whose signature does not verify"
    );
    assert_eq!(names_other_than(&request.csr, id), Some(false));

    let (leaf_pem, tail) = response.cert_chain.split_first().expect("a chain");
    assert_eq!(tail, &f.chain_tail[..], "the chain after the leaf");
    let leaf_der = certs_from_pem(leaf_pem.as_bytes()).expect("the leaf is PEM");
    assert_eq!(leaf_der.len(), 1, "one certificate per chain entry");
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der[0]).expect("the leaf parses");
    let (_, ca) = x509_parser::parse_x509_certificate(&f.ca_der).expect("the CA parses");
    assert!(
        signed_by(&leaf, ca.public_key()),
        "the CA did not sign the leaf"
    );
    assert_eq!(
        leaf.public_key().raw,
        info.subject_pki.raw,
        "the leaf does not carry the CSR's key"
    );
    assert!(!leaf.is_ca(), "a CA certificate issued to a workload");
    assert!(
        leaf.basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|b| !b.value.ca),
        "the leaf does not say it is no CA"
    );
    for ext in leaf.extensions() {
        let oid = ext.oid.to_id_string();
        assert!(
            LEAF_EXTENSIONS.contains(&oid.as_str()),
            "extension {oid} in the leaf"
        );
    }
    assert_eq!(
        leaf.subject().iter().count(),
        0,
        "subject {}",
        leaf.subject()
    );
    let san = leaf.subject_alternative_name().ok().flatten();
    assert!(
        san.as_ref().is_some_and(|s| s.critical),
        "the only name is not critical"
    );
    let names: Vec<_> = san
        .map(|s| s.value.general_names.clone())
        .unwrap_or_default();
    assert!(
        matches!(names.as_slice(), [GeneralName::URI(u)] if *u == wanted),
        "the leaf names {names:?}, not only {wanted}"
    );
    let asked = match request.validity_duration {
        0 => DEFAULT_WORKLOAD_TTL.as_secs() as i64,
        s => s.min(MAX_WORKLOAD_TTL.as_secs() as i64),
    };
    let validity = leaf.validity();
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        asked + BACKDATE_SECS,
        "the leaf's lifetime"
    );
}
