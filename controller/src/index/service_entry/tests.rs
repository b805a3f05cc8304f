use super::*;
use crate::index::Index;

const ENTRIES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  hosts: [api.payments.example, API.Refunds.example.]
  location: MESH_EXTERNAL
  ports:
  - {number: 443, name: https, protocol: TLS}
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  resolution: STATIC
  endpoints:
  - {address: 192.0.2.10}
  - {address: 192.0.2.11, ports: {http: 9080}, serviceAccount: pay}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: search, namespace: shop}
spec:
  hosts: [search.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: mirrors, namespace: shop}
spec:
  hosts: [mirrors.example.com]
  ports: [{number: 80, name: http}]
  resolution: DNS
  endpoints: [{address: eu.mirrors.example.com}, {address: 198.51.100.7}]
  exportTo: [.]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy-db, namespace: shop}
spec:
  hosts: [db.legacy.internal]
  addresses: [203.0.113.5/32, 203.0.113.0/24]
  ports: [{number: 5432, name: pg, protocol: TCP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hidden, namespace: shop}
spec:
  hosts: [hidden.example.com]
  ports: [{number: 80, name: http}]
  resolution: DNS
  exportTo: ["~"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms, namespace: shop}
spec:
  hosts: [vm.shop.internal]
  ports: [{number: 80, name: http, targetPort: 8080}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy-0, namespace: shop, labels: {app: legacy}}
spec: {nodeName: node-a, containers: [{name: app, image: x}]}
status: {podIP: 10.244.1.9}
"#;

fn index_of(yaml: &str) -> Index {
    crate::index::build_from_yaml(yaml)
}

fn service(index: &Index, key: &str) -> wds::Service {
    match &index
        .addresses
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing"))
        .r#type
    {
        Some(wds::address::Type::Service(s)) => s.clone(),
        other => panic!("{other:?}"),
    }
}

fn workload(index: &Index, uid: &str) -> wds::Workload {
    match &index
        .addresses
        .get(uid)
        .unwrap_or_else(|| panic!("{uid} missing"))
        .r#type
    {
        Some(wds::address::Type::Workload(w)) => w.clone(),
        other => panic!("{other:?}"),
    }
}

fn ips(s: &wds::Service) -> Vec<IpAddr> {
    s.addresses
        .iter()
        .map(|a| match a.address.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(a.address.as_slice()).unwrap()),
            _ => IpAddr::from(<[u8; 16]>::try_from(a.address.as_slice()).unwrap()),
        })
        .collect()
}

fn in_auto_range(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..2] == [240, 240])
}

fn warned(index: &Index, text: &str) -> bool {
    index.warnings.iter().any(|w| w.message.contains(text))
}

#[test]
fn static_entries_become_a_service_per_host_and_a_workload_per_endpoint() {
    let index = index_of(ENTRIES);
    for host in ["api.payments.example", "api.refunds.example"] {
        let s = service(&index, &format!("shop/{host}"));
        assert_eq!(s.name, "payments");
        assert_eq!(s.hostname, host);
        let [ip] = ips(&s)[..] else { panic!("{s:?}") };
        assert!(in_auto_range(ip), "{ip}");
        assert_eq!(
            s.ports,
            vec![
                wds::Port {
                    service_port: 443,
                    target_port: 0
                },
                wds::Port {
                    service_port: 80,
                    target_port: 8080
                },
            ]
        );
        assert_eq!(s.visibility, wds::service::Visibility::Public as i32);
        assert!(s.load_balancing.is_none());
    }
    // Two hosts, two addresses.
    assert_ne!(
        ips(&service(&index, "shop/api.payments.example")),
        ips(&service(&index, "shop/api.refunds.example"))
    );

    let w = workload(
        &index,
        "Kubernetes/networking.istio.io/ServiceEntry/shop/payments/192.0.2.11",
    );
    assert_eq!(w.addresses, vec![vec![192, 0, 2, 11]]);
    assert_eq!(w.tunnel_protocol, wds::TunnelProtocol::None as i32);
    assert_eq!(w.service_account, "pay");
    assert_eq!(w.name, "payments");
    // The endpoint's own port for `http`, the entry's for the rest.
    let ports = &w.services["shop/api.payments.example"].ports;
    assert_eq!(
        ports,
        &vec![
            wds::Port {
                service_port: 443,
                target_port: 0
            },
            wds::Port {
                service_port: 80,
                target_port: 9080
            },
        ]
    );
    assert!(w.services.contains_key("shop/api.refunds.example"));
    let other = workload(
        &index,
        "Kubernetes/networking.istio.io/ServiceEntry/shop/payments/192.0.2.10",
    );
    assert_eq!(other.service_account, "default");
}

#[test]
fn dns_entries_have_named_endpoints() {
    let index = index_of(ENTRIES);
    // No endpoints: the host itself.
    let s = service(&index, "shop/search.example.com");
    assert!(in_auto_range(ips(&s)[0]));
    let w = workload(
        &index,
        "Kubernetes/networking.istio.io/ServiceEntry/shop/search/search.example.com",
    );
    assert!(w.addresses.is_empty());
    assert_eq!(w.hostname, "search.example.com");
    assert!(w.services.contains_key("shop/search.example.com"));

    // Endpoints by name and by address; exported to its own namespace only.
    let s = service(&index, "shop/mirrors.example.com");
    assert_eq!(s.visibility, wds::service::Visibility::Namespace as i32);
    let named = workload(
        &index,
        "Kubernetes/networking.istio.io/ServiceEntry/shop/mirrors/eu.mirrors.example.com",
    );
    assert_eq!(named.hostname, "eu.mirrors.example.com");
    let addressed = workload(
        &index,
        "Kubernetes/networking.istio.io/ServiceEntry/shop/mirrors/198.51.100.7",
    );
    assert_eq!(addressed.addresses, vec![vec![198, 51, 100, 7]]);
    assert!(addressed.hostname.is_empty());

    // Exported nowhere: not sent at all.
    assert!(!index.addresses.contains_key("shop/hidden.example.com"));
    assert!(
        !index
            .addresses
            .keys()
            .any(|k| k.contains("ServiceEntry/shop/hidden"))
    );
}

#[test]
fn resolution_none_passes_through_its_own_addresses() {
    let index = index_of(ENTRIES);
    let s = service(&index, "shop/db.legacy.internal");
    // The single-address CIDR is kept; the range is not, and says so.
    assert_eq!(ips(&s), vec!["203.0.113.5".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        s.load_balancing.unwrap().mode,
        wds::load_balancing::Mode::Passthrough as i32
    );
    assert!(warned(
        &index,
        "address range 203.0.113.0/24 is not supported"
    ));
    assert!(
        !index
            .addresses
            .keys()
            .any(|k| k.contains("ServiceEntry/shop/legacy-db"))
    );
}

#[test]
fn a_workload_selector_makes_pods_endpoints() {
    let index = index_of(ENTRIES);
    let s = service(&index, "shop/vm.shop.internal");
    assert!(in_auto_range(ips(&s)[0]));
    let pod = workload(&index, "Kubernetes//Pod/shop/legacy-0");
    assert_eq!(
        pod.services["shop/vm.shop.internal"].ports,
        vec![wds::Port {
            service_port: 80,
            target_port: 8080
        }]
    );
}

#[test]
fn addresses_do_not_move_when_entries_come_and_go() {
    let before = index_of(ENTRIES);
    let addr = |index: &Index, key: &str| ips(&service(index, key));
    // A restart computes the same.
    let again = index_of(ENTRIES);
    for key in [
        "shop/api.payments.example",
        "shop/search.example.com",
        "shop/mirrors.example.com",
    ] {
        assert_eq!(addr(&before, key), addr(&again, key), "{key}");
    }
    // More entries (one per letter of the alphabet, named to sort first) and one less: the
    // remaining ones keep their addresses.
    let mut more = ENTRIES.replace(
        "kind: ServiceEntry\nmetadata: {name: search, namespace: shop}",
        "kind: ServiceEntry\nmetadata: {name: search-gone, namespace: elsewhere}",
    );
    for c in 'a'..='z' {
        more.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: \
             a{c}, namespace: shop}}\nspec: {{hosts: [{c}.new.example], ports: [{{number: 80, \
             name: http}}], resolution: DNS}}\n"
        ));
    }
    let after = index_of(&more);
    for key in ["shop/api.payments.example", "shop/mirrors.example.com"] {
        assert_eq!(addr(&before, key), addr(&after, key), "{key}");
    }
    let mut all: Vec<IpAddr> = after
        .addresses
        .values()
        .filter_map(|a| match &a.r#type {
            Some(wds::address::Type::Service(s)) => Some(ips(s)),
            _ => None,
        })
        .flatten()
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "every host its own address");
}

#[test]
fn collisions_go_to_the_older_entry() {
    // Two keys that hash to the same start, found by search (stable: FNV-1a).
    let usable = (1u64 << 16) - 2;
    let target = fnv1a(b"shop/old.example") % usable;
    let young = (0..)
        .map(|i| format!("shop/young{i}.example"))
        .find(|k| fnv1a(k.as_bytes()) % usable == target)
        .unwrap();
    let young_host = young.strip_prefix("shop/").unwrap();
    let entry = |name: &str, host: &str, created: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: \
             {name}, namespace: shop, creationTimestamp: \"{created}\"}}\nspec: {{hosts: \
             [{host}], ports: [{{number: 80, name: http}}], resolution: DNS}}\n"
        )
    };
    // The younger one sorts first by name; creation order decides.
    let yaml = entry("b-old", "old.example", "2026-01-01T00:00:00Z")
        + &entry("a-young", young_host, "2026-06-01T00:00:00Z");
    let index = index_of(&yaml);
    let old = ips(&service(&index, "shop/old.example"))[0];
    let young = ips(&service(&index, &young))[0];
    let expected = IpAddr::V4(Ipv4Addr::from(u32::from(AUTO_RANGE.0) + target as u32 + 1));
    assert_eq!(old, expected);
    assert_ne!(young, old);
    // Alone, the old one has the same address.
    let alone = index_of(&entry("b-old", "old.example", "2026-01-01T00:00:00Z"));
    assert_eq!(ips(&service(&alone, "shop/old.example"))[0], old);
}

#[test]
fn an_address_istio_recorded_is_kept() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: rec, namespace: shop}
spec: {hosts: [rec.example.com], ports: [{number: 80, name: http}], resolution: DNS}
status:
  addresses: [{value: 240.240.10.20, host: rec.example.com}]
"#;
    let index = index_of(yaml);
    assert_eq!(
        ips(&service(&index, "shop/rec.example.com")),
        vec!["240.240.10.20".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn problems_are_warnings_and_never_half_entries() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: odd, namespace: shop}
spec:
  hosts: [odd.example.com]
  ports: [{number: 53, name: dns, protocol: UDP}, {number: 80, name: http}]
  resolution: DNS
  endpoints: [{address: "not a host!"}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: weird, namespace: shop}
spec: {hosts: [weird.example.com], resolution: SOMETIMES}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: nameless, namespace: shop}
spec: {hosts: [], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: shop}
spec: {hosts: ["*.wild.example"], ports: [{number: 443, name: tls}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: static-name, namespace: shop}
spec:
  hosts: [s.example.com]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: s.example.com}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: DNS
"#;
    let index = index_of(yaml);
    assert!(warned(&index, "UDP ports are not supported"));
    assert_eq!(service(&index, "shop/odd.example.com").ports.len(), 1);
    assert!(warned(
        &index,
        "\"not a host!\" is neither an IP address nor a hostname"
    ));
    assert!(warned(&index, "resolution \"SOMETIMES\""));
    assert!(!index.addresses.contains_key("shop/weird.example.com"));
    assert!(warned(&index, "no hosts"));
    assert!(warned(
        &index,
        "wildcard host *.wild.example needs resolution NONE"
    ));
    assert!(service(&index, "shop/*.wild.example").addresses.is_empty());
    assert!(warned(&index, "is not an IP address (resolution STATIC)"));
    // A Kubernetes Service keeps its hostname.
    let web = service(&index, "shop/web.shop.svc.cluster.local");
    assert_eq!(web.name, "web");
    assert!(warned(&index, "already defines"));
}
