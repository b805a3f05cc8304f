//! The mesh certificate authority: key material, who may ask, and the gRPC service.

pub mod auth;
pub mod authority;
pub mod service;
pub mod tokenreview;

pub use auth::{Authenticator, Caller, NodeTokens};
pub use authority::{CaError, CertificateAuthority};
pub use service::{CaService, DEFAULT_ZTUNNEL_ACCOUNT};
