//! `ambientctl install` (being written).

#[derive(clap::Args, Debug, Clone)]
pub struct InstallArgs {}

pub fn run(_args: InstallArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet available")
}
