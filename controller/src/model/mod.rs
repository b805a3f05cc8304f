//! The typed model of everything the controller reads, whichever source it came from.
//!
//! Kubernetes core kinds use k8s-openapi's types; the Istio and Gateway API kinds are our
//! own structs ([`istio`], [`gateway`]). A [`ClusterState`] holds the current objects; sources
//! feed it [`Change`]s.

pub mod gateway;
pub mod istio;
pub mod networking;
pub mod pod;
pub mod policy;
pub mod rollout;
pub mod route;
pub mod service_entry;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use gateway::Gateway;
pub use istio::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
pub use networking::{DestinationRule, VirtualService};
pub use pod::MeshPod;
pub use policy::LocalRateLimitPolicy;
pub use rollout::Rollout;
pub use route::{GrpcRoute, HttpRoute, TcpRoute};
pub use service_entry::ServiceEntry;

/// The kinds the controller reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    /// Read for its topology labels only (a workload's region and zone).
    Node,
    Pod,
    Service,
    EndpointSlice,
    Gateway,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    HttpRoute,
    GrpcRoute,
    TcpRoute,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    LocalRateLimitPolicy,
    Rollout,
    /// Read for Istio's mesh config only (`istio` in the root namespace).
    ConfigMap,
}

impl Kind {
    pub const ALL: [Kind; 18] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Gateway,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::RequestAuthentication,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::TcpRoute,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::LocalRateLimitPolicy,
        Kind::Rollout,
        Kind::ConfigMap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Gateway => "Gateway",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::TcpRoute => "TCPRoute",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::LocalRateLimitPolicy => "LocalRateLimitPolicy",
            Kind::Rollout => "Rollout",
            Kind::ConfigMap => "ConfigMap",
        }
    }

    /// The kind named by a manifest's `apiVersion` and `kind`, if we read it.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        match (group, kind) {
            ("gateway.networking.k8s.io", "HTTPRoute") if matches!(version, "v1" | "v1beta1") => {
                Some(Kind::HttpRoute)
            }
            ("gateway.networking.k8s.io", "GRPCRoute") if matches!(version, "v1" | "v1alpha2") => {
                Some(Kind::GrpcRoute)
            }
            ("gateway.networking.k8s.io", "TCPRoute")
                if matches!(version, "v1alpha2" | "v1alpha3") =>
            {
                Some(Kind::TcpRoute)
            }
            ("networking.istio.io", "VirtualService")
                if matches!(version, "v1" | "v1beta1" | "v1alpha3") =>
            {
                Some(Kind::VirtualService)
            }
            ("networking.istio.io", "DestinationRule")
                if matches!(version, "v1" | "v1beta1" | "v1alpha3") =>
            {
                Some(Kind::DestinationRule)
            }
            ("networking.istio.io", "ServiceEntry")
                if matches!(version, "v1" | "v1beta1" | "v1alpha3") =>
            {
                Some(Kind::ServiceEntry)
            }
            (policy::GROUP, "LocalRateLimitPolicy") if version == policy::VERSION => {
                Some(Kind::LocalRateLimitPolicy)
            }
            (rollout::GROUP, "Rollout") if version == rollout::VERSION => Some(Kind::Rollout),
            ("", "Namespace") => Some(Kind::Namespace),
            ("", "Node") => Some(Kind::Node),
            ("", "Pod") => Some(Kind::Pod),
            ("", "Service") => Some(Kind::Service),
            ("", "ConfigMap") => Some(Kind::ConfigMap),
            ("discovery.k8s.io", "EndpointSlice") => Some(Kind::EndpointSlice),
            ("gateway.networking.k8s.io", "Gateway") => Some(Kind::Gateway),
            ("security.istio.io", "AuthorizationPolicy") => Some(Kind::AuthorizationPolicy),
            ("security.istio.io", "PeerAuthentication") => Some(Kind::PeerAuthentication),
            ("security.istio.io", "RequestAuthentication") => Some(Kind::RequestAuthentication),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one object: kind, namespace (empty for cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One object of a kind we read.
// Objects sit in one map and move by value rarely; boxing the big kinds would only add
// allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Gateway(Gateway),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    RequestAuthentication(RequestAuthentication),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    TcpRoute(TcpRoute),
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    ServiceEntry(ServiceEntry),
    LocalRateLimitPolicy(LocalRateLimitPolicy),
    Rollout(Rollout),
    ConfigMap(ConfigMap),
}

impl Object {
    /// A Node as the controller keeps it: its name and labels (its status, image lists and
    /// all, would cost memory for nothing).
    pub fn node(node: Node) -> Object {
        Object::Node(Node {
            metadata: ObjectMeta {
                name: node.metadata.name,
                labels: node.metadata.labels,
                ..Default::default()
            },
            ..Default::default()
        })
    }

    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Gateway(_) => Kind::Gateway,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
            Object::RequestAuthentication(_) => Kind::RequestAuthentication,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::TcpRoute(_) => Kind::TcpRoute,
            Object::VirtualService(_) => Kind::VirtualService,
            Object::DestinationRule(_) => Kind::DestinationRule,
            Object::ServiceEntry(_) => Kind::ServiceEntry,
            Object::LocalRateLimitPolicy(_) => Kind::LocalRateLimitPolicy,
            Object::Rollout(_) => Kind::Rollout,
            Object::ConfigMap(_) => Kind::ConfigMap,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::RequestAuthentication(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::TcpRoute(o) => &o.metadata,
            Object::VirtualService(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
            Object::ServiceEntry(o) => &o.metadata,
            Object::LocalRateLimitPolicy(o) => &o.metadata,
            Object::Rollout(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Gateway(o) => &mut o.metadata,
            Object::AuthorizationPolicy(o) => &mut o.metadata,
            Object::PeerAuthentication(o) => &mut o.metadata,
            Object::RequestAuthentication(o) => &mut o.metadata,
            Object::HttpRoute(o) => &mut o.metadata,
            Object::GrpcRoute(o) => &mut o.metadata,
            Object::TcpRoute(o) => &mut o.metadata,
            Object::VirtualService(o) => &mut o.metadata,
            Object::DestinationRule(o) => &mut o.metadata,
            Object::ServiceEntry(o) => &mut o.metadata,
            Object::LocalRateLimitPolicy(o) => &mut o.metadata,
            Object::Rollout(o) => &mut o.metadata,
            Object::ConfigMap(o) => &mut o.metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let m = self.meta();
        ObjectKey {
            kind: self.kind(),
            namespace: if matches!(self.kind(), Kind::Namespace | Kind::Node) {
                String::new()
            } else {
                m.namespace.clone().unwrap_or_else(|| "default".into())
            },
            name: m.name.clone().unwrap_or_default(),
        }
    }
}

/// A change from a source.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Change {
    /// Create or replace one object.
    Apply(Object),
    /// Remove one object.
    Delete(ObjectKey),
    /// The source's whole view of `kinds` (after a relist or a directory scan): objects of
    /// those kinds not listed are gone. Held as stored, so a source listing a large cluster
    /// keeps reduced pods, not decoded ones, until the listing is complete.
    Replace {
        kinds: Vec<Kind>,
        objects: Vec<StoredObject>,
    },
    /// The rollout engine's canary weights, by Rollout (namespace, name): all of them.
    RolloutWeights(BTreeMap<(String, String), u32>),
}

impl Change {
    /// A [`Change::Replace`] of `kinds` by `objects`.
    pub fn replace(kinds: Vec<Kind>, objects: Vec<Object>) -> Change {
        Change::Replace {
            kinds,
            objects: objects.into_iter().map(StoredObject::from).collect(),
        }
    }
}

/// Every object currently known, by key.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    objects: BTreeMap<ObjectKey, StoredObject>,
    /// Not an object: what the rollout engine decided (see [`Change::RolloutWeights`]).
    rollout_weights: BTreeMap<(String, String), u32>,
}

/// An object as the state stores it: a pod reduced to what the mesh reads, anything else as
/// decoded. Boxed, so a map's spare slots (or a listing's) cost a pointer rather than the
/// largest kind.
#[derive(Clone, Debug, PartialEq)]
pub enum StoredObject {
    Pod(Box<MeshPod>),
    Other(Box<Object>),
}

impl From<Object> for StoredObject {
    fn from(object: Object) -> StoredObject {
        match object {
            Object::Pod(p) => StoredObject::Pod(Box::new(MeshPod::from(p))),
            other => StoredObject::Other(Box::new(other)),
        }
    }
}

impl StoredObject {
    pub fn key(&self) -> ObjectKey {
        match self {
            StoredObject::Pod(p) => ObjectKey {
                kind: Kind::Pod,
                namespace: p.namespace().to_string(),
                name: p.metadata.name.clone().unwrap_or_default(),
            },
            StoredObject::Other(o) => o.key(),
        }
    }
}

impl ClusterState {
    /// Applies a change; returns whether anything actually changed.
    pub fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Apply(o) => {
                let key = o.key();
                let kept = StoredObject::from(o);
                match self.objects.get(&key) {
                    Some(existing) if *existing == kept => false,
                    _ => {
                        self.objects.insert(key, kept);
                        true
                    }
                }
            }
            Change::Delete(key) => self.objects.remove(&key).is_some(),
            Change::Replace { kinds, objects } => {
                // In place: a copy of the whole state per relisted kind doubled the
                // controller's memory while a large cluster was first listed.
                let incoming: BTreeMap<ObjectKey, StoredObject> =
                    objects.into_iter().map(|o| (o.key(), o)).collect();
                let before = self.objects.len();
                self.objects
                    .retain(|k, _| !kinds.contains(&k.kind) || incoming.contains_key(k));
                let mut changed = self.objects.len() != before;
                for (key, kept) in incoming {
                    if self.objects.get(&key) != Some(&kept) {
                        self.objects.insert(key, kept);
                        changed = true;
                    }
                }
                changed
            }
            Change::RolloutWeights(weights) => {
                let changed = weights != self.rollout_weights;
                self.rollout_weights = weights;
                changed
            }
        }
    }

    /// Any object but a pod (pods are kept reduced: [`pod`](Self::pod)).
    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        match self.objects.get(key)? {
            StoredObject::Other(o) => Some(o),
            StoredObject::Pod(_) => None,
        }
    }

    /// The pod `key` names, as the mesh keeps it.
    pub fn pod(&self, key: &ObjectKey) -> Option<&MeshPod> {
        match self.objects.get(key)? {
            StoredObject::Pod(p) => Some(p),
            StoredObject::Other(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Stored objects of one kind, in key order.
    fn kept_of_kind(&self, kind: Kind) -> impl Iterator<Item = &StoredObject> {
        let start = ObjectKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, v)| v)
    }

    /// Objects of one kind, in key order (none for pods: [`pods`](Self::pods)).
    fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.kept_of_kind(kind).filter_map(|k| match k {
            StoredObject::Other(o) => Some(o.as_ref()),
            StoredObject::Pod(_) => None,
        })
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.of_kind(Kind::Namespace).filter_map(|o| match o {
            Object::Namespace(n) => Some(n),
            _ => None,
        })
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        match self.get(&ObjectKey {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: name.to_string(),
        }) {
            Some(Object::Namespace(n)) => Some(n),
            _ => None,
        }
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        match self.get(&ObjectKey {
            kind: Kind::Node,
            namespace: String::new(),
            name: name.to_string(),
        }) {
            Some(Object::Node(n)) => Some(n),
            _ => None,
        }
    }

    pub fn pods(&self) -> impl Iterator<Item = &MeshPod> {
        self.kept_of_kind(Kind::Pod).filter_map(|k| match k {
            StoredObject::Pod(p) => Some(p.as_ref()),
            StoredObject::Other(_) => None,
        })
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.of_kind(Kind::Service).filter_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
    }

    pub fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.of_kind(Kind::EndpointSlice).filter_map(|o| match o {
            Object::EndpointSlice(s) => Some(s),
            _ => None,
        })
    }

    pub fn gateways(&self) -> impl Iterator<Item = &Gateway> {
        self.of_kind(Kind::Gateway).filter_map(|o| match o {
            Object::Gateway(g) => Some(g),
            _ => None,
        })
    }

    pub fn authorization_policies(&self) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.of_kind(Kind::AuthorizationPolicy)
            .filter_map(|o| match o {
                Object::AuthorizationPolicy(p) => Some(p),
                _ => None,
            })
    }

    pub fn request_authentications(&self) -> impl Iterator<Item = &RequestAuthentication> {
        self.of_kind(Kind::RequestAuthentication)
            .filter_map(|o| match o {
                Object::RequestAuthentication(r) => Some(r),
                _ => None,
            })
    }

    pub fn peer_authentications(&self) -> impl Iterator<Item = &PeerAuthentication> {
        self.of_kind(Kind::PeerAuthentication)
            .filter_map(|o| match o {
                Object::PeerAuthentication(p) => Some(p),
                _ => None,
            })
    }

    pub fn http_routes(&self) -> impl Iterator<Item = &HttpRoute> {
        self.of_kind(Kind::HttpRoute).filter_map(|o| match o {
            Object::HttpRoute(r) => Some(r),
            _ => None,
        })
    }

    pub fn tcp_routes(&self) -> impl Iterator<Item = &TcpRoute> {
        self.of_kind(Kind::TcpRoute).filter_map(|o| match o {
            Object::TcpRoute(r) => Some(r),
            _ => None,
        })
    }

    pub fn grpc_routes(&self) -> impl Iterator<Item = &GrpcRoute> {
        self.of_kind(Kind::GrpcRoute).filter_map(|o| match o {
            Object::GrpcRoute(r) => Some(r),
            _ => None,
        })
    }

    pub fn virtual_services(&self) -> impl Iterator<Item = &VirtualService> {
        self.of_kind(Kind::VirtualService).filter_map(|o| match o {
            Object::VirtualService(v) => Some(v),
            _ => None,
        })
    }

    pub fn config_map(&self, namespace: &str, name: &str) -> Option<&ConfigMap> {
        match self.get(&ObjectKey {
            kind: Kind::ConfigMap,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }) {
            Some(Object::ConfigMap(c)) => Some(c),
            _ => None,
        }
    }

    pub fn service_entries(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.of_kind(Kind::ServiceEntry).filter_map(|o| match o {
            Object::ServiceEntry(e) => Some(e),
            _ => None,
        })
    }

    pub fn destination_rules(&self) -> impl Iterator<Item = &DestinationRule> {
        self.of_kind(Kind::DestinationRule).filter_map(|o| match o {
            Object::DestinationRule(d) => Some(d),
            _ => None,
        })
    }

    pub fn rollouts(&self) -> impl Iterator<Item = &Rollout> {
        self.of_kind(Kind::Rollout).filter_map(|o| match o {
            Object::Rollout(r) => Some(r),
            _ => None,
        })
    }

    /// The canary weight the rollout engine decided for each Rollout, by (namespace, name).
    pub fn rollout_weights(&self) -> &BTreeMap<(String, String), u32> {
        &self.rollout_weights
    }

    pub fn local_rate_limit_policies(&self) -> impl Iterator<Item = &LocalRateLimitPolicy> {
        self.of_kind(Kind::LocalRateLimitPolicy)
            .filter_map(|o| match o {
                Object::LocalRateLimitPolicy(p) => Some(p),
                _ => None,
            })
    }
}

/// Implements `kube::Resource` for our own namespaced kinds, so kube-rs can watch them.
macro_rules! namespaced_resource {
    ($ty:ty, $kind:literal, $group:literal, $version:literal, $plural:literal) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = kube::core::NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($group)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($version)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

namespaced_resource!(
    AuthorizationPolicy,
    "AuthorizationPolicy",
    "security.istio.io",
    "v1",
    "authorizationpolicies"
);
namespaced_resource!(
    PeerAuthentication,
    "PeerAuthentication",
    "security.istio.io",
    "v1",
    "peerauthentications"
);
namespaced_resource!(
    RequestAuthentication,
    "RequestAuthentication",
    "security.istio.io",
    "v1",
    "requestauthentications"
);
namespaced_resource!(
    Gateway,
    "Gateway",
    "gateway.networking.k8s.io",
    "v1",
    "gateways"
);
namespaced_resource!(
    HttpRoute,
    "HTTPRoute",
    "gateway.networking.k8s.io",
    "v1",
    "httproutes"
);
namespaced_resource!(
    GrpcRoute,
    "GRPCRoute",
    "gateway.networking.k8s.io",
    "v1",
    "grpcroutes"
);
namespaced_resource!(
    TcpRoute,
    "TCPRoute",
    "gateway.networking.k8s.io",
    "v1alpha2",
    "tcproutes"
);
namespaced_resource!(
    VirtualService,
    "VirtualService",
    "networking.istio.io",
    "v1",
    "virtualservices"
);
namespaced_resource!(
    DestinationRule,
    "DestinationRule",
    "networking.istio.io",
    "v1",
    "destinationrules"
);
namespaced_resource!(
    ServiceEntry,
    "ServiceEntry",
    "networking.istio.io",
    "v1",
    "serviceentries"
);
namespaced_resource!(
    LocalRateLimitPolicy,
    "LocalRateLimitPolicy",
    "policy.ambient-rs.io",
    "v1alpha1",
    "localratelimitpolicies"
);
namespaced_resource!(
    Rollout,
    "Rollout",
    "rollouts.ambient-rs.io",
    "v1alpha1",
    "rollouts"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str, label: &str) -> Object {
        Object::Namespace(Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("l".to_string(), label.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn names(state: &ClusterState) -> Vec<String> {
        state.objects.keys().map(|k| k.name.clone()).collect()
    }

    #[test]
    fn a_pod_edit_the_mesh_does_not_read_changes_nothing() {
        let pod = |image: &str, version: &str, app: &str| -> Object {
            let yaml = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: ns, resourceVersion: '{version}', labels: {{app: {app}}}}}\nspec:\n  containers: [{{name: c, image: {image}}}]\nstatus: {{podIP: 10.0.0.1, containerStatuses: [{{name: c, image: {image}, imageID: x, ready: true, restartCount: {version}}}]}}\n"
            );
            Object::Pod(serde_saphyr::from_str(&yaml).expect("pod"))
        };
        let mut state = ClusterState::default();
        assert!(state.apply(Change::Apply(pod("a:1", "1", "web"))));
        // A new image, a restart, a new resourceVersion: nothing the mesh reads.
        assert!(!state.apply(Change::Apply(pod("a:2", "2", "web"))));
        assert!(state.apply(Change::Apply(pod("a:2", "3", "api"))));
        let key = ObjectKey {
            kind: Kind::Pod,
            namespace: "ns".into(),
            name: "p".into(),
        };
        assert_eq!(
            state
                .pod(&key)
                .and_then(|p| p.metadata.labels.as_ref())
                .map(|l| l["app"].as_str()),
            Some("api")
        );
        assert!(state.get(&key).is_none(), "pods are read reduced");
    }

    #[test]
    fn a_relist_replaces_only_its_kinds_and_says_whether_anything_changed() {
        let mut state = ClusterState::default();
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        assert!(state.apply(Change::Apply(Object::Pod(pod))));
        assert!(state.apply(Change::replace(
            vec![Kind::Namespace],
            vec![namespace("a", "1"), namespace("b", "1")]
        )));
        assert_eq!(names(&state), ["a", "b", "p"]);
        // The same listing again changes nothing.
        let again = || {
            Change::replace(
                vec![Kind::Namespace],
                vec![namespace("b", "1"), namespace("a", "1")],
            )
        };
        assert!(!state.apply(again()));
        // One gone, one new, one edited; the pod, of another kind, stays.
        assert!(state.apply(Change::replace(
            vec![Kind::Namespace],
            vec![namespace("a", "2"), namespace("c", "1")]
        )));
        assert_eq!(names(&state), ["a", "c", "p"]);
        let label = state
            .namespace("a")
            .and_then(|n| n.metadata.labels.as_ref());
        assert_eq!(
            label.and_then(|l| l.get("l")).map(String::as_str),
            Some("2")
        );
        // Only a removal is a change too.
        assert!(state.apply(Change::replace(
            vec![Kind::Namespace],
            vec![namespace("a", "2")]
        )));
        assert_eq!(names(&state), ["a", "p"]);
    }
}
