//! L4 authorization, with Istio's semantics.
//!
//! A connection is described by [`Connection`]: the peer's identity (none for plaintext),
//! its address, and the destination address. Policies that apply to a destination workload
//! are the mesh-wide (GLOBAL) ones, its namespace's (NAMESPACE), and those it lists by name
//! (WORKLOAD_SELECTOR). Any matching DENY rejects; with no ALLOW policy the connection is
//! allowed; otherwise an ALLOW must match.
//!
//! Inside a policy: rules are OR-ed, a rule's clauses AND-ed, a clause's matches OR-ed (an
//! empty match is skipped, so it never matches; a clause without matches passes); within a
//! match every field that is set must pass (values OR-ed; `not_*` pass when none match).

use std::net::{IpAddr, SocketAddr};

use ambient_proto::identity::Identity;
use ambient_proto::istio::security as sec;
use serde::Serialize;

/// Istio's string patterns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

impl StringMatcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(s) => value == s,
            StringMatcher::Prefix(p) => value.starts_with(p.as_str()),
            StringMatcher::Suffix(s) => value.ends_with(s.as_str()),
            StringMatcher::Presence => !value.is_empty(),
        }
    }
}

/// An IP prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One `Match` of a clause.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyMatch {
    pub namespaces: Vec<StringMatcher>,
    pub not_namespaces: Vec<StringMatcher>,
    pub principals: Vec<StringMatcher>,
    pub not_principals: Vec<StringMatcher>,
    pub source_ips: Vec<Cidr>,
    pub not_source_ips: Vec<Cidr>,
    pub destination_ips: Vec<Cidr>,
    pub not_destination_ips: Vec<Cidr>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
    pub service_accounts: Vec<(String, String)>,
    pub not_service_accounts: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Action {
    Allow,
    Deny,
}

/// A validated `istio.security.Authorization`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    /// rules → clauses → matches.
    pub rules: Vec<Vec<Vec<PolicyMatch>>>,
}

impl Policy {
    /// `namespace/name`: the xDS name.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The attributes a connection is judged on.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    pub src_identity: Option<&'a Identity>,
    pub src_ip: IpAddr,
    pub dst: SocketAddr,
}

/// Why a connection was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("denied by policy {0}")]
    Denied(String),
    #[error("no ALLOW policy matched (applicable: {0})")]
    NotAllowed(String),
}

fn string_match(m: &sec::StringMatch) -> Result<StringMatcher, String> {
    use sec::string_match::MatchType;
    match &m.match_type {
        Some(MatchType::Exact(s)) => Ok(StringMatcher::Exact(s.clone())),
        Some(MatchType::Prefix(s)) => Ok(StringMatcher::Prefix(s.clone())),
        Some(MatchType::Suffix(s)) => Ok(StringMatcher::Suffix(s.clone())),
        Some(MatchType::Presence(())) => Ok(StringMatcher::Presence),
        None => Err("string match with no pattern".into()),
    }
}

fn cidr(a: &sec::Address) -> Result<Cidr, String> {
    let (addr, max) = match a.address.len() {
        4 => (
            IpAddr::from(<[u8; 4]>::try_from(a.address.as_slice()).expect("4 bytes")),
            32,
        ),
        16 => (
            IpAddr::from(<[u8; 16]>::try_from(a.address.as_slice()).expect("16 bytes")),
            128,
        ),
        n => return Err(format!("{n}-byte address")),
    };
    if a.length > max {
        return Err(format!("prefix length {} too long for {addr}", a.length));
    }
    Ok(Cidr {
        addr,
        len: a.length as u8,
    })
}

fn port(p: &u32) -> Result<u16, String> {
    u16::try_from(*p).map_err(|_| format!("port {p} out of range"))
}

fn all<T, U>(v: &[T], f: impl Fn(&T) -> Result<U, String>) -> Result<Vec<U>, String> {
    v.iter().map(f).collect()
}

impl TryFrom<&sec::Authorization> for Policy {
    type Error = String;

    fn try_from(a: &sec::Authorization) -> Result<Self, String> {
        let scope = match sec::Scope::try_from(a.scope) {
            Ok(sec::Scope::Global) => Scope::Global,
            Ok(sec::Scope::Namespace) => Scope::Namespace,
            Ok(sec::Scope::WorkloadSelector) => Scope::WorkloadSelector,
            Err(_) => return Err(format!("unknown scope {}", a.scope)),
        };
        let action = match sec::Action::try_from(a.action) {
            Ok(sec::Action::Allow) => Action::Allow,
            Ok(sec::Action::Deny) => Action::Deny,
            Err(_) => return Err(format!("unknown action {}", a.action)),
        };
        let sa =
            |s: &sec::ServiceAccountMatch| Ok((s.namespace.clone(), s.service_account.clone()));
        let rules = all(&a.rules, |r| {
            all(&r.clauses, |c| {
                all(&c.matches, |m| {
                    Ok(PolicyMatch {
                        namespaces: all(&m.namespaces, string_match)?,
                        not_namespaces: all(&m.not_namespaces, string_match)?,
                        principals: all(&m.principals, string_match)?,
                        not_principals: all(&m.not_principals, string_match)?,
                        source_ips: all(&m.source_ips, cidr)?,
                        not_source_ips: all(&m.not_source_ips, cidr)?,
                        destination_ips: all(&m.destination_ips, cidr)?,
                        not_destination_ips: all(&m.not_destination_ips, cidr)?,
                        destination_ports: all(&m.destination_ports, port)?,
                        not_destination_ports: all(&m.not_destination_ports, port)?,
                        service_accounts: all(&m.service_accounts, sa)?,
                        not_service_accounts: all(&m.not_service_accounts, sa)?,
                    })
                })
            })
        })
        .map_err(|e| format!("authorization {}/{}: {e}", a.namespace, a.name))?;
        Ok(Policy {
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            scope,
            action,
            rules,
        })
    }
}

/// The principal string policies compare: the SPIFFE ID without its scheme, or empty.
fn principal(id: Option<&Identity>) -> String {
    id.map(|i| {
        let s = i.to_string();
        s.strip_prefix("spiffe://").unwrap_or(&s).to_string()
    })
    .unwrap_or_default()
}

struct Attrs<'a> {
    principal: String,
    namespace: &'a str,
    conn: &'a Connection<'a>,
}

fn field<T>(set: &[T], negated: &[T], test: impl Fn(&T) -> bool) -> bool {
    (set.is_empty() || set.iter().any(&test)) && !negated.iter().any(test)
}

impl PolicyMatch {
    fn is_empty(&self) -> bool {
        *self == PolicyMatch::default()
    }

    fn matches(&self, a: &Attrs<'_>) -> bool {
        let sa = |(ns, name): &(String, String)| {
            a.conn
                .src_identity
                .is_some_and(|i| i.namespace() == ns && i.service_account() == name)
        };
        field(&self.namespaces, &self.not_namespaces, |m| {
            m.matches(a.namespace)
        }) && field(&self.principals, &self.not_principals, |m| {
            m.matches(&a.principal)
        }) && field(&self.source_ips, &self.not_source_ips, |c| {
            c.contains(a.conn.src_ip)
        }) && field(&self.destination_ips, &self.not_destination_ips, |c| {
            c.contains(a.conn.dst.ip())
        }) && field(&self.destination_ports, &self.not_destination_ports, |p| {
            *p == a.conn.dst.port()
        }) && field(&self.service_accounts, &self.not_service_accounts, sa)
    }
}

impl Policy {
    fn matches(&self, a: &Attrs<'_>) -> bool {
        self.rules.iter().any(|clauses| {
            clauses.iter().all(|matches| {
                matches.is_empty()
                    || matches
                        .iter()
                        .filter(|m| !m.is_empty())
                        .any(|m| m.matches(a))
            })
        })
    }
}

/// Decides a connection against `policies` (those that apply to its destination).
pub fn authorize<'p>(
    policies: impl IntoIterator<Item = &'p Policy>,
    conn: &Connection<'_>,
) -> Result<(), Denial> {
    let attrs = Attrs {
        principal: principal(conn.src_identity),
        namespace: conn.src_identity.map(|i| i.namespace()).unwrap_or(""),
        conn,
    };
    let mut allows = Vec::new();
    for p in policies {
        match p.action {
            Action::Deny if p.matches(&attrs) => return Err(Denial::Denied(p.key())),
            Action::Deny => {}
            Action::Allow => allows.push(p),
        }
    }
    if allows.is_empty() || allows.iter().any(|p| p.matches(&attrs)) {
        Ok(())
    } else {
        Err(Denial::NotAllowed(
            allows
                .iter()
                .map(|p| p.key())
                .collect::<Vec<_>>()
                .join(", "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(s: &str) -> sec::StringMatch {
        sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Exact(s.into())),
        }
    }

    fn presence() -> sec::StringMatch {
        sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Presence(())),
        }
    }

    fn policy(action: sec::Action, rules: Vec<Vec<Vec<sec::Match>>>) -> Policy {
        let a = sec::Authorization {
            name: "p".into(),
            namespace: "ns".into(),
            scope: sec::Scope::Namespace as i32,
            action: action as i32,
            rules: rules
                .into_iter()
                .map(|clauses| sec::Rule {
                    clauses: clauses
                        .into_iter()
                        .map(|matches| sec::Clause { matches })
                        .collect(),
                })
                .collect(),
        };
        Policy::try_from(&a).unwrap()
    }

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    fn conn<'a>(src: Option<&'a Identity>, port: u16) -> Connection<'a> {
        Connection {
            src_identity: src,
            src_ip: "10.244.1.2".parse().unwrap(),
            dst: SocketAddr::new("10.244.2.2".parse().unwrap(), port),
        }
    }

    #[test]
    fn deny_wins_allow_must_match_none_means_open() {
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        let allow_web = policy(
            sec::Action::Allow,
            vec![vec![vec![sec::Match {
                principals: vec![exact("cluster.local/ns/shop/sa/web")],
                ..Default::default()
            }]]],
        );
        let deny_8081 = policy(
            sec::Action::Deny,
            vec![vec![vec![sec::Match {
                destination_ports: vec![8081],
                ..Default::default()
            }]]],
        );
        assert!(authorize([], &conn(None, 80)).is_ok(), "no policy: open");
        assert!(authorize([&allow_web], &conn(Some(&web), 80)).is_ok());
        assert_eq!(
            authorize([&allow_web], &conn(None, 80)),
            Err(Denial::NotAllowed("ns/p".into()))
        );
        assert_eq!(
            authorize([&allow_web, &deny_8081], &conn(Some(&web), 8081)),
            Err(Denial::Denied("ns/p".into()))
        );
    }

    #[test]
    fn strict_peer_authentication_refuses_plaintext_only() {
        let strict = policy(
            sec::Action::Deny,
            vec![vec![vec![sec::Match {
                not_principals: vec![presence()],
                ..Default::default()
            }]]],
        );
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        assert!(authorize([&strict], &conn(None, 80)).is_err(), "plaintext");
        assert!(authorize([&strict], &conn(Some(&web), 80)).is_ok(), "mTLS");
    }

    #[test]
    fn combination_rules() {
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        let ns = |n: &str| sec::Match {
            namespaces: vec![exact(n)],
            ..Default::default()
        };
        let port = |p: u32| sec::Match {
            destination_ports: vec![p],
            ..Default::default()
        };
        // (ns shop OR ns other) AND port 80
        let p = policy(
            sec::Action::Allow,
            vec![vec![vec![ns("shop"), ns("other")], vec![port(80)]]],
        );
        assert!(authorize([&p], &conn(Some(&web), 80)).is_ok());
        assert!(authorize([&p], &conn(Some(&web), 81)).is_err());
        // An empty match never matches; an empty clause always does; no rules never.
        let empty_match = policy(sec::Action::Allow, vec![vec![vec![sec::Match::default()]]]);
        assert!(authorize([&empty_match], &conn(Some(&web), 80)).is_err());
        let empty_clause = policy(sec::Action::Allow, vec![vec![vec![]]]);
        assert!(authorize([&empty_clause], &conn(Some(&web), 80)).is_ok());
        let no_clauses = policy(sec::Action::Allow, vec![vec![]]);
        assert!(authorize([&no_clauses], &conn(Some(&web), 80)).is_ok());
        let no_rules = policy(sec::Action::Allow, vec![]);
        assert!(authorize([&no_rules], &conn(Some(&web), 80)).is_err());
    }

    #[test]
    fn negations_ips_and_service_accounts() {
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        let p = policy(
            sec::Action::Allow,
            vec![vec![vec![sec::Match {
                not_namespaces: vec![exact("test")],
                source_ips: vec![sec::Address {
                    address: vec![10, 244, 0, 0],
                    length: 16,
                }],
                not_destination_ports: vec![9090],
                service_accounts: vec![sec::ServiceAccountMatch {
                    namespace: "shop".into(),
                    service_account: "web".into(),
                }],
                ..Default::default()
            }]]],
        );
        assert!(authorize([&p], &conn(Some(&web), 80)).is_ok());
        assert!(
            authorize([&p], &conn(Some(&web), 9090)).is_err(),
            "not port"
        );
        let tester = id("spiffe://cluster.local/ns/test/sa/web");
        assert!(
            authorize([&p], &conn(Some(&tester), 80)).is_err(),
            "not namespace"
        );
        let mut c = conn(Some(&web), 80);
        c.src_ip = "192.168.0.1".parse().unwrap();
        assert!(authorize([&p], &c).is_err(), "source ip");
    }

    #[test]
    fn malformed_policies_are_refused() {
        let bad = sec::Authorization {
            name: "p".into(),
            namespace: "ns".into(),
            rules: vec![sec::Rule {
                clauses: vec![sec::Clause {
                    matches: vec![sec::Match {
                        source_ips: vec![sec::Address {
                            address: vec![1, 2, 3],
                            length: 8,
                        }],
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        };
        assert!(Policy::try_from(&bad).unwrap_err().contains("3-byte"));
    }
}
