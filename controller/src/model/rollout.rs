//! `Rollout` (rollouts.ambient-rs.io/v1alpha1): a canary release of one HTTPRoute's backend,
//! walked by the controller step by step and judged by what the waypoints measure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "rollouts.ambient-rs.io";
pub const VERSION: &str = "v1alpha1";
/// A label on a Rollout that tells the controller to act on it now: `promote` (skip the
/// remaining steps) or `abort` (roll back). `ambientctl rollout promote|abort` sets it.
pub const ACTION_LABEL: &str = "rollouts.ambient-rs.io/action";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RolloutSpec,
    /// Written by the controller (Kubernetes); read as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// The HTTPRoute (in the Rollout's namespace) whose rules send traffic to `stable`.
    pub route_ref: RouteReference,
    /// The Service serving the current version.
    pub stable: ServiceReference,
    /// The Service serving the new version.
    pub canary: ServiceReference,
    /// Canary weights in order; after the last, the canary takes all traffic.
    #[serde(default)]
    pub steps: Vec<RolloutStep>,
    #[serde(default)]
    pub analysis: Analysis,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteReference {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReference {
    pub name: String,
    /// The Service port (the route's own when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// Percent of requests sent to the canary (0–100).
    pub weight: u32,
    /// How long to hold this weight (`30s`, `2m`) while every analysis window passes.
    pub pause: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// The analysis window (`10s` when absent): gates are judged on each window's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Requests the canary must receive in a window for it to count (10 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Percent of canary requests answered below 500, at least (99 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// The canary's 99th-percentile latency, at most (`500ms`); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<String>,
}
