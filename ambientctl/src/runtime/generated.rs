//! What the local mesh runs besides the manifest directory's own objects, in the role of
//! Kubernetes' API server and controllers:
//!
//! - objects applied with the CLI (`ambientctl waypoint apply`), kept in `run/applied.json`;
//! - label overlays on any object (`--enroll-namespace`), never written to the user's files;
//! - the pods of the directory's Deployments, as the Deployment and ReplicaSet controllers
//!   would make them ([`super::deployments`]);
//! - what the waypoint deployment controller makes for each waypoint Gateway
//!   ([`super::waypoints`]).
//!
//! [`compose`] builds the runtime's whole view from the directory's objects, and the list of
//! generated objects the controller reads from `allocations.json` (`generated`, `labels`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ambient_controller::model::{Kind, Object, ObjectKey};
use ambient_controller::source::Severity;
use ambient_controller::source::manifests::parse_file;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::deployments;
use super::waypoints::{self, WaypointEnv};

/// `"<Kind>/<namespace>/<name>"` (namespace empty for cluster-scoped kinds) → label →
/// value, or `None` to remove the label.
pub type LabelOverlay = BTreeMap<String, BTreeMap<String, Option<String>>>;

/// An object's key as overlays and the CLI name it: `Kind/namespace/name`.
pub fn key_string(key: &ObjectKey) -> String {
    format!("{}/{}/{}", key.kind, key.namespace, key.name)
}

/// Objects applied through the control API, and label overlays.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Store {
    /// By [`key_string`].
    #[serde(default)]
    pub objects: BTreeMap<String, Value>,
    #[serde(default)]
    pub labels: LabelOverlay,
}

impl Store {
    /// Reads `path`; a missing or unreadable file is an empty store.
    pub fn load(path: &Path) -> Store {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("plain data"))?;
        std::fs::rename(tmp, path)
    }
}

/// The objects one JSON/YAML value holds, read with the controller's parser; errors are
/// the parser's findings (file name `source`).
pub fn parse_value(source: &str, value: &Value) -> Result<Vec<Object>, Vec<String>> {
    let parsed = parse_file(Path::new(source), &value.to_string(), None);
    let errors: Vec<String> = parsed
        .diagnostics
        .iter()
        .filter(|d| d.severity != Severity::Info)
        .map(|d| d.message.clone())
        .collect();
    if errors.is_empty() {
        Ok(parsed.objects)
    } else {
        Err(errors)
    }
}

fn meta_mut(object: &mut Object) -> Option<&mut ObjectMeta> {
    match object {
        Object::Namespace(o) => Some(&mut o.metadata),
        Object::Pod(o) => Some(&mut o.metadata),
        Object::Service(o) => Some(&mut o.metadata),
        Object::Gateway(o) => Some(&mut o.metadata),
        _ => None,
    }
}

/// Applies `overlay` to `objects` (Namespaces, Pods, Services and Gateways: the kinds
/// whose labels the runtime or the controller act on).
pub fn overlay_objects(objects: &mut [Object], overlay: &LabelOverlay) {
    for o in objects.iter_mut() {
        let Some(changes) = overlay.get(&key_string(&o.key())) else {
            continue;
        };
        let Some(meta) = meta_mut(o) else { continue };
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in changes {
            match v {
                Some(v) => {
                    labels.insert(k.clone(), v.clone());
                }
                None => {
                    labels.remove(k);
                }
            }
        }
    }
}

/// The overlay key of a Kubernetes JSON object.
fn value_key(value: &Value) -> String {
    let kind = value["kind"].as_str().unwrap_or_default();
    let ns = if kind == "Namespace" {
        ""
    } else {
        value["metadata"]["namespace"].as_str().unwrap_or("default")
    };
    format!(
        "{kind}/{ns}/{}",
        value["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Applies `overlay` to a Kubernetes JSON object.
pub fn overlay_value(value: &mut Value, overlay: &LabelOverlay) {
    let Some(changes) = overlay.get(&value_key(value)) else {
        return;
    };
    let meta = &mut value["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = Value::Object(Default::default());
    }
    let labels = meta["labels"].as_object_mut().expect("an object");
    for (k, v) in changes {
        match v {
            Some(v) => {
                labels.insert(k.clone(), Value::String(v.clone()));
            }
            None => {
                labels.remove(k);
            }
        }
    }
}

/// The runtime's view of the mesh.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Every object: the directory's, the applied ones and the generated ones, with the
    /// label overlays applied.
    pub objects: Vec<Object>,
    /// What the controller must add to the directory's objects (`allocations.json`).
    pub generated: Vec<Value>,
    /// Waypoint pods (`namespace/name`) → their Gateway (`namespace/name`).
    pub waypoint_pods: BTreeMap<String, String>,
    /// What could not be generated.
    pub problems: Vec<String>,
}

/// Builds the view from the directory's objects and Deployments, and the store.
pub fn compose(
    dir: &[Object],
    dir_deployments: &[Value],
    store: &Store,
    env: &WaypointEnv,
) -> View {
    let mut view = View {
        objects: dir.to_vec(),
        ..View::default()
    };
    let mut keys: BTreeSet<ObjectKey> = dir.iter().map(Object::key).collect();
    let add = |view: &mut View, keys: &mut BTreeSet<ObjectKey>, value: Value| {
        let mut value = value;
        overlay_value(&mut value, &store.labels);
        match parse_value("runtime", &value) {
            Ok(objects) => {
                if let Some(clash) = objects.iter().find(|o| keys.contains(&o.key())) {
                    view.problems.push(format!(
                        "{} is defined in the manifests; the runtime's version is not used",
                        clash.key()
                    ));
                    return;
                }
                for o in objects {
                    keys.insert(o.key());
                    view.objects.push(o);
                }
                view.generated.push(value);
            }
            Err(errors) => {
                view.problems
                    .push(format!("{}: {}", value_key(&value), errors.join("; ")))
            }
        }
    };
    for value in store.objects.values() {
        add(&mut view, &mut keys, value.clone());
    }
    // A label on a namespace nothing declares: the namespace exists in Kubernetes, so it
    // does here.
    for key in store.labels.keys() {
        if let Some(name) = key.strip_prefix("Namespace//")
            && !keys.contains(&ObjectKey {
                kind: Kind::Namespace,
                namespace: String::new(),
                name: name.to_string(),
            })
        {
            let ns = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name},
            });
            add(&mut view, &mut keys, ns);
        }
    }
    overlay_objects(&mut view.objects, &store.labels);
    for deployment in dir_deployments {
        for pod in deployments::pods(deployment) {
            add(&mut view, &mut keys, pod);
        }
    }
    for d in waypoints::render(&view.objects, env) {
        view.waypoint_pods.insert(
            format!("{}/{}", d.namespace, d.pod_name),
            format!("{}/{}", d.namespace, d.gateway),
        );
        for value in d.objects {
            add(&mut view, &mut keys, value);
        }
    }
    view
}

/// The file of `dir` (recursively, as the manifest source reads it) that defines `key`.
pub fn defining_file(dir: &Path, key: &ObjectKey) -> Option<PathBuf> {
    let mut files = Vec::new();
    collect(dir, &mut files);
    files.sort();
    files.into_iter().find(|path| {
        std::fs::read_to_string(path).is_ok_and(|text| {
            parse_file(path, &text, None)
                .objects
                .iter()
                .any(|o| &o.key() == key)
        })
    })
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(&path, out);
        } else if matches!(
            path.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::waypoints::tests::env;

    fn gateway(name: &str) -> Value {
        serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        })
    }

    #[test]
    fn applied_gateways_deploy_waypoints_and_overlays_label_everything() {
        let dir = parse_value(
            "dir.yaml",
            &serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"keep": "x", "drop": "y"}}}),
        )
        .unwrap();
        let mut store = Store::default();
        store
            .objects
            .insert("Gateway/shop/w2".into(), gateway("w2"));
        store.labels.insert(
            "Namespace//shop".into(),
            BTreeMap::from([
                ("istio.io/use-waypoint".to_string(), Some("w2".to_string())),
                ("drop".to_string(), None),
            ]),
        );
        store.labels.insert(
            "Namespace//other".into(),
            BTreeMap::from([("a".to_string(), Some("b".to_string()))]),
        );
        let view = compose(&dir, &[], &store, &env());
        assert!(view.problems.is_empty(), "{:?}", view.problems);
        let kinds: Vec<String> = view
            .generated
            .iter()
            .map(|v| value_key(v).split('/').next().unwrap().to_string())
            .collect();
        assert_eq!(
            kinds,
            ["Gateway", "Namespace", "ServiceAccount", "Service", "Pod"]
        );
        let Some(Object::Namespace(ns)) = view.objects.iter().find(|o| o.key().name == "shop")
        else {
            panic!()
        };
        let labels = ns.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get("istio.io/use-waypoint").unwrap(), "w2");
        assert_eq!(labels.get("keep").unwrap(), "x");
        assert!(!labels.contains_key("drop"));
        // The undeclared namespace is generated with its label baked in.
        assert_eq!(view.generated[1]["metadata"]["labels"]["a"], "b");
        assert_eq!(view.waypoint_pods.len(), 1);
        let (pod, gw) = view.waypoint_pods.iter().next().unwrap();
        assert!(pod.starts_with("shop/w2-"), "{pod}");
        assert_eq!(gw, "shop/w2");
        assert_eq!(
            view.objects.len(),
            1 + 1 + 1 + 2,
            "ns, gw, ns, service, pod"
        );
    }

    #[test]
    fn the_directory_wins_over_the_runtime() {
        let dir = parse_value(
            "dir.yaml",
            &serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "w2", "namespace": "shop"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .unwrap();
        let mut store = Store::default();
        store
            .objects
            .insert("Gateway/shop/w2".into(), gateway("w2"));
        let view = compose(&dir, &[], &store, &env());
        assert_eq!(view.problems.len(), 1, "{:?}", view.problems);
        assert!(view.problems[0].contains("Service/shop/w2"));
    }

    #[test]
    fn a_deployments_pods_run_as_generated_pods() {
        let dir = parse_value(
            "dir.yaml",
            &serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}),
        )
        .unwrap();
        let deployment = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "version": "v1"}},
                                  "spec": {"serviceAccountName": "web",
                                           "containers": [{"name": "web", "image": "demo-app"}]}}},
        });
        let view = compose(&dir, &[deployment], &Store::default(), &env());
        assert!(view.problems.is_empty(), "{:?}", view.problems);
        let pods: Vec<&Object> = view
            .objects
            .iter()
            .filter(|o| o.key().kind == Kind::Pod)
            .collect();
        assert_eq!(pods.len(), 2);
        for pod in pods {
            let Object::Pod(pod) = pod else { panic!() };
            assert!(pod.metadata.name.as_deref().unwrap().starts_with("web-"));
            assert_eq!(pod.metadata.namespace.as_deref(), Some("shop"));
            let labels = pod.metadata.labels.as_ref().unwrap();
            assert_eq!(labels.get("version").map(String::as_str), Some("v1"));
            let spec = pod.spec.as_ref().unwrap();
            assert_eq!(spec.service_account_name.as_deref(), Some("web"));
        }
        // The controller reads them from the allocations file.
        assert_eq!(view.generated.len(), 2);
    }

    #[test]
    fn finds_the_file_that_defines_an_object() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/gw.yaml"),
            ambient_controller::source::yaml::to_string(&gateway("w")).unwrap(),
        )
        .unwrap();
        let key = ObjectKey {
            kind: Kind::Gateway,
            namespace: "shop".into(),
            name: "w".into(),
        };
        assert_eq!(
            defining_file(dir.path(), &key),
            Some(dir.path().join("sub/gw.yaml"))
        );
        let other = ObjectKey {
            name: "x".into(),
            ..key
        };
        assert_eq!(defining_file(dir.path(), &other), None);
    }
}
