//! `AuthorizationPolicy` (selector / namespace / mesh-wide) → `istio.security.Authorization`
//! for ztunnel's L4 enforcement.
//!
//! ztunnel sees only L4 attributes, so L7 attributes (methods, paths, hosts, request
//! principals, remote IPs, other `when` keys) fail closed:
//! - in an ALLOW policy, a rule that uses any of them is dropped (it allows nothing);
//! - in a DENY policy, a `from`/`to` list in which some entry used only L7 attributes, or a
//!   `when` condition on an L7 key, is dropped from the rule, so the rule matches more
//!   traffic, never less.
//!
//! `targetRefs` policies belong to waypoints and are not converted; AUDIT and CUSTOM actions
//! are reported and not enforced.

use std::net::IpAddr;

use ambient_proto::istio::security as sec;

use super::Warning;
use crate::model::istio::{
    AuthorizationAction, AuthorizationPolicy, Condition, Operation, Rule, Source,
};

/// `<namespace>/<name>`: the xDS name of an authorization.
pub fn resource_name(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

pub fn has_selector(pol: &AuthorizationPolicy) -> bool {
    pol.spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
}

pub fn is_waypoint_policy(pol: &AuthorizationPolicy) -> bool {
    pol.spec.target_ref.is_some() || !pol.spec.target_refs.is_empty()
}

/// Converts one policy; `None` when ztunnel does not enforce it.
pub fn convert(
    pol: &AuthorizationPolicy,
    root_namespace: &str,
    warnings: &mut Vec<Warning>,
) -> Option<sec::Authorization> {
    if is_waypoint_policy(pol) {
        return None;
    }
    let name = pol.metadata.name.clone().unwrap_or_default();
    let namespace = pol
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let object = format!("AuthorizationPolicy/{namespace}/{name}");
    let action = match pol.spec.action {
        AuthorizationAction::Allow => sec::Action::Allow,
        AuthorizationAction::Deny => sec::Action::Deny,
        other => {
            warnings.push(Warning::new(
                &object,
                format!("ztunnel does not support the {other:?} action; policy not enforced"),
            ));
            return None;
        }
    };
    let scope = if has_selector(pol) {
        sec::Scope::WorkloadSelector
    } else if namespace == root_namespace {
        sec::Scope::Global
    } else {
        sec::Scope::Namespace
    };
    let rules = pol
        .spec
        .rules
        .iter()
        .flatten()
        .filter_map(|r| convert_rule(r, action, &namespace, &object, warnings))
        .collect();
    Some(sec::Authorization {
        name,
        namespace,
        scope: scope as i32,
        action: action as i32,
        rules,
    })
}

/// Istio's string pattern: `*` any non-empty, `*x` suffix, `x*` prefix, else exact.
pub fn string_match(pattern: &str) -> sec::StringMatch {
    use sec::string_match::MatchType;
    let m = if pattern == "*" {
        MatchType::Presence(())
    } else if let Some(s) = pattern.strip_prefix('*') {
        MatchType::Suffix(s.to_string())
    } else if let Some(p) = pattern.strip_suffix('*') {
        MatchType::Prefix(p.to_string())
    } else {
        MatchType::Exact(pattern.to_string())
    };
    sec::StringMatch {
        match_type: Some(m),
    }
}

fn principal_match(p: &str) -> sec::StringMatch {
    // Principals are compared without the scheme (`cluster.local/ns/x/sa/y`).
    string_match(p.strip_prefix("spiffe://").unwrap_or(p))
}

fn cidr(s: &str, object: &str, warnings: &mut Vec<Warning>) -> Option<sec::Address> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, len.parse::<u32>().ok()),
        None => (s, None),
    };
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) if len.is_none_or(|l| l <= 32) => Some(sec::Address {
            address: v4.octets().to_vec(),
            length: len.unwrap_or(32),
        }),
        Ok(IpAddr::V6(v6)) if len.is_none_or(|l| l <= 128) => Some(sec::Address {
            address: v6.octets().to_vec(),
            length: len.unwrap_or(128),
        }),
        _ => {
            warnings.push(Warning::new(
                object,
                format!("{s:?} is not an IP address or CIDR; ignored"),
            ));
            None
        }
    }
}

fn port(s: &str, object: &str, warnings: &mut Vec<Warning>) -> Option<u32> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Some(u32::from(p)),
        _ => {
            warnings.push(Warning::new(
                object,
                format!("{s:?} is not a port number; ignored"),
            ));
            None
        }
    }
}

fn service_account(s: &str, policy_ns: &str) -> sec::ServiceAccountMatch {
    let (ns, sa) = s.split_once('/').unwrap_or((policy_ns, s));
    sec::ServiceAccountMatch {
        namespace: ns.to_string(),
        service_account: sa.to_string(),
    }
}

fn operation_l7(o: &Operation) -> Vec<&'static str> {
    let mut v = Vec::new();
    for (name, set) in [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ] {
        if !set.is_empty() {
            v.push(name);
        }
    }
    v
}

fn source_l7(s: &Source) -> Vec<&'static str> {
    let mut v = Vec::new();
    for (name, set) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        if !set.is_empty() {
            v.push(name);
        }
    }
    v
}

/// `when` keys ztunnel can evaluate; any other key is an HTTP attribute.
pub const L4_CONDITION_KEYS: &[&str] = &[
    "source.namespace",
    "source.principal",
    "source.ip",
    "destination.port",
    "destination.ip",
];

fn operation_match(o: &Operation, object: &str, warnings: &mut Vec<Warning>) -> sec::Match {
    sec::Match {
        destination_ports: o
            .ports
            .iter()
            .filter_map(|p| port(p, object, warnings))
            .collect(),
        not_destination_ports: o
            .not_ports
            .iter()
            .filter_map(|p| port(p, object, warnings))
            .collect(),
        ..Default::default()
    }
}

fn source_match(
    s: &Source,
    policy_ns: &str,
    object: &str,
    warnings: &mut Vec<Warning>,
) -> sec::Match {
    sec::Match {
        namespaces: s.namespaces.iter().map(|n| string_match(n)).collect(),
        not_namespaces: s.not_namespaces.iter().map(|n| string_match(n)).collect(),
        principals: s.principals.iter().map(|p| principal_match(p)).collect(),
        not_principals: s
            .not_principals
            .iter()
            .map(|p| principal_match(p))
            .collect(),
        source_ips: s
            .ip_blocks
            .iter()
            .filter_map(|c| cidr(c, object, warnings))
            .collect(),
        not_source_ips: s
            .not_ip_blocks
            .iter()
            .filter_map(|c| cidr(c, object, warnings))
            .collect(),
        service_accounts: s
            .service_accounts
            .iter()
            .map(|a| service_account(a, policy_ns))
            .collect(),
        not_service_accounts: s
            .not_service_accounts
            .iter()
            .map(|a| service_account(a, policy_ns))
            .collect(),
        ..Default::default()
    }
}

fn condition_match(c: &Condition, object: &str, warnings: &mut Vec<Warning>) -> Option<sec::Match> {
    let mut m = sec::Match::default();
    match c.key.as_str() {
        "source.namespace" => {
            m.namespaces = c.values.iter().map(|v| string_match(v)).collect();
            m.not_namespaces = c.not_values.iter().map(|v| string_match(v)).collect();
        }
        "source.principal" => {
            m.principals = c.values.iter().map(|v| principal_match(v)).collect();
            m.not_principals = c.not_values.iter().map(|v| principal_match(v)).collect();
        }
        "source.ip" => {
            m.source_ips = c
                .values
                .iter()
                .filter_map(|v| cidr(v, object, warnings))
                .collect();
            m.not_source_ips = c
                .not_values
                .iter()
                .filter_map(|v| cidr(v, object, warnings))
                .collect();
        }
        "destination.port" => {
            m.destination_ports = c
                .values
                .iter()
                .filter_map(|v| port(v, object, warnings))
                .collect();
            m.not_destination_ports = c
                .not_values
                .iter()
                .filter_map(|v| port(v, object, warnings))
                .collect();
        }
        "destination.ip" => {
            m.destination_ips = c
                .values
                .iter()
                .filter_map(|v| cidr(v, object, warnings))
                .collect();
            m.not_destination_ips = c
                .not_values
                .iter()
                .filter_map(|v| cidr(v, object, warnings))
                .collect();
        }
        _ => return None,
    }
    Some(m)
}

fn convert_rule(
    rule: &Rule,
    action: sec::Action,
    policy_ns: &str,
    object: &str,
    warnings: &mut Vec<Warning>,
) -> Option<sec::Rule> {
    let to_l7: Vec<Vec<&str>> = rule.to.iter().map(|t| operation_l7(&t.operation)).collect();
    let from_l7: Vec<Vec<&str>> = rule.from.iter().map(|f| source_l7(&f.source)).collect();
    let when_l7: Vec<&str> = rule
        .when
        .iter()
        .filter(|c| !L4_CONDITION_KEYS.contains(&c.key.as_str()))
        .map(|c| c.key.as_str())
        .collect();
    let mut l7: Vec<&str> = to_l7
        .iter()
        .chain(from_l7.iter())
        .flatten()
        .copied()
        .collect();
    l7.extend(when_l7.iter().copied());
    l7.sort_unstable();
    l7.dedup();
    if !l7.is_empty() && action == sec::Action::Allow {
        warnings.push(Warning::new(
            object,
            format!("ztunnel cannot see HTTP attributes ({}); the ALLOW rule using them is omitted (allows nothing)", l7.join(", ")),
        ));
        return None;
    }
    if !l7.is_empty() {
        warnings.push(Warning::new(
            object,
            format!("ztunnel cannot see HTTP attributes ({}); the DENY rule is enforced without them (denies more)", l7.join(", ")),
        ));
    }
    let mut clauses = Vec::new();
    if !rule.to.is_empty() {
        let matches: Vec<sec::Match> = rule
            .to
            .iter()
            .map(|t| operation_match(&t.operation, object, warnings))
            .collect();
        // An entry left with nothing but L7 would match any operation: the whole list does.
        let widened = rule.to.iter().zip(&to_l7).any(|(t, l)| {
            !l.is_empty() && t.operation.ports.is_empty() && t.operation.not_ports.is_empty()
        });
        if !widened {
            clauses.push(sec::Clause { matches });
        }
    }
    if !rule.from.is_empty() {
        let matches: Vec<sec::Match> = rule
            .from
            .iter()
            .map(|f| source_match(&f.source, policy_ns, object, warnings))
            .collect();
        let widened = matches
            .iter()
            .zip(&from_l7)
            .any(|(m, l)| !l.is_empty() && *m == sec::Match::default());
        if !widened {
            clauses.push(sec::Clause { matches });
        }
    }
    for c in &rule.when {
        if let Some(m) = condition_match(c, object, warnings) {
            clauses.push(sec::Clause { matches: vec![m] });
        }
    }
    Some(sec::Rule { clauses })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> AuthorizationPolicy {
        let document = crate::source::yaml::parse(yaml).unwrap().remove(0);
        serde_json::from_value(document.value).unwrap()
    }

    #[test]
    fn scopes_and_actions() {
        let mut w = Vec::new();
        let ns = policy("metadata: {name: p, namespace: shop}\nspec: {action: DENY}\n");
        let a = convert(&ns, "istio-system", &mut w).unwrap();
        assert_eq!(
            (a.scope, a.action),
            (sec::Scope::Namespace as i32, sec::Action::Deny as i32)
        );
        let global = policy("metadata: {name: p, namespace: istio-system}\nspec: {}\n");
        assert_eq!(
            convert(&global, "istio-system", &mut w).unwrap().scope,
            sec::Scope::Global as i32
        );
        let sel = policy(
            "metadata: {name: p, namespace: shop}\nspec: {selector: {matchLabels: {app: web}}}\n",
        );
        assert_eq!(
            convert(&sel, "istio-system", &mut w).unwrap().scope,
            sec::Scope::WorkloadSelector as i32
        );
        let audit = policy("metadata: {name: p, namespace: shop}\nspec: {action: AUDIT}\n");
        assert!(convert(&audit, "istio-system", &mut w).is_none());
        assert!(w[0].message.contains("Audit"), "{:?}", w);
        let waypoint = policy(
            "metadata: {name: p, namespace: shop}\nspec: {targetRefs: [{kind: Service, group: '', name: web}]}\n",
        );
        assert!(convert(&waypoint, "istio-system", &mut w).is_none());
    }

    #[test]
    fn maps_l4_fields() {
        let mut w = Vec::new();
        let p = policy(
            r#"
metadata: {name: p, namespace: shop}
spec:
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/web", "*"]
        notNamespaces: ["test*"]
        ipBlocks: ["10.0.0.0/8", "1.2.3.4"]
        serviceAccounts: ["front", "other/sa"]
    to:
    - operation: {ports: ["8080"], notPorts: ["9090"]}
    when:
    - {key: destination.ip, values: ["10.244.1.2"]}
"#,
        );
        let a = convert(&p, "istio-system", &mut w).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let clauses = &a.rules[0].clauses;
        assert_eq!(clauses.len(), 3, "to, from, when");
        assert_eq!(clauses[0].matches[0].destination_ports, vec![8080]);
        let from = &clauses[1].matches[0];
        assert_eq!(from.principals[1], string_match("*"));
        assert_eq!(from.not_namespaces[0], string_match("test*"));
        assert_eq!(from.source_ips[1].length, 32);
        assert_eq!(from.service_accounts[0].namespace, "shop");
        assert_eq!(from.service_accounts[1].namespace, "other");
        assert_eq!(
            clauses[2].matches[0].destination_ips[0].address,
            vec![10, 244, 1, 2]
        );
    }

    #[test]
    fn l7_fails_closed() {
        let mut w = Vec::new();
        let allow = policy(
            r#"
metadata: {name: p, namespace: shop}
spec:
  rules:
  - to: [{operation: {methods: [GET]}}]
  - from: [{source: {namespaces: [shop]}}]
"#,
        );
        let a = convert(&allow, "istio-system", &mut w).unwrap();
        assert_eq!(a.rules.len(), 1, "the L7 ALLOW rule is gone");
        let deny = policy(
            r#"
metadata: {name: p, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [other]}}]
    to: [{operation: {methods: [POST]}}]
    when: [{key: "request.headers[x-token]", values: ["a"]}]
"#,
        );
        let d = convert(&deny, "istio-system", &mut w).unwrap();
        // Only the namespace clause remains: every method, every header value, is denied.
        assert_eq!(d.rules[0].clauses.len(), 1);
        assert_eq!(
            d.rules[0].clauses[0].matches[0].namespaces[0],
            string_match("other")
        );
        assert!(w.iter().any(|w| w.message.contains("denies more")));
    }

    #[test]
    fn empty_rules_mean_what_istio_means() {
        let mut w = Vec::new();
        let none = policy("metadata: {name: p, namespace: shop}\nspec: {}\n");
        assert!(
            convert(&none, "istio-system", &mut w)
                .unwrap()
                .rules
                .is_empty(),
            "matches nothing"
        );
        let all = policy("metadata: {name: p, namespace: shop}\nspec: {rules: [{}]}\n");
        let a = convert(&all, "istio-system", &mut w).unwrap();
        assert_eq!(a.rules.len(), 1);
        assert!(a.rules[0].clauses.is_empty(), "matches everything");
    }

    #[test]
    fn bad_values_are_reported() {
        let mut w = Vec::new();
        let p = policy(
            "metadata: {name: p, namespace: shop}\nspec: {rules: [{to: [{operation: {ports: [http]}}], from: [{source: {ipBlocks: [nope]}}]}]}\n",
        );
        convert(&p, "istio-system", &mut w).unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
    }
}
