//! ambientctl: the ambient-rs CLI, and the local runtime that runs a whole mesh on one Linux
//! machine without Kubernetes or root (on the lab: `ambient_lab`).
//!
//! - [`runtime`]: the local mesh behind `ambientctl up` (pods from a manifest directory).
//! - [`cmd`]: the subcommands.
//! - [`cli`]: the command-line grammar (also used for shell completions).
//! - [`demo`]: the two-node example.

#![forbid(unsafe_code)]

pub mod cli;
pub mod cmd;
pub mod demo;
pub mod runtime;
