//! Safe layer unpacking into an overlay-format directory.
//!
//! Takes a layer blob stream (gzip, zstd or plain tar, detected by magic bytes) and an
//! empty target directory; gives the directory filled in overlayfs lower-layer format and
//! an [`UnpackReport`] with the layer's DiffID (sha256 of the uncompressed tar). Used by
//! `store` (which unpacks into a temp dir and commits it by rename) and by `archive`
//! (import). Neighbours: `digest` (hashing), the runtime (mounts the result as a lowerdir).
//!
//! The `tar` crate is used only as a parser: its own `unpack` silently skips `..`, re-roots
//! absolute paths and applies forged `trusted.overlay.*` xattrs (see
//! shared/notes/image-eval.md §3). Every filesystem effect here is relative to directory
//! fds opened with `O_NOFOLLOW` one component at a time, so no entry can reach outside the
//! target: entries with `..`, absolute paths, NUL, parents that are symlinks (write,
//! whiteout or opaque marker through a symlink), hardlinks whose target is outside or
//! behind a symlink, and forged overlay xattrs are refused with an error that names the
//! layer and the entry (CVE-2018-15664-style escapes, CVE-2019-14271).
//!
//! Whiteouts follow the OCI image-spec layer format: `.wh.<name>` becomes a 0/0 character
//! device (overlayfs whiteout, Documentation/filesystems/overlayfs.rst), `.wh..wh..opq`
//! sets `trusted.overlay.opaque=y` on its directory.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;
use tracing::debug;

use super::digest::{Digest, HashingReader};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// aufs metadata entries (`.wh..wh.plnk`, `.wh..wh.aufs`) carry no content (moby's
/// archive/whiteouts.go); they are skipped.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What went wrong unpacking one layer. Every variant names the layer digest (or import
/// source) and, where there is one, the tar entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: entry {entry:?} rejected: {reason}")]
    Rejected {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("layer {layer}: entry {entry:?}: {op} failed")]
    Io {
        layer: String,
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: reading the layer stream failed")]
    Read {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: cannot open the target directory {path}")]
    Target {
        layer: String,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer {layer}: uncompressed content has digest {actual}, the image config says {expected}"
    )]
    DiffIdMismatch {
        layer: String,
        expected: Digest,
        actual: Digest,
    },
}

/// What device nodes in a layer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Create them (root); an EPERM (no CAP_MKNOD) skips and counts the node.
    Create,
    /// Refuse the layer.
    Reject,
}

#[derive(Debug, Clone)]
pub struct UnpackOptions {
    pub devices: DevicePolicy,
    /// When set, the uncompressed stream must hash to this DiffID.
    pub expected_diff_id: Option<Digest>,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            devices: DevicePolicy::Create,
            expected_diff_id: None,
        }
    }
}

/// Result of a successful unpack.
#[derive(Debug, Clone)]
pub struct UnpackReport {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Uncompressed tar size in bytes.
    pub tar_size: u64,
    pub entries: u64,
    /// Device nodes skipped because we lack CAP_MKNOD.
    pub skipped_devices: u64,
}

/// Compression detected from the first bytes of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn detect(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// Wraps a blob stream in the right decompressor (by magic bytes, not media type: the
/// media type is advisory and some registries lie).
pub fn decompress<'a, R: Read + 'a>(blob: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(256 * 1024, blob);
    let head = br.fill_buf()?;
    Ok(match Compression::detect(head) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(br)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(br)?),
        Compression::None => Box::new(br),
    })
}

/// Unpacks one layer blob into `target` (an existing, normally empty, directory).
pub fn unpack_layer<R: Read>(
    blob: R,
    target: &Path,
    layer: &str,
    opts: &UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    let root = rfs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Target {
        layer: layer.to_string(),
        path: target.display().to_string(),
        source: e.into(),
    })?;
    let read_err = |source| UnpackError::Read {
        layer: layer.to_string(),
        source,
    };
    let stream = decompress(blob).map_err(read_err)?;
    let mut hashing = HashingReader::new(stream);
    let mut ctx = Ctx {
        layer,
        root: root.as_fd(),
        opts,
        parent_cache: None,
        dir_times: Vec::new(),
        entries: 0,
        skipped_devices: 0,
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive.entries().map_err(read_err)?;
        for entry in entries {
            let mut entry = entry.map_err(read_err)?;
            ctx.apply(&mut entry)?;
        }
    }
    ctx.finish_dir_times()?;
    // Drain trailing padding/garbage so the DiffID covers the whole stream.
    let (diff_id, tar_size) = hashing.finish().map_err(read_err)?;
    if let Some(expected) = &opts.expected_diff_id {
        if *expected != diff_id {
            return Err(UnpackError::DiffIdMismatch {
                layer: layer.to_string(),
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    debug!(layer, entries = ctx.entries, %diff_id, "layer unpacked");
    Ok(UnpackReport {
        diff_id,
        tar_size,
        entries: ctx.entries,
        skipped_devices: ctx.skipped_devices,
    })
}

/// Splits an archive path into clean components: `""` and `.` dropped; absolute paths,
/// `..` and NUL refused.
pub fn clean_components(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    if path.first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    if path.contains(&0) {
        return Err("NUL byte in path".into());
    }
    let mut out = Vec::new();
    for comp in path.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path contains '..'".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Metadata of one entry, PAX overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Ctx<'a> {
    layer: &'a str,
    root: BorrowedFd<'a>,
    opts: &'a UnpackOptions,
    /// Consecutive entries usually share a parent: keep its fd.
    parent_cache: Option<(Vec<Vec<u8>>, OwnedFd)>,
    /// Directory mtimes are set at the end: creating children changes them.
    dir_times: Vec<(Vec<Vec<u8>>, i64)>,
    entries: u64,
    skipped_devices: u64,
}

impl<'a> Ctx<'a> {
    fn reject(&self, entry: &str, reason: impl Into<String>) -> UnpackError {
        UnpackError::Rejected {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn io(&self, entry: &str, op: &'static str, e: impl Into<io::Error>) -> UnpackError {
        UnpackError::Io {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            op,
            source: e.into(),
        }
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        self.entries += 1;
        let raw_path: Vec<u8> = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let kind = entry.header().entry_type();
        // PAX global/extended headers and GNU long-name headers are consumed by the parser;
        // anything else we do not know is refused rather than guessed at.
        use tar::EntryType as E;
        if matches!(
            kind,
            E::XGlobalHeader | E::XHeader | E::GNULongName | E::GNULongLink
        ) {
            return Ok(());
        }
        let comps = clean_components(&raw_path).map_err(|r| self.reject(&name, r))?;
        let meta = self.meta(entry, &name)?;
        let Some((base, parents)) = comps.split_last() else {
            // The root entry ("./"): apply its mode and owner to the layer root.
            if kind == E::Directory {
                let root = self
                    .root
                    .try_clone_to_owned()
                    .map_err(|e| self.io(&name, "dup", e))?;
                self.set_meta_fd(&name, &root, &meta, false)?;
                self.dir_times.push((Vec::new(), meta.mtime));
            }
            return Ok(());
        };
        let base: &[u8] = base;
        let parents: Vec<Vec<u8>> = parents.iter().map(|c| c.to_vec()).collect();
        let parent_fd = self.open_parent(&parents, &name)?;
        let parent = parent_fd.as_fd();

        if base.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parent, base, &name);
        }
        match kind {
            E::Regular | E::Continuous => {
                self.remove_existing(parent, base, &name, false)?;
                let fd = rfs::openat(
                    parent,
                    OsStr::from_bytes(base),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.io(&name, "create file", e))?;
                let mut file = std::fs::File::from(fd);
                io::copy(entry, &mut file).map_err(|e| self.io(&name, "write file", e))?;
                self.set_meta_fd(&name, &OwnedFd::from(file), &meta, true)?;
            }
            E::Directory => {
                if !self.remove_existing(parent, base, &name, true)? {
                    rfs::mkdirat(parent, OsStr::from_bytes(base), Mode::from_raw_mode(0o700))
                        .map_err(|e| self.io(&name, "mkdir", e))?;
                }
                let fd = self.open_dir(parent, base, &name)?;
                self.set_meta_fd(&name, &fd, &meta, false)?;
                let mut path = parents.clone();
                path.push(base.to_vec());
                self.dir_times.push((path, meta.mtime));
            }
            E::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.reject(&name, "symlink without a target"))?
                    .into_owned();
                if target.contains(&0) || target.is_empty() {
                    return Err(self.reject(&name, "invalid symlink target"));
                }
                self.remove_existing(parent, base, &name, false)?;
                // The target is stored, never followed by us: an outside-pointing symlink is
                // harmless as long as nothing is written through it (open_parent refuses).
                rfs::symlinkat(OsStr::from_bytes(&target), parent, OsStr::from_bytes(base))
                    .map_err(|e| self.io(&name, "symlink", e))?;
                self.set_meta_at(&name, parent, base, &meta)?;
            }
            E::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.reject(&name, "hardlink without a target"))?
                    .into_owned();
                let tcomps = clean_components(&target)
                    .map_err(|r| self.reject(&name, format!("hardlink target: {r}")))?;
                let Some((tbase, tparents)) = tcomps.split_last() else {
                    return Err(self.reject(&name, "hardlink to the layer root"));
                };
                let tparents: Vec<Vec<u8>> = tparents.iter().map(|c| c.to_vec()).collect();
                let tparent = self.walk(&tparents, &name, false)?;
                // The target must exist in this layer and must not be a directory.
                let st = rfs::statat(
                    &tparent,
                    OsStr::from_bytes(tbase),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| {
                    self.reject(&name, format!("hardlink target is not in this layer ({e})"))
                })?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Err(self.reject(&name, "hardlink to a directory"));
                }
                if tparents == parents && *tbase == base {
                    return Ok(());
                }
                // Re-open our parent: walk() may have replaced the cached one.
                let parent = self.open_parent(&parents, &name)?;
                self.remove_existing(parent.as_fd(), base, &name, false)?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself (linkat(2)).
                rfs::linkat(
                    &tparent,
                    OsStr::from_bytes(tbase),
                    &parent,
                    OsStr::from_bytes(base),
                    AtFlags::empty(),
                )
                .map_err(|e| self.io(&name, "hardlink", e))?;
            }
            E::Char | E::Block | E::Fifo => {
                if kind != E::Fifo && self.opts.devices == DevicePolicy::Reject {
                    return Err(self.reject(&name, "device nodes are not allowed here"));
                }
                let ft = match kind {
                    E::Char => FileType::CharacterDevice,
                    E::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                self.remove_existing(parent, base, &name, false)?;
                match rfs::mknodat(
                    parent,
                    OsStr::from_bytes(base),
                    ft,
                    Mode::from_raw_mode(0o600),
                    rfs::makedev(major, minor),
                ) {
                    Ok(()) => {}
                    Err(Errno::PERM) if kind != E::Fifo => {
                        // Without CAP_MKNOD (rootless), skip like podman does.
                        self.skipped_devices += 1;
                        debug!(layer = self.layer, entry = %name, "device node skipped: EPERM");
                        return Ok(());
                    }
                    Err(e) => return Err(self.io(&name, "mknod", e)),
                }
                self.set_meta_at(&name, parent, base, &meta)?;
            }
            other => {
                return Err(self.reject(&name, format!("unsupported tar entry type {other:?}")));
            }
        }
        Ok(())
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Meta, UnpackError> {
        let h = entry.header();
        let bad = |what: &str| self.reject(name, format!("unreadable {what} in the tar header"));
        let mut m = Meta {
            mode: h.mode().map_err(|_| bad("mode"))? & 0o7777,
            uid: h.uid().map_err(|_| bad("uid"))? as u32,
            gid: h.gid().map_err(|_| bad("gid"))? as u32,
            mtime: h.mtime().map_err(|_| bad("mtime"))? as i64,
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| self.io(name, "read pax header", e))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| self.io(name, "read pax header", e))?;
                let Ok(key) = ext.key() else { continue };
                let val = ext.value_bytes();
                let num = || {
                    std::str::from_utf8(val)
                        .ok()
                        .and_then(|s| s.split('.').next()?.parse::<i64>().ok())
                };
                match key {
                    "uid" => m.uid = num().ok_or_else(|| bad("pax uid"))? as u32,
                    "gid" => m.gid = num().ok_or_else(|| bad("pax gid"))? as u32,
                    "mtime" => m.mtime = num().unwrap_or(m.mtime),
                    k => {
                        if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                            // A layer must not forge overlay metadata (opaque, redirect,
                            // origin, metacopy): the store sets those itself.
                            if x.starts_with("trusted.overlay.") || x.starts_with("user.overlay.") {
                                return Err(self.reject(name, format!("forged overlay xattr {x}")));
                            }
                            m.xattrs.push((x.to_string(), val.to_vec()));
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    /// Opens the parent directory of an entry, creating missing directories.
    fn open_parent(&mut self, parents: &[Vec<u8>], name: &str) -> Result<OwnedFd, UnpackError> {
        if let Some((p, fd)) = &self.parent_cache {
            if p == parents {
                return fd.try_clone().map_err(|e| self.io(name, "dup", e));
            }
        }
        let fd = self.walk(parents, name, true)?;
        let dup = fd.try_clone().map_err(|e| self.io(name, "dup", e))?;
        self.parent_cache = Some((parents.to_vec(), fd));
        Ok(dup)
    }

    /// Walks `comps` from the layer root, one `O_NOFOLLOW` openat per component. A symlink
    /// or non-directory on the way is refused (ELOOP/ENOTDIR), never followed.
    fn walk(&self, comps: &[Vec<u8>], name: &str, create: bool) -> Result<OwnedFd, UnpackError> {
        let mut cur = self
            .root
            .try_clone_to_owned()
            .map_err(|e| self.io(name, "dup", e))?;
        for c in comps {
            let c = OsStr::from_bytes(c);
            let next = match rfs::openat(&cur, c, dir_flags(), Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    rfs::mkdirat(&cur, c, Mode::from_raw_mode(0o755))
                        .map_err(|e| self.io(name, "mkdir parent", e))?;
                    rfs::openat(&cur, c, dir_flags(), Mode::empty())
                }
                r => r,
            };
            cur = match next {
                Ok(fd) => fd,
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return Err(self.reject(
                        name,
                        format!(
                            "path component {:?} is a symlink or not a directory",
                            c.to_string_lossy()
                        ),
                    ))
                }
                Err(e) => return Err(self.io(name, "open parent directory", e)),
            };
        }
        Ok(cur)
    }

    fn open_dir(
        &self,
        parent: BorrowedFd<'_>,
        base: &[u8],
        name: &str,
    ) -> Result<OwnedFd, UnpackError> {
        rfs::openat(parent, OsStr::from_bytes(base), dir_flags(), Mode::empty()).map_err(
            |e| match e {
                Errno::LOOP | Errno::NOTDIR => self.reject(name, "directory is a symlink"),
                e => self.io(name, "open directory", e),
            },
        )
    }

    /// Removes whatever is at `parent/base` (without following symlinks). Returns true when
    /// `keep_dir` and an existing directory was kept (dir over dir merges, as tar does).
    fn remove_existing(
        &mut self,
        parent: BorrowedFd<'_>,
        base: &[u8],
        name: &str,
        keep_dir: bool,
    ) -> Result<bool, UnpackError> {
        let st = match rfs::statat(parent, OsStr::from_bytes(base), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.io(name, "stat existing", e)),
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && keep_dir {
            return Ok(true);
        }
        // Removing a directory can invalidate the cached parent (if it was under it).
        self.parent_cache = None;
        remove_all_at(parent, base).map_err(|e| self.io(name, "remove existing", e))?;
        Ok(false)
    }

    fn whiteout(
        &mut self,
        parent: BorrowedFd<'_>,
        base: &[u8],
        name: &str,
    ) -> Result<(), UnpackError> {
        if base == OPAQUE_MARKER {
            rfs::fsetxattr(parent, OVERLAY_OPAQUE_XATTR, b"y", rfs::XattrFlags::empty())
                .map_err(|e| self.io(name, "set opaque xattr", e))?;
            debug!(layer = self.layer, entry = %name, "opaque directory");
            return Ok(());
        }
        if base.starts_with(AUFS_META_PREFIX) {
            debug!(layer = self.layer, entry = %name, "aufs metadata entry skipped");
            return Ok(());
        }
        let hidden = &base[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
            return Err(self.reject(name, "whiteout of an invalid name"));
        }
        self.remove_existing(parent, hidden, name, false)?;
        // overlayfs whiteout: a character device with device number 0/0 (overlayfs.rst).
        rfs::mknodat(
            parent,
            OsStr::from_bytes(hidden),
            FileType::CharacterDevice,
            Mode::empty(),
            rfs::makedev(0, 0),
        )
        .map_err(|e| self.io(name, "create whiteout", e))?;
        Ok(())
    }

    /// Owner, then mode (chown clears setuid, chown(2)), xattrs, times on an open fd.
    fn set_meta_fd(
        &self,
        name: &str,
        fd: &OwnedFd,
        m: &Meta,
        times: bool,
    ) -> Result<(), UnpackError> {
        rfs::fchown(fd, Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)))
            .map_err(|e| self.io(name, "chown", e))?;
        rfs::fchmod(fd, Mode::from_raw_mode(m.mode)).map_err(|e| self.io(name, "chmod", e))?;
        for (k, v) in &m.xattrs {
            match rfs::fsetxattr(fd, k.as_str(), v, rfs::XattrFlags::empty()) {
                Ok(()) => {}
                // A filesystem without user xattrs: keep going, like GNU tar.
                Err(Errno::NOTSUP) => {
                    debug!(layer = self.layer, entry = name, xattr = %k, "xattr not supported")
                }
                Err(e) => return Err(self.io(name, "set xattr", e)),
            }
        }
        if times {
            rfs::futimens(fd, &timestamps(m.mtime)).map_err(|e| self.io(name, "set times", e))?;
        }
        Ok(())
    }

    /// Metadata for things that cannot be opened (symlinks, devices, fifos).
    fn set_meta_at(
        &self,
        name: &str,
        parent: BorrowedFd<'_>,
        base: &[u8],
        m: &Meta,
    ) -> Result<(), UnpackError> {
        let b = OsStr::from_bytes(base);
        rfs::chownat(
            parent,
            b,
            Some(Uid::from_raw(m.uid)),
            Some(Gid::from_raw(m.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io(name, "chown", e))?;
        let st = rfs::statat(parent, b, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io(name, "stat", e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
            // fchmodat(2) follows symlinks, so only for non-symlinks (checked just above,
            // in a directory no one else writes to).
            rfs::chmodat(parent, b, Mode::from_raw_mode(m.mode), AtFlags::empty())
                .map_err(|e| self.io(name, "chmod", e))?;
        }
        rfs::utimensat(parent, b, &timestamps(m.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io(name, "set times", e))?;
        Ok(())
    }

    fn finish_dir_times(&mut self) -> Result<(), UnpackError> {
        self.parent_cache = None;
        let dirs = std::mem::take(&mut self.dir_times);
        for (path, mtime) in dirs.iter().rev() {
            let name = String::from_utf8_lossy(&path.join(&b'/')).into_owned();
            // A later entry may have replaced the directory; then there is nothing to do.
            let Ok(fd) = self.walk(path, &name, false) else {
                continue;
            };
            rfs::futimens(&fd, &timestamps(*mtime))
                .map_err(|e| self.io(&name, "set directory times", e))?;
        }
        Ok(())
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// `rm -rf parent/name` without ever following a symlink.
pub fn remove_all_at(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let n = OsStr::from_bytes(name);
    match rfs::unlinkat(parent, n, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = match rfs::openat(parent, n, dir_flags(), Mode::empty()) {
        Ok(d) => d,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let children: Vec<Vec<u8>> = rfs::Dir::read_from(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    for c in children {
        remove_all_at(dir.as_fd(), &c)?;
    }
    rfs::unlinkat(parent, n, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// `rm -rf path` (the path's last component is not followed if it is a symlink).
pub fn remove_all(path: &Path) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot remove a root path",
        ));
    };
    let pfd = match rfs::open(parent, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_all_at(pfd.as_fd(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_components_rules() {
        assert_eq!(
            clean_components(b"./a//b/./c/").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(clean_components(b"/etc/passwd").is_err());
        assert!(clean_components(b"a/../../b").is_err());
        assert!(clean_components(b"..").is_err());
        assert!(clean_components(b"a\0b").is_err());
        assert!(clean_components(b"./").unwrap().is_empty());
        assert_eq!(
            clean_components(b"..a/b..").unwrap(),
            vec![&b"..a"[..], b"b.."]
        );
    }

    #[test]
    fn compression_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"bin/\0"), Compression::None);
    }
}
