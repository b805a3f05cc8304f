//! Wiring: certificates, xDS, the HBONE listener, admin, metrics and readiness.

use crate::cli::Args;

/// Runs until SIGTERM / SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("waypoint for {} is not wired yet", args.gateway)
}
