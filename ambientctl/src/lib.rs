//! ambientctl: the ambient-rs CLI, and the local runtime that runs a whole mesh on one Linux
//! machine without Kubernetes or root.
//!
//! - [`lab`]: sandbox, simulated network and mesh processes.
//! - [`runtime`]: the local mesh behind `ambientctl up` (pods from a manifest directory).
//! - [`cmd`]: the subcommands.
//! - [`cli`]: the command-line grammar (also used for shell completions).
//! - [`component`]: the multi-call entry, so one binary can run every mesh component.
//! - [`demo`]: the two-node example.

pub mod cli;
pub mod cmd;
pub mod component;
pub mod demo;
pub mod lab;
pub mod runtime;
