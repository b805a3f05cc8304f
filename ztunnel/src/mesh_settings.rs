//! Mesh-wide settings the controller pushes (ambient-rs's own xDS type, one resource named
//! `mesh`): today, the outbound traffic policy. Read on every outbound connection to a
//! destination outside the mesh, so held in an atomic, never behind a lock.
//!
//! A controller that does not serve the type (Istio's istiod) leaves the defaults: nothing
//! waits for it, and ALLOW_ANY is Istio ztunnel's behaviour.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ambient_proto::ambient::mesh::v1 as pb;
use ambient_proto::{MESH_RESOURCE, MESH_TYPE_URL};
use bytes::Bytes;
use prost::Message;
use proxy_core::state::Rejected;
use tracing::info;

#[derive(Debug, Default)]
pub struct MeshSettings {
    registry_only: AtomicBool,
}

impl MeshSettings {
    /// Whether connections to destinations the mesh does not know are refused.
    pub fn registry_only(&self) -> bool {
        self.registry_only.load(Ordering::Relaxed)
    }

    fn set(&self, settings: &pb::MeshSettings) {
        let registry_only =
            settings.outbound_traffic_policy == pb::OutboundTrafficPolicy::RegistryOnly as i32;
        if self.registry_only.swap(registry_only, Ordering::Relaxed) != registry_only {
            info!(
                outbound_traffic_policy = if registry_only {
                    "REGISTRY_ONLY"
                } else {
                    "ALLOW_ANY"
                },
                "mesh settings changed"
            );
        }
    }
}

/// The xDS subscription feeding a [`MeshSettings`].
pub struct MeshSubscription(pub Arc<MeshSettings>);

impl proxy_core::xds::ExtraType for MeshSubscription {
    fn type_url(&self) -> &'static str {
        MESH_TYPE_URL
    }

    /// Not among the tasks readiness waits for (see the module doc).
    fn readiness_task(&self) -> &'static str {
        "xds:mesh"
    }

    fn apply(&self, upserts: Vec<(String, Bytes)>, removes: &[String]) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        if removes.iter().any(|n| n == MESH_RESOURCE) {
            self.0.set(&pb::MeshSettings::default());
        }
        for (name, body) in upserts {
            if name != MESH_RESOURCE {
                rejected.push(Rejected {
                    name,
                    reason: format!("mesh settings must be named {MESH_RESOURCE:?}"),
                });
                continue;
            }
            match pb::MeshSettings::decode(body) {
                Ok(settings) => self.0.set(&settings),
                Err(e) => rejected.push(Rejected {
                    name,
                    reason: format!("not MeshSettings: {e}"),
                }),
            }
        }
        rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_core::xds::ExtraType;

    fn body(policy: pb::OutboundTrafficPolicy) -> Bytes {
        pb::MeshSettings {
            outbound_traffic_policy: policy as i32,
        }
        .encode_to_vec()
        .into()
    }

    #[test]
    fn follows_what_the_controller_sends() {
        let settings = Arc::new(MeshSettings::default());
        let sub = MeshSubscription(settings.clone());
        assert!(!settings.registry_only());
        let rejected = sub.apply(
            vec![("mesh".into(), body(pb::OutboundTrafficPolicy::RegistryOnly))],
            &[],
        );
        assert!(rejected.is_empty());
        assert!(settings.registry_only());
        // Removed: back to the default.
        sub.apply(Vec::new(), &["mesh".into()]);
        assert!(!settings.registry_only());
    }

    #[test]
    fn bad_resources_are_refused_and_change_nothing() {
        let settings = Arc::new(MeshSettings::default());
        let sub = MeshSubscription(settings.clone());
        sub.apply(
            vec![("mesh".into(), body(pb::OutboundTrafficPolicy::RegistryOnly))],
            &[],
        );
        let rejected = sub.apply(
            vec![
                ("other".into(), body(pb::OutboundTrafficPolicy::AllowAny)),
                ("mesh".into(), Bytes::from_static(&[0xff, 0xff, 0xff])),
            ],
            &[],
        );
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert!(settings.registry_only(), "the last good settings stay");
    }
}
