//! Which identities run on which node: the CA's answer to "may this ztunnel ask for that?".
//!
//! For now the answer comes from the static workload file ztunnel can also run from; the
//! controller's resource index answers it once the Kubernetes and manifest sources exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use ambient_proto::identity::Identity;
use ambient_proto::local::{LocalConfig, LocalConfigError};

/// Answers which identities have pods on a node.
pub trait NodeDirectory: Send + Sync {
    fn runs_on(&self, node: &str, identity: &Identity) -> bool;
    /// Every node that has at least one workload.
    fn nodes(&self) -> Vec<String>;
}

/// Identities per node, and when the file they came from was modified.
#[derive(Default)]
struct Loaded {
    modified: Option<SystemTime>,
    by_node: BTreeMap<String, BTreeSet<Identity>>,
}

/// A [`NodeDirectory`] read from a local workload file, re-read when the file changes.
pub struct FileNodeDirectory {
    path: PathBuf,
    state: RwLock<Loaded>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: LocalConfigError,
    },
}

impl FileNodeDirectory {
    pub fn open(path: &Path) -> Result<Self, DirectoryError> {
        let dir = FileNodeDirectory {
            path: path.to_path_buf(),
            state: RwLock::new(Loaded::default()),
        };
        dir.reload()?;
        Ok(dir)
    }

    /// Re-reads the file if it changed. A bad edit keeps the last good contents.
    pub fn reload(&self) -> Result<(), DirectoryError> {
        let io = |source| DirectoryError::Io {
            path: self.path.clone(),
            source,
        };
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(io)?;
        if self.state.read().expect("poisoned").modified == Some(modified) {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        let config = LocalConfig::parse(&text).map_err(|source| DirectoryError::Parse {
            path: self.path.clone(),
            source,
        })?;
        let mut by_node: BTreeMap<String, BTreeSet<Identity>> = BTreeMap::new();
        for w in &config.workloads {
            if w.node.is_empty() {
                continue;
            }
            let id = w.identity().map_err(|source| DirectoryError::Parse {
                path: self.path.clone(),
                source,
            })?;
            by_node.entry(w.node.clone()).or_default().insert(id);
        }
        *self.state.write().expect("poisoned") = Loaded {
            modified: Some(modified),
            by_node,
        };
        Ok(())
    }

    fn refreshed(&self) {
        if let Err(e) = self.reload() {
            tracing::warn!(error = %e, "keeping the last good workload file");
        }
    }
}

impl NodeDirectory for FileNodeDirectory {
    fn runs_on(&self, node: &str, identity: &Identity) -> bool {
        self.refreshed();
        self.state
            .read()
            .expect("poisoned")
            .by_node
            .get(node)
            .is_some_and(|ids| ids.contains(identity))
    }

    fn nodes(&self) -> Vec<String> {
        self.refreshed();
        self.state
            .read()
            .expect("poisoned")
            .by_node
            .keys()
            .cloned()
            .collect()
    }
}
