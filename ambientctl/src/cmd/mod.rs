//! The `ambientctl` subcommands, one module per group.
//!
//! - [`mesh`]: `up`, `down`, `status`, `logs`, `exec` (the local runtime).
//! - [`proxy_config`]: `ztunnel-config`, `proxy-status`.
//! - [`waypoint`]: `waypoint generate|apply|list|status|delete`.
//! - [`rollout`]: `rollout status|promote|abort` (canary rollouts).
//! - [`dashboard`]: `dashboard` (the live service graph in a browser).
//! - [`prometheus`]: `prometheus-config` (Prometheus scraping the mesh).
//! - [`output`]: tables, JSON and YAML.
//! - [`install`] / [`uninstall`]: ambient-rs on a Kubernetes cluster.
//! - [`kubeconfig`]: reaching a Kubernetes cluster.

pub mod analyze;
pub mod dashboard;
pub mod install;
pub mod kubeconfig;
pub mod mesh;
pub mod output;
pub mod prometheus;
pub mod proxy_config;
pub mod rollout;
pub mod uninstall;
pub mod waypoint;
