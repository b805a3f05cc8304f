//! `ambientctl analyze` (being written).

#[derive(clap::Args, Debug, Clone)]
pub struct AnalyzeArgs {}

pub fn run(_args: AnalyzeArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet available")
}
