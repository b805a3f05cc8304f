//! What the control plane said: workloads, services and L4 policies, held as one immutable
//! snapshot that the data path reads without locks.
//!
//! Updates arrive as WDS `Address` and `Authorization` resources from a source (the
//! controller's xDS, or a local file), are converted once into the typed [`Workload`],
//! [`Service`] and [`Policy`], and swap in a new snapshot.

pub mod local;
pub mod source;
mod types;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use ambient_proto::istio::security as sec;
use ambient_proto::istio::workload as wds;
use arc_swap::ArcSwap;
use rand::Rng;
use tokio::sync::watch;

pub use types::{Protocol, Service, ServicePort, Waypoint, WaypointTarget, Workload};

use crate::rbac::{self, Connection, Denial, Policy, Scope};

/// A change to the store: resources to add or replace, and names to remove. Workload names
/// are uids; service names are `namespace/hostname`; policy names `namespace/name` (as xDS
/// keys them).
#[derive(Debug, Default)]
pub struct Update {
    pub upserts: Vec<wds::Address>,
    pub removes: Vec<String>,
    pub policy_upserts: Vec<sec::Authorization>,
    pub policy_removes: Vec<String>,
    /// Replace all workloads and services (the file source sends whole snapshots).
    pub replace_all: bool,
}

/// A resource the store could not use: its name and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub name: String,
    pub reason: String,
}

/// One immutable view of the mesh.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    workloads: HashMap<String, Arc<Workload>>,
    services: HashMap<String, Arc<Service>>,
    policies: HashMap<String, Arc<Policy>>,
    global_policies: Vec<Arc<Policy>>,
    namespace_policies: HashMap<String, Vec<Arc<Policy>>>,
    workload_by_ip: HashMap<IpAddr, Arc<Workload>>,
    service_by_vip: HashMap<IpAddr, Arc<Service>>,
    /// Lowercased hostname → the services with it (one per namespace that defines it).
    service_by_hostname: HashMap<String, Vec<Arc<Service>>>,
    /// Service key → its endpoints.
    endpoints: HashMap<String, Vec<Arc<Workload>>>,
}

/// Where an outbound connection goes.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The endpoint address (`ip:target_port`) the app's bytes must reach. For an endpoint
    /// known by name ([`Upstream::hostname`]) only its port counts.
    pub addr: SocketAddr,
    /// The endpoint's name when it has no address (a DNS-resolved ServiceEntry endpoint): the
    /// proxy resolves it and connects to `addr`'s port there.
    pub hostname: Option<String>,
    pub workload: Arc<Workload>,
    /// The service the app dialed, when it dialed a VIP.
    pub service: Option<Arc<Service>>,
    /// Set when the connection must go through a waypoint: that waypoint instance's HBONE
    /// address. `workload` is then the waypoint instance and `addr` the original destination
    /// (the waypoint routes on it).
    pub waypoint: Option<SocketAddr>,
}

/// Why an outbound destination could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("service {service} has no port {port}")]
    NoServicePort { service: String, port: u16 },
    #[error("service {0} has no healthy endpoints")]
    NoEndpoints(String),
    /// Traffic that must go through a waypoint never bypasses it: policies live there.
    #[error("waypoint {0} has no ready instance")]
    NoWaypoint(String),
}

impl Snapshot {
    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_by_ip.get(&ip)
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.service_by_vip.get(&ip)
    }

    /// The services whose hostname is `hostname` (which must be lowercase, without a
    /// trailing dot), in namespace order.
    pub fn services_by_hostname(&self, hostname: &str) -> &[Arc<Service>] {
        self.service_by_hostname
            .get(hostname)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// A pod's workload, by WDS uid or (as Istio's node agent sends a Kubernetes pod UID
    /// instead) by namespace and name.
    pub fn find_pod(&self, uid: &str, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid).or_else(|| {
            self.workloads
                .values()
                .find(|w| w.namespace == namespace && w.name == name)
        })
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    /// Judges a connection to `dst` against the policies that apply to it: mesh-wide ones,
    /// its namespace's, and those it lists.
    pub fn authorize(&self, dst: &Workload, conn: &Connection<'_>) -> Result<(), Denial> {
        let listed = dst
            .authorization_policies
            .iter()
            .filter_map(|name| self.policies.get(name));
        let applicable = self
            .global_policies
            .iter()
            .chain(
                self.namespace_policies
                    .get(&dst.namespace)
                    .into_iter()
                    .flatten(),
            )
            .chain(listed)
            .map(|p| p.as_ref());
        rbac::authorize(applicable, conn)
    }

    pub fn endpoints(&self, service: &Service) -> &[Arc<Workload>] {
        self.endpoints
            .get(&service.key())
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Resolves an outbound destination of a client in `client_namespace`: a service VIP
    /// (of a service visible there) picks one healthy endpoint at random; a workload address
    /// is that workload; anything else is outside the mesh (`Ok(None)`), as is a passthrough
    /// service's VIP when it has no endpoint.
    pub fn resolve(
        &self,
        dst: SocketAddr,
        client_namespace: &str,
    ) -> Result<Option<Upstream>, ResolveError> {
        if let Some(service) = self
            .service_by_vip
            .get(&dst.ip())
            .filter(|s| s.visible_to(client_namespace))
        {
            let port = service
                .ports
                .iter()
                .find(|p| p.service_port == dst.port())
                .ok_or_else(|| ResolveError::NoServicePort {
                    service: service.key(),
                    port: dst.port(),
                })?;
            let candidates: Vec<&Arc<Workload>> = self
                .endpoints(service)
                .iter()
                .filter(|w| w.healthy && (!w.addresses.is_empty() || w.hostname.is_some()))
                .collect();
            if let Some(waypoint) = &service.waypoint {
                return self
                    .via_waypoint(waypoint, dst, Some(service.clone()))
                    .map(Some);
            }
            if candidates.is_empty() {
                if service.passthrough {
                    return Ok(None);
                }
                return Err(ResolveError::NoEndpoints(service.key()));
            }
            let pick = candidates[rand::rng().random_range(0..candidates.len())];
            let target_port = pick.target_port(&service.key(), port);
            let ip = pick
                .addresses
                .first()
                .copied()
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            return Ok(Some(Upstream {
                addr: SocketAddr::new(ip, target_port),
                hostname: pick.hostname.clone(),
                workload: pick.clone(),
                service: Some(service.clone()),
                waypoint: None,
            }));
        }
        match self.workload_by_ip.get(&dst.ip()) {
            Some(w) => match &w.waypoint {
                Some(waypoint) => self.via_waypoint(waypoint, dst, None).map(Some),
                None => Ok(Some(Upstream {
                    addr: dst,
                    hostname: None,
                    workload: w.clone(),
                    service: None,
                    waypoint: None,
                })),
            },
            None => Ok(None),
        }
    }

    /// One ready instance of `waypoint`, carrying traffic for `dst`.
    fn via_waypoint(
        &self,
        waypoint: &Waypoint,
        dst: SocketAddr,
        service: Option<Arc<Service>>,
    ) -> Result<Upstream, ResolveError> {
        let (instances, name): (Vec<&Arc<Workload>>, String) = match &waypoint.target {
            WaypointTarget::Address(ip) => match self.service_by_vip.get(ip) {
                Some(svc) => (self.endpoints(svc).iter().collect(), svc.key()),
                None => (
                    self.workload_by_ip.get(ip).into_iter().collect(),
                    ip.to_string(),
                ),
            },
            WaypointTarget::Hostname {
                namespace,
                hostname,
            } => {
                let host = hostname.trim_end_matches('.').to_ascii_lowercase();
                let svc = self
                    .services_by_hostname(&host)
                    .iter()
                    .find(|s| &s.namespace == namespace);
                (
                    svc.map(|s| self.endpoints(s).iter().collect())
                        .unwrap_or_default(),
                    format!("{namespace}/{host}"),
                )
            }
        };
        let ready: Vec<&Arc<Workload>> = instances
            .into_iter()
            .filter(|w| w.healthy && !w.addresses.is_empty())
            .collect();
        if ready.is_empty() {
            return Err(ResolveError::NoWaypoint(name));
        }
        let pick = ready[rand::rng().random_range(0..ready.len())];
        Ok(Upstream {
            addr: dst,
            hostname: None,
            workload: pick.clone(),
            service,
            waypoint: Some(SocketAddr::new(pick.addresses[0], waypoint.port)),
        })
    }

    fn apply(&mut self, update: Update) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        if update.replace_all {
            self.workloads.clear();
            self.services.clear();
        }
        for name in &update.removes {
            self.workloads.remove(name);
            self.services.remove(name);
        }
        for address in update.upserts {
            match address.r#type {
                Some(wds::address::Type::Workload(w)) => {
                    let name = w.uid.clone();
                    match Workload::try_from(w) {
                        Ok(w) => {
                            self.workloads.insert(w.uid.clone(), Arc::new(w));
                        }
                        Err(reason) => rejected.push(Rejected { name, reason }),
                    }
                }
                Some(wds::address::Type::Service(s)) => {
                    let name = format!("{}/{}", s.namespace, s.hostname);
                    match Service::try_from(s) {
                        Ok(s) => {
                            self.services.insert(s.key(), Arc::new(s));
                        }
                        Err(reason) => rejected.push(Rejected { name, reason }),
                    }
                }
                None => rejected.push(Rejected {
                    name: String::new(),
                    reason: "Address with neither workload nor service".into(),
                }),
            }
        }
        let policies_changed =
            !update.policy_upserts.is_empty() || !update.policy_removes.is_empty();
        for name in &update.policy_removes {
            self.policies.remove(name);
        }
        for a in &update.policy_upserts {
            match Policy::try_from(a) {
                Ok(p) => {
                    self.policies.insert(p.key(), Arc::new(p));
                }
                Err(reason) => rejected.push(Rejected {
                    name: format!("{}/{}", a.namespace, a.name),
                    reason,
                }),
            }
        }
        if policies_changed {
            self.reindex_policies();
        }
        self.reindex();
        rejected
    }

    fn reindex_policies(&mut self) {
        self.global_policies = self
            .policies
            .values()
            .filter(|p| p.scope == Scope::Global)
            .cloned()
            .collect();
        let mut by_ns: HashMap<String, Vec<Arc<Policy>>> = HashMap::new();
        for p in self
            .policies
            .values()
            .filter(|p| p.scope == Scope::Namespace)
        {
            by_ns
                .entry(p.namespace.clone())
                .or_default()
                .push(p.clone());
        }
        self.namespace_policies = by_ns;
    }

    fn reindex(&mut self) {
        // A host-network pod's address is its node's: a connection from or to it cannot be
        // told from the node's or another such pod's, so it stays unattributed (as Istio's
        // ztunnel does) rather than named after an arbitrary pod. Services still reach it
        // through their endpoints.
        self.workload_by_ip = self
            .workloads
            .values()
            .filter(|w| !w.host_network)
            .flat_map(|w| w.addresses.iter().map(move |ip| (*ip, w.clone())))
            .collect();
        self.service_by_vip = self
            .services
            .values()
            .flat_map(|s| s.vips.iter().map(move |ip| (*ip, s.clone())))
            .collect();
        let mut by_hostname: HashMap<String, Vec<Arc<Service>>> = HashMap::new();
        for s in self.services.values() {
            let name = s.hostname.trim_end_matches('.').to_ascii_lowercase();
            by_hostname.entry(name).or_default().push(s.clone());
        }
        for list in by_hostname.values_mut() {
            list.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        }
        self.service_by_hostname = by_hostname;
        let mut endpoints: HashMap<String, Vec<Arc<Workload>>> = HashMap::new();
        for w in self.workloads.values() {
            for key in w.services.keys() {
                endpoints.entry(key.clone()).or_default().push(w.clone());
            }
        }
        for list in endpoints.values_mut() {
            list.sort_by(|a, b| a.uid.cmp(&b.uid));
        }
        self.endpoints = endpoints;
    }
}

/// The store: readers load the current snapshot lock-free; writers serialize.
#[derive(Debug)]
pub struct StateStore {
    current: ArcSwap<Snapshot>,
    writer: Mutex<()>,
    version: watch::Sender<u64>,
}

impl Default for StateStore {
    fn default() -> Self {
        StateStore {
            current: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(()),
            version: watch::channel(0).0,
        }
    }
}

impl StateStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Applies an update; returns the resources it could not use, and why.
    pub fn apply(&self, update: Update) -> Vec<Rejected> {
        let _guard = self.writer.lock().expect("poisoned");
        let mut next = (**self.current.load()).clone();
        let rejected = next.apply(update);
        self.current.store(Arc::new(next));
        self.version.send_modify(|v| *v += 1);
        rejected
    }

    /// Whether any configuration has been applied yet.
    pub fn loaded(&self) -> bool {
        *self.version.borrow() > 0
    }

    /// Ticks on every applied update (the first value is 0: nothing loaded yet).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::local::LocalConfig;

    fn store_from(yaml: &str) -> StateStore {
        let store = StateStore::new();
        let rejected = store.apply(Update {
            upserts: LocalConfig::parse(yaml).unwrap().to_addresses(),
            replace_all: true,
            ..Default::default()
        });
        assert!(rejected.is_empty(), "{rejected:?}");
        store
    }

    const MESH: &str = r#"
workloads:
  - name: a
    namespace: default
    addresses: [10.244.1.2]
    tunnelProtocol: HBONE
    services: {"default/echo.default.svc.cluster.local": []}
  - name: b
    namespace: default
    addresses: [10.244.2.2]
    tunnelProtocol: HBONE
    services: {"default/echo.default.svc.cluster.local": [{servicePort: 80, targetPort: 9090}]}
  - name: sick
    namespace: default
    addresses: [10.244.2.3]
    status: UNHEALTHY
    services: {"default/echo.default.svc.cluster.local": []}
services:
  - name: echo
    namespace: default
    hostname: echo.default.svc.cluster.local
    addresses: [10.96.0.10]
    ports: [{servicePort: 80, targetPort: 8080}]
"#;

    #[test]
    fn resolves_vips_over_healthy_endpoints() {
        let store = store_from(MESH);
        let snap = store.load();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let up = snap
                .resolve("10.96.0.10:80".parse().unwrap(), "default")
                .unwrap()
                .unwrap();
            seen.insert(up.addr.to_string());
            assert_eq!(up.service.as_ref().unwrap().name, "echo");
        }
        // The service's target port, and b's per-workload override; never the sick one.
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec!["10.244.1.2:8080", "10.244.2.2:9090"]
        );
    }

    /// What ServiceEntries become: a DNS-resolved endpoint known by name, a `resolution:
    /// NONE` service (passthrough), and one exported only to its own namespace.
    const EDGES: &str = r#"
workloads:
  - name: api
    namespace: default
    uid: Kubernetes/networking.istio.io/ServiceEntry/default/api/api.example.com
    hostname: api.example.com.
    services: {"default/api.example.com": [{servicePort: 443, targetPort: 8443}]}
services:
  - name: api
    namespace: default
    hostname: api.example.com
    addresses: [240.240.0.7]
    ports: [{servicePort: 443}]
  - name: db
    namespace: default
    hostname: db.example.com
    addresses: [192.0.2.10]
    ports: [{servicePort: 5432}]
    passthrough: true
  - name: dark
    namespace: data
    hostname: dark.example.com
    addresses: [240.240.0.9]
    ports: [{servicePort: 80}]
    namespaceOnly: true
"#;

    #[test]
    fn service_entry_shapes_resolve() {
        let snap = store_from(EDGES).load();
        // A named endpoint: its name to resolve and the port to reach there.
        let up = snap
            .resolve("240.240.0.7:443".parse().unwrap(), "default")
            .unwrap()
            .unwrap();
        assert_eq!(up.hostname.as_deref(), Some("api.example.com"));
        assert_eq!(up.addr.port(), 8443);
        assert_eq!(up.service.unwrap().hostname, "api.example.com");
        // Passthrough: no endpoint, so on to the address dialed.
        assert!(
            snap.resolve("192.0.2.10:5432".parse().unwrap(), "default")
                .unwrap()
                .is_none()
        );
        // A namespace-only service exists in its namespace only.
        let mine = snap.resolve("240.240.0.9:80".parse().unwrap(), "data");
        assert_eq!(
            mine.unwrap_err(),
            ResolveError::NoEndpoints("data/dark.example.com".into())
        );
        assert!(
            snap.resolve("240.240.0.9:80".parse().unwrap(), "default")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_named_endpoint_is_never_hbone_nor_also_addressed() {
        let store = StateStore::new();
        let mut both = LocalConfig::parse(EDGES).unwrap();
        both.workloads[0].addresses = vec!["10.0.0.1".parse().unwrap()];
        let mut hbone = LocalConfig::parse(EDGES).unwrap();
        hbone.workloads[0].tunnel_protocol = local::LocalTunnel::Hbone;
        for (config, why) in [(both, "both addresses"), (hbone, "tunnel protocol HBONE")] {
            let rejected = store.apply(Update {
                upserts: config.to_addresses(),
                replace_all: true,
                ..Default::default()
            });
            assert_eq!(rejected.len(), 1, "{rejected:?}");
            assert!(rejected[0].reason.contains(why), "{rejected:?}");
        }
    }

    #[test]
    fn resolves_workloads_and_outside_addresses() {
        let snap = store_from(MESH).load();
        let up = snap
            .resolve("10.244.2.2:1234".parse().unwrap(), "default")
            .unwrap()
            .unwrap();
        assert_eq!(up.workload.name, "b");
        assert_eq!(up.addr.port(), 1234);
        assert!(
            snap.resolve("192.0.2.1:80".parse().unwrap(), "default")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            snap.resolve("10.96.0.10:81".parse().unwrap(), "default")
                .unwrap_err(),
            ResolveError::NoServicePort {
                service: "default/echo.default.svc.cluster.local".into(),
                port: 81
            }
        );
    }

    #[test]
    fn waypoint_traffic_never_bypasses_the_waypoint() {
        const WAYPOINT: &str = r#"
workloads:
  - name: wp
    namespace: default
    addresses: [10.244.3.9]
    tunnelProtocol: HBONE
    services: {"default/wp.default.svc.cluster.local": []}
services:
  - name: wp
    namespace: default
    hostname: wp.default.svc.cluster.local
    addresses: [10.96.0.20]
    ports: [{servicePort: 15008, targetPort: 15008}]
"#;
        let mut addresses = LocalConfig::parse(MESH).unwrap().to_addresses();
        addresses.extend(LocalConfig::parse(WAYPOINT).unwrap().to_addresses());
        for a in &mut addresses {
            if let Some(wds::address::Type::Service(s)) = &mut a.r#type
                && s.name == "echo"
            {
                s.waypoint = Some(wds::GatewayAddress {
                    destination: Some(wds::gateway_address::Destination::Hostname(
                        wds::NamespacedHostname {
                            namespace: "default".into(),
                            hostname: "wp.default.svc.cluster.local".into(),
                        },
                    )),
                    hbone_mtls_port: 15008,
                });
            }
        }
        let store = StateStore::new();
        assert!(
            store
                .apply(Update {
                    upserts: addresses,
                    replace_all: true,
                    ..Default::default()
                })
                .is_empty()
        );
        let up = store
            .load()
            .resolve("10.96.0.10:80".parse().unwrap(), "default")
            .unwrap()
            .unwrap();
        assert_eq!(up.workload.name, "wp");
        assert_eq!(
            up.addr,
            "10.96.0.10:80".parse().unwrap(),
            "authority is the VIP"
        );
        assert_eq!(up.waypoint, Some("10.244.3.9:15008".parse().unwrap()));
        // A pod address of the same service is not service traffic: straight to it.
        let direct = store
            .load()
            .resolve("10.244.1.2:8080".parse().unwrap(), "default")
            .unwrap()
            .unwrap();
        assert_eq!(
            (direct.workload.name.as_str(), direct.waypoint),
            ("a", None)
        );
        // No waypoint instance: refused, never sent around the waypoint.
        let wp_uid = store
            .load()
            .workloads()
            .find(|w| w.name == "wp")
            .unwrap()
            .uid
            .clone();
        store.apply(Update {
            removes: vec![wp_uid],
            ..Default::default()
        });
        assert_eq!(
            store
                .load()
                .resolve("10.96.0.10:80".parse().unwrap(), "default")
                .unwrap_err(),
            ResolveError::NoWaypoint("default/wp.default.svc.cluster.local".into())
        );
    }

    #[test]
    fn host_network_pods_are_reached_by_service_but_never_looked_up_by_address() {
        let mut upserts = LocalConfig::parse(MESH).unwrap().to_addresses();
        for a in &mut upserts {
            if let Some(wds::address::Type::Workload(w)) = a.r#type.as_mut()
                && w.name == "b"
            {
                w.network_mode = wds::NetworkMode::HostNetwork as i32;
            }
        }
        let store = StateStore::new();
        let rejected = store.apply(Update {
            upserts,
            replace_all: true,
            ..Default::default()
        });
        assert!(rejected.is_empty(), "{rejected:?}");
        let snap = store.load();
        // Its address is its node's: connections from it stay unattributed.
        assert!(snap.workload_by_ip("10.244.2.2".parse().unwrap()).is_none());
        assert!(snap.workload_by_ip("10.244.1.2".parse().unwrap()).is_some());
        assert!(snap.workload_by_uid("Kubernetes//Pod/default/b").is_some());
        // The service still sends to it.
        let reached: std::collections::BTreeSet<String> = (0..200)
            .map(|_| {
                let up = snap
                    .resolve("10.96.0.10:80".parse().unwrap(), "default")
                    .unwrap();
                up.unwrap().addr.to_string()
            })
            .collect();
        assert!(reached.contains("10.244.2.2:9090"), "{reached:?}");
    }

    #[test]
    fn removes_and_reindexes() {
        let store = store_from(MESH);
        let mut version = store.subscribe();
        store.apply(Update {
            removes: vec![
                "Kubernetes//Pod/default/a".into(),
                "Kubernetes//Pod/default/b".into(),
            ],
            ..Default::default()
        });
        assert!(version.has_changed().unwrap());
        version.mark_unchanged();
        let snap = store.load();
        assert!(snap.workload_by_ip("10.244.1.2".parse().unwrap()).is_none());
        assert_eq!(
            snap.resolve("10.96.0.10:80".parse().unwrap(), "default")
                .unwrap_err(),
            ResolveError::NoEndpoints("default/echo.default.svc.cluster.local".into())
        );
    }

    #[test]
    fn bad_resources_are_reported_and_skipped() {
        let store = StateStore::new();
        let bad = wds::Address {
            r#type: Some(wds::address::Type::Workload(wds::Workload {
                uid: "x".into(),
                name: "x".into(),
                namespace: "default".into(),
                addresses: vec![vec![1, 2, 3]],
                ..Default::default()
            })),
        };
        let rejected = store.apply(Update {
            upserts: vec![bad],
            ..Default::default()
        });
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].name, "x");
        assert!(rejected[0].reason.contains("3-byte"), "{rejected:?}");
        assert_eq!(store.load().workloads().count(), 0);
    }
}
