//! Entering the sandbox: the current executable re-runs itself as root of new user, mount and
//! network namespaces, so the whole mesh is built without privileges and without any route
//! to the host's network.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use super::spawn::{self, Entry};

/// Set (to a test name or `1`) in a process running inside the sandbox.
pub const INSIDE_ENV: &str = "AMBIENT_SANDBOX";
/// The sandbox's scratch directory, made (and later removed) by the parent outside.
pub const RUN_DIR_ENV: &str = "AMBIENT_SANDBOX_DIR";

/// The scratch directory, when this process is inside a sandbox.
pub fn inside() -> Option<PathBuf> {
    std::env::var_os(INSIDE_ENV)?;
    std::env::var_os(RUN_DIR_ENV).map(PathBuf::from)
}

/// Runs the current executable with `args` inside a fresh sandbox and waits for it.
/// `marker` is put in [`INSIDE_ENV`]. The scratch directory is removed afterwards unless
/// `keep` (it is then printed).
pub fn reexec(args: &[OsString], marker: &str, keep: bool) -> std::io::Result<ExitStatus> {
    spawn::sandbox_supported().map_err(std::io::Error::other)?;
    let dir = tempfile::Builder::new().prefix("ambient-lab-").tempdir()?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(INSIDE_ENV, marker)
        .env(RUN_DIR_ENV, dir.path());
    spawn::configure(&mut cmd, Entry::NewSandbox);
    let status = cmd.status();
    if keep {
        let path = dir.keep();
        eprintln!("lab files kept in {}", path.display());
    }
    status
}

/// Runs a test body inside its own sandbox.
///
/// Outside the sandbox this re-runs the test binary for just `name` (the test function's
/// name) inside a new sandbox and asserts it passed; inside, it runs `body` on a tokio
/// runtime with the scratch directory. Set `AMBIENT_KEEP_LAB=1` to keep the directory
/// (logs, certificates) for inspection.
pub fn run_test<F, Fut, E>(name: &str, body: F)
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if std::env::var(INSIDE_ENV).as_deref() == Ok(name) {
        let dir = inside().expect("sandbox directory");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        if let Err(e) = runtime.block_on(body(dir)) {
            panic!("{name} failed: {e}");
        }
        return;
    }
    let keep = std::env::var_os("AMBIENT_KEEP_LAB").is_some();
    let args: Vec<OsString> = [name, "--exact", "--nocapture", "--test-threads=1"]
        .iter()
        .map(OsString::from)
        .collect();
    let status = reexec(&args, name, keep).expect("starting the sandbox");
    assert!(
        status.success(),
        "{name} failed inside its sandbox ({status})"
    );
}
