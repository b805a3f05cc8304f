//! Pod churn without recomputing the whole index.
//!
//! Pods are most of a cluster and most of its changes, and a pod's workload depends only on
//! objects that are not pods (its namespace, the Services and ServiceEntries selecting it,
//! policies, waypoints, its node). So when a burst changed nothing but pods, the push loop
//! recomputes just those pods' workloads ([`update_pods`]) in the index it kept, and
//! `Snapshot::next_touching` re-encodes just their resources. Any other change, and a change
//! to a waypoint's own pods (they count as running instances in the waypoints' status and
//! L7 configuration), takes the full [`build`](super::build).

use std::collections::{BTreeMap, BTreeSet};

use ambient_proto::identity::Identity;
use ambient_proto::istio::workload as wds;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::waypoint::GATEWAY_NAME_LABEL;
use super::{Context, Index, IndexConfig, workload};
use crate::model::{Change, ClusterState, Kind, MeshPod, Object, ObjectKey};

/// What a burst of changes touched, noted before each is applied.
#[derive(Debug, Default)]
pub enum Touched {
    /// Nothing yet.
    #[default]
    Nothing,
    /// Only these pods, by (namespace, name).
    Pods(BTreeSet<(String, String)>),
    /// Something that needs the full computation.
    Everything,
}

impl Touched {
    /// What `change` touches, were it applied to `state` now (it needs the old object).
    pub fn of(state: &ClusterState, change: &Change) -> Touched {
        let pod = match change {
            Change::Apply(object @ Object::Pod(new)) => {
                let key = object.key();
                local_pod_change(state.pod(&key), Some(&new.metadata)).then_some(key)
            }
            Change::Delete(key) if key.kind == Kind::Pod => {
                local_pod_change(state.pod(key), None).then(|| key.clone())
            }
            _ => None,
        };
        match pod {
            Some(key) => Touched::Pods(BTreeSet::from([(key.namespace, key.name)])),
            None => Touched::Everything,
        }
    }

    /// Adds what `other` touched.
    pub fn merge(&mut self, other: Touched) {
        match (&mut *self, other) {
            (_, Touched::Nothing) | (Touched::Everything, _) => {}
            (Touched::Pods(mine), Touched::Pods(theirs)) => mine.extend(theirs),
            (_, other) => *self = other,
        }
    }
}

/// Whether replacing `old` by `new` changes nothing but that pod's own workload: neither is
/// a waypoint instance.
fn local_pod_change(old: Option<&MeshPod>, new: Option<&ObjectMeta>) -> bool {
    let waypoint_instance = |m: &ObjectMeta| {
        m.labels
            .as_ref()
            .is_some_and(|l| l.contains_key(GATEWAY_NAME_LABEL))
    };
    !old.is_some_and(|p| waypoint_instance(&p.metadata)) && !new.is_some_and(waypoint_instance)
}

/// Recomputes the workloads of `pods` (as `state` now has them) in `index`, which must be
/// the index of `state` before those pods changed. Returns the `Address` names that may
/// differ.
pub fn update_pods(
    index: &mut Index,
    state: &ClusterState,
    config: &IndexConfig,
    pods: &BTreeSet<(String, String)>,
) -> BTreeSet<String> {
    let ctx = Context::new(state, config);
    let mut names = BTreeSet::new();
    let mut nodes = BTreeSet::new();
    for (namespace, name) in pods {
        let uid = workload::pod_uid(&config.cluster_id, namespace, name);
        if let Some(old) = index.addresses.remove(&uid) {
            nodes.extend(hbone_pod(&old).map(|w| w.node.clone()));
        }
        index.pod_warnings.remove(&uid);
        let pod = state.pod(&ObjectKey {
            kind: Kind::Pod,
            namespace: namespace.clone(),
            name: name.clone(),
        });
        if let Some(pod) = pod {
            let mut raised = Vec::new();
            if let Some(w) = workload::from_pod(&ctx, pod, &mut raised) {
                let address = wds::Address {
                    r#type: Some(wds::address::Type::Workload(w)),
                };
                nodes.extend(hbone_pod(&address).map(|w| w.node.clone()));
                index.addresses.insert(uid.clone(), address);
                if !raised.is_empty() {
                    index.pod_warnings.insert(uid.clone(), raised);
                }
            }
        }
        names.insert(uid);
    }
    let recomputed = identities_by_node(&index.addresses, config, Some(&nodes));
    for node in &nodes {
        match recomputed.get(node) {
            Some(ids) => index.identities_by_node.insert(node.clone(), ids.clone()),
            None => index.identities_by_node.remove(node),
        };
    }
    index.gather_warnings();
    names
}

/// A pod's workload that terminates HBONE on a node (whose ztunnel may be granted its
/// identity).
fn hbone_pod(address: &wds::Address) -> Option<&wds::Workload> {
    match &address.r#type {
        Some(wds::address::Type::Workload(w))
            if w.tunnel_protocol == wds::TunnelProtocol::Hbone as i32
                && w.workload_type == wds::WorkloadType::Pod as i32
                && !w.node.is_empty() =>
        {
            Some(w)
        }
        _ => None,
    }
}

/// The identities of the pods' HBONE workloads, by node (only `only` nodes when given).
pub(super) fn identities_by_node(
    addresses: &BTreeMap<String, wds::Address>,
    config: &IndexConfig,
    only: Option<&BTreeSet<String>>,
) -> BTreeMap<String, BTreeSet<Identity>> {
    let mut out: BTreeMap<String, BTreeSet<Identity>> = BTreeMap::new();
    for w in addresses.values().filter_map(hbone_pod) {
        if only.is_some_and(|o| !o.contains(&w.node)) {
            continue;
        }
        if let Ok(id) = Identity::new(
            &config.trust_domain,
            w.namespace.clone(),
            w.service_account.clone(),
        ) {
            out.entry(w.node.clone()).or_default().insert(id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{build, state_from_yaml};
    use crate::xds::Snapshot;

    /// Everything a pod's workload can depend on: enrolled and plain namespaces, a waypoint
    /// (with its own pod), Services by selector and by EndpointSlice, a ServiceEntry
    /// selecting pods, selector policies, a node with a locality.
    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-1}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {nodeName: node-a, serviceAccountName: waypoint, containers: [{name: w, image: x}]}
status: {phase: Running, podIP: 10.244.9.9}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http}, {name: grpc, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec:
  selector: {app: web, version: v2}
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: plain}
spec:
  selector: {app: db}
  clusterIP: 10.96.0.12
  ports: [{name: tcp, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec:
  clusterIP: 10.96.0.13
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-1
  namespace: shop
  labels: {kubernetes.io/service-name: legacy}
addressType: IPv4
ports: [{name: http, port: 8081}]
endpoints:
- addresses: [10.244.1.3]
  targetRef: {kind: Pod, name: pod-3, namespace: shop}
- addresses: [192.168.0.7]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  addresses: [240.0.0.1]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: STATIC
  workloadSelector: {labels: {app: api}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/api]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict-db, namespace: plain}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: STRICT}
"#;

    /// A small deterministic generator (xorshift), so a failure replays.
    struct Draw(u64);

    impl Draw {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
            of[self.below(of.len() as u64) as usize]
        }
    }

    /// A pod change of the kind clusters see: a pod created, relabelled, rescheduled, made
    /// ready or not, finished, deleted; now and then a waypoint's own pod.
    fn pod_change(draw: &mut Draw) -> Change {
        let namespace = draw.pick(&["shop", "shop", "plain"]);
        let name = format!("pod-{}", draw.below(12));
        if draw.below(6) == 0 {
            return Change::Delete(ObjectKey {
                kind: Kind::Pod,
                namespace: namespace.into(),
                name,
            });
        }
        let mut labels = serde_json::Map::new();
        let app = draw.pick(&["web", "web", "db", "api", ""]);
        if !app.is_empty() {
            labels.insert("app".into(), app.into());
        }
        labels.insert("version".into(), draw.pick(&["v1", "v2"]).into());
        match draw.below(12) {
            0 => {
                labels.insert("istio.io/use-waypoint".into(), "missing".into());
            }
            1 => {
                labels.insert("istio.io/dataplane-mode".into(), "none".into());
            }
            2 => {
                labels.insert(GATEWAY_NAME_LABEL.into(), "waypoint".into());
            }
            _ => {}
        }
        let ip = format!("10.244.1.{}", draw.below(12));
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "nodeName": draw.pick(&["node-a", "node-b", ""]),
                "serviceAccountName": draw.pick(&["web", "api", ""]),
                "hostNetwork": draw.below(10) == 0,
                "containers": [{"name": "app", "image": "x",
                                "ports": [{"name": "http", "containerPort": 8080}]}],
            },
            "status": {
                "phase": draw.pick(&["Running", "Running", "Running", "Succeeded"]),
                "podIP": if draw.below(8) == 0 { serde_json::Value::Null } else { ip.into() },
                "conditions": [{"type": "Ready",
                                "status": draw.pick(&["True", "True", "False"])}],
            },
        });
        Change::Apply(Object::Pod(serde_json::from_value(pod).expect("a pod")))
    }

    #[test]
    fn pod_churn_updated_in_place_equals_a_full_build() {
        let config = IndexConfig::default();
        let mut state = state_from_yaml(CLUSTER);
        let mut index = build(&state, &config);
        let mut snapshot = Snapshot::next(&Snapshot::default(), &index);
        let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
        let (mut in_place, mut full) = (0, 0);
        for round in 0..400 {
            let mut touched = Touched::Nothing;
            for _ in 0..1 + draw.below(4) {
                let change = pod_change(&mut draw);
                touched.merge(Touched::of(&state, &change));
                state.apply(change);
            }
            let rebuilt = build(&state, &config);
            let next = match touched {
                Touched::Pods(pods) => {
                    in_place += 1;
                    let names = update_pods(&mut index, &state, &config, &pods);
                    Snapshot::next_touching(&snapshot, &index, &names)
                }
                Touched::Everything => {
                    full += 1;
                    index = build(&state, &config);
                    Snapshot::next(&snapshot, &index)
                }
                Touched::Nothing => unreachable!("every round changes a pod"),
            };
            assert_eq!(index.addresses, rebuilt.addresses, "round {round}");
            assert_eq!(
                index.identities_by_node, rebuilt.identities_by_node,
                "round {round}"
            );
            assert_eq!(index.warnings, rebuilt.warnings, "round {round}");
            let expected = Snapshot::next(&snapshot, &rebuilt);
            assert_eq!(next.sets, expected.sets, "round {round}");
            assert_eq!(next.changed, expected.changed, "round {round}");
            assert_eq!(next.gateways, expected.gateways, "round {round}");
            snapshot = next;
        }
        // Both paths ran, and the churn reached what a workload depends on.
        assert!(
            in_place > 200 && full > 20,
            "{in_place} in place, {full} full"
        );
        let workloads = index
            .addresses
            .keys()
            .filter(|k| k.contains("//Pod/"))
            .count();
        assert!(workloads > 10, "{workloads}");
        assert!(
            index.warnings.iter().any(|w| w.message.contains("missing")),
            "{:?}",
            index.warnings
        );
    }

    #[test]
    fn only_pods_that_are_no_waypoint_instances_stay_local() {
        let state = state_from_yaml(CLUSTER);
        let waypoint_pod = ObjectKey {
            kind: Kind::Pod,
            namespace: "shop".into(),
            name: "waypoint-0".into(),
        };
        let mut touched = Touched::Nothing;
        touched.merge(Touched::of(&state, &Change::Delete(waypoint_pod)));
        assert!(matches!(touched, Touched::Everything));

        let mut touched = Touched::Nothing;
        let mut draw = Draw(7);
        let change = loop {
            let c = pod_change(&mut draw);
            if matches!(&c, Change::Apply(Object::Pod(p))
                if !p.metadata.labels.as_ref().unwrap().contains_key(GATEWAY_NAME_LABEL))
            {
                break c;
            }
        };
        touched.merge(Touched::of(&state, &change));
        assert!(
            matches!(&touched, Touched::Pods(p) if p.len() == 1),
            "{touched:?}"
        );
        // Anything but a pod needs the whole computation, and stays so.
        let ns = state
            .namespaces()
            .next()
            .map(|n| Object::Namespace(n.clone()))
            .unwrap();
        let mut pods = Touched::Nothing;
        pods.merge(touched);
        touched = Touched::Nothing;
        touched.merge(Touched::of(&state, &Change::Apply(ns)));
        touched.merge(Touched::of(&state, &change));
        assert!(matches!(touched, Touched::Everything));
        pods.merge(Touched::Nothing);
        assert!(
            matches!(&pods, Touched::Pods(p) if p.len() == 1),
            "{pods:?}"
        );
        pods.merge(touched);
        assert!(matches!(pods, Touched::Everything));
    }
}
