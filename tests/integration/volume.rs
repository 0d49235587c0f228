//! Volumes, binds, tmpfs, volumes_from, secrets and configs through `berth up`, each in a
//! fresh network namespace with its own state root, leak-checked.

use std::time::Duration;

use crate::require_root;
use crate::support::{self, eventually, images, TestEnv};

fn start(env: &TestEnv, name: &str, compose: &str) -> std::path::PathBuf {
    env.load_busybox();
    let dir = env.project_dir(name, compose);
    env.compose_ok(&dir, &["up", "-d"]);
    dir
}

fn sh(env: &TestEnv, dir: &std::path::Path, service: &str, script: &str) -> (i32, String) {
    let (code, out, err) = env.compose(dir, &["exec", service, "sh", "-c", script]);
    (code, format!("{out}{err}"))
}

/// A secret from a file and one from the environment are readable at /run/secrets with
/// the given mode and owner; a config with inline content lands at /<name>; all read-only.
#[test]
fn secrets_and_configs() {
    require_root!();
    let env = TestEnv::new("vol-secret");
    let _ns = support::enter_fresh_netns();
    let src = env.root.join("projects-src/secret");
    support::write_file(&src, "db_password.txt", "s3cret\n");
    support::write_file(&src, ".env", "BT_API_KEY=k3y\n");
    let dir = start(
        &env,
        "secret",
        r#"
services:
  app:
    image: busybox
    command: [sleep, "3600"]
    environment: {}
    secrets:
      - db_password
      - {source: api_key, target: key, mode: 0400, uid: "65534", gid: "65534"}
    configs: [motd]
secrets:
  db_password: {file: ./db_password.txt}
  api_key: {environment: BT_API_KEY}
configs:
  motd: {content: "hello config"}
"#,
    );
    let _ = dir;
    let dir = src;
    let (code, out) = sh(
        &env,
        &dir,
        "app",
        "cat /run/secrets/db_password; stat -c '%a %u %g' /run/secrets/key; cat /motd",
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec!["s3cret", "400 65534 65534", "hello config"],
        "{out}"
    );
    let (code, _) = sh(&env, &dir, "app", "echo x > /run/secrets/db_password");
    assert_ne!(code, 0, "secrets must be read-only");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// `volumes_from: [writer:ro]` sees the writer's named volume, read-only.
#[test]
fn volumes_from_shares_data() {
    require_root!();
    let env = TestEnv::new("vol-from");
    let _ns = support::enter_fresh_netns();
    let dir = start(
        &env,
        "from",
        "services:\n  writer:\n    image: busybox\n    volumes: [shared:/shared]\n    command: [sh, -c, 'echo from-writer > /shared/f; exec sleep 3600']\n  reader:\n    image: busybox\n    volumes_from: ['writer:ro']\n    command: [sleep, '3600']\nvolumes:\n  shared: {}\n",
    );
    eventually(Duration::from_secs(5), || {
        let (code, out) = sh(&env, &dir, "reader", "cat /shared/f");
        if code == 0 && out.trim() == "from-writer" {
            Ok(())
        } else {
            Err(out)
        }
    });
    let (code, _) = sh(&env, &dir, "reader", "echo x > /shared/g");
    assert_ne!(code, 0, ":ro must be read-only");
    env.compose_ok(&dir, &["down", "-v"]);
    env.finish();
}

/// Binds: `:ro` is read-only inside, short syntax creates a missing host dir; tmpfs `size`
/// is enforced.
#[test]
fn binds_and_tmpfs() {
    require_root!();
    let env = TestEnv::new("vol-bind");
    let _ns = support::enter_fresh_netns();
    let src = env.root.join("projects-src/bind");
    support::write_file(&src.join("conf"), "app.conf", "x=1\n");
    let dir = start(
        &env,
        "bind",
        r#"
services:
  app:
    image: busybox
    command: [sleep, "3600"]
    volumes:
      - ./conf:/etc/app:ro
      - ./made-by-up:/data
      - {type: tmpfs, target: /scratch, tmpfs: {size: 1048576}}
"#,
    );
    assert!(
        dir.join("made-by-up").is_dir(),
        "short syntax must create the host dir"
    );
    let (code, out) = sh(&env, &dir, "app", "cat /etc/app/app.conf");
    assert_eq!((code, out.trim()), (0, "x=1"));
    let (code, _) = sh(&env, &dir, "app", "touch /etc/app/new");
    assert_ne!(code, 0, "ro bind must be read-only");
    let (code, _) = sh(&env, &dir, "app", "echo hi > /data/f");
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(dir.join("made-by-up/f")).unwrap(),
        "hi\n"
    );
    let (code, out) = sh(
        &env,
        &dir,
        "app",
        "dd if=/dev/zero of=/scratch/big bs=1024 count=2048",
    );
    assert_ne!(code, 0, "a 2 MiB write into a 1 MiB tmpfs must fail: {out}");
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// A missing external volume fails `up` with a clear error, and nothing is created.
#[test]
fn missing_external_volume() {
    require_root!();
    let env = TestEnv::new("vol-ext");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "ext",
        "services:\n  app:\n    image: busybox\n    volumes: [data:/data]\n    command: [sleep, '3600']\nvolumes:\n  data:\n    external: true\n    name: bt-not-there\n",
    );
    let (code, _, err) = env.compose(&dir, &["up", "-d"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("external volume \"bt-not-there\" not found"),
        "{err}"
    );
    assert!(
        !env.root.join("projects").join(&env.project).exists(),
        "nothing may be created"
    );
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("bt-"),
        "no bridge"
    );
    env.finish();
}

/// A new named volume mounted where the image has content is populated from it, once:
/// later changes in the volume survive a recreate.
#[test]
fn image_content_populates_volume_once() {
    require_root!();
    let env = TestEnv::new("vol-copyup");
    let _ns = support::enter_fresh_netns();
    let layout = images::layered_layout();
    env.ok(&["image", "load", "-i", layout.to_str().unwrap()]);
    let compose = |v: &str| {
        format!("services:\n  app:\n    image: layered\n    environment: {{V: '{v}'}}\n    volumes: [data:/data]\n    command: [sleep, '3600']\nvolumes:\n  data: {{}}\n")
    };
    let dir = env.project_dir("copyup", &compose("1"));
    env.compose_ok(&dir, &["up", "-d"]);
    let (code, out) = sh(
        &env,
        &dir,
        "app",
        "cat /data/keep.txt; stat -c '%u:%g %a' /data/owned.txt",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["kept from layer 1", "1000:1000 640"]
    );
    let (code, _) = sh(&env, &dir, "app", "rm /data/keep.txt");
    assert_eq!(code, 0);
    support::write_file(&dir, "compose.yaml", &compose("2"));
    env.compose_ok(&dir, &["up", "-d"]);
    let (code, _) = sh(&env, &dir, "app", "test -e /data/keep.txt");
    assert_ne!(code, 0, "the volume must not be populated a second time");
    env.compose_ok(&dir, &["down", "-v"]);
    env.finish();
}

/// `berth volume rm` refuses a volume a container mounts; after `down` it removes it.
#[test]
fn volume_rm_refuses_in_use() {
    require_root!();
    let env = TestEnv::new("vol-rm");
    let _ns = support::enter_fresh_netns();
    let dir = start(
        &env,
        "rm",
        "services:\n  app:\n    image: busybox\n    volumes: [data:/data]\n    command: [sleep, '3600']\nvolumes:\n  data: {}\n",
    );
    let name = format!("{}_data", env.project);
    let ls = env.ok(&["volume", "ls", "-q"]);
    assert!(ls.lines().any(|l| l == name), "{ls}");
    let (code, _, err) = env.run(&["volume", "rm", &name]);
    assert_ne!(code, 0);
    assert!(err.contains("is in use"), "{err}");
    env.compose_ok(&dir, &["down"]);
    env.ok(&["volume", "rm", &name]);
    assert!(!env.ok(&["volume", "ls", "-q"]).contains(&name));
    env.finish();
}

/// A symlink in the image pointing a mount target outside the rootfs does not make berth
/// mount onto the host: the target is resolved inside the container's root.
#[test]
fn symlinked_mount_target_stays_inside() {
    require_root!();
    let env = TestEnv::new("vol-symlink");
    let _ns = support::enter_fresh_netns();
    let host_dir = env.root.join("host-victim");
    std::fs::create_dir_all(&host_dir).unwrap();
    // busybox rootfs + `/escape -> <host_dir>` (absolute, pointing at a host path).
    let tar_path = env.root.join("evil.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let mut src = tar::Archive::new(std::fs::File::open(images::busybox_rootfs_tar()).unwrap());
        for e in src.entries().unwrap() {
            let mut e = e.unwrap();
            let mut h = e.header().clone();
            let path = e.path().unwrap().into_owned();
            if h.entry_type() == tar::EntryType::Symlink {
                let target = e.link_name().unwrap().unwrap().into_owned();
                b.append_link(&mut h, &path, &target).unwrap();
            } else {
                b.append_data(&mut h, &path, &mut e).unwrap();
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_link(&mut h, "escape", &host_dir).unwrap();
        b.finish().unwrap();
    }
    env.ok(&[
        "image",
        "import",
        tar_path.to_str().unwrap(),
        "bt-evil:1",
        "--change",
        "CMD [\"sh\"]",
    ]);
    let dir = env.project_dir(
        "symlink",
        "services:\n  app:\n    image: bt-evil:1\n    volumes: [{type: tmpfs, target: /escape/mnt}]\n    command: [sh, -c, 'echo inside > /escape/mnt/f; exec sleep 3600']\n",
    );
    env.compose_ok(&dir, &["up", "-d"]);
    // The container wrote through its tmpfs (inside its own root)...
    eventually(Duration::from_secs(5), || {
        let (code, out) = sh(&env, &dir, "app", "cat /escape/mnt/f");
        if code == 0 && out.trim() == "inside" {
            Ok(())
        } else {
            Err(out)
        }
    });
    // ...and the host path the symlink names was never touched.
    assert!(
        std::fs::read_dir(&host_dir).unwrap().next().is_none(),
        "berth created or mounted something in the host dir the symlink points at"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(host_dir.to_str().unwrap()),
        "host dir was mounted on"
    );
    env.compose_ok(&dir, &["down"]);
    env.finish();
}

/// Local-driver volumes with `driver_opts` (a bind of `device`, a sized tmpfs) and the
/// image's own `VOLUME`s (anonymous volumes populated from the image, removed by
/// `down -v`).
#[test]
fn driver_opts_and_image_volumes() {
    require_root!();
    let env = TestEnv::new("vol-opts");
    let _ns = support::enter_fresh_netns();
    let device = env.root.join("device-dir");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(device.join("from-device"), "dev\n").unwrap();
    env.ok(&[
        "image",
        "import",
        images::busybox_rootfs_tar().to_str().unwrap(),
        "bt-withvol:1",
        "--change",
        "VOLUME [\"/etc\"]",
        "--change",
        "CMD [\"sh\"]",
    ]);
    let dir = env.project_dir(
        "opts",
        &format!(
            "services:\n  app:\n    image: bt-withvol:1\n    command: [sleep, '3600']\n    volumes: [bound:/bound, mem:/mem]\nvolumes:\n  bound:\n    driver: local\n    driver_opts: {{type: none, o: bind, device: '{}'}}\n  mem:\n    driver_opts: {{type: tmpfs, device: tmpfs, o: 'size=1m'}}\n",
            device.display()
        ),
    );
    env.compose_ok(&dir, &["up", "-d"]);
    let (code, out) = sh(
        &env,
        &dir,
        "app",
        "cat /bound/from-device; grep -c root /etc/passwd",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["dev", "1"], "{out}");
    let (code, out) = sh(
        &env,
        &dir,
        "app",
        "dd if=/dev/zero of=/mem/big bs=1024 count=2048",
    );
    assert_ne!(code, 0, "size=1m tmpfs must refuse 2 MiB: {out}");
    let anon: Vec<String> = env
        .ok(&["volume", "ls", "-q"])
        .lines()
        .filter(|l| l.contains("-anon-"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        anon.len(),
        1,
        "one anonymous volume for the image's VOLUME: {anon:?}"
    );
    env.compose_ok(&dir, &["down", "-v"]);
    assert!(
        !env.ok(&["volume", "ls", "-q"]).contains("-anon-"),
        "down -v removes anonymous volumes"
    );
    assert!(
        device.join("from-device").exists(),
        "the device dir is the user's: kept"
    );
    env.finish();
}

/// Long-syntax bind whose host path is missing (and `create_host_path` unset): a clear
/// error naming the service and the path, and nothing is created on the host.
#[test]
fn long_bind_missing_host_path() {
    require_root!();
    let env = TestEnv::new("vol-missing");
    let _ns = support::enter_fresh_netns();
    env.load_busybox();
    let dir = env.project_dir(
        "missing",
        "services:\n  app:\n    image: busybox\n    command: [sleep, '3600']\n    volumes:\n      - {type: bind, source: ./not-there, target: /data}\n",
    );
    let (code, _, err) = env.compose(&dir, &["up", "-d"]);
    assert_ne!(code, 0);
    let want = format!(
        "service app: bind source path {} does not exist",
        dir.join("not-there").display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(!dir.join("not-there").exists());
    env.compose_ok(&dir, &["down"]);
    env.finish();
}
