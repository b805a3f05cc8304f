//! The ambient-rs controller: turns cluster state into proxy configuration and signs workload
//! certificates.
//!
//! Follow a configuration change: a [`source`] (Kubernetes or a manifest directory) emits
//! [`model::Change`]s; they update the [`model::ClusterState`]; the [`index`] turns that into
//! WDS workloads, services and authorizations; [`xds`] pushes the difference to every
//! connected proxy over delta ADS. The [`ca`] signs workload certificates for ztunnels, for
//! pods on their own node (the index knows which), and for waypoints, their own identity. In
//! Kubernetes, the [`deployer`] deploys waypoints for waypoint Gateways and writes their
//! status.

#![forbid(unsafe_code)]

pub mod ca;
pub mod cli;
pub mod deployer;
pub mod index;
pub mod model;
pub mod monitoring;
pub mod nodes;
pub mod policy_status;
pub mod push;
pub mod rollout;
pub mod server;
pub mod source;
pub mod xds;
