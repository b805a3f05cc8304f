//! How a proxy reaches the controller: one TLS gRPC endpoint (15012) for both xDS and the
//! CA, authenticated with a bearer token (a ztunnel's node token, a waypoint's pod token).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The flags every proxy takes to reach its control plane (flattened into ztunnel's and the
/// waypoint's command lines, so they are spelled once).
#[derive(Clone, Debug, PartialEq, clap::Args, Serialize)]
pub struct ControlPlaneArgs {
    /// The controller (xDS and CA): `https://host:15012`.
    #[arg(long, alias = "ca-address")]
    pub controller_address: String,
    /// PEM roots of the mesh; they also sign the controller's serving certificate.
    #[arg(long)]
    pub ca_root: PathBuf,
    /// Name on the controller's serving certificate.
    #[arg(
        long,
        alias = "ca-server-name",
        default_value = "istiod.istio-system.svc"
    )]
    pub controller_server_name: String,
    /// File holding this proxy's bearer token for the controller.
    #[arg(long, alias = "ca-token-file")]
    pub token_file: PathBuf,
    /// Workload certificate lifetime to ask for, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub workload_cert_ttl_secs: u64,
}

impl ControlPlaneArgs {
    /// The control plane these flags name, with the mesh roots read from `--ca-root`.
    pub fn control_plane(&self) -> Result<ControlPlane, ControlPlaneError> {
        let root_pem = std::fs::read(&self.ca_root).map_err(|e| ControlPlaneError::Roots {
            path: self.ca_root.clone(),
            reason: e.to_string(),
        })?;
        Ok(ControlPlane {
            address: self.controller_address.clone(),
            root_pem,
            server_name: self.controller_server_name.clone(),
            token_file: self.token_file.clone(),
        })
    }

    /// The certificate lifetime to ask for.
    pub fn workload_cert_ttl(&self) -> Duration {
        Duration::from_secs(self.workload_cert_ttl_secs)
    }
}

/// Where the controller is and how to trust and authenticate to it.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// `https://host:15012`.
    pub address: String,
    /// PEM roots that sign the controller's serving certificate.
    pub root_pem: Vec<u8>,
    /// Name to verify on that certificate.
    pub server_name: String,
    /// File holding this node's bearer token (re-read on every use, so it can rotate).
    pub token_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("controller address {0}: {1}")]
    Address(String, String),
    #[error("TLS to the controller: {0}")]
    Tls(String),
    #[error("token file {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error("mesh roots {path}: {reason}")]
    Roots { path: PathBuf, reason: String },
}

impl ControlPlane {
    /// A channel that connects (and reconnects) on demand. `timeout` bounds each call; pass
    /// `None` for long-lived streams.
    pub fn channel(&self, timeout: Option<Duration>) -> Result<Channel, ControlPlaneError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.root_pem))
            .domain_name(self.server_name.clone());
        let mut endpoint = Endpoint::from_shared(self.address.clone())
            .map_err(|e| ControlPlaneError::Address(self.address.clone(), e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(t) = timeout {
            endpoint = endpoint.timeout(t);
        }
        Ok(endpoint
            .tls_config(tls)
            .map_err(|e| ControlPlaneError::Tls(e.to_string()))?
            .connect_lazy())
    }

    /// `authorization: Bearer <token>`.
    pub fn bearer(&self) -> Result<MetadataValue<tonic::metadata::Ascii>, ControlPlaneError> {
        let err = |reason: String| ControlPlaneError::Token {
            path: self.token_file.clone(),
            reason,
        };
        let token = std::fs::read_to_string(&self.token_file).map_err(|e| err(e.to_string()))?;
        format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| err("not a valid header value".into()))
    }
}
