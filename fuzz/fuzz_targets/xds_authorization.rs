//! L4 `Authorization` resources from the controller into a proxy's policies: bytes →
//! `DeltaDiscoveryResponse` → the xDS client's `apply_response` → `StateStore`, then
//! connections judged by the compiled policies (`proxy_core::rbac::authorize`).
//!
//! Checks: a version is remembered exactly for what the store took; removals remove; and the
//! verdict on every connection (built from the policies' own values, so that rules match)
//! equals the verdict of a plain reading of the protobuf written here from Istio's rules
//! (any matching DENY denies; with no ALLOW everything is allowed; otherwise an ALLOW must
//! match). A difference means compiling a policy changed what it says.

#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use ambient_fuzz::{TRUST_DOMAIN, check_held_versions, check_removed, one_resource};
use ambient_proto::AUTHORIZATION_TYPE_URL;
use ambient_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use ambient_proto::identity::Identity;
use ambient_proto::istio::security as sec;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proxy_core::rbac::{self, Connection};
use proxy_core::state::StateStore;
use proxy_core::xds::{Known, apply_response};

fuzz_target!(|data: &[u8]| {
    if let Ok(mut response) = DeltaDiscoveryResponse::decode(data) {
        response.type_url = AUTHORIZATION_TYPE_URL.into();
        check(&response);
    }
    check(&one_resource(AUTHORIZATION_TYPE_URL, "fuzz", data));
});

fn check(response: &DeltaDiscoveryResponse) {
    let state = StateStore::new();
    let mut known = Known::new();
    let errors = apply_response(&state, &[], &mut known, response);
    let again = apply_response(&StateStore::new(), &[], &mut Known::new(), response);
    assert_eq!(errors, again, "the same response, different rejections");

    let snap = state.load();
    let held = known
        .get(AUTHORIZATION_TYPE_URL)
        .cloned()
        .unwrap_or_default();
    let decode =
        |r: &Resource| sec::Authorization::decode(r.resource.as_ref()?.value.as_ref()).ok();
    check_held_versions(response, &held, |r| {
        let a = decode(r)?;
        let key = format!("{}/{}", a.namespace, a.name);
        let taken = snap.policies().any(|p| p.key() == key);
        Some((key, taken))
    });
    let mut protos: HashMap<String, Vec<sec::Authorization>> = HashMap::new();
    for a in response.resources.iter().filter_map(decode) {
        protos
            .entry(format!("{}/{}", a.namespace, a.name))
            .or_default()
            .push(a);
    }
    check_removed(response, &held);

    // The stored policies whose protobuf is known for sure (one resource with that key).
    let mut pairs = Vec::new();
    for p in snap.policies() {
        if let Some([a]) = protos.get(&p.key()).map(Vec::as_slice) {
            pairs.push((p.as_ref(), a));
        }
    }
    for conn in connections(pairs.iter().map(|(_, a)| *a)) {
        let c = conn.as_connection();
        for (compiled, proto) in &pairs {
            let got = rbac::authorize([*compiled], &c).is_ok();
            let want = reference(&[proto], &c);
            assert_eq!(got, want, "policy {proto:?} on {c:?}");
        }
        let got = rbac::authorize(pairs.iter().map(|(p, _)| *p), &c);
        let all: Vec<&sec::Authorization> = pairs.iter().map(|(_, a)| *a).collect();
        assert_eq!(got.is_ok(), reference(&all, &c), "{got:?} on {c:?}");
        if let Err(rbac::Denial::Denied(name)) = &got {
            assert!(
                pairs
                    .iter()
                    .any(|(p, _)| &p.key() == name && p.action == rbac::Action::Deny),
                "denied by {name}, which is not a DENY policy"
            );
        }
    }

    let names: Vec<String> = held.keys().cloned().collect();
    let removal = DeltaDiscoveryResponse {
        type_url: AUTHORIZATION_TYPE_URL.into(),
        removed_resources: names.clone(),
        nonce: "2".into(),
        ..Default::default()
    };
    assert!(apply_response(&state, &[], &mut known, &removal).is_empty());
    let snap = state.load();
    for name in &names {
        assert!(
            snap.policies().all(|p| &p.key() != name),
            "{name:?} not removed"
        );
    }
}

/// A connection to judge, owning its identity.
#[derive(Debug)]
struct Conn {
    identity: Option<Identity>,
    src_ip: IpAddr,
    dst: SocketAddr,
}

impl Conn {
    fn as_connection(&self) -> Connection<'_> {
        Connection {
            src_identity: self.identity.as_ref(),
            src_ip: self.src_ip,
            dst: self.dst,
        }
    }
}

/// Connections made of the values the policies name (identities, addresses, ports), plus
/// plain ones, at most a few dozen.
fn connections<'a>(policies: impl Iterator<Item = &'a sec::Authorization>) -> Vec<Conn> {
    let mut ids: BTreeSet<Identity> = BTreeSet::new();
    let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
    let mut ports: BTreeSet<u16> = BTreeSet::new();
    ids.insert(Identity::new(TRUST_DOMAIN, "default", "default").expect("valid"));
    ips.insert(IpAddr::from([10, 0, 0, 1]));
    ports.insert(80);
    for a in policies {
        for m in a
            .rules
            .iter()
            .flat_map(|r| &r.clauses)
            .flat_map(|c| &c.matches)
        {
            for s in m.principals.iter().chain(&m.not_principals) {
                if let Some(sec::string_match::MatchType::Exact(p)) = &s.match_type
                    && let Ok(id) = format!("spiffe://{p}").parse()
                {
                    ids.insert(id);
                }
            }
            for s in m.namespaces.iter().chain(&m.not_namespaces) {
                if let Some(sec::string_match::MatchType::Exact(ns)) = &s.match_type
                    && let Ok(id) = Identity::new(TRUST_DOMAIN, ns.as_str(), "sa")
                {
                    ids.insert(id);
                }
            }
            for sa in m.service_accounts.iter().chain(&m.not_service_accounts) {
                if let Ok(id) = Identity::new(TRUST_DOMAIN, &sa.namespace, &sa.service_account) {
                    ids.insert(id);
                }
            }
            let addresses = m
                .source_ips
                .iter()
                .chain(&m.not_source_ips)
                .chain(&m.destination_ips)
                .chain(&m.not_destination_ips);
            for a in addresses {
                if let Some(ip) = ip(&a.address) {
                    ips.insert(ip);
                }
            }
            for p in m.destination_ports.iter().chain(&m.not_destination_ports) {
                if let Ok(p) = u16::try_from(*p) {
                    ports.insert(p);
                }
            }
        }
    }
    let ids: Vec<Option<Identity>> = std::iter::once(None)
        .chain(ids.into_iter().take(6).map(Some))
        .collect();
    let ips: Vec<IpAddr> = ips.into_iter().take(4).collect();
    let ports: Vec<u16> = ports.into_iter().take(3).collect();
    let mut out = Vec::new();
    for id in &ids {
        for src in &ips {
            for dst in &ips {
                for port in &ports {
                    out.push(Conn {
                        identity: id.clone(),
                        src_ip: *src,
                        dst: SocketAddr::new(*dst, *port),
                    });
                }
            }
        }
    }
    out
}

fn ip(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

// ---- The reference reading of `istio.security.Authorization`. ----

/// Istio's verdict over `policies` (already known to be valid).
fn reference(policies: &[&sec::Authorization], c: &Connection<'_>) -> bool {
    let deny = sec::Action::Deny as i32;
    if policies
        .iter()
        .any(|p| p.action == deny && policy_matches(p, c))
    {
        return false;
    }
    let allows: Vec<_> = policies.iter().filter(|p| p.action != deny).collect();
    allows.is_empty() || allows.iter().any(|p| policy_matches(p, c))
}

/// Rules OR-ed; a rule's clauses AND-ed; a clause's non-empty matches OR-ed (a clause with
/// no match passes; one whose matches are all empty fails).
fn policy_matches(p: &sec::Authorization, c: &Connection<'_>) -> bool {
    p.rules.iter().any(|rule| {
        rule.clauses.iter().all(|clause| {
            clause.matches.is_empty()
                || clause
                    .matches
                    .iter()
                    .filter(|m| **m != sec::Match::default())
                    .any(|m| match_matches(m, c))
        })
    })
}

fn match_matches(m: &sec::Match, c: &Connection<'_>) -> bool {
    let principal = c
        .src_identity
        .map(|i| {
            format!(
                "{}/ns/{}/sa/{}",
                i.trust_domain(),
                i.namespace(),
                i.service_account()
            )
        })
        .unwrap_or_default();
    let namespace = c.src_identity.map(|i| i.namespace()).unwrap_or("");
    let sa = |s: &sec::ServiceAccountMatch| {
        c.src_identity.is_some_and(|i| {
            i.namespace() == s.namespace && i.service_account() == s.service_account
        })
    };
    let port = |p: &u32| *p == u32::from(c.dst.port());
    field(&m.namespaces, &m.not_namespaces, |s| {
        string_matches(s, namespace)
    }) && field(&m.principals, &m.not_principals, |s| {
        string_matches(s, &principal)
    }) && field(&m.source_ips, &m.not_source_ips, |a| in_prefix(a, c.src_ip))
        && field(&m.destination_ips, &m.not_destination_ips, |a| {
            in_prefix(a, c.dst.ip())
        })
        && field(&m.destination_ports, &m.not_destination_ports, port)
        && field(&m.service_accounts, &m.not_service_accounts, sa)
}

/// Set values: one must match (or none is set); negated values: none may match.
fn field<T>(set: &[T], not: &[T], f: impl Fn(&T) -> bool) -> bool {
    (set.is_empty() || set.iter().any(&f)) && !not.iter().any(&f)
}

fn string_matches(s: &sec::StringMatch, value: &str) -> bool {
    use sec::string_match::MatchType;
    match &s.match_type {
        Some(MatchType::Exact(e)) => value == e,
        Some(MatchType::Prefix(p)) => value.starts_with(p.as_str()),
        Some(MatchType::Suffix(x)) => value.ends_with(x.as_str()),
        Some(MatchType::Presence(())) => !value.is_empty(),
        None => false,
    }
}

/// Bit by bit: the first `length` bits of the address equal those of `ip`.
fn in_prefix(a: &sec::Address, ip: IpAddr) -> bool {
    let ip_bytes: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    if ip_bytes.len() != a.address.len() {
        return false;
    }
    (0..a.length as usize).all(|bit| {
        let mask = 0x80u8 >> (bit % 8);
        a.address[bit / 8] & mask == ip_bytes[bit / 8] & mask
    })
}
