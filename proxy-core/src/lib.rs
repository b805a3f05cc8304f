//! What both proxies (ztunnel and the waypoint) run besides their data paths.
//!
//! A proxy learns its configuration from the controller over delta xDS ([`xds`], through
//! [`control_plane`]) into one lock-free store ([`state`]: workloads, services and the L4
//! policies of [`rbac`]); it gets certificates for the identities it serves from the CA
//! ([`identity`]); it answers admin, readiness and metrics requests ([`admin`],
//! [`readiness`]) and labels its metrics the way Istio does ([`metrics`], read back by
//! [`exposition`]); it exports telemetry over OTLP ([`otlp`]: spans, and access logs as
//! log records); and it starts with
//! the same logging and memory settings ([`logging`], [`memory`]) and stops on the same
//! signals ([`shutdown`]). Every component's typed command line renders itself back into
//! arguments through [`command_line`], so whoever starts a component spells no flag.
//!
//! What is on the wire (protobuf messages, HBONE, TLS, ZDS) is `ambient_proto`'s; what each
//! proxy does with a connection or a request is its own crate's. Neither proxy depends on the
//! other.

#![forbid(unsafe_code)]

pub mod admin;
pub mod command_line;
pub mod control_plane;
pub mod enrolment;
pub mod exposition;
pub mod identity;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod named_endpoint;
pub mod otlp;
pub mod rbac;
pub mod readiness;
pub mod shutdown;
pub mod state;
#[doc(hidden)]
pub mod test_pki;
pub mod xds;
