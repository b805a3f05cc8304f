//! Pods (and pod-less EndpointSlice endpoints) → WDS `Workload`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambient_proto::identity::DEFAULT_TRUST_DOMAIN;
use ambient_proto::istio::workload as wds;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::MeshPod;

use super::labels::{self, canonical_name, canonical_revision, enrolled, workload_name};
use super::waypoint::{self, Traffic};
use super::{Context, Warning, service};

/// Label EndpointSlices carry to name their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `<cluster>//Pod/<namespace>/<name>`.
pub fn pod_uid(cluster_id: &str, namespace: &str, name: &str) -> String {
    format!("{cluster_id}//Pod/{namespace}/{name}")
}

/// The pod's addresses, if it has any that parse.
pub fn pod_ips(pod: &MeshPod) -> Vec<IpAddr> {
    pod.ips.iter().filter_map(|s| s.parse().ok()).collect()
}

fn terminal(pod: &MeshPod) -> bool {
    matches!(pod.phase.as_deref(), Some("Succeeded" | "Failed"))
}

fn ready(pod: &MeshPod) -> bool {
    // A manifest without status (the local runtime) describes a running pod.
    pod.metadata.deletion_timestamp.is_none() && pod.ready.unwrap_or(true)
}

/// Ports of `svc` on `pod`: the service port, and the target port resolved against the pod's
/// container ports when it is a name (omitted when the name is not found).
fn ports_on_pod(svc: &Service, pod: &MeshPod) -> Vec<wds::Port> {
    let named_port = |name: &str| {
        pod.container_ports
            .iter()
            .find(|p| p.is_tcp() && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    };
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let target = match &p.target_port {
                Some(IntOrString::Int(n)) => *n,
                Some(IntOrString::String(name)) => named_port(name)?,
                None => p.port,
            };
            Some(wds::Port {
                service_port: p.port as u32,
                target_port: target as u32,
            })
        })
        .collect()
}

/// A pod's workload; `None` for pods that cannot receive traffic (terminal, no address).
pub fn from_pod(
    ctx: &Context<'_>,
    pod: &MeshPod,
    warnings: &mut Vec<Warning>,
) -> Option<wds::Workload> {
    if terminal(pod) {
        return None;
    }
    let ips = pod_ips(pod);
    if ips.is_empty() {
        return None;
    }
    let name = pod.metadata.name.clone()?;
    let namespace = pod.namespace().to_string();
    let host_network = pod.host_network;
    let ns_object = ctx.state.namespace(&namespace);
    // A waypoint instance terminates HBONE itself, enrolled or not.
    let in_mesh = waypoint::is_instance(ctx, &pod.metadata)
        || (!host_network && enrolled(&pod.metadata, ns_object));
    let workload = workload_name(&pod.metadata);
    let pod_labels = labels::labels(&pod.metadata);

    let mut services: BTreeMap<String, wds::PortList> = BTreeMap::new();
    for svc in ctx.services_selecting(&namespace, pod_labels) {
        services.insert(
            service::key(ctx, svc),
            wds::PortList {
                ports: ports_on_pod(svc, pod),
            },
        );
    }
    for (svc_key, ports) in ctx.slice_memberships(&namespace, &name) {
        services.entry(svc_key).or_insert(wds::PortList { ports });
    }
    for (svc_key, ports) in super::service_entry::memberships(ctx, &namespace, pod_labels) {
        services.entry(svc_key).or_insert(wds::PortList { ports });
    }

    let uid = pod_uid(&ctx.config.cluster_id, &namespace, &name);
    let mut authorization_policies = ctx.selector_policies_for(&namespace, pod_labels);
    authorization_policies.extend(ctx.peer_authentication_policies_for(&namespace, pod_labels));
    Some(wds::Workload {
        uid,
        name,
        namespace: namespace.clone(),
        addresses: ips.into_iter().map(super::ip_bytes).collect(),
        tunnel_protocol: if in_mesh {
            wds::TunnelProtocol::Hbone
        } else {
            wds::TunnelProtocol::None
        } as i32,
        trust_domain: if ctx.config.trust_domain == DEFAULT_TRUST_DOMAIN {
            String::new()
        } else {
            ctx.config.trust_domain.clone()
        },
        service_account: pod.service_account(),
        waypoint: waypoint::resolve(ctx, &pod.metadata, &namespace, Traffic::Workload, warnings),
        node: pod.node_name.clone().unwrap_or_default(),
        canonical_name: canonical_name(&pod.metadata, &workload),
        canonical_revision: canonical_revision(&pod.metadata),
        workload_type: wds::WorkloadType::Pod as i32,
        workload_name: workload,
        services,
        authorization_policies,
        status: if ready(pod) {
            wds::WorkloadStatus::Healthy
        } else {
            wds::WorkloadStatus::Unhealthy
        } as i32,
        cluster_id: ctx.config.cluster_id.clone(),
        locality: pod
            .node_name
            .as_deref()
            .and_then(|node| locality(ctx, node)),
        network_mode: if host_network {
            wds::NetworkMode::HostNetwork
        } else {
            wds::NetworkMode::Standard
        } as i32,
        ..Default::default()
    })
}

/// Where a node is, from its well-known topology labels (telemetry's region and zone labels).
fn locality(ctx: &Context<'_>, node: &str) -> Option<wds::Locality> {
    let labels = ctx.state.node(node)?.metadata.labels.as_ref()?;
    let get = |key: &str| labels.get(key).cloned().unwrap_or_default();
    let locality = wds::Locality {
        region: get(TOPOLOGY_REGION),
        zone: get(TOPOLOGY_ZONE),
        subzone: String::new(),
    };
    (!locality.region.is_empty() || !locality.zone.is_empty()).then_some(locality)
}

/// The Kubernetes well-known labels of a node's region and zone.
pub const TOPOLOGY_REGION: &str = "topology.kubernetes.io/region";
pub const TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// Endpoints of a selector-less service's slices that are not pods: each becomes its own
/// (plain TCP) workload.
pub fn from_slice(ctx: &Context<'_>, slice: &EndpointSlice) -> Vec<wds::Workload> {
    let namespace = slice
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let Some(svc) = labels::labels(&slice.metadata)
        .get(SERVICE_NAME_LABEL)
        .and_then(|n| ctx.service(&namespace, n))
    else {
        return Vec::new();
    };
    if slice.address_type == "FQDN" {
        return Vec::new();
    }
    let ports = slice_ports(svc, slice);
    let slice_name = slice.metadata.name.clone().unwrap_or_default();
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| {
            e.target_ref
                .as_ref()
                .is_none_or(|r| r.kind.as_deref() != Some("Pod"))
        })
        .flat_map(|e| {
            let healthy = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            e.addresses
                .iter()
                .filter_map(move |a| a.parse::<IpAddr>().ok().map(|ip| (ip, healthy)))
        })
        .map(|(ip, healthy)| wds::Workload {
            uid: format!(
                "{}/discovery.k8s.io/EndpointSlice/{namespace}/{slice_name}/{ip}",
                ctx.config.cluster_id
            ),
            name: slice_name.clone(),
            namespace: namespace.clone(),
            addresses: vec![super::ip_bytes(ip)],
            network_mode: wds::NetworkMode::HostNetwork as i32,
            services: [(
                service::key(ctx, svc),
                wds::PortList {
                    ports: ports.clone(),
                },
            )]
            .into(),
            status: if healthy {
                wds::WorkloadStatus::Healthy
            } else {
                wds::WorkloadStatus::Unhealthy
            } as i32,
            cluster_id: ctx.config.cluster_id.clone(),
            ..Default::default()
        })
        .collect()
}

/// A slice's ports mapped onto its service's ports by name.
pub fn slice_ports(svc: &Service, slice: &EndpointSlice) -> Vec<wds::Port> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| {
            let sp = slice.ports.iter().flatten().find(|sp| sp.name == p.name)?;
            Some(wds::Port {
                service_port: p.port as u32,
                target_port: sp.port? as u32,
            })
        })
        .collect()
}
