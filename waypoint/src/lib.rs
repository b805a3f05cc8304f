//! The waypoint: an optional L7 proxy for the services (or workloads) that ask for one.
//!
//! ztunnel sends a service's traffic here over HBONE when the service carries
//! `istio.io/use-waypoint`. The waypoint terminates HBONE, speaks the application protocol
//! (HTTP/1.1, HTTP/2, gRPC; plain TCP passes through), applies the service's routes, faults,
//! retries, traffic policy and L7 authorization, and re-originates HBONE to the chosen
//! endpoint's ztunnel.
//!
//! - [`l7`]: the decisions, free of I/O: route matching, filters, faults, retries, load
//!   balancing, outlier detection, connection-pool limits, authorization.
//! - `pipeline`: one HTTP request through the waypoint, a stage a file in the order a request
//!   meets them (authorize, route, fault, redirect / rewrite, backend and limits, send with
//!   retries and timeouts, respond with telemetry), calling the decisions of [`l7`].
//! - [`otlp`]: one span per request, exported with `proxy_core::otlp` (the access log goes
//!   out as OTLP log records through the logging layer).
//! - `workers`: the data plane's threads, one single-threaded runtime each; a connection and
//!   everything it leads to stay on one of them.
//! - [`cli`]: command-line flags and the entry point.

#![forbid(unsafe_code)]

mod admin;
mod app;
pub mod cli;
mod config;
mod context;
mod egress;
pub mod health;
pub mod http_server;
mod inbound;
pub mod l7;
pub mod otlp;
mod pipeline;
mod rewind;
mod routing;
mod stream;
mod tcp;
mod telemetry;
mod trace;
mod upstream;
mod workers;

/// The waypoint's xDS configuration path (the L7 store the xDS client fills, and the routing
/// compiled from it), for the fuzz targets in `fuzz/` and `bench waypoint-config` only: not an
/// API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::config::{L7Snapshot, L7Store, L7Subscription};
    pub use crate::routing::{Routing, RoutingSnapshot, ServiceRouting};
}
