//! Everything ambient-rs puts on the wire, and nothing else.
//!
//! - [`istio`], [`envoy`], [`google`]: generated protobuf types and gRPC stubs, with Istio's
//!   package names and field numbers so Istio's own components can talk to ours.
//! - [`opentelemetry`]: OTLP trace and log export (the waypoint's spans, the proxies' access
//!   logs), with OTLP's names.
//! - [`identity`]: SPIFFE identities as the mesh uses them (`ns/<ns>/sa/<sa>`).
//! - [`tls`]: X.509-SVIDs and the rustls configurations for mutual TLS 1.3 between them.
//! - [`hbone`]: HTTP/2 CONNECT over that TLS: client, connection pool, server, byte relay.
//! - [`zds`]: the node agent → ztunnel protocol over a unix SEQPACKET socket with fd passing.

#![forbid(unsafe_code)]

pub mod hbone;
pub mod identity;
pub mod tls;
pub mod zds;

/// Generated from `proto/istio/**`.
#[allow(clippy::all, missing_docs)]
pub mod istio {
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
        pub mod zds {
            include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
        }
    }
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }
    pub mod v1 {
        pub mod auth {
            include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
        }
    }
}

/// Generated from `proto/ambient/**`: our own types.
#[allow(clippy::all, missing_docs)]
pub mod ambient {
    pub mod waypoint {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/ambient.waypoint.v1.rs"));
        }
    }
    pub mod mesh {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/ambient.mesh.v1.rs"));
        }
    }
    pub mod rollout {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/ambient.rollout.v1.rs"));
        }
    }
}

/// Generated from `proto/envoy/**`.
#[allow(clippy::all, missing_docs)]
pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }
}

/// Generated from `proto/opentelemetry/**`: OTLP trace and log export, with
/// OTLP's package names and field numbers so any OpenTelemetry receiver accepts them.
#[allow(clippy::all, missing_docs)]
pub mod opentelemetry {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                include!(concat!(
                    env!("OUT_DIR"),
                    "/opentelemetry.proto.common.v1.rs"
                ));
            }
        }
        pub mod resource {
            pub mod v1 {
                include!(concat!(
                    env!("OUT_DIR"),
                    "/opentelemetry.proto.resource.v1.rs"
                ));
            }
        }
        pub mod trace {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.trace.v1.rs"));
            }
        }
        pub mod logs {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.logs.v1.rs"));
            }
        }
        pub mod collector {
            pub mod trace {
                pub mod v1 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/opentelemetry.proto.collector.trace.v1.rs"
                    ));
                }
            }
            pub mod logs {
                pub mod v1 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/opentelemetry.proto.collector.logs.v1.rs"
                    ));
                }
            }
        }
    }
}

/// Generated from `proto/google/rpc` and protobuf's well-known types.
#[allow(clippy::all, missing_docs)]
pub mod google {
    pub mod protobuf {
        include!(concat!(env!("OUT_DIR"), "/google.protobuf.rs"));
    }
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// xDS type URL of workload and service resources.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// xDS type URL of L4 authorization policies.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";
/// xDS type URL of waypoint L7 configuration (our own type).
pub const L7_TYPE_URL: &str = "type.googleapis.com/ambient.waypoint.v1.L7Resource";
/// Mesh-wide settings for ztunnels (one resource, [`MESH_RESOURCE`]).
pub const MESH_TYPE_URL: &str = "type.googleapis.com/ambient.mesh.v1.MeshSettings";
/// The name of the one [`MESH_TYPE_URL`] resource.
pub const MESH_RESOURCE: &str = "mesh";
