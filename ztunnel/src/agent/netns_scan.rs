//! Finding the network namespace of a pod that was running before the node agent (so no CNI
//! ADD ever named it): every process's namespace is visible under `/proc/<pid>/ns/net`, and
//! the addresses local to that namespace under `/proc/<pid>/net/`. A namespace holding one of
//! the pod's IPs is the pod's. Reads files only; nothing enters a namespace.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The path of a process's network namespace under `proc_root` (normally `/proc`) whose
/// namespace holds one of `ips`, skipping the namespace of this process (the node's own,
/// which may route pod addresses but never holds them). None when no process has one.
pub fn find_pod_netns(proc_root: &Path, ips: &[IpAddr]) -> Option<PathBuf> {
    if ips.is_empty() {
        return None;
    }
    let own = std::fs::read_link(proc_root.join("self/ns/net")).ok();
    let mut seen = BTreeSet::new();
    let entries = std::fs::read_dir(proc_root).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let dir = proc_root.join(pid);
        // Processes come and go while we read: skip any that vanish.
        let Ok(ns) = std::fs::read_link(dir.join("ns/net")) else {
            continue;
        };
        if Some(&ns) == own.as_ref() || !seen.insert(ns) {
            continue;
        }
        let mut local = ipv4_local_addresses(&dir);
        local.extend(ipv6_addresses(&dir));
        if ips.iter().any(|ip| local.contains(ip)) {
            return Some(dir.join("ns/net"));
        }
    }
    None
}

/// The IPv4 addresses local to a process's namespace: the `/32 host LOCAL` leaves of its
/// `net/fib_trie` (the kernel lists no IPv4 addresses elsewhere in `/proc`).
fn ipv4_local_addresses(pid_dir: &Path) -> BTreeSet<IpAddr> {
    let text = std::fs::read_to_string(pid_dir.join("net/fib_trie")).unwrap_or_default();
    parse_fib_trie(&text)
}

fn parse_fib_trie(text: &str) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(addr) = line.strip_prefix("|-- ") {
            leaf = addr.trim().parse().ok();
        } else if line.starts_with("/32 host LOCAL")
            && let Some(addr) = leaf
        {
            out.insert(IpAddr::V4(addr));
        }
    }
    out
}

/// The IPv6 addresses of a process's namespace (`net/if_inet6`: 32 hex digits, then index,
/// prefix, scope, flags, name).
fn ipv6_addresses(pid_dir: &Path) -> BTreeSet<IpAddr> {
    let text = std::fs::read_to_string(pid_dir.join("net/if_inet6")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let hex = line.split_whitespace().next()?;
            let bits = u128::from_str_radix(hex, 16).ok()?;
            (hex.len() == 32).then(|| IpAddr::V6(Ipv6Addr::from(bits)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_leaves_of_the_fib_trie_are_the_namespace_addresses() {
        let trie = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.244.1.0/24 2 0 2
        +-- 10.244.1.0/28 2 0 2
           |-- 10.244.1.0
              /24 link UNICAST
           |-- 10.244.1.5
              /32 host LOCAL
        |-- 10.244.1.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.244.1.5
        /32 host LOCAL
";
        let got = parse_fib_trie(trie);
        let want: BTreeSet<IpAddr> = ["10.244.1.5", "127.0.0.1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn this_process_is_never_its_own_pod() {
        // Our own namespace's loopback is local, yet it is skipped: the scan looks for pods.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let found = find_pod_netns(Path::new("/proc"), &[lo]);
        if let Some(path) = found {
            let own = std::fs::read_link("/proc/self/ns/net").unwrap();
            assert_ne!(std::fs::read_link(&path).unwrap(), own);
        }
        assert_eq!(find_pod_netns(Path::new("/proc"), &[]), None);
    }
}
