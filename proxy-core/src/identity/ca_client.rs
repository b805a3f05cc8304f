//! Asks the controller's CA for workload certificates (Istio's `CreateCertificate`), on
//! behalf of the pods on this node.

use std::time::Duration;

use ambient_proto::google::protobuf::{Struct, Value, value::Kind};
use ambient_proto::identity::Identity;
use ambient_proto::istio::v1::auth::IstioCertificateRequest;
use ambient_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use ambient_proto::tls::WorkloadCertificate;
use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::transport::Channel;

use super::{CertificateSource, FetchError};
use crate::control_plane::ControlPlane;

/// Metadata key naming the identity ztunnel asks for on a pod's behalf.
const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// A client of the controller's CA.
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
    control_plane: ControlPlane,
    ttl: Duration,
}

impl CaClient {
    /// Builds the client; the connection is made (and re-made) on demand. `ttl` is the
    /// certificate lifetime to ask for.
    pub fn new(control_plane: ControlPlane, ttl: Duration) -> Result<Self, FetchError> {
        let channel = control_plane
            .channel(Some(Duration::from_secs(10)))
            .map_err(|e| FetchError::Config(e.to_string()))?;
        Ok(CaClient {
            client: IstioCertificateServiceClient::new(channel),
            control_plane,
            ttl,
        })
    }
}

impl CertificateSource for CaClient {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> futures::future::BoxFuture<'a, Result<WorkloadCertificate, FetchError>> {
        Box::pin(async move {
            let bearer = self
                .control_plane
                .bearer()
                .map_err(|e| FetchError::Config(e.to_string()))?;
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
