//! Named volumes: directories under berth's state root that outlive containers.
//!
//! Takes volume names (`<project>_<key>` or an explicit `name:`) and labels; gives a data
//! directory to bind into containers, created on first use and populated once from the
//! image's content at the mount path (Docker's copy-up, owners and modes kept). `down`
//! keeps volumes, `down -v` removes them. Neighbours: `state` (the volumes dir), `engine`
//! (turns compose volume mounts into runtime bind mounts).
//!
//! Layout: `<root>/volumes/<name>/_data` (the data, as Docker lays it out) and
//! `<root>/volumes/<name>/volume.json` (labels, creation time, whether copy-up happened).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::state;

/// Volume errors.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume name {name:?}: use letters, digits, `_`, `.` and `-`, starting with a letter or digit")]
    InvalidName { name: String },
    #[error("volume {name} does not exist")]
    NotFound { name: String },
    #[error("cannot {action} volume {name} at {path}")]
    Io {
        action: &'static str,
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
}

/// What is recorded about a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// True once the data dir was populated from an image (or found non-empty).
    #[serde(default)]
    pub populated: bool,
}

/// A volume ready to be mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    /// The directory to bind into containers.
    pub data: PathBuf,
    /// True when this call created it.
    pub created: bool,
}

/// The named volumes under one state root.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    dir: PathBuf,
}

/// Docker's volume name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

impl VolumeStore {
    /// The store in `dir` (usually `state::Root::volumes_dir`).
    pub fn new(dir: impl Into<PathBuf>) -> VolumeStore {
        VolumeStore { dir: dir.into() }
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("volume.json")
    }

    /// Metadata of volume `name`, if it exists.
    pub fn get(&self, name: &str) -> Result<Option<VolumeMeta>, VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::InvalidName { name: name.into() });
        }
        Ok(state::read_json(&self.meta_path(name))?)
    }

    /// Create volume `name` unless it exists; either way return where its data lives.
    pub fn ensure(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Volume, VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::InvalidName { name: name.into() });
        }
        let data = self.dir.join(name).join("_data");
        if self.get(name)?.is_some() {
            return Ok(Volume {
                name: name.into(),
                data,
                created: false,
            });
        }
        std::fs::create_dir_all(&data).map_err(|source| VolumeError::Io {
            action: "create",
            name: name.into(),
            path: data.clone(),
            source,
        })?;
        let meta = VolumeMeta {
            name: name.into(),
            labels: labels.clone(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            populated: false,
        };
        // The metadata file is written last: a volume without it does not exist yet.
        state::write_json(&self.meta_path(name), &meta)?;
        debug!(volume = name, "created volume");
        Ok(Volume {
            name: name.into(),
            data,
            created: true,
        })
    }

    /// Populate an empty, never-populated volume from the image's content at `path`: the
    /// merged view of `layers` (bottom first, overlay format: whiteouts and opaque dirs
    /// applied), once. Returns whether it copied anything.
    pub fn populate_from_layers(
        &self,
        name: &str,
        layers: &[PathBuf],
        path: &str,
    ) -> Result<bool, VolumeError> {
        let rel = path.trim_start_matches('/');
        let Some(mut meta) = self.get(name)? else {
            return Err(VolumeError::NotFound { name: name.into() });
        };
        if meta.populated || rel.is_empty() {
            return Ok(false);
        }
        let data = self.dir.join(name).join("_data");
        let empty = std::fs::read_dir(&data)
            .map(|mut rd| rd.next().is_none())
            .unwrap_or(false);
        let mut copied = false;
        if empty {
            for layer in layers {
                let src = layer.join(rel);
                let Ok(m) = std::fs::symlink_metadata(&src) else {
                    continue;
                };
                if !m.is_dir() {
                    continue;
                }
                merge_layer_dir(&src, &data).map_err(|source| VolumeError::Io {
                    action: "populate",
                    name: name.into(),
                    path: data.clone(),
                    source,
                })?;
                copied = true;
            }
            if copied {
                debug!(volume = name, path, "populated volume from image");
            }
        }
        meta.populated = true;
        state::write_json(&self.meta_path(name), &meta)?;
        Ok(copied)
    }

    /// Remove volume `name` and its data. Missing volumes are not an error.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::InvalidName { name: name.into() });
        }
        let dir = self.dir.join(name);
        // Drop the metadata first so a half-removed volume no longer counts as existing.
        let _ = std::fs::remove_file(self.meta_path(name));
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(VolumeError::Io {
                action: "remove",
                name: name.into(),
                path: dir,
                source,
            }),
        }
    }

    /// All volumes, by name.
    pub fn list(&self) -> Result<Vec<VolumeMeta>, VolumeError> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(Some(m)) = self.get(&name) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Is `p` an overlay whiteout (a 0/0 character device)?
fn is_whiteout(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Does directory `p` carry overlay's opaque marker?
fn is_opaque(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    let mut v = [0u8; 4];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    n == 1 && v[0] == b'y'
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Apply one overlay-format layer directory onto `dst`: whiteouts delete, opaque dirs
/// replace, everything else is copied over (modes, owners, symlinks kept).
fn merge_layer_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    if is_opaque(src) {
        for e in std::fs::read_dir(dst)? {
            remove_any(&e?.path())?;
        }
    }
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from)?;
        if is_whiteout(&meta) {
            remove_any(&to)?;
            continue;
        }
        if meta.is_dir() {
            if std::fs::symlink_metadata(&to)
                .map(|m| !m.is_dir())
                .unwrap_or(false)
            {
                remove_any(&to)?;
            }
            if !to.exists() {
                std::fs::create_dir(&to)?;
            }
            merge_layer_dir(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode()))?;
            std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()))?;
            continue;
        }
        remove_any(&to)?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if meta.is_file() {
            std::fs::copy(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode()))?;
        } else {
            continue; // devices, fifos, sockets are not copied into volumes
        }
        std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("proj_db_data"));
        assert!(!valid_name("_x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }

    #[test]
    fn ensure_populate_once_remove() {
        let t = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(t.path().join("volumes"));
        let v = store.ensure("p_data", &BTreeMap::new()).unwrap();
        assert!(v.created);
        assert!(!store.ensure("p_data", &BTreeMap::new()).unwrap().created);

        let src = t.path().join("img");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink("sub/f", src.join("l")).unwrap();
        let layers = [t.path().to_path_buf()];
        assert!(store
            .populate_from_layers("p_data", &layers, "/img")
            .unwrap());
        assert_eq!(std::fs::read(v.data.join("sub/f")).unwrap(), b"x");
        assert_eq!(
            std::fs::read_link(v.data.join("l")).unwrap(),
            PathBuf::from("sub/f")
        );
        // Once only: a second call copies nothing even after the data changed.
        std::fs::remove_file(v.data.join("sub/f")).unwrap();
        assert!(!store
            .populate_from_layers("p_data", &layers, "/img")
            .unwrap());
        assert!(!v.data.join("sub/f").exists());

        assert_eq!(store.list().unwrap().len(), 1);
        store.remove("p_data").unwrap();
        store.remove("p_data").unwrap();
        assert!(store.list().unwrap().is_empty());
    }
}
