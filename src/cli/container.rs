//! `berth container ...`: single containers with docker-run habits (owned by the runtime work).

use std::process::ExitCode;

use super::GlobalOpts;

#[derive(Debug, clap::Subcommand)]
pub enum ContainerCommand {
    /// List containers
    Ls,
}

pub async fn run(_g: &GlobalOpts, _cmd: ContainerCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`berth container` is not built yet")
}
