//! Which waypoint (if any) serves a workload or service, and its address.

use std::net::IpAddr;

use ambient_proto::istio::workload as wds;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use super::labels::GATEWAY_NAME_LABEL;
use super::labels::{self, WAYPOINT_FOR, use_waypoint};
use super::{Context, Warning};
use crate::model::gateway::{Gateway, WAYPOINT_CLASS};
use crate::model::{Kind, Object, ObjectKey};

/// Port of a waypoint's HBONE listener.
pub const WAYPOINT_HBONE_PORT: u32 = 15008;

/// What the waypoint is asked to carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    Service,
    Workload,
}

/// Whether `pod` is an instance of a waypoint: labelled with the name of a waypoint Gateway
/// (class `istio-waypoint`) of its namespace. It terminates HBONE itself.
pub fn is_instance(ctx: &Context<'_>, pod: &ObjectMeta) -> bool {
    let namespace = pod.namespace.as_deref().unwrap_or("default");
    labels::labels(pod)
        .get(GATEWAY_NAME_LABEL)
        .is_some_and(|gw| waypoint_gateway(ctx, namespace, gw).is_some())
}

/// The waypoint Gateway `namespace/name`, if there is one.
fn waypoint_gateway<'a>(ctx: &Context<'a>, namespace: &str, name: &str) -> Option<&'a Gateway> {
    match ctx.state.get(&ObjectKey {
        kind: Kind::Gateway,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }) {
        Some(Object::Gateway(g)) if g.spec.gateway_class_name == WAYPOINT_CLASS => Some(g),
        _ => None,
    }
}

/// Whether the object is part of a waypoint (its pods, or its Service: labelled with the
/// Gateway's name or, for a Service, named after it). A waypoint never uses a waypoint.
fn part_of_waypoint(
    ctx: &Context<'_>,
    meta: &ObjectMeta,
    namespace: &str,
    traffic: Traffic,
) -> bool {
    let labelled = labels::labels(meta)
        .get(GATEWAY_NAME_LABEL)
        .is_some_and(|gw| waypoint_gateway(ctx, namespace, gw).is_some());
    let own_service = traffic == Traffic::Service
        && meta
            .name
            .as_deref()
            .is_some_and(|n| waypoint_gateway(ctx, namespace, n).is_some());
    labelled || own_service
}

/// The waypoint Gateway (namespace, name) that serves an object with `meta` in `namespace`
/// for `traffic`: the object's own `istio.io/use-waypoint` label, else its namespace's.
pub fn choose<'a>(
    ctx: &Context<'a>,
    meta: &ObjectMeta,
    namespace: &str,
    traffic: Traffic,
    warnings: &mut Vec<Warning>,
) -> Option<(String, String, &'a Gateway)> {
    if part_of_waypoint(ctx, meta, namespace, traffic) {
        return None;
    }
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
    Some((gw_ns, gw_name, gateway))
}

/// The address of the waypoint that serves an object with `meta` in `namespace` (see
/// [`choose`]).
pub fn resolve(
    ctx: &Context<'_>,
    meta: &ObjectMeta,
    namespace: &str,
    traffic: Traffic,
    warnings: &mut Vec<Warning>,
) -> Option<wds::GatewayAddress> {
    let (gw_ns, gw_name, gateway) = choose(ctx, meta, namespace, traffic, warnings)?;
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
