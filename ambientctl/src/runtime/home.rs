//! Where a local mesh keeps its state on the host, so that every `ambientctl` command finds
//! the running mesh: `$AMBIENT_HOME`, else `$XDG_RUNTIME_DIR/ambient-rs`, else
//! `/tmp/ambient-rs-<uid>`.
//!
//! ```text
//! lock          flock held by the running mesh's supervisor: one mesh at a time
//! mesh.json     the running mesh: supervisor pid, manifest directory, state
//! control.sock  the supervisor's HTTP API (status, proxies' admin endpoints)
//! run/          logs, certificates, namespaces' mount points (removed by `down`)
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

pub const HOME_ENV: &str = "AMBIENT_HOME";

/// The mesh's lifecycle, as `mesh.json` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Ready,
    Stopping,
}

/// `mesh.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MeshInfo {
    /// The supervisor (root of the sandbox's namespaces), as the host sees it.
    pub pid: u32,
    pub manifests: PathBuf,
    pub nodes: Vec<String>,
    pub phase: Phase,
    /// Seconds since the Unix epoch.
    pub started: u64,
    /// The host's kubeconfig, when the mesh runs on a Kubernetes API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The scrape port on the host's loopback ([`super::scrape_port`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_address: Option<std::net::SocketAddr>,
    /// Why the supervisor stopped, when it did on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "a mesh is already running (pid {pid}, manifests {manifests}); stop it with `ambientctl down`"
    )]
    Busy { pid: u32, manifests: String },
    #[error("a mesh is already starting or stopping in {0}; try again in a moment")]
    Locked(String),
    #[error("no mesh is running; start one with `ambientctl up DIR`")]
    NotRunning,
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Home {
    pub dir: PathBuf,
}

/// Holding this means being the one mesh of this home.
pub struct HomeLock {
    _lock: Flock<File>,
}

impl Home {
    /// The default location (see the module documentation).
    pub fn locate() -> Home {
        let dir = if let Some(d) = std::env::var_os(HOME_ENV) {
            PathBuf::from(d)
        } else if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
            PathBuf::from(d).join("ambient-rs")
        } else {
            PathBuf::from(format!("/tmp/ambient-rs-{}", nix::unistd::getuid()))
        };
        Home { dir }
    }

    pub fn at(dir: impl Into<PathBuf>) -> Home {
        Home { dir: dir.into() }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn info_path(&self) -> PathBuf {
        self.dir.join("mesh.json")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The host's kubeconfig for a mesh started with `up --kubernetes`.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.run_dir().join("kubeconfig")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.run_dir().join("logs")
    }

    /// Takes the lock without waiting. Fails with [`HomeError::Busy`] when a mesh runs.
    pub fn lock(&self) -> Result<HomeLock, HomeError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(HomeLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(match self.info() {
                Ok(info) => HomeError::Busy {
                    pid: info.pid,
                    manifests: info.manifests.display().to_string(),
                },
                Err(_) => HomeError::Locked(self.dir.display().to_string()),
            }),
            Err((_, e)) => Err(io(&path)(e.into())),
        }
    }

    /// Whether a supervisor holds the lock.
    pub fn is_locked(&self) -> bool {
        matches!(
            self.lock(),
            Err(HomeError::Busy { .. } | HomeError::Locked(_))
        )
    }

    /// The running mesh.
    pub fn info(&self) -> Result<MeshInfo, HomeError> {
        let path = self.info_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HomeError::NotRunning);
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_str(&text).map_err(|e| HomeError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The running mesh, only if its supervisor is alive.
    pub fn running(&self) -> Result<MeshInfo, HomeError> {
        let info = self.info()?;
        if !self.is_locked() {
            return Err(HomeError::NotRunning);
        }
        Ok(info)
    }

    pub fn write_info(&self, info: &MeshInfo) -> Result<(), HomeError> {
        let path = self.info_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(info).expect("plain data");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Removes what a stopped mesh left: its run directory (except the logs, kept in
    /// `last-logs/` for a post-mortem), `mesh.json` and the control socket.
    pub fn clean(&self) -> Result<(), HomeError> {
        let last = self.dir.join("last-logs");
        let _ = std::fs::remove_dir_all(&last);
        let logs = self.logs_dir();
        if logs.exists() {
            std::fs::rename(&logs, &last).map_err(io(&logs))?;
        }
        for path in [self.run_dir()] {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        for path in [self.info_path(), self.control_socket()] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(())
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_at_a_time_and_busy_names_the_mesh() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let held = home.lock().unwrap();
        home.write_info(&MeshInfo {
            pid: 42,
            manifests: "/m".into(),
            nodes: vec!["node-1".into()],
            phase: Phase::Ready,
            started: 0,
            kubeconfig: None,
            scrape_address: None,
            error: None,
        })
        .unwrap();
        let e = home.lock().err().unwrap().to_string();
        assert!(e.contains("already running (pid 42, manifests /m)"), "{e}");
        assert!(home.running().is_ok());
        drop(held);
        assert!(matches!(home.running(), Err(HomeError::NotRunning)));
        home.clean().unwrap();
        assert!(matches!(home.info(), Err(HomeError::NotRunning)));
    }
}
