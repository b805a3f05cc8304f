//! `ambientctl component <name> [args]`: runs a mesh component from this one binary, so the
//! local runtime needs nothing else installed. The same code backs the standalone
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
