//! Which identities run on which node: the CA's answer to "may this ztunnel ask for that?".
//! The push loop refreshes it from the index after every change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ambient_proto::identity::Identity;
use arc_swap::ArcSwap;

/// Answers which identities have pods on a node.
pub trait NodeDirectory: Send + Sync {
    fn runs_on(&self, node: &str, identity: &Identity) -> bool;
    /// Every node that has at least one enrolled pod.
    fn nodes(&self) -> Vec<String>;
}

/// Identities by node, swapped in whole (lock-free reads).
#[derive(Default)]
pub struct NodeIdentities {
    by_node: ArcSwap<BTreeMap<String, BTreeSet<Identity>>>,
}

impl NodeIdentities {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, by_node: BTreeMap<String, BTreeSet<Identity>>) {
        self.by_node.store(Arc::new(by_node));
    }
}

impl NodeDirectory for NodeIdentities {
    fn runs_on(&self, node: &str, identity: &Identity) -> bool {
        self.by_node
            .load()
            .get(node)
            .is_some_and(|ids| ids.contains(identity))
    }

    fn nodes(&self) -> Vec<String> {
        self.by_node.load().keys().cloned().collect()
    }
}
