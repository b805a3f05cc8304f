//! Running code inside another network namespace.
//!
//! A socket belongs to the namespace it was created in, for life. ztunnel creates each pod's
//! sockets by switching the current thread into the pod's namespace for the duration of a
//! `socket()` call and switching straight back; no await happens in between.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use nix::sched::{CloneFlags, setns};

/// A network namespace held open by file descriptor.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    /// (device, inode): identifies the namespace across different fds.
    id: (u64, u64),
}

/// The namespace the process started in; threads return here after [`Netns::run`].
fn home() -> &'static Netns {
    static HOME: OnceLock<Netns> = OnceLock::new();
    HOME.get_or_init(|| Netns::open(Path::new("/proc/self/ns/net")).expect("own netns"))
}

impl Netns {
    /// Wraps `fd`, which must refer to a network namespace (an nsfs file), not just any file.
    pub fn from_fd(fd: OwnedFd) -> std::io::Result<Self> {
        let fs = nix::sys::statfs::fstatfs(&fd)?;
        if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a namespace file",
            ));
        }
        let meta = File::from(fd.try_clone()?).metadata()?;
        Ok(Netns {
            fd,
            id: (meta.dev(), meta.ino()),
        })
    }

    pub fn open(path: &Path) -> std::io::Result<Self> {
        Netns::from_fd(File::open(path)?.into())
    }

    /// The namespace of the calling thread.
    pub fn current() -> std::io::Result<Self> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Inode number of the namespace (what `ip netns identify` compares).
    pub fn inode(&self) -> u64 {
        self.id.1
    }

    pub fn same_as(&self, other: &Netns) -> bool {
        self.id == other.id
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Runs `f` with the current thread inside this namespace.
    ///
    /// `f` must not block or await: it runs on whatever thread calls this (often a runtime
    /// worker), which is back in its home namespace when this returns, even if `f` panics.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> std::io::Result<T> {
        let home = home();
        if self.same_as(home) {
            return Ok(f());
        }
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        struct Restore(&'static Netns);
        impl Drop for Restore {
            fn drop(&mut self) {
                // A thread stuck in a pod's namespace would silently misroute later sockets.
                if let Err(e) = setns(self.0.fd.as_fd(), CloneFlags::CLONE_NEWNET) {
                    eprintln!("fatal: cannot return to the home network namespace: {e}");
                    std::process::abort();
                }
            }
        }
        let _restore = Restore(home);
        Ok(f())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_namespaces_and_refuses_other_files() {
        let own = Netns::current().unwrap();
        assert!(own.same_as(home()));
        let again = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(own.inode(), again.inode());
        let err = Netns::open(Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        // Running "inside" our own namespace is a plain call.
        assert_eq!(own.run(|| 7).unwrap(), 7);
    }
}
