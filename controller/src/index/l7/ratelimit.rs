//! `LocalRateLimitPolicy` (policy.ambient-rs.io/v1alpha1) → [`l7::RateLimit`] on the waypoint
//! Gateways, Services and HTTPRoute rules it targets, and each policy's status.
//!
//! Targets must be in the policy's namespace: a Service (group `""`), an HTTPRoute (group
//! `gateway.networking.k8s.io`; `sectionName` names one rule, else every rule), or a waypoint
//! Gateway. `clientRefs` (ServiceAccounts) become principals of the mesh's trust domain.
//!
//! Each limit carries the number of running instances of the waypoint enforcing it, which
//! each enforce their share. A policy the controller cannot accept (no limit, a rate that is
//! not positive, a client limit above the total, a reference it cannot resolve) is not
//! applied: its status says `Accepted: False` with the reason, as Gateway API policies do.

use std::collections::BTreeMap;

use ambient_proto::ambient::waypoint::v1 as l7;
use serde::Serialize;

use super::{Out, ServiceKey, routes};
use crate::index::Context;
use crate::index::waypoint::{self, Traffic};
use crate::model::gateway::WAYPOINT_CLASS;
use crate::model::policy::{LocalRateLimitPolicy, RateLimit};
use crate::model::{Kind, Object, ObjectKey};

/// A policy's condition, as `/debug/policies` shows it and the controller writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The `Accepted` condition.
    pub accepted: bool,
    /// `Accepted`, `Invalid` or `TargetNotFound`.
    pub reason: String,
    pub message: String,
    /// The targets it is attached to (`Service shop/a`, `HTTPRoute shop/r rule fast`).
    pub attached: Vec<String>,
    #[serde(skip)]
    pub generation: Option<i64>,
}

/// Limits by what they attach to.
#[derive(Default)]
pub struct Attached {
    pub services: BTreeMap<ServiceKey, Vec<l7::RateLimit>>,
    /// By (namespace, HTTPRoute name): the rule index (`None`: every rule) and the limit.
    pub routes: BTreeMap<ServiceKey, Vec<(Option<usize>, l7::RateLimit)>>,
}

/// Attaches every accepted policy to its targets (Gateways directly); returns the Services'
/// and routes' limits and every policy's status.
pub fn attach(
    ctx: &Context<'_>,
    out: &mut Out,
    gateways: &mut BTreeMap<ServiceKey, l7::GatewayConfig>,
    instances: &BTreeMap<ServiceKey, usize>,
) -> (Attached, Vec<PolicyStatus>) {
    let mut attached = Attached::default();
    let mut statuses = Vec::new();
    for pol in ctx.state.local_rate_limit_policies() {
        let namespace = pol
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pol.metadata.name.clone().unwrap_or_default();
        let object = format!("LocalRateLimitPolicy/{namespace}/{name}");
        let mut status = PolicyStatus {
            kind: "LocalRateLimitPolicy".into(),
            namespace: namespace.clone(),
            name: name.clone(),
            accepted: false,
            reason: String::new(),
            message: String::new(),
            attached: Vec::new(),
            generation: pol.metadata.generation,
        };
        let limit = match convert(ctx, out, &object, &namespace, &name, pol) {
            Ok(l) => l,
            Err(why) => {
                out.warn(&object, format!("{why}; policy not applied"));
                status.reason = "Invalid".into();
                status.message = why;
                statuses.push(status);
                continue;
            }
        };
        let mut missing = Vec::new();
        for r in &pol.spec.target_refs {
            let what = format!("{} {namespace}/{}", r.kind, r.name);
            match (r.group.as_str(), r.kind.as_str()) {
                ("" | "core", "Service") => match ctx.service(&namespace, &r.name) {
                    Some(svc) => {
                        let replicas = waypoint::choose(
                            ctx,
                            &svc.metadata,
                            &namespace,
                            Traffic::Service,
                            &mut Vec::new(),
                        )
                        .and_then(|(ns, gw, _)| instances.get(&(ns, gw)).copied())
                        .unwrap_or(0);
                        let key = (namespace.clone(), r.name.clone());
                        out.referenced.insert(key.clone());
                        attached
                            .services
                            .entry(key)
                            .or_default()
                            .push(l7::RateLimit {
                                replicas: replicas as u32,
                                ..limit.clone()
                            });
                        status.attached.push(what);
                    }
                    None => missing.push(what),
                },
                ("gateway.networking.k8s.io", "HTTPRoute") => {
                    let route = match ctx.state.get(&ObjectKey {
                        kind: Kind::HttpRoute,
                        namespace: namespace.clone(),
                        name: r.name.clone(),
                    }) {
                        Some(Object::HttpRoute(route)) => route,
                        _ => {
                            missing.push(what);
                            continue;
                        }
                    };
                    let rule = match &r.section_name {
                        None => None,
                        Some(section) => match route
                            .spec
                            .rules
                            .iter()
                            .position(|rule| rule.name.as_deref() == Some(section.as_str()))
                        {
                            Some(i) => Some(i),
                            None => {
                                missing.push(format!("{what} rule {section}"));
                                continue;
                            }
                        },
                    };
                    attached
                        .routes
                        .entry((namespace.clone(), r.name.clone()))
                        .or_default()
                        .push((rule, limit.clone()));
                    status.attached.push(match &r.section_name {
                        Some(section) => format!("{what} rule {section}"),
                        None => what,
                    });
                }
                ("gateway.networking.k8s.io", "Gateway") => {
                    let key = (namespace.clone(), r.name.clone());
                    match gateways.get_mut(&key) {
                        Some(g) => {
                            let replicas = instances.get(&key).copied().unwrap_or(0);
                            g.rate_limits.push(l7::RateLimit {
                                replicas: replicas as u32,
                                ..limit.clone()
                            });
                            status.attached.push(what);
                        }
                        None => missing.push(format!(
                            "{what} (no waypoint Gateway of class {WAYPOINT_CLASS} by that name)"
                        )),
                    }
                }
                (group, kind) => {
                    out.warn(
                        &object,
                        format!("targetRef {what} (group {group:?}): kind {kind} is not a Service, HTTPRoute or Gateway; ignored"),
                    );
                    missing.push(what);
                }
            }
        }
        for m in &missing {
            out.warn(&object, format!("target {m} does not exist; ignored"));
        }
        if status.attached.is_empty() {
            status.reason = "TargetNotFound".into();
            status.message = if missing.is_empty() {
                "no targetRefs".into()
            } else {
                format!("no target found: {}", missing.join(", "))
            };
        } else {
            status.accepted = true;
            status.reason = "Accepted".into();
            status.message = format!("attached to {}", status.attached.join(", "));
            if !missing.is_empty() {
                status.message += &format!("; not found: {}", missing.join(", "));
            }
        }
        statuses.push(status);
    }
    (attached, statuses)
}

/// Adds the limits on HTTPRoute rules to the route entries of Service `key`, with the
/// instance count of the waypoint that carries the Service.
pub fn attach_to_routes(attached: &Attached, entries: &mut [routes::Entry], replicas: usize) {
    for e in entries {
        let Some((namespace, name, rule)) = e.http_rule() else {
            continue;
        };
        let Some(limits) = attached
            .routes
            .get(&(namespace.to_string(), name.to_string()))
        else {
            continue;
        };
        for (only, limit) in limits {
            if only.is_none_or(|i| i == rule) {
                e.route.rate_limits.push(l7::RateLimit {
                    replicas: replicas as u32,
                    ..limit.clone()
                });
            }
        }
    }
}

/// The policy as the waypoint enforces it (`replicas` still unset), or why it cannot be.
fn convert(
    ctx: &Context<'_>,
    out: &mut Out,
    object: &str,
    namespace: &str,
    name: &str,
    pol: &LocalRateLimitPolicy,
) -> Result<l7::RateLimit, String> {
    let spec = &pol.spec;
    if spec.total.is_none() && spec.identity.is_none() && spec.overrides.is_empty() {
        return Err("sets no limit (total, identity or overrides)".into());
    }
    let total = spec.total.as_ref().map(|t| rate("total", t)).transpose()?;
    let at_most_total = |field: &str, r: &l7::RateLimitRate| match &total {
        Some(t) if r.requests_per_second > t.requests_per_second => Err(format!(
            "{field}.requestsPerSecond ({}) is above total.requestsPerSecond ({})",
            r.requests_per_second, t.requests_per_second
        )),
        _ => Ok(()),
    };
    let identity = spec
        .identity
        .as_ref()
        .map(|i| rate("identity", i))
        .transpose()?;
    if let Some(i) = &identity {
        at_most_total("identity", i)?;
    }
    let mut overrides = Vec::new();
    for (i, o) in spec.overrides.iter().enumerate() {
        let field = format!("overrides[{i}]");
        let r = rate(
            &field,
            &RateLimit {
                requests_per_second: o.requests_per_second,
                burst: o.burst,
            },
        )?;
        at_most_total(&field, &r)?;
        let mut principals = Vec::new();
        for c in &o.client_refs {
            if !matches!(c.group.as_str(), "" | "core") || c.kind != "ServiceAccount" {
                return Err(format!(
                    "{field}.clientRefs: {} {:?} is not a ServiceAccount",
                    c.kind, c.name
                ));
            }
            let ns = c.namespace.as_deref().unwrap_or(namespace);
            principals.push(format!("{}/ns/{ns}/sa/{}", ctx.config.trust_domain, c.name));
        }
        let mut matches = Vec::new();
        for (j, m) in o.matches.iter().enumerate() {
            match routes::request_match(out, object, m) {
                Some(m) => matches.push(m),
                None => return Err(format!("{field}.matches[{j}] cannot be used")),
            }
        }
        overrides.push(l7::RateLimitOverride {
            rate: Some(r),
            principals,
            matches,
        });
    }
    Ok(l7::RateLimit {
        namespace: namespace.to_string(),
        name: name.to_string(),
        total,
        identity,
        overrides,
        replicas: 0,
    })
}

fn rate(field: &str, r: &RateLimit) -> Result<l7::RateLimitRate, String> {
    if !(r.requests_per_second.is_finite() && r.requests_per_second > 0.0) {
        return Err(format!(
            "{field}.requestsPerSecond must be a positive number (is {})",
            r.requests_per_second
        ));
    }
    if r.burst == Some(0) {
        return Err(format!("{field}.burst must be at least 1"));
    }
    Ok(l7::RateLimitRate {
        requests_per_second: r.requests_per_second,
        burst: r.burst.unwrap_or(0),
    })
}
