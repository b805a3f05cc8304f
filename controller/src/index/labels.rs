//! What labels and annotations mean to the mesh: enrolment, waypoints, telemetry names.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use proxy_core::enrolment::DATAPLANE_MODE;
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// On a waypoint's pods (and Service): the Gateway they implement.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Set by istio-cni once it has captured a pod; honoured so Istio's node agent works too.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";

pub fn labels(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&EMPTY)
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    labels(meta).get(key).map(String::as_str)
}

/// Whether a pod is in the ambient mesh: its own `istio.io/dataplane-mode` wins (`ambient`
/// in, `none` out); without it, its namespace's label decides.
pub fn enrolled(pod: &ObjectMeta, namespace: Option<&Namespace>) -> bool {
    let annotated = pod
        .annotations
        .as_ref()
        .and_then(|a| a.get(REDIRECTION_ANNOTATION))
        .is_some_and(|v| v == "enabled");
    if annotated {
        return true;
    }
    proxy_core::enrolment::enrolled_by_labels(labels(pod), namespace.map(|ns| labels(&ns.metadata)))
}

/// Every `selector` pair is among `labels` (an empty selector matches everything).
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Istio's canonical service name: the first of these labels, else the workload name.
pub fn canonical_name(meta: &ObjectMeta, workload_name: &str) -> String {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| label(meta, k))
    .unwrap_or(workload_name)
    .to_string()
}

/// Istio's canonical revision: the first of these labels, else `latest`.
pub fn canonical_revision(meta: &ObjectMeta) -> String {
    [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| label(meta, k))
    .unwrap_or("latest")
    .to_string()
}

/// The name of what runs the pod (a Deployment, CronJob...), as Istio derives it.
pub fn workload_name(meta: &ObjectMeta) -> String {
    let pod_name = meta.name.clone().unwrap_or_default();
    if let Some(n) = label(meta, "service.istio.io/workload-name") {
        return n.to_string();
    }
    if meta.generate_name.is_none() {
        return pod_name;
    }
    let owner = meta
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|r| r.controller == Some(true)));
    let Some(owner) = owner else {
        return pod_name;
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            // <deployment>-<pod-template-hash>
            if let Some(hash) = label(meta, "pod-template-hash")
                && let Some(dep) = owner.name.strip_suffix(&format!("-{hash}"))
            {
                return dep.to_string();
            }
            owner.name.clone()
        }
        "Job" => {
            // <cronjob>-<scheduled time as 8 to 10 digits>
            if let Some((base, suffix)) = owner.name.rsplit_once('-')
                && (8..=10).contains(&suffix.len())
                && suffix.chars().all(|c| c.is_ascii_digit())
            {
                return base.to_string();
            }
            owner.name.clone()
        }
        _ => owner.name.clone(),
    }
}

/// A waypoint named by `istio.io/use-waypoint` on an object: `Some(None)` means explicitly
/// none; `None` means the object does not say.
pub fn use_waypoint(meta: &ObjectMeta, own_namespace: &str) -> Option<Option<(String, String)>> {
    let name = label(meta, USE_WAYPOINT)?;
    if name.is_empty() || name == "none" {
        return Some(None);
    }
    let ns = label(meta, USE_WAYPOINT_NAMESPACE).unwrap_or(own_namespace);
    Some(Some((ns.to_string(), name.to_string())))
}
