//! `berth image ...` and `berth images`: Docker's image commands over `image::store`.
//!
//! Takes parsed arguments and the global options (`--root` locates the store); gives
//! Docker-style tables and messages on stdout and an exit code. The work is in
//! `crate::image` (store, archive, registry); this file only parses, dispatches and
//! formats.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::GlobalOpts;
use crate::image::registry::{self, PullOptions, RegistryConfig};
use crate::image::store::{InUse, Store};
use crate::image::{archive, Digest, ImageRef};

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// List images
    #[command(visible_alias = "list")]
    Ls(ImagesArgs),
    /// Remove one or more images
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(TagArgs),
    /// Display detailed information on one or more images
    Inspect(InspectArgs),
    /// Show the history of an image
    History(HistoryArgs),
    /// Save one or more images to a tar archive (docker-archive + OCI layout)
    Save(SaveArgs),
    /// Load images from a tar archive or an OCI image layout directory
    Load(LoadArgs),
    /// Import the contents from a tarball to create a filesystem image
    Import(ImportArgs),
    /// Remove unused images
    Prune(PruneArgs),
    /// Show image store disk usage (images, layers, reclaimable bytes)
    Df,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Image reference (NAME[:TAG|@DIGEST])
    pub reference: String,
    /// Platform os/arch[/variant] (default: this machine's)
    #[arg(long)]
    pub platform: Option<String>,
    /// Suppress verbose output
    #[arg(short, long)]
    pub quiet: bool,
    /// Registries reached over plain HTTP besides localhost and 127.0.0.0/8 (repeatable)
    #[arg(
        long = "insecure-registry",
        env = "BERTH_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Image reference (NAME[:TAG])
    pub reference: String,
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(
        long = "insecure-registry",
        env = "BERTH_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Only show images of this repository (optionally with :TAG)
    pub repository: Option<String>,
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Show manifest digests
    #[arg(long)]
    pub digests: bool,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Force removal (images used by containers, images with several tags)
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct TagArgs {
    pub source: String,
    pub target: String,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    pub image: String,
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Write to a file instead of stdout
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Tar archive (docker-archive / OCI archive, optionally compressed) or OCI layout dir
    #[arg(short, long)]
    pub input: PathBuf,
    /// Repository for OCI layout entries that only carry a tag (berth extension)
    #[arg(long)]
    pub name: Option<String>,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Rootfs tar file (plain, gzip or zstd)
    pub file: PathBuf,
    /// Reference to tag the new image with
    pub reference: Option<String>,
    /// Apply Dockerfile instructions to the image (CMD, ENTRYPOINT, ENV, WORKDIR, ...)
    #[arg(short, long = "change")]
    pub changes: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Remove all images not used by a container, not just dangling ones
    #[arg(short, long)]
    pub all: bool,
    /// Do not prompt for confirmation (berth never prompts; accepted for Docker habits)
    #[arg(short, long)]
    pub force: bool,
}

pub async fn run(g: &GlobalOpts, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(&g.root)
        .with_context(|| format!("opening the image store in {}", g.root.display()))?;
    match cmd {
        ImageCommand::Pull(a) => pull(g, &store, a).await,
        ImageCommand::Push(a) => push(g, &store, a).await,
        ImageCommand::Ls(a) => list(&store, a),
        ImageCommand::Rm(a) => remove(g, &store, a),
        ImageCommand::Tag(a) => {
            let target = ImageRef::parse(&a.target)?;
            store.tag(&a.source, &target)?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Inspect(a) => inspect(&store, a),
        ImageCommand::History(a) => history(&store, a),
        ImageCommand::Save(a) => save(&store, a),
        ImageCommand::Load(a) => load(&store, a),
        ImageCommand::Import(a) => {
            let r = a.reference.as_deref().map(ImageRef::parse).transpose()?;
            let img = archive::import(&store, &a.file, r.as_ref(), &a.changes)
                .with_context(|| format!("importing {}", a.file.display()))?;
            println!("{}", img.id);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Prune(a) => {
            let (removed, report) = store.prune(a.all, &containers_in_use(&g.root))?;
            for d in &removed {
                println!("untagged: {d}");
            }
            println!("Total reclaimed space: {}", human_size(report.bytes_freed));
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Df => {
            let in_use = containers_in_use(&g.root);
            let images = store.list()?;
            let (blobs, layers) = store.disk_usage()?;
            let active = images
                .iter()
                .filter(|i| in_use.contains(&i.id) || in_use.contains(&i.manifest_digest))
                .count();
            let reclaimable: u64 = images
                .iter()
                .filter(|i| !in_use.contains(&i.id) && !in_use.contains(&i.manifest_digest))
                .map(|i| i.size)
                .sum();
            println!(
                "{:<16}{:<8}{:<8}{:<12}RECLAIMABLE",
                "TYPE", "TOTAL", "ACTIVE", "SIZE"
            );
            println!(
                "{:<16}{:<8}{:<8}{:<12}{}",
                "Images",
                images.len(),
                active,
                human_size(blobs + layers),
                human_size(reclaimable)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn run_images(g: &GlobalOpts, args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&g.root)
        .with_context(|| format!("opening the image store in {}", g.root.display()))?;
    list(&store, args)
}

fn registry_config(insecure: &[String]) -> RegistryConfig {
    RegistryConfig {
        insecure_registries: insecure.to_vec(),
        ..RegistryConfig::from_env()
    }
}

async fn pull(g: &GlobalOpts, store: &Store, a: PullArgs) -> anyhow::Result<ExitCode> {
    let r = ImageRef::parse(&a.reference)?;
    let platform = match &a.platform {
        Some(p) => Some(
            crate::image::manifest::Platform::parse(p)
                .with_context(|| format!("invalid --platform {p:?}: expected os/arch[/variant]"))?,
        ),
        None => None,
    };
    let opts = PullOptions {
        platform,
        // `--progress` (global, docker compose's values) unless -q.
        progress: match (a.quiet, g.progress.as_str()) {
            (true, _) | (_, "quiet") => registry::Progress::Quiet,
            (_, "plain" | "json") => registry::Progress::Plain,
            _ => registry::Progress::Auto,
        },
    };
    let out = registry::pull(store, &registry_config(&a.insecure_registries), &r, &opts)
        .await
        .with_context(|| format!("pulling {r}"))?;
    if a.quiet {
        println!("{r}");
    } else {
        println!("Digest: {}", out.manifest_digest);
        println!("Status: Downloaded newer image for {r}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn push(_g: &GlobalOpts, store: &Store, a: PushArgs) -> anyhow::Result<ExitCode> {
    let r = ImageRef::parse(&a.reference)?;
    let out = registry::push(store, &registry_config(&a.insecure_registries), &r, a.quiet)
        .await
        .with_context(|| format!("pushing {r}"))?;
    println!(
        "{}: digest: {} size: {} ({} blobs uploaded, {} already present)",
        r.tag().unwrap_or("latest"),
        out.manifest_digest,
        out.manifest_size,
        out.uploaded,
        out.skipped
    );
    Ok(ExitCode::SUCCESS)
}

fn list(store: &Store, a: ImagesArgs) -> anyhow::Result<ExitCode> {
    let filter = a.repository.as_deref().map(|f| {
        let r = ImageRef::parse(f).ok();
        let has_tag = f.rsplit('/').next().is_some_and(|last| last.contains(':'));
        (r, has_tag)
    });
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut ids = BTreeSet::new();
    for img in store.list()? {
        let id = if a.no_trunc {
            img.id.to_string()
        } else {
            img.id.short().to_string()
        };
        let created = img.created.clone().unwrap_or_default();
        let digest = img.manifest_digest.to_string();
        let refs: Vec<Option<&ImageRef>> = if img.refs.is_empty() {
            vec![None]
        } else {
            img.refs.iter().map(Some).collect()
        };
        for r in refs {
            if let Some((Some(want), has_tag)) = &filter {
                let Some(r) = r else { continue };
                if r.name() != want.name() || (*has_tag && r.tag() != want.tag()) {
                    continue;
                }
            }
            let (repo, tag) = match r {
                Some(r) => (r.familiar_name(), r.tag().unwrap_or("<none>").to_string()),
                None => ("<none>".into(), "<none>".into()),
            };
            if a.quiet {
                ids.insert(id.clone());
                continue;
            }
            rows.push([
                repo,
                tag,
                digest.clone(),
                id.clone(),
                format!("{created}\t{}", human_size(img.size)),
            ]);
        }
    }
    let mut out = std::io::stdout().lock();
    if a.quiet {
        for id in ids {
            writeln!(out, "{id}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max(10) + 3;
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max(3) + 3;
    let idw = if a.no_trunc { 74 } else { 15 };
    if a.digests {
        writeln!(
            out,
            "{:<w0$}{:<w1$}{:<74}{:<idw$}{:<24}SIZE",
            "REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED"
        )?;
    } else {
        writeln!(
            out,
            "{:<w0$}{:<w1$}{:<idw$}{:<24}SIZE",
            "REPOSITORY", "TAG", "IMAGE ID", "CREATED"
        )?;
    }
    for r in rows {
        let (created, size) = r[4].split_once('\t').unwrap_or(("", ""));
        if a.digests {
            writeln!(
                out,
                "{:<w0$}{:<w1$}{:<74}{:<idw$}{:<24}{size}",
                r[0], r[1], r[2], r[3], created
            )?;
        } else {
            writeln!(
                out,
                "{:<w0$}{:<w1$}{:<idw$}{:<24}{size}",
                r[0], r[1], r[3], created
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(g: &GlobalOpts, store: &Store, a: RmArgs) -> anyhow::Result<ExitCode> {
    let in_use = containers_in_use(&g.root);
    let mut failed = false;
    for name in &a.images {
        match store.remove(name, a.force, &in_use) {
            Ok((refs, report)) => {
                for r in refs {
                    println!("Untagged: {}", r.familiar());
                }
                if report.blobs_removed + report.layers_removed > 0 {
                    println!(
                        "Deleted: {} blobs, {} layers ({})",
                        report.blobs_removed,
                        report.layers_removed,
                        human_size(report.bytes_freed)
                    );
                }
            }
            Err(e) => {
                super::render::error(&anyhow::Error::new(e).context(format!("removing {name}")));
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn inspect(store: &Store, a: InspectArgs) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    for name in &a.images {
        let img = store
            .get(name)
            .with_context(|| format!("inspecting {name}"))?;
        let refs: Vec<String> = store
            .list()?
            .into_iter()
            .find(|s| s.manifest_digest == img.manifest_digest)
            .map(|s| s.refs.iter().map(|r| r.familiar()).collect())
            .unwrap_or_default();
        let digests: Vec<String> = store
            .list()?
            .into_iter()
            .find(|s| s.manifest_digest == img.manifest_digest)
            .map(|s| {
                s.refs
                    .iter()
                    .map(|r| format!("{}@{}", r.familiar_name(), img.manifest_digest))
                    .collect()
            })
            .unwrap_or_default();
        out.push(serde_json::json!({
            "Id": img.id,
            "RepoTags": refs,
            "RepoDigests": digests,
            "Created": img.config.created,
            "Author": img.config.author,
            "Architecture": img.config.architecture,
            "Os": img.config.os,
            "Variant": img.config.variant,
            "Config": img.config.config,
            "Size": img.size,
            "RootFS": {"Type": "layers", "Layers": img.config.rootfs.diff_ids},
            "Manifest": {"Digest": img.manifest_digest, "MediaType": img.manifest.media_type},
            "GraphDriver": {
                "Name": "overlay",
                "Data": {"LowerDirs": img.layers.iter().rev().map(|p| p.display().to_string()).collect::<Vec<_>>()},
            },
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

fn history(store: &Store, a: HistoryArgs) -> anyhow::Result<ExitCode> {
    let img = store.get(&a.image)?;
    println!(
        "{:<15}{:<24}{:<48}{:<10}COMMENT",
        "IMAGE", "CREATED", "CREATED BY", "SIZE"
    );
    // History is oldest first; non-empty entries map to layers in order.
    let mut layer = 0usize;
    let mut rows = Vec::new();
    for h in &img.config.history {
        let size = if h.empty_layer {
            0
        } else {
            let s = img
                .chain_ids
                .get(layer)
                .and_then(|c| store.layer_meta(c).ok())
                .map_or(0, |m| m.size);
            layer += 1;
            s
        };
        let mut by = h.created_by.clone().unwrap_or_default();
        if !a.no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        rows.push((
            h.created.clone().unwrap_or_default(),
            by,
            human_size(size),
            h.comment.clone().unwrap_or_default(),
        ));
    }
    for (i, (created, by, size, comment)) in rows.into_iter().rev().enumerate() {
        let id = if i == 0 {
            img.id.short().to_string()
        } else {
            "<missing>".into()
        };
        println!("{id:<15}{created:<24}{by:<48}{size:<10}{comment}");
    }
    Ok(ExitCode::SUCCESS)
}

fn save(store: &Store, a: SaveArgs) -> anyhow::Result<ExitCode> {
    match &a.output {
        Some(p) => {
            let tmp = p.with_extension("berth-partial");
            let f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let res = archive::save(store, &a.images, std::io::BufWriter::new(f));
            if let Err(e) = res {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
            std::fs::rename(&tmp, p).with_context(|| format!("writing {}", p.display()))?;
        }
        None => {
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() {
                bail!(
                    "refusing to write a tar archive to a terminal; use -o FILE or redirect stdout"
                );
            }
            archive::save(store, &a.images, std::io::stdout().lock())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load(store: &Store, a: LoadArgs) -> anyhow::Result<ExitCode> {
    let loaded =
        archive::load(store, &a.input).with_context(|| format!("loading {}", a.input.display()))?;
    let repo = a.name.as_deref().map(ImageRef::parse).transpose()?;
    for l in loaded {
        let mut refs = l.refs.clone();
        if refs.is_empty() {
            if let Some(repo) = &repo {
                // Name the unnamed entry `<name>:<its ref.name tag or latest>`.
                let tag = tag_annotation(&a.input, &l.image.manifest_digest)
                    .unwrap_or_else(|| "latest".into());
                let r = repo.with_tag(&tag)?;
                store.tag(l.image.manifest_digest.as_str(), &r)?;
                refs.push(r);
            }
        }
        if a.quiet {
            continue;
        }
        if refs.is_empty() {
            println!("Loaded image ID: {}", l.image.id);
        }
        for r in refs {
            println!("Loaded image: {}", r.familiar());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `org.opencontainers.image.ref.name` of a manifest in an OCI layout directory.
fn tag_annotation(layout: &Path, manifest: &Digest) -> Option<String> {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).ok()?).ok()?;
    idx["manifests"]
        .as_array()?
        .iter()
        .find(|m| m["digest"].as_str() == Some(manifest.as_str()))
        .and_then(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_string)
}

/// Images used by containers: every `sha256:` digest found in the JSON files of
/// `<root>/containers/<id>/` (the runtime's state records the image it was created from;
/// scanning for digests keeps this independent of that file's exact schema).
pub(crate) fn containers_in_use(root: &Path) -> InUse {
    fn collect(v: &serde_json::Value, out: &mut InUse) {
        match v {
            serde_json::Value::String(s) => {
                if let Ok(d) = Digest::parse(s) {
                    out.insert(d);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    let mut out = InUse::new();
    let Ok(dirs) = std::fs::read_dir(root.join("containers")) else {
        return out;
    };
    for d in dirs.flatten() {
        let Ok(files) = std::fs::read_dir(d.path()) else {
            continue;
        };
        for f in files.flatten() {
            if f.path().extension().is_some_and(|e| e == "json") {
                if let Ok(Ok(v)) =
                    std::fs::read(f.path()).map(|b| serde_json::from_slice::<serde_json::Value>(&b))
                {
                    collect(&v, &mut out);
                }
            }
        }
    }
    out
}

/// Docker's `units.HumanSize` (decimal units, 3 significant digits).
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + UNITS[i]
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_500_000), "1.5MB");
        assert_eq!(human_size(4_260_000), "4.26MB");
    }
}
