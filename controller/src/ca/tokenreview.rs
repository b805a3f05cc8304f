//! Authenticating ztunnels in Kubernetes: a TokenReview of the bearer token (a bound service
//! account token), which names the service account and the node its pod runs on.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

use super::auth::{AuthError, Authenticator, Caller};

/// The audience ztunnels' service account tokens are projected for.
pub const CA_AUDIENCE: &str = "ambient-ca";

/// Extra info key bound tokens carry with the node name.
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

pub struct TokenReviewAuthenticator {
    api: Api<TokenReview>,
    /// Service accounts (`namespace/name`) whose tokens are ztunnels'.
    ztunnel_accounts: Vec<String>,
}

impl TokenReviewAuthenticator {
    pub fn new(client: Client, ztunnel_accounts: Vec<String>) -> Self {
        TokenReviewAuthenticator {
            api: Api::all(client),
            ztunnel_accounts,
        }
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                // ztunnels present a projected token minted for the CA (`ambientctl install`).
                audiences: Some(vec![CA_AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::UnknownToken);
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let account = username
            .strip_prefix("system:serviceaccount:")
            .map(|s| s.replacen(':', "/", 1))
            .unwrap_or_default();
        if !self.ztunnel_accounts.contains(&account) {
            return Err(AuthError::NotZtunnel(username));
        }
        let node = user
            .extra
            .and_then(|e| e.get(NODE_NAME_EXTRA).and_then(|v| v.first().cloned()))
            .ok_or(AuthError::NoNode)?;
        Ok(Caller::Node(node))
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(self.review(token))
    }
}
