//! What a proxy still waits for before it reports ready on 15021.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeSet<&'static str>>>,
}

impl Readiness {
    /// Ready once every one of `tasks` has been marked.
    pub fn new(tasks: &[&'static str]) -> Self {
        Readiness {
            pending: Arc::new(Mutex::new(tasks.iter().copied().collect())),
        }
    }

    pub fn mark(&self, task: &'static str) {
        self.pending.lock().expect("poisoned").remove(task);
    }

    pub fn pending(&self) -> Vec<&'static str> {
        self.pending
            .lock()
            .expect("poisoned")
            .iter()
            .copied()
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        self.pending.lock().expect("poisoned").is_empty()
    }
}
