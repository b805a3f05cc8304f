//! The index: cluster state → what proxies need.
//!
//! [`build`] computes, from a [`ClusterState`], every WDS `Address` (workloads by uid, services
//! by `namespace/hostname`), every L4 `Authorization` (by `namespace/name`), the waypoints'
//! L7 configuration ([`l7`]) and their status, and which identities run on which node (what the CA may grant each ztunnel). It is a pure function;
//! the push loop calls it after each debounced burst of changes and sends only resources
//! whose content changed.

pub mod authorization;
pub mod incremental;
pub mod l7;
pub mod labels;
pub mod mesh;
pub mod peer_auth;
pub mod service;
pub mod service_entry;
pub mod waypoint;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use ambient_proto::ambient::waypoint::v1 as l7proto;
use ambient_proto::identity::Identity;
use ambient_proto::istio::security as sec;
use ambient_proto::istio::workload as wds;
use k8s_openapi::api::core::v1::Service;
use serde::Serialize;

use crate::model::{AuthorizationPolicy, ClusterState, Kind, Object, ObjectKey, ServiceEntry};
use peer_auth::PeerAuthIndex;

/// Settings that shape the index.
#[derive(Clone, Debug)]
pub struct IndexConfig {
    pub cluster_id: String,
    pub trust_domain: String,
    /// `cluster.local`: service hostnames are `<name>.<ns>.svc.<suffix>`.
    pub domain_suffix: String,
    /// Policies here apply mesh-wide.
    pub root_namespace: String,
    pub network: String,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            cluster_id: "Kubernetes".into(),
            trust_domain: ambient_proto::identity::DEFAULT_TRUST_DOMAIN.into(),
            domain_suffix: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            network: String::new(),
        }
    }
}

/// A semantic problem worth telling the user (the object still produced what it could).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Warning {
    pub object: String,
    pub message: String,
}

impl Warning {
    pub fn new(object: &str, message: impl Into<String>) -> Self {
        Warning {
            object: object.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// Everything the index computes.
#[derive(Debug, Default)]
pub struct Index {
    /// WDS resources by xDS name.
    pub addresses: BTreeMap<String, wds::Address>,
    pub authorizations: BTreeMap<String, sec::Authorization>,
    /// Waypoint L7 configuration by xDS name (`service/<ns>/<hostname>`,
    /// `gateway/<ns>/<name>`).
    pub l7: BTreeMap<String, l7proto::L7Resource>,
    /// Identities of enrolled pods (and waypoint instances), by node.
    pub identities_by_node: BTreeMap<String, BTreeSet<Identity>>,
    /// Status of every waypoint Gateway.
    pub gateways: Vec<l7::status::GatewayStatus>,
    /// Status of every LocalRateLimitPolicy.
    pub policies: Vec<l7::ratelimit::PolicyStatus>,
    /// Every Rollout, for the rollout engine.
    pub rollouts: Vec<l7::rollout::RolloutView>,
    /// Mesh-wide settings for ztunnels, from Istio's mesh config.
    pub mesh: ambient_proto::ambient::mesh::v1::MeshSettings,
    /// Every warning, sorted, once each.
    pub warnings: Vec<Warning>,
    /// The warnings each pod's workload raised, by uid, and all the others: what
    /// [`incremental::update_pods`] needs to replace one pod's share of `warnings`.
    pod_warnings: BTreeMap<String, Vec<Warning>>,
    other_warnings: Vec<Warning>,
}

/// (namespace, pod) → (service key, ports) it belongs to.
type Memberships = HashMap<(String, String), Vec<(String, Vec<wds::Port>)>>;

/// Lookups built once per computation.
pub struct Context<'a> {
    pub state: &'a ClusterState,
    pub config: &'a IndexConfig,
    /// (namespace, one selector label) → services whose selector includes it.
    services_by_selector_label: HashMap<(String, String, String), Vec<&'a Service>>,
    /// (namespace, pod) → memberships from EndpointSlices of selector-less services.
    slice_members: Memberships,
    /// namespace → AuthorizationPolicies with a selector.
    selector_policies: HashMap<String, Vec<&'a AuthorizationPolicy>>,
    /// namespace → ServiceEntries with a workloadSelector.
    selector_service_entries: HashMap<String, Vec<&'a ServiceEntry>>,
    /// (namespace, host) → the ServiceEntry declaring it (the oldest, when several do).
    entry_hosts: BTreeMap<(String, String), &'a ServiceEntry>,
    peer_auth: PeerAuthIndex<'a>,
}

pub(crate) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn selector_of(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

impl<'a> Context<'a> {
    pub fn new(state: &'a ClusterState, config: &'a IndexConfig) -> Self {
        let mut services_by_selector_label: HashMap<_, Vec<&Service>> = HashMap::new();
        for svc in state.services() {
            if let Some(sel) = selector_of(svc)
                && let Some((k, v)) = sel.iter().next()
            {
                let ns = service::namespace(svc);
                services_by_selector_label
                    .entry((ns, k.clone(), v.clone()))
                    .or_default()
                    .push(svc);
            }
        }
        let mut selector_policies: HashMap<String, Vec<&AuthorizationPolicy>> = HashMap::new();
        for p in state.authorization_policies() {
            if authorization::has_selector(p) && !authorization::is_waypoint_policy(p) {
                let ns = p
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                selector_policies.entry(ns).or_default().push(p);
            }
        }
        let mut selector_service_entries: HashMap<String, Vec<&ServiceEntry>> = HashMap::new();
        for se in state
            .service_entries()
            .filter(|se| se.spec.workload_selector.is_some())
        {
            let ns = se
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            selector_service_entries.entry(ns).or_default().push(se);
        }
        let mut entry_hosts = BTreeMap::new();
        for se in service_entry::oldest_first(state) {
            for host in service_entry::hosts(se) {
                entry_hosts
                    .entry((service_entry::namespace(se).to_string(), host))
                    .or_insert(se);
            }
        }
        let mut ctx = Context {
            state,
            config,
            services_by_selector_label,
            slice_members: HashMap::new(),
            selector_policies,
            selector_service_entries,
            entry_hosts,
            peer_auth: PeerAuthIndex::new(state.peer_authentications(), &config.root_namespace),
        };
        ctx.slice_members = ctx.memberships_from_slices();
        ctx
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&'a Service> {
        match self.state.get(&ObjectKey {
            kind: Kind::Service,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }) {
            Some(Object::Service(s)) => Some(s),
            _ => None,
        }
    }

    /// Services in `namespace` whose selector matches `labels`.
    pub fn services_selecting(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&'a Service> {
        let mut out: Vec<&Service> = Vec::new();
        for (k, v) in labels {
            if let Some(candidates) =
                self.services_by_selector_label
                    .get(&(namespace.to_string(), k.clone(), v.clone()))
            {
                for svc in candidates {
                    if selector_of(svc).is_some_and(|s| labels::selector_matches(s, labels))
                        && !out.iter().any(|o| std::ptr::eq(*o, *svc))
                    {
                        out.push(svc);
                    }
                }
            }
        }
        out
    }

    fn memberships_from_slices(&self) -> Memberships {
        let mut out: Memberships = HashMap::new();
        for slice in self.state.endpoint_slices() {
            let ns = slice
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let Some(svc) = labels::labels(&slice.metadata)
                .get("kubernetes.io/service-name")
                .and_then(|n| self.service(&ns, n))
            else {
                continue;
            };
            if selector_of(svc).is_some() {
                continue; // pods are matched by the selector instead
            }
            let ports = workload::slice_ports(svc, slice);
            for e in slice.endpoints.iter().flatten() {
                if let Some(r) = &e.target_ref
                    && r.kind.as_deref() == Some("Pod")
                    && let Some(pod) = &r.name
                {
                    out.entry((ns.clone(), pod.clone()))
                        .or_default()
                        .push((service::key(self, svc), ports.clone()));
                }
            }
        }
        out
    }

    /// The ServiceEntry of `namespace` that declares `host` (lowercase, no trailing dot).
    pub fn entry_host(&self, namespace: &str, host: &str) -> Option<&'a ServiceEntry> {
        self.entry_hosts
            .get(&(namespace.to_string(), host.to_string()))
            .copied()
    }

    /// Every (namespace, host) a ServiceEntry declares, with the entry.
    pub fn entry_hosts(&self) -> impl Iterator<Item = (&(String, String), &'a ServiceEntry)> {
        self.entry_hosts.iter().map(|(k, se)| (k, *se))
    }

    /// The namespace of the ServiceEntry declaring `host` that an object in `from` sees: one
    /// of its own namespace, else one exported to it (the first such namespace by name).
    pub fn find_entry_host(&self, host: &str, from: &str) -> Option<String> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.entry_host(from, &host).is_some() {
            return Some(from.to_string());
        }
        self.entry_hosts
            .iter()
            .find(|((_, h), se)| *h == host && service_entry::exported_to(se, from))
            .map(|((ns, _), _)| ns.clone())
    }

    /// ServiceEntries of `namespace` that select pods.
    pub fn selector_service_entries(&self, namespace: &str) -> &[&'a ServiceEntry] {
        self.selector_service_entries
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    pub fn slice_memberships(&self, namespace: &str, pod: &str) -> Vec<(String, Vec<wds::Port>)> {
        self.slice_members
            .get(&(namespace.to_string(), pod.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// `ns/name` of selector policies (in the root namespace or `namespace`) matching `labels`.
    pub fn selector_policies_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<String> {
        let mut out: Vec<String> = [self.config.root_namespace.as_str(), namespace]
            .iter()
            .flat_map(|ns| self.selector_policies.get(*ns).into_iter().flatten())
            .filter(|p| {
                p.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| labels::selector_matches(&s.match_labels, labels))
            })
            .map(|p| {
                authorization::resource_name(
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name.as_deref().unwrap_or_default(),
                )
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn peer_authentication_policies_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<String> {
        self.peer_auth.policies_for(namespace, labels)
    }
}

/// Computes the index of `state`.
pub fn build(state: &ClusterState, config: &IndexConfig) -> Index {
    let ctx = Context::new(state, config);
    let mut index = Index::default();
    let mut warnings = Vec::new();

    for pod in state.pods() {
        let mut raised = Vec::new();
        let workload = workload::from_pod(&ctx, pod, &mut raised);
        if let Some(w) = workload {
            if !raised.is_empty() {
                index.pod_warnings.insert(w.uid.clone(), raised);
            }
            index.addresses.insert(
                w.uid.clone(),
                wds::Address {
                    r#type: Some(wds::address::Type::Workload(w)),
                },
            );
        }
    }
    index.identities_by_node = incremental::identities_by_node(&index.addresses, config, None);
    for slice in state.endpoint_slices() {
        for w in workload::from_slice(&ctx, slice) {
            index.addresses.insert(
                w.uid.clone(),
                wds::Address {
                    r#type: Some(wds::address::Type::Workload(w)),
                },
            );
        }
    }
    for svc in state.services() {
        if let Some(s) = service::build(&ctx, svc, &mut warnings) {
            index.addresses.insert(
                format!("{}/{}", s.namespace, s.hostname),
                wds::Address {
                    r#type: Some(wds::address::Type::Service(s)),
                },
            );
        }
    }
    // ServiceEntries after Services: a Kubernetes Service keeps its hostname.
    let allocations = service_entry::Allocations::new(&ctx, &mut warnings);
    for (key, address) in service_entry::build(&ctx, &allocations, &mut warnings) {
        if let Some(wds::address::Type::Service(_)) = &address.r#type
            && index.addresses.contains_key(&key)
        {
            warnings.push(Warning::new(
                &key,
                "a ServiceEntry host that another Service or ServiceEntry of the namespace \
                 already defines; this one is ignored",
            ));
            continue;
        }
        index.addresses.insert(key, address);
    }
    for pol in state.authorization_policies() {
        if let Some(a) = authorization::convert(pol, &config.root_namespace, &mut warnings) {
            index
                .authorizations
                .insert(authorization::resource_name(&a.namespace, &a.name), a);
        }
    }
    if ctx.peer_auth.any() {
        let s = peer_auth::static_strict(&config.root_namespace);
        index
            .authorizations
            .insert(authorization::resource_name(&s.namespace, &s.name), s);
        for c in ctx.peer_auth.converted() {
            index
                .authorizations
                .insert(authorization::resource_name(&c.namespace, &c.name), c);
        }
    }
    index.mesh = mesh::settings(&ctx, &mut warnings);
    let instances = l7::status::running_instances(&ctx);
    (index.l7, index.policies, index.rollouts) = l7::build(&ctx, &instances, &mut warnings);
    index.gateways = l7::gateway_statuses(&ctx, &instances);
    index.other_warnings = warnings;
    index.gather_warnings();
    index
}

impl Index {
    /// `warnings` from the pods' and the others' (sorted, once each).
    fn gather_warnings(&mut self) {
        let mut all = self.other_warnings.clone();
        all.extend(self.pod_warnings.values().flatten().cloned());
        all.sort();
        all.dedup();
        self.warnings = all;
    }
}

/// The cluster state of the objects of a YAML stream, which must parse without errors (for
/// tests).
#[cfg(test)]
pub(crate) fn state_from_yaml(yaml: &str) -> ClusterState {
    use crate::model::Change;
    use crate::source::{Severity, manifests::parse_file};
    let parsed = parse_file(std::path::Path::new("test.yaml"), yaml, None);
    let errors: Vec<_> = parsed
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let mut state = ClusterState::default();
    state.apply(Change::replace(Kind::ALL.to_vec(), parsed.objects));
    state
}

/// The index of the objects of a YAML stream, which must parse without errors (for tests).
#[cfg(test)]
pub(crate) fn build_from_yaml(yaml: &str) -> Index {
    build(&state_from_yaml(yaml), &IndexConfig::default())
}

#[cfg(test)]
mod tests;
