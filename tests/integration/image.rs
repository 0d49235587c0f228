//! Images: safe unpack against crafted malicious tars, the store's verification and
//! atomicity, load/import/save through the CLI, the layered fixture through a real overlay
//! mount, pulls and pushes against the real `docker-registry` on 127.0.0.1, and the auth
//! flows (bearer token, basic) against a small mock registry in this file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth::image::digest::Digest;
use berth::image::store::Store;
use berth::image::unpack::{unpack_layer, DevicePolicy, UnpackError, UnpackOptions};
use berth_fixtures::EntryKind;
use serde_json::json;

use crate::require_root;
use crate::support::{self, images, registry::Registry, TestEnv};

// ------------------------------------------------------------------ crafted tars

/// A raw tar writer: names and link names are written byte for byte (the `tar` crate's
/// `append_data` refuses `..` and absolute paths, which is exactly what we need to forge).
struct Forge {
    b: tar::Builder<Vec<u8>>,
}

impl Forge {
    fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(
        kind: tar::EntryType,
        path: &str,
        link: Option<&str>,
        size: u64,
        mode: u32,
    ) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                old.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_704_067_200);
        h.set_cksum();
        h
    }

    fn file(mut self, path: &str, data: &[u8]) -> Self {
        let h = Self::header(
            tar::EntryType::Regular,
            path,
            None,
            data.len() as u64,
            0o644,
        );
        self.b.append(&h, data).unwrap();
        self
    }

    fn dir(mut self, path: &str) -> Self {
        let h = Self::header(tar::EntryType::Directory, path, None, 0, 0o755);
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }

    fn symlink(mut self, path: &str, target: &str) -> Self {
        let h = Self::header(tar::EntryType::Symlink, path, Some(target), 0, 0o777);
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }

    fn hardlink(mut self, path: &str, target: &str) -> Self {
        let h = Self::header(tar::EntryType::Link, path, Some(target), 0, 0o644);
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }

    fn chardev(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Char, path, None, 0, 0o666);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }

    fn xattr_file(mut self, path: &str, key: &str, value: &[u8]) -> Self {
        let k = format!("SCHILY.xattr.{key}");
        self.b.append_pax_extensions([(k.as_str(), value)]).unwrap();
        self.file(path, b"x")
    }

    fn xattr_dir(mut self, path: &str, key: &str, value: &[u8]) -> Self {
        let k = format!("SCHILY.xattr.{key}");
        self.b.append_pax_extensions([(k.as_str(), value)]).unwrap();
        self.dir(path)
    }

    fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// Everything under `dir`: relative path → (kind, content or link target).
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let v = if m.file_type().is_symlink() {
                format!("link:{}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                walk(base, &p, out);
                "dir".into()
            } else {
                format!(
                    "file:{}:{:o}",
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()),
                    m.mode()
                )
            };
            out.insert(rel, v);
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// At least 12 malicious layers: each is rejected with an error naming the layer and the
/// entry, or made harmless; nothing outside the target changes in any case.
#[test]
fn malicious_tars_are_rejected_or_harmless() {
    require_root!();
    let t = tempfile::Builder::new()
        .prefix("bt-unpack-")
        .tempdir()
        .unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"original").unwrap();
    let out_abs = outside.display().to_string();
    let before = tree(t.path());

    struct Case {
        name: &'static str,
        tar: Vec<u8>,
        /// Substring of the rejected entry's name; None = must be accepted harmlessly.
        rejects: Option<&'static str>,
        devices: DevicePolicy,
    }
    let rej = |name, tar, entry| Case {
        name,
        tar,
        rejects: Some(entry),
        devices: DevicePolicy::Create,
    };
    let ok = |name, tar| Case {
        name,
        tar,
        rejects: None,
        devices: DevicePolicy::Create,
    };
    let cases = vec![
        rej(
            "dotdot traversal",
            Forge::new().file("../outside/pwned", b"x").bytes(),
            "../outside/pwned",
        ),
        rej(
            "nested dotdot",
            Forge::new()
                .dir("a/")
                .file("a/../../outside/pwned", b"x")
                .bytes(),
            "a/../../outside/pwned",
        ),
        rej(
            "absolute path",
            Forge::new().file(&format!("{out_abs}/pwned"), b"x").bytes(),
            "/pwned",
        ),
        rej(
            "write through absolute symlink",
            Forge::new()
                .symlink("link", &out_abs)
                .file("link/pwned", b"x")
                .bytes(),
            "link/pwned",
        ),
        rej(
            "write through relative symlink",
            Forge::new()
                .symlink("link", "../outside")
                .file("link/victim", b"x")
                .bytes(),
            "link/victim",
        ),
        rej(
            "symlink chain",
            Forge::new()
                .symlink("b", "../outside")
                .symlink("a", "b")
                .file("a/pwned", b"x")
                .bytes(),
            "a/pwned",
        ),
        rej(
            "hardlink dotdot",
            Forge::new().hardlink("hl", "../outside/victim").bytes(),
            "hl",
        ),
        rej(
            "hardlink absolute",
            Forge::new()
                .hardlink("hl", &format!("{out_abs}/victim"))
                .bytes(),
            "hl",
        ),
        rej(
            "hardlink via symlinked dir",
            Forge::new()
                .symlink("link", "../outside")
                .hardlink("hl", "link/victim")
                .bytes(),
            "hl",
        ),
        rej(
            "whiteout of dot",
            Forge::new().file(".wh..", b"").bytes(),
            ".wh..",
        ),
        rej(
            "whiteout of dotdot",
            Forge::new().file(".wh...", b"").bytes(),
            ".wh...",
        ),
        rej(
            "whiteout through symlink",
            Forge::new()
                .symlink("link", "../outside")
                .file("link/.wh.victim", b"")
                .bytes(),
            "link/.wh.victim",
        ),
        rej(
            "opaque through symlink",
            Forge::new()
                .symlink("link", "../outside")
                .file("link/.wh..wh..opq", b"")
                .bytes(),
            "link/.wh..wh..opq",
        ),
        rej(
            "forged overlay opaque xattr",
            Forge::new()
                .xattr_dir("d/", "trusted.overlay.opaque", b"y")
                .bytes(),
            "d",
        ),
        rej(
            "forged overlay redirect xattr",
            Forge::new()
                .xattr_file("f", "trusted.overlay.redirect", b"/etc")
                .bytes(),
            "f",
        ),
        rej(
            "forged userxattr overlay",
            Forge::new()
                .xattr_file("f", "user.overlay.opaque", b"y")
                .bytes(),
            "f",
        ),
        Case {
            name: "device node where forbidden",
            tar: Forge::new().chardev("dev/mem", 1, 1).bytes(),
            rejects: Some("dev/mem"),
            devices: DevicePolicy::Reject,
        },
        ok(
            "symlink replaced by a file",
            Forge::new()
                .symlink("victim", &format!("{out_abs}/victim"))
                .file("victim", b"mine")
                .bytes(),
        ),
        ok(
            "symlink replaced by a dir with children",
            Forge::new()
                .symlink("d", "../outside")
                .dir("d/")
                .file("d/victim", b"mine")
                .bytes(),
        ),
        ok(
            "hardlink to an outside-pointing symlink, then rewritten",
            Forge::new()
                .symlink("s", "../outside/victim")
                .hardlink("h", "s")
                .file("h", b"mine")
                .bytes(),
        ),
    ];
    assert!(cases.iter().filter(|c| c.rejects.is_some()).count() >= 12);
    for (i, c) in cases.into_iter().enumerate() {
        let target = t.path().join(format!("target{i}"));
        std::fs::create_dir_all(&target).unwrap();
        let layer = format!("sha256:{:064x}", i);
        let opts = UnpackOptions {
            devices: c.devices,
            expected_diff_id: None,
        };
        let res = unpack_layer(c.tar.as_slice(), &target, &layer, &opts);
        match (c.rejects, res) {
            (Some(entry), Err(e @ UnpackError::Rejected { .. })) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&layer),
                    "{}: error does not name the layer: {msg}",
                    c.name
                );
                assert!(
                    msg.contains(entry),
                    "{}: error does not name the entry {entry:?}: {msg}",
                    c.name
                );
            }
            (Some(_), other) => panic!("{}: expected a rejection, got {other:?}", c.name),
            (None, Ok(_)) => {}
            (None, Err(e)) => panic!("{}: expected harmless acceptance, got {e}", c.name),
        }
        // Nothing outside the target changed.
        let mut now = tree(t.path());
        now.retain(|k, _| !k.starts_with("target"));
        assert_eq!(
            now, before,
            "{}: something outside the target changed",
            c.name
        );
        assert_eq!(
            std::fs::read(outside.join("victim")).unwrap(),
            b"original",
            "{}",
            c.name
        );
    }
}

/// Whiteouts and opaque markers become overlay's own format; owners, modes (setuid),
/// hardlinks, symlinks, fifos, long names and user xattrs survive; zstd and plain tars work.
#[test]
fn unpack_formats_and_metadata() {
    require_root!();
    let t = tempfile::Builder::new()
        .prefix("bt-unpack-")
        .tempdir()
        .unwrap();
    let long = "n".repeat(150);
    let mut b = tar::Builder::new(Vec::new());
    fn add(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        path: &str,
        link: Option<&str>,
        data: &[u8],
        mode: u32,
        uid: u64,
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_704_067_200);
        h.set_size(data.len() as u64);
        match link {
            Some(l) => b.append_link(&mut h, path, l).unwrap(),
            None => b.append_data(&mut h, path, data).unwrap(),
        }
    }
    add(
        &mut b,
        tar::EntryType::Directory,
        "d/",
        None,
        b"",
        0o700,
        1000,
    );
    add(
        &mut b,
        tar::EntryType::Regular,
        "d/suid",
        None,
        b"#!",
        0o4755,
        0,
    );
    add(
        &mut b,
        tar::EntryType::Link,
        "d/hard",
        Some("d/suid"),
        b"",
        0o4755,
        0,
    );
    add(
        &mut b,
        tar::EntryType::Symlink,
        "d/sym",
        Some("/etc/passwd"),
        b"",
        0o777,
        0,
    );
    add(&mut b, tar::EntryType::Fifo, "d/fifo", None, b"", 0o600, 0);
    add(
        &mut b,
        tar::EntryType::Regular,
        &format!("d/{long}"),
        None,
        b"long",
        0o644,
        0,
    );
    add(
        &mut b,
        tar::EntryType::Regular,
        "d/.wh.gone",
        None,
        b"",
        0o644,
        0,
    );
    add(&mut b, tar::EntryType::Directory, "o/", None, b"", 0o755, 0);
    add(
        &mut b,
        tar::EntryType::Regular,
        "o/.wh..wh..opq",
        None,
        b"",
        0o644,
        0,
    );
    b.append_pax_extensions([("SCHILY.xattr.user.note", &b"hello"[..])])
        .unwrap();
    add(&mut b, tar::EntryType::Regular, "x", None, b"x", 0o644, 0);
    let plain = b.into_inner().unwrap();
    let diff_id = Digest::of(&plain);
    let zstd_blob = zstd::encode_all(plain.as_slice(), 3).unwrap();
    for (name, blob) in [("plain", plain.clone()), ("zstd", zstd_blob)] {
        let target = t.path().join(name);
        std::fs::create_dir_all(&target).unwrap();
        let opts = UnpackOptions {
            devices: DevicePolicy::Create,
            expected_diff_id: Some(diff_id.clone()),
        };
        let rep = unpack_layer(blob.as_slice(), &target, "sha256:test", &opts).unwrap();
        assert_eq!(rep.diff_id, diff_id, "{name}");
        let md = |p: &str| std::fs::symlink_metadata(target.join(p)).unwrap();
        assert_eq!((md("d").uid(), md("d").mode() & 0o7777), (1000, 0o700));
        assert_eq!(
            md("d/suid").mode() & 0o7777,
            0o4755,
            "setuid kept after chown"
        );
        assert_eq!(md("d/suid").ino(), md("d/hard").ino());
        assert_eq!(
            std::fs::read_link(target.join("d/sym")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(md("d/fifo").file_type().is_fifo());
        assert_eq!(
            std::fs::read(target.join(format!("d/{long}"))).unwrap(),
            b"long"
        );
        let wh = md("d/gone");
        assert!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "whiteout is a 0/0 char device"
        );
        assert!(!target.join("d/.wh.gone").exists());
        assert!(!target.join("o/.wh..wh..opq").exists());
        let opq = rustix::fs::getxattr(target.join("o"), "trusted.overlay.opaque", &mut [0u8; 8])
            .unwrap();
        assert_eq!(opq, 1);
        let mut buf = [0u8; 16];
        let n = rustix::fs::getxattr(target.join("x"), "user.note", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
    }
    // A wrong DiffID (layer swapped under a valid blob digest) is refused.
    let target = t.path().join("wrong");
    std::fs::create_dir_all(&target).unwrap();
    let opts = UnpackOptions {
        devices: DevicePolicy::Create,
        expected_diff_id: Some(Digest::of(b"other")),
    };
    let e = unpack_layer(plain.as_slice(), &target, "sha256:test", &opts).unwrap_err();
    assert!(matches!(e, UnpackError::DiffIdMismatch { .. }), "{e}");
}

// ------------------------------------------------------------------ store

/// A blob with the wrong digest is refused, nothing half-written stays, a retry works; a
/// layer whose content does not match its DiffID leaves no layer dir behind.
#[test]
fn corrupted_blob_is_rejected_and_retry_succeeds() {
    let t = tempfile::Builder::new()
        .prefix("bt-store-")
        .tempdir()
        .unwrap();
    let store = Store::open(t.path()).unwrap();
    let layer = berth_fixtures::gzip(
        &berth_fixtures::layer_tar(&berth_fixtures::layered_upper_layers()[0]).unwrap(),
    )
    .unwrap();
    let digest = Digest::of(&layer);
    let mut corrupt = layer.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    let err = store
        .put_blob_from(&mut corrupt.as_slice(), &digest, Some(layer.len() as u64))
        .unwrap_err();
    assert!(err.to_string().contains(digest.as_str()), "{err}");
    assert!(!store.has_blob(&digest));
    let leftovers = |sub: &str| std::fs::read_dir(store.dir().join(sub)).unwrap().count();
    assert_eq!(leftovers("ingest"), 0);
    assert_eq!(leftovers("blobs/sha256"), 0);
    assert_eq!(
        store
            .put_blob_from(&mut layer.as_slice(), &digest, Some(layer.len() as u64))
            .unwrap(),
        digest
    );
    assert!(store.has_blob(&digest));
    if support::is_root() {
        let wrong_diff = Digest::of(b"not the diff id");
        assert!(store
            .ensure_layer(&wrong_diff, &wrong_diff, &digest)
            .is_err());
        assert!(!store.has_layer(&wrong_diff));
        assert_eq!(leftovers("tmp"), 0, "temp unpack dir removed");
        assert_eq!(leftovers("layers"), 0);
    }
}

// ------------------------------------------------------------------ CLI: load, import, save

fn ok(out: (i32, String, String)) -> String {
    assert_eq!(
        out.0, 0,
        "berth failed:\nstdout: {}\nstderr: {}",
        out.1, out.2
    );
    out.1
}

fn inspect(env: &TestEnv, name: &str) -> serde_json::Value {
    inspect_at(&env.root, name)
}

/// berth with another state root (a second store in the same test: a second `TestEnv`
/// would wait for the kernel lock the first one holds).
fn run_at(root: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(support::berth_bin())
        .env("BERTH_ROOT", root)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn inspect_at(root: &Path, name: &str) -> serde_json::Value {
    let s = ok(run_at(root, &["image", "inspect", name]));
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    v[0].clone()
}

/// `image load` of the busybox OCI layout, `images`, `tag`, `inspect`, `rm` (refused while
/// a container uses it), `prune`.
#[test]
fn load_list_tag_inspect_remove() {
    require_root!();
    let env = TestEnv::new("imgload");
    let d = images::busybox_digests();
    let out = ok(env.run(&[
        "image",
        "load",
        "-i",
        images::busybox_layout().to_str().unwrap(),
        "--name",
        "busybox",
    ]));
    assert!(out.contains("Loaded image: busybox:latest"), "{out}");
    let list = ok(env.run(&["images"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("busybox") && l.contains("latest")),
        "{list}"
    );
    assert!(
        list.contains(&d.config["sha256:".len()..][..12]),
        "short id shown: {list}"
    );
    ok(env.run(&["image", "tag", "busybox", "127.0.0.1:5999/mine:v1"]));
    let v = inspect(&env, "127.0.0.1:5999/mine:v1");
    assert_eq!(v["Id"], d.config);
    assert_eq!(v["Config"]["Cmd"], json!(["sh"]));
    assert_eq!(v["Manifest"]["Digest"], d.manifest);
    assert_eq!(v["RootFS"]["Layers"], json!(d.diff_ids));
    let lower = v["GraphDriver"]["Data"]["LowerDirs"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        Path::new(&lower).join("bin/busybox").is_file(),
        "layer unpacked at {lower}"
    );
    // Two tags: rm by id refuses without -f.
    let (code, _, err) = env.run(&["image", "rm", &d.config]);
    assert_ne!(code, 0);
    assert!(err.contains("references"), "{err}");
    // A container using the image blocks removal of its last tag unless forced.
    ok(env.run(&["image", "rm", "127.0.0.1:5999/mine:v1"]));
    let cdir = env.root.join("containers/c1");
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::write(
        cdir.join("state.json"),
        json!({"image": d.config}).to_string(),
    )
    .unwrap();
    let (code, _, err) = env.run(&["image", "rm", "busybox"]);
    assert_ne!(code, 0, "in-use image removed");
    assert!(err.contains("in use"), "{err}");
    std::fs::remove_dir_all(env.root.join("containers")).unwrap();
    ok(env.run(&["image", "rm", "busybox"]));
    assert!(
        !Path::new(&lower).exists(),
        "layer collected after the last tag went"
    );
    let store = Store::open(&env.root).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(store.dir().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    env.finish();
}

/// `image import` of the busybox rootfs tar with `--change`, then save → load round trip
/// into a fresh store keeps the manifest digest, id and layers.
#[test]
fn import_then_save_load_round_trip() {
    require_root!();
    let env = TestEnv::new("imgimport");
    let tar = images::busybox_rootfs_tar();
    let id = ok(env.run(&[
        "image",
        "import",
        tar.to_str().unwrap(),
        "bt-imported:1",
        "--change",
        r#"CMD ["/bin/sh", "-c", "echo hi"]"#,
        "--change",
        "ENV GREETING=hello",
        "--change",
        "WORKDIR /tmp",
    ]));
    let v = inspect(&env, "bt-imported:1");
    assert_eq!(v["Id"].as_str().unwrap(), id.trim());
    assert_eq!(v["Config"]["Cmd"], json!(["/bin/sh", "-c", "echo hi"]));
    assert_eq!(v["Config"]["WorkingDir"], "/tmp");
    assert_eq!(
        v["RootFS"]["Layers"][0].as_str().unwrap(),
        Digest::of(&std::fs::read(&tar).unwrap()).as_str()
    );
    let lower = PathBuf::from(v["GraphDriver"]["Data"]["LowerDirs"][0].as_str().unwrap());
    assert!(lower.join("bin/busybox").is_file());
    let out = env.root.join("saved.tar");
    ok(env.run(&[
        "image",
        "save",
        "-o",
        out.to_str().unwrap(),
        "bt-imported:1",
    ]));
    // The archive is an OCI layout and a docker-archive at once.
    let mut names = Vec::new();
    for e in tar::Archive::new(std::fs::File::open(&out).unwrap())
        .entries()
        .unwrap()
    {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    for n in ["oci-layout", "index.json", "manifest.json"] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    let root2 = env.root.join("second-root");
    let loaded = ok(run_at(
        &root2,
        &["image", "load", "-i", out.to_str().unwrap()],
    ));
    assert!(loaded.contains("bt-imported:1"), "{loaded}");
    let v2 = inspect_at(&root2, "bt-imported:1");
    assert_eq!(v2["Id"], v["Id"]);
    assert_eq!(v2["Manifest"]["Digest"], v["Manifest"]["Digest"]);
    assert_eq!(v2["RootFS"], v["RootFS"]);
    env.finish();
}

// ------------------------------------------------------------------ overlay view

fn mount_overlay(lower: &str, target: &Path, cwd: Option<&Path>) -> std::process::Output {
    let mut c = std::process::Command::new("mount");
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.args(["-t", "overlay", "bt-overlay", "-o"])
        .arg(format!("lowerdir={lower}"))
        .arg(target)
        .output()
        .unwrap()
}

fn umount(target: &Path) {
    let _ = std::process::Command::new("umount").arg(target).status();
}

/// The layered fixture's final view (whiteout, opaque dir, hardlink, symlink, owners),
/// checked through a real read-only overlay mount of the store's layer dirs.
#[test]
fn layered_image_overlay_view() {
    require_root!();
    let env = TestEnv::new("imglayered");
    let store = Store::open(&env.root).unwrap();
    let loaded = berth::image::archive::load(&store, &images::layered_layout()).unwrap();
    let img = &loaded[0].image;
    assert_eq!(img.layers.len(), 3);
    assert_eq!(
        img.manifest_digest.as_str(),
        images::layered_digests().manifest
    );
    let target = env.root.join("merged");
    std::fs::create_dir_all(&target).unwrap();
    let opt = berth::image::overlay::lowerdir_option(&img.layers).unwrap();
    let out = mount_overlay(&opt, &target, None);
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = std::panic::catch_unwind(|| {
        for e in berth_fixtures::layered_expected_view() {
            let p = target.join(&e.path);
            let m = std::fs::symlink_metadata(&p).unwrap_or_else(|_| panic!("{} missing", e.path));
            assert_eq!(
                (m.uid() as u64, m.gid() as u64),
                (e.uid, e.gid),
                "owner of {}",
                e.path
            );
            match &e.kind {
                EntryKind::Dir => assert!(m.is_dir(), "{}", e.path),
                EntryKind::File(want) => {
                    assert_eq!(&std::fs::read(&p).unwrap(), want, "{}", e.path);
                    assert_eq!(m.mode() & 0o7777, e.mode, "mode of {}", e.path);
                }
                EntryKind::Symlink(t) => assert_eq!(std::fs::read_link(&p).unwrap(), Path::new(t)),
                EntryKind::Hardlink(other) => {
                    let o = std::fs::metadata(target.join(other)).unwrap();
                    assert_eq!(m.ino(), o.ino(), "{} is a hardlink of {other}", e.path);
                }
            }
        }
        for p in berth_fixtures::layered_absent_paths() {
            assert!(
                std::fs::symlink_metadata(target.join(p)).is_err(),
                "{p} must be absent"
            );
        }
        assert!(target.join("bin/busybox").is_file());
    });
    umount(&target);
    if let Err(e) = check {
        std::panic::resume_unwind(e);
    }
    env.finish();
}

/// Past the legacy mount-data page (~100 layers with absolute store paths) the image still
/// mounts through the store's short relative layer links.
#[test]
fn many_layer_image_mounts() {
    require_root!();
    let env = TestEnv::new("imgmany");
    let store = Store::open(&env.root).unwrap();
    let layout = env.root.join("many-oci");
    let n = 140;
    let mut layers = Vec::new();
    for i in 0..n {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let data = format!("layer {i}\n");
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("f{i}"), data.as_bytes())
            .unwrap();
        // Every layer rewrites `top`: the highest one must win.
        h.set_size(data.len() as u64);
        b.append_data(&mut h, "top", data.as_bytes()).unwrap();
        layers.push(b.into_inner().unwrap());
    }
    write_layout(&layout, &layers, Some("many:latest"));
    let img = berth::image::archive::load(&store, &layout)
        .unwrap()
        .remove(0)
        .image;
    let abs = berth::image::overlay::lowerdir_option(&img.layers).unwrap();
    assert!(
        !berth::image::overlay::fits_mount_data(&abs, 0),
        "test needs a chain beyond the page"
    );
    let rel = berth::image::overlay::relative_lowerdirs(
        &img.layer_links
            .iter()
            .map(|l| img.store_dir.join(l))
            .collect::<Vec<_>>(),
        &img.store_dir,
    )
    .unwrap();
    assert!(
        berth::image::overlay::fits_mount_data(&rel, 0),
        "{} bytes",
        rel.len()
    );
    let target = env.root.join("merged");
    std::fs::create_dir_all(&target).unwrap();
    let out = mount_overlay(&rel, &target, Some(&img.store_dir));
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let res = std::panic::catch_unwind(|| {
        assert_eq!(
            std::fs::read_to_string(target.join("f0")).unwrap(),
            "layer 0\n"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("top")).unwrap(),
            format!("layer {}\n", n - 1)
        );
    });
    umount(&target);
    if let Err(e) = res {
        std::panic::resume_unwind(e);
    }
    env.finish();
}

/// Writes an OCI layout with one image of plain-tar layers, named `name` (or unnamed).
fn write_layout(dir: &Path, layers: &[Vec<u8>], name: Option<&str>) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let put = |b: &[u8]| {
        let d = Digest::of(b);
        std::fs::write(dir.join("blobs/sha256").join(d.hex()), b).unwrap();
        d
    };
    let descs: Vec<_> = layers
        .iter()
        .map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": put(l), "size": l.len()}))
        .collect();
    let diff_ids: Vec<_> = layers.iter().map(|l| Digest::of(l)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": berth_fixtures::oci_arch(), "os": "linux",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    let md = put(&manifest);
    let mut desc = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}
    });
    if let Some(n) = name {
        desc["annotations"]["io.containerd.image.name"] = json!(n);
    }
    let index = json!({"schemaVersion": 2, "manifests": [desc]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md.to_string()
}

// ------------------------------------------------------------------ real registry

fn upload_blob(reg: &Registry, repo: &str, data: &[u8]) -> Digest {
    Digest::parse(&reg.upload_blob(repo, data)).expect("a sha256 digest")
}

fn put_manifest(reg: &Registry, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    reg.put_manifest(repo, reference, media_type, body);
}

fn layout_blob(layout: &Path, d: &str) -> Vec<u8> {
    std::fs::read(
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:")),
    )
    .unwrap()
}

/// Pull of a single OCI manifest; the layers arrive verified, unpacked and tagged.
#[test]
fn pull_single_manifest_from_registry() {
    require_root!();
    let env = TestEnv::new("imgpull");
    let reg = Registry::start();
    reg.push_layout(&images::busybox_layout(), "fixture/busybox", "oci");
    let r = format!("{}/fixture/busybox:oci", reg.addr);
    let out = env.berth().args(["image", "pull", &r]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Pull complete"),
        "plain progress lines off a TTY: {stderr}"
    );
    let v = inspect(&env, &r);
    let d = images::busybox_digests();
    assert_eq!(v["Manifest"]["Digest"], d.manifest);
    assert_eq!(v["Id"], d.config);
    // Pulling again downloads nothing.
    let out = env.berth().args(["image", "pull", &r]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Already exists"));
    drop(reg);
    env.finish();
}

/// An OCI index listing a fake arm64 image first, then a buildx attestation manifest, then
/// this machine's image: the pull picks the right one; `--platform linux/arm64/v8` the
/// other. And a Docker schema2 manifest list with schema2 manifests.
#[test]
fn pull_index_and_docker_manifest_list() {
    require_root!();
    let env = TestEnv::new("imgindex");
    let reg = Registry::start();
    let layout = images::busybox_layout();
    let d = images::busybox_digests();
    let repo = "fixture/busybox";
    let layer = layout_blob(&layout, &d.layers[0]);
    let layer_d = upload_blob(&reg, repo, &layer);
    let config: serde_json::Value =
        serde_json::from_slice(&layout_blob(&layout, &d.config)).unwrap();
    let host_cfg = serde_json::to_vec(&config).unwrap();
    let mut arm = config.clone();
    arm["architecture"] = json!("arm64");
    arm["variant"] = json!("v8");
    let arm_cfg = serde_json::to_vec(&arm).unwrap();
    let host_cd = upload_blob(&reg, repo, &host_cfg);
    let arm_cd = upload_blob(&reg, repo, &arm_cfg);
    let intoto = br#"{"_type":"https://in-toto.io/Statement/v0.1"}"#;
    let intoto_d = upload_blob(&reg, repo, intoto);
    let empty_cfg = b"{}";
    let empty_d = upload_blob(&reg, repo, empty_cfg);
    let manifest =
        |mt: &str, cmt: &str, lmt: &str, cd: &Digest, csize: usize, ld: &Digest, lsize: usize| {
            serde_json::to_vec(&json!({
                "schemaVersion": 2, "mediaType": mt,
                "config": {"mediaType": cmt, "digest": cd, "size": csize},
                "layers": [{"mediaType": lmt, "digest": ld, "size": lsize}]
            }))
            .unwrap()
        };
    const OM: &str = "application/vnd.oci.image.manifest.v1+json";
    const OC: &str = "application/vnd.oci.image.config.v1+json";
    const OL: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    let host_m = manifest(OM, OC, OL, &host_cd, host_cfg.len(), &layer_d, layer.len());
    let arm_m = manifest(OM, OC, OL, &arm_cd, arm_cfg.len(), &layer_d, layer.len());
    let att_m = manifest(
        OM,
        OC,
        "application/vnd.in-toto+json",
        &empty_d,
        empty_cfg.len(),
        &intoto_d,
        intoto.len(),
    );
    for m in [&host_m, &arm_m, &att_m] {
        put_manifest(&reg, repo, Digest::of(m).as_str(), OM, m);
    }
    let arch = berth_fixtures::oci_arch();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OM, "digest": Digest::of(&arm_m), "size": arm_m.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": OM, "digest": Digest::of(&att_m), "size": att_m.len(),
             "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                             "vnd.docker.reference.digest": Digest::of(&host_m)}},
            {"mediaType": OM, "digest": Digest::of(&host_m), "size": host_m.len(),
             "platform": {"os": "linux", "architecture": arch}},
        ]
    }))
    .unwrap();
    put_manifest(
        &reg,
        repo,
        "index",
        "application/vnd.oci.image.index.v1+json",
        &index,
    );
    let r = format!("{}/{repo}:index", reg.addr);
    ok(env.run(&["image", "pull", "-q", &r]));
    let v = inspect(&env, &r);
    assert_eq!(
        v["Manifest"]["Digest"].as_str().unwrap(),
        Digest::of(&host_m).as_str()
    );
    assert_eq!(v["Architecture"], arch);
    if arch == "amd64" {
        ok(env.run(&["image", "pull", "-q", "--platform", "linux/arm64/v8", &r]));
        let v = inspect(&env, &r);
        assert_eq!(
            v["Manifest"]["Digest"].as_str().unwrap(),
            Digest::of(&arm_m).as_str()
        );
        let (code, _, err) = env.run(&["image", "pull", "--platform", "linux/s390x", &r]);
        assert_ne!(code, 0);
        assert!(err.contains("linux/s390x"), "{err}");
    }

    // Docker schema2 manifest list (arm64 first).
    const DM: &str = "application/vnd.docker.distribution.manifest.v2+json";
    const DC: &str = "application/vnd.docker.container.image.v1+json";
    const DL: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    let host_dm = manifest(DM, DC, DL, &host_cd, host_cfg.len(), &layer_d, layer.len());
    let arm_dm = manifest(DM, DC, DL, &arm_cd, arm_cfg.len(), &layer_d, layer.len());
    for m in [&host_dm, &arm_dm] {
        put_manifest(&reg, repo, Digest::of(m).as_str(), DM, m);
    }
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {"mediaType": DM, "digest": Digest::of(&arm_dm), "size": arm_dm.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": DM, "digest": Digest::of(&host_dm), "size": host_dm.len(),
             "platform": {"os": "linux", "architecture": arch}},
        ]
    }))
    .unwrap();
    put_manifest(
        &reg,
        repo,
        "v2list",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        &list,
    );
    let r = format!("{}/{repo}:v2list", reg.addr);
    ok(env.run(&["image", "pull", "-q", &r]));
    let v = inspect(&env, &r);
    assert_eq!(
        v["Manifest"]["Digest"].as_str().unwrap(),
        Digest::of(&host_dm).as_str()
    );
    assert!(v["GraphDriver"]["Data"]["LowerDirs"][0].as_str().is_some());
    // The images the tags moved away from (arm64 pull) are kept as <none> until prune.
    let list = ok(env.run(&["images"]));
    if arch == "amd64" {
        assert!(list.lines().any(|x| x.starts_with("<none>")), "{list}");
    }
    ok(env.run(&["image", "prune", "-f"]));
    let list = ok(env.run(&["images"]));
    assert!(!list.lines().any(|x| x.starts_with("<none>")), "{list}");
    drop(reg);
    env.finish();
}

/// load → push → pull into a fresh store gives identical digests; a second push skips
/// every blob; the layered image pulled from the registry gives the same layers.
#[test]
fn push_then_pull_round_trip() {
    require_root!();
    let env = TestEnv::new("imgpush");
    let reg = Registry::start();
    ok(env.run(&[
        "image",
        "load",
        "-q",
        "-i",
        images::layered_layout().to_str().unwrap(),
        "--name",
        "layered",
    ]));
    let r = format!("{}/bt/layered:1", reg.addr);
    ok(env.run(&["image", "tag", "layered", &r]));
    let out = ok(env.run(&["image", "push", &r]));
    assert!(out.contains("4 blobs uploaded, 0 already present"), "{out}");
    let out = ok(env.run(&["image", "push", &r]));
    assert!(out.contains("0 blobs uploaded, 4 already present"), "{out}");
    let root2 = env.root.join("second-root");
    ok(run_at(&root2, &["image", "pull", "-q", &r]));
    let (a, b) = (inspect(&env, &r), inspect_at(&root2, &r));
    assert_eq!(a["Manifest"]["Digest"], b["Manifest"]["Digest"]);
    assert_eq!(a["Id"], b["Id"]);
    assert_eq!(b["RootFS"], a["RootFS"]);
    assert_eq!(b["Manifest"]["Digest"], images::layered_digests().manifest);
    drop(reg);
    env.finish();
}

// ------------------------------------------------------------------ auth (mock registry)

#[derive(Clone, Copy, PartialEq)]
enum AuthMode {
    Bearer,
    Basic,
}

/// A tiny registry serving one OCI layout (read-only), requiring bearer tokens from its own
/// `/token` endpoint or basic credentials `bob:s3cret`. Counts token requests and can
/// corrupt the first `n` downloads of one blob.
struct MockRegistry {
    addr: String,
    tokens: Arc<AtomicUsize>,
    unauthorized: Arc<AtomicUsize>,
}

impl MockRegistry {
    fn start(layout: PathBuf, mode: AuthMode, corrupt: Option<(String, usize)>) -> MockRegistry {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let tokens = Arc::new(AtomicUsize::new(0));
        let unauthorized = Arc::new(AtomicUsize::new(0));
        let (t2, u2, a2) = (tokens.clone(), unauthorized.clone(), addr.clone());
        let corrupt = Arc::new(std::sync::Mutex::new(corrupt));
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { break };
                let (layout, t, u, a, c) = (
                    layout.clone(),
                    t2.clone(),
                    u2.clone(),
                    a2.clone(),
                    corrupt.clone(),
                );
                std::thread::spawn(move || {
                    let _ = serve(&mut s, &layout, mode, &t, &u, &a, &c);
                });
            }
        });
        MockRegistry {
            addr,
            tokens,
            unauthorized,
        }
    }
}

fn serve(
    s: &mut std::net::TcpStream,
    layout: &Path,
    mode: AuthMode,
    tokens: &AtomicUsize,
    unauthorized: &AtomicUsize,
    addr: &str,
    corrupt: &std::sync::Mutex<Option<(String, usize)>>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let auth = headers.get("authorization").cloned().unwrap_or_default();
        let basic = format!("Basic {}", base64_encode(b"bob:s3cret"));
        let authorized = match mode {
            AuthMode::Bearer => auth == "Bearer tok-123",
            AuthMode::Basic => auth == basic,
        };
        let mut respond = |status: &str,
                           ctype: &str,
                           extra: &str,
                           body: &[u8],
                           head: bool|
         -> std::io::Result<()> {
            write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}\r\n",
                body.len()
            )?;
            if !head {
                s.write_all(body)?;
            }
            s.flush()
        };
        let head = method == "HEAD";
        if path.starts_with("/token") {
            tokens.fetch_add(1, Ordering::SeqCst);
            respond(
                "200 OK",
                "application/json",
                "",
                br#"{"token":"tok-123","expires_in":300}"#,
                head,
            )?;
            continue;
        }
        if !authorized {
            unauthorized.fetch_add(1, Ordering::SeqCst);
            let challenge = match mode {
                AuthMode::Bearer => format!(
                    "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"mock\"\r\n"
                ),
                AuthMode::Basic => "WWW-Authenticate: Basic realm=\"mock\"\r\n".to_string(),
            };
            respond(
                "401 Unauthorized",
                "application/json",
                &challenge,
                br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                head,
            )?;
            continue;
        }
        if path == "/v2/" {
            respond("200 OK", "application/json", "", b"{}", head)?;
            continue;
        }
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
        let mdesc = &index["manifests"][0];
        if let Some((_, reference)) = path.split_once("/manifests/") {
            let d = if reference.starts_with("sha256:") {
                reference.to_string()
            } else {
                mdesc["digest"].as_str().unwrap().to_string()
            };
            let body = std::fs::read(
                layout
                    .join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )?;
            let extra = format!("Docker-Content-Digest: {d}\r\n");
            respond(
                "200 OK",
                mdesc["mediaType"].as_str().unwrap(),
                &extra,
                &body,
                head,
            )?;
            continue;
        }
        if let Some((_, d)) = path.split_once("/blobs/") {
            let p = layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:"));
            match std::fs::read(p) {
                Ok(mut body) => {
                    let mut c = corrupt.lock().unwrap();
                    if let Some((digest, n)) = c.as_mut() {
                        if digest == d && *n > 0 && !head {
                            *n -= 1;
                            let mid = body.len() / 2;
                            body[mid] ^= 0xff;
                        }
                    }
                    drop(c);
                    respond("200 OK", "application/octet-stream", "", &body, head)?;
                }
                Err(_) => respond("404 Not Found", "application/json", "", b"{}", head)?,
            }
            continue;
        }
        respond("404 Not Found", "application/json", "", b"{}", head)?;
    }
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Anonymous bearer flow: `/v2/` answers 401 with a challenge, berth fetches a token from
/// the realm and retries with `Authorization: Bearer`. Also: a layer served corrupted (on
/// every one of the pull's 5 attempts) is rejected with nothing left in the store, and the
/// next pull, served correctly, succeeds.
#[test]
fn token_auth_and_corrupted_blob_retry() {
    require_root!();
    let env = TestEnv::new("imgtoken");
    let d = images::busybox_digests();
    let mock = MockRegistry::start(
        images::busybox_layout(),
        AuthMode::Bearer,
        Some((d.layers[0].clone(), 5)),
    );
    let r = format!("{}/fixture/busybox:latest", mock.addr);
    let (code, _, err) = env.run(&["image", "pull", "-q", &r]);
    assert_ne!(code, 0, "a corrupted layer must fail the pull");
    assert!(err.contains(&d.layers[0]), "error names the blob: {err}");
    let store = Store::open(&env.root).unwrap();
    let blob = Digest::parse(&d.layers[0]).unwrap();
    assert!(!store.has_blob(&blob));
    assert_eq!(
        std::fs::read_dir(store.dir().join("ingest"))
            .unwrap()
            .count(),
        0,
        "no partial download left"
    );
    assert_eq!(
        std::fs::read_dir(store.dir().join("layers"))
            .unwrap()
            .count(),
        0
    );
    assert!(store.list().unwrap().is_empty(), "nothing tagged");
    ok(env.run(&["image", "pull", "-q", &r]));
    assert!(
        mock.tokens.load(Ordering::SeqCst) >= 1,
        "token endpoint used"
    );
    assert!(
        mock.unauthorized.load(Ordering::SeqCst) >= 1,
        "the 401 challenge was met first"
    );
    assert_eq!(inspect(&env, &r)["Id"], d.config);
    env.finish();
}

/// Basic auth with credentials from Docker's config.json; without them the pull fails.
#[test]
fn basic_auth_from_docker_config() {
    require_root!();
    let env = TestEnv::new("imgbasic");
    let mock = MockRegistry::start(images::busybox_layout(), AuthMode::Basic, None);
    let r = format!("{}/fixture/busybox:latest", mock.addr);
    let nocreds = env.root.join("nocreds");
    std::fs::create_dir_all(&nocreds).unwrap();
    let out = env
        .berth()
        .env("DOCKER_CONFIG", &nocreds)
        .args(["image", "pull", "-q", &r])
        .output()
        .unwrap();
    assert!(!out.status.success(), "pull without credentials must fail");
    let cfgdir = env.root.join("docker");
    std::fs::create_dir_all(&cfgdir).unwrap();
    let cfg = json!({"auths": {mock.addr.clone(): {"auth": base64_encode(b"bob:s3cret")}}});
    std::fs::write(cfgdir.join("config.json"), cfg.to_string()).unwrap();
    let out = env
        .berth()
        .env("DOCKER_CONFIG", &cfgdir)
        .args(["image", "pull", "-q", &r])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(inspect(&env, &r)["Id"], images::busybox_digests().config);
    env.finish();
}

// ------------------------------------------------------------------ runtime and concurrency

/// An image imported from a rootfs tar runs as a container: its layer dirs become the
/// runtime's overlay lowerdirs and its config gives the command, env and workdir.
#[test]
fn imported_rootfs_runs_a_container() {
    use berth_runtime::{ContainerId, ContainerSpec, Rootfs, Runtime};
    require_root!();
    let env = TestEnv::new("imgrun");
    let tar = images::busybox_rootfs_tar();
    ok(env.run(&[
        "image",
        "import",
        tar.to_str().unwrap(),
        "bt-run:1",
        "--change",
        r#"CMD ["sh", "-c", "echo $GREETING from $(pwd)"]"#,
        "--change",
        "ENV GREETING=imported",
        "--change",
        "WORKDIR /tmp",
    ]));
    let store = Store::open(&env.root).unwrap();
    let img = store.get("bt-run:1").unwrap();
    let rt = Runtime::new(env.root.join("containers")).with_helper(support::berth_bin());
    let (upper, work) = (env.root.join("c/upper"), env.root.join("c/work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut spec = ContainerSpec::new(
        ContainerId::new("bt-imgrun").unwrap(),
        Rootfs::Overlay {
            lower: img.layers.clone(),
            upper,
            work,
        },
        img.config.config.cmd.clone().unwrap(),
    );
    spec.env = img.config.config.env.clone().unwrap_or_default();
    spec.working_dir = img.config.config.working_dir.clone();
    let c = rt.run(&spec).unwrap_or_else(|e| panic!("run: {e}"));
    let exit = c
        .wait(Some(Duration::from_secs(60)))
        .expect("container exits");
    let log: String = berth_runtime::log::read_log(&c.log_path())
        .unwrap_or_default()
        .into_iter()
        .map(|l| l.log)
        .collect();
    c.delete().unwrap();
    assert_eq!(exit.code, 0, "{exit:?}: {log}");
    assert!(log.contains("imported from /tmp"), "{log}");
    env.finish();
}

/// Two berth processes pulling the same image into one store at the same time both
/// succeed (flock on the tag index, atomic renames for blobs and layers) and the store
/// ends consistent, with one copy of each layer.
#[test]
fn concurrent_pulls_share_the_store() {
    require_root!();
    let env = TestEnv::new("imgconc");
    let reg = Registry::start();
    reg.push_layout(&images::layered_layout(), "fixture/layered", "latest");
    let r = format!("{}/fixture/layered:latest", reg.addr);
    let spawn = || {
        env.berth()
            .args(["image", "pull", "-q", &r])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = Store::open(&env.root).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_dir(store.dir().join("layers"))
            .unwrap()
            .count(),
        3
    );
    assert_eq!(
        std::fs::read_dir(store.dir().join("tmp")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(store.dir().join("ingest"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        inspect(&env, &r)["Manifest"]["Digest"],
        images::layered_digests().manifest
    );
    drop(reg);
    env.finish();
}

// ------------------------------------------------------------------ benchmark

/// Deterministic incompressible bytes (xorshift64), so the image is ~50 MB compressed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Pull + unpack of a ~50 MB, 4-layer image from the local registry with berth, against
/// `skopeo copy` + `umoci raw unpack` of the same image in the same run (interleaved, 3
/// rounds, medians). Prints both and the ratio; the target is berth faster than both
/// together. Run it on a release build:
/// `cargo test --release --test integration image::bench_pull_unpack -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: run explicitly, on a release build"]
fn bench_pull_unpack() {
    require_root!();
    let env = TestEnv::new("imgbench");
    let reg = Registry::start();
    let layout = env.root.join("bench-oci");
    let mut layers = Vec::new();
    for l in 0..4u64 {
        let mut b = tar::Builder::new(Vec::new());
        for f in 0..1500u64 {
            // 8 kB random (incompressible; odd, distinct seeds) + 2 kB text per file:
            // ~12.5 MB compressed a layer.
            let mut data = noise((l * 100_000 + f) * 2 + 1, 8192);
            data.extend(std::iter::repeat_n(b'a' + (f % 26) as u8, 2048));
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, format!("l{l}/d{}/f{f}", f % 30), data.as_slice())
                .unwrap();
        }
        layers.push(berth_fixtures::gzip(&b.into_inner().unwrap()).unwrap());
    }
    let total: usize = layers.iter().map(Vec::len).sum();
    // An OCI layout of gzip layers (write_layout writes plain-tar media types, so by hand).
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let put = |b: &[u8]| {
        let d = Digest::of(b);
        std::fs::write(layout.join("blobs/sha256").join(d.hex()), b).unwrap();
        d
    };
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for l in &layers {
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(l.as_slice()), &mut plain)
            .unwrap();
        diff_ids.push(Digest::of(&plain));
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(l), "size": l.len()}));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": berth_fixtures::oci_arch(), "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    let md = put(&manifest);
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len()}]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    reg.push_layout(&layout, "bench/big", "latest");
    let r = format!("{}/bench/big:latest", reg.addr);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let root = env.root.join(format!("berth-{round}"));
        let t = std::time::Instant::now();
        ok(run_at(&root, &["image", "pull", "-q", &r]));
        ours.push(t.elapsed());
        let dir = env.root.join(format!("skopeo-{round}"));
        let t = std::time::Instant::now();
        let st = std::process::Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{r}"),
            ])
            .arg(format!("oci:{}:latest", dir.display()))
            .status()
            .unwrap();
        assert!(st.success(), "skopeo copy");
        let st = std::process::Command::new("umoci")
            .args(["raw", "unpack", "--image"])
            .arg(format!("{}:latest", dir.display()))
            .arg(env.root.join(format!("umoci-rootfs-{round}")))
            .status()
            .unwrap();
        assert!(st.success(), "umoci raw unpack");
        theirs.push(t.elapsed());
    }
    let (o, t) = (median(ours.clone()), median(theirs.clone()));
    println!(
        "pull+unpack of {:.1} MB in 4 layers from 127.0.0.1 (median of 3)",
        total as f64 / 1e6
    );
    println!("  berth image pull:                 {o:?} (runs {ours:?})");
    println!("  skopeo copy + umoci raw unpack:   {t:?} (runs {theirs:?})");
    println!(
        "  ratio berth / (skopeo+umoci):     {:.2}",
        o.as_secs_f64() / t.as_secs_f64()
    );
    drop(reg);
    env.finish();
}

// ------------------------------------------------------------------ sharing, history, gc

/// busybox and layered share their base layer (same ChainID → one directory); removing
/// layered keeps the shared layer for busybox; `history` lists the config's history;
/// `prune` drops dangling images and `prune -a` everything unused.
#[test]
fn layers_shared_by_chain_id_and_collected() {
    require_root!();
    let env = TestEnv::new("imgshare");
    let bb = images::busybox_layout();
    let ly = images::layered_layout();
    ok(env.run(&[
        "image",
        "load",
        "-q",
        "-i",
        bb.to_str().unwrap(),
        "--name",
        "busybox",
    ]));
    ok(env.run(&[
        "image",
        "load",
        "-q",
        "-i",
        ly.to_str().unwrap(),
        "--name",
        "layered",
    ]));
    let store = Store::open(&env.root).unwrap();
    let (b, l) = (store.get("busybox").unwrap(), store.get("layered").unwrap());
    assert_eq!(b.layers[0], l.layers[0], "base layer shared");
    let layer_count = || {
        std::fs::read_dir(store.dir().join("layers"))
            .unwrap()
            .count()
    };
    assert_eq!(layer_count(), 3);
    let hist = ok(env.run(&["image", "history", "layered"]));
    assert!(hist.contains("whiteout, opaque dir"), "{hist}");
    assert_eq!(hist.lines().count(), 4, "header + 3 entries: {hist}");
    ok(env.run(&["image", "rm", "layered"]));
    assert_eq!(layer_count(), 1);
    assert!(
        b.layers[0].join("bin/busybox").is_file(),
        "shared layer kept"
    );
    // An unnamed load is dangling: listed as <none>, removed by prune.
    let unnamed = env.root.join("unnamed-oci");
    write_layout(&unnamed, &[Forge::new().file("hello", b"x").bytes()], None);
    let out = ok(env.run(&["image", "load", "-i", unnamed.to_str().unwrap()]));
    assert!(out.contains("Loaded image ID: sha256:"), "{out}");
    let list = ok(env.run(&["images"]));
    assert!(list.lines().any(|x| x.starts_with("<none>")), "{list}");
    assert_eq!(layer_count(), 2);
    ok(env.run(&["image", "prune", "-f"]));
    assert_eq!(layer_count(), 1);
    assert_eq!(store.list().unwrap().len(), 1);
    ok(env.run(&["image", "prune", "-a", "-f"]));
    assert_eq!(layer_count(), 0);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(store.dir().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    env.finish();
}
