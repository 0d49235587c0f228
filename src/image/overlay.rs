//! Overlay lowerdirs for an image and the mount option-length limit.
//!
//! Takes an image's unpacked layer dirs (bottom → top, from `store::Image::layers`); gives
//! the `lowerdir=` option string overlayfs wants (top first). The runtime does the mount;
//! this module only knows the ordering and the limit. Legacy `mount(2)` passes options in
//! one page (4096 bytes): past it the string is cut mid-path and the kernel answers a
//! misleading ENOENT/ELOOP (image-eval.md §3, ~100 layers with absolute store paths). For
//! long chains, [`relative_lowerdirs`] gives paths relative to the store's `layers/` dir
//! (about 72 bytes each); a caller that `chdir`s there (or uses `fsconfig(…, "lowerdir+",
//! …)` of the new mount API, one layer per call, which has no such limit) can mount up to
//! overlayfs's own maximum of 500 layers.

use std::path::{Path, PathBuf};

/// Bytes available for mount data with `mount(2)`: one page, minus some room for the
/// other options (upperdir, workdir), as containerd reserves 512 bytes.
pub const MOUNT_DATA_MAX: usize = 4096 - 512;
/// overlayfs's hard limit on lower layers (fs/overlayfs/params.c OVL_MAX_STACK).
pub const MAX_LAYERS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("image has {count} layers; overlayfs stacks at most {MAX_LAYERS}")]
    TooManyLayers { count: usize },
    #[error("image has no layers")]
    NoLayers,
    #[error("layer dir {path} is not under {base}")]
    NotUnder { path: PathBuf, base: PathBuf },
}

/// `lowerdir=` value for layers given bottom → top (overlayfs lists the top layer first).
/// Colons and commas in paths would need escaping; store paths never contain them.
pub fn lowerdir_option(layers: &[PathBuf]) -> Result<String, OverlayError> {
    check_count(layers.len())?;
    Ok(layers
        .iter()
        .rev()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":"))
}

/// Whether `lowerdir=<option>` plus the given extra options fits legacy mount data.
pub fn fits_mount_data(lowerdir: &str, other_options_len: usize) -> bool {
    "lowerdir=".len() + lowerdir.len() + other_options_len < MOUNT_DATA_MAX
}

/// The same layers relative to `base` (the store's `layers/` dir), top first, for a mount
/// done with `base` as the working directory.
pub fn relative_lowerdirs(layers: &[PathBuf], base: &Path) -> Result<String, OverlayError> {
    check_count(layers.len())?;
    let mut out = Vec::with_capacity(layers.len());
    for p in layers.iter().rev() {
        let rel = p.strip_prefix(base).map_err(|_| OverlayError::NotUnder {
            path: p.clone(),
            base: base.to_path_buf(),
        })?;
        out.push(rel.to_string_lossy().into_owned());
    }
    Ok(out.join(":"))
}

fn check_count(n: usize) -> Result<(), OverlayError> {
    match n {
        0 => Err(OverlayError::NoLayers),
        n if n > MAX_LAYERS => Err(OverlayError::TooManyLayers { count: n }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_limits() {
        let l: Vec<PathBuf> = ["/s/layers/a/diff", "/s/layers/b/diff"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(
            lowerdir_option(&l).unwrap(),
            "/s/layers/b/diff:/s/layers/a/diff"
        );
        assert_eq!(
            relative_lowerdirs(&l, Path::new("/s/layers")).unwrap(),
            "b/diff:a/diff"
        );
        assert!(lowerdir_option(&[]).is_err());
        let many: Vec<PathBuf> = (0..501).map(|i| PathBuf::from(format!("/x/{i}"))).collect();
        assert!(matches!(
            lowerdir_option(&many),
            Err(OverlayError::TooManyLayers { count: 501 })
        ));
        // 120 store paths (~90 bytes each) do not fit a page; relative ones do.
        let base = Path::new("/var/lib/berth/image/layers");
        let long: Vec<PathBuf> = (0..120)
            .map(|i| base.join(format!("{i:064x}/diff")))
            .collect();
        assert!(!fits_mount_data(&lowerdir_option(&long).unwrap(), 100));
        let rel = relative_lowerdirs(&long, base).unwrap();
        assert!(rel.len() < lowerdir_option(&long).unwrap().len());
    }
}
