//! What the controller keeps of a Pod: the fields the index and `analyze` read.
//!
//! Pods are most of a cluster's objects. Decoded into k8s-openapi's types, even a nearly
//! empty pod costs about 5.7 kB (every `Option` of `PodSpec` and `Container` takes its full
//! size), and a real one far more (images, env, volumes, container statuses, managed fields,
//! kubectl's last-applied annotation). Istio's informers strip pods the same way.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// A Pod reduced to what the mesh reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshPod {
    /// Name, namespace, uid, generateName, labels, the mesh's own annotations, the
    /// controlling owner and the deletion timestamp; nothing else.
    pub metadata: ObjectMeta,
    pub node_name: Option<String>,
    pub service_account_name: Option<String>,
    pub host_network: bool,
    /// Every container's declared ports.
    pub container_ports: Vec<ContainerPort>,
    pub phase: Option<String>,
    /// `status.podIPs`, else `status.podIP`, as written (parsed by the index).
    pub ips: Vec<String>,
    /// Whether the Ready condition is True; `None` when the pod reports no conditions (a
    /// manifest without status, as the local runtime writes them).
    pub ready: Option<bool>,
}

/// One `containerPort` of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: i32,
    /// As written (`None` means TCP).
    pub protocol: Option<String>,
}

impl ContainerPort {
    pub fn is_tcp(&self) -> bool {
        self.protocol.as_deref().unwrap_or("TCP") == "TCP"
    }
}

/// Whether an annotation is one the mesh may read: Istio's (`*.istio.io/...`) and ours
/// (`*.ambient-rs.io/...`). The rest (kubectl's last-applied configuration above all) can be
/// large and is never read.
fn mesh_annotation(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    ["istio.io", "ambient-rs.io"]
        .iter()
        .any(|domain| prefix == *domain || prefix.ends_with(&format!(".{domain}")))
}

fn slim_metadata(meta: ObjectMeta) -> ObjectMeta {
    let annotations: Option<BTreeMap<String, String>> = meta
        .annotations
        .map(|a| a.into_iter().filter(|(k, _)| mesh_annotation(k)).collect())
        .filter(|a: &BTreeMap<String, String>| !a.is_empty());
    let controller: Option<Vec<OwnerReference>> = meta
        .owner_references
        .and_then(|refs| refs.into_iter().find(|r| r.controller == Some(true)))
        .map(|r| {
            vec![OwnerReference {
                api_version: String::new(),
                block_owner_deletion: None,
                controller: Some(true),
                kind: r.kind,
                name: r.name,
                uid: String::new(),
            }]
        });
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        generate_name: meta.generate_name,
        labels: meta.labels,
        annotations,
        owner_references: controller,
        deletion_timestamp: meta.deletion_timestamp,
        ..Default::default()
    }
}

impl From<Pod> for MeshPod {
    fn from(pod: Pod) -> MeshPod {
        let spec = pod.spec.unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        let mut ips: Vec<String> = status
            .pod_ips
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip)
            .collect();
        if ips.is_empty()
            && let Some(ip) = status.pod_ip
        {
            ips.push(ip);
        }
        MeshPod {
            metadata: slim_metadata(pod.metadata),
            node_name: spec.node_name,
            service_account_name: spec.service_account_name,
            host_network: spec.host_network.unwrap_or(false),
            container_ports: spec
                .containers
                .into_iter()
                .flat_map(|c| c.ports.unwrap_or_default())
                .map(|p| ContainerPort {
                    name: p.name,
                    port: p.container_port,
                    protocol: p.protocol,
                })
                .collect(),
            phase: status.phase,
            ips,
            ready: status
                .conditions
                .map(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        }
    }
}

impl MeshPod {
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The service account it runs as (`default` when unset).
    pub fn service_account(&self) -> String {
        service_account_or_default(self.service_account_name.as_deref())
    }
}

/// A pod's `serviceAccountName`, `default` when unset or empty.
pub fn service_account_or_default(name: Option<&str>) -> String {
    name.filter(|s| !s.is_empty()).unwrap_or("default").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(yaml: &str) -> MeshPod {
        let pod: Pod = serde_saphyr::from_str(yaml).expect("pod");
        MeshPod::from(pod)
    }

    #[test]
    fn keeps_what_the_mesh_reads_and_drops_the_rest() {
        let pod = decoded(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4f9-abcde
  generateName: web-7d4f9-
  namespace: shop
  uid: u-1
  resourceVersion: "77"
  labels: {app: web, pod-template-hash: 7d4f9}
  annotations:
    ambient.istio.io/redirection: enabled
    balancer.ambient-rs.io/algorithm: peak-ewma
    kubectl.kubernetes.io/last-applied-configuration: '{"a": "very long text"}'
    notistio.io.example/x: y
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4f9, uid: r-1, controller: true}
  - {apiVersion: v1, kind: Other, name: other, uid: o-1}
spec:
  nodeName: node-1
  serviceAccountName: web
  containers:
  - name: app
    image: web:1
    env: [{name: A, value: b}]
    ports: [{name: http, containerPort: 8080}, {containerPort: 53, protocol: UDP}]
  - name: sidecar
    image: s:1
status:
  phase: Running
  podIP: 10.0.0.9
  podIPs: [{ip: 10.0.0.9}, {ip: "fd00::9"}]
  conditions: [{type: Initialized, status: "True"}, {type: Ready, status: "False"}]
"#,
        );
        assert_eq!(pod.metadata.name.as_deref(), Some("web-7d4f9-abcde"));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-7d4f9-"));
        assert_eq!(pod.namespace(), "shop");
        assert_eq!(pod.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(pod.metadata.resource_version, None);
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["app"], "web");
        let annotations: Vec<&str> = pod
            .metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            annotations,
            [
                "ambient.istio.io/redirection",
                "balancer.ambient-rs.io/algorithm"
            ]
        );
        let owners = pod.metadata.owner_references.as_ref().expect("owner");
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].name.as_str()),
            ("ReplicaSet", "web-7d4f9")
        );
        assert_eq!(pod.node_name.as_deref(), Some("node-1"));
        assert_eq!(pod.service_account(), "web");
        assert!(!pod.host_network);
        assert_eq!(
            pod.container_ports,
            [
                ContainerPort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: None
                },
                ContainerPort {
                    name: None,
                    port: 53,
                    protocol: Some("UDP".into())
                }
            ]
        );
        assert!(pod.container_ports[0].is_tcp() && !pod.container_ports[1].is_tcp());
        assert_eq!(pod.phase.as_deref(), Some("Running"));
        assert_eq!(pod.ips, ["10.0.0.9", "fd00::9"]);
        assert_eq!(pod.ready, Some(false));
    }

    #[test]
    fn a_pod_without_status_or_spec_has_defaults() {
        let pod = decoded("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns}\n");
        assert_eq!(pod.ready, None);
        assert!(pod.ips.is_empty() && pod.container_ports.is_empty());
        assert_eq!(pod.service_account(), "default");
        let only_ip = decoded(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {serviceAccountName: ''}\nstatus: {podIP: 10.1.1.1}\n",
        );
        assert_eq!(only_ip.ips, ["10.1.1.1"]);
        assert_eq!(only_ip.namespace(), "default");
        assert_eq!(only_ip.service_account(), "default");
    }
}
