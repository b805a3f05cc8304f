//! Authenticating proxies in Kubernetes: a TokenReview of the bearer token (a bound service
//! account token), which names the service account, the pod and the node it runs on.
//!
//! - A token of a ztunnel service account (`--ztunnel-service-accounts`) speaks for its node
//!   ([`Caller::Node`]).
//! - Any other token bound to a pod that is a waypoint instance (labelled
//!   `gateway.networking.k8s.io/gateway-name` with a Gateway of class `istio-waypoint` of that
//!   name in its namespace, running as the token's service account) speaks for that waypoint
//!   only ([`Caller::Waypoint`]): it may obtain its own identity and nothing else.
//! - Anything else is refused.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};

use super::auth::{AuthError, Authenticator, Caller};
use crate::index::waypoint::GATEWAY_NAME_LABEL;
use crate::model::gateway::{Gateway, WAYPOINT_CLASS};

/// The audience ztunnels' and waypoints' service account tokens are projected for.
pub const CA_AUDIENCE: &str = "ambient-ca";

/// Extra info keys bound tokens carry.
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

pub struct TokenReviewAuthenticator {
    client: Client,
    api: Api<TokenReview>,
    /// Service accounts (`namespace/name`) whose tokens are ztunnels'.
    ztunnel_accounts: Vec<String>,
}

impl TokenReviewAuthenticator {
    pub fn new(client: Client, ztunnel_accounts: Vec<String>) -> Self {
        TokenReviewAuthenticator {
            api: Api::all(client.clone()),
            client,
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
                // Proxies present a projected token minted for the CA (`ambientctl install`,
                // the waypoint Deployment).
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
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|v| v.first().cloned());
        if self.ztunnel_accounts.contains(&account) {
            let node = first(NODE_NAME_EXTRA).ok_or(AuthError::NoNode)?;
            return Ok(Caller::Node(node));
        }
        // Perhaps a waypoint instance: the token must be bound to a pod.
        let (Some((namespace, service_account)), Some(pod_name)) =
            (account.split_once('/'), first(POD_NAME_EXTRA))
        else {
            return Err(AuthError::NotZtunnel(username));
        };
        let unavailable = |e: kube::Error| AuthError::Unavailable(e.to_string());
        let pod = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get_opt(&pod_name)
            .await
            .map_err(unavailable)?;
        let gateway_name = pod
            .as_ref()
            .and_then(|p| p.metadata.labels.as_ref()?.get(GATEWAY_NAME_LABEL).cloned());
        let gateway = match gateway_name {
            Some(name) => Api::<Gateway>::namespaced(self.client.clone(), namespace)
                .get_opt(&name)
                .await
                .map_err(unavailable)?,
            None => None,
        };
        waypoint_caller(
            &BoundToken {
                namespace,
                service_account,
                pod: &pod_name,
                pod_uid: first(POD_UID_EXTRA).as_deref(),
                node: first(NODE_NAME_EXTRA).as_deref(),
            },
            pod.as_ref(),
            gateway.as_ref(),
        )
    }
}

/// What a reviewed pod-bound token says about its holder.
#[derive(Clone, Copy, Debug)]
pub struct BoundToken<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub pod: &'a str,
    pub pod_uid: Option<&'a str>,
    pub node: Option<&'a str>,
}

/// Whether a token bound to `token.pod` belongs to a waypoint instance: the pod exists (the
/// same pod the token was issued to), runs as the token's service account and is labelled
/// with the name of a waypoint Gateway of its namespace.
pub fn waypoint_caller(
    token: &BoundToken<'_>,
    pod: Option<&Pod>,
    gateway: Option<&Gateway>,
) -> Result<Caller, AuthError> {
    let account = format!("{}/{}", token.namespace, token.service_account);
    let refuse = |reason: String| AuthError::NotWaypoint {
        account: account.clone(),
        reason,
    };
    let shown = format!("pod {}/{}", token.namespace, token.pod);
    let pod = pod.ok_or_else(|| refuse(format!("{shown} does not exist")))?;
    if let Some(uid) = token.pod_uid
        && pod.metadata.uid.as_deref() != Some(uid)
    {
        return Err(refuse(format!(
            "the token was issued to an earlier {shown}"
        )));
    }
    let runs_as = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    if runs_as != token.service_account {
        return Err(refuse(format!("{shown} runs as {runs_as}")));
    }
    let Some(gateway_name) = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(GATEWAY_NAME_LABEL))
    else {
        return Err(refuse(format!("{shown} has no {GATEWAY_NAME_LABEL} label")));
    };
    match gateway {
        Some(g)
            if g.metadata.name.as_deref() == Some(gateway_name.as_str())
                && g.spec.gateway_class_name == WAYPOINT_CLASS => {}
        _ => {
            return Err(refuse(format!(
                "no Gateway {}/{gateway_name} of class {WAYPOINT_CLASS}",
                token.namespace
            )));
        }
    }
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .or(token.node)
        .unwrap_or_default();
    Ok(Caller::Waypoint {
        namespace: token.namespace.to_string(),
        service_account: token.service_account.to_string(),
        pod: token.pod.to_string(),
        node: node.to_string(),
    })
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(self.review(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn pod(labels: &[(&str, &str)], sa: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("waypoint-1".into()),
                namespace: Some("shop".into()),
                uid: Some("uid-1".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some(sa.into()),
                node_name: Some("node-a".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn gateway(name: &str, class: &str) -> Gateway {
        let mut g = Gateway::default();
        g.metadata.name = Some(name.into());
        g.metadata.namespace = Some("shop".into());
        g.spec.gateway_class_name = class.into();
        g
    }

    const TOKEN: BoundToken<'static> = BoundToken {
        namespace: "shop",
        service_account: "waypoint",
        pod: "waypoint-1",
        pod_uid: Some("uid-1"),
        node: None,
    };

    #[test]
    fn a_waypoint_instance_is_a_waypoint_caller() {
        let p = pod(&[(GATEWAY_NAME_LABEL, "waypoint")], "waypoint");
        let g = gateway("waypoint", WAYPOINT_CLASS);
        assert_eq!(
            waypoint_caller(&TOKEN, Some(&p), Some(&g)),
            Ok(Caller::Waypoint {
                namespace: "shop".into(),
                service_account: "waypoint".into(),
                pod: "waypoint-1".into(),
                node: "node-a".into(),
            })
        );
    }

    #[test]
    fn other_pods_are_not_waypoints() {
        let g = gateway("waypoint", WAYPOINT_CLASS);
        let labelled = pod(&[(GATEWAY_NAME_LABEL, "waypoint")], "waypoint");
        let refused = |r: Result<Caller, AuthError>, why: &str| match r {
            Err(AuthError::NotWaypoint { reason, .. }) => {
                assert!(reason.contains(why), "{reason} lacks {why:?}")
            }
            other => panic!("expected a refusal ({why}), got {other:?}"),
        };
        refused(waypoint_caller(&TOKEN, None, Some(&g)), "does not exist");
        refused(
            waypoint_caller(&TOKEN, Some(&pod(&[], "waypoint")), Some(&g)),
            "label",
        );
        refused(
            waypoint_caller(
                &TOKEN,
                Some(&pod(&[(GATEWAY_NAME_LABEL, "waypoint")], "other")),
                Some(&g),
            ),
            "runs as other",
        );
        refused(
            waypoint_caller(&TOKEN, Some(&labelled), Some(&gateway("waypoint", "istio"))),
            "no Gateway",
        );
        refused(waypoint_caller(&TOKEN, Some(&labelled), None), "no Gateway");
        let stale = BoundToken {
            pod_uid: Some("uid-0"),
            ..TOKEN
        };
        refused(
            waypoint_caller(&stale, Some(&labelled), Some(&g)),
            "earlier",
        );
    }
}
