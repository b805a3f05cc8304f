//! The ambient-rs controller: turns cluster state into proxy configuration and signs workload
//! certificates.
//!
//! - [`ca`]: the certificate authority and its `CreateCertificate` service.
//! - [`nodes`]: which identities run where (what a ztunnel may ask the CA for).
//! - [`server`]: the controller process: TLS gRPC on 15012, monitoring on 15014.
//! - [`cli`]: command-line entry point.

pub mod ca;
pub mod cli;
pub mod monitoring;
pub mod nodes;
pub mod server;
