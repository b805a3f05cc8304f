use super::*;
use crate::model::Change;
use crate::source::manifests::parse_file;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: shop-waypoint}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9c-x2x9q
  generateName: web-7d4b9c-
  namespace: shop
  labels: {app: web, version: v2, pod-template-hash: 7d4b9c}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9c, uid: u1, controller: true}
spec:
  nodeName: node-a
  serviceAccountName: web
  containers:
  - name: app
    image: x
    ports: [{name: http, containerPort: 8080}]
status:
  podIP: 10.244.1.5
---
apiVersion: v1
kind: Pod
metadata:
  name: opted-out
  namespace: shop
  labels: {app: web, istio.io/dataplane-mode: none}
spec: {nodeName: node-a, containers: [{name: app, image: x}]}
status: {podIP: 10.244.1.6}
---
apiVersion: v1
kind: Pod
metadata:
  name: volunteer
  namespace: plain
  labels: {istio.io/dataplane-mode: ambient}
spec: {nodeName: node-b, containers: [{name: app, image: x}]}
status: {podIP: 10.244.2.5}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: plain}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: direct, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec:
  clusterIP: 10.96.0.21
  selector: {app: nothing}
  ports: [{port: 81}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop-waypoint, namespace: shop, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{from: [{source: {namespaces: [shop]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {topology.kubernetes.io/region: eu-west, topology.kubernetes.io/zone: eu-west-1b}
status: {nodeInfo: {kubeletVersion: v1.36.3}}
"#;

fn index() -> Index {
    build_from_yaml(CLUSTER)
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

#[test]
fn enrolment_follows_labels() {
    let idx = index();
    let web = workload(&idx, "Kubernetes//Pod/shop/web-7d4b9c-x2x9q");
    assert_eq!(
        web.tunnel_protocol,
        wds::TunnelProtocol::Hbone as i32,
        "namespace label"
    );
    let out = workload(&idx, "Kubernetes//Pod/shop/opted-out");
    assert_eq!(
        out.tunnel_protocol,
        wds::TunnelProtocol::None as i32,
        "pod label none wins"
    );
    let vol = workload(&idx, "Kubernetes//Pod/plain/volunteer");
    assert_eq!(
        vol.tunnel_protocol,
        wds::TunnelProtocol::Hbone as i32,
        "pod label ambient wins"
    );
    assert!(
        !idx.addresses.contains_key("Kubernetes//Pod/plain/pending"),
        "no IP, no workload"
    );
    let ids: Vec<String> = idx.identities_by_node["node-a"]
        .iter()
        .map(|i| i.to_string())
        .collect();
    assert_eq!(
        ids,
        vec!["spiffe://cluster.local/ns/shop/sa/web"],
        "only enrolled pods"
    );
}

#[test]
fn workload_fields() {
    let idx = index();
    let web = workload(&idx, "Kubernetes//Pod/shop/web-7d4b9c-x2x9q");
    assert_eq!(web.addresses, vec![vec![10, 244, 1, 5]]);
    assert_eq!(web.service_account, "web");
    assert_eq!(web.node, "node-a");
    assert_eq!(
        web.workload_name, "web",
        "deployment name from the ReplicaSet"
    );
    assert_eq!(web.canonical_name, "web");
    assert_eq!(web.canonical_revision, "v2");
    let ports = &web.services["shop/web.shop.svc.cluster.local"].ports;
    assert_eq!(
        (ports[0].service_port, ports[0].target_port),
        (80, 8080),
        "named port resolved"
    );
    assert_eq!(
        web.authorization_policies,
        vec![
            "shop/web-only",
            "istio-system/istio_converted_static_strict"
        ]
    );
    let Some(wds::gateway_address::Destination::Hostname(h)) =
        web.waypoint.and_then(|w| w.destination)
    else {
        panic!("workload waypoint")
    };
    assert_eq!(h.hostname, "shop-waypoint.shop.svc.cluster.local");
}

#[test]
fn locality_comes_from_the_nodes_topology_labels() {
    let idx = index();
    let web = workload(&idx, "Kubernetes//Pod/shop/web-7d4b9c-x2x9q");
    let locality = web.locality.expect("node-a is labelled");
    assert_eq!(
        (locality.region.as_str(), locality.zone.as_str()),
        ("eu-west", "eu-west-1b")
    );
    assert_eq!(web.cluster_id, "Kubernetes");
    // node-b has no Node object (or no labels): no locality, telemetry says `unknown`.
    let volunteer = workload(&idx, "Kubernetes//Pod/plain/volunteer");
    assert_eq!(volunteer.locality, None);
}

#[test]
fn services_and_policies() {
    let idx = index();
    let Some(wds::address::Type::Service(web)) =
        &idx.addresses["shop/web.shop.svc.cluster.local"].r#type
    else {
        panic!()
    };
    assert_eq!(web.addresses[0].address, vec![10, 96, 0, 20]);
    assert_eq!(
        (web.ports[0].service_port, web.ports[0].target_port),
        (80, 0)
    );
    assert!(web.waypoint.is_some(), "namespace waypoint");
    let Some(wds::address::Type::Service(direct)) =
        &idx.addresses["shop/direct.shop.svc.cluster.local"].r#type
    else {
        panic!()
    };
    assert!(
        direct.waypoint.is_none(),
        "use-waypoint: none on the service"
    );
    assert_eq!(direct.ports[0].target_port, 81);
    let names: Vec<&String> = idx.authorizations.keys().collect();
    assert_eq!(
        names,
        vec![
            "istio-system/istio_converted_static_strict",
            "shop/web-only"
        ]
    );
    assert!(idx.warnings.is_empty(), "{:?}", idx.warnings);
}

#[test]
fn missing_waypoint_is_a_warning() {
    let text = CLUSTER.replace(
        "istio.io/use-waypoint: shop-waypoint",
        "istio.io/use-waypoint: ghost",
    );
    let parsed = parse_file(std::path::Path::new("c.yaml"), &text, None);
    let mut state = ClusterState::default();
    state.apply(Change::replace(Kind::ALL.to_vec(), parsed.objects));
    let idx = build(&state, &IndexConfig::default());
    assert!(
        idx.warnings
            .iter()
            .any(|w| w.message.contains("shop/ghost, which does not exist")),
        "{:?}",
        idx.warnings
    );
}
