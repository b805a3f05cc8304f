//! The local runtime's building blocks: a sandbox of namespaces, a simulated cluster network
//! inside it, and the mesh's processes on that network. Tests and `ambientctl` both use it.
//!
//! - [`sandbox`]: re-run ourselves in new user + mount + network namespaces (no root needed).
//! - [`topology`]: the underlay, nodes and pods ([`Lab`]), built with
//!   `ztunnel::agent::rtnl` and [`netns`].
//! - [`mesh`]: the controller, node agents and ztunnels as processes ([`Mesh`]).
//! - [`sniff`]: a packet capture, to check what crosses the wire.
//! - [`http`]: sockets and a small HTTP GET from inside a namespace.
//! - [`manifest`]: YAML for lab objects (namespaces, pods with their node and address, services).

pub mod http;
pub mod manifest;
pub mod mesh;
pub mod netns;
pub mod process;
pub mod sandbox;
pub mod sniff;
pub mod spawn;
pub mod topology;

pub use mesh::{Mesh, MeshError, MeshOptions};
pub use topology::{Lab, TopologyError};
