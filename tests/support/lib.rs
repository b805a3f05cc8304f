//! What every end-to-end test shares: the binaries under test, built fresh on first use.
//!
//! The tests run the real `ambientctl` (which also runs every mesh component through
//! `ambientctl component ...`) and the `demo-app` the example pods run. They are another
//! package's binaries, so cargo does not build them for this one: the first test that asks
//! builds them with the same cargo and profile as the test itself (a no-op when they are up
//! to date), so a test never runs a stale binary. They go to a target directory of their own
//! beside the test's (`<target>/e2e-bins`): built for two packages rather than the
//! workspace, ring and its dependents come out with other features and build-script inputs,
//! and sharing one directory rebuilt them (~1 min) on every switch between the two.

#![forbid(unsafe_code)]

pub mod background;
pub mod browser;
pub mod loopback;
pub mod poll;

pub use background::Background;
pub use poll::until;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Packages whose binaries the tests run (`ztunnel` for its CNI plugin, `ambient-cni`).
const BINARIES: [&str; 3] = ["ambientctl", "demo-app", "ztunnel"];

/// The directory cargo put this test executable's profile in (`target/<profile>`); test
/// executables live in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("deps directory");
    deps.parent().expect("profile directory").to_path_buf()
}

/// Builds the binaries once per test process; returns the directory holding them.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let profile = profile_dir();
        let target = profile.parent().expect("target directory").join("e2e-bins");
        let dir = target.join(profile.file_name().expect("profile name"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut build = Command::new(cargo);
        build
            .arg("build")
            .arg("--manifest-path")
            .arg(workspace().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR");
        if profile.file_name() == Some(OsStr::new("release")) {
            build.arg("--release");
        }
        for p in BINARIES {
            build.args(["-p", p]);
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "building {BINARIES:?} failed");
        for b in BINARIES {
            assert!(
                dir.join(b).exists(),
                "{} was not built",
                dir.join(b).display()
            );
        }
        dir
    })
}

/// The built `ambientctl`, as a value that can stand wherever a path is expected
/// (`Command::new(EXE)`, `Path::new(EXE)`, `EXE.into()`).
#[derive(Clone, Copy, Debug)]
pub struct Exe;

/// The `ambientctl` under test.
pub const EXE: Exe = Exe;

impl Exe {
    pub fn path(self) -> &'static Path {
        static PATH: OnceLock<PathBuf> = OnceLock::new();
        PATH.get_or_init(|| bin_dir().join("ambientctl"))
    }
}

impl AsRef<OsStr> for Exe {
    fn as_ref(&self) -> &OsStr {
        self.path().as_os_str()
    }
}

impl AsRef<Path> for Exe {
    fn as_ref(&self) -> &Path {
        self.path()
    }
}

impl From<Exe> for PathBuf {
    fn from(e: Exe) -> PathBuf {
        e.path().to_path_buf()
    }
}

/// The CNI plugin under test (`ambient-cni`, a binary of the `ztunnel` package).
pub fn cni_plugin() -> PathBuf {
    bin_dir().join("ambient-cni")
}

/// Copies the files of `from` (not its subdirectories) into `to`, creating it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The workspace's root directory.
pub fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}
