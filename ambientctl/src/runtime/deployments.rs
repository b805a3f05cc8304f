//! What Kubernetes' Deployment and ReplicaSet controllers do, for the local runtime: a
//! Deployment's pods, made from its template. As in Kubernetes, a pod is named
//! `<deployment>-<pod-template-hash>-<suffix>`, labelled `pod-template-hash` and owned by
//! the ReplicaSet `<deployment>-<pod-template-hash>` (so the controller names its workload
//! after the Deployment); the hashes come from the template and the replica's index, so an
//! unchanged template keeps its pods and a changed one replaces them (as a rollout would).

use serde_json::{Value, json};

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A name suffix of `len` characters from a hash, in the alphabet Kubernetes uses for
/// generated names (no vowels, no look-alike digits).
fn suffix(hash: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = hash;
    (0..len)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// A stable uid for an object the API server never saw (`kind/namespace/name`).
pub fn local_uid(kind: &str, namespace: &str, name: &str) -> String {
    let h = fnv1a(format!("{kind}/{namespace}/{name}").as_bytes());
    format!("local-{h:016x}")
}

/// The pods of `deployment` (a Deployment object), `spec.replicas` of them (1 when unset).
pub fn pods(deployment: &Value) -> Vec<Value> {
    let name = deployment["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let template = &deployment["spec"]["template"];
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
    // The template as it runs in this namespace decides the names.
    let identity = json!({"namespace": namespace, "template": template}).to_string();
    let template_hash = suffix(fnv1a(identity.as_bytes()), 10);
    let replica_set = format!("{name}-{template_hash}");
    (0..replicas)
        .map(|i| {
            let hash = fnv1a(format!("{identity}/{i}").as_bytes());
            let mut metadata = template["metadata"].clone();
            if !metadata.is_object() {
                metadata = json!({});
            }
            metadata["name"] = json!(format!("{replica_set}-{}", suffix(hash, 5)));
            metadata["generateName"] = json!(format!("{replica_set}-"));
            metadata["namespace"] = json!(namespace);
            if !metadata["labels"].is_object() {
                metadata["labels"] = json!({});
            }
            metadata["labels"]["pod-template-hash"] = json!(template_hash);
            metadata["ownerReferences"] = json!([{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set,
                "uid": local_uid("ReplicaSet", namespace, &replica_set),
                "controller": true, "blockOwnerDeletion": true,
            }]);
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": metadata,
                "spec": template["spec"],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: u64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": image}]},
                },
            },
        })
    }

    #[test]
    fn replicas_become_pods_named_by_their_template() {
        let pods = pods(&deployment(3, "a"));
        assert_eq!(pods.len(), 3);
        let names: Vec<&str> = pods
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap())
            .collect();
        // <deployment>-<10>-<5>, as Kubernetes names them.
        assert!(names.iter().all(|n| n.starts_with("web-") && n.len() == 20));
        let hash = pods[0]["metadata"]["labels"]["pod-template-hash"]
            .as_str()
            .unwrap();
        assert!(names.iter().all(|n| n.starts_with(&format!("web-{hash}-"))));
        let owner = &pods[0]["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicaSet");
        assert_eq!(owner["name"], format!("web-{hash}"));
        assert_eq!(owner["controller"], true);
        assert_eq!(
            names
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            3,
            "distinct"
        );
        assert_eq!(pods[0]["metadata"]["labels"]["app"], "web");
        assert_eq!(pods[0]["metadata"]["namespace"], "shop");
        assert_eq!(pods[0]["spec"]["containers"][0]["image"], "a");
        // Same template, same pods; a new template, new pods.
        assert_eq!(super::pods(&deployment(3, "a")), pods);
        let changed = super::pods(&deployment(3, "b"));
        assert!(changed.iter().all(|p| !pods.contains(p)));
    }

    #[test]
    fn local_uids_are_stable_and_distinct() {
        assert_eq!(
            local_uid("Gateway", "a", "b"),
            local_uid("Gateway", "a", "b")
        );
        assert_ne!(
            local_uid("Gateway", "a", "b"),
            local_uid("Gateway", "a", "c")
        );
    }
}
