//! The status of each waypoint Gateway: `Accepted` (the controller understands it) and
//! `Programmed` (it has an address and a running instance), as the monitoring port's
//! `/debug/gateways` shows them.
//!
//! The address is the cluster IP of the Service named after the Gateway in its namespace;
//! instances are pods labelled `gateway.networking.k8s.io/gateway-name: <gateway>` in that
//! namespace.

use std::collections::BTreeMap;

use serde::Serialize;

use super::super::Context;
use super::super::labels::{self, WAYPOINT_FOR};
use crate::index::waypoint::GATEWAY_NAME_LABEL;
use crate::model::gateway::{Gateway, WAYPOINT_CLASS};

/// One condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayCondition {
    /// `Accepted` or `Programmed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// A waypoint Gateway's status; serialized as `/debug/gateways` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    pub namespace: String,
    pub name: String,
    pub class: String,
    pub traffic_type: String,
    /// The cluster IP of the Gateway's Service.
    pub address: Option<String>,
    /// Accepted and Programmed.
    pub programmed: bool,
    /// Why (not) programmed: the first false condition's reason, else `Programmed`'s.
    pub reason: String,
    pub message: String,
    /// `Accepted` then `Programmed` (not part of the JSON view).
    #[serde(skip)]
    pub conditions: Vec<GatewayCondition>,
}

fn condition(kind: &str, status: bool, reason: &str, message: String) -> GatewayCondition {
    GatewayCondition {
        kind: kind.into(),
        status,
        reason: reason.into(),
        message,
    }
}

/// Running instances of each waypoint, by (namespace, Gateway name): pods labelled
/// `gateway.networking.k8s.io/gateway-name`, running and not being deleted.
pub fn running_instances(ctx: &Context<'_>) -> BTreeMap<(String, String), usize> {
    let mut running = BTreeMap::new();
    for p in ctx.state.pods() {
        let Some(gateway) = labels::labels(&p.metadata).get(GATEWAY_NAME_LABEL) else {
            continue;
        };
        if p.metadata.deletion_timestamp.is_none() && p.phase.as_deref() == Some("Running") {
            let ns = p.metadata.namespace.as_deref().unwrap_or("default");
            *running
                .entry((ns.to_string(), gateway.to_string()))
                .or_default() += 1;
        }
    }
    running
}

/// The status of every waypoint Gateway, by namespace and name.
pub fn gateway_statuses(
    ctx: &Context<'_>,
    running: &BTreeMap<(String, String), usize>,
) -> Vec<GatewayStatus> {
    ctx.state
        .gateways()
        .filter(|g| g.spec.gateway_class_name == WAYPOINT_CLASS)
        .map(|g| {
            let ns = g
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = g.metadata.name.clone().unwrap_or_default();
            status(ctx, g, running.get(&(ns, name)).copied().unwrap_or(0))
        })
        .collect()
}

fn status(ctx: &Context<'_>, g: &Gateway, running: usize) -> GatewayStatus {
    let namespace = g
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = g.metadata.name.clone().unwrap_or_default();
    let traffic_type = labels::labels(&g.metadata)
        .get(WAYPOINT_FOR)
        .cloned()
        .unwrap_or_else(|| "service".into());

    let accepted = if !matches!(
        traffic_type.as_str(),
        "service" | "workload" | "all" | "none"
    ) {
        condition(
            "Accepted",
            false,
            "Invalid",
            format!("{WAYPOINT_FOR} {traffic_type:?} is not one of service, workload, all, none"),
        )
    } else if !g.spec.listeners.is_empty()
        && !g.spec.listeners.iter().any(|l| l.protocol == "HBONE")
    {
        condition(
            "Accepted",
            false,
            "ListenersNotValid",
            "a waypoint needs an HBONE listener (port 15008)".into(),
        )
    } else {
        condition("Accepted", true, "Accepted", "waypoint accepted".into())
    };

    let service = ctx.service(&namespace, &name);
    let address = service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| !ip.is_empty() && ip != "None");
    let programmed = match (&address, service) {
        (None, None) => condition(
            "Programmed",
            false,
            "NoAddress",
            format!("Service {namespace}/{name} does not exist"),
        ),
        (None, Some(_)) => condition(
            "Programmed",
            false,
            "NoAddress",
            format!("Service {namespace}/{name} has no cluster IP"),
        ),
        (Some(_), _) if running == 0 => condition(
            "Programmed",
            false,
            "NoInstances",
            format!("no running pod labelled {GATEWAY_NAME_LABEL}={name} in {namespace}"),
        ),
        (Some(ip), _) => condition(
            "Programmed",
            true,
            "Programmed",
            format!("address {ip}, {running} running instance(s)"),
        ),
    };
    let (ok, reason, message) = if !accepted.status {
        (false, accepted.reason.clone(), accepted.message.clone())
    } else {
        (
            programmed.status,
            programmed.reason.clone(),
            programmed.message.clone(),
        )
    };
    GatewayStatus {
        namespace,
        name,
        class: g.spec.gateway_class_name.clone(),
        traffic_type,
        address,
        programmed: ok,
        reason,
        message,
        conditions: vec![accepted, programmed],
    }
}
