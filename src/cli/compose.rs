//! The compose lifecycle verbs: `up`, `down`, `ps`, `logs` (owned by the orchestration work).

use std::process::ExitCode;

use super::GlobalOpts;

#[derive(Debug, clap::Subcommand)]
pub enum ComposeCommand {
    /// Create and start containers
    Up,
}

pub async fn run(_g: &GlobalOpts, _cmd: ComposeCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
