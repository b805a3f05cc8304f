//! WDS `Address` resources (workloads and services) from the controller into a proxy's state:
//! bytes → `DeltaDiscoveryResponse` → the xDS client's own `apply_response` → `StateStore`,
//! then the lookups the data path makes on what was stored.
//!
//! Checks: the same response gives the same rejections; a version is remembered exactly for
//! what the store took; every stored workload's identity is a valid SPIFFE ID of its own
//! namespace; every stored address and VIP resolves, and service traffic resolves to an
//! endpoint of a service (or to a waypoint); removals remove.

#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;

use ambient_fuzz::{check_held_versions, check_removed, one_resource};
use ambient_proto::ADDRESS_TYPE_URL;
use ambient_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use ambient_proto::identity::Identity;
use ambient_proto::istio::workload as wds;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proxy_core::rbac::Connection;
use proxy_core::state::StateStore;
use proxy_core::xds::{Known, apply_response};

fuzz_target!(|data: &[u8]| {
    // The input as a whole response (names, versions, removals, several bodies)...
    if let Ok(mut response) = DeltaDiscoveryResponse::decode(data) {
        response.type_url = ADDRESS_TYPE_URL.into();
        check(&response);
    }
    // ...and as one resource body, where mutations of a body land best.
    check(&one_resource(ADDRESS_TYPE_URL, "fuzz", data));
});

fn check(response: &DeltaDiscoveryResponse) {
    let state = StateStore::new();
    let mut known = Known::new();
    let errors = apply_response(&state, &[], &mut known, response);
    let again = apply_response(&StateStore::new(), &[], &mut Known::new(), response);
    assert_eq!(errors, again, "the same response, different rejections");

    let snap = state.load();
    let held = known.get(ADDRESS_TYPE_URL).cloned().unwrap_or_default();
    check_held_versions(response, &held, |r| {
        let a = wds::Address::decode(r.resource.as_ref()?.value.as_ref()).ok()?;
        match a.r#type? {
            wds::address::Type::Workload(w) => {
                let taken = snap.workload_by_uid(&w.uid).is_some();
                Some((w.uid, taken))
            }
            wds::address::Type::Service(s) => {
                let key = format!("{}/{}", s.namespace, s.hostname);
                let taken = snap.services().any(|x| x.key() == key);
                Some((key, taken))
            }
        }
    });
    check_removed(response, &held);

    for w in snap.workloads() {
        assert!(!w.uid.is_empty());
        assert_eq!(
            w.identity.namespace(),
            w.namespace,
            "identity of another namespace"
        );
        let reparsed: Identity = w
            .identity
            .as_uri()
            .parse()
            .expect("a stored identity is a valid SPIFFE ID");
        assert_eq!(reparsed, w.identity);
        serde_json::to_string(&**w).expect("config_dump can show a workload");
        for ip in &w.addresses {
            assert!(snap.workload_by_ip(*ip).is_some());
            let dst = SocketAddr::new(*ip, 8080);
            if let Ok(Some(up)) = snap.resolve(dst, &w.namespace) {
                assert_eq!(up.addr, dst, "a workload address is dialed as is");
            }
            let conn = Connection {
                src_identity: Some(&w.identity),
                src_ip: *ip,
                dst,
            };
            let _ = snap.authorize(w, &conn);
        }
    }
    for s in snap.services() {
        assert!(!s.hostname.is_empty());
        let host = s.hostname.trim_end_matches('.').to_ascii_lowercase();
        assert!(
            snap.services_by_hostname(&host)
                .iter()
                .any(|x| Arc::ptr_eq(x, s)),
            "service {} not found by its hostname",
            s.key()
        );
        serde_json::to_string(&**s).expect("config_dump can show a service");
        for vip in &s.vips {
            for port in &s.ports {
                let dst = SocketAddr::new(*vip, port.service_port);
                let Ok(Some(up)) = snap.resolve(dst, &s.namespace) else {
                    continue;
                };
                let service = up.service.as_ref().expect("a VIP resolves as a service");
                if up.waypoint.is_some() {
                    assert_eq!(up.addr, dst, "the waypoint is told the original VIP");
                } else {
                    assert!(
                        snap.endpoints(service)
                            .iter()
                            .any(|e| Arc::ptr_eq(e, &up.workload)),
                        "picked a workload that is not an endpoint of {}",
                        service.key()
                    );
                    assert!(up.workload.healthy);
                    match &up.hostname {
                        // A named endpoint: resolved when connecting, never also addressed.
                        Some(name) => {
                            assert!(up.workload.addresses.is_empty());
                            assert_eq!(up.workload.hostname.as_ref(), Some(name));
                        }
                        None => assert_eq!(up.addr.ip(), up.workload.addresses[0]),
                    }
                }
            }
        }
    }

    // Removing everything held leaves none of it.
    let names: Vec<String> = held.keys().cloned().collect();
    let removal = DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE_URL.into(),
        removed_resources: names.clone(),
        nonce: "2".into(),
        ..Default::default()
    };
    assert!(apply_response(&state, &[], &mut known, &removal).is_empty());
    let snap = state.load();
    for name in &names {
        assert!(snap.workload_by_uid(name).is_none(), "{name:?} not removed");
        assert!(
            snap.services().all(|s| &s.key() != name),
            "{name:?} not removed"
        );
    }
    assert!(known.get(ADDRESS_TYPE_URL).is_none_or(|h| h.is_empty()));
}
