//! What the local runtime decided for the objects of a manifest directory, in the roles
//! Kubernetes gives the scheduler, the kubelet and the API server's allocators: each Pod's
//! node, address and phase, and each Service's cluster IP.
//!
//! Users write manifests as for a cluster (no `nodeName`, no `podIP`, usually no
//! `clusterIP`); the runtime records its decisions in one JSON file, and the manifest source
//! fills them into the objects it read. A value the user did write wins. Keeping them apart
//! leaves the user's files untouched, so every diagnostic still points at the user's line.
//!
//! Two more parts, both optional (older files load unchanged):
//! - `generated`: whole Kubernetes objects the runtime created itself (a waypoint's Pod,
//!   Service and ServiceAccount, Gateways applied with the CLI). The manifest source reads
//!   them exactly as if from a manifest file (reported as coming from `runtime`), and the
//!   decisions above apply to them too.
//! - `labels`: label overlays by `<Kind>/<namespace>/<name>` (namespace empty for
//!   cluster-scoped kinds: `Namespace//bookinfo`), applied on top of the object's own labels;
//!   `null` removes a label. `ambientctl waypoint apply --enroll-namespace` uses them.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus, ServiceSpec};
use serde::{Deserialize, Serialize};

use crate::model::Object;

/// A Pod's placement and state, as the kubelet would report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodAllocation {
    pub node_name: String,
    pub pod_ip: String,
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    pub phase: String,
}

/// A Service's virtual IP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAllocation {
    pub cluster_ip: String,
}

/// Every decision, keyed by `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allocations {
    #[serde(default)]
    pub pods: BTreeMap<String, PodAllocation>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceAllocation>,
    /// Objects the runtime created (full Kubernetes objects, as JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated: Vec<serde_json::Value>,
    /// Label overlays by `<Kind>/<namespace>/<name>`; `None` removes the label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, BTreeMap<String, Option<String>>>,
}

/// `<Kind>/<namespace>/<name>` (namespace empty for cluster-scoped kinds): how `labels` names
/// an object.
pub fn overlay_key(object: &Object) -> String {
    let k = object.key();
    format!("{}/{}/{}", k.kind, k.namespace, k.name)
}

#[derive(Debug, thiserror::Error)]
pub enum AllocationsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid allocations file: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

fn key(object: &Object) -> String {
    let k = object.key();
    format!("{}/{}", k.namespace, k.name)
}

impl Allocations {
    /// Reads the file; a missing file is an empty set of decisions.
    pub fn load(path: &Path) -> Result<Self, AllocationsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(AllocationsError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        serde_json::from_str(&text).map_err(|source| AllocationsError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Writes the file so that a reader never sees half of it.
    pub fn save(&self, path: &Path) -> Result<(), AllocationsError> {
        let err = |source| AllocationsError::Write {
            path: path.display().to_string(),
            source,
        };
        let text = serde_json::to_string_pretty(self).expect("plain data serializes");
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Applies the label overlays to `objects`; returns the overlay keys that matched no
    /// object.
    pub fn apply_labels(&self, objects: &mut [Object]) -> Vec<String> {
        let mut unused: Vec<&String> = self.labels.keys().collect();
        for object in objects.iter_mut() {
            let key = overlay_key(object);
            let Some(overlay) = self.labels.get(&key) else {
                continue;
            };
            unused.retain(|k| **k != key);
            let labels = object.meta_mut().labels.get_or_insert_with(BTreeMap::new);
            for (label, value) in overlay {
                match value {
                    Some(v) => {
                        labels.insert(label.clone(), v.clone());
                    }
                    None => {
                        labels.remove(label);
                    }
                }
            }
        }
        unused.into_iter().cloned().collect()
    }

    /// Fills the decisions into `objects`, leaving every field the user set alone.
    pub fn apply(&self, objects: &mut [Object]) {
        for object in objects.iter_mut() {
            let k = key(object);
            match object {
                Object::Pod(pod) => {
                    let Some(a) = self.pods.get(&k) else { continue };
                    let spec = pod.spec.get_or_insert_with(PodSpec::default);
                    if spec.node_name.as_deref().unwrap_or("").is_empty() {
                        spec.node_name = Some(a.node_name.clone());
                    }
                    let status = pod.status.get_or_insert_with(PodStatus::default);
                    if status.pod_ip.as_deref().unwrap_or("").is_empty() && !a.pod_ip.is_empty() {
                        status.pod_ip = Some(a.pod_ip.clone());
                        status.pod_ips = Some(vec![PodIP {
                            ip: a.pod_ip.clone(),
                        }]);
                    }
                    if status.phase.is_none() && !a.phase.is_empty() {
                        status.phase = Some(a.phase.clone());
                    }
                }
                Object::Service(service) => {
                    let Some(a) = self.services.get(&k) else {
                        continue;
                    };
                    let spec = service.spec.get_or_insert_with(ServiceSpec::default);
                    if spec.cluster_ip.as_deref().unwrap_or("").is_empty() {
                        spec.cluster_ip = Some(a.cluster_ip.clone());
                        spec.cluster_ips = Some(vec![a.cluster_ip.clone()]);
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifests::parse_file;

    fn objects(yaml: &str) -> Vec<Object> {
        let parsed = parse_file(Path::new("t.yaml"), yaml, None);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        parsed.objects
    }

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: ns}\nspec:\n  containers: [{name: c, image: i}]\n";

    #[test]
    fn fills_placement_and_addresses() {
        let mut objs = objects(&format!(
            "{POD}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec:\n  ports: [{{port: 80}}]\n"
        ));
        let mut a = Allocations::default();
        a.pods.insert(
            "ns/a".into(),
            PodAllocation {
                node_name: "node-a".into(),
                pod_ip: "10.244.1.2".into(),
                phase: "Running".into(),
            },
        );
        a.services.insert(
            "ns/s".into(),
            ServiceAllocation {
                cluster_ip: "10.96.0.10".into(),
            },
        );
        a.apply(&mut objs);
        let Object::Pod(pod) = &objs[0] else { panic!() };
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some("node-a")
        );
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.2"));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let Object::Service(svc) = &objs[1] else {
            panic!()
        };
        assert_eq!(
            svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.10")
        );
    }

    #[test]
    fn what_the_user_wrote_wins() {
        let mut objs = objects(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec:\n  clusterIP: 10.96.5.5\n  ports: [{port: 80}]\n",
        );
        let mut a = Allocations::default();
        a.services.insert(
            "ns/s".into(),
            ServiceAllocation {
                cluster_ip: "10.96.0.10".into(),
            },
        );
        a.apply(&mut objs);
        let Object::Service(svc) = &objs[0] else {
            panic!()
        };
        assert_eq!(
            svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.5.5")
        );
    }

    #[test]
    fn old_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allocations.json");
        std::fs::write(
            &path,
            r#"{"pods": {"ns/a": {"nodeName": "n", "podIp": "10.244.1.2", "phase": "Running"}}, "services": {}}"#,
        )
        .unwrap();
        let a = Allocations::load(&path).unwrap();
        assert_eq!(a.pods.len(), 1);
        assert!(a.generated.is_empty() && a.labels.is_empty());
        // Saved without the new parts when they are empty, so older readers load it too.
        a.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("generated") && !text.contains("labels"),
            "{text}"
        );
    }

    #[test]
    fn label_overlays() {
        let mut objs = objects(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: bookinfo, labels: {a: '1', b: '2'}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec: {ports: [{port: 80}]}\n",
        );
        let a: Allocations = serde_json::from_str(
            r#"{"labels": {
                "Namespace//bookinfo": {"istio.io/use-waypoint": "waypoint", "a": null, "b": "3"},
                "Service/ns/s": {"x": "y"},
                "Pod/ns/gone": {"x": "y"}
            }}"#,
        )
        .unwrap();
        let unused = a.apply_labels(&mut objs);
        assert_eq!(unused, vec!["Pod/ns/gone".to_string()]);
        let ns = objs[0].meta().labels.clone().unwrap();
        assert_eq!(
            ns,
            [("b", "3"), ("istio.io/use-waypoint", "waypoint")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        );
        assert_eq!(objs[1].meta().labels.as_ref().unwrap()["x"], "y");
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allocations.json");
        assert_eq!(Allocations::load(&path).unwrap(), Allocations::default());
        let mut a = Allocations::default();
        a.services.insert(
            "ns/s".into(),
            ServiceAllocation {
                cluster_ip: "10.96.0.10".into(),
            },
        );
        a.save(&path).unwrap();
        assert_eq!(Allocations::load(&path).unwrap(), a);
        std::fs::write(&path, "{\"pods\": 3}").unwrap();
        let e = Allocations::load(&path).unwrap_err().to_string();
        assert!(e.contains("not a valid allocations file"), "{e}");
    }
}
