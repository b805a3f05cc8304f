//! What Istio's gateway deployment controller does for waypoints, done by the local runtime:
//! for every Gateway of class `istio-waypoint`, a ServiceAccount, a Service and a Pod named
//! after it. The Pod runs this binary's `component waypoint`; the runtime places it and
//! gives it an address like any other pod, but never hands it to a ztunnel
//! (`istio.io/dataplane-mode: none`): a waypoint speaks HBONE itself.
//!
//! The objects are plain Kubernetes JSON: the runtime publishes them in `allocations.json`
//! (`generated`) for the controller, and reads them back with the controller's parser.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ambient_controller::deployer::render::WaypointArgs;
use ambient_controller::model::Object;
use ambient_controller::model::gateway::{Gateway, WAYPOINT_CLASS};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

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
    /// `--otlp-endpoint` for the waypoint (request spans over OTLP/gRPC).
    pub otlp_endpoint: Option<String>,
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

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A short name suffix from a hash, in the alphabet Kubernetes uses for generated names
/// (no vowels, no look-alike digits).
fn suffix(hash: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = hash;
    (0..5)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h /= ALPHABET.len() as u64;
            c
        })
        .collect()
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

fn deployment(gateway: &Gateway, env: &WaypointEnv) -> Deployment {
    let name = gateway.metadata.name.clone().unwrap_or_default();
    let namespace = gateway
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let owner_labels = json!({
        GATEWAY_NAME_LABEL: name,
        GATEWAY_CLASS_LABEL: WAYPOINT_CLASS,
    });
    let service_account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "labels": owner_labels},
    });

    let mut ports = vec![json!({
        "name": "status-port",
        "port": READINESS_PORT,
        "protocol": "TCP",
        "appProtocol": "tcp",
    })];
    for l in &gateway.spec.listeners {
        if l.port == READINESS_PORT || ports.iter().any(|p| p["port"] == l.port) {
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
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                GATEWAY_NAME_LABEL: name,
                GATEWAY_CLASS_LABEL: WAYPOINT_CLASS,
                MANAGED_LABEL: MANAGED_VALUE,
            },
        },
        "spec": {
            "selector": {GATEWAY_NAME_LABEL: name},
            "ports": ports,
        },
    });

    let run = &env.run_dir;
    // `$(VAR)` is expanded from the container's environment when it starts (as the kubelet
    // does), so the template does not depend on where the pod lands.
    let waypoint_args = WaypointArgs {
        namespace: &namespace,
        name: &name,
        trust_domain: &env.trust_domain,
        controller_address: &env.controller_address,
        ca_root: &run.join("ca").join("root-cert.pem").display().to_string(),
        token_file: &run
            .join("tokens")
            .join("$(NODE_NAME).token")
            .display()
            .to_string(),
        workload_cert_ttl_secs: env.workload_cert_ttl_secs,
    };
    let mut args: Vec<String> = ["component", "waypoint"]
        .into_iter()
        .map(String::from)
        .chain(waypoint_args.to_args())
        .collect();
    if let Some(endpoint) = &env.otlp_endpoint {
        args.extend(["--otlp-endpoint".to_string(), endpoint.clone()]);
    }
    let spec = json!({
        "serviceAccountName": name,
        "containers": [{
            "name": CONTAINER,
            "image": "ambient-rs/waypoint",
            "command": [env.exe.display().to_string()],
            "args": args,
            "env": std::iter::once(("RUST_LOG", env.log_filter.as_str()))
                .chain(ambient_controller::deployer::PROXY_ENV.iter().copied())
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect::<Vec<_>>(),
            "ports": [
                {"containerPort": 15008, "name": "mesh", "protocol": "TCP"},
                {"containerPort": 15020, "name": "metrics", "protocol": "TCP"},
                {"containerPort": READINESS_PORT, "name": "status-port", "protocol": "TCP"},
            ],
            "readinessProbe": {
                "httpGet": {"path": READINESS_PATH, "port": READINESS_PORT},
                "periodSeconds": 1,
            },
        }],
    });
    let labels = json!({
        GATEWAY_NAME_LABEL: name,
        GATEWAY_CLASS_LABEL: WAYPOINT_CLASS,
        MANAGED_LABEL: MANAGED_VALUE,
        "istio.io/dataplane-mode": "none",
        "sidecar.istio.io/inject": "false",
        "service.istio.io/canonical-name": name,
        "service.istio.io/canonical-revision": "latest",
    });
    // What the pod runs decides its name: an edit of the Gateway that changes nothing here
    // keeps the pod, one that does replaces it (as a Deployment's rollout would).
    let template = json!({"namespace": namespace, "labels": labels, "spec": spec});
    let pod_name = format!("{name}-{}", suffix(fnv1a(template.to_string().as_bytes())));
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": namespace, "labels": labels},
        "spec": spec,
    });
    Deployment {
        namespace,
        gateway: name,
        pod_name,
        objects: vec![service_account, service, pod],
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
mod tests {
    use super::*;
    use ambient_controller::source::manifests::parse_file;
    use std::path::Path;

    fn env() -> WaypointEnv {
        WaypointEnv {
            exe: "/bin/ambientctl".into(),
            run_dir: "/run/mesh".into(),
            trust_domain: "cluster.local".into(),
            controller_address: "https://172.30.0.1:15012".into(),
            workload_cert_ttl_secs: 3600,
            log_filter: "info".into(),
            otlp_endpoint: None,
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
        assert!(d.pod_name.starts_with("waypoint-") && d.pod_name.len() == 14);
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
        assert!(!ambient_controller::index::labels::enrolled(pod, None));
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
        traced.otlp_endpoint = Some("http://otel-sink.observability:4317".into());
        let d = &render(&objects(GATEWAY), &traced)[0];
        let args: Vec<&str> = d.objects[2]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let at = args.iter().position(|a| *a == "--otlp-endpoint").unwrap();
        assert_eq!(args[at + 1], "http://otel-sink.observability:4317");
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
