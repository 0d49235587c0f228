//! Fixture images, built once per test run under cargo's target temp dir (they are deterministic,
//! so every test sees the same digests). See the `berth-fixtures` crate for their content.

use std::path::PathBuf;
use std::sync::OnceLock;

use berth_fixtures::ImageDigests;

struct Built {
    busybox_layout: PathBuf,
    busybox_digests: ImageDigests,
    busybox_rootfs_tar: PathBuf,
    layered_layout: PathBuf,
    layered_digests: ImageDigests,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Under cargo's per-target temp dir, not /tmp: a static is never dropped, so a temp
        // dir would outlive the run. The images are deterministic, so rewriting them in
        // place each run is safe.
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
        std::fs::create_dir_all(&dir).expect("creating the fixture dir");
        let busybox_layout = dir.join("busybox-oci");
        let busybox_digests =
            berth_fixtures::busybox_oci_layout(&busybox_layout).expect("building busybox layout");
        let busybox_rootfs_tar = dir.join("busybox-rootfs.tar");
        berth_fixtures::busybox_rootfs_tar(&busybox_rootfs_tar).expect("building busybox tar");
        let layered_layout = dir.join("layered-oci");
        let layered_digests =
            berth_fixtures::layered_oci_layout(&layered_layout).expect("building layered layout");
        Built {
            busybox_layout,
            busybox_digests,
            busybox_rootfs_tar,
            layered_layout,
            layered_digests,
        }
    })
}

/// OCI image layout of the one-layer busybox image (tag `latest`).
pub fn busybox_layout() -> PathBuf {
    built().busybox_layout.clone()
}

/// Digests of [`busybox_layout`].
pub fn busybox_digests() -> ImageDigests {
    built().busybox_digests.clone()
}

/// The busybox rootfs as a plain tar, for `berth image import`.
pub fn busybox_rootfs_tar() -> PathBuf {
    built().busybox_rootfs_tar.clone()
}

/// OCI image layout of the three-layer edge-case image (tag `latest`).
pub fn layered_layout() -> PathBuf {
    built().layered_layout.clone()
}

/// Digests of [`layered_layout`].
pub fn layered_digests() -> ImageDigests {
    built().layered_digests.clone()
}

/// A busybox rootfs unpacked into a fresh plain directory (for runtime tests that take a
/// rootfs dir), owned by the returned TempDir.
pub fn busybox_rootfs_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("bt-rootfs-")
        .tempdir()
        .expect("creating rootfs dir");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("mkdir rootfs");
    let f = std::fs::File::open(busybox_rootfs_tar()).expect("opening busybox tar");
    let mut ar = tar::Archive::new(f);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.unpack(&rootfs).expect("unpacking trusted fixture tar");
    (dir, rootfs)
}
