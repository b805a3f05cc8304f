//! Writes the seed corpora (`fuzz/corpus/<target>/`) and the certificate target's root
//! (`fuzz/fixtures/root.der`), from real sources wherever there is one:
//!
//! - xDS (`xds_address`, `xds_authorization`, `xds_l7`) and routes (`http_route`): the
//!   controller's own index (`ambient_controller::index::build`) over `examples/` and
//!   `fuzz/seeds/mesh.yaml`, read by the manifest source, encoded as the xDS server sends it;
//! - `manifests`: those manifest files as they are;
//! - `spiffe_verify`: certificates made with rcgen as the mesh CA makes them, good and bad;
//! - `dns`: queries encoded with the DNS library the proxy uses;
//! - `hbone_connect`: request heads written by our HBONE client;
//! - `zds`: the messages of a node agent's session;
//! - `cni`: `CNI_ARGS` as kubelets pass them and our plugin's entries of network
//!   configuration lists, chained (with a bridge plugin's `prevResult`) and not;
//! - `prometheus`: the exposition the proxies' `/metrics` serve, rendered by the same
//!   exporter from ztunnel's metrics;
//! - `ca_csr`: certificate requests as a ztunnel and a waypoint send them (a CSR made with
//!   rcgen as `proxy_core`'s CA client makes it), allowed and refused, and broken ones.
//!
//! Run it with `fuzz/run.sh --seeds` (it is built by `cargo fuzz build` with the targets).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ambient_controller::index::{self, IndexConfig};
use ambient_controller::model::{Change, ClusterState, Kind, Object};
use ambient_controller::source::manifests::parse_file;
use ambient_fuzz::response;
use ambient_proto::ambient::waypoint::v1 as pb;
use ambient_proto::hbone::ConnectRequest;
use ambient_proto::istio::workload::zds;
use ambient_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_TYPE_URL};
use k8s_openapi::api::core::v1::PodCondition;
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};
use ztunnel::dns::wire::op::{Edns, Message as Dns, MessageType, OpCode, Query};
use ztunnel::dns::wire::rr::{DNSClass, Name, RecordType};

// Built with the targets' coverage instrumentation, so it links libFuzzer's runtime, which
// wants a fuzz entry point; this program has none to offer.
use libfuzzer_sys as _;

#[unsafe(no_mangle)]
pub extern "Rust" fn rust_fuzzer_test_input(_: &[u8]) -> i32 {
    0
}

fn main() {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Out {
        corpus: here.join("corpus"),
    };
    // `seeds jwt` or `seeds ca_csr`: only that target's seeds (the others keep theirs, crash
    // inputs included).
    let only: Option<fn(&Out)> = match std::env::args().nth(1).as_deref() {
        Some("jwt") => Some(jwt),
        Some("ca_csr") => Some(ca_requests),
        _ => None,
    };
    if let Some(write_seeds) = only {
        write_seeds(&out);
        println!("seeds written under {}", out.corpus.display());
        return;
    }
    let manifests = manifest_files(&here);
    xds_and_routes(&out, &manifests);
    manifest_seeds(&out, &manifests);
    certificates(&out, &here.join("fixtures"));
    dns(&out);
    hbone(&out);
    zds_messages(&out);
    prometheus(&out);
    cni(&out);
    jwt(&out);
    ca_requests(&out);
    println!("seeds written under {}", out.corpus.display());
}

struct Out {
    corpus: PathBuf,
}

impl Out {
    /// Empties a target's corpus directory: the seeds are all rewritten.
    fn start(&self, target: &str) -> PathBuf {
        let dir = self.corpus.join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        dir
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    std::fs::write(dir.join(safe), bytes).expect("write a seed");
}

/// The example manifests and the seed mesh, as (file name, text).
fn manifest_files(here: &Path) -> Vec<(String, String)> {
    let mut paths = vec![here.join("seeds/mesh.yaml")];
    let examples = here.join("../examples");
    for dir in std::fs::read_dir(&examples).expect("examples/").flatten() {
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "yaml") {
                paths.push(f.path());
            }
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let parent = p.parent().and_then(Path::file_name).unwrap_or_default();
            let name = format!(
                "{}-{}",
                parent.to_string_lossy(),
                p.file_name().unwrap_or_default().to_string_lossy()
            );
            (name, std::fs::read_to_string(&p).expect("a manifest"))
        })
        .collect()
}

fn manifest_seeds(out: &Out, manifests: &[(String, String)]) {
    let dir = out.start("manifests");
    for (name, text) in manifests {
        write(&dir, name, text.as_bytes());
    }
    // What YAML allows beyond the examples: a List, anchors, JSON, flow style, block scalars.
    let extra = [
        (
            "list.yaml",
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s, namespace: a}\n  spec:\n    ports: [{port: 80, name: http}, {port: 80, name: again}]\n",
        ),
        (
            "anchors.yaml",
            "base: &b {apiVersion: v1, kind: Namespace}\ndoc:\n  <<: *b\n  list: [*b, *b]\n---\n? complex\n: 'quoted ''key'''\n\"1\": x\nblock: |\n  line\n  ---\n  more\nfolded: >-\n  a\n  b\n",
        ),
        (
            "service.json",
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"j","namespace":"ns","labels":{"istio.io/use-waypoint":"wp"}},"spec":{"ports":[{"port":70000}],"unknown":1}}"#,
        ),
    ];
    for (name, text) in extra {
        write(&dir, name, text.as_bytes());
    }
}

/// The controller's index over the manifests, after giving pods and services the addresses
/// the cluster would.
fn index(manifests: &[(String, String)]) -> index::Index {
    let mut objects = Vec::new();
    for (name, text) in manifests {
        let parsed = parse_file(Path::new(name), text, None);
        for d in parsed.diagnostics {
            eprintln!("seeds: {d}");
        }
        objects.extend(parsed.objects);
    }
    for (i, o) in objects.iter_mut().enumerate() {
        let n = u8::try_from(i % 250).unwrap_or(0) + 1;
        match o {
            Object::Pod(p) => {
                let status = p.status.get_or_insert_with(Default::default);
                if status.pod_ip.is_none() {
                    status.pod_ip = Some(format!("10.244.0.{n}"));
                    status.phase = Some("Running".into());
                    status.conditions = Some(vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        ..Default::default()
                    }]);
                }
                let spec = p.spec.get_or_insert_with(Default::default);
                spec.node_name.get_or_insert_with(|| "node-a".into());
            }
            Object::Service(s) => {
                let spec = s.spec.get_or_insert_with(Default::default);
                spec.cluster_ip
                    .get_or_insert_with(|| format!("10.96.1.{n}"));
            }
            _ => {}
        }
    }
    let mut state = ClusterState::default();
    state.apply(Change::replace(Kind::ALL.to_vec(), objects));
    let built = index::build(&state, &IndexConfig::default());
    for w in &built.warnings {
        eprintln!("seeds: index: {w}");
    }
    built
}

fn xds_and_routes(out: &Out, manifests: &[(String, String)]) {
    let built = index(manifests);
    let kinds: [(&str, &str, BTreeMap<String, Vec<u8>>); 3] = [
        (
            "xds_address",
            ADDRESS_TYPE_URL,
            built
                .addresses
                .iter()
                .map(|(k, v)| (k.clone(), v.encode_to_vec()))
                .collect(),
        ),
        (
            "xds_authorization",
            AUTHORIZATION_TYPE_URL,
            built
                .authorizations
                .iter()
                .map(|(k, v)| (k.clone(), v.encode_to_vec()))
                .collect(),
        ),
        (
            "xds_l7",
            L7_TYPE_URL,
            built
                .l7
                .iter()
                .map(|(k, v)| (k.clone(), v.encode_to_vec()))
                .collect(),
        ),
    ];
    for (target, type_url, resources) in kinds {
        assert!(
            !resources.is_empty(),
            "the index made no {target} resources"
        );
        let dir = out.start(target);
        // The whole push, as one response...
        let all = response(type_url, resources.clone());
        write(&dir, "response-all", &all.encode_to_vec());
        // ...a removal...
        let mut removal = response(type_url, []);
        removal.removed_resources = resources.keys().take(2).cloned().collect();
        write(&dir, "response-removal", &removal.encode_to_vec());
        // ...and each resource's body on its own.
        for (name, body) in &resources {
            write(&dir, &format!("body-{name}"), body);
        }
        println!("{target}: {} resources", resources.len());
    }

    let dir = out.start("http_route");
    let mut configs: Vec<(String, pb::ServiceConfig)> = built
        .l7
        .iter()
        .filter_map(|(name, r)| match &r.kind {
            Some(pb::l7_resource::Kind::Service(s)) => Some((name.clone(), s.clone())),
            _ => None,
        })
        .collect();
    configs.push(("handmade".into(), handmade_config()));
    for (i, (name, config)) in configs.iter().enumerate() {
        let body = config.encode_to_vec();
        let len = u16::try_from(body.len()).expect("a seed config under 64 KiB");
        let mut seed = len.to_le_bytes().to_vec();
        seed.extend_from_slice(&body);
        seed.extend(noise(i as u64, 256));
        write(&dir, &format!("config-{name}"), &seed);
    }
}

/// Bytes for `arbitrary` to draw requests from: fixed, different per seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// A configuration with what the controller's examples do not reach: every match kind, a
/// prefix redirect, full-path rewrite, a retry, a fault, invalid pieces.
fn handmade_config() -> pb::ServiceConfig {
    use pb::path_match::Kind as P;
    use pb::string_match::Kind as S;
    let path = |k: P| Some(pb::PathMatch { kind: Some(k) });
    let string = |k: S| Some(pb::StringMatch { kind: Some(k) });
    let filter = |k: pb::filter::Kind| pb::Filter { kind: Some(k) };
    let backend = |service: &str, weight: u32| pb::Backend {
        service: service.into(),
        port: 80,
        weight,
        filters: vec![],
    };
    pb::ServiceConfig {
        namespace: "shop".into(),
        name: "web".into(),
        hostname: "web.shop.svc.cluster.local".into(),
        waypoint: "shop/waypoint".into(),
        ports: vec![pb::PortConfig {
            port: 80,
            protocol: pb::AppProtocol::Http1 as i32,
            routes: vec![
                pb::Route {
                    name: "redirect-prefix".into(),
                    matches: vec![pb::RouteMatch {
                        path: path(P::Prefix("/old/".into())),
                        ..Default::default()
                    }],
                    filters: vec![filter(pb::filter::Kind::Redirect(pb::Redirect {
                        scheme: String::new(),
                        hostname: String::new(),
                        path: Some(pb::PathModifier {
                            kind: Some(pb::path_modifier::Kind::ReplacePrefixMatch("/new".into())),
                        }),
                        port: 0,
                        status_code: 308,
                    }))],
                    ..Default::default()
                },
                pb::Route {
                    name: "rewrite-full".into(),
                    matches: vec![pb::RouteMatch {
                        path: path(P::Regex("/v[0-9]+/.*".into())),
                        headers: vec![
                            pb::HeaderMatch {
                                name: "x-env".into(),
                                value: string(S::Prefix("prod".into())),
                                invert: true,
                            },
                            pb::HeaderMatch {
                                name: "x-user".into(),
                                value: string(S::Regex("[a-z]+".into())),
                                invert: false,
                            },
                        ],
                        query_params: vec![pb::QueryMatch {
                            name: "debug".into(),
                            value: None,
                        }],
                        method: "PUT".into(),
                    }],
                    filters: vec![filter(pb::filter::Kind::Rewrite(pb::Rewrite {
                        hostname: "internal.shop".into(),
                        path: Some(pb::PathModifier {
                            kind: Some(pb::path_modifier::Kind::ReplaceFullPath("/flat".into())),
                        }),
                    }))],
                    backends: vec![backend("shop/web.shop.svc.cluster.local", 1)],
                    timeout_ms: 1500,
                    retry: Some(pb::RetryPolicy {
                        attempts: 3,
                        per_try_timeout_ms: 500,
                        codes: vec![503, 504],
                        on_connect_failure: true,
                        backoff_ms: 25,
                    }),
                    fault: Some(pb::Fault {
                        delay: Some(pb::FaultDelay {
                            percent: 12.5,
                            delay_ms: 100,
                        }),
                        abort: Some(pb::FaultAbort {
                            percent: 1.0,
                            http_status: 503,
                            grpc_status: 0,
                        }),
                    }),
                    rate_limits: vec![pb::RateLimit {
                        namespace: "shop".into(),
                        name: "api-limit".into(),
                        total: Some(pb::RateLimitRate {
                            requests_per_second: 100.0,
                            burst: 10,
                        }),
                        identity: Some(pb::RateLimitRate {
                            requests_per_second: 20.0,
                            burst: 0,
                        }),
                        overrides: vec![pb::RateLimitOverride {
                            rate: Some(pb::RateLimitRate {
                                requests_per_second: 50.0,
                                burst: 5,
                            }),
                            principals: vec!["cluster.local/ns/shop/sa/vip*".into()],
                            matches: vec![pb::RouteMatch {
                                method: "POST".into(),
                                ..Default::default()
                            }],
                        }],
                        replicas: 2,
                    }],
                },
                pb::Route {
                    name: "broken".into(),
                    matches: vec![pb::RouteMatch {
                        path: path(P::Exact("/broken".into())),
                        ..Default::default()
                    }],
                    filters: vec![pb::Filter { kind: None }],
                    ..Default::default()
                },
                pb::Route {
                    name: "weighted".into(),
                    backends: vec![
                        backend("shop/web.shop.svc.cluster.local", 3),
                        backend("shop/web-v2.shop.svc.cluster.local", 1),
                        backend("", 1),
                    ],
                    ..Default::default()
                },
            ],
            consumer_routes: Vec::new(),
        }],
        traffic_policy: None,
        policies: vec![pb::Policy {
            namespace: "shop".into(),
            name: "audit-all".into(),
            action: pb::Action::Audit as i32,
            rules: vec![pb::Rule {
                from: vec![],
                to: vec![pb::Operation {
                    methods: vec!["PUT".into()],
                    not_paths: vec!["/health*".into()],
                    ..Default::default()
                }],
                when: vec![pb::Condition {
                    key: "source.ip".into(),
                    values: vec!["10.244.0.0/16".into()],
                    not_values: vec![],
                }],
            }],
            match_all: false,
        }],
        rate_limits: vec![],
        jwt_rules: vec![pb::JwtRule {
            source: "shop/jwt".into(),
            issuer: "https://login.example.test".into(),
            audiences: vec!["shop".into()],
            jwks: waypoint::l7::jwt_testing::jwks(&[&waypoint::l7::jwt_testing::Issuer::ec(
                "seed",
            )]),
            from_headers: vec![pb::JwtHeader {
                name: "x-jwt".into(),
                prefix: String::new(),
            }],
            output_claim_to_headers: vec![pb::ClaimToHeader {
                header: "x-user".into(),
                claim: "sub".into(),
            }],
            ..Default::default()
        }],
    }
}

/// The root (`fixtures/root.der`), and chains good and bad, as concatenated DER (and one PEM).
fn certificates(out: &Out, fixtures: &Path) {
    let ca = Ca::new("ambient-rs fuzz root");
    std::fs::create_dir_all(fixtures).expect("fixtures directory");
    std::fs::write(fixtures.join("root.der"), &ca.der).expect("write the root");

    let dir = out.start("spiffe_verify");
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let db = "spiffe://cluster.local/ns/data/sa/db";
    write(&dir, "leaf-web", &ca.leaf(Leaf::new(web)));
    let intermediate = ca.intermediate("ambient-rs fuzz intermediate");
    let mut chain = intermediate.leaf(Leaf::new(db));
    chain.extend_from_slice(&intermediate.der);
    write(&dir, "leaf-db-via-intermediate", &chain);
    let mut reversed = intermediate.der.clone();
    reversed.extend(intermediate.leaf(Leaf::new(db)));
    write(&dir, "intermediate-first", &reversed);
    write(
        &dir,
        "other-trust-domain",
        &ca.leaf(Leaf::new("spiffe://other.example/ns/shop/sa/web")),
    );
    write(
        &dir,
        "not-a-workload",
        &ca.leaf(Leaf::new("spiffe://cluster.local/workload/x")),
    );
    write(
        &dir,
        "ca-as-leaf",
        &ca.leaf(Leaf {
            ca: true,
            ..Leaf::new(web)
        }),
    );
    write(
        &dir,
        "expired",
        &ca.leaf(Leaf {
            years: (2020, 2021),
            ..Leaf::new(web)
        }),
    );
    write(
        &dir,
        "two-uris",
        &ca.leaf(Leaf {
            extra_uri: Some(db.into()),
            ..Leaf::new(web)
        }),
    );
    let foreign = Ca::new("someone else's root");
    let mut foreign_chain = foreign.leaf(Leaf::new(web));
    foreign_chain.extend_from_slice(&foreign.der);
    write(&dir, "foreign-root", &foreign_chain);
    write(&dir, "root-as-leaf", &ca.der);
    let pem = ambient_proto::tls::certs_to_pem(&[
        rustls_pki_types::CertificateDer::from(ca.leaf(Leaf::new(db))),
        rustls_pki_types::CertificateDer::from(ca.der.clone()),
    ]);
    write(&dir, "pem-bundle", pem.as_bytes());
}

/// What to put in a leaf.
struct Leaf {
    uri: String,
    extra_uri: Option<String>,
    ca: bool,
    years: (i32, i32),
}

impl Leaf {
    fn new(uri: &str) -> Self {
        Leaf {
            uri: uri.into(),
            extra_uri: None,
            ca: false,
            years: (2025, 2035),
        }
    }
}

/// A CA as the mesh's (rcgen, ECDSA P-256), valid 2025–2035.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
}

impl Ca {
    fn params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2025, 1, 1);
        params.not_after = date_time_ymd(2035, 1, 1);
        params
    }

    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("a key");
        let params = Self::params(name);
        let cert = params.self_signed(&key).expect("a root");
        Ca {
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    fn intermediate(&self, name: &str) -> Self {
        let key = KeyPair::generate().expect("a key");
        let params = Self::params(name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("an intermediate");
        Ca {
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, spec: Leaf) -> Vec<u8> {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(spec.uri.as_str().try_into().expect("a URI"))];
        if let Some(extra) = &spec.extra_uri {
            params
                .subject_alt_names
                .push(SanType::URI(extra.as_str().try_into().expect("a URI")));
        }
        params.not_before = date_time_ymd(spec.years.0, 1, 1);
        params.not_after = date_time_ymd(spec.years.1, 1, 1);
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
        params
            .signed_by(&key, &self.issuer)
            .expect("a leaf")
            .der()
            .to_vec()
    }
}

fn dns(out: &Out) {
    let dir = out.start("dns");
    let query = |name: &str, qtype: RecordType| {
        let mut m = Dns::new(0x2a2a, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).expect("a name"), qtype));
        m
    };
    let names = [
        "web",
        "web.shop",
        "web.shop.svc",
        "web.shop.svc.cluster.local.",
        "DB.Data.",
        "db.data.svc.cluster.local",
        "headless",
        "api.example.com.",
        "nope.shop",
        "www.example.org.",
    ];
    for name in names {
        for qtype in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::ANY,
            RecordType::TXT,
        ] {
            let bytes = query(name, qtype).to_vec().expect("a query");
            write(&dir, &format!("{name}-{qtype}"), &bytes);
        }
    }
    let mut edns = query("db.data", RecordType::ANY);
    let mut e = Edns::new();
    e.set_max_payload(4096);
    edns.set_edns(e);
    write(&dir, "edns-4096", &edns.to_vec().expect("a query"));
    let mut status = query("web", RecordType::A);
    status.metadata.op_code = OpCode::Status;
    write(&dir, "opcode-status", &status.to_vec().expect("a query"));
    let mut chaos = query("version.bind.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
    write(&dir, "class-chaos", &chaos.to_vec().expect("a query"));
}

fn hbone(out: &Out) {
    let dir = out.start("hbone_connect");
    let head = |r: &ConnectRequest| {
        let h = r.to_http().expect("a request");
        let mut text = format!("{} {}\n", h.method(), h.uri());
        for (k, v) in h.headers() {
            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or_default()));
        }
        text
    };
    let v4 = SocketAddr::from(([10, 244, 1, 10], 8080));
    let v6: SocketAddr = "[fd00::10]:8080".parse().expect("an address");
    let mut full = ConnectRequest::new(v4);
    full.forwarded_for = Some(IpAddr::from([10, 244, 2, 20]));
    full.baggage = Some(
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=web,service.name=web,service.version=v1".into(),
    );
    full.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    write(&dir, "connect-v4-full", head(&full).as_bytes());
    let mut six = ConnectRequest::new(v6);
    six.forwarded_for = Some("fd00::20".parse().expect("an address"));
    write(&dir, "connect-v6", head(&six).as_bytes());
    write(
        &dir,
        "connect-bare",
        head(&ConnectRequest::new(v4)).as_bytes(),
    );
    for (name, text) in [
        ("get", "GET /index.html\nhost: web\n"),
        (
            "hostname-authority",
            "CONNECT web.shop.svc.cluster.local:80\n",
        ),
        ("no-port", "CONNECT 10.244.1.10\n"),
        (
            "forwarded-list",
            "CONNECT 10.0.0.1:80\nforwarded: by=x;for=\"_hidden\", for=192.0.2.60;proto=http\n",
        ),
    ] {
        write(&dir, name, text.as_bytes());
    }
}

fn zds_messages(out: &Out) {
    let dir = out.start("zds");
    use zds::workload_request::Payload;
    let requests = [
        (
            "add",
            Payload::Add(zds::AddWorkload {
                uid: "Kubernetes//Pod/shop/web-0".into(),
                workload_info: Some(zds::WorkloadInfo {
                    name: "web-0".into(),
                    namespace: "shop".into(),
                    service_account: "web".into(),
                }),
            }),
        ),
        (
            "add-default-account",
            Payload::Add(zds::AddWorkload {
                uid: "5e3c1c0a-7f4e-4c55-9e35-000000000001".into(),
                workload_info: Some(zds::WorkloadInfo {
                    name: "db-0".into(),
                    namespace: "data".into(),
                    service_account: String::new(),
                }),
            }),
        ),
        (
            "keep",
            Payload::Keep(zds::KeepWorkload {
                uid: "Kubernetes//Pod/shop/web-0".into(),
            }),
        ),
        (
            "del",
            Payload::Del(zds::DelWorkload {
                uid: "Kubernetes//Pod/shop/web-0".into(),
            }),
        ),
        ("snapshot-sent", Payload::SnapshotSent(zds::SnapshotSent {})),
    ];
    for (name, payload) in requests {
        let m = zds::WorkloadRequest {
            payload: Some(payload),
        };
        write(&dir, &format!("request-{name}"), &m.encode_to_vec());
    }
    for (name, error) in [("ack", ""), ("ack-error", "pod shop/web-0: no netns")] {
        let m = zds::WorkloadResponse {
            payload: Some(zds::workload_response::Payload::Ack(zds::Ack {
                error: error.into(),
            })),
        };
        write(&dir, &format!("response-{name}"), &m.encode_to_vec());
    }
    let hello = zds::ZdsHello {
        version: zds::Version::V1 as i32,
    };
    write(&dir, "hello", &hello.encode_to_vec());
}

fn prometheus(out: &Out) {
    let dir = out.start("prometheus");
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("a recorder");
    ztunnel::metrics::describe();
    ztunnel::metrics::dns_request("NOERROR");
    ztunnel::metrics::dns_request("NXDOMAIN");
    ztunnel::metrics::hbone_rejected("inbound", "unknown_issuer");
    let labels = [
        ("reporter", "destination"),
        ("source_workload", "web"),
        ("source_principal", "spiffe://cluster.local/ns/shop/sa/web"),
        ("destination_service", "db.data.svc.cluster.local"),
        ("response_code", "200"),
        ("connection_security_policy", "mutual_tls"),
    ];
    metrics::counter!("istio_requests_total", &labels).increment(42);
    metrics::counter!("istio_tcp_sent_bytes_total", &labels[..4]).increment(1 << 40);
    let histogram = metrics::histogram!("istio_request_duration_milliseconds", &labels);
    for v in [0.5, 3.0, 12.0, 250.0, 9000.0] {
        histogram.record(v);
    }
    metrics::gauge!("ambient_pods", "node" => "node-a \"quoted\"\\path\nline").set(3.5);
    let text = handle.render();
    let samples = proxy_core::exposition::parse(&text).expect("our own metrics parse");
    assert!(!samples.is_empty());
    write(&dir, "metrics", text.as_bytes());
    let hand = "# HELP up Whether the target is up.\n# TYPE up gauge\nup 1\nweird{a=\"1\",} -Inf\nnan_metric NaN 1700000000000\nm{le=\"+Inf\",x=\"a\\\"b\\\\c\\nd\"} 7\n";
    proxy_core::exposition::parse(hand).expect("the hand-written text parses");
    write(&dir, "special-values", hand.as_bytes());
}

fn cni(out: &Out) {
    let dir = out.start("cni");
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-7d4b9c-x2x9q;\
                K8S_POD_INFRA_CONTAINER_ID=4f1c;K8S_POD_UID=6a0c7d1e-5b7a-4f0e-9c1d-2b8e3f4a5c6d";
    let prev = serde_json::json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                       {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
                       {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/cni-1"}],
        "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    });
    let chained = serde_json::json!({
        "cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "ambient-cni",
        "agentSocket": "/var/run/ambient/cni.sock",
        "kubeconfig": "/etc/cni/net.d/ambient-cni-kubeconfig",
        "excludeNamespaces": ["kube-system", "ambient-rs"],
        "prevResult": prev,
    });
    let minimal = serde_json::json!({"cniVersion": "1.0.0", "name": "k8s", "type": "ambient-cni"});
    let version = serde_json::json!({"cniVersion": "0.4.0"});
    for (name, args, conf) in [
        ("chained", args, &chained),
        ("unchained", args, &minimal),
        ("no-pod", "", &chained),
        (
            "excluded",
            "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1",
            &chained,
        ),
        ("version", "", &version),
    ] {
        let mut bytes = args.as_bytes().to_vec();
        bytes.push(0);
        bytes.extend_from_slice(conf.to_string().as_bytes());
        write(&dir, name, &bytes);
    }
}

/// JWKS documents and tokens: valid RS256 and ES256 ones, expired, foreign, malformed.
fn jwt(out: &Out) {
    use waypoint::l7::jwt_testing::{Issuer, epoch, jwks};
    let dir = out.start("jwt");
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let pem =
        std::fs::read(here.join("../tests/fixtures/jwt/rsa-1.pem")).expect("the test RSA key");
    let rsa = Issuer::rsa("r1", &pem);
    let ec = Issuer::ec("e1");
    let doc = jwks(&[&rsa, &ec]);
    let claims = |exp: i64, iss: &str| {
        serde_json::json!({"iss": iss, "sub": "alice", "aud": ["shop"], "exp": epoch(exp),
                           "groups": ["admin"], "nested": {"role": "owner"}})
    };
    let iss = "https://login.example.test";
    let seeds = [
        ("rs256", rsa.token(&claims(365 * 24 * 3600 * 20, iss))),
        ("es256", ec.token(&claims(365 * 24 * 3600 * 20, iss))),
        ("expired", rsa.token(&claims(-3600, iss))),
        ("foreign", ec.token(&claims(3600, "https://other.test"))),
        ("malformed", "a.b".to_string()),
    ];
    for (name, token) in seeds {
        std::fs::write(dir.join(name), format!("{doc}\n---\n{token}")).expect("write a seed");
    }
}

/// `CreateCertificate` requests: the first byte picks the caller (0 node-a's ztunnel, 1
/// node-b's, 2 the waypoint, 3 an unknown token; the top bit set: the rest drives a request
/// the target builds), the rest is the request as protobuf.
fn ca_requests(out: &Out) {
    use ambient_proto::google::protobuf::{Struct, Value, value::Kind};
    use ambient_proto::istio::v1::auth::IstioCertificateRequest;
    let dir = out.start("ca_csr");
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let waypoint = "spiffe://cluster.local/ns/shop/sa/waypoint";
    let ztunnel = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";
    // As proxy_core's CA client asks: a fresh key, the identity as the only URI name.
    let csr = |names: Vec<SanType>, key: &KeyPair| {
        let mut params = CertificateParams::default();
        params.subject_alt_names = names;
        params
            .serialize_request(key)
            .and_then(|c| c.pem())
            .expect("a CSR")
    };
    let uri = |s: &str| SanType::URI(s.try_into().expect("a URI"));
    let p256 = KeyPair::generate().expect("a key");
    let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("a key");
    let metadata = |kind: Kind| {
        Some(Struct {
            fields: [(
                "ImpersonatedIdentity".to_string(),
                Value { kind: Some(kind) },
            )]
            .into(),
        })
    };
    let ask = |id: &str| metadata(Kind::StringValue(id.to_string()));
    let mut flipped = csr(vec![uri(web)], &p256).into_bytes();
    let at = flipped.len() / 2;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    let seeds: Vec<(&str, u8, String, i64, Option<Struct>)> = vec![
        ("node-pod", 0, csr(vec![uri(web)], &p256), 86_400, ask(web)),
        (
            "node-default-ttl",
            0,
            csr(vec![uri(web)], &p256),
            0,
            ask(web),
        ),
        (
            "node-ztunnel",
            0,
            csr(vec![uri(ztunnel)], &p256),
            86_400,
            ask(ztunnel),
        ),
        (
            "other-node-pod",
            1,
            csr(vec![uri(web)], &p256),
            86_400,
            ask(web),
        ),
        (
            "node-no-metadata",
            0,
            csr(vec![uri(web)], &p256),
            86_400,
            None,
        ),
        (
            "node-number",
            0,
            csr(vec![uri(web)], &p256),
            86_400,
            metadata(Kind::NumberValue(1.0)),
        ),
        (
            "foreign-domain",
            0,
            csr(vec![uri("spiffe://example.org/ns/shop/sa/web")], &p256),
            3600,
            ask("spiffe://example.org/ns/shop/sa/web"),
        ),
        (
            "waypoint-own",
            2,
            csr(vec![uri(waypoint)], &p256),
            86_400,
            None,
        ),
        (
            "waypoint-other",
            2,
            csr(vec![uri(web)], &p256),
            86_400,
            ask(web),
        ),
        (
            "dns-name",
            0,
            csr(
                vec![SanType::DnsName("web.shop.svc".try_into().expect("a name"))],
                &p256,
            ),
            3600,
            ask(web),
        ),
        (
            "two-names",
            0,
            csr(vec![uri(web), uri(waypoint)], &p256),
            3600,
            ask(web),
        ),
        ("no-names", 0, csr(vec![], &ed25519), 3600, ask(web)),
        (
            "ed25519",
            2,
            csr(vec![uri(waypoint)], &ed25519),
            3600,
            ask(waypoint),
        ),
        ("negative-ttl", 0, csr(vec![uri(web)], &p256), -1, ask(web)),
        (
            "capped-ttl",
            0,
            csr(vec![uri(web)], &p256),
            400 * 86_400,
            ask(web),
        ),
        (
            "bad-signature",
            0,
            String::from_utf8(flipped).expect("text"),
            3600,
            ask(web),
        ),
        (
            "not-pem",
            0,
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n".into(),
            3600,
            ask(web),
        ),
        (
            "unknown-token",
            3,
            csr(vec![uri(web)], &p256),
            3600,
            ask(web),
        ),
    ];
    for (name, caller, csr, ttl, metadata) in seeds {
        let mut bytes = vec![caller];
        IstioCertificateRequest {
            csr,
            validity_duration: ttl,
            metadata,
        }
        .encode(&mut bytes)
        .expect("encodes");
        write(&dir, name, &bytes);
    }
    for (name, first) in [("built-node", 0x80u8), ("built-waypoint", 0x82)] {
        let mut bytes = vec![first];
        bytes.extend(noise(u64::from(first), 96));
        write(&dir, name, &bytes);
    }
}
