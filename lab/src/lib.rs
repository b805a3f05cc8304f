//! The lab: a sandbox of namespaces, a simulated cluster network inside it, and the mesh's
//! processes on that network. The local runtime (`ambientctl up`), the benchmarks and the
//! end-to-end tests all stand on it; it knows nothing of the CLI.
//!
//! - [`sandbox`]: re-run ourselves in new user + mount + network namespaces (no root needed).
//! - [`topology`]: the underlay, nodes and pods ([`Lab`]), built with
//!   `ztunnel::agent::rtnl` and [`netns`].
//! - [`mesh`]: the controller, node agents and ztunnels as processes ([`Mesh`]), started
//!   from one multi-call binary ([`component`]) or the standalone ones.
//! - [`process`], [`spawn`]: child processes in a namespace, with their logs (`spawn` holds
//!   the crate's one `unsafe`: the `pre_exec` hook).
//! - [`sniff`]: a packet capture, to check what crosses the wire.
//! - [`http`]: sockets and a small HTTP GET from inside a namespace; [`hello`]: a line
//!   server and client that say who reached whom.
//! - [`kube`]: a real Kubernetes control plane (`kube-lab`, built by `tools/build.sh`) with
//!   the upstream CRDs, for the tests of the controller's Kubernetes side.
//! - [`manifest`]: YAML for lab objects (namespaces, pods with their node and address, services).

pub mod component;
pub mod hello;
pub mod http;
pub mod kube;
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
