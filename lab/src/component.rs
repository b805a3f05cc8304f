//! The multi-call entry: a binary that links every mesh component (`ambientctl`, `bench`)
//! runs one of them as `<binary> component <name> [args]`, so the local runtime and the
//! benchmarks need nothing else installed. The same code backs the standalone
//! `ambient-controller`, `ztunnel`, `node-agent` and `waypoint` binaries.

use std::ffi::OsString;

/// Components this binary can run.
pub const COMPONENTS: &[&str] = &["controller", "ztunnel", "node-agent", "waypoint"];

/// Runs component `name` with `args` (without a program name).
pub fn run(name: &str, args: Vec<OsString>) -> anyhow::Result<()> {
    let argv = std::iter::once(OsString::from(name)).chain(args);
    match name {
        "controller" => ambient_controller::cli::main(argv),
        "ztunnel" => ztunnel::cli::ztunnel_main(argv),
        "node-agent" => ztunnel::cli::agent_main(argv),
        "waypoint" => waypoint::cli::main(argv),
        other => anyhow::bail!("unknown component {other}; expected one of {COMPONENTS:?}"),
    }
}

/// How to start one component: its standalone binary, or a multi-call binary with
/// `component <name>` in front of the component's own arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub exe: std::path::PathBuf,
    leading: Vec<String>,
}

impl Program {
    /// `exe component <name> ...` (`exe` links every component: `ambientctl`, `bench`).
    pub fn multi_call(exe: &std::path::Path, name: &str) -> Self {
        Program {
            exe: exe.to_path_buf(),
            leading: vec!["component".into(), name.into()],
        }
    }

    /// `exe ...`: the component's own binary, as a node runs it.
    pub fn standalone(exe: &std::path::Path) -> Self {
        Program {
            exe: exe.to_path_buf(),
            leading: Vec::new(),
        }
    }

    /// The full argument list for the component's `args`.
    pub fn args(&self, args: impl IntoIterator<Item = String>) -> Vec<String> {
        self.leading.iter().cloned().chain(args).collect()
    }
}
