//! Delta xDS: what is served ([`Snapshot`]: every resource, encoded once, with a content
//! version), and the gRPC service that pushes differences ([`server`]).

pub mod server;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ambient_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_TYPE_URL, MESH_RESOURCE, MESH_TYPE_URL,
};
use prost::Message;

use crate::index::Index;
use crate::index::l7::ratelimit::PolicyStatus;
use crate::index::l7::rollout::RolloutView;
use crate::index::l7::status::GatewayStatus;

/// The resource types served. A client is sent only the types it subscribes to: ztunnel
/// (addresses and authorizations) never sees the waypoints' L7 configuration.
pub const TYPES: [&str; 4] = [
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    L7_TYPE_URL,
    MESH_TYPE_URL,
];

/// One resource as sent: name, version and encoded body.
#[derive(Debug, PartialEq)]
pub struct Versioned {
    pub name: String,
    pub version: String,
    pub body: ambient_proto::google::protobuf::Any,
}

pub type ResourceSet = BTreeMap<String, Arc<Versioned>>;

/// Everything served at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases by one per published snapshot.
    pub generation: u64,
    pub sets: BTreeMap<&'static str, Arc<ResourceSet>>,
    /// Per type, names added, changed or removed since generation - 1.
    pub changed: BTreeMap<&'static str, BTreeSet<String>>,
    /// The waypoint Gateways' status (for the monitoring port; not sent over xDS).
    pub gateways: Arc<Vec<GatewayStatus>>,
    /// Whether `gateways` or `policies` differs from generation - 1.
    pub gateways_changed: bool,
    /// The LocalRateLimitPolicies' status (monitoring port only).
    pub policies: Arc<Vec<PolicyStatus>>,
    /// The Rollouts, for the rollout engine (not sent over xDS).
    pub rollouts: Arc<Vec<RolloutView>>,
}

/// A stable 64-bit FNV-1a hash: versions must survive controller restarts, so a
/// reconnecting client that already has a resource is not sent it again.
pub fn content_version(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn encode<M: Message>(
    type_url: &str,
    name: &str,
    m: &M,
    previous: Option<&ResourceSet>,
) -> Arc<Versioned> {
    let bytes = m.encode_to_vec();
    let version = content_version(&bytes);
    if let Some(prev) = previous.and_then(|p| p.get(name))
        && prev.version == version
    {
        return prev.clone();
    }
    Arc::new(Versioned {
        name: name.to_string(),
        version,
        body: ambient_proto::google::protobuf::Any {
            type_url: type_url.to_string(),
            value: bytes.into(),
        },
    })
}

impl Snapshot {
    /// The snapshot after `previous` for a freshly computed index.
    pub fn next(previous: &Snapshot, index: &Index) -> Snapshot {
        let prev = |t: &str| previous.sets.get(t).map(|s| s.as_ref());
        let addresses: ResourceSet = index
            .addresses
            .iter()
            .map(|(n, a)| {
                (
                    n.clone(),
                    encode(ADDRESS_TYPE_URL, n, a, prev(ADDRESS_TYPE_URL)),
                )
            })
            .collect();
        let authorizations: ResourceSet = index
            .authorizations
            .iter()
            .map(|(n, a)| {
                (
                    n.clone(),
                    encode(AUTHORIZATION_TYPE_URL, n, a, prev(AUTHORIZATION_TYPE_URL)),
                )
            })
            .collect();
        let l7: ResourceSet = index
            .l7
            .iter()
            .map(|(n, r)| (n.clone(), encode(L7_TYPE_URL, n, r, prev(L7_TYPE_URL))))
            .collect();
        // Always sent, defaults included: a ztunnel then knows the mesh's settings are these.
        let mesh: ResourceSet = [(
            MESH_RESOURCE.to_string(),
            encode(
                MESH_TYPE_URL,
                MESH_RESOURCE,
                &index.mesh,
                prev(MESH_TYPE_URL),
            ),
        )]
        .into_iter()
        .collect();
        let mut sets = BTreeMap::new();
        let mut changed = BTreeMap::new();
        for (t, set) in [
            (ADDRESS_TYPE_URL, addresses),
            (AUTHORIZATION_TYPE_URL, authorizations),
            (L7_TYPE_URL, l7),
            (MESH_TYPE_URL, mesh),
        ] {
            let empty = ResourceSet::new();
            let old = prev(t).unwrap_or(&empty);
            let mut names: BTreeSet<String> = set
                .iter()
                .filter(|(n, v)| old.get(*n).is_none_or(|o| o.version != v.version))
                .map(|(n, _)| n.clone())
                .collect();
            names.extend(old.keys().filter(|n| !set.contains_key(*n)).cloned());
            changed.insert(t, names);
            sets.insert(t, Arc::new(set));
        }
        let gateways_changed = *previous.gateways != index.gateways;
        let gateways = if gateways_changed {
            Arc::new(index.gateways.clone())
        } else {
            previous.gateways.clone()
        };
        let rollouts_changed = *previous.rollouts != index.rollouts;
        let rollouts = if rollouts_changed {
            Arc::new(index.rollouts.clone())
        } else {
            previous.rollouts.clone()
        };
        let policies_changed = *previous.policies != index.policies;
        let policies = if policies_changed {
            Arc::new(index.policies.clone())
        } else {
            previous.policies.clone()
        };
        Snapshot {
            generation: previous.generation + 1,
            sets,
            changed,
            gateways,
            gateways_changed: gateways_changed || policies_changed || rollouts_changed,
            policies,
            rollouts,
        }
    }

    /// The snapshot after `previous` when only the `Address`es named in `touched` may have
    /// changed (the rest of `index` as `previous` was computed from): only those are encoded
    /// again, and every other set is shared with `previous`.
    pub fn next_touching(
        previous: &Snapshot,
        index: &Index,
        touched: &BTreeSet<String>,
    ) -> Snapshot {
        let mut sets = previous.sets.clone();
        let mut changed: BTreeMap<&'static str, BTreeSet<String>> =
            TYPES.iter().map(|t| (*t, BTreeSet::new())).collect();
        let old = previous.sets.get(ADDRESS_TYPE_URL).map(|s| s.as_ref());
        let mut addresses = old.cloned().unwrap_or_default();
        let names = changed.get_mut(ADDRESS_TYPE_URL).expect("every type");
        for name in touched {
            let before = addresses.remove(name);
            if let Some(a) = index.addresses.get(name) {
                let v = encode(ADDRESS_TYPE_URL, name, a, old);
                if before.is_none_or(|b| b.version != v.version) {
                    names.insert(name.clone());
                }
                addresses.insert(name.clone(), v);
            } else if before.is_some() {
                names.insert(name.clone());
            }
        }
        sets.insert(ADDRESS_TYPE_URL, Arc::new(addresses));
        Snapshot {
            generation: previous.generation + 1,
            sets,
            changed,
            gateways: previous.gateways.clone(),
            gateways_changed: false,
            policies: previous.policies.clone(),
            rollouts: previous.rollouts.clone(),
        }
    }

    /// Whether anything differs from the snapshot it was computed after (a status change
    /// counts: it is published even when no proxy is sent anything).
    pub fn has_changes(&self) -> bool {
        self.gateways_changed || self.changed.values().any(|c| !c.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambient_proto::istio::workload as wds;

    fn index_with(names: &[(&str, &str)]) -> Index {
        let mut i = Index::default();
        for (uid, node) in names {
            i.addresses.insert(
                uid.to_string(),
                wds::Address {
                    r#type: Some(wds::address::Type::Workload(wds::Workload {
                        uid: uid.to_string(),
                        node: node.to_string(),
                        ..Default::default()
                    })),
                },
            );
        }
        i
    }

    #[test]
    fn only_real_changes_get_new_versions() {
        let s0 = Snapshot::default();
        let s1 = Snapshot::next(&s0, &index_with(&[("a", "n1"), ("b", "n1")]));
        assert_eq!(s1.generation, 1);
        assert_eq!(s1.changed[ADDRESS_TYPE_URL].len(), 2);
        let s2 = Snapshot::next(&s1, &index_with(&[("a", "n1"), ("b", "n2")]));
        assert_eq!(
            s2.changed[ADDRESS_TYPE_URL],
            BTreeSet::from(["b".to_string()])
        );
        assert!(
            Arc::ptr_eq(
                &s1.sets[ADDRESS_TYPE_URL]["a"],
                &s2.sets[ADDRESS_TYPE_URL]["a"]
            ),
            "unchanged resources are shared"
        );
        let s3 = Snapshot::next(&s2, &index_with(&[("b", "n2")]));
        assert_eq!(
            s3.changed[ADDRESS_TYPE_URL],
            BTreeSet::from(["a".to_string()]),
            "removal"
        );
        let s4 = Snapshot::next(&s3, &index_with(&[("b", "n2")]));
        assert!(!s4.has_changes());
    }

    #[test]
    fn l7_resources_and_gateway_status() {
        use crate::index::l7::status::GatewayStatus;
        use ambient_proto::ambient::waypoint::v1 as l7;
        let mut idx = Index::default();
        idx.l7.insert(
            "gateway/ns/waypoint".into(),
            l7::L7Resource {
                kind: Some(l7::l7_resource::Kind::Gateway(l7::GatewayConfig {
                    namespace: "ns".into(),
                    name: "waypoint".into(),
                    traffic_type: "service".into(),
                    policies: vec![],
                    rate_limits: vec![],
                    jwt_rules: vec![],
                })),
            },
        );
        let s1 = Snapshot::next(&Snapshot::default(), &idx);
        let v = &s1.sets[L7_TYPE_URL]["gateway/ns/waypoint"];
        assert_eq!(v.body.type_url, L7_TYPE_URL);
        assert_eq!(
            l7::L7Resource::decode(v.body.value.as_ref()).unwrap(),
            idx.l7["gateway/ns/waypoint"]
        );
        assert_eq!(s1.changed[L7_TYPE_URL].len(), 1);
        assert!(s1.changed[ADDRESS_TYPE_URL].is_empty());
        let s2 = Snapshot::next(&s1, &idx);
        assert!(!s2.has_changes());
        // A status change alone is published (for the monitoring port), sending nothing.
        idx.gateways.push(GatewayStatus {
            namespace: "ns".into(),
            name: "waypoint".into(),
            class: "istio-waypoint".into(),
            traffic_type: "service".into(),
            address: None,
            programmed: false,
            reason: "NoAddress".into(),
            message: String::new(),
            conditions: vec![],
        });
        let s3 = Snapshot::next(&s2, &idx);
        assert!(s3.has_changes() && s3.gateways_changed);
        assert!(s3.changed.values().all(|c| c.is_empty()));
        assert_eq!(s3.gateways.len(), 1);
        let s4 = Snapshot::next(&s3, &idx);
        assert!(!s4.has_changes());
        assert!(Arc::ptr_eq(&s3.gateways, &s4.gateways));
    }

    #[test]
    fn versions_are_stable_across_processes() {
        assert_eq!(content_version(b"hello"), "a430d84680aabd0b");
    }
}
