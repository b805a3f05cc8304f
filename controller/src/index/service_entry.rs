//! ServiceEntries → WDS: one `Service` per host, and a `Workload` per endpoint (or, for
//! `resolution: DNS` without endpoints, one per host, known by its name). Pods a
//! `workloadSelector` picks join the services through [`memberships`].
//!
//! A host with no `addresses` gets a virtual address from [`AUTO_RANGE`], as Istio's DNS
//! capture with address auto-allocation does, so that a pod's DNS query for it has an answer
//! and its connections reach ztunnel. The address is a function of the cluster state alone
//! (a hash of `namespace/host`, probed in the entries' creation order on collision), so the
//! same entries get the same addresses after a controller restart; an address Istio's
//! allocator wrote into `status.addresses` is kept.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use ambient_proto::identity::DEFAULT_TRUST_DOMAIN;
use ambient_proto::istio::workload as wds;

use super::{Context, Warning};
use crate::model::service_entry::{Resolution, ServiceEntry};

/// Where hosts without addresses get theirs: Istio's range (class E, never routed).
pub const AUTO_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(240, 240, 0, 0), 16);

/// `ServiceEntry/<ns>/<name>`: how warnings name an entry.
fn object(se: &ServiceEntry) -> String {
    format!("ServiceEntry/{}/{}", namespace(se), name(se))
}

pub(crate) fn namespace(se: &ServiceEntry) -> &str {
    se.metadata.namespace.as_deref().unwrap_or("default")
}

pub(crate) fn name(se: &ServiceEntry) -> &str {
    se.metadata.name.as_deref().unwrap_or_default()
}

/// Hosts as WDS names them: lowercase, no trailing dot.
pub(crate) fn hosts(se: &ServiceEntry) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in &se.spec.hosts {
        let h = h.trim_end_matches('.').to_ascii_lowercase();
        if !h.is_empty() && !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

/// Who may see the entry: `None` when nobody may (`exportTo: ["~"]`).
fn visibility(se: &ServiceEntry, warnings: &mut Vec<Warning>) -> Option<wds::service::Visibility> {
    let ns = namespace(se);
    let to = &se.spec.export_to;
    if to.is_empty() || to.iter().any(|t| t == "*") {
        return Some(wds::service::Visibility::Public);
    }
    if to.iter().all(|t| t == "~") {
        return None;
    }
    if to.iter().all(|t| t == "." || t == ns || t == "~") {
        return Some(wds::service::Visibility::Namespace);
    }
    warnings.push(Warning::new(
        &object(se),
        "exportTo naming other namespaces is treated as \"*\" (visible everywhere)",
    ));
    Some(wds::service::Visibility::Public)
}

/// Whether an object in namespace `from` sees the entry (its `exportTo`).
pub(crate) fn exported_to(se: &ServiceEntry, from: &str) -> bool {
    let to = &se.spec.export_to;
    to.is_empty()
        || to.iter().any(|t| t == "*" || t == from)
        || (from == namespace(se) && to.iter().any(|t| t == "."))
}

/// Every entry, oldest first (then by namespace and name): the order in which they claim
/// hosts and addresses.
pub(crate) fn oldest_first(state: &crate::model::ClusterState) -> Vec<&ServiceEntry> {
    let mut entries: Vec<&ServiceEntry> = state.service_entries().collect();
    entries.sort_by(|a, b| {
        let created = |e: &ServiceEntry| e.metadata.creation_timestamp.clone().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| namespace(a).cmp(namespace(b)))
            .then_with(|| name(a).cmp(name(b)))
    });
    entries
}

/// The virtual addresses of every host that gets one, keyed `namespace/host`.
pub struct Allocations {
    by_host: BTreeMap<String, Vec<IpAddr>>,
}

impl Allocations {
    pub fn new(ctx: &Context<'_>, warnings: &mut Vec<Warning>) -> Self {
        // Oldest first: a newer entry never takes an older one's address.
        let entries = oldest_first(ctx.state);
        let mut by_host: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        let mut taken: HashSet<IpAddr> = HashSet::new();
        let mut wanted: Vec<String> = Vec::new();
        for se in &entries {
            let ns = namespace(se);
            let (explicit, problems) = explicit_addresses(se);
            for p in problems {
                warnings.push(Warning::new(&object(se), p));
            }
            let recorded = recorded_addresses(se);
            let resolution = se.spec.resolution();
            for host in hosts(se) {
                let key = format!("{ns}/{host}");
                if by_host.contains_key(&key) {
                    continue;
                }
                if !explicit.is_empty() {
                    taken.extend(explicit.iter().copied());
                    by_host.insert(key, explicit.clone());
                } else if let Some(ip) = recorded.get(&host) {
                    taken.insert(*ip);
                    by_host.insert(key, vec![*ip]);
                } else if !host.contains('*') && resolution != Ok(Resolution::None) {
                    wanted.push(key);
                }
            }
        }
        for key in wanted {
            let ip = allocate(&key, &taken);
            taken.insert(ip);
            by_host.insert(key, vec![ip]);
        }
        Allocations { by_host }
    }

    /// The addresses of `host` of an entry in `namespace` (none: no VIP).
    pub fn of(&self, namespace: &str, host: &str) -> &[IpAddr] {
        self.by_host
            .get(&format!("{namespace}/{host}"))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// `spec.addresses` that are addresses (a CIDR of one address counts); and what was skipped.
fn explicit_addresses(se: &ServiceEntry) -> (Vec<IpAddr>, Vec<String>) {
    let mut ips = Vec::new();
    let mut problems = Vec::new();
    for a in &se.spec.addresses {
        let (ip, bits) = match a.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (a.as_str(), None),
        };
        match (ip.parse::<IpAddr>(), bits.map(str::parse::<u8>)) {
            (Ok(ip), None) => ips.push(ip),
            (Ok(IpAddr::V4(v4)), Some(Ok(32))) => ips.push(IpAddr::V4(v4)),
            (Ok(IpAddr::V6(v6)), Some(Ok(128))) => ips.push(IpAddr::V6(v6)),
            (Ok(_), Some(Ok(_))) => problems.push(format!(
                "address range {a} is not supported (only single addresses); skipped"
            )),
            _ => problems.push(format!("{a:?} is not an IP address; skipped")),
        }
    }
    (ips, problems)
}

/// `status.addresses` (`[{value, host}]`) an Istio allocator wrote.
fn recorded_addresses(se: &ServiceEntry) -> BTreeMap<String, IpAddr> {
    let mut out = BTreeMap::new();
    let list = se
        .status
        .as_ref()
        .and_then(|s| s.get("addresses"))
        .and_then(|a| a.as_array());
    for a in list.into_iter().flatten() {
        if let (Some(value), Some(host)) = (
            a.get("value").and_then(|v| v.as_str()),
            a.get("host").and_then(|v| v.as_str()),
        ) && let Ok(ip @ IpAddr::V4(_)) = value.parse::<IpAddr>()
        {
            out.entry(host.to_ascii_lowercase()).or_insert(ip);
        }
    }
    out
}

/// A free address of [`AUTO_RANGE`] for `key`: its hash, or the next free one after it.
fn allocate(key: &str, taken: &HashSet<IpAddr>) -> IpAddr {
    let (base, bits) = AUTO_RANGE;
    let size = 1u32 << (32 - bits);
    // Usable: .0.1 to .255.254 (network and broadcast left out).
    let usable = size - 2;
    let start = fnv1a(key.as_bytes()) % u64::from(usable);
    let base = u32::from(base);
    for step in 0..u64::from(usable) {
        let offset = ((start + step) % u64::from(usable)) as u32 + 1;
        let ip = IpAddr::V4(Ipv4Addr::from(base + offset));
        if !taken.contains(&ip) {
            return ip;
        }
    }
    // 65,534 hosts without addresses: the range is full; share the hashed one.
    IpAddr::V4(Ipv4Addr::from(base + start as u32 + 1))
}

/// FNV-1a (64-bit): stable across builds and platforms, unlike the std hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// WDS ports of the entry; `target` gives an endpoint's own port for a port name.
fn ports(se: &ServiceEntry, target: impl Fn(&str) -> Option<u32>) -> Vec<wds::Port> {
    se.spec
        .ports
        .iter()
        .filter(|p| !is_udp(p.protocol.as_deref()))
        .map(|p| wds::Port {
            service_port: p.number,
            target_port: target(&p.name).or(p.target_port).unwrap_or(0),
        })
        .collect()
}

fn is_udp(protocol: Option<&str>) -> bool {
    protocol.is_some_and(|p| p.eq_ignore_ascii_case("UDP"))
}

/// Every WDS address the ServiceEntries make, keyed by xDS name.
pub fn build(
    ctx: &Context<'_>,
    allocations: &Allocations,
    warnings: &mut Vec<Warning>,
) -> Vec<(String, wds::Address)> {
    let mut out = Vec::new();
    for se in ctx.state.service_entries() {
        build_one(ctx, se, allocations, warnings, &mut out);
    }
    out
}

fn build_one(
    ctx: &Context<'_>,
    se: &ServiceEntry,
    allocations: &Allocations,
    warnings: &mut Vec<Warning>,
    out: &mut Vec<(String, wds::Address)>,
) {
    let ns = namespace(se);
    let obj = object(se);
    let resolution = match se.spec.resolution() {
        Ok(r) => r,
        Err(other) => {
            warnings.push(Warning::new(
                &obj,
                format!("resolution {other:?} is not NONE, STATIC or DNS; entry skipped"),
            ));
            return;
        }
    };
    let Some(visibility) = visibility(se, warnings) else {
        return;
    };
    let hosts = hosts(se);
    if hosts.is_empty() {
        warnings.push(Warning::new(&obj, "no hosts; entry skipped"));
        return;
    }
    if se.spec.ports.iter().any(|p| is_udp(p.protocol.as_deref())) {
        warnings.push(Warning::new(&obj, "UDP ports are not supported; skipped"));
    }
    if se.spec.workload_selector.is_some() && !se.spec.endpoints.is_empty() {
        warnings.push(Warning::new(
            &obj,
            "workloadSelector and endpoints together: endpoints ignored",
        ));
    }
    // Egress through a waypoint: the entry's `istio.io/use-waypoint`, else its namespace's.
    let waypoint = super::waypoint::resolve(
        ctx,
        &se.metadata,
        ns,
        super::waypoint::Traffic::Service,
        warnings,
    );
    for host in &hosts {
        if host.contains('*') && resolution != Resolution::None {
            warnings.push(Warning::new(
                &obj,
                format!("wildcard host {host} needs resolution NONE; it gets no address"),
            ));
        }
        let addresses = allocations
            .of(ns, host)
            .iter()
            .map(|ip| wds::NetworkAddress {
                network: ctx.config.network.clone(),
                address: super::ip_bytes(*ip),
            })
            .collect();
        let service = wds::Service {
            name: name(se).to_string(),
            namespace: ns.to_string(),
            hostname: host.clone(),
            addresses,
            ports: ports(se, |_| None),
            subject_alt_names: se.spec.subject_alt_names.clone(),
            load_balancing: (resolution == Resolution::None).then(|| wds::LoadBalancing {
                mode: wds::load_balancing::Mode::Passthrough as i32,
                ..Default::default()
            }),
            visibility: visibility as i32,
            waypoint: waypoint.clone(),
            ..Default::default()
        };
        out.push((
            format!("{ns}/{host}"),
            wds::Address {
                r#type: Some(wds::address::Type::Service(service)),
            },
        ));
    }
    if resolution == Resolution::None || se.spec.workload_selector.is_some() {
        return;
    }
    let concrete: Vec<&String> = hosts.iter().filter(|h| !h.contains('*')).collect();
    let mut endpoints: Vec<Endpoint<'_>> = Vec::new();
    for ep in &se.spec.endpoints {
        let address = ep.address.trim();
        match (address.parse::<IpAddr>(), resolution) {
            (Ok(ip), _) => endpoints.push(Endpoint::Ip(ip, ep)),
            (Err(_), Resolution::Dns) if valid_hostname(address) => {
                endpoints.push(Endpoint::Named(address.to_ascii_lowercase(), Some(ep)))
            }
            (Err(_), Resolution::Dns) => warnings.push(Warning::new(
                &obj,
                format!("endpoint {address:?} is neither an IP address nor a hostname; skipped"),
            )),
            (Err(_), _) => warnings.push(Warning::new(
                &obj,
                format!("endpoint {address:?} is not an IP address (resolution STATIC); skipped"),
            )),
        }
    }
    if se.spec.endpoints.is_empty() && resolution == Resolution::Dns {
        // The host itself is the endpoint, each host its own.
        for host in &concrete {
            let w = workload(ctx, se, Endpoint::Named((*host).clone(), None), &[host]);
            out.push((
                w.uid.clone(),
                wds::Address {
                    r#type: Some(wds::address::Type::Workload(w)),
                },
            ));
        }
        return;
    }
    if se.spec.endpoints.is_empty() && resolution == Resolution::Static {
        warnings.push(Warning::new(
            &obj,
            "resolution STATIC without endpoints: connections to it fail",
        ));
    }
    for ep in endpoints {
        let w = workload(ctx, se, ep, &concrete);
        out.push((
            w.uid.clone(),
            wds::Address {
                r#type: Some(wds::address::Type::Workload(w)),
            },
        ));
    }
}

/// An endpoint of an entry: an address, or a name resolved when connecting.
enum Endpoint<'a> {
    Ip(IpAddr, &'a crate::model::service_entry::WorkloadEntrySpec),
    Named(
        String,
        Option<&'a crate::model::service_entry::WorkloadEntrySpec>,
    ),
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn workload(
    ctx: &Context<'_>,
    se: &ServiceEntry,
    ep: Endpoint<'_>,
    hosts: &[&String],
) -> wds::Workload {
    let ns = namespace(se);
    let (addresses, hostname, spec) = match ep {
        Endpoint::Ip(ip, spec) => (vec![super::ip_bytes(ip)], String::new(), Some(spec)),
        Endpoint::Named(h, spec) => (Vec::new(), h, spec),
    };
    let id = match spec {
        Some(s) => s.address.trim().to_ascii_lowercase(),
        None => hostname.clone(),
    };
    let services = hosts
        .iter()
        .map(|h| {
            let ports = ports(se, |port_name| {
                spec.and_then(|s| s.ports.get(port_name).copied())
            });
            (format!("{ns}/{h}"), wds::PortList { ports })
        })
        .collect();
    wds::Workload {
        // Istio's form for a ServiceEntry's inline endpoint.
        uid: format!(
            "{}/networking.istio.io/ServiceEntry/{ns}/{}/{id}",
            ctx.config.cluster_id,
            name(se)
        ),
        name: name(se).to_string(),
        namespace: ns.to_string(),
        addresses,
        hostname,
        network: spec
            .and_then(|s| s.network.clone())
            .unwrap_or_else(|| ctx.config.network.clone()),
        tunnel_protocol: wds::TunnelProtocol::None as i32,
        trust_domain: if ctx.config.trust_domain == DEFAULT_TRUST_DOMAIN {
            String::new()
        } else {
            ctx.config.trust_domain.clone()
        },
        service_account: spec
            .and_then(|s| s.service_account.clone())
            .unwrap_or_else(|| "default".into()),
        canonical_name: name(se).to_string(),
        workload_name: name(se).to_string(),
        services,
        status: wds::WorkloadStatus::Healthy as i32,
        cluster_id: ctx.config.cluster_id.clone(),
        ..Default::default()
    }
}

/// The entries of `namespace` whose `workloadSelector` picks a pod with `labels`: their
/// services (`namespace/host`) and ports, for the pod's workload.
pub fn memberships(
    ctx: &Context<'_>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<(String, Vec<wds::Port>)> {
    let mut out = Vec::new();
    for se in ctx.selector_service_entries(namespace) {
        let Some(selector) = &se.spec.workload_selector else {
            continue;
        };
        if !super::labels::selector_matches(&selector.labels, labels) {
            continue;
        }
        let ports = ports(se, |_| None);
        for host in hosts(se).into_iter().filter(|h| !h.contains('*')) {
            out.push((format!("{namespace}/{host}"), ports.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests;
