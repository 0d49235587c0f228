//! `berth network ...` (owned by the network work).

use std::process::ExitCode;

use super::GlobalOpts;

#[derive(Debug, clap::Subcommand)]
pub enum NetworkCommand {
    /// List networks
    Ls,
}

pub async fn run(_g: &GlobalOpts, _cmd: NetworkCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`berth network` is not built yet")
}
