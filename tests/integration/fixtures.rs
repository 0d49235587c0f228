//! The harness itself: fixture images, the local registry, and the leak checker.

use std::process::Command;
use std::time::Duration;

use berth_fixtures::{EntryKind, ViewKind};

use crate::require_root;
use crate::support::{self, images, leak, registry::Registry};

/// The fixture images are byte-for-byte reproducible.
#[test]
fn fixture_digests_are_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let da = berth_fixtures::layered_oci_layout(a.path()).unwrap();
    let db = berth_fixtures::layered_oci_layout(b.path()).unwrap();
    assert_eq!(da, db);
    assert_eq!(da.layers.len(), 3);
    assert_eq!(images::layered_digests(), da);
    // The layered image shares its base layer with busybox.
    assert_eq!(images::busybox_digests().layers[0], da.layers[0]);
}

/// Flattening the layered image gives exactly the expected view: whiteout applied, opaque
/// dir hides the lower content, hardlink shares the inode, symlink and owners kept.
#[test]
fn layered_fixture_final_view() {
    let view = berth_fixtures::flatten_layout(&images::layered_layout()).unwrap();
    for e in berth_fixtures::layered_expected_view() {
        let node = view
            .get(&e.path)
            .unwrap_or_else(|| panic!("{} missing from the view", e.path));
        assert_eq!((node.uid, node.gid), (e.uid, e.gid), "owner of {}", e.path);
        assert_eq!(node.mode & 0o7777, e.mode, "mode of {}", e.path);
        match (&e.kind, &node.kind) {
            (EntryKind::Dir, ViewKind::Dir) => {}
            (EntryKind::File(want), ViewKind::File { data, .. }) => {
                assert_eq!(data, want, "content of {}", e.path)
            }
            (EntryKind::Symlink(want), ViewKind::Symlink(got)) => {
                assert_eq!(got, want, "target of {}", e.path)
            }
            (EntryKind::Hardlink(other), ViewKind::File { inode, .. }) => {
                let ViewKind::File {
                    inode: other_inode, ..
                } = &view[other].kind
                else {
                    panic!("{other} is not a file");
                };
                assert_eq!(inode, other_inode, "{} must share {other}'s inode", e.path);
            }
            (want, got) => panic!("{}: expected {want:?}, got {got:?}", e.path),
        }
    }
    for p in berth_fixtures::layered_absent_paths() {
        assert!(!view.contains_key(p), "{p} must be gone");
    }
    // The busybox base is there too.
    assert!(matches!(view["bin/sh"].kind, ViewKind::Symlink(_)));
    assert!(matches!(view["bin/busybox"].kind, ViewKind::File { .. }));
    assert_eq!(view["tmp"].mode & 0o7777, 0o1777);
}

/// The real registry starts on loopback and serves a pushed manifest over HTTP with the
/// digest we computed.
#[test]
fn registry_serves_pushed_manifest() {
    let reg = Registry::start();
    assert!(reg.addr.starts_with("127.0.0.1:"));
    reg.push_layout(&images::busybox_layout(), "fixture/busybox", "latest");
    let r = reg.get(
        "/v2/fixture/busybox/manifests/latest",
        "application/vnd.oci.image.manifest.v1+json",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/vnd.oci.image.manifest.v1+json");
    let want = images::busybox_digests().manifest;
    assert_eq!(r.digest.as_deref(), Some(want.as_str()));
    assert_eq!(berth_fixtures::sha256_digest(&r.body), want);
    let missing = reg.get("/v2/fixture/busybox/manifests/nope", "*/*");
    assert_eq!(missing.status, 404);
}

/// A deliberately leaky test: the checker must name every object it leaves (a mount, a
/// cgroup, a bridge, an nft table, a process), and report nothing once they are cleaned.
#[test]
fn leak_checker_detects_leaks() {
    require_root!();
    let _lock = support::kernel_lock();
    let before = leak::Snapshot::take();
    let _ns = support::enter_fresh_netns();
    let tmp = tempfile::Builder::new()
        .prefix("berth-leaktest-")
        .tempdir()
        .unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    // Leak one of each kind.
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("mount")
        .args(["-t", "tmpfs", "berth-leaktest"])
        .arg(&mnt));
    let cg = std::path::Path::new("/sys/fs/cgroup/pids/berth-leaktest");
    let cg = if cg.parent().unwrap().is_dir() {
        cg.to_path_buf()
    } else {
        std::path::PathBuf::from("/sys/fs/cgroup/berth-leaktest")
    };
    std::fs::create_dir(&cg).unwrap();
    ok(Command::new("ip").args(["link", "add", "berth-leak0", "type", "bridge"]));
    ok(Command::new("nft").args(["add", "table", "inet", "berth-leaktest"]));
    let mut child = Command::new("/bin/sh")
        .args(["-c", "exec sleep 60"])
        .spawn()
        .unwrap();
    std::fs::write(cg.join("cgroup.procs"), child.id().to_string()).unwrap();

    let leaks = before.leaks_since();
    let text = leaks.join("\n");
    let cleanup = || {
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = Command::new("umount").arg(&mnt).status();
        let _ = Command::new("ip")
            .args(["link", "del", "berth-leak0"])
            .status();
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", "berth-leaktest"])
            .status();
    };
    cleanup();
    let _ = child.wait();
    let _ = std::fs::remove_dir(&cg);
    for want in [
        "mount: ".to_string() + &mnt.display().to_string(),
        format!("cgroup: {}", cg.display()),
        "link: berth-leak0".to_string(),
        "nft table: table inet berth-leaktest".to_string(),
        format!("process: pid {}", child.id()),
    ] {
        assert!(
            text.contains(&want),
            "leak checker missed {want:?}; it said:\n{text}"
        );
    }
    support::eventually(Duration::from_secs(5), || {
        let l = before.leaks_since();
        if l.is_empty() {
            Ok(())
        } else {
            Err(l.join(", "))
        }
    });
}
