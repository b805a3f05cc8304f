//! Endpoints known by name instead of address (a `resolution: DNS` ServiceEntry's): resolved
//! with the system resolver (the node's `/etc/hosts` and `resolv.conf`, as Istio's ztunnel
//! uses the node's DNS) when a connection picks one.
//!
//! Answers are kept for [`TTL`]: the system resolver gives no record TTL, and a busy external
//! service would otherwise cost a lookup per connection. Failures are not kept, so an
//! endpoint that starts resolving is used at once.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a resolved name is reused.
pub const TTL: Duration = Duration::from_secs(30);

/// Names resolved recently. Only connections to named endpoints touch it; the lock is held
/// for a map lookup or insert, never across the lookup itself.
#[derive(Debug, Default)]
pub struct NamedEndpoints {
    cache: Mutex<HashMap<String, (Instant, Vec<IpAddr>)>>,
}

impl NamedEndpoints {
    /// The addresses `host` stands for, with `port`, in the resolver's order.
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let now = Instant::now();
        if let Some((at, ips)) = self.cache.lock().expect("poisoned").get(host)
            && now.duration_since(*at) < TTL
        {
            return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        for addr in tokio::net::lookup_host((host, port)).await? {
            if !ips.contains(&addr.ip()) {
                ips.push(addr.ip());
            }
        }
        if ips.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} has no address"),
            ));
        }
        let mut cache = self.cache.lock().expect("poisoned");
        // Stale entries go when the map grows: names come from config, so it stays small.
        if cache.len() >= 1024 {
            cache.retain(|_, (at, _)| now.duration_since(*at) < TTL);
        }
        cache.insert(host.to_string(), (now, ips.clone()));
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_through_the_system_resolver_and_keeps_the_answer() {
        let named = NamedEndpoints::default();
        // `localhost` is in every /etc/hosts.
        let addrs = named.resolve("localhost", 8080).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8080)
        );
        assert!(named.cache.lock().unwrap().contains_key("localhost"));
        // From the cache, with another port.
        let again = named.resolve("localhost", 9090).await.unwrap();
        assert_eq!(again.len(), addrs.len());
        assert!(again.iter().all(|a| a.port() == 9090));
    }

    #[tokio::test]
    async fn an_unresolvable_name_fails_and_is_not_kept() {
        let named = NamedEndpoints::default();
        // `.invalid` never resolves (RFC 6761).
        assert!(named.resolve("nothing.invalid", 80).await.is_err());
        assert!(named.cache.lock().unwrap().is_empty());
    }
}
