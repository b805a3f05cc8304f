//! Istio's mesh config → the mesh-wide settings pushed to every ztunnel.
//!
//! Read from the `mesh` key of ConfigMap `istio` in the root namespace, as istiod reads it.
//! Only `outboundTrafficPolicy.mode` is used; the rest of the mesh config is Istio's business.

use ambient_proto::ambient::mesh::v1 as pb;
use serde::Deserialize;

use super::{Context, Warning};

/// The ConfigMap holding Istio's mesh config.
pub const MESH_CONFIG_MAP: &str = "istio";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshConfig {
    #[serde(default)]
    outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

#[derive(Debug, Default, Deserialize)]
struct OutboundTrafficPolicy {
    #[serde(default)]
    mode: Option<String>,
}

/// The settings; problems leave the default (`ALLOW_ANY`) and are warned about.
pub fn settings(ctx: &Context<'_>, warnings: &mut Vec<Warning>) -> pb::MeshSettings {
    let root = &ctx.config.root_namespace;
    let object = format!("ConfigMap/{root}/{MESH_CONFIG_MAP}");
    let Some(text) = ctx
        .state
        .config_map(root, MESH_CONFIG_MAP)
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get("mesh"))
    else {
        return pb::MeshSettings::default();
    };
    let value = crate::source::yaml::parse(text)
        .map_err(|e| e.to_string())
        .map(|docs| docs.into_iter().next().map(|d| d.value).unwrap_or_default())
        .and_then(|v| {
            if v.is_null() {
                return Ok(MeshConfig::default());
            }
            serde_json::from_value::<MeshConfig>(v).map_err(|e| e.to_string())
        });
    let config: MeshConfig = match value {
        Ok(c) => c,
        Err(e) => {
            warnings.push(Warning::new(
                &object,
                format!("mesh config is not valid YAML ({e}); defaults apply"),
            ));
            return pb::MeshSettings::default();
        }
    };
    let mode = config.outbound_traffic_policy.and_then(|p| p.mode);
    let outbound = match mode.as_deref() {
        None | Some("ALLOW_ANY") => pb::OutboundTrafficPolicy::AllowAny,
        Some("REGISTRY_ONLY") => pb::OutboundTrafficPolicy::RegistryOnly,
        Some(other) => {
            warnings.push(Warning::new(
                &object,
                format!(
                    "outboundTrafficPolicy.mode {other:?} is not ALLOW_ANY or REGISTRY_ONLY; ALLOW_ANY applies"
                ),
            ));
            pb::OutboundTrafficPolicy::AllowAny
        }
    };
    pb::MeshSettings {
        outbound_traffic_policy: outbound as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(yaml: &str) -> (pb::MeshSettings, Vec<Warning>) {
        let index = crate::index::build_from_yaml(yaml);
        (index.mesh, index.warnings)
    }

    fn config_map(namespace: &str, mesh: &str) -> String {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: {namespace}}}\ndata:\n  mesh: |\n{}",
            mesh.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        )
    }

    #[test]
    fn registry_only_comes_from_the_root_namespaces_mesh_config() {
        let (m, w) = mesh(&config_map(
            "istio-system",
            "accessLogFile: /dev/stdout\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY",
        ));
        assert_eq!(
            m.outbound_traffic_policy,
            pb::OutboundTrafficPolicy::RegistryOnly as i32
        );
        assert!(w.is_empty(), "{w:?}");
        // Another namespace's `istio` ConfigMap is not the mesh config.
        let (m, _) = mesh(&config_map(
            "default",
            "outboundTrafficPolicy: {mode: REGISTRY_ONLY}",
        ));
        assert_eq!(m, pb::MeshSettings::default());
        // No ConfigMap: the default.
        assert_eq!(mesh("").0, pb::MeshSettings::default());
    }

    #[test]
    fn a_bad_mesh_config_warns_and_allows_any() {
        for (text, why) in [
            ("outboundTrafficPolicy: {mode: SOMETIMES}", "\"SOMETIMES\""),
            ("outboundTrafficPolicy: [", "not valid YAML"),
        ] {
            let (m, w) = mesh(&config_map("istio-system", text));
            assert_eq!(m, pb::MeshSettings::default(), "{text}");
            assert!(w.iter().any(|w| w.message.contains(why)), "{w:?}");
        }
    }
}
