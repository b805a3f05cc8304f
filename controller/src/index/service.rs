//! Kubernetes Services → WDS `Service`.

use std::net::IpAddr;

use ambient_proto::istio::workload as wds;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::waypoint::{self, Traffic};
use super::{Context, Warning};

/// `<namespace>/<hostname>`: the WDS name of a service (and the key of `Workload.services`).
pub fn key(ctx: &Context<'_>, svc: &Service) -> String {
    format!("{}/{}", namespace(svc), hostname(ctx, svc))
}

pub fn namespace(svc: &Service) -> String {
    svc.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

pub fn hostname(ctx: &Context<'_>, svc: &Service) -> String {
    format!(
        "{}.{}.svc.{}",
        svc.metadata.name.clone().unwrap_or_default(),
        namespace(svc),
        ctx.config.domain_suffix
    )
}

/// The WDS service, or `None` for kinds ambient does not describe (ExternalName).
pub fn build(
    ctx: &Context<'_>,
    svc: &Service,
    warnings: &mut Vec<Warning>,
) -> Option<wds::Service> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = &spec.cluster_ip
    {
        ips.push(ip.clone());
    }
    let mut addresses = Vec::new();
    for ip in ips
        .iter()
        .filter(|ip| ip.as_str() != "None" && !ip.is_empty())
    {
        match ip.parse::<IpAddr>() {
            Ok(ip) => addresses.push(wds::NetworkAddress {
                network: ctx.config.network.clone(),
                address: super::ip_bytes(ip),
            }),
            Err(_) => {
                warnings.push(Warning::new(
                    &key(ctx, svc),
                    format!("clusterIP {ip:?} is not an IP address; service skipped"),
                ));
                return None;
            }
        }
    }
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .map(|p| wds::Port {
            service_port: p.port as u32,
            // A named target port is resolved per workload (see workload.rs); 0 here.
            target_port: match &p.target_port {
                Some(IntOrString::Int(n)) => *n as u32,
                Some(IntOrString::String(_)) => 0,
                None => p.port as u32,
            },
        })
        .collect();
    let ns = namespace(svc);
    Some(wds::Service {
        name: svc.metadata.name.clone().unwrap_or_default(),
        namespace: ns.clone(),
        hostname: hostname(ctx, svc),
        addresses,
        ports,
        waypoint: waypoint::resolve(ctx, &svc.metadata, &ns, Traffic::Service, warnings),
        ..Default::default()
    })
}
