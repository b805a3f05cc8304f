//! The in-pod DNS proxy: what an enrolled pod's lookups reach instead of its nameserver.
//!
//! Capture rules ([`crate::agent::capture`]) redirect everything a pod sends to port 53, over
//! UDP and TCP, to ztunnel's port 15053 inside the pod's namespace. There ztunnel answers from
//! its own view of the mesh and nothing else: a query never leaves the pod.
//!
//! - [`resolve`]: which addresses a name stands for, from a [`proxy_core::state::Snapshot`]
//!   (Kubernetes' service names, with the pod's namespace as its search domain);
//! - [`answer`]: one DNS message in, one out (the wire format, by `hickory-proto`);
//! - [`server`]: the UDP and TCP listeners that carry them.

pub mod answer;
pub mod resolve;
pub mod server;

/// The DNS wire format, re-exported so that clients (tests, tools) encode queries with the
/// same library the proxy decodes them with.
pub use hickory_proto as wire;

/// The cluster's DNS domain: service hostnames are `<name>.<namespace>.svc.<domain>`.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Time to live of every answer, in seconds: short, as the mesh changes under it.
pub const TTL: u32 = 30;
