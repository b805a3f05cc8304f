//! Which pods are in the ambient mesh: one rule for the controller (which describes them to
//! the proxies) and the node agent (which captures their traffic), so the two never disagree.

use std::collections::BTreeMap;

/// The label that enrols a namespace or a pod (`ambient`), or keeps a pod out (`none`).
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";

/// The value of [`DATAPLANE_MODE`] that enrols.
pub const AMBIENT: &str = "ambient";

/// Whether a pod with `pod_labels` in a namespace with `namespace_labels` (None: the
/// namespace is unknown) is in the mesh: the pod's own label wins (`ambient` in, anything
/// else out); without it, the namespace's label decides.
pub fn enrolled_by_labels(
    pod_labels: &BTreeMap<String, String>,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> bool {
    match pod_labels.get(DATAPLANE_MODE) {
        Some(mode) => mode == AMBIENT,
        None => namespace_labels
            .and_then(|l| l.get(DATAPLANE_MODE))
            .is_some_and(|mode| mode == AMBIENT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_pod_label_wins_over_the_namespace() {
        let ns_in = labels(&[(DATAPLANE_MODE, "ambient")]);
        let ns_out = labels(&[]);
        let pod_none = labels(&[(DATAPLANE_MODE, "none")]);
        let pod_in = labels(&[(DATAPLANE_MODE, "ambient")]);
        let plain = labels(&[("app", "web")]);
        assert!(enrolled_by_labels(&plain, Some(&ns_in)));
        assert!(!enrolled_by_labels(&pod_none, Some(&ns_in)));
        assert!(enrolled_by_labels(&pod_in, Some(&ns_out)));
        assert!(enrolled_by_labels(&pod_in, None));
        assert!(!enrolled_by_labels(&plain, Some(&ns_out)));
        assert!(!enrolled_by_labels(&plain, None));
        // Any other value keeps the pod out, as Istio reads it.
        let pod_sidecar = labels(&[(DATAPLANE_MODE, "sidecar")]);
        assert!(!enrolled_by_labels(&pod_sidecar, Some(&ns_in)));
    }
}
