//! Starting child processes in new or existing namespaces. This is the crate's one `unsafe`
//! spot: `Command::pre_exec`, whose closure runs between `fork` and `exec`, and adopting a
//! listening socket a parent passed down ([`inherited_listener`]).
//!
//! Everything the closure needs is prepared before `fork`; inside it makes only raw system
//! calls (no allocation, no locks), as the post-fork rules of a multi-threaded parent demand.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::process::Command;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;

/// What the child does before `exec`.
pub enum Entry {
    /// Become root of fresh user, mount and network namespaces (mapping our own uid/gid to
    /// 0), so everything after needs no privileges on the host.
    NewSandbox,
    /// Join this network namespace (a duplicate of its fd, closed again on exec).
    JoinNetns(OwnedFd),
    /// Stay in the parent's namespaces (only the [`Lifetime`] applies).
    Stay,
    /// A pod's container: join the pod's network namespace, then get a mount namespace of
    /// its own with each `(source, target)` file bind-mounted (the pod's `/etc/resolv.conf`
    /// and `/etc/hosts`). A bind that fails (no such target) is skipped.
    Pod {
        netns: OwnedFd,
        binds: Vec<(CString, CString)>,
    },
}

/// Whether the child stays tied to its parent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed when the thread that started it exits (a crashed parent leaves nothing).
    WithParent,
    /// Its own session, outliving the parent (`ambientctl up --detach`).
    Detached,
}

struct Prepared {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

fn fail(e: nix::Error) -> std::io::Error {
    std::io::Error::from(e)
}

fn write_file(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    let fd =
        nix::fcntl::open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(fail)?;
    nix::unistd::write(&fd, data).map_err(fail)?;
    Ok(())
}

/// Arranges for `cmd` to start inside `entry`, and to be killed if its parent dies (so a
/// failed test or a crashed runtime leaves nothing behind).
pub fn configure(cmd: &mut Command, entry: Entry) {
    configure_with(cmd, entry, Lifetime::WithParent)
}

/// [`configure`], choosing the child's [`Lifetime`].
#[allow(unsafe_code)]
pub fn configure_with(cmd: &mut Command, entry: Entry, lifetime: Lifetime) {
    let prepared = Prepared {
        uid_map: format!("0 {} 1\n", nix::unistd::getuid()).into_bytes(),
        gid_map: format!("0 {} 1\n", nix::unistd::getgid()).into_bytes(),
    };
    // Path literals as C strings, made before fork.
    let root = CString::new("/").expect("no NUL");
    let hook = move || -> std::io::Result<()> {
        match lifetime {
            Lifetime::WithParent => {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(fail)?
            }
            Lifetime::Detached => {
                nix::unistd::setsid().map_err(fail)?;
            }
        }
        match &entry {
            Entry::Stay => {}
            Entry::NewSandbox => {
                nix::sched::unshare(
                    CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET,
                )
                .map_err(fail)?;
                write_file(c"/proc/self/setgroups", b"deny")?;
                write_file(c"/proc/self/uid_map", &prepared.uid_map)?;
                write_file(c"/proc/self/gid_map", &prepared.gid_map)?;
                // Our mounts (namespace bind mounts) must not leak to the host.
                nix::mount::mount(
                    None::<&str>,
                    root.as_c_str(),
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .map_err(fail)?;
            }
            Entry::JoinNetns(fd) => {
                nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map_err(fail)?;
            }
            Entry::Pod { netns, binds } => {
                nix::sched::setns(netns, CloneFlags::CLONE_NEWNET).map_err(fail)?;
                nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(fail)?;
                nix::mount::mount(
                    None::<&str>,
                    root.as_c_str(),
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .map_err(fail)?;
                for (source, target) in binds {
                    let _ = nix::mount::mount(
                        Some(source.as_c_str()),
                        target.as_c_str(),
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    );
                }
            }
        }
        Ok(())
    };
    // SAFETY: the hook only issues system calls on data prepared before fork; it neither
    // allocates nor takes locks, so it is sound in the child of a multi-threaded parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, hook);
    }
}

/// Whether this process can create the sandbox (user namespaces are enabled).
pub fn sandbox_supported() -> Result<(), String> {
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if max.trim() == "0" {
        return Err(
            "user namespaces are disabled (/proc/sys/user/max_user_namespaces is 0)".into(),
        );
    }
    Ok(())
}

/// Lets `cmd`'s child inherit `listener` (it keeps the network namespace it was made in,
/// whatever namespaces the child enters) and tells it the descriptor's number in `env`.
/// Call with no other thread spawning processes: the descriptor stays open across `exec`
/// until [`inherited_listener`] takes it.
pub fn pass_listener(
    cmd: &mut Command,
    listener: &std::net::TcpListener,
    env: &str,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    nix::fcntl::fcntl(
        listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(fail)?;
    cmd.env(env, listener.as_raw_fd().to_string());
    Ok(())
}

/// The listener a parent passed with [`pass_listener`] under `env`, if any; it is marked
/// close-on-exec again so that no further child inherits it.
pub fn inherited_listener(env: &str) -> std::io::Result<Option<std::net::TcpListener>> {
    match std::env::var_os(env) {
        Some(value) => adopt_listener(env, &value).map(Some),
        None => Ok(None),
    }
}

/// Takes the descriptor numbered `value` (from variable `env`) as a listener. Only a
/// listening socket is adopted: anything else at that number is refused.
#[allow(unsafe_code)]
fn adopt_listener(env: &str, value: &std::ffi::OsStr) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::{AsFd, FromRawFd, RawFd};
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| std::io::Error::other(format!("{env}={value:?}: not a descriptor")))?;
    // SAFETY: the parent passed this descriptor for us to own: the variable names it, and
    // nothing else in this process opened or uses it (it was open before `main`). It is
    // checked to be a listening socket below, and closed exactly once, by its owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let accepting: bool =
        nix::sys::socket::getsockopt(&owned.as_fd(), nix::sys::socket::sockopt::AcceptConn)
            .map_err(fail)?;
    if !accepting {
        return Err(std::io::Error::other(format!(
            "{env}: descriptor {fd} is not a listening socket"
        )));
    }
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(fail)?;
    Ok(std::net::TcpListener::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    fn adopt(fd: impl ToString) -> std::io::Result<std::net::TcpListener> {
        adopt_listener("TEST_FD", std::ffi::OsStr::new(&fd.to_string()))
    }

    #[test]
    fn only_a_listening_socket_is_adopted() {
        assert!(
            inherited_listener("AMBIENT_TEST_NO_SUCH_VARIABLE")
                .unwrap()
                .is_none()
        );

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let adopted = adopt(listener.into_raw_fd()).unwrap();
        assert_eq!(adopted.local_addr().unwrap(), addr);

        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(adopt(file.into_raw_fd()).is_err(), "a file is no listener");

        let bound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let connected = std::net::TcpStream::connect(bound.local_addr().unwrap()).unwrap();
        let e = adopt(connected.into_raw_fd()).unwrap_err();
        assert!(e.to_string().contains("not a listening socket"), "{e}");

        for bad in ["2", "-1", "seven"] {
            let e = adopt(bad).unwrap_err();
            assert!(e.to_string().contains("not a descriptor"), "{bad}: {e}");
        }
    }
}
