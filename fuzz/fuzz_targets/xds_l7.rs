//! The waypoint's L7 resources (`ambient.waypoint.v1.L7Resource`: service routes, policies,
//! traffic policy; gateway policies) from the controller into the waypoint: bytes →
//! `DeltaDiscoveryResponse` → the xDS client's `apply_response` → the waypoint's `L7Store`
//! (its xDS subscription) → `Routing::rebuild`, the compilation the waypoint runs on every
//! change, against services that carry every configured port.
//!
//! Checks: a version is remembered exactly for what the store took; removals remove; the
//! compiled routing has a route table for every port of every service, numbered as the
//! port; a second rebuild from the same configuration keeps every service's compiled routes
//! and reports the same problems; and a few plain requests go through
//! route selection, filters and authorization without a panic.

#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambient_fuzz::{check_held_versions, check_removed, one_resource};
use ambient_proto::L7_TYPE_URL;
use ambient_proto::ambient::waypoint::v1 as pb;
use ambient_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use ambient_proto::istio::workload as wds;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proxy_core::state::{StateStore, Update};
use proxy_core::xds::{ExtraType, Known, apply_response};
use waypoint::fuzzing::{L7Snapshot, L7Store, L7Subscription, Routing};
use waypoint::l7::authz::{self, RequestAttributes};

fuzz_target!(|data: &[u8]| {
    if let Ok(mut response) = DeltaDiscoveryResponse::decode(data) {
        response.type_url = L7_TYPE_URL.into();
        check(&response);
    }
    for name in [
        "service/shop/web.shop.svc.cluster.local",
        "gateway/shop/waypoint",
    ] {
        check(&one_resource(L7_TYPE_URL, name, data));
    }
});

fn check(response: &DeltaDiscoveryResponse) {
    let store = Arc::new(L7Store::default());
    let extra: Vec<Arc<dyn ExtraType>> = vec![Arc::new(L7Subscription(store.clone()))];
    let state = StateStore::new();
    let mut known = Known::new();
    apply_response(&state, &extra, &mut known, response);
    assert!(!state.loaded(), "an L7 response reached the WDS store");

    let l7 = store.load();
    let held = known.get(L7_TYPE_URL).cloned().unwrap_or_default();
    check_held_versions(response, &held, |r| {
        let resource = pb::L7Resource::decode(r.resource.as_ref()?.value.as_ref()).ok()?;
        let key = if let Some(k) = r.name.strip_prefix("service/") {
            let taken = matches!(resource.kind, Some(pb::l7_resource::Kind::Service(_)))
                && l7.services.contains_key(k);
            (format!("service/{k}"), taken)
        } else if let Some(k) = r.name.strip_prefix("gateway/") {
            let taken = matches!(resource.kind, Some(pb::l7_resource::Kind::Gateway(_)))
                && l7.gateways.contains_key(k);
            (format!("gateway/{k}"), taken)
        } else {
            return None;
        };
        Some(key)
    });
    check_removed(response, &held);

    compile(&l7);

    // Removing every name (those held, and those the response named: a name it both upserts
    // and removes is stored but not remembered, as removals are applied first and the
    // response is then forgotten) leaves nothing.
    let mut names: Vec<String> = held.keys().cloned().collect();
    names.extend(response.resources.iter().map(|r| r.name.clone()));
    let removal = DeltaDiscoveryResponse {
        type_url: L7_TYPE_URL.into(),
        removed_resources: names,
        nonce: "2".into(),
        ..Default::default()
    };
    assert!(apply_response(&state, &extra, &mut known, &removal).is_empty());
    let after = store.load();
    assert!(after.services.is_empty() && after.gateways.is_empty());
}

/// Compiles the configuration as the waypoint does, for every gateway it names.
fn compile(l7: &L7Snapshot) {
    // A WDS service for every service configuration, with every port it configures.
    let upserts: Vec<wds::Address> = l7
        .services
        .keys()
        .filter_map(|key| {
            let (namespace, hostname) = key.split_once('/')?;
            let config = &l7.services[key];
            Some(wds::Address {
                r#type: Some(wds::address::Type::Service(wds::Service {
                    name: config.name.clone(),
                    namespace: namespace.into(),
                    hostname: hostname.into(),
                    ports: config
                        .ports
                        .iter()
                        .filter(|p| p.port <= u32::from(u16::MAX))
                        .map(|p| wds::Port {
                            service_port: p.port,
                            target_port: p.port,
                        })
                        .collect(),
                    ..Default::default()
                })),
            })
        })
        .collect();
    let state = StateStore::new();
    state.apply(Update {
        upserts,
        ..Default::default()
    });
    let snapshot = state.load();

    let gateways: Vec<&str> = l7
        .gateways
        .keys()
        .map(String::as_str)
        .chain(["none/none"])
        .collect();
    for gateway in gateways {
        let routing = Routing::default();
        routing.rebuild(gateway, l7, &snapshot);
        let first = routing.load();
        routing.rebuild(gateway, l7, &snapshot);
        let second = routing.load();
        let mut a = first.errors.clone();
        let mut b = second.errors.clone();
        a.sort();
        b.sort();
        assert_eq!(
            a, b,
            "a rebuild keeping what it compiled reported other problems"
        );
        for (key, routed) in &first.services {
            assert!(
                Arc::ptr_eq(&routed.compiled, &second.services[key].compiled),
                "{key} compiled again though nothing changed"
            );
        }

        for service in snapshot.services() {
            let routed = second
                .service(&service.key())
                .expect("every service is routed");
            for port in &service.ports {
                let table = routed
                    .compiled
                    .ports
                    .get(&port.service_port)
                    .expect("every port has a route table");
                assert_eq!(table.port(), port.service_port);
                for (method, uri) in [("GET", "/"), ("POST", "/api/v1?x=1"), ("GET", "/a/../b")] {
                    request(
                        &second.gateway_policies,
                        routed,
                        table,
                        port.service_port,
                        method,
                        uri,
                    );
                }
            }
        }
    }
}

fn request(
    gateway: &authz::Policies,
    routed: &waypoint::fuzzing::ServiceRouting,
    table: &waypoint::l7::route::RouteTable,
    port: u16,
    method: &str,
    uri: &str,
) {
    let mut parts = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "web.shop.svc.cluster.local")
        .body(())
        .expect("a valid request")
        .into_parts()
        .0;
    let dst = SocketAddr::new(IpAddr::from([10, 96, 0, 10]), port);
    let attrs = RequestAttributes::http(None, IpAddr::from([10, 244, 1, 10]), dst, &parts);
    let _ = authz::evaluate(gateway, &routed.compiled.policies, &attrs);
    let Some(selected) = table.select(&parts) else {
        return;
    };
    if selected.route.is_invalid() {
        return;
    }
    let _ = selected
        .route
        .filters
        .redirect(&parts, selected.capture, port);
    let _ = selected
        .route
        .filters
        .apply_request(&mut parts, selected.capture);
}
