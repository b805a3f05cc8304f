//! Where configuration comes from. Every source feeds the same [`StateStore`] through
//! [`Update`]s, so the data path never knows which one is in use.
//!
//! - [`LocalFile`]: a YAML file of WDS resources (see [`super::local`]), re-read when it
//!   changes; a bad edit is reported and the last good contents stay in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::local::LocalConfig;
use tracing::{info, warn};

use super::{StateStore, Update};

/// Watches a local WDS file.
pub struct LocalFile {
    path: PathBuf,
    poll: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

impl LocalFile {
    pub fn new(path: &Path) -> Self {
        LocalFile {
            path: path.to_path_buf(),
            poll: Duration::from_secs(1),
        }
    }

    /// Loads the file once; fails if it is missing or malformed.
    pub fn load(&self, store: &StateStore) -> Result<SystemTime, SourceError> {
        let err = |reason: String| SourceError::File {
            path: self.path.clone(),
            reason,
        };
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(|e| err(e.to_string()))?;
        let text = std::fs::read_to_string(&self.path).map_err(|e| err(e.to_string()))?;
        let config = LocalConfig::parse(&text).map_err(|e| err(e.to_string()))?;
        let rejected = store.apply(Update {
            upserts: config.to_addresses(),
            replace_all: true,
            ..Default::default()
        });
        for r in rejected {
            warn!(file = %self.path.display(), resource = %r.name, reason = %r.reason, "resource ignored");
        }
        info!(
            file = %self.path.display(),
            workloads = config.workloads.len(),
            services = config.services.len(),
            "loaded local configuration"
        );
        Ok(modified)
    }

    /// Keeps re-loading the file whenever it changes after `loaded` (the modification time
    /// [`LocalFile::load`] returned).
    pub async fn run(self, store: Arc<StateStore>, loaded: SystemTime) -> Result<(), SourceError> {
        let mut last = loaded;
        loop {
            tokio::time::sleep(self.poll).await;
            let modified = match std::fs::metadata(&self.path).and_then(|m| m.modified()) {
                Ok(m) => m,
                Err(e) => {
                    warn!(file = %self.path.display(), error = %e, "cannot stat config; keeping the last good one");
                    continue;
                }
            };
            if modified == last {
                continue;
            }
            last = modified;
            if let Err(e) = self.load(&store) {
                warn!(error = %e, "keeping the last good configuration");
            }
        }
    }
}
