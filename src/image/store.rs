//! The content-addressed image store under `<root>/image/`, shared by all projects.
//!
//! Takes blobs (manifests, configs, compressed layers: exact bytes, verified against their
//! digest before commit), references to tag, and the containers' "in use" set; gives
//! [`Image`] handles (parsed config + unpacked layer dirs bottom → top) to the engine,
//! listing, tagging, removal and mark-and-sweep garbage collection. Neighbours: `unpack`
//! (layer → directory), `registry` and `archive` (fill the store), `engine::spec` (reads
//! images), the CLI.
//!
//! Layout (containerd's content store + podman's chain-id sharing, see
//! shared/notes/image-eval.md §5):
//! ```text
//! <root>/image/blobs/sha256/<hex>          immutable content, exact bytes
//! <root>/image/ingest/<hex>.<unique>.part  partial writes (removed on failure, swept by gc)
//! <root>/image/layers/<chainid-hex>/diff   one unpacked layer, overlay lowerdir format
//! <root>/image/layers/<chainid-hex>/layer.json  {diff_id, blob, size}
//! <root>/image/tmp/                        layers being unpacked (renamed into layers/)
//! <root>/image/repositories.json           reference → {manifest, index}
//! <root>/image/lock                        flock: short exclusive sections (commit, tag)
//! <root>/image/gc.lock                     flock: shared by pulls/imports, exclusive for gc
//! ```
//! Every commit is write-to-temp, `syncfs`/`fsync`, `rename`, so a crash or a failed
//! verification never leaves a half-written blob or layer under its final name.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{self as rfs, FlockOperation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, info_span};

use super::digest::{chain_ids, Digest};
use super::manifest::{self, Document, ImageConfig, Manifest, ManifestError};
use super::reference::{ImageRef, ReferenceError};
use super::unpack::{self, remove_all, DevicePolicy, UnpackError, UnpackOptions};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store {path}: {op} failed")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("blob {expected}: content has digest {actual} ({size} bytes)")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} is not in the store")]
    MissingBlob { digest: Digest },
    #[error("no such image: {reference}")]
    NotFound { reference: String },
    #[error("image reference {reference} is ambiguous: matches {matches}")]
    Ambiguous { reference: String, matches: String },
    #[error("image {reference} ({id}) is in use by a container; use --force to remove it anyway")]
    InUse { reference: String, id: String },
    #[error("image {reference} has {count} references; remove them by name or use --force")]
    MultipleRefs { reference: String, count: usize },
    #[error(
        "image {manifest}: config lists {diff_ids} diff ids but the manifest has {layers} layers"
    )]
    LayerCount {
        manifest: Digest,
        diff_ids: usize,
        layers: usize,
    },
    #[error("image {manifest}: an index cannot be used as an image here")]
    IndexNotImage { manifest: Digest },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("image store metadata {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// One entry of the tag index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagEntry {
    /// The image manifest (platform-specific).
    pub manifest: Digest,
    /// The index / manifest list it was selected from, if any (kept for push/save).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Repositories {
    #[serde(default)]
    refs: BTreeMap<String, TagEntry>,
    /// Images kept without a name (`<none>:<none>`, e.g. loaded from an unnamed OCI
    /// layout or imported without REF); `image prune` removes them.
    #[serde(default)]
    dangling: BTreeSet<Digest>,
}

/// Per-layer metadata written next to the unpacked dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMeta {
    pub diff_id: Digest,
    pub blob: Digest,
    /// Uncompressed size (tar stream bytes).
    pub size: u64,
}

/// An image the engine can run: everything `engine::spec` needs.
#[derive(Debug, Clone)]
pub struct Image {
    /// Docker's image id: the config digest.
    pub id: Digest,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub config: ImageConfig,
    /// Unpacked layer directories, bottom → top (overlay wants them reversed: see
    /// `overlay::lowerdir_option`).
    pub layers: Vec<PathBuf>,
    pub chain_ids: Vec<Digest>,
    /// Sum of uncompressed layer sizes.
    pub size: u64,
    /// The layers' short links relative to `store_dir` (`l/<16 hex>`), bottom → top.
    pub layer_links: Vec<PathBuf>,
    /// The store directory the links are relative to.
    pub store_dir: PathBuf,
}

/// A row of `image ls`.
#[derive(Debug, Clone)]
pub struct ImageSummary {
    pub id: Digest,
    pub manifest_digest: Digest,
    pub refs: Vec<ImageRef>,
    pub created: Option<String>,
    pub size: u64,
}

/// What `gc` removed.
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
    pub bytes_freed: u64,
}

/// Image ids, manifest digests or chain ids used by containers (they must not be collected).
pub type InUse = BTreeSet<Digest>;

/// A held flock; released on drop (close).
pub struct LockGuard {
    _file: File,
}

/// Handle on `<root>/image/`. Cheap to clone; all coordination is on disk (flock), so
/// several berth processes can use the same store at once.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique() -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{n}-{t}", std::process::id())
}

impl Store {
    /// Opens (creating if needed) the store of the berth state root `root`.
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join("image");
        for sub in ["blobs/sha256", "ingest", "layers", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p, "create directory"))?;
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh, unique path under `tmp/` (not created), swept by gc when left behind.
    pub fn temp_path(&self, prefix: &str) -> PathBuf {
        self.dir.join("tmp").join(format!("{prefix}-{}", unique()))
    }

    fn lock_file(&self, name: &str, op: FlockOperation) -> Result<LockGuard> {
        let p = self.dir.join(name);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(&p, "open lock"))?;
        rfs::flock(&f, op).map_err(|e| StoreError::Io {
            path: p.clone(),
            op: "flock",
            source: e.into(),
        })?;
        Ok(LockGuard { _file: f })
    }

    /// Exclusive lock for short metadata sections (tag index read-modify-write, commits).
    pub fn lock(&self) -> Result<LockGuard> {
        self.lock_file("lock", FlockOperation::LockExclusive)
    }

    /// Held (shared) for the whole of a pull/import/load so that a concurrent gc cannot
    /// sweep blobs and layers committed but not yet tagged (containerd's leases).
    pub fn lease(&self) -> Result<LockGuard> {
        self.lock_file("gc.lock", FlockOperation::LockShared)
    }

    // ---------------------------------------------------------------- blobs

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        fs::read(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob { digest: d.clone() }
            } else {
                StoreError::Io {
                    path: p,
                    op: "read blob",
                    source: e,
                }
            }
        })
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob { digest: d.clone() }
            } else {
                StoreError::Io {
                    path: p,
                    op: "open blob",
                    source: e,
                }
            }
        })
    }

    /// Starts writing a blob whose digest (and size, if known) is expected.
    pub fn ingest(&self, expected: Digest, size: Option<u64>) -> Result<Ingest> {
        let path = self
            .dir
            .join("ingest")
            .join(format!("{}.{}.part", expected.hex(), unique()));
        let file = File::create(&path).map_err(io_err(&path, "create ingest file"))?;
        Ok(Ingest {
            store: self.clone(),
            path,
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
            expected,
            size,
        })
    }

    /// Writes a whole blob from memory (manifests, configs), verified against `expected`
    /// when given. Returns its digest.
    pub fn put_blob(&self, bytes: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        let actual = Digest::of(bytes);
        if let Some(e) = expected {
            if *e != actual {
                return Err(StoreError::DigestMismatch {
                    expected: e.clone(),
                    actual,
                    size: bytes.len() as u64,
                });
            }
        }
        if self.has_blob(&actual) {
            return Ok(actual);
        }
        let mut w = self.ingest(actual.clone(), Some(bytes.len() as u64))?;
        w.write_all(bytes)
            .map_err(io_err(&w.path.clone(), "write blob"))?;
        w.commit()
    }

    /// Copies a blob from a reader, verifying digest and size before it becomes visible.
    pub fn put_blob_from(
        &self,
        r: &mut dyn Read,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<Digest> {
        if self.has_blob(expected) {
            return Ok(expected.clone());
        }
        let mut w = self.ingest(expected.clone(), size)?;
        io::copy(r, &mut w).map_err(io_err(&w.path.clone(), "write blob"))?;
        w.commit()
    }

    // ---------------------------------------------------------------- layers

    pub fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.dir.join("layers").join(chain_id.hex())
    }

    /// The overlay lowerdir of a committed layer.
    pub fn layer_diff(&self, chain_id: &Digest) -> PathBuf {
        self.layer_dir(chain_id).join("diff")
    }

    /// Short name of a layer's diff dir relative to [`Store::dir`]: `l/<16 hex>`, a symlink
    /// to `../layers/<chainid>/diff` (podman's `l/` links). 19 bytes a layer, so a mount
    /// done from `dir()` fits ~180 lowerdirs in legacy mount data (see `overlay`).
    pub fn layer_link(&self, chain_id: &Digest) -> PathBuf {
        PathBuf::from("l").join(&chain_id.hex()[..16])
    }

    fn ensure_layer_link(&self, chain_id: &Digest) -> Result<()> {
        let l = self.dir.join("l");
        fs::create_dir_all(&l).map_err(io_err(&l, "create link dir"))?;
        let link = self.dir.join(self.layer_link(chain_id));
        let target = PathBuf::from("../layers").join(chain_id.hex()).join("diff");
        match std::os::unix::fs::symlink(&target, &link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(StoreError::Io {
                path: link,
                op: "create layer link",
                source: e,
            }),
        }
    }

    pub fn has_layer(&self, chain_id: &Digest) -> bool {
        self.layer_dir(chain_id).join("layer.json").is_file()
    }

    pub fn layer_meta(&self, chain_id: &Digest) -> Result<LayerMeta> {
        let p = self.layer_dir(chain_id).join("layer.json");
        let b = fs::read(&p).map_err(io_err(&p, "read layer metadata"))?;
        serde_json::from_slice(&b).map_err(|source| StoreError::Corrupt { path: p, source })
    }

    /// Unpacks the layer blob `blob` (already in the store) as the layer with ChainID
    /// `chain_id`, unless it is already there. The uncompressed stream must hash to
    /// `diff_id`. Atomic: unpack into `tmp/`, `syncfs`, rename into `layers/`.
    pub fn ensure_layer(
        &self,
        chain_id: &Digest,
        diff_id: &Digest,
        blob: &Digest,
    ) -> Result<PathBuf> {
        if self.has_layer(chain_id) {
            return Ok(self.layer_diff(chain_id));
        }
        let _span = info_span!("unpack_layer", layer = %blob, chain_id = %chain_id).entered();
        let tmp = self.dir.join("tmp").join(format!("layer-{}", unique()));
        let diff = tmp.join("diff");
        fs::create_dir_all(&diff).map_err(io_err(&diff, "create temp layer dir"))?;
        // Whatever fails below, the temp dir goes away.
        let cleanup = TempDirGuard(tmp.clone());
        let f = self.open_blob(blob)?;
        let opts = UnpackOptions {
            devices: DevicePolicy::Create,
            expected_diff_id: Some(diff_id.clone()),
        };
        let report = unpack::unpack_layer(io::BufReader::new(f), &diff, blob.as_str(), &opts)?;
        let meta = LayerMeta {
            diff_id: report.diff_id,
            blob: blob.clone(),
            size: report.tar_size,
        };
        let mp = tmp.join("layer.json");
        write_file_synced(
            &mp,
            &serde_json::to_vec_pretty(&meta).expect("layer meta serialises"),
        )?;
        // One syncfs for the whole tree is the durability point (per-file fsync doubles the
        // unpack time, image-eval.md §3).
        let tfd = File::open(&tmp).map_err(io_err(&tmp, "open temp layer dir"))?;
        rfs::syncfs(tfd.as_fd()).map_err(|e| StoreError::Io {
            path: tmp.clone(),
            op: "syncfs",
            source: e.into(),
        })?;
        let dest = self.layer_dir(chain_id);
        let _lock = self.lock()?;
        if self.has_layer(chain_id) {
            // Another process committed it while we unpacked: keep theirs.
            return Ok(self.layer_diff(chain_id));
        }
        fs::rename(&tmp, &dest).map_err(io_err(&dest, "commit layer"))?;
        std::mem::forget(cleanup);
        fsync_dir(&self.dir.join("layers"))?;
        self.ensure_layer_link(chain_id)?;
        debug!(chain_id = %chain_id, entries = report.entries, "layer committed");
        Ok(self.layer_diff(chain_id))
    }

    // ---------------------------------------------------------------- images

    /// Makes the image with manifest `manifest_digest` (whose config and layer blobs are in
    /// the store) runnable: unpacks missing layers and, when `reference` is given, points
    /// the tag at it. `index` is the index it was selected from, if any.
    pub fn commit_image(
        &self,
        manifest_digest: &Digest,
        index: Option<&Digest>,
        reference: Option<&ImageRef>,
    ) -> Result<Image> {
        let img = self.load_image(manifest_digest, true)?;
        if let Some(r) = reference {
            self.set_tag(
                r,
                TagEntry {
                    manifest: manifest_digest.clone(),
                    index: index.cloned(),
                },
            )?;
            info!(reference = %r, manifest = %manifest_digest, "image tagged");
        } else {
            let _lock = self.lock()?;
            let mut repos = self.read_repositories()?;
            if !repos.refs.values().any(|e| e.manifest == *manifest_digest) {
                repos.dangling.insert(manifest_digest.clone());
                self.write_repositories(&repos)?;
            }
        }
        Ok(img)
    }

    /// Reads an image's manifest and config; with `unpack`, ensures its layers exist.
    fn load_image(&self, manifest_digest: &Digest, unpack: bool) -> Result<Image> {
        let mbytes = self.read_blob(manifest_digest)?;
        let manifest = match Document::parse(&mbytes, None, manifest_digest.as_str())? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Err(StoreError::IndexNotImage {
                    manifest: manifest_digest.clone(),
                })
            }
        };
        let cbytes = self.read_blob(&manifest.config.digest)?;
        let config = ImageConfig::parse(&cbytes, manifest.config.digest.as_str())?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(StoreError::LayerCount {
                manifest: manifest_digest.clone(),
                diff_ids: config.rootfs.diff_ids.len(),
                layers: manifest.layers.len(),
            });
        }
        let chains = chain_ids(&config.rootfs.diff_ids);
        let mut layers = Vec::with_capacity(chains.len());
        let mut size = 0;
        for ((chain, diff_id), desc) in chains
            .iter()
            .zip(&config.rootfs.diff_ids)
            .zip(&manifest.layers)
        {
            if unpack {
                if !manifest::is_layer_media_type(&desc.media_type) {
                    return Err(ManifestError::LayerMediaType {
                        media_type: desc.media_type.clone(),
                        digest: desc.digest.to_string(),
                    }
                    .into());
                }
                self.ensure_layer(chain, diff_id, &desc.digest)?;
            }
            size += self.layer_meta(chain).map(|m| m.size).unwrap_or(desc.size);
            layers.push(self.layer_diff(chain));
        }
        let layer_links = chains.iter().map(|c| self.layer_link(c)).collect();
        Ok(Image {
            layer_links,
            store_dir: self.dir.clone(),
            id: manifest.config.digest.clone(),
            manifest_digest: manifest_digest.clone(),
            manifest,
            config,
            layers,
            chain_ids: chains,
            size,
        })
    }

    /// Looks an image up by reference (`busybox`, `127.0.0.1:5000/x:1`), by full or short
    /// image id (config digest, ≥ 4 hex) or by manifest digest.
    pub fn get(&self, reference: &str) -> Result<Image> {
        let digest = self.resolve(reference)?;
        self.load_image(&digest, false)
    }

    /// Resolves a user string to a manifest digest.
    pub fn resolve(&self, reference: &str) -> Result<Digest> {
        let repos = self.read_repositories()?;
        if let Ok(r) = ImageRef::parse(reference) {
            if let Some(e) = repos.refs.get(&r.to_string()) {
                return Ok(e.manifest.clone());
            }
        }
        // An id or id prefix (Docker accepts both `sha256:<hex>` and bare hex).
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 4
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            let mut matches = BTreeSet::new();
            for m in repos
                .refs
                .values()
                .map(|e| &e.manifest)
                .chain(&repos.dangling)
            {
                if m.hex().starts_with(hex) {
                    matches.insert(m.clone());
                }
                if let Ok(img) = self.load_image(m, false) {
                    if img.id.hex().starts_with(hex) {
                        matches.insert(m.clone());
                    }
                }
            }
            match matches.len() {
                1 => return Ok(matches.into_iter().next().expect("one match")),
                0 => {}
                _ => {
                    return Err(StoreError::Ambiguous {
                        reference: reference.to_string(),
                        matches: matches
                            .iter()
                            .map(|d| d.short().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            }
        }
        Err(StoreError::NotFound {
            reference: reference.to_string(),
        })
    }

    /// The tag entry of an exact reference, if present.
    pub fn tag_entry(&self, r: &ImageRef) -> Result<Option<TagEntry>> {
        Ok(self.read_repositories()?.refs.get(&r.to_string()).cloned())
    }

    /// All images with their references, newest first.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let repos = self.read_repositories()?;
        let mut by_manifest: BTreeMap<Digest, Vec<ImageRef>> = BTreeMap::new();
        for (r, e) in &repos.refs {
            let r = ImageRef::parse(r)?;
            by_manifest.entry(e.manifest.clone()).or_default().push(r);
        }
        for d in &repos.dangling {
            by_manifest.entry(d.clone()).or_default();
        }
        let mut out = Vec::new();
        for (m, refs) in by_manifest {
            let img = self.load_image(&m, false)?;
            out.push(ImageSummary {
                id: img.id,
                manifest_digest: m,
                refs,
                created: img.config.created,
                size: img.size,
            });
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.refs.cmp(&b.refs)));
        Ok(out)
    }

    /// `image tag SOURCE TARGET`.
    pub fn tag(&self, source: &str, target: &ImageRef) -> Result<()> {
        let manifest = self.resolve(source)?;
        let index = match ImageRef::parse(source) {
            Ok(r) => self.tag_entry(&r)?.and_then(|e| e.index),
            Err(_) => None,
        };
        self.set_tag(target, TagEntry { manifest, index })
    }

    fn set_tag(&self, r: &ImageRef, entry: TagEntry) -> Result<()> {
        let _lock = self.lock()?;
        let mut repos = self.read_repositories()?;
        repos.dangling.remove(&entry.manifest);
        let previous = repos.refs.insert(r.to_string(), entry);
        // Like Docker: an image whose last tag moved to another image (a newer pull) stays,
        // as `<none>:<none>`, until `image prune`.
        if let Some(prev) = previous {
            if !repos.refs.values().any(|e| e.manifest == prev.manifest) {
                repos.dangling.insert(prev.manifest);
            }
        }
        self.write_repositories(&repos)
    }

    /// `image rm`: removes a reference; when it names the image by id (or `force` is set),
    /// removes every reference to it. Refuses when a container uses the image unless
    /// `force`. Unreferenced blobs and layers are then collected. Returns the references
    /// untagged and the gc report.
    pub fn remove(
        &self,
        reference: &str,
        force: bool,
        in_use: &InUse,
    ) -> Result<(Vec<ImageRef>, GcReport)> {
        let manifest = self.resolve(reference)?;
        let img = self.load_image(&manifest, false)?;
        let used = in_use.contains(&img.id)
            || in_use.contains(&manifest)
            || img.chain_ids.last().is_some_and(|c| in_use.contains(c));
        let mut removed = Vec::new();
        {
            let _lock = self.lock()?;
            let mut repos = self.read_repositories()?;
            let exact = ImageRef::parse(reference)
                .ok()
                .filter(|r| repos.refs.contains_key(&r.to_string()));
            let all: Vec<String> = repos
                .refs
                .iter()
                .filter(|(_, e)| e.manifest == manifest)
                .map(|(k, _)| k.clone())
                .collect();
            let targets: Vec<String> = match exact {
                // By name: only that tag, unless it is the last one and the image is used.
                Some(r) => vec![r.to_string()],
                None if all.len() > 1 && !force => {
                    return Err(StoreError::MultipleRefs {
                        reference: reference.to_string(),
                        count: all.len(),
                    })
                }
                None => all.clone(),
            };
            let last = targets.len() == all.len();
            if last && used && !force {
                return Err(StoreError::InUse {
                    reference: reference.to_string(),
                    id: img.id.short().to_string(),
                });
            }
            for t in targets {
                repos.refs.remove(&t);
                removed.push(ImageRef::parse(&t)?);
            }
            if last {
                repos.dangling.remove(&manifest);
            }
            self.write_repositories(&repos)?;
        }
        let report = self.gc(in_use)?;
        Ok((removed, report))
    }

    // ---------------------------------------------------------------- gc

    /// `image prune`: forgets dangling images not used by containers, then collects.
    /// With `all`, also untags every image no container uses (`image prune -a`).
    pub fn prune(&self, all: bool, in_use: &InUse) -> Result<(Vec<Digest>, GcReport)> {
        let mut removed = Vec::new();
        {
            let _lock = self.lock()?;
            let mut repos = self.read_repositories()?;
            let used = |m: &Digest| -> bool {
                in_use.contains(m)
                    || self.load_image(m, false).is_ok_and(|i| {
                        in_use.contains(&i.id)
                            || i.chain_ids.last().is_some_and(|c| in_use.contains(c))
                    })
            };
            let dangling: Vec<Digest> = repos
                .dangling
                .iter()
                .filter(|m| !used(m))
                .cloned()
                .collect();
            for d in dangling {
                repos.dangling.remove(&d);
                removed.push(d);
            }
            if all {
                let tagged: Vec<(String, Digest)> = repos
                    .refs
                    .iter()
                    .filter(|(_, e)| !used(&e.manifest))
                    .map(|(k, e)| (k.clone(), e.manifest.clone()))
                    .collect();
                for (k, m) in tagged {
                    repos.refs.remove(&k);
                    if !removed.contains(&m) {
                        removed.push(m);
                    }
                }
            }
            self.write_repositories(&repos)?;
        }
        let report = self.gc(in_use)?;
        Ok((removed, report))
    }

    /// Mark and sweep: roots are the tag index and `in_use`; edges are index → manifests,
    /// manifest → config + layer blobs, config → layer ChainIDs. Everything unmarked in
    /// `blobs/` and `layers/`, and every leftover in `ingest/` and `tmp/`, is removed.
    /// Waits for running pulls (their shared lease) first.
    pub fn gc(&self, in_use: &InUse) -> Result<GcReport> {
        let _gc = self.lock_file("gc.lock", FlockOperation::LockExclusive)?;
        let _lock = self.lock()?;
        let repos = self.read_repositories()?;
        let mut blobs: BTreeSet<Digest> = BTreeSet::new();
        let mut layers: BTreeSet<Digest> = BTreeSet::new();
        let mut roots: Vec<Digest> = Vec::new();
        for e in repos.refs.values() {
            roots.push(e.manifest.clone());
            if let Some(i) = &e.index {
                roots.push(i.clone());
            }
        }
        roots.extend(repos.dangling.iter().cloned());
        roots.extend(in_use.iter().filter(|d| self.has_blob(d)).cloned());
        layers.extend(in_use.iter().cloned());
        while let Some(d) = roots.pop() {
            if !blobs.insert(d.clone()) {
                continue;
            }
            let Ok(bytes) = self.read_blob(&d) else {
                continue;
            };
            match Document::parse(&bytes, None, d.as_str()) {
                Ok(Document::Index(i)) => roots.extend(i.manifests.into_iter().map(|m| m.digest)),
                Ok(Document::Manifest(m)) => {
                    blobs.insert(m.config.digest.clone());
                    blobs.extend(m.layers.iter().map(|l| l.digest.clone()));
                    if let Ok(cb) = self.read_blob(&m.config.digest) {
                        if let Ok(c) = ImageConfig::parse(&cb, "") {
                            layers.extend(chain_ids(&c.rootfs.diff_ids));
                        }
                    }
                }
                // Configs and layers reached as roots (in_use ids) have no further edges.
                Err(_) => {}
            }
        }
        let mut report = GcReport::default();
        let bdir = self.dir.join("blobs/sha256");
        for ent in fs::read_dir(&bdir).map_err(io_err(&bdir, "list blobs"))? {
            let ent = ent.map_err(io_err(&bdir, "list blobs"))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            let keep = Digest::parse(&format!("sha256:{name}")).is_ok_and(|d| blobs.contains(&d));
            if !keep {
                report.bytes_freed += ent.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(ent.path()).map_err(io_err(&ent.path(), "remove blob"))?;
                report.blobs_removed += 1;
                debug!(blob = %name, "gc: blob removed");
            }
        }
        let ldir = self.dir.join("layers");
        for ent in fs::read_dir(&ldir).map_err(io_err(&ldir, "list layers"))? {
            let ent = ent.map_err(io_err(&ldir, "list layers"))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            let d = Digest::parse(&format!("sha256:{name}"));
            if d.as_ref().is_ok_and(|d| layers.contains(d)) {
                continue;
            }
            if let Ok(d) = &d {
                report.bytes_freed += self.layer_meta(d).map(|m| m.size).unwrap_or(0);
            }
            remove_all(&ent.path()).map_err(io_err(&ent.path(), "remove layer"))?;
            report.layers_removed += 1;
            debug!(layer = %name, "gc: layer removed");
        }
        // Short links whose layer is gone.
        let links = self.dir.join("l");
        for ent in fs::read_dir(&links).into_iter().flatten().flatten() {
            if !ent.path().join(".").exists() {
                let _ = fs::remove_file(ent.path());
            }
        }
        // Leftovers of interrupted pulls (no pull runs now: we hold gc.lock exclusively).
        for sub in ["ingest", "tmp"] {
            let d = self.dir.join(sub);
            for ent in fs::read_dir(&d).map_err(io_err(&d, "list"))?.flatten() {
                remove_all(&ent.path()).map_err(io_err(&ent.path(), "remove leftover"))?;
            }
        }
        Ok(report)
    }

    /// Disk usage: (blob bytes, unpacked layer bytes).
    pub fn disk_usage(&self) -> Result<(u64, u64)> {
        let mut blobs = 0;
        let bdir = self.dir.join("blobs/sha256");
        for ent in fs::read_dir(&bdir)
            .map_err(io_err(&bdir, "list blobs"))?
            .flatten()
        {
            blobs += ent.metadata().map(|m| m.len()).unwrap_or(0);
        }
        let mut layers = 0;
        let ldir = self.dir.join("layers");
        for ent in fs::read_dir(&ldir)
            .map_err(io_err(&ldir, "list layers"))?
            .flatten()
        {
            if let Ok(d) = Digest::parse(&format!("sha256:{}", ent.file_name().to_string_lossy())) {
                layers += self.layer_meta(&d).map(|m| m.size).unwrap_or(0);
            }
        }
        Ok((blobs, layers))
    }

    // ---------------------------------------------------------------- tag index file

    fn repositories_path(&self) -> PathBuf {
        self.dir.join("repositories.json")
    }

    fn read_repositories(&self) -> Result<Repositories> {
        let p = self.repositories_path();
        match fs::read(&p) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|source| StoreError::Corrupt { path: p, source })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Repositories::default()),
            Err(e) => Err(StoreError::Io {
                path: p,
                op: "read tag index",
                source: e,
            }),
        }
    }

    /// Caller holds `lock()`. Temp file + fsync + rename: readers see old or new, never half.
    fn write_repositories(&self, r: &Repositories) -> Result<()> {
        let p = self.repositories_path();
        let tmp = self.dir.join(format!("repositories.json.{}", unique()));
        write_file_synced(
            &tmp,
            &serde_json::to_vec_pretty(r).expect("tag index serialises"),
        )?;
        fs::rename(&tmp, &p).map_err(io_err(&p, "commit tag index"))?;
        fsync_dir(&self.dir)
    }
}

/// A blob being written; visible under its digest only after [`Ingest::commit`] verified
/// it. Dropping it without commit removes the partial file.
pub struct Ingest {
    store: Store,
    path: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    written: u64,
    expected: Digest,
    size: Option<u64>,
}

impl Ingest {
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies sha256 and size, fsyncs, renames into `blobs/`.
    pub fn commit(mut self) -> Result<Digest> {
        let file = self.file.take().expect("ingest file present until commit");
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if let Some(size) = self.size {
            if size != self.written {
                return Err(StoreError::SizeMismatch {
                    digest: self.expected.clone(),
                    expected: size,
                    actual: self.written,
                });
            }
        }
        if actual != self.expected {
            return Err(StoreError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
                size: self.written,
            });
        }
        file.sync_all().map_err(io_err(&self.path, "fsync blob"))?;
        drop(file);
        let dest = self.store.blob_path(&self.expected);
        fs::rename(&self.path, &dest).map_err(io_err(&dest, "commit blob"))?;
        fsync_dir(dest.parent().expect("blob has a parent"))?;
        debug!(blob = %self.expected, size = self.written, "blob committed");
        Ok(self.expected.clone())
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("ingest already committed"))?;
        let n = f.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // Not committed (error or cancelled pull): nothing half-written stays.
        let _ = fs::remove_file(&self.path);
    }
}

struct TempDirGuard(PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = remove_all(&self.0);
    }
}

fn write_file_synced(p: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(p).map_err(io_err(p, "create file"))?;
    f.write_all(bytes).map_err(io_err(p, "write file"))?;
    f.sync_all().map_err(io_err(p, "fsync file"))
}

fn fsync_dir(p: &Path) -> Result<()> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io_err(p, "fsync directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn blob_verified_before_commit() {
        let t = tmp();
        let s = Store::open(t.path()).unwrap();
        let good = Digest::of(b"hello");
        let mut w = s.ingest(good.clone(), Some(5)).unwrap();
        w.write_all(b"hellx").unwrap();
        assert!(matches!(w.commit(), Err(StoreError::DigestMismatch { .. })));
        assert!(!s.has_blob(&good));
        assert_eq!(
            fs::read_dir(s.dir().join("ingest")).unwrap().count(),
            0,
            "partial file removed"
        );
        let mut w = s.ingest(good.clone(), Some(6)).unwrap();
        w.write_all(b"hello").unwrap();
        assert!(matches!(w.commit(), Err(StoreError::SizeMismatch { .. })));
        assert_eq!(s.put_blob(b"hello", Some(&good)).unwrap(), good);
        assert_eq!(s.read_blob(&good).unwrap(), b"hello");
    }

    #[test]
    fn missing_image_is_not_found() {
        let t = tmp();
        let s = Store::open(t.path()).unwrap();
        assert!(matches!(s.get("busybox"), Err(StoreError::NotFound { .. })));
        assert!(s.list().unwrap().is_empty());
    }
}
