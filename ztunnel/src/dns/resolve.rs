//! Names to addresses, from one snapshot of the mesh: no I/O, no wire format.
//!
//! A pod in namespace `ns` can name service `svc` of namespace `other` as
//!
//! - `svc.other.svc.cluster.local` (its hostname),
//! - `svc.other.svc`,
//! - `svc.other`,
//! - `svc` when `other` is `ns` (the pod's namespace is its search domain),
//!
//! in any letter case, with or without the trailing dot. A name that is exactly some
//! service's hostname (a `ServiceEntry`'s host, say) names that service too.

use std::net::IpAddr;

use proxy_core::state::Snapshot;

use super::CLUSTER_DOMAIN;

/// The addresses of the service `name` stands for, seen from a pod in `pod_namespace`:
/// `None` when it names none. An existing service with no address gives an empty list.
pub fn lookup(snapshot: &Snapshot, pod_namespace: &str, name: &str) -> Option<Vec<IpAddr>> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    candidates(&name, pod_namespace)
        .into_iter()
        .find_map(|hostname| {
            // A service exported only to its own namespace does not exist for other pods.
            let visible: Vec<_> = snapshot
                .services_by_hostname(&hostname)
                .iter()
                .filter(|s| s.visible_to(pod_namespace))
                .collect();
            if visible.is_empty() {
                return None;
            }
            let mut vips: Vec<IpAddr> = Vec::new();
            for ip in visible.iter().flat_map(|s| s.vips.iter()) {
                if !vips.contains(ip) {
                    vips.push(*ip);
                }
            }
            Some(vips)
        })
}

/// The hostnames `name` (lowercase, no trailing dot) may stand for, most literal first.
fn candidates(name: &str, pod_namespace: &str) -> Vec<String> {
    let mut out = vec![name.to_string()];
    let labels: Vec<&str> = name.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return out;
    }
    match labels.as_slice() {
        [_] => out.push(format!(
            "{name}.{}.svc.{CLUSTER_DOMAIN}",
            pod_namespace.to_ascii_lowercase()
        )),
        [_, _] => out.push(format!("{name}.svc.{CLUSTER_DOMAIN}")),
        [_, _, "svc"] => out.push(format!("{name}.{CLUSTER_DOMAIN}")),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_core::state::local::LocalConfig;
    use proxy_core::state::{StateStore, Update};

    const MESH: &str = r#"
services:
  - name: echo
    namespace: default
    hostname: echo.default.svc.cluster.local
    addresses: [10.96.0.10]
    ports: [{servicePort: 80, targetPort: 8080}]
  - name: db
    namespace: data
    hostname: db.data.svc.cluster.local
    addresses: [10.96.0.20, "fd00::20"]
    ports: [{servicePort: 5432}]
  - name: headless
    namespace: default
    hostname: headless.default.svc.cluster.local
    ports: [{servicePort: 80}]
  - name: external
    namespace: default
    hostname: api.example.com
    addresses: [10.96.0.30]
    ports: [{servicePort: 443}]
  - name: private
    namespace: data
    hostname: private.example.com
    addresses: [240.240.0.5]
    ports: [{servicePort: 443}]
    namespaceOnly: true
"#;

    fn snapshot() -> std::sync::Arc<Snapshot> {
        let store = StateStore::new();
        let rejected = store.apply(Update {
            upserts: LocalConfig::parse(MESH).unwrap().to_addresses(),
            replace_all: true,
            ..Default::default()
        });
        assert!(rejected.is_empty(), "{rejected:?}");
        store.load()
    }

    fn ips(list: &[&str]) -> Option<Vec<IpAddr>> {
        Some(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    /// A ServiceEntry exported to `.`: its namespace resolves it, others do not see it.
    #[test]
    fn a_namespace_only_service_resolves_in_its_namespace_only() {
        let snap = snapshot();
        assert_eq!(
            lookup(&snap, "data", "private.example.com"),
            ips(&["240.240.0.5"])
        );
        assert_eq!(lookup(&snap, "default", "private.example.com"), None);
    }

    #[test]
    fn all_four_forms_resolve_from_the_pods_namespace() {
        let snap = snapshot();
        for name in [
            "echo.default.svc.cluster.local",
            "echo.default.svc",
            "echo.default",
            "echo",
        ] {
            assert_eq!(
                lookup(&snap, "default", name),
                ips(&["10.96.0.10"]),
                "{name}"
            );
        }
    }

    #[test]
    fn case_and_trailing_dot_do_not_matter() {
        let snap = snapshot();
        for name in [
            "ECHO.Default.SVC.Cluster.Local.",
            "Echo.DEFAULT.",
            "eChO.",
            "echo.default.svc.",
        ] {
            assert_eq!(
                lookup(&snap, "default", name),
                ips(&["10.96.0.10"]),
                "{name}"
            );
        }
        // The pod's namespace, however it is spelled.
        assert_eq!(lookup(&snap, "Default", "echo"), ips(&["10.96.0.10"]));
    }

    #[test]
    fn other_namespaces_need_their_name() {
        let snap = snapshot();
        let db = ips(&["10.96.0.20", "fd00::20"]);
        assert_eq!(lookup(&snap, "default", "db.data"), db);
        assert_eq!(lookup(&snap, "default", "db.data.svc.cluster.local."), db);
        assert_eq!(lookup(&snap, "default", "db"), None);
        assert_eq!(lookup(&snap, "data", "db"), db);
        assert_eq!(lookup(&snap, "data", "echo"), None);
    }

    #[test]
    fn unknown_names_are_none() {
        let snap = snapshot();
        for name in [
            "",
            ".",
            "nope",
            "nope.default",
            "echo.nope",
            "echo.default.svc.cluster",
            "echo.default.svc.cluster.local.default.svc.cluster.local",
            "echo.default.svc.other.local",
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "echo..default",
            "example.com",
            "www.google.com",
        ] {
            assert_eq!(lookup(&snap, "default", name), None, "{name:?}");
        }
    }

    #[test]
    fn services_without_addresses_exist_but_are_empty() {
        let snap = snapshot();
        assert_eq!(lookup(&snap, "default", "headless"), Some(vec![]));
    }

    #[test]
    fn exact_hostnames_resolve_from_anywhere() {
        let snap = snapshot();
        assert_eq!(
            lookup(&snap, "data", "API.example.com."),
            ips(&["10.96.0.30"])
        );
    }
}
