//! What the runtime tells a pod about itself (`POD_NAME`, `POD_NAMESPACE`, `POD_IP`,
//! `NODE_NAME`), so answers can say which replica served them.

use std::env;

/// The identity of the running replica.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub name: String,
    pub namespace: Option<String>,
    pub ip: Option<String>,
    pub node: Option<String>,
}

fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

impl PodInfo {
    /// Reads the pod's environment; outside a pod the name falls back to `HOSTNAME`, then
    /// to `local`.
    pub fn from_env() -> Self {
        Self {
            name: var("POD_NAME")
                .or_else(|| var("HOSTNAME"))
                .unwrap_or_else(|| "local".to_owned()),
            namespace: var("POD_NAMESPACE"),
            ip: var("POD_IP"),
            node: var("NODE_NAME"),
        }
    }

    /// `name`, or `namespace/name` when the namespace is known.
    pub fn qualified_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}
