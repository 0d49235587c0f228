//! `berth image ...` and `berth images` (owned by the image work).

use std::process::ExitCode;

use super::GlobalOpts;

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// List images
    Ls(ImagesArgs),
}

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {}

pub async fn run(_g: &GlobalOpts, _cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`berth image` is not built yet")
}

pub async fn run_images(_g: &GlobalOpts, _args: ImagesArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`berth images` is not built yet")
}
