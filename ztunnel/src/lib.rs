//! ztunnel: the per-node L4 tunnel of ambient-rs, and its node agent.
//!
//! Follow one connection: capture rules ([`agent::capture`]) send a pod's TCP to its
//! [`proxy::outbound`] listener, which resolves the destination in the proxy core's state
//! (`proxy_core::state`) and opens HBONE (`ambient_proto::hbone`) with a certificate from
//! `proxy_core::identity`; the peer's [`proxy::inbound`] terminates it, checks L4 policy and
//! connects to the app. Pods arrive over ZDS ([`inpod`]) from the node agent ([`agent`]). A
//! pod's DNS queries are answered in the pod by [`dns`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod app;
pub mod cli;
pub mod cni_plugin;
pub mod dns;
pub mod inpod;
pub mod mesh_settings;
pub mod metrics;
pub mod proxy;
