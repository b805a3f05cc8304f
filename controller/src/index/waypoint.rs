//! Which waypoint (if any) serves a workload or service, and its address.

use std::net::IpAddr;

use ambient_proto::istio::workload as wds;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::labels::{self, WAYPOINT_FOR, use_waypoint};
use super::{Context, Warning};
use crate::model::gateway::WAYPOINT_CLASS;
use crate::model::{Kind, Object, ObjectKey};

/// Port of a waypoint's HBONE listener.
pub const WAYPOINT_HBONE_PORT: u32 = 15008;

/// What the waypoint is asked to carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    Service,
    Workload,
}

/// The waypoint for an object with `meta` in `namespace`: the object's own
/// `istio.io/use-waypoint` label, else its namespace's.
pub fn resolve(
    ctx: &Context<'_>,
    meta: &ObjectMeta,
    namespace: &str,
    traffic: Traffic,
    warnings: &mut Vec<Warning>,
) -> Option<wds::GatewayAddress> {
    let choice = use_waypoint(meta, namespace).or_else(|| {
        ctx.state
            .namespace(namespace)
            .and_then(|ns| use_waypoint(&ns.metadata, namespace))
    })?;
    let (gw_ns, gw_name) = choice?;
    let key = ObjectKey {
        kind: Kind::Gateway,
        namespace: gw_ns.clone(),
        name: gw_name.clone(),
    };
    let object_name = format!("{namespace}/{}", meta.name.clone().unwrap_or_default());
    let gateway = match ctx.state.get(&key) {
        Some(Object::Gateway(g)) if g.spec.gateway_class_name == WAYPOINT_CLASS => g,
        Some(Object::Gateway(_)) => {
            warnings.push(Warning::new(&object_name, format!("istio.io/use-waypoint names {gw_ns}/{gw_name}, whose class is not {WAYPOINT_CLASS}")));
            return None;
        }
        _ => {
            warnings.push(Warning::new(
                &object_name,
                format!("istio.io/use-waypoint names {gw_ns}/{gw_name}, which does not exist"),
            ));
            return None;
        }
    };
    let serves = labels::labels(&gateway.metadata)
        .get(WAYPOINT_FOR)
        .map(String::as_str)
        .unwrap_or("service");
    let allowed = matches!(
        (traffic, serves),
        (_, "all") | (Traffic::Service, "service") | (Traffic::Workload, "workload")
    );
    if !allowed {
        return None;
    }
    let hostname = |host: String| wds::GatewayAddress {
        destination: Some(wds::gateway_address::Destination::Hostname(
            wds::NamespacedHostname {
                namespace: gw_ns.clone(),
                hostname: host,
            },
        )),
        hbone_mtls_port: WAYPOINT_HBONE_PORT,
    };
    let address = |ip: IpAddr| wds::GatewayAddress {
        destination: Some(wds::gateway_address::Destination::Address(
            wds::NetworkAddress {
                network: ctx.config.network.clone(),
                address: super::ip_bytes(ip),
            },
        )),
        hbone_mtls_port: WAYPOINT_HBONE_PORT,
    };
    let status_addresses = gateway
        .status
        .as_ref()
        .map(|s| s.addresses.clone())
        .unwrap_or_default();
    if let Some(a) = status_addresses.first() {
        match a.kind.as_deref() {
            Some("Hostname") => return Some(hostname(a.value.clone())),
            _ => {
                if let Ok(ip) = a.value.parse() {
                    return Some(address(ip));
                }
            }
        }
    }
    // A Service named after the Gateway (what the controller deploys for it).
    let svc_key = ObjectKey {
        kind: Kind::Service,
        namespace: gw_ns.clone(),
        name: gw_name.clone(),
    };
    if let Some(Object::Service(s)) = ctx.state.get(&svc_key)
        && let Some(ip) = s
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_ref())
            .and_then(|ip| ip.parse().ok())
    {
        return Some(address(ip));
    }
    Some(hostname(format!(
        "{gw_name}.{gw_ns}.svc.{}",
        ctx.config.domain_suffix
    )))
}
