//! What Istio's gateway deployment controller does for waypoints, done by the local runtime:
//! for every Gateway of class `istio-waypoint`, the controller's own deployer renders the
//! ServiceAccount, Service and Deployment (`ambient_controller::deployer::render`, with the
//! local pod runtime: this binary's `component waypoint`, files from the run directory), and
//! the runtime runs the Deployment's pod ([`deployments`]). The runtime places the pod and
//! gives it an address like any other, but never hands it to a ztunnel
//! (`istio.io/dataplane-mode: none`): a waypoint speaks HBONE itself.
//!
//! The objects are plain Kubernetes JSON: the runtime publishes them in `allocations.json`
//! (`generated`) for the controller, and reads them back with the controller's parser.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ambient_controller::deployer::render::{self as deployer, DeployerConfig, PodRuntime};
use ambient_controller::model::Object;
use ambient_controller::model::gateway::{Gateway, WAYPOINT_CLASS};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::deployments;

/// The same labels, container and readiness endpoint as the controller's deployer.
pub use ambient_controller::deployer::render::{
    CONTAINER, GATEWAY_CLASS_LABEL, MANAGED_LABEL, MANAGED_VALUE, READINESS_PATH, READINESS_PORT,
};
pub use ambient_controller::index::labels::GATEWAY_NAME_LABEL;

/// What every waypoint pod is started with.
#[derive(Clone, Debug)]
pub struct WaypointEnv {
    /// The multi-call binary (`ambientctl`).
    pub exe: PathBuf,
    /// The mesh's run directory (CA root, node tokens).
    pub run_dir: PathBuf,
    pub trust_domain: String,
    /// `https://host:15012`, as the ztunnels get it.
    pub controller_address: String,
    pub workload_cert_ttl_secs: u64,
    /// `RUST_LOG` for the waypoint.
    pub log_filter: String,
    /// Where the waypoints export request spans (`--otlp-*`), if anywhere.
    pub otlp: Option<waypoint::otlp::Export>,
}

/// The objects deployed for one waypoint Gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    pub namespace: String,
    pub gateway: String,
    pub pod_name: String,
    /// ServiceAccount, Service and Pod, in that order.
    pub objects: Vec<Value>,
}

/// The Gateway a pod serves as waypoint (`namespace/name`), if the deployment controller
/// made it.
pub fn waypoint_of(pod: &Pod) -> Option<String> {
    let labels = pod.metadata.labels.as_ref()?;
    if labels.get(MANAGED_LABEL).map(String::as_str) != Some(MANAGED_VALUE) {
        return None;
    }
    let name = labels.get(GATEWAY_NAME_LABEL)?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    Some(format!("{ns}/{name}"))
}

/// Deployments for every waypoint Gateway among `objects`.
pub fn render(objects: &[Object], env: &WaypointEnv) -> Vec<Deployment> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::Gateway(g) if g.spec.gateway_class_name == WAYPOINT_CLASS => {
                Some(deployment(g, env))
            }
            _ => None,
        })
        .collect()
}

/// What the deployer needs to know to deploy waypoints here.
fn deployer_config(env: &WaypointEnv) -> DeployerConfig {
    DeployerConfig {
        trust_domain: env.trust_domain.clone(),
        image: "ambient-rs/waypoint".into(),
        controller_address: env.controller_address.clone(),
        workload_cert_ttl_secs: env.workload_cert_ttl_secs,
        // The local runtime's waypoints read the mesh root from the run directory.
        ca_root_pem: String::new(),
        otlp: env.otlp.clone(),
        pod: PodRuntime::Local {
            exe: env.exe.clone(),
            run_dir: env.run_dir.clone(),
            log_filter: env.log_filter.clone(),
        },
    }
}

fn deployment(gateway: &Gateway, env: &WaypointEnv) -> Deployment {
    let name = gateway.metadata.name.clone().unwrap_or_default();
    let namespace = gateway
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    // Objects from files have no uid until an API server gives them one; the runtime names
    // the owner by a uid derived from its key (nothing here garbage-collects).
    let mut gateway = gateway.clone();
    gateway
        .metadata
        .uid
        .get_or_insert_with(|| deployments::local_uid("Gateway", &namespace, &name));
    let rendered =
        deployer::render(&gateway, &deployer_config(env)).expect("a waypoint Gateway with a uid");
    let pod = deployments::pods(&rendered.deployment)
        .into_iter()
        .next()
        .expect("a waypoint Deployment has one replica");
    let pod_name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Deployment {
        namespace,
        gateway: name,
        pod_name,
        objects: vec![rendered.service_account, rendered.service, pod],
    }
}

/// Kubernetes' `$(VAR)` expansion of a container's command and arguments: a defined
/// variable is replaced, an undefined reference is left as written, `$$` is a literal `$`.
pub fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
            && let Some(value) = env.get(&body[..end])
        {
            out.push_str(value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ambient_controller::source::manifests::parse_file;
    use std::path::Path;

    /// The waypoint environment of the runtime's tests.
    pub(crate) fn env() -> WaypointEnv {
        WaypointEnv {
            exe: "/bin/ambientctl".into(),
            run_dir: "/run/mesh".into(),
            trust_domain: "cluster.local".into(),
            controller_address: "https://172.30.0.1:15012".into(),
            workload_cert_ttl_secs: 3600,
            log_filter: "info".into(),
            otlp: None,
        }
    }

    fn objects(yaml: &str) -> Vec<Object> {
        let parsed = parse_file(Path::new("t.yaml"), yaml, None);
        assert!(
            parsed
                .diagnostics
                .iter()
                .all(|d| d.severity == ambient_controller::source::Severity::Info),
            "{:?}",
            parsed.diagnostics
        );
        parsed.objects
    }

    const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: bookinfo}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n";

    #[test]
    fn a_waypoint_gateway_gets_an_account_a_service_and_a_pod_the_parser_accepts() {
        let mut objs = objects(GATEWAY);
        objs.extend(objects(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: ingress, namespace: bookinfo}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n",
        ));
        let deployments = render(&objs, &env());
        assert_eq!(deployments.len(), 1, "only the waypoint class");
        let d = &deployments[0];
        assert!(
            d.pod_name.starts_with("waypoint-")
                && d.pod_name.len() == "waypoint-".len() + 10 + 1 + 5
        );
        let kinds: Vec<&str> = d
            .objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["ServiceAccount", "Service", "Pod"]);
        let svc = &d.objects[1];
        assert_eq!(svc["spec"]["selector"][GATEWAY_NAME_LABEL], "waypoint");
        assert_eq!(svc["spec"]["ports"][0]["port"], 15021);
        assert_eq!(svc["spec"]["ports"][1]["name"], "mesh");
        assert_eq!(svc["spec"]["ports"][1]["port"], 15008);
        assert_eq!(svc["spec"]["ports"][1]["appProtocol"], "hbone");
        // Service and Pod read back through the controller's own parser, without findings.
        for o in &d.objects[1..] {
            let back = objects(&o.to_string());
            assert_eq!(back.len(), 1, "{o}");
        }
        let Object::Pod(pod) = &objects(&d.objects[2].to_string())[0] else {
            panic!()
        };
        assert_eq!(waypoint_of(pod).as_deref(), Some("bookinfo/waypoint"));
        assert!(!ambient_controller::index::labels::enrolled(
            &pod.metadata,
            None
        ));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("waypoint"));
        let args = spec.containers[0].args.clone().unwrap();
        let flag = |f: &str| args[args.iter().position(|a| a == f).unwrap() + 1].clone();
        assert_eq!(flag("--gateway"), "bookinfo/waypoint");
        assert_eq!(flag("--token-file"), "/run/mesh/tokens/$(NODE_NAME).token");
        assert_eq!(flag("--ca-root"), "/run/mesh/ca/root-cert.pem");
        assert_eq!(flag("--controller-address"), "https://172.30.0.1:15012");
        assert!(!args.iter().any(|a| a == "--otlp-endpoint"));
    }

    #[test]
    fn the_mesh_otlp_endpoint_reaches_the_waypoint() {
        let mut traced = env();
        traced.otlp = Some(waypoint::otlp::Export {
            endpoint: "https://otel-sink.observability:4318".into(),
            protocol: waypoint::otlp::Protocol::HttpProtobuf,
            ca_cert: Some("/etc/otel/ca.pem".into()),
        });
        let d = &render(&objects(GATEWAY), &traced)[0];
        let args: Vec<&str> = d.objects[2]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let at = args.iter().position(|a| *a == "--otlp-endpoint").unwrap();
        assert_eq!(args[at + 1], "https://otel-sink.observability:4318");
        let at = args.iter().position(|a| *a == "--otlp-protocol").unwrap();
        assert_eq!(args[at + 1], "http/protobuf");
        let at = args.iter().position(|a| *a == "--otlp-ca-cert").unwrap();
        assert_eq!(args[at + 1], "/etc/otel/ca.pem");
        // What the pod runs changed: a new pod, as a rollout would make.
        assert_ne!(d.pod_name, render(&objects(GATEWAY), &env())[0].pod_name);
    }

    #[test]
    fn the_pod_name_is_stable_and_follows_what_it_runs() {
        let objs = objects(GATEWAY);
        let a = render(&objs, &env());
        assert_eq!(a, render(&objs, &env()), "deterministic");
        // A label on the Gateway changes nothing the pod runs.
        let labelled = objects(&GATEWAY.replace(
            "namespace: bookinfo}",
            "namespace: bookinfo, labels: {istio.io/waypoint-for: all}}",
        ));
        assert_eq!(render(&labelled, &env())[0].pod_name, a[0].pod_name);
        let mut other = env();
        other.trust_domain = "example.org".into();
        assert_ne!(render(&objs, &other)[0].pod_name, a[0].pod_name);
    }

    #[test]
    fn variables_expand_like_the_kubelet_does() {
        let env = BTreeMap::from([("NODE_NAME".to_string(), "node-1".to_string())]);
        assert_eq!(expand("/t/$(NODE_NAME).token", &env), "/t/node-1.token");
        assert_eq!(expand("$(MISSING)", &env), "$(MISSING)");
        assert_eq!(expand("$$(NODE_NAME)", &env), "$(NODE_NAME)");
        assert_eq!(expand("a$b$", &env), "a$b$");
        assert_eq!(expand("$(NODE_NAME", &env), "$(NODE_NAME");
    }
}
