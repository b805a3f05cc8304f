//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: authenticate the caller, decide
//! which identity it may have, sign.

use std::sync::Arc;

use ambient_proto::google::protobuf::value::Kind;
use ambient_proto::identity::Identity;
use ambient_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use ambient_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::auth::{Authenticator, Caller, caller};
use super::authority::{CaError, CertificateAuthority};
use crate::nodes::NodeDirectory;

/// The service account ztunnels run as unless configured otherwise (Istio's).
pub const DEFAULT_ZTUNNEL_ACCOUNT: &str = "istio-system/ztunnel";

/// Metadata key ztunnel uses to ask for a workload's identity on its behalf.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// The CA's gRPC face.
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    auth: Arc<dyn Authenticator>,
    nodes: Arc<dyn NodeDirectory>,
    /// Service accounts (`namespace/name`) ztunnels run as: a node's ztunnel may also obtain
    /// these identities, its own (Istio's ztunnel asks for it for its own listener).
    ztunnel_accounts: Vec<String>,
}

impl CaService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        auth: Arc<dyn Authenticator>,
        nodes: Arc<dyn NodeDirectory>,
    ) -> Self {
        CaService {
            ca,
            auth,
            nodes,
            ztunnel_accounts: vec![DEFAULT_ZTUNNEL_ACCOUNT.to_string()],
        }
    }

    /// The service accounts ztunnels run as (default `istio-system/ztunnel`).
    pub fn with_ztunnel_accounts(mut self, accounts: Vec<String>) -> Self {
        self.ztunnel_accounts = accounts;
        self
    }

    /// Whether `id` is the identity of a ztunnel service account.
    fn is_ztunnel_identity(&self, id: &Identity) -> bool {
        self.ztunnel_accounts.iter().any(|account| {
            account.split_once('/').is_some_and(|(namespace, name)| {
                Identity::new(self.ca.trust_domain(), namespace, name).is_ok_and(|own| own == *id)
            })
        })
    }

    /// Decides the identity to sign for, or why not.
    fn authorize(
        &self,
        caller: &Caller,
        req: &IstioCertificateRequest,
    ) -> Result<Identity, Status> {
        let requested = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .map(|v| match &v.kind {
                Some(Kind::StringValue(s)) => s
                    .parse::<Identity>()
                    .map_err(|e| Status::invalid_argument(format!("{IMPERSONATED_IDENTITY}: {e}"))),
                _ => Err(Status::invalid_argument(format!(
                    "{IMPERSONATED_IDENTITY} must be a string"
                ))),
            })
            .transpose()?;
        match caller {
            Caller::Node(node) => {
                let id = requested.ok_or_else(|| {
                    Status::permission_denied(format!(
                        "node {node} must name the workload identity it asks for in {IMPERSONATED_IDENTITY}"
                    ))
                })?;
                if id.trust_domain() != self.ca.trust_domain() {
                    return Err(Status::permission_denied(format!(
                        "{id} is not in trust domain {}",
                        self.ca.trust_domain()
                    )));
                }
                if !self.nodes.runs_on(node, &id) && !self.is_ztunnel_identity(&id) {
                    return Err(Status::permission_denied(format!(
                        "node {node} runs no pod with identity {id}; a ztunnel may only obtain identities of pods on its own node"
                    )));
                }
                Ok(id)
            }
            Caller::Waypoint {
                namespace,
                service_account,
                ..
            } => {
                let own = Identity::new(self.ca.trust_domain(), namespace, service_account)
                    .map_err(|e| {
                        Status::permission_denied(format!(
                            "waypoint {namespace}/{service_account} has no valid identity: {e}"
                        ))
                    })?;
                match requested {
                    Some(id) if id != own => Err(Status::permission_denied(format!(
                        "waypoint {namespace}/{service_account} may only obtain its own identity {own}, not {id}"
                    ))),
                    _ => Ok(own),
                }
            }
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        metrics::counter!("citadel_server_csr_count").increment(1);
        let caller = caller(self.auth.as_ref(), request.metadata())
            .await
            .map_err(|e| {
                metrics::counter!("citadel_server_authentication_failure_count").increment(1);
                warn!(error = %e, "CA request refused: authentication");
                Status::unauthenticated(e.to_string())
            })?;
        let req = request.into_inner();
        let identity = self.authorize(&caller, &req).inspect_err(|s| {
            warn!(caller = ?caller, reason = %s.message(), "CA request refused: authorization");
        })?;
        let chain = self
            .ca
            .sign_workload(&req.csr, &identity, req.validity_duration)
            .map_err(|e| {
                warn!(caller = ?caller, identity = %identity, error = %e, "CA request refused");
                match e {
                    CaError::MalformedCsr(_) => {
                        metrics::counter!("citadel_server_csr_parsing_err_count").increment(1);
                        Status::invalid_argument(e.to_string())
                    }
                    CaError::BadTtl(_) => Status::invalid_argument(e.to_string()),
                    CaError::CsrIdentityMismatch { .. } => Status::permission_denied(e.to_string()),
                    _ => Status::internal(e.to_string()),
                }
            })?;
        metrics::counter!("citadel_server_success_cert_issuance_count").increment(1);
        info!(caller = ?caller, identity = %identity, "issued workload certificate");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambient_proto::google::protobuf::{Struct, Value};

    struct NoNodes;

    impl NodeDirectory for NoNodes {
        fn runs_on(&self, _: &str, _: &Identity) -> bool {
            false
        }
        fn nodes(&self) -> Vec<String> {
            Vec::new()
        }
    }

    struct Refuse;

    impl Authenticator for Refuse {
        fn authenticate<'a>(
            &'a self,
            _: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<Caller, super::super::auth::AuthError>> {
            Box::pin(std::future::ready(Err(
                super::super::auth::AuthError::UnknownToken,
            )))
        }
    }

    fn request(identity: Option<&str>) -> IstioCertificateRequest {
        IstioCertificateRequest {
            csr: String::new(),
            validity_duration: 3600,
            metadata: identity.map(|id| Struct {
                fields: [(
                    IMPERSONATED_IDENTITY.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(id.to_string())),
                    },
                )]
                .into_iter()
                .collect(),
            }),
        }
    }

    #[test]
    fn a_waypoint_obtains_its_own_identity_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_generate(dir.path(), "cluster.local").unwrap();
        let service = CaService::new(Arc::new(ca), Arc::new(Refuse), Arc::new(NoNodes));
        let caller = Caller::Waypoint {
            namespace: "shop".into(),
            service_account: "waypoint".into(),
            pod: "waypoint-7f9c".into(),
            node: "node-a".into(),
        };
        let own = "spiffe://cluster.local/ns/shop/sa/waypoint";
        assert_eq!(
            service
                .authorize(&caller, &request(Some(own)))
                .unwrap()
                .to_string(),
            own
        );
        assert_eq!(
            service
                .authorize(&caller, &request(None))
                .unwrap()
                .to_string(),
            own,
            "without ImpersonatedIdentity: its own"
        );
        for other in [
            "spiffe://cluster.local/ns/shop/sa/reviews",
            "spiffe://cluster.local/ns/other/sa/waypoint",
            "spiffe://example.org/ns/shop/sa/waypoint",
        ] {
            let err = service
                .authorize(&caller, &request(Some(other)))
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{other}");
            assert!(
                err.message().contains("its own identity"),
                "{}",
                err.message()
            );
        }
        // A node whose directory lists nothing obtains nothing.
        let node = Caller::Node("node-a".into());
        assert_eq!(
            service
                .authorize(&node, &request(Some(own)))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn a_nodes_ztunnel_obtains_its_own_service_accounts_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_generate(dir.path(), "cluster.local").unwrap();
        let node = Caller::Node("node-a".into());
        let own = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";
        let service = CaService::new(Arc::new(ca), Arc::new(Refuse), Arc::new(NoNodes));
        assert_eq!(
            service
                .authorize(&node, &request(Some(own)))
                .unwrap()
                .to_string(),
            own,
            "the default ztunnel account, with no such pod on the node"
        );
        // Only ztunnel accounts: not another pod's identity, not another trust domain's.
        for other in [
            "spiffe://cluster.local/ns/istio-system/sa/istiod",
            "spiffe://example.org/ns/istio-system/sa/ztunnel",
        ] {
            let err = service.authorize(&node, &request(Some(other))).unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{other}");
        }
        // Configured accounts replace the default.
        let service = service.with_ztunnel_accounts(vec!["mesh/ztunnel".into()]);
        assert!(service.authorize(&node, &request(Some(own))).is_err());
        assert!(
            service
                .authorize(
                    &node,
                    &request(Some("spiffe://cluster.local/ns/mesh/sa/ztunnel"))
                )
                .is_ok()
        );
    }
}
