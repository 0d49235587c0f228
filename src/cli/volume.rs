//! `berth volume ls|inspect|create|rm|prune` with Docker's habits: `rm` and `prune` never
//! touch a volume that a container (running or not) mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::GlobalOpts;
use crate::state::Root;
use crate::volume::VolumeStore;

#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// List volumes
    Ls {
        /// Only display volume names
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Display detailed information on one or more volumes
    Inspect { names: Vec<String> },
    /// Create a volume
    Create {
        /// Set metadata for a volume (KEY=VALUE)
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
        name: String,
    },
    /// Remove one or more volumes
    Rm {
        /// Accepted for Docker's habit; a volume in use is never removed
        #[arg(short = 'f', long)]
        force: bool,
        names: Vec<String>,
    },
    /// Remove unused volumes
    Prune {
        /// Accepted for Docker's habit (berth does not ask)
        #[arg(short = 'f', long)]
        force: bool,
    },
}

/// Data dirs bound into any container known to the runtime, with the containers.
fn in_use(root: &Root) -> BTreeMap<PathBuf, Vec<String>> {
    let mut out: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    let rt = berth_runtime::Runtime::new(root.containers_dir());
    for c in rt.list().unwrap_or_default() {
        for m in &c.spec().mounts {
            if let berth_runtime::Mount::Bind { source, .. } = m {
                out.entry(source.clone())
                    .or_default()
                    .push(c.id().to_string());
            }
        }
    }
    out
}

pub async fn run(g: &GlobalOpts, cmd: VolumeCommand) -> anyhow::Result<ExitCode> {
    let root = Root::new(&g.root);
    let store = VolumeStore::new(root.volumes_dir());
    let data = |name: &str| root.volumes_dir().join(name).join("_data");
    match cmd {
        VolumeCommand::Ls { quiet } => {
            let vols = store.list()?;
            if !quiet {
                println!("{:<10}VOLUME NAME", "DRIVER");
            }
            for v in vols {
                if quiet {
                    println!("{}", v.name);
                } else {
                    println!("{:<10}{}", "local", v.name);
                }
            }
        }
        VolumeCommand::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                let v = store
                    .get(n)?
                    .with_context(|| format!("no such volume: {n}"))?;
                out.push(serde_json::json!({
                    "CreatedAt": v.created,
                    "Driver": "local",
                    "Labels": v.labels,
                    "Mountpoint": data(n),
                    "Name": v.name,
                    "Options": {},
                    "Scope": "local",
                }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCommand::Create { labels, name } => {
            let mut l = BTreeMap::new();
            for kv in labels {
                let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                l.insert(k.to_string(), v.to_string());
            }
            store.ensure(&name, &l)?;
            println!("{name}");
        }
        VolumeCommand::Rm { force: _, names } => {
            let used = in_use(&root);
            let mut failed = false;
            for n in &names {
                if store.get(n)?.is_none() {
                    eprintln!("berth: no such volume: {n}");
                    failed = true;
                    continue;
                }
                if let Some(users) = used.get(&data(n)) {
                    eprintln!(
                        "berth: volume {n} is in use by container(s) {}",
                        users.join(", ")
                    );
                    failed = true;
                    continue;
                }
                store.remove(n)?;
                println!("{n}");
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        VolumeCommand::Prune { force: _ } => {
            let used: BTreeSet<PathBuf> = in_use(&root).into_keys().collect();
            println!("Deleted Volumes:");
            for v in store.list()? {
                // Like Docker ≥ 23: only anonymous volumes are pruned by default.
                let anonymous = v.name.contains("-anon-");
                if anonymous && !used.contains(&data(&v.name)) {
                    store.remove(&v.name)?;
                    println!("{}", v.name);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
