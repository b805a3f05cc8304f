//! ambient-rs's own policy kinds, `policy.ambient-rs.io/v1alpha1`: [`LocalRateLimitPolicy`].
//!
//! Attached the Gateway API way (`targetRefs`, status conditions on the policy); the rate
//! semantics follow Linkerd's `HTTPLocalRateLimitPolicy` (a total limit, a fair per-identity
//! limit, overrides), with overrides that may also name requests (method, path, headers).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use serde::{Deserialize, Serialize};

use super::route::HttpRouteMatch;

pub const GROUP: &str = "policy.ambient-rs.io";
pub const VERSION: &str = "v1alpha1";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalRateLimitPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: LocalRateLimitPolicySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PolicyStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalRateLimitPolicySpec {
    /// A Service, an HTTPRoute (optionally one named rule, `sectionName`) or a waypoint
    /// Gateway, in the policy's namespace.
    #[serde(default)]
    pub target_refs: Vec<LocalPolicyTargetReference>,
    /// Every request to the target, whoever sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<RateLimit>,
    /// Each client identity on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<RateLimit>,
    /// In order; the first that applies to a request replaces `identity` for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<RateLimitOverride>,
}

/// Gateway API's `LocalPolicyTargetReferenceWithSectionName`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalPolicyTargetReference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: f64,
    /// Requests allowed at once after a quiet spell; one second's worth when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitOverride {
    pub requests_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// ServiceAccounts whose workloads this override is for (empty: every client).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_refs: Vec<ClientReference>,
    /// Requests this override is for, as HTTPRoute matches (empty: every request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
}

/// A client: `kind: ServiceAccount` (group `""`), in the policy's namespace unless named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientReference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Gateway API's `PolicyStatus` shape, reduced to the conditions the controller writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
