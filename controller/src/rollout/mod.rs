//! Canary rollouts (`Rollout`, rollouts.ambient-rs.io/v1alpha1) judged by the waypoints'
//! own measurements: the waypoints report backend health ([`service`], kept in [`health`]);
//! the [`engine`] walks each Rollout's steps, decides the canary's weight, and the index
//! applies it to the HTTPRoute's rules (`index::l7::rollout`); in Kubernetes, [`status`]
//! writes what the engine says to each Rollout's status.

pub mod engine;
pub mod health;
pub mod service;
pub mod status;
