//! `AuthorizationPolicy` with `targetRefs` (or the older `targetRef`) → [`l7::Policy`] on the
//! waypoint Gateways and Services they name.
//!
//! Targets: a Service (group `""`, kind `Service`), a waypoint Gateway (group
//! `gateway.networking.k8s.io`, kind `Gateway`), or, from the root namespace, the
//! `istio-waypoint` GatewayClass (every waypoint). A target must be in the policy's namespace.
//!
//! The proto's `Source` has no field for `remoteIpBlocks`, `requestPrincipals` or (alongside
//! `principals`) `serviceAccounts`; those become `when` conditions on `remote.ip`,
//! `request.auth.principal` and `source.principal`. Since `when` is per rule while sources
//! are OR-ed, a rule with such a source is split into one rule per source, which keeps Istio's
//! meaning.

use std::collections::BTreeMap;

use ambient_proto::ambient::waypoint::v1 as l7;

use super::targets::{self, Target};
use super::{Out, ServiceKey};
use crate::index::Context;
use crate::index::authorization::is_waypoint_policy;
use crate::model::istio::{
    AuthorizationAction, AuthorizationPolicy, Condition, Operation, Rule, Source,
};

/// Attaches every waypoint policy to its targets; returns the Services' policies.
pub fn attach(
    ctx: &Context<'_>,
    out: &mut Out,
    gateways: &mut BTreeMap<ServiceKey, l7::GatewayConfig>,
) -> BTreeMap<ServiceKey, Vec<l7::Policy>> {
    let mut services: BTreeMap<ServiceKey, Vec<l7::Policy>> = BTreeMap::new();
    for pol in ctx.state.authorization_policies() {
        if !is_waypoint_policy(pol) {
            continue;
        }
        let ns = pol
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pol.metadata.name.clone().unwrap_or_default();
        let object = format!("AuthorizationPolicy/{ns}/{name}");
        let Some(policy) = convert(ctx, out, &object, pol) else {
            continue;
        };
        let refs: Vec<_> = pol
            .spec
            .target_ref
            .iter()
            .chain(&pol.spec.target_refs)
            .collect();
        for target in targets::resolve(ctx, out, &object, &ns, &refs, gateways) {
            match target {
                Target::Service(key) => services.entry(key).or_default().push(policy.clone()),
                Target::Gateway(key) => {
                    if let Some(g) = gateways.get_mut(&key) {
                        g.policies.push(policy.clone());
                    }
                }
            }
        }
    }
    for list in services.values_mut() {
        list.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    }
    for g in gateways.values_mut() {
        g.policies
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    }
    services
}

/// One policy as the waypoint enforces it; `None` (reported) for CUSTOM.
pub fn convert(
    ctx: &Context<'_>,
    out: &mut Out,
    object: &str,
    pol: &AuthorizationPolicy,
) -> Option<l7::Policy> {
    let action = match pol.spec.action {
        AuthorizationAction::Allow => l7::Action::Allow,
        AuthorizationAction::Deny => l7::Action::Deny,
        AuthorizationAction::Audit => l7::Action::Audit,
        AuthorizationAction::Custom => {
            out.warn(
                object,
                "the CUSTOM action (external authorization) is not supported; policy not enforced",
            );
            return None;
        }
    };
    if pol.spec.selector.is_some() {
        out.warn(
            object,
            "has both targetRefs and a selector; the selector is ignored",
        );
    }
    let namespace = pol
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut policy = l7::Policy {
        namespace: namespace.clone(),
        name: pol.metadata.name.clone().unwrap_or_default(),
        action: action as i32,
        rules: Vec::new(),
        match_all: false,
    };
    for rule in pol.spec.rules.iter().flatten() {
        if rule.from.is_empty() && rule.to.is_empty() && rule.when.is_empty() {
            policy.match_all = true;
            continue;
        }
        policy
            .rules
            .extend(convert_rule(rule, &namespace, &ctx.config.trust_domain));
    }
    Some(policy)
}

fn operation(o: &Operation) -> l7::Operation {
    l7::Operation {
        hosts: o.hosts.clone(),
        not_hosts: o.not_hosts.clone(),
        ports: o.ports.clone(),
        not_ports: o.not_ports.clone(),
        methods: o.methods.clone(),
        not_methods: o.not_methods.clone(),
        paths: o.paths.clone(),
        not_paths: o.not_paths.clone(),
    }
}

fn condition(c: &Condition) -> l7::Condition {
    l7::Condition {
        key: c.key.clone(),
        values: c.values.clone(),
        not_values: c.not_values.clone(),
    }
}

/// `ns/sa` or `sa` (in the policy's namespace) → the principal `<td>/ns/<ns>/sa/<sa>`.
fn sa_principal(s: &str, policy_ns: &str, trust_domain: &str) -> String {
    let (ns, sa) = s.split_once('/').unwrap_or((policy_ns, s));
    format!("{trust_domain}/ns/{ns}/sa/{sa}")
}

/// A source, and the conditions it needs besides (see the module docs).
fn source(s: &Source, policy_ns: &str, trust_domain: &str) -> (l7::Source, Vec<l7::Condition>) {
    let mut extra = Vec::new();
    let mut principals = s.principals.clone();
    let accounts: Vec<String> = s
        .service_accounts
        .iter()
        .map(|a| sa_principal(a, policy_ns, trust_domain))
        .collect();
    if !accounts.is_empty() {
        if principals.is_empty() {
            principals = accounts;
        } else {
            extra.push(l7::Condition {
                key: "source.principal".into(),
                values: accounts,
                not_values: Vec::new(),
            });
        }
    }
    let mut not_principals = s.not_principals.clone();
    not_principals.extend(
        s.not_service_accounts
            .iter()
            .map(|a| sa_principal(a, policy_ns, trust_domain)),
    );
    if !s.remote_ip_blocks.is_empty() || !s.not_remote_ip_blocks.is_empty() {
        extra.push(l7::Condition {
            key: "remote.ip".into(),
            values: s.remote_ip_blocks.clone(),
            not_values: s.not_remote_ip_blocks.clone(),
        });
    }
    if !s.request_principals.is_empty() || !s.not_request_principals.is_empty() {
        extra.push(l7::Condition {
            key: "request.auth.principal".into(),
            values: s.request_principals.clone(),
            not_values: s.not_request_principals.clone(),
        });
    }
    (
        l7::Source {
            principals,
            not_principals,
            namespaces: s.namespaces.clone(),
            not_namespaces: s.not_namespaces.clone(),
            ip_blocks: s.ip_blocks.clone(),
            not_ip_blocks: s.not_ip_blocks.clone(),
        },
        extra,
    )
}

fn convert_rule(rule: &Rule, policy_ns: &str, trust_domain: &str) -> Vec<l7::Rule> {
    let to: Vec<l7::Operation> = rule.to.iter().map(|t| operation(&t.operation)).collect();
    let when: Vec<l7::Condition> = rule.when.iter().map(condition).collect();
    let sources: Vec<(l7::Source, Vec<l7::Condition>)> = rule
        .from
        .iter()
        .map(|f| source(&f.source, policy_ns, trust_domain))
        .collect();
    if sources.iter().all(|(_, extra)| extra.is_empty()) {
        return vec![l7::Rule {
            from: sources.into_iter().map(|(s, _)| s).collect(),
            to,
            when,
        }];
    }
    sources
        .into_iter()
        .map(|(s, extra)| {
            let mut w = when.clone();
            w.extend(extra);
            l7::Rule {
                from: vec![s],
                to: to.clone(),
                when: w,
            }
        })
        .collect()
}
