//! Asks the controller's CA for workload certificates (Istio's `CreateCertificate`), on
//! behalf of the pods on this node.

use std::path::PathBuf;
use std::time::Duration;

use ambient_proto::identity::Identity;
use ambient_proto::istio::v1::auth::IstioCertificateRequest;
use ambient_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use ambient_proto::tls::WorkloadCertificate;
use prost_types::{Struct, Value, value::Kind};
use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::{CertificateSource, FetchError};

/// Metadata key naming the identity ztunnel asks for on a pod's behalf.
const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// A client of the CA at `address`, authenticated by the bearer token in `token_file`.
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
    token_file: PathBuf,
    ttl: Duration,
}

/// How to reach and trust the CA.
#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// `https://host:15012`.
    pub address: String,
    /// PEM roots that sign the CA's own serving certificate.
    pub root_pem: Vec<u8>,
    /// Name to verify on the CA's certificate.
    pub server_name: String,
    pub token_file: PathBuf,
    /// Lifetime to ask for.
    pub ttl: Duration,
}

impl CaClient {
    /// Builds the client; the connection is made (and re-made) on demand.
    pub fn new(config: CaClientConfig) -> Result<Self, FetchError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&config.root_pem))
            .domain_name(config.server_name.clone());
        let channel = Endpoint::from_shared(config.address.clone())
            .map_err(|e| FetchError::Config(format!("CA address {}: {e}", config.address)))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .tls_config(tls)
            .map_err(|e| FetchError::Config(e.to_string()))?
            .connect_lazy();
        Ok(CaClient {
            client: IstioCertificateServiceClient::new(channel),
            token_file: config.token_file,
            ttl: config.ttl,
        })
    }
}

impl CertificateSource for CaClient {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> futures::future::BoxFuture<'a, Result<WorkloadCertificate, FetchError>> {
        Box::pin(async move {
            // Read per request: the token may be rotated underneath us.
            let token = std::fs::read_to_string(&self.token_file).map_err(|e| {
                FetchError::Config(format!("token file {}: {e}", self.token_file.display()))
            })?;
            let key = KeyPair::generate().map_err(|e| FetchError::Csr(e.to_string()))?;
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI(
                identity
                    .to_string()
                    .as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| FetchError::Csr(e.to_string()))?,
            )];
            let csr = params
                .serialize_request(&key)
                .and_then(|c| c.pem())
                .map_err(|e| FetchError::Csr(e.to_string()))?;
            let metadata = Struct {
                fields: [(
                    IMPERSONATED_IDENTITY.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(identity.to_string())),
                    },
                )]
                .into(),
            };
            let mut request = tonic::Request::new(IstioCertificateRequest {
                csr,
                validity_duration: self.ttl.as_secs() as i64,
                metadata: Some(metadata),
            });
            let bearer = format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| FetchError::Config("token is not a valid header value".into()))?;
            request.metadata_mut().insert("authorization", bearer);
            let response = self
                .client
                .clone()
                .create_certificate(request)
                .await
                .map_err(|s| FetchError::Refused {
                    code: s.code(),
                    message: s.message().to_string(),
                })?
                .into_inner();
            let chain = response.cert_chain.concat();
            let cert =
                WorkloadCertificate::from_pem(chain.as_bytes(), key.serialize_pem().as_bytes())
                    .map_err(|e| FetchError::BadCertificate(e.to_string()))?;
            if cert.identity() != identity {
                return Err(FetchError::BadCertificate(format!(
                    "asked for {identity}, got {}",
                    cert.identity()
                )));
            }
            Ok(cert)
        })
    }
}
