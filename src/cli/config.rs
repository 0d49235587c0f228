//! `berth config`: print the resolved project (owned by the project loader work).

use std::process::ExitCode;

use super::GlobalOpts;

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {}

pub async fn run(_g: &GlobalOpts, _args: ConfigArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`berth config` is not built yet")
}
