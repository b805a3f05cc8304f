//! The Kubernetes objects deployed for one waypoint Gateway, as Istio's gateway deployment
//! controller makes them: a ServiceAccount, a Service and a Deployment named after the
//! Gateway, each owned by it (`controller: true`) so that deleting the Gateway
//! garbage-collects them. The local runtime deploys the same objects (with
//! [`PodRuntime::Local`]) and runs the Deployment's pod itself. Waypoint pods are
//! labelled `gateway.networking.k8s.io/gateway-name` and `istio.io/dataplane-mode: none` (a
//! waypoint speaks HBONE itself; ztunnel leaves it alone), run as the Gateway's service account,
//! and authenticate to the CA with a projected token of that account.

use std::path::PathBuf;

use serde_json::{Value, json};
use waypoint::cli::Args as WaypointArgs;

use crate::ca::tokenreview::CA_AUDIENCE;
use crate::index::labels::{DATAPLANE_MODE, GATEWAY_NAME_LABEL};
use crate::model::gateway::{Gateway, WAYPOINT_CLASS};

pub const GATEWAY_CLASS_LABEL: &str = "gateway.networking.k8s.io/gateway-class-name";
/// Marks what the mesh's deployment controller made (Istio's label and value).
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
pub const MANAGED_VALUE: &str = "istio.io-mesh-controller";
/// The ConfigMap holding the mesh root certificate (`ambientctl install` creates it in the
/// control plane's namespace; the deployer copies it into each waypoint's namespace, since a
/// pod can only mount ConfigMaps of its own namespace).
pub const CA_ROOT_CONFIGMAP: &str = "ambient-ca-root";
/// The waypoint container's name (Istio's).
pub const CONTAINER: &str = "istio-proxy";
pub const READINESS_PORT: u16 = 15021;
pub const READINESS_PATH: &str = "/healthz/ready";
const CA_ROOT_DIR: &str = "/var/run/ambient/ca-root";
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const TOKEN_FILE: &str = "ambient-token";
const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "ambient-rs");

/// What every waypoint is deployed with.
#[derive(Clone, Debug, PartialEq)]
pub struct DeployerConfig {
    pub trust_domain: String,
    /// The image holding the `waypoint` binary.
    pub image: String,
    /// xDS + CA address (`https://ambient-controller.<namespace>.svc:15012`).
    pub controller_address: String,
    pub workload_cert_ttl_secs: u64,
    /// The mesh root (PEM), published in each waypoint namespace's CA root ConfigMap.
    pub ca_root_pem: String,
    /// Where and how spans of the waypoint's requests go (`--otlp-*`), if anywhere.
    pub otlp: Option<waypoint::otlp::Export>,
    pub pod: PodRuntime,
}

/// What runs a waypoint's pod, which decides how the container starts and finds its files.
#[derive(Clone, Debug, PartialEq)]
pub enum PodRuntime {
    /// A kubelet: the image's `waypoint`, the token and the mesh root from volumes.
    Kubernetes,
    /// The local runtime: `exe component waypoint` on the host, the token and the mesh root
    /// from the mesh's run directory (`ca/root-cert.pem`, `tokens/<node>.token`).
    Local {
        exe: PathBuf,
        run_dir: PathBuf,
        /// `RUST_LOG` of the waypoint.
        log_filter: String,
    },
}

/// The objects of one waypoint, in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub service_account: Value,
    pub service: Value,
    pub deployment: Value,
}

impl Rendered {
    pub fn objects(&self) -> [&Value; 3] {
        [&self.service_account, &self.service, &self.deployment]
    }
}

/// A Service port name from a listener name (DNS label, at most 15 characters).
fn port_name(listener: &str) -> String {
    let mut name: String = listener
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(15);
    name.trim_matches('-').to_string()
}

/// The ConfigMap with the mesh root for a namespace.
pub fn ca_root(namespace: &str, config: &DeployerConfig) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CA_ROOT_CONFIGMAP,
            "namespace": namespace,
            "labels": {PART_OF.0: PART_OF.1},
        },
        "data": {"root-cert.pem": config.ca_root_pem},
    })
}

/// The waypoint's command line (`$(VAR)` expanded by the kubelet from the pod's
/// environment): the Gateway it serves, where its control plane is as its pod sees it, and
/// its listeners at their defaults.
pub fn args(namespace: &str, name: &str, config: &DeployerConfig) -> WaypointArgs {
    let (ca_root, token_file): (PathBuf, PathBuf) = match &config.pod {
        PodRuntime::Kubernetes => (
            format!("{CA_ROOT_DIR}/root-cert.pem").into(),
            format!("{TOKEN_DIR}/{TOKEN_FILE}").into(),
        ),
        PodRuntime::Local { run_dir, .. } => (
            run_dir.join("ca").join("root-cert.pem"),
            run_dir.join("tokens").join("$(NODE_NAME).token"),
        ),
    };
    let mut args = WaypointArgs {
        service_account: Some(name.to_string()),
        trust_domain: config.trust_domain.clone(),
        node_name: "$(NODE_NAME)".into(),
        instance_ip: "$(POD_IP)".into(),
        ..WaypointArgs::new(
            &format!("{namespace}/{name}"),
            &config.controller_address,
            ca_root,
            token_file,
        )
    };
    args.control_plane.workload_cert_ttl_secs = config.workload_cert_ttl_secs.max(1);
    args.set_otlp(config.otlp.as_ref());
    args
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// The objects for a waypoint Gateway; `None` for other Gateways and for one the API server
/// has not given a uid yet.
pub fn render(gateway: &Gateway, config: &DeployerConfig) -> Option<Rendered> {
    if gateway.spec.gateway_class_name != WAYPOINT_CLASS {
        return None;
    }
    let name = gateway.metadata.name.as_deref()?;
    let uid = gateway.metadata.uid.as_deref()?;
    let namespace = gateway.metadata.namespace.as_deref().unwrap_or("default");
    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": name,
        "uid": uid,
        "controller": true,
    }]);
    let labels = json!({
        GATEWAY_NAME_LABEL: name,
        GATEWAY_CLASS_LABEL: WAYPOINT_CLASS,
        MANAGED_LABEL: MANAGED_VALUE,
    });
    let metadata = json!({
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": owner,
    });

    let service_account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
    });

    let mut ports = vec![json!({
        "name": "status-port",
        "port": READINESS_PORT,
        "protocol": "TCP",
        "appProtocol": "tcp",
    })];
    for l in &gateway.spec.listeners {
        if ports.iter().any(|p| p["port"] == l.port) {
            continue;
        }
        ports.push(json!({
            "name": port_name(&l.name),
            "port": l.port,
            "protocol": "TCP",
            "appProtocol": l.protocol.to_ascii_lowercase(),
        }));
    }
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "selector": {GATEWAY_NAME_LABEL: name},
            "ports": ports,
        },
    });

    let pod_labels = json!({
        GATEWAY_NAME_LABEL: name,
        GATEWAY_CLASS_LABEL: WAYPOINT_CLASS,
        MANAGED_LABEL: MANAGED_VALUE,
        DATAPLANE_MODE: "none",
        "sidecar.istio.io/inject": "false",
        "service.istio.io/canonical-name": name,
        "service.istio.io/canonical-revision": "latest",
    });
    let log_env = match &config.pod {
        PodRuntime::Local { log_filter, .. } => Some(("RUST_LOG", log_filter.as_str())),
        PodRuntime::Kubernetes => None,
    };
    let env: Vec<Value> = [
        field_env("NODE_NAME", "spec.nodeName"),
        field_env("POD_IP", "status.podIP"),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ]
    .into_iter()
    .chain(
        log_env
            .iter()
            .chain(super::PROXY_ENV)
            .map(|(name, value)| json!({"name": name, "value": value})),
    )
    .collect();
    let waypoint_args = args(namespace, name, config).to_args();
    let (command, args) = match &config.pod {
        PodRuntime::Kubernetes => (vec!["waypoint".to_string()], waypoint_args),
        PodRuntime::Local { exe, .. } => (
            vec![exe.display().to_string()],
            ["component", "waypoint"]
                .into_iter()
                .map(String::from)
                .chain(waypoint_args)
                .collect(),
        ),
    };
    let mut container = json!({
        "name": CONTAINER,
        "image": config.image,
        "command": command,
        "args": args,
        "env": env,
        "ports": [
            {"containerPort": 15008, "name": "mesh", "protocol": "TCP"},
            {"containerPort": 15020, "name": "http-metrics", "protocol": "TCP"},
            {"containerPort": READINESS_PORT, "name": "status-port", "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": READINESS_PATH, "port": READINESS_PORT},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
        },
    });
    let mut volumes = json!([]);
    if config.pod == PodRuntime::Kubernetes {
        container["volumeMounts"] = json!([
            {"name": "ambient-token", "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": "ca-root", "mountPath": CA_ROOT_DIR, "readOnly": true},
        ]);
        volumes = json!([
            {
                "name": "ambient-token",
                "projected": {"sources": [{"serviceAccountToken": {
                    "audience": CA_AUDIENCE,
                    "expirationSeconds": 43200,
                    "path": TOKEN_FILE,
                }}]},
            },
            {"name": "ca-root", "configMap": {"name": CA_ROOT_CONFIGMAP}},
        ]);
    }
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "15020",
                        "prometheus.io/path": "/stats/prometheus",
                    },
                },
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 1337,
                        "runAsGroup": 1337,
                        "fsGroup": 1337,
                    },
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    });
    Some(Rendered {
        service_account,
        service,
        deployment,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    pub(crate) fn config() -> DeployerConfig {
        DeployerConfig {
            trust_domain: "cluster.local".into(),
            image: "ghcr.io/ambient-rs/waypoint:0.1.0".into(),
            controller_address: "https://ambient-controller.istio-system.svc:15012".into(),
            workload_cert_ttl_secs: 3600,
            ca_root_pem: "ROOT".into(),
            otlp: None,
            pod: PodRuntime::Kubernetes,
        }
    }

    pub(crate) fn gateway(class: &str) -> Gateway {
        let mut g = Gateway::default();
        g.metadata.name = Some("waypoint".into());
        g.metadata.namespace = Some("bookinfo".into());
        g.metadata.uid = Some("uid-1".into());
        g.spec.gateway_class_name = class.into();
        g.spec.listeners = vec![crate::model::gateway::Listener {
            name: "mesh".into(),
            port: 15008,
            protocol: "HBONE".into(),
            ..Default::default()
        }];
        g
    }

    /// Parses `v` as `T` and checks nothing is lost.
    fn typed<T: DeserializeOwned + Serialize>(v: &Value) -> T {
        let t: T = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(&serde_json::to_value(&t).unwrap(), v, "round trip");
        t
    }

    #[test]
    fn only_waypoint_gateways_with_a_uid_are_deployed() {
        assert!(render(&gateway("istio"), &config()).is_none());
        let mut g = gateway(WAYPOINT_CLASS);
        g.metadata.uid = None;
        assert!(render(&g, &config()).is_none());
    }

    #[test]
    fn objects_are_valid_owned_and_labelled() {
        let r = render(&gateway(WAYPOINT_CLASS), &config()).unwrap();
        let sa: ServiceAccount = typed(&r.service_account);
        let svc: Service = typed(&r.service);
        let dep: Deployment = typed(&r.deployment);
        typed::<ConfigMap>(&ca_root("bookinfo", &config()));
        for meta in [&sa.metadata, &svc.metadata, &dep.metadata] {
            assert_eq!(meta.name.as_deref(), Some("waypoint"));
            assert_eq!(meta.namespace.as_deref(), Some("bookinfo"));
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(owner.kind, "Gateway");
            assert_eq!(owner.uid, "uid-1");
            assert_eq!(owner.controller, Some(true));
        }
        let spec = svc.spec.unwrap();
        assert_eq!(spec.selector.unwrap()[GATEWAY_NAME_LABEL], "waypoint");
        let ports = spec.ports.unwrap();
        assert_eq!(ports[0].port, 15021);
        assert_eq!(ports[1].name.as_deref(), Some("mesh"));
        assert_eq!(ports[1].port, 15008);
        assert_eq!(ports[1].app_protocol.as_deref(), Some("hbone"));

        let spec = dep.spec;
        assert_eq!(spec.replicas, Some(1));
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels[GATEWAY_NAME_LABEL], "waypoint");
        assert_eq!(labels[DATAPLANE_MODE], "none");
        for (k, v) in spec.selector.match_labels.unwrap() {
            assert_eq!(labels[&k], v, "the selector selects the pods");
        }
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("waypoint"));
        let c = &pod.containers[0];
        let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(
            env,
            [
                "NODE_NAME",
                "POD_IP",
                "POD_NAME",
                "POD_NAMESPACE",
                "MIMALLOC_ARENA_EAGER_COMMIT"
            ]
        );
        let allocator = c.env.iter().flatten().last().unwrap();
        assert_eq!(
            allocator.value.as_deref(),
            Some("0"),
            "proxies' allocator setting"
        );
        let probe = c.readiness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(probe.path.as_deref(), Some(READINESS_PATH));
        let args = c.args.clone().unwrap();
        let flag = |f: &str| args[args.iter().position(|a| a == f).unwrap() + 1].clone();
        assert_eq!(flag("--gateway"), "bookinfo/waypoint");
        assert_eq!(flag("--service-account"), "waypoint");
        // The token and the root are files of the mounted volumes.
        let mounts = c.volume_mounts.clone().unwrap();
        for f in ["--token-file", "--ca-root"] {
            let path = flag(f);
            assert!(
                mounts
                    .iter()
                    .any(|m| path.starts_with(&format!("{}/", m.mount_path))),
                "{f} {path}"
            );
        }
        let volumes = pod.volumes.unwrap();
        let token = volumes[0].projected.clone().unwrap().sources.unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(token.audience.as_deref(), Some(CA_AUDIENCE));
        assert_eq!(
            volumes[1].config_map.as_ref().unwrap().name,
            CA_ROOT_CONFIGMAP
        );
    }
}
