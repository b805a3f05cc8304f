//! `ambientctl exec`: run a command inside a pod of the running mesh. This process joins
//! the mesh's user and mount namespaces (through its supervisor), then the pod's network
//! namespace, takes a mount namespace of its own showing the pod's `/etc/resolv.conf` and
//! `/etc/hosts`, and replaces itself with the command: stdin, stdout, stderr and the exit
//! code are the command's own.
//!
//! Joining a user namespace requires a single-threaded process, so this runs before any
//! runtime or thread is started.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use super::home::Home;
use super::pod::{resolve_command, search_path};

#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error(transparent)]
    Home(#[from] super::home::HomeError),
    #[error("pod {0} not found in the running mesh (see `ambientctl status`)")]
    NoPod(String),
    #[error("command {0:?} not found (looked next to ambientctl and in $PATH)")]
    NoCommand(String),
    #[error("joining the mesh's namespaces ({step}): {source}")]
    Join {
        step: &'static str,
        source: nix::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("exec must run before any other thread starts")]
    Threaded,
}

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(1)
}

fn same_namespace(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.ino() == y.ino() && x.dev() == y.dev(),
        _ => false,
    }
}

fn join(path: &Path, kind: CloneFlags, step: &'static str) -> Result<(), EnterError> {
    let file = std::fs::File::open(path)?;
    nix::sched::setns(file.as_fd(), kind).map_err(|source| EnterError::Join { step, source })
}

/// Where a pod's network namespace is mounted inside the mesh.
pub fn pod_netns_path(home: &Home, namespace: &str, name: &str) -> PathBuf {
    home.run_dir()
        .join("netns")
        .join(format!("pod-{namespace}-{name}"))
}

/// Replaces this process with `command` running in pod `namespace/name`. Returns only on
/// error.
pub fn exec_in_pod(home: &Home, namespace: &str, name: &str, command: &[OsString]) -> EnterError {
    match prepare(home, namespace, name, command) {
        Ok(mut cmd) => cmd.exec().into(),
        Err(e) => e,
    }
}

fn prepare(
    home: &Home,
    namespace: &str,
    name: &str,
    command: &[OsString],
) -> Result<std::process::Command, EnterError> {
    let info = home.running()?;
    let netns_path = pod_netns_path(home, namespace, name);
    if !netns_path.exists() {
        return Err(EnterError::NoPod(format!("{namespace}/{name}")));
    }
    let program = command
        .first()
        .and_then(|c| c.to_str())
        .ok_or_else(|| EnterError::NoCommand(String::new()))?;
    let exe = resolve_command(program, &search_path())
        .ok_or_else(|| EnterError::NoCommand(program.to_string()))?;
    if threads() != 1 {
        return Err(EnterError::Threaded);
    }
    let cwd = std::env::current_dir().ok();
    let proc_ns = PathBuf::from(format!("/proc/{}/ns", info.pid));
    // Open both before joining: /proc as seen from inside is the same, but be explicit.
    if !same_namespace(&proc_ns.join("user"), Path::new("/proc/self/ns/user")) {
        join(&proc_ns.join("user"), CloneFlags::CLONE_NEWUSER, "user")?;
    }
    join(&proc_ns.join("mnt"), CloneFlags::CLONE_NEWNS, "mount")?;
    join(&netns_path, CloneFlags::CLONE_NEWNET, "pod network")?;
    // The pod's view of /etc, in a mount namespace of our own.
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|source| EnterError::Join {
        step: "private mounts",
        source,
    })?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|source| EnterError::Join {
        step: "private mounts",
        source,
    })?;
    let dir = home
        .run_dir()
        .join("pods")
        .join(format!("{namespace}_{name}"));
    for file in ["resolv.conf", "hosts"] {
        let source = dir.join(file);
        if source.exists() {
            let _ = nix::mount::mount(
                Some(&source),
                &Path::new("/etc").join(file),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            );
        }
    }
    // Joining a mount namespace moves us to its root.
    if let Some(cwd) = cwd {
        let _ = std::env::set_current_dir(cwd);
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0(program).args(&command[1..]);
    Ok(cmd)
}
