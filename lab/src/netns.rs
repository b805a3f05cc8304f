//! Creating network namespaces that other processes can open by path (as `ip netns add`
//! does): a thread unshares into a fresh namespace and bind-mounts it onto a file.

use std::path::Path;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use ztunnel::inpod::netns::Netns;

use ztunnel::agent::rtnl::{Rtnl, RtnlError};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("creating namespace {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("setting up loopback: {0}")]
    Loopback(#[from] RtnlError),
}

/// Creates a namespace mounted at `path`, with its loopback up.
pub fn create(path: &Path) -> Result<Netns, NetnsError> {
    let err = |source| NetnsError::Create {
        path: path.display().to_string(),
        source,
    };
    std::fs::File::create(path).map_err(err)?;
    let target = path.to_path_buf();
    // unshare() moves only the calling thread, so a short-lived one does it.
    std::thread::spawn(move || -> std::io::Result<()> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })
    .join()
    .expect("namespace thread")
    .map_err(err)?;
    let netns = Netns::open(path).map_err(err)?;
    Rtnl::open_in(&netns)?.set_up("lo", None)?;
    Ok(netns)
}

/// Unmounts and deletes a namespace's mount point made by [`create`].
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    let err = |source| NetnsError::Create {
        path: path.display().to_string(),
        source,
    };
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(err(e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Turns IPv4 forwarding on in `netns` (it routes for its pods).
pub fn enable_forwarding(netns: &Netns) -> std::io::Result<()> {
    // /proc/sys/net is per namespace: the file opened inside is that namespace's.
    netns.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))?
}
