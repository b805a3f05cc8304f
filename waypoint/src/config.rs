//! The waypoint's L7 configuration as the controller sent it (`L7Resource`s), held as one
//! immutable snapshot the request path loads without locks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ambient_proto::ambient::waypoint::v1 as pb;
use arc_swap::ArcSwap;
use bytes::Bytes;
use prost::Message;
use proxy_core::state::Rejected;
use tokio::sync::watch;

/// Every L7 resource, keyed as the data path looks them up.
#[derive(Debug, Default, Clone)]
pub struct L7Snapshot {
    /// By `namespace/hostname` (the Address resource's name of the service).
    pub services: HashMap<String, Arc<pb::ServiceConfig>>,
    /// By `namespace/name`.
    pub gateways: HashMap<String, Arc<pb::GatewayConfig>>,
}

/// xDS resource name → the key it is stored under.
enum Key {
    Service(String),
    Gateway(String),
}

fn key(name: &str) -> Option<Key> {
    if let Some(rest) = name.strip_prefix("service/") {
        Some(Key::Service(rest.to_string()))
    } else {
        name.strip_prefix("gateway/")
            .map(|rest| Key::Gateway(rest.to_string()))
    }
}

/// The store: the xDS client writes, the proxy reads.
pub struct L7Store {
    current: ArcSwap<L7Snapshot>,
    writer: Mutex<()>,
    version: watch::Sender<u64>,
}

impl Default for L7Store {
    fn default() -> Self {
        L7Store {
            current: ArcSwap::from_pointee(L7Snapshot::default()),
            writer: Mutex::new(()),
            version: watch::channel(0).0,
        }
    }
}

impl L7Store {
    pub fn load(&self) -> Arc<L7Snapshot> {
        self.current.load_full()
    }

    /// Ticks on every applied update.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Applies decoded upserts and removals; returns the rejections.
    pub fn apply(&self, upserts: Vec<(String, Bytes)>, removes: &[String]) -> Vec<Rejected> {
        let _guard = self.writer.lock().expect("poisoned");
        let mut next = (**self.current.load()).clone();
        let mut errors = Vec::new();
        for name in removes {
            match key(name) {
                Some(Key::Service(k)) => {
                    next.services.remove(&k);
                }
                Some(Key::Gateway(k)) => {
                    next.gateways.remove(&k);
                }
                None => {}
            }
        }
        for (name, body) in upserts {
            let resource = match pb::L7Resource::decode(body) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(Rejected {
                        name,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            match (key(&name), resource.kind) {
                (Some(Key::Service(k)), Some(pb::l7_resource::Kind::Service(s))) => {
                    next.services.insert(k, Arc::new(s));
                }
                (Some(Key::Gateway(k)), Some(pb::l7_resource::Kind::Gateway(g))) => {
                    next.gateways.insert(k, Arc::new(g));
                }
                _ => errors.push(Rejected {
                    name,
                    reason: "the name's prefix and the resource's kind disagree".into(),
                }),
            }
        }
        self.current.store(Arc::new(next));
        self.version.send_modify(|v| *v += 1);
        errors
    }
}

/// The xDS subscription feeding an [`L7Store`].
pub struct L7Subscription(pub Arc<L7Store>);

impl proxy_core::xds::ExtraType for L7Subscription {
    fn type_url(&self) -> &'static str {
        ambient_proto::L7_TYPE_URL
    }

    fn readiness_task(&self) -> &'static str {
        "xds:l7"
    }

    fn apply(&self, upserts: Vec<(String, Bytes)>, removes: &[String]) -> Vec<Rejected> {
        self.0.apply(upserts, removes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, host: &str) -> Bytes {
        pb::L7Resource {
            kind: Some(pb::l7_resource::Kind::Service(pb::ServiceConfig {
                namespace: ns.into(),
                hostname: host.into(),
                ..Default::default()
            })),
        }
        .encode_to_vec()
        .into()
    }

    #[test]
    fn applies_good_resources_and_rejects_bad_ones() {
        let store = L7Store::default();
        let errors = store.apply(
            vec![
                ("service/a/x.a.svc.cluster.local".into(), service("a", "x")),
                ("gateway/a/wp".into(), service("a", "y")),
                ("service/a/z".into(), Bytes::from_static(&[0xff, 0xff])),
            ],
            &[],
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].name, "gateway/a/wp");
        assert_eq!(errors[1].name, "service/a/z");
        let snap = store.load();
        assert!(snap.services.contains_key("a/x.a.svc.cluster.local"));
        assert!(snap.gateways.is_empty());
        store.apply(vec![], &["service/a/x.a.svc.cluster.local".into()]);
        assert!(store.load().services.is_empty());
    }
}
