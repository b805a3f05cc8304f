//! The typed forms of WDS resources that the data path uses.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ambient_proto::identity::{DEFAULT_TRUST_DOMAIN, Identity};
use ambient_proto::istio::workload as wds;
use serde::Serialize;

/// How traffic reaches a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// Plain TCP: the destination is not in the mesh's data plane.
    #[serde(rename = "TCP")]
    Tcp,
    /// HBONE to the destination's port 15008.
    #[serde(rename = "HBONE")]
    Hbone,
}

/// A port of a service: clients dial `service_port`; endpoints listen on `target_port`
/// (0 means the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub service_port: u16,
    pub target_port: u16,
}

/// Where a waypoint is reached: the controller names it by its Service's hostname or gives an
/// address (a waypoint Service VIP or one waypoint pod).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum WaypointTarget {
    Hostname { namespace: String, hostname: String },
    Address(IpAddr),
}

/// The waypoint a workload's or service's traffic must go through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Waypoint {
    pub target: WaypointTarget,
    /// Its HBONE port (15008).
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<IpAddr>,
    /// An endpoint known by name, not address (a `resolution: DNS` ServiceEntry's): resolved
    /// by the proxy when a connection picks it.
    pub hostname: Option<String>,
    pub protocol: Protocol,
    pub identity: Identity,
    pub node: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_name: String,
    pub cluster_id: String,
    /// Region and zone of its node (`topology.kubernetes.io/region|zone`), empty if unknown.
    pub region: String,
    pub zone: String,
    pub healthy: bool,
    /// Services this workload backs (key `namespace/hostname`) and per-workload port overrides.
    pub services: BTreeMap<String, Vec<ServicePort>>,
    /// Selector-based policies (`namespace/name`) that apply to it.
    pub authorization_policies: Vec<String>,
    /// Traffic addressed to this workload goes through this waypoint.
    pub waypoint: Option<Waypoint>,
    /// A host-network pod: its address is its node's, shared with every other such pod
    /// there, so it is never looked up by address (see `StateStore`'s index).
    pub host_network: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Traffic addressed to this service goes through this waypoint.
    pub waypoint: Option<Waypoint>,
    /// With no endpoint to pick, a connection goes on to the address the app dialed (a
    /// ServiceEntry with `resolution: NONE`) instead of failing.
    pub passthrough: bool,
    /// Only clients in the service's namespace see it (a ServiceEntry exported to `.`).
    pub namespace_only: bool,
}

impl Service {
    /// The WDS resource name: `namespace/hostname`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    /// Whether a client in `namespace` may resolve and reach this service.
    pub fn visible_to(&self, namespace: &str) -> bool {
        !self.namespace_only || self.namespace == namespace
    }
}

impl Workload {
    /// The port this workload serves `port` of service `key` on.
    pub fn target_port(&self, key: &str, port: &ServicePort) -> u16 {
        let own = self
            .services
            .get(key)
            .and_then(|ports| ports.iter().find(|p| p.service_port == port.service_port))
            .map(|p| p.target_port)
            .filter(|p| *p != 0);
        own.or(Some(port.target_port).filter(|p| *p != 0))
            .unwrap_or(port.service_port)
    }

    /// The name metrics use: the canonical service name, else the workload name, else the pod.
    pub fn telemetry_name(&self) -> &str {
        if !self.workload_name.is_empty() {
            &self.workload_name
        } else {
            &self.name
        }
    }
}

fn ip_from_bytes(b: &[u8]) -> Result<IpAddr, String> {
    match b.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(b).expect("len 4"),
        ))),
        16 => Ok(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(b).expect("len 16"),
        ))),
        n => Err(format!("{n}-byte address is neither IPv4 nor IPv6")),
    }
}

fn port(p: &wds::Port) -> Result<ServicePort, String> {
    let convert = |v: u32| u16::try_from(v).map_err(|_| format!("port {v} out of range"));
    Ok(ServicePort {
        service_port: convert(p.service_port)?,
        target_port: convert(p.target_port)?,
    })
}

fn waypoint(g: Option<&wds::GatewayAddress>) -> Result<Option<Waypoint>, String> {
    let Some(g) = g else { return Ok(None) };
    let target = match &g.destination {
        Some(wds::gateway_address::Destination::Hostname(h)) => WaypointTarget::Hostname {
            namespace: h.namespace.clone(),
            hostname: h.hostname.clone(),
        },
        Some(wds::gateway_address::Destination::Address(a)) => {
            WaypointTarget::Address(ip_from_bytes(&a.address)?)
        }
        None => return Err("waypoint without a destination".into()),
    };
    let port = match g.hbone_mtls_port {
        0 => 15008,
        p => u16::try_from(p).map_err(|_| format!("waypoint port {p} out of range"))?,
    };
    Ok(Some(Waypoint { target, port }))
}

impl TryFrom<wds::Workload> for Workload {
    type Error = String;

    fn try_from(w: wds::Workload) -> Result<Self, String> {
        let ctx = |e: String| format!("workload {}: {e}", w.uid);
        if w.uid.is_empty() {
            return Err(format!("workload {}/{} has no uid", w.namespace, w.name));
        }
        let addresses = w
            .addresses
            .iter()
            .map(|a| ip_from_bytes(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ctx)?;
        let td = if w.trust_domain.is_empty() {
            DEFAULT_TRUST_DOMAIN
        } else {
            &w.trust_domain
        };
        let sa = if w.service_account.is_empty() {
            "default"
        } else {
            &w.service_account
        };
        let hostname = match w.hostname.trim_end_matches('.') {
            "" => None,
            h if !addresses.is_empty() => {
                return Err(ctx(format!("has both addresses and hostname {h:?}")));
            }
            // Named endpoints are outside the mesh's data plane: reached directly.
            h if w.tunnel_protocol == wds::TunnelProtocol::Hbone as i32 => {
                return Err(ctx(format!("hostname {h:?} with tunnel protocol HBONE")));
            }
            h => Some(h.to_ascii_lowercase()),
        };
        let identity = Identity::new(td, &w.namespace, sa).map_err(|e| ctx(e.to_string()))?;
        let services = w
            .services
            .iter()
            .map(|(k, v)| {
                v.ports
                    .iter()
                    .map(port)
                    .collect::<Result<Vec<_>, _>>()
                    .map(|ports| (k.clone(), ports))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(ctx)?;
        let waypoint = waypoint(w.waypoint.as_ref()).map_err(ctx)?;
        Ok(Workload {
            waypoint,
            host_network: w.network_mode == wds::NetworkMode::HostNetwork as i32,
            protocol: if w.tunnel_protocol == wds::TunnelProtocol::Hbone as i32 {
                Protocol::Hbone
            } else {
                Protocol::Tcp
            },
            healthy: w.status == wds::WorkloadStatus::Healthy as i32,
            uid: w.uid,
            name: w.name,
            namespace: w.namespace,
            addresses,
            hostname,
            identity,
            node: w.node,
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_name: w.workload_name,
            cluster_id: w.cluster_id,
            region: w
                .locality
                .as_ref()
                .map(|l| l.region.clone())
                .unwrap_or_default(),
            zone: w.locality.map(|l| l.zone).unwrap_or_default(),
            services,
            authorization_policies: w.authorization_policies,
        })
    }
}

impl TryFrom<wds::Service> for Service {
    type Error = String;

    fn try_from(s: wds::Service) -> Result<Self, String> {
        let ctx = |e: String| format!("service {}/{}: {e}", s.namespace, s.hostname);
        if s.hostname.is_empty() {
            return Err(format!(
                "service {}/{} has no hostname",
                s.namespace, s.name
            ));
        }
        let vips = s
            .addresses
            .iter()
            .map(|a| ip_from_bytes(&a.address))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ctx)?;
        let ports = s
            .ports
            .iter()
            .map(port)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ctx)?;
        let waypoint = waypoint(s.waypoint.as_ref()).map_err(ctx)?;
        let passthrough = s
            .load_balancing
            .as_ref()
            .is_some_and(|lb| lb.mode == wds::load_balancing::Mode::Passthrough as i32);
        Ok(Service {
            waypoint,
            passthrough,
            namespace_only: s.visibility == wds::service::Visibility::Namespace as i32,
            name: s.name,
            namespace: s.namespace,
            hostname: s.hostname,
            vips,
            ports,
        })
    }
}
