//! `berth system df`: disk used by images, containers and volumes, and what is
//! reclaimable, with Docker's columns.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::image::human_size;
use super::GlobalOpts;

#[derive(Debug, clap::Subcommand)]
pub enum SystemCommand {
    /// Show berth disk usage
    Df,
}

/// Bytes under `dir`, not following symlinks.
fn du(dir: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0)
}

pub async fn run(g: &GlobalOpts, cmd: SystemCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SystemCommand::Df => {
            // The images line comes from the image store's own accounting.
            super::image::run(g, super::image::ImageCommand::Df).await?;
            let root = crate::state::Root::new(&g.root);
            let rt = berth_runtime::Runtime::new(root.containers_dir());
            let containers = rt.list().context("listing containers")?;
            let rw = root.path().join("rw");
            let (mut total, mut reclaim, mut active) = (0u64, 0u64, 0usize);
            let mut used_dirs = Vec::new();
            for c in &containers {
                let size = du(&rw.join(c.id().as_str()));
                total += size;
                let running = matches!(
                    c.status(),
                    Ok(berth_runtime::Status::Running | berth_runtime::Status::Paused)
                );
                if running {
                    active += 1;
                } else {
                    reclaim += size;
                }
                for m in &c.spec().mounts {
                    if let berth_runtime::Mount::Bind { source, .. } = m {
                        used_dirs.push(source.clone());
                    }
                }
            }
            println!(
                "{:<16}{:<8}{:<8}{:<12}{}",
                "Containers",
                containers.len(),
                active,
                human_size(total),
                human_size(reclaim)
            );
            let store = crate::volume::VolumeStore::new(root.volumes_dir());
            let vols = store.list().context("listing volumes")?;
            let (mut vtotal, mut vreclaim, mut vactive) = (0u64, 0u64, 0usize);
            for v in &vols {
                let data = root.volumes_dir().join(&v.name).join("_data");
                let size = du(&data);
                vtotal += size;
                if used_dirs.iter().any(|d| d == &data) {
                    vactive += 1;
                } else {
                    vreclaim += size;
                }
            }
            println!(
                "{:<16}{:<8}{:<8}{:<12}{}",
                "Local Volumes",
                vols.len(),
                vactive,
                human_size(vtotal),
                human_size(vreclaim)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
