//! DNS queries into ztunnel's in-pod DNS proxy (`ztunnel::dns::server::Resolver::respond`,
//! which both the UDP and the TCP listener call), answered from a small mesh
//! (`ambient_fuzz::MESH`) and from a store that has no configuration yet.
//!
//! Checks, whenever a response is produced: it decodes; it answers the query (same id, a
//! response, the question echoed, authoritative); over UDP it fits the client's buffer (512
//! bytes, or its EDNS size up to 1232); every answer is for the question's name and type with
//! our TTL, and its address is one the mesh gives that name from that pod's namespace; an
//! untruncated NOERROR answer carries all of them; before any configuration only SERVFAIL or
//! NOTIMP is said.

#![no_main]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use proxy_core::state::StateStore;
use ztunnel::dns::answer::{EDNS_UDP_LIMIT, Transport};
use ztunnel::dns::server::Resolver;
use ztunnel::dns::wire::op::{Message, MessageType, ResponseCode};
use ztunnel::dns::wire::rr::{DNSClass, RecordType};
use ztunnel::dns::{TTL, resolve};

/// The pod's namespace: its search domain.
const NAMESPACE: &str = "shop";

struct Fixture {
    mesh: Arc<StateStore>,
    loaded: Resolver,
    empty: Resolver,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let mesh = Arc::new(ambient_fuzz::mesh_store());
    Fixture {
        loaded: Resolver::new(mesh.clone(), NAMESPACE.into(), "web-0".into()),
        empty: Resolver::new(
            Arc::new(StateStore::new()),
            NAMESPACE.into(),
            "web-0".into(),
        ),
        mesh,
    }
});

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    for transport in [Transport::Udp, Transport::Tcp] {
        check(data, transport, &f.loaded, Some(&f.mesh));
        check(data, transport, &f.empty, None);
    }
});

fn check(data: &[u8], transport: Transport, resolver: &Resolver, mesh: Option<&StateStore>) {
    let Ok(response) = resolver.respond(data, transport) else {
        return;
    };
    let query = Message::from_vec(data).expect("an answered query decodes");
    let answer = Message::from_vec(&response.bytes).expect("our response decodes");
    assert_eq!(answer.metadata.id, query.metadata.id);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    assert!(answer.metadata.authoritative);
    assert_eq!(answer.metadata.response_code, response.code);
    assert_eq!(answer.queries, query.queries, "the question is echoed");
    let question = &query.queries[0];

    if transport == Transport::Udp {
        let limit = match &query.edns {
            Some(edns) => usize::from(edns.max_payload().clamp(512, EDNS_UDP_LIMIT)),
            None => 512,
        };
        assert!(
            response.bytes.len() <= limit,
            "{} bytes over UDP, limit {limit}",
            response.bytes.len()
        );
    }

    let Some(mesh) = mesh else {
        assert!(
            matches!(response.code, ResponseCode::ServFail | ResponseCode::NotImp),
            "{:?} before any configuration",
            response.code
        );
        return;
    };
    let name = question.name().to_ascii();
    let known: BTreeSet<IpAddr> = resolve::lookup(&mesh.load(), NAMESPACE, &name)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let qtype = question.query_type();
    let mut seen = BTreeSet::new();
    for record in &answer.answers {
        assert_eq!(record.name, *question.name());
        assert_eq!(record.ttl, TTL);
        assert_eq!(record.dns_class, DNSClass::IN);
        let ip = record.data.ip_addr().expect("answers are addresses");
        let fits = matches!(
            (ip, qtype),
            (IpAddr::V4(_), RecordType::A | RecordType::ANY)
                | (IpAddr::V6(_), RecordType::AAAA | RecordType::ANY)
        );
        assert!(fits, "{ip} answers a {qtype} question");
        assert!(known.contains(&ip), "{ip} is not an address of {name}");
        seen.insert(ip);
    }
    if response.code == ResponseCode::NoError && !answer.metadata.truncation {
        let wanted: BTreeSet<IpAddr> = known
            .into_iter()
            .filter(|ip| {
                matches!(
                    (ip, qtype),
                    (IpAddr::V4(_), RecordType::A | RecordType::ANY)
                        | (IpAddr::V6(_), RecordType::AAAA | RecordType::ANY)
                )
            })
            .collect();
        assert_eq!(seen, wanted, "a complete answer for {name} {qtype}");
    }
}
