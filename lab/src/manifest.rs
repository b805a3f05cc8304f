//! Kubernetes manifests for lab objects, as YAML text: what a user would write, plus the
//! fields the local runtime fills in (a pod's node and address).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::topology::Pod;

fn labels_block(labels: &[(&str, &str)], indent: &str) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut s = format!("{indent}labels:\n");
    for (k, v) in labels {
        let _ = writeln!(s, "{indent}  {k}: \"{v}\"");
    }
    s
}

/// A Namespace, enrolled in ambient when `ambient`.
pub fn namespace(name: &str, ambient: bool) -> String {
    let labels: Vec<(&str, &str)> = if ambient {
        vec![("istio.io/dataplane-mode", "ambient")]
    } else {
        vec![]
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n{}",
        labels_block(&labels, "  ")
    )
}

/// A Pod placed on its lab node with its lab address (the runtime's "kubelet" part).
pub fn pod(
    pod: &Pod,
    service_account: &str,
    labels: &[(&str, &str)],
    container_ports: &[(&str, u16)],
) -> String {
    let mut ports = String::new();
    if !container_ports.is_empty() {
        ports.push_str("    ports:\n");
        for (name, port) in container_ports {
            let _ = writeln!(ports, "    - name: {name}\n      containerPort: {port}");
        }
    }
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n{labels}spec:\n  nodeName: {node}\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: app\n{ports}status:\n  phase: Running\n  podIP: {ip}\n",
        name = pod.name,
        ns = pod.namespace,
        labels = labels_block(labels, "  "),
        node = pod.node,
        sa = service_account,
        ip = pod.ip,
    )
}

/// A ClusterIP Service selecting `selector`, with `(name, port, target)` ports.
pub fn service(
    name: &str,
    namespace: &str,
    vip: Ipv4Addr,
    selector: &[(&str, &str)],
    ports: &[(&str, u16, u16)],
) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  clusterIP: {vip}\n  selector:\n"
    );
    for (k, v) in selector {
        let _ = writeln!(s, "    {k}: \"{v}\"");
    }
    s.push_str("  ports:\n");
    for (pname, port, target) in ports {
        let _ = writeln!(
            s,
            "  - name: {pname}\n    port: {port}\n    targetPort: {target}"
        );
    }
    s
}
