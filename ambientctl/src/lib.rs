//! ambientctl: the ambient-rs CLI, and the local runtime that runs a whole mesh on one Linux
//! machine without Kubernetes or root.
//!
//! - [`lab`]: sandbox, simulated network and mesh processes.
//! - [`component`]: the multi-call entry, so one binary can run every mesh component.
//! - [`demo`]: the two-node example.

pub mod component;
pub mod demo;
pub mod lab;
