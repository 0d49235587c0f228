//! Registry pull and push over the distribution API, with `oci-client`'s low-level calls.
//!
//! Takes an [`ImageRef`], the [`Store`] and a [`RegistryConfig`] (insecure registries,
//! Docker `config.json` credentials); gives a pulled, verified, unpacked and tagged image
//! (or a pushed one). Not `Client::pull`, which buffers whole layers in memory: manifests
//! are fetched raw (exact bytes kept, so digests are stable), indexes resolved with our own
//! platform selection (`manifest::select_platform`, variant-aware, skips attestations),
//! blobs streamed into the store's ingest files with sha256 + size verified before commit,
//! layers fetched 4 at a time, then unpacked in parallel. Transient failures (connection
//! errors, 5xx, 429) are retried with exponential backoff. Auth: oci-client performs the
//! `/v2/` challenge, the anonymous or credentialed bearer-token flow and basic auth; we
//! supply credentials from `config.json` (`auths.<registry>.auth`, base64 `user:pass`).
//! Plain HTTP is used only for localhost, 127.0.0.0/8, ::1 and configured insecure
//! registries. Neighbours: `store`, `manifest`, `reference`, the CLI.

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tracing::{debug, info, info_span, warn, Instrument};

use super::digest::{chain_ids, Digest};
use super::manifest::{self, Descriptor, Document, ImageConfig, ManifestError, Platform};
use super::reference::ImageRef;
use super::store::{Store, StoreError};

/// Layers downloaded at once (containerd's and Docker's default is 3–5).
const PARALLEL_DOWNLOADS: usize = 4;
const RETRIES: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry}: {op} for {reference} failed")]
    Request {
        registry: String,
        reference: String,
        op: &'static str,
        #[source]
        source: OciDistributionError,
    },
    #[error("registry {registry}: manifest {reference} has digest {actual}, expected {expected}")]
    ManifestDigest {
        registry: String,
        reference: String,
        expected: String,
        actual: Digest,
    },
    #[error("blob {digest} from {registry}: download stream failed")]
    Stream {
        registry: String,
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read registry credentials from {path}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {reference} is not in the store (pull, load or import it first)")]
    NotLocal { reference: String },
    #[error("background task failed: {0}")]
    Join(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Hosts (`host[:port]`) spoken to over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Docker's `config.json` (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
    pub docker_config: Option<PathBuf>,
}

impl RegistryConfig {
    /// Defaults from the environment: `DOCKER_CONFIG`, `HOME`.
    pub fn from_env() -> Self {
        let docker_config = std::env::var_os("DOCKER_CONFIG")
            .map(|d| PathBuf::from(d).join("config.json"))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
            });
        Self {
            insecure_registries: Vec::new(),
            docker_config,
        }
    }

    /// Whether `registry` (host[:port]) is spoken to over plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        self.insecure_registries.iter().any(|r| r == registry) || is_loopback_registry(registry)
    }

    /// Credentials for `registry` from `config.json` (`auths`, base64 `auth` or
    /// `username`/`password`); anonymous when there is none.
    pub fn auth_for(&self, registry: &str) -> Result<RegistryAuth> {
        let Some(path) = &self.docker_config else {
            return Ok(RegistryAuth::Anonymous);
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RegistryAuth::Anonymous)
            }
            Err(source) => {
                return Err(RegistryError::Credentials {
                    path: path.clone(),
                    source,
                })
            }
        };
        Ok(auth_from_config_json(&bytes, registry).unwrap_or(RegistryAuth::Anonymous))
    }
}

/// localhost, 127.0.0.0/8 and ::1 (with or without port) are plain HTTP, like Docker.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Finds `registry` in a Docker `config.json` body. Docker Hub's key is the legacy
/// `https://index.docker.io/v1/`; other keys may carry a scheme or a path.
pub fn auth_from_config_json(bytes: &[u8], registry: &str) -> Option<RegistryAuth> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let hub = registry == "docker.io"
        || registry == "index.docker.io"
        || registry == "registry-1.docker.io";
    let entry = auths.iter().find_map(|(k, e)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        let matches = host == registry
            || (hub
                && matches!(
                    host,
                    "index.docker.io" | "docker.io" | "registry-1.docker.io"
                ));
        matches.then_some(e)
    })?;
    if let Some(a) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .ok()?;
        let s = String::from_utf8(decoded).ok()?;
        let (u, p) = s.split_once(':')?;
        return Some(RegistryAuth::Basic(u.to_string(), p.to_string()));
    }
    let u = entry.get("username")?.as_str()?;
    let p = entry.get("password")?.as_str()?;
    Some(RegistryAuth::Basic(u.to_string(), p.to_string()))
}

/// How to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Bars on a TTY (stderr), plain lines otherwise.
    Auto,
    Plain,
    Quiet,
}

#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Default: this machine's platform.
    pub platform: Option<Platform>,
    pub progress: Progress,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    pub manifest_digest: Digest,
    pub index_digest: Option<Digest>,
    pub id: Digest,
    /// Layer blobs actually downloaded (already-present ones are skipped).
    pub downloaded: usize,
    pub bytes: u64,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushOutcome {
    pub manifest_digest: Digest,
    pub manifest_size: usize,
    pub uploaded: usize,
    pub skipped: usize,
}

fn client_for(cfg: &RegistryConfig, r: &ImageRef) -> Client {
    let protocol = if cfg.is_insecure(r.registry()) {
        ClientProtocol::HttpsExcept(vec![r.registry().to_string()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        max_concurrent_download: PARALLEL_DOWNLOADS,
        use_monolithic_push: true,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    })
}

fn oci_ref(r: &ImageRef) -> Reference {
    match (r.tag(), r.digest()) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(
            r.registry().into(),
            r.repository().into(),
            t.into(),
            d.into(),
        ),
        (_, Some(d)) => {
            Reference::with_digest(r.registry().into(), r.repository().into(), d.into())
        }
        (Some(t), None) => {
            Reference::with_tag(r.registry().into(), r.repository().into(), t.into())
        }
        (None, None) => {
            Reference::with_tag(r.registry().into(), r.repository().into(), "latest".into())
        }
    }
}

/// Transient: connection problems, timeouts, 5xx, 429. Not: auth, 404, digest errors.
fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(re) => {
            re.is_connect()
                || re.is_timeout()
                || re.is_request()
                || re.is_body()
                || re
                    .status()
                    .is_some_and(|s| s.is_server_error() || s.as_u16() == 429)
        }
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

/// Runs `f` up to RETRIES+1 times with exponential backoff (200 ms, 400 ms, ...) while it
/// fails transiently.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> std::result::Result<T, OciDistributionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, OciDistributionError>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if attempt < RETRIES && is_transient(&e) => {
                attempt += 1;
                warn!(what, attempt, error = %e, "transient registry error, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            r => return r,
        }
    }
}

/// Progress reporting: indicatif bars on a TTY, plain lines otherwise.
struct Reporter {
    mode: Progress,
    bars: Option<indicatif::MultiProgress>,
}

impl Reporter {
    fn new(mode: Progress) -> Self {
        let mode = match mode {
            Progress::Auto if std::io::stderr().is_terminal() => Progress::Auto,
            Progress::Auto => Progress::Plain,
            m => m,
        };
        let bars = (mode == Progress::Auto).then(indicatif::MultiProgress::new);
        Self { mode, bars }
    }

    fn line(&self, msg: &str) {
        match (&self.bars, self.mode) {
            (_, Progress::Quiet) => {}
            (Some(b), _) => {
                let _ = b.println(msg);
            }
            (None, _) => {
                let _ = writeln!(std::io::stderr(), "{msg}");
            }
        }
    }

    fn bar(&self, d: &Digest, size: u64) -> Option<indicatif::ProgressBar> {
        let b = self.bars.as_ref()?.add(indicatif::ProgressBar::new(size));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix}: {bar:30} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(d.short().to_string());
        Some(b)
    }
}

/// `image pull`: resolves, downloads, verifies, unpacks and tags `r`.
pub async fn pull(
    store: &Store,
    cfg: &RegistryConfig,
    r: &ImageRef,
    opts: &PullOptions,
) -> Result<PullOutcome> {
    let span = info_span!("pull", reference = %r);
    async move {
        let _lease = store.lease()?;
        let client = Arc::new(client_for(cfg, r));
        let auth = cfg.auth_for(r.registry())?;
        let reference = oci_ref(r);
        let reporter = Reporter::new(opts.progress);
        let platform = opts.platform.clone().unwrap_or_else(Platform::host);
        let req_err = |op, source| RegistryError::Request {
            registry: r.registry().to_string(),
            reference: r.to_string(),
            op,
            source,
        };
        reporter.line(&format!(
            "{}: Pulling from {}",
            r.tag().or(r.digest()).unwrap_or("latest"),
            r.familiar_name()
        ));
        let (bytes, _) = retry("manifest", || {
            client.pull_manifest_raw(&reference, &auth, manifest::ACCEPTED_MANIFESTS)
        })
        .await
        .map_err(|e| req_err("fetching the manifest", e))?;
        let top = Digest::of(&bytes);
        if let Some(want) = r.digest() {
            if want != top.as_str() {
                return Err(RegistryError::ManifestDigest {
                    registry: r.registry().into(),
                    reference: r.to_string(),
                    expected: want.into(),
                    actual: top,
                });
            }
        }
        let (manifest_digest, manifest_bytes, index_digest) =
            match Document::parse(&bytes, None, top.as_str())? {
                Document::Manifest(_) => (top.clone(), bytes.to_vec(), None),
                Document::Index(index) => {
                    store.put_blob(&bytes, Some(&top))?;
                    let chosen =
                        manifest::select_platform(&index, &platform, top.as_str())?.clone();
                    debug!(platform = %platform, manifest = %chosen.digest, "platform selected");
                    let child = reference.clone_with_digest(chosen.digest.to_string());
                    let (mb, _) = retry("manifest", || {
                        client.pull_manifest_raw(&child, &auth, manifest::ACCEPTED_MANIFESTS)
                    })
                    .await
                    .map_err(|e| req_err("fetching the platform manifest", e))?;
                    let actual = Digest::of(&mb);
                    if actual != chosen.digest {
                        return Err(RegistryError::ManifestDigest {
                            registry: r.registry().into(),
                            reference: child.whole(),
                            expected: chosen.digest.to_string(),
                            actual,
                        });
                    }
                    (actual, mb.to_vec(), Some(top.clone()))
                }
            };
        let m = match Document::parse(&manifest_bytes, None, manifest_digest.as_str())? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Err(StoreError::IndexNotImage {
                    manifest: manifest_digest,
                }
                .into())
            }
        };
        for l in &m.layers {
            if !manifest::is_layer_media_type(&l.media_type) {
                return Err(ManifestError::LayerMediaType {
                    media_type: l.media_type.clone(),
                    digest: l.digest.to_string(),
                }
                .into());
            }
        }
        // Config first (small; needed for the DiffIDs), then the layers in parallel.
        fetch_blob(
            store,
            &client,
            &reference,
            &m.config,
            r.registry(),
            &reporter,
            false,
        )
        .await?;
        let config = ImageConfig::parse(
            &store.read_blob(&m.config.digest)?,
            m.config.digest.as_str(),
        )?;
        let results: Vec<u64> = futures::stream::iter(m.layers.iter())
            .map(|l| fetch_blob(store, &client, &reference, l, r.registry(), &reporter, true))
            .buffer_unordered(PARALLEL_DOWNLOADS)
            .try_collect()
            .await?;
        let downloaded = results.iter().filter(|b| **b > 0).count();
        let bytes_total: u64 = results.iter().sum();
        // Unpack on the blocking pool, layers in parallel (each is independent: one dir per
        // layer, overlay stacks them).
        if config.rootfs.diff_ids.len() == m.layers.len() {
            let chains = chain_ids(&config.rootfs.diff_ids);
            let mut tasks = Vec::new();
            for ((chain, diff), l) in chains
                .into_iter()
                .zip(config.rootfs.diff_ids.clone())
                .zip(m.layers.clone())
            {
                let s = store.clone();
                tasks.push(tokio::task::spawn_blocking(move || {
                    s.ensure_layer(&chain, &diff, &l.digest).map(|_| l.digest)
                }));
            }
            for t in tasks {
                let d = t.await.map_err(|e| RegistryError::Join(e.to_string()))??;
                reporter.line(&format!("{}: Pull complete", d.short()));
            }
        }
        store.put_blob(&manifest_bytes, Some(&manifest_digest))?;
        let s = store.clone();
        let (md, idx, rr) = (manifest_digest.clone(), index_digest.clone(), r.clone());
        let img = tokio::task::spawn_blocking(move || s.commit_image(&md, idx.as_ref(), Some(&rr)))
            .await
            .map_err(|e| RegistryError::Join(e.to_string()))??;
        info!(manifest = %manifest_digest, downloaded, bytes = bytes_total, "pull complete");
        Ok(PullOutcome {
            manifest_digest,
            index_digest,
            id: img.id,
            downloaded,
            bytes: bytes_total,
        })
    }
    .instrument(span)
    .await
}

/// Streams one blob into the store (skipped when present). Returns bytes downloaded.
async fn fetch_blob(
    store: &Store,
    client: &Client,
    reference: &Reference,
    desc: &Descriptor,
    registry: &str,
    reporter: &Reporter,
    is_layer: bool,
) -> Result<u64> {
    if store.has_blob(&desc.digest) {
        if is_layer {
            reporter.line(&format!("{}: Already exists", desc.digest.short()));
        }
        return Ok(0);
    }
    let bar = if is_layer {
        reporter.bar(&desc.digest, desc.size)
    } else {
        None
    };
    if is_layer && bar.is_none() {
        reporter.line(&format!(
            "{}: Pulling fs layer ({} bytes)",
            desc.digest.short(),
            desc.size
        ));
    }
    let mut attempt = 0;
    let mut delay = Duration::from_millis(200);
    loop {
        match fetch_blob_once(store, client, reference, desc, registry, bar.as_ref()).await {
            Ok(n) => {
                if let Some(b) = &bar {
                    b.finish_with_message("done");
                } else if is_layer {
                    reporter.line(&format!("{}: Download complete", desc.digest.short()));
                }
                return Ok(n);
            }
            Err(e) if attempt < RETRIES && blob_error_is_transient(&e) => {
                attempt += 1;
                warn!(blob = %desc.digest, attempt, error = %e, "blob download failed, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

fn blob_error_is_transient(e: &RegistryError) -> bool {
    match e {
        RegistryError::Request { source, .. } => is_transient(source),
        RegistryError::Stream { .. } => true,
        _ => false,
    }
}

async fn fetch_blob_once(
    store: &Store,
    client: &Client,
    reference: &Reference,
    desc: &Descriptor,
    registry: &str,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<u64> {
    let mut ingest = store.ingest(desc.digest.clone(), Some(desc.size))?;
    let ld = oci_client::client::LayerDescriptor {
        digest: desc.digest.as_str(),
        urls: &None,
    };
    let mut sized = client
        .pull_blob_stream(reference, &ld)
        .await
        .map_err(|source| RegistryError::Request {
            registry: registry.into(),
            reference: reference.whole(),
            op: "fetching a blob",
            source,
        })?;
    let serr = |source| RegistryError::Stream {
        registry: registry.into(),
        digest: desc.digest.clone(),
        source,
    };
    while let Some(chunk) = sized.stream.next().await {
        let chunk = chunk.map_err(serr)?;
        // Small synchronous writes into the page cache; the fsync happens once, at commit.
        ingest.write_all(&chunk).map_err(serr)?;
        if let Some(b) = bar {
            b.inc(chunk.len() as u64);
        }
        if ingest.written() > desc.size {
            break; // more than announced: commit() reports the size mismatch
        }
    }
    let n = ingest.written();
    // Verifies size and sha256, then renames into blobs/ (nothing visible otherwise).
    ingest.commit()?;
    Ok(n)
}

/// `image push`: uploads the blobs the registry lacks, then the manifest bytes as stored
/// (never re-serialised, so the digest is the local one).
pub async fn push(
    store: &Store,
    cfg: &RegistryConfig,
    r: &ImageRef,
    quiet: bool,
) -> Result<PushOutcome> {
    let span = info_span!("push", reference = %r);
    async move {
        let manifest_digest =
            store
                .resolve(&r.to_string())
                .map_err(|_| RegistryError::NotLocal {
                    reference: r.to_string(),
                })?;
        let img = store.get(manifest_digest.as_str())?;
        let client = client_for(cfg, r);
        let auth = cfg.auth_for(r.registry())?;
        let reference = oci_ref(
            &r.with_tag(r.tag().unwrap_or("latest"))
                .unwrap_or_else(|_| r.clone()),
        );
        let req_err = |op, source| RegistryError::Request {
            registry: r.registry().to_string(),
            reference: r.to_string(),
            op,
            source,
        };
        client
            .auth(&reference, &auth, RegistryOperation::Push)
            .await
            .map_err(|e| req_err("authenticating", e))?;
        let reporter = Reporter::new(if quiet {
            Progress::Quiet
        } else {
            Progress::Plain
        });
        let mut blobs: Vec<&Descriptor> = img.manifest.layers.iter().collect();
        blobs.push(&img.manifest.config);
        let (mut uploaded, mut skipped) = (0, 0);
        for d in blobs {
            let exists = retry("blob exists", || {
                client.blob_exists(&reference, d.digest.as_str())
            })
            .await
            .map_err(|e| req_err("checking a blob", e))?;
            if exists {
                skipped += 1;
                reporter.line(&format!("{}: Layer already exists", d.digest.short()));
                continue;
            }
            // Streamed from the store file (monolithic PUT with Content-Length), never
            // the whole layer in memory; a retry reopens the file.
            let path = store.blob_path(&d.digest);
            store.open_blob(&d.digest)?;
            retry("blob upload", || {
                let stream = file_stream(path.clone());
                client.push_blob_stream(&reference, stream, d.digest.as_str(), Some(d.size))
            })
            .await
            .map_err(|e| req_err("uploading a blob", e))?;
            uploaded += 1;
            reporter.line(&format!("{}: Pushed", d.digest.short()));
        }
        let mbytes = store.read_blob(&manifest_digest)?;
        let mt = img
            .manifest
            .media_type
            .clone()
            .unwrap_or_else(|| manifest::OCI_MANIFEST.to_string());
        let header: http::HeaderValue = mt.parse().map_err(|_| {
            req_err(
                "uploading the manifest",
                OciDistributionError::UnsupportedMediaTypeError(mt.clone()),
            )
        })?;
        retry("manifest upload", || {
            client.push_manifest_raw(&reference, mbytes.clone(), header.clone())
        })
        .await
        .map_err(|e| req_err("uploading the manifest", e))?;
        Ok(PushOutcome {
            manifest_digest,
            manifest_size: mbytes.len(),
            uploaded,
            skipped,
        })
    }
    .instrument(span)
    .await
}

/// A file as a stream of 1 MiB chunks, for streamed uploads.
fn file_stream(
    path: PathBuf,
) -> impl futures::Stream<Item = std::result::Result<bytes::Bytes, OciDistributionError>> + Send + 'static
{
    use tokio::io::AsyncReadExt;
    futures::stream::try_unfold(None::<tokio::fs::File>, move |f| {
        let path = path.clone();
        async move {
            let mut f = match f {
                Some(f) => f,
                None => tokio::fs::File::open(&path).await?,
            };
            let mut buf = vec![0u8; 1 << 20];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some((bytes::Bytes::from(buf), Some(f))))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback_registry(r), "{r}");
        }
        for r in [
            "docker.io",
            "10.0.0.1:5000",
            "example.com:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback_registry(r), "{r}");
        }
        let cfg = RegistryConfig {
            insecure_registries: vec!["reg.lan:5000".into()],
            docker_config: None,
        };
        assert!(cfg.is_insecure("reg.lan:5000"));
        assert!(!cfg.is_insecure("reg.lan"));
    }

    #[test]
    fn credentials_from_config_json() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        let cfg = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"127.0.0.1:5000":{{"username":"u","password":"p"}}}}}}"#
        );
        match auth_from_config_json(cfg.as_bytes(), "docker.io") {
            Some(RegistryAuth::Basic(u, p)) => {
                assert_eq!((u.as_str(), p.as_str()), ("bob", "s3cret"))
            }
            other => panic!("unexpected {other:?}"),
        }
        match auth_from_config_json(cfg.as_bytes(), "127.0.0.1:5000") {
            Some(RegistryAuth::Basic(u, p)) => assert_eq!((u.as_str(), p.as_str()), ("u", "p")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(auth_from_config_json(cfg.as_bytes(), "ghcr.io").is_none());
        assert!(auth_from_config_json(b"not json", "ghcr.io").is_none());
    }
}
