//! Policy attachment (`targetRefs`) for the waypoint's policies: AuthorizationPolicy and
//! RequestAuthentication alike.
//!
//! A target is a Service (group `""`), a ServiceEntry (group `networking.istio.io`: every
//! host of it a waypoint can route by name), a waypoint Gateway (group
//! `gateway.networking.k8s.io`), or, from the root namespace, the `istio-waypoint`
//! GatewayClass (every waypoint). It must be in the policy's namespace. What names nothing is
//! reported.

use std::collections::BTreeMap;

use ambient_proto::ambient::waypoint::v1 as l7;

use super::{Out, ServiceKey, routable_entry_hosts};
use crate::index::Context;
use crate::model::gateway::WAYPOINT_CLASS;
use crate::model::istio::PolicyTargetReference;
use crate::model::{Kind, Object, ObjectKey};

/// Where a policy applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Service or a ServiceEntry host (see [`super::ServiceKey`]); marked referenced.
    Service(ServiceKey),
    /// A waypoint Gateway of `gateways`.
    Gateway(ServiceKey),
}

/// The targets `refs` of the policy `object` in `namespace` name.
pub fn resolve(
    ctx: &Context<'_>,
    out: &mut Out,
    object: &str,
    namespace: &str,
    refs: &[&PolicyTargetReference],
    gateways: &BTreeMap<ServiceKey, l7::GatewayConfig>,
) -> Vec<Target> {
    let mut targets = Vec::new();
    for r in refs {
        let target_ns = r.namespace.clone().unwrap_or_else(|| namespace.to_string());
        let what = format!("targetRef {} {target_ns}/{}", r.kind, r.name);
        if target_ns != namespace {
            out.warn(object, format!("{what} is in another namespace; ignored"));
            continue;
        }
        let ns = namespace.to_string();
        match (r.group.as_str(), r.kind.as_str()) {
            ("" | "core", "Service") => {
                if ctx.service(&ns, &r.name).is_none() {
                    out.warn(object, format!("{what} does not exist"));
                    continue;
                }
                let key = (ns, r.name.clone());
                out.referenced.insert(key.clone());
                targets.push(Target::Service(key));
            }
            ("networking.istio.io", "ServiceEntry") => {
                let hosts = routable_entry_hosts(ctx, &ns, &r.name);
                if hosts.is_empty() {
                    out.warn(
                        object,
                        format!("{what} does not exist (or declares no host with a dot)"),
                    );
                }
                for key in hosts {
                    out.referenced.insert(key.clone());
                    targets.push(Target::Service(key));
                }
            }
            ("gateway.networking.k8s.io", "Gateway") => {
                let key = (ns.clone(), r.name.clone());
                if gateways.contains_key(&key) {
                    targets.push(Target::Gateway(key));
                    continue;
                }
                let exists = matches!(
                    ctx.state.get(&ObjectKey {
                        kind: Kind::Gateway,
                        namespace: ns.clone(),
                        name: r.name.clone(),
                    }),
                    Some(Object::Gateway(_))
                );
                out.warn(
                    object,
                    if exists {
                        format!("{what} is not a waypoint (class {WAYPOINT_CLASS}); ignored")
                    } else {
                        format!("{what} does not exist")
                    },
                );
            }
            ("gateway.networking.k8s.io", "GatewayClass")
                if r.name == WAYPOINT_CLASS && ns == ctx.config.root_namespace =>
            {
                targets.extend(gateways.keys().cloned().map(Target::Gateway));
            }
            ("gateway.networking.k8s.io", "GatewayClass") => out.warn(
                object,
                format!(
                    "{what}: only GatewayClass {WAYPOINT_CLASS}, from the root namespace {}, is supported; ignored",
                    ctx.config.root_namespace
                ),
            ),
            (group, kind) => out.warn(
                object,
                format!("{what} (group {group:?}): targets of kind {kind} are not supported; ignored"),
            ),
        }
    }
    targets
}
