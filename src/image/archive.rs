//! Local image archives: `image load` (OCI image layout, as a directory or tar, and
//! docker-archive tars), `image save` (docker-archive that is also an OCI layout, as
//! Docker ≥ 25 writes) and `image import` (a rootfs tar → one-layer image).
//!
//! Takes paths and readers; gives images committed in the `store`. Blobs are copied with
//! their digests verified (the store refuses mismatches), so a layout with a corrupted
//! blob loads nothing. Tars are first extracted with the safe `unpack` code (no device
//! nodes allowed) into the store's temp dir. Neighbours: `store`, `manifest`, the CLI.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::digest::{Digest, HashingReader};
use super::manifest::{
    self, Descriptor, Document, History, ImageConfig, Manifest, ManifestError, Platform, RootFs,
    RunConfig,
};
use super::reference::{ImageRef, ReferenceError};
use super::store::{Image, Store, StoreError};
use super::unpack::{self, remove_all, DevicePolicy, UnpackError, UnpackOptions};

const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {op} failed")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is neither an OCI image layout (index.json) nor a docker archive (manifest.json)"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path}: invalid {what}")]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: entry {entry:?} points outside the archive")]
    OutsidePath { path: PathBuf, entry: String },
    #[error("{path}: no images in the archive")]
    Empty { path: PathBuf },
    #[error("invalid --change {change:?}: {reason}")]
    Change { change: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// One image loaded from an archive.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub image: Image,
    pub refs: Vec<ImageRef>,
}

/// docker-archive `manifest.json` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct OciIndexFile {
    manifests: Vec<Descriptor>,
}

/// `image load -i PATH`: a directory (OCI layout) or a tar (OCI archive or docker-archive,
/// optionally gzip/zstd-compressed).
pub fn load(store: &Store, path: &Path) -> Result<Vec<Loaded>> {
    let _lease = store.lease()?;
    let meta = fs::metadata(path).map_err(io_err(path, "stat"))?;
    if meta.is_dir() {
        return load_dir(store, path, path);
    }
    let tmp = store.temp_path("load");
    fs::create_dir_all(&tmp).map_err(io_err(&tmp, "create temp dir"))?;
    let guard = TempDir(tmp.clone());
    let f = File::open(path).map_err(io_err(path, "open"))?;
    let opts = UnpackOptions {
        devices: DevicePolicy::Reject,
        expected_diff_id: None,
    };
    unpack::unpack_layer(
        io::BufReader::new(f),
        &tmp,
        &format!("archive {}", path.display()),
        &opts,
    )?;
    let out = load_dir(store, &tmp, path);
    drop(guard);
    out
}

fn load_dir(store: &Store, dir: &Path, shown: &Path) -> Result<Vec<Loaded>> {
    if dir.join("index.json").is_file() {
        load_oci_layout(store, dir, shown)
    } else if dir.join("manifest.json").is_file() {
        load_docker_archive(store, dir, shown)
    } else {
        Err(ArchiveError::UnknownFormat {
            path: shown.to_path_buf(),
        })
    }
}

fn layout_blob(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(d.hex())
}

fn copy_blob(store: &Store, dir: &Path, d: &Digest, size: Option<u64>) -> Result<()> {
    if store.has_blob(d) {
        return Ok(());
    }
    let p = layout_blob(dir, d);
    let mut f = File::open(&p).map_err(io_err(&p, "open blob"))?;
    store.put_blob_from(&mut f, d, size)?;
    Ok(())
}

/// OCI image layout (image-spec image-layout.md). Names come from
/// `io.containerd.image.name` (full reference) or `org.opencontainers.image.ref.name`
/// (a full reference, or just a tag, which has no repository: then the image is loaded
/// unnamed, like `docker load` does).
fn load_oci_layout(store: &Store, dir: &Path, shown: &Path) -> Result<Vec<Loaded>> {
    let ip = dir.join("index.json");
    let bytes = fs::read(&ip).map_err(io_err(&ip, "read"))?;
    let index: OciIndexFile =
        serde_json::from_slice(&bytes).map_err(|source| ArchiveError::Json {
            path: shown.join("index.json"),
            what: "index.json",
            source,
        })?;
    let mut out = Vec::new();
    for desc in &index.manifests {
        copy_blob(store, dir, &desc.digest, Some(desc.size))?;
        let (manifest_digest, index_digest) = match Document::parse(
            &store.read_blob(&desc.digest)?,
            Some(&desc.media_type),
            desc.digest.as_str(),
        )? {
            Document::Manifest(_) => (desc.digest.clone(), None),
            Document::Index(i) => {
                let chosen =
                    manifest::select_platform(&i, &Platform::host(), desc.digest.as_str())?;
                copy_blob(store, dir, &chosen.digest, Some(chosen.size))?;
                (chosen.digest.clone(), Some(desc.digest.clone()))
            }
        };
        let m = match Document::parse(
            &store.read_blob(&manifest_digest)?,
            None,
            manifest_digest.as_str(),
        )? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Err(StoreError::IndexNotImage {
                    manifest: manifest_digest,
                }
                .into())
            }
        };
        copy_blob(store, dir, &m.config.digest, Some(m.config.size))?;
        for l in &m.layers {
            copy_blob(store, dir, &l.digest, Some(l.size))?;
        }
        let ann = desc.annotations.clone().unwrap_or_default();
        let name = ann.get(CONTAINERD_NAME_ANNOTATION).or_else(|| {
            // A bare tag (`latest`, `v1.0`) names no repository.
            ann.get(REF_NAME_ANNOTATION)
                .filter(|n| n.contains(['/', ':']))
        });
        let refs: Vec<ImageRef> = name
            .and_then(|n| ImageRef::parse(n).ok())
            .into_iter()
            .collect();
        let image = store.commit_image(&manifest_digest, index_digest.as_ref(), refs.first())?;
        info!(manifest = %manifest_digest, refs = refs.len(), "loaded image from OCI layout");
        out.push(Loaded { image, refs });
    }
    if out.is_empty() {
        return Err(ArchiveError::Empty {
            path: shown.to_path_buf(),
        });
    }
    Ok(out)
}

/// Resolves an archive-relative path without leaving `dir` (the paths come from the
/// archive's own manifest.json and are untrusted).
fn inside(dir: &Path, rel: &str, shown: &Path) -> Result<PathBuf> {
    let comps =
        unpack::clean_components(rel.as_bytes()).map_err(|_| ArchiveError::OutsidePath {
            path: shown.to_path_buf(),
            entry: rel.to_string(),
        })?;
    let mut p = dir.to_path_buf();
    for c in comps {
        p.push(std::ffi::OsStr::new(std::str::from_utf8(c).unwrap_or("_")));
    }
    Ok(p)
}

/// docker-archive (`docker save`): `manifest.json` = `[{Config, RepoTags, Layers}]`; the
/// layers are usually uncompressed tars (then DiffID = blob digest). A new OCI manifest is
/// written for each image.
fn load_docker_archive(store: &Store, dir: &Path, shown: &Path) -> Result<Vec<Loaded>> {
    let mp = dir.join("manifest.json");
    let bytes = fs::read(&mp).map_err(io_err(&mp, "read"))?;
    let entries: Vec<DockerArchiveEntry> =
        serde_json::from_slice(&bytes).map_err(|source| ArchiveError::Json {
            path: shown.join("manifest.json"),
            what: "manifest.json",
            source,
        })?;
    let mut out = Vec::new();
    for e in entries {
        let cp = inside(dir, &e.config, shown)?;
        let cbytes = fs::read(&cp).map_err(io_err(&cp, "read config"))?;
        let config_digest = store.put_blob(&cbytes, None)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let lp = inside(dir, l, shown)?;
            layers.push(store_layer_file(store, &lp)?.0);
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: manifest::OCI_CONFIG.into(),
                digest: config_digest,
                size: cbytes.len() as u64,
                platform: None,
                annotations: None,
            },
            layers,
            annotations: None,
        };
        let mbytes = serde_json::to_vec(&manifest).expect("manifest serialises");
        let md = store.put_blob(&mbytes, None)?;
        let refs: Vec<ImageRef> = e
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| ImageRef::parse(t))
            .collect::<Result<_, _>>()?;
        let image = store.commit_image(&md, None, refs.first())?;
        for r in refs.iter().skip(1) {
            store.tag(md.as_str(), r)?;
        }
        info!(manifest = %md, "loaded image from docker archive");
        out.push(Loaded { image, refs });
    }
    if out.is_empty() {
        return Err(ArchiveError::Empty {
            path: shown.to_path_buf(),
        });
    }
    Ok(out)
}

/// Copies a layer file into the store; returns its descriptor and DiffID.
fn store_layer_file(store: &Store, p: &Path) -> Result<(Descriptor, Digest)> {
    let f = File::open(p).map_err(io_err(p, "open layer"))?;
    let mut head = [0u8; 4];
    let n = (&f).read(&mut head).map_err(io_err(p, "read layer"))?;
    let compression = unpack::Compression::detect(&head[..n]);
    let (digest, size) = HashingReader::new(File::open(p).map_err(io_err(p, "open layer"))?)
        .finish()
        .map_err(io_err(p, "hash layer"))?;
    let diff_id = match compression {
        unpack::Compression::None => digest.clone(),
        _ => {
            let r = unpack::decompress(File::open(p).map_err(io_err(p, "open layer"))?)
                .map_err(io_err(p, "decompress layer"))?;
            HashingReader::new(r)
                .finish()
                .map_err(io_err(p, "decompress layer"))?
                .0
        }
    };
    let mut f = File::open(p).map_err(io_err(p, "open layer"))?;
    store.put_blob_from(&mut f, &digest, Some(size))?;
    let media_type = match compression {
        unpack::Compression::Gzip => manifest::OCI_LAYER_GZIP,
        unpack::Compression::Zstd => manifest::OCI_LAYER_ZSTD,
        unpack::Compression::None => manifest::OCI_LAYER_TAR,
    };
    debug!(layer = %digest, %diff_id, "layer file stored");
    Ok((
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: None,
        },
        diff_id,
    ))
}

/// Applies Dockerfile-style `--change` instructions (CMD, ENTRYPOINT, ENV, WORKDIR, USER,
/// EXPOSE, LABEL, VOLUME, STOPSIGNAL), as `docker import --change` accepts.
pub fn apply_change(cfg: &mut RunConfig, change: &str) -> Result<()> {
    let bad = |reason: &str| ArchiveError::Change {
        change: change.to_string(),
        reason: reason.to_string(),
    };
    let change_t = change.trim();
    let (instr, rest) = change_t
        .split_once(char::is_whitespace)
        .unwrap_or((change_t, ""));
    let rest = rest.trim();
    // Exec form is a JSON array; anything else is shell form, run by /bin/sh -c.
    let cmdline = || -> Vec<String> {
        serde_json::from_str::<Vec<String>>(rest)
            .unwrap_or_else(|_| vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
    };
    match instr.to_ascii_uppercase().as_str() {
        "CMD" => cfg.cmd = Some(cmdline()),
        "ENTRYPOINT" => cfg.entrypoint = Some(cmdline()),
        "WORKDIR" if !rest.is_empty() => cfg.working_dir = Some(rest.to_string()),
        "USER" if !rest.is_empty() => cfg.user = Some(rest.to_string()),
        "STOPSIGNAL" if !rest.is_empty() => cfg.stop_signal = Some(rest.to_string()),
        "ENV" => {
            let pairs = key_values(rest).ok_or_else(|| bad("expected KEY=VALUE or KEY VALUE"))?;
            let env = cfg.env.get_or_insert_with(Vec::new);
            for (k, v) in pairs {
                env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k.as_str()));
                env.push(format!("{k}={v}"));
            }
        }
        "LABEL" => {
            let pairs = key_values(rest).ok_or_else(|| bad("expected KEY=VALUE"))?;
            cfg.labels.get_or_insert_with(BTreeMap::new).extend(pairs);
        }
        "EXPOSE" => {
            let ports = cfg.exposed_ports.get_or_insert_with(BTreeMap::new);
            for p in rest.split_whitespace() {
                let p = if p.contains('/') { p.to_string() } else { format!("{p}/tcp") };
                ports.insert(p, serde_json::json!({}));
            }
        }
        "VOLUME" => {
            let vols: Vec<String> = serde_json::from_str(rest)
                .unwrap_or_else(|_| rest.split_whitespace().map(str::to_string).collect());
            let v = cfg.volumes.get_or_insert_with(BTreeMap::new);
            for p in vols {
                v.insert(p, serde_json::json!({}));
            }
        }
        _ => return Err(bad("unsupported instruction (CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, LABEL, VOLUME, STOPSIGNAL)")),
    }
    Ok(())
}

/// `K=V K2="v 2"` or the legacy single `K V` form.
fn key_values(s: &str) -> Option<Vec<(String, String)>> {
    if !s.contains('=') {
        let (k, v) = s.split_once(char::is_whitespace)?;
        return Some(vec![(k.to_string(), v.trim().to_string())]);
    }
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let k: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let mut v = String::new();
        let mut quote = None;
        while let Some(&c) = chars.peek() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => break,
                (_, '\\') => {
                    chars.next();
                    if let Some(n) = chars.peek() {
                        v.push(*n);
                    }
                }
                _ => v.push(c),
            }
            chars.next();
        }
        if k.is_empty() {
            return None;
        }
        out.push((k, v));
    }
    Some(out)
}

/// `image import FILE [REF] --change ...`: the rootfs tar (plain or compressed) becomes the
/// one layer of a new image for the host platform.
pub fn import(
    store: &Store,
    tar: &Path,
    reference: Option<&ImageRef>,
    changes: &[String],
) -> Result<Image> {
    let _lease = store.lease()?;
    let mut run = RunConfig::default();
    for c in changes {
        apply_change(&mut run, c)?;
    }
    let (layer, diff_id) = store_layer_file(store, tar)?;
    let host = Platform::host();
    let created = now_rfc3339();
    let config = ImageConfig {
        created: Some(created.clone()),
        author: None,
        architecture: host.architecture,
        os: host.os,
        variant: host.variant,
        config: run,
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
        history: vec![History {
            created: Some(created),
            created_by: None,
            comment: Some(format!("Imported from {}", tar.display())),
            empty_layer: false,
        }],
        extra: BTreeMap::new(),
    };
    let cbytes = serde_json::to_vec(&config).expect("config serialises");
    let cd = store.put_blob(&cbytes, None)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(manifest::OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: manifest::OCI_CONFIG.into(),
            digest: cd,
            size: cbytes.len() as u64,
            platform: None,
            annotations: None,
        },
        layers: vec![layer],
        annotations: None,
    };
    let mbytes = serde_json::to_vec(&manifest).expect("manifest serialises");
    let md = store.put_blob(&mbytes, None)?;
    Ok(store.commit_image(&md, None, reference)?)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `image save`: writes the images as one tar that is both an OCI image layout
/// (`oci-layout`, `index.json`, `blobs/sha256/`) and a docker-archive (`manifest.json`,
/// `repositories`), like Docker ≥ 25; blobs are the stored bytes, so digests are kept.
pub fn save(store: &Store, names: &[String], out: impl Write) -> Result<()> {
    let mut blobs: Vec<Digest> = Vec::new();
    let mut index_entries = Vec::new();
    let mut docker_entries = Vec::new();
    for name in names {
        let img = store.get(name)?;
        let reference = ImageRef::parse(name)
            .ok()
            .filter(|r| store.tag_entry(r).ok().flatten().is_some());
        let mut push = |d: &Digest| {
            if !blobs.contains(d) {
                blobs.push(d.clone());
            }
        };
        push(&img.manifest_digest);
        push(&img.id);
        for l in &img.manifest.layers {
            push(&l.digest);
        }
        let mbytes = store.read_blob(&img.manifest_digest)?;
        let media_type = match Document::parse(&mbytes, None, img.manifest_digest.as_str())? {
            Document::Manifest(m) => m
                .media_type
                .unwrap_or_else(|| manifest::OCI_MANIFEST.into()),
            Document::Index(_) => manifest::OCI_INDEX.into(),
        };
        let mut ann = BTreeMap::new();
        if let Some(r) = &reference {
            ann.insert(CONTAINERD_NAME_ANNOTATION.to_string(), r.to_string());
            if let Some(t) = r.tag() {
                ann.insert(REF_NAME_ANNOTATION.to_string(), t.to_string());
            }
        }
        index_entries.push(Descriptor {
            media_type,
            digest: img.manifest_digest.clone(),
            size: mbytes.len() as u64,
            platform: None,
            annotations: (!ann.is_empty()).then_some(ann),
        });
        docker_entries.push(DockerArchiveEntry {
            config: format!("blobs/sha256/{}", img.id.hex()),
            repo_tags: reference.map(|r| vec![r.familiar()]),
            layers: img
                .manifest
                .layers
                .iter()
                .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
                .collect(),
        });
    }
    let mut b = tar::Builder::new(out);
    let werr = |source| ArchiveError::Io {
        path: PathBuf::from("<save output>"),
        op: "write tar",
        source,
    };
    let add = |b: &mut tar::Builder<_>, name: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).map_err(werr)
    };
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": index_entries,
    });
    add(
        &mut b,
        "index.json",
        &serde_json::to_vec(&index).expect("index serialises"),
    )?;
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&docker_entries).expect("manifest.json serialises"),
    )?;
    let mut dh = tar::Header::new_ustar();
    dh.set_entry_type(tar::EntryType::Directory);
    dh.set_mode(0o755);
    dh.set_uid(0);
    dh.set_gid(0);
    dh.set_mtime(0);
    dh.set_size(0);
    b.append_data(&mut dh.clone(), "blobs/", io::empty())
        .map_err(werr)?;
    b.append_data(&mut dh, "blobs/sha256/", io::empty())
        .map_err(werr)?;
    for d in blobs {
        let f = store.open_blob(&d)?;
        let len = f
            .metadata()
            .map_err(io_err(&store.blob_path(&d), "stat blob"))?
            .len();
        let mut h = tar::Header::new_ustar();
        h.set_size(len);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), f)
            .map_err(werr)?;
    }
    b.into_inner().map_err(werr)?.flush().map_err(werr)?;
    Ok(())
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = remove_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply() {
        let mut c = RunConfig::default();
        apply_change(&mut c, r#"CMD ["/bin/sh", "-c", "echo hi"]"#).unwrap();
        apply_change(&mut c, "ENTRYPOINT /init --flag").unwrap();
        apply_change(&mut c, r#"ENV A=1 B="two words""#).unwrap();
        apply_change(&mut c, "ENV A 3").unwrap();
        apply_change(&mut c, "WORKDIR /srv").unwrap();
        apply_change(&mut c, "EXPOSE 80 53/udp").unwrap();
        apply_change(&mut c, "LABEL k=v").unwrap();
        assert_eq!(c.cmd.unwrap(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(c.entrypoint.unwrap(), ["/bin/sh", "-c", "/init --flag"]);
        assert_eq!(c.env.unwrap(), ["B=two words", "A=3"]);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert!(c.exposed_ports.unwrap().contains_key("53/udp"));
        assert_eq!(c.labels.unwrap()["k"], "v");
        assert!(apply_change(&mut RunConfig::default(), "RUN rm -rf /").is_err());
        assert!(apply_change(&mut RunConfig::default(), "ENV =x").is_err());
    }

    #[test]
    fn inside_refuses_escape() {
        let d = Path::new("/x");
        assert!(inside(d, "../etc/passwd", d).is_err());
        assert!(inside(d, "/etc/passwd", d).is_err());
        assert_eq!(inside(d, "./a/b", d).unwrap(), Path::new("/x/a/b"));
    }
}
