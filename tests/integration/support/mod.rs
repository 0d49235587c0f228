//! The privileged test harness shared by every integration test.
//!
//! - [`require_root!`]: skip loudly (and say why) when not root.
//! - [`TestEnv`]: a unique temp state root per test (never the user's real state), a
//!   `berth` command bound to it, the kernel lock and a leak checker snapshot taken at the
//!   start; [`TestEnv::finish`] asserts that nothing berth-owned was left behind.
//! - [`enter_fresh_netns`]: move the calling test thread (and everything it spawns) into a
//!   new network namespace with `lo` up; restored when the guard drops.
//! - [`eventually`]: poll a condition with a deadline instead of sleeping.
//! - [`images`]: the deterministic fixture images, built once per test run.
//! - [`registry`]: the real `docker-registry` server on 127.0.0.1.
//! - [`leak`]: the leak checker.
//! - [`pty`]: a pseudo-terminal to drive `berth` as a user's terminal would.
//!
//! Tests that create kernel objects hold the kernel lock (through `TestEnv` or
//! [`kernel_lock`]) so they run one at a time: a leak found after a test is that test's.

#![allow(dead_code)]

pub mod images;
pub mod leak;
pub mod pty;
pub mod registry;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Skip the calling test, loudly, when the process is not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::support::is_root() {
            eprintln!(
                "SKIPPED {}: needs root (namespaces, mounts, cgroups, netlink)",
                module_path!()
            );
            return;
        }
    };
}

/// True when running as uid 0.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

static KERNEL_LOCK: Mutex<()> = Mutex::new(());

/// Held while a test touches the kernel: the in-process mutex, plus the cross-process
/// lock the bench takes too (`berth_fixtures::kernel_lock_file`), so that test runs in
/// other processes don't interleave with this one and trip each other's leak checks.
pub struct KernelLock {
    _guard: MutexGuard<'static, ()>,
    _file: Option<std::fs::File>,
}

/// Serialise tests that touch the kernel; a panicking holder does not poison later tests.
pub fn kernel_lock() -> KernelLock {
    let guard = KERNEL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    KernelLock {
        _guard: guard,
        _file: berth_fixtures::kernel_lock_file(),
    }
}

/// Path of the `berth` binary built for this test run.
pub fn berth_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

/// `GET /` over HTTP/1.0 from 127.0.0.1:`port`; the whole response.
pub fn http_get(port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// A compose project of the e2e tests: `tests/compose/<name>/` in the repository.
pub fn compose_dir(name: &str) -> PathBuf {
    repo_root().join("tests/compose").join(name)
}

/// The repository root (where `Cargo.toml` of the workspace is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the repository, when present (absent in a user's clone).
pub fn shared_dir() -> Option<PathBuf> {
    let p = repo_root().join("../shared");
    p.is_dir().then_some(p)
}

/// A per-test environment: unique state root, kernel lock, leak snapshot.
pub struct TestEnv {
    /// berth's state root for this test (`--root` / `BERTH_ROOT`).
    pub root: PathBuf,
    /// A unique, valid compose project name for this test.
    pub project: String,
    tmp: Option<tempfile::TempDir>,
    snapshot: leak::Snapshot,
    finished: bool,
    _lock: KernelLock,
}

impl TestEnv {
    /// Take the kernel lock, make a fresh state root and snapshot berth-owned objects.
    pub fn new(name: &str) -> TestEnv {
        let lock = kernel_lock();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("berth-test-{name}-"))
            .tempdir()
            .expect("creating a temp state root");
        let root = tmp.path().to_path_buf();
        let suffix: String = root
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .rsplit('-')
                    .next()
                    .unwrap_or("x")
                    .to_lowercase()
            })
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let project = format!("t{}{}", name.replace(['_', ' '], "-"), suffix);
        let snapshot = leak::Snapshot::take();
        TestEnv {
            root,
            project,
            tmp: Some(tmp),
            snapshot,
            finished: false,
            _lock: lock,
        }
    }

    /// A `berth` command with this test's state root.
    pub fn berth(&self) -> Command {
        let mut c = Command::new(berth_bin());
        c.env("BERTH_ROOT", &self.root);
        // Never forward a test's DNS queries to the host's resolver.
        c.env("BERTH_DNS_UPSTREAM", "none");
        c
    }

    /// Run berth with `args`, returning (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.berth().args(args).output().expect("running berth");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Run berth and assert it succeeded; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(
            code, 0,
            "berth {args:?} failed ({code}):\nstdout: {out}\nstderr: {err}"
        );
        out
    }

    /// Load the busybox fixture image into this test's store.
    pub fn load_busybox(&self) {
        let layout = images::busybox_layout();
        self.ok(&["image", "load", "-i", layout.to_str().expect("utf-8 path")]);
    }

    /// A `berth::fixture::Stack` builder for the compose project in `dir`, on this test's
    /// state root, with this test's project name and DNS forwarding off.
    pub fn stack(&self, dir: &Path) -> berth::fixture::StackBuilder {
        berth::fixture::Stack::builder(dir)
            .root(&self.root)
            .project_name(&self.project)
            .berth_binary(berth_bin())
            .dns_upstream("none")
            .wait_timeout(Duration::from_secs(30))
    }

    /// Write a compose project dir under the test root; returns its path.
    pub fn project_dir(&self, name: &str, compose_yaml: &str) -> PathBuf {
        let dir = self.root.join("projects-src").join(name);
        write_file(&dir, "compose.yaml", compose_yaml);
        dir
    }

    /// Run berth in `dir` with `-p <this test's project>` first; returns (code, out, err).
    pub fn compose(&self, dir: &Path, args: &[&str]) -> (i32, String, String) {
        self.compose_env(dir, &[], args)
    }

    /// Like [`TestEnv::compose_ok`], with variables set in berth's environment (the
    /// "shell" a compose file interpolates from).
    pub fn compose_ok_env(&self, dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> String {
        let (code, out, err) = self.compose_env(dir, vars, args);
        assert_eq!(
            code, 0,
            "berth {args:?} failed ({code}):\nstdout: {out}\nstderr: {err}"
        );
        out
    }

    /// The berth command [`TestEnv::compose`] runs, for tests that drive it themselves (a
    /// pty, piped stdin): in `dir`, `-p <this test's project>` first.
    pub fn compose_cmd(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = self.berth();
        c.current_dir(dir).arg("-p").arg(&self.project).args(args);
        c
    }

    fn compose_env(
        &self,
        dir: &Path,
        vars: &[(&str, &str)],
        args: &[&str],
    ) -> (i32, String, String) {
        let out = self
            .compose_cmd(dir, args)
            .envs(vars.iter().copied())
            .output()
            .expect("running berth");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Like [`TestEnv::compose`], asserting success; returns stdout.
    pub fn compose_ok(&self, dir: &Path, args: &[&str]) -> String {
        let (code, out, err) = self.compose(dir, args);
        assert_eq!(
            code, 0,
            "berth {args:?} failed ({code}):\nstdout: {out}\nstderr: {err}"
        );
        out
    }

    /// Assert nothing berth-owned is left since [`TestEnv::new`], then remove the root.
    pub fn finish(mut self) {
        self.finished = true;
        let leaks = self.snapshot.leaks_since();
        if let Some(tmp) = self.tmp.take() {
            let _ = tmp.close();
        }
        assert!(
            leaks.is_empty(),
            "leaked berth-owned objects:\n  {}",
            leaks.join("\n  ")
        );
    }
}

impl Drop for TestEnv {
    /// A test that did not reach `finish` (it failed) still cleans up: every project with
    /// state under this root is taken down and every container left is removed, before
    /// the temp root goes.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if !std::thread::panicking() {
            eprintln!(
                "note: TestEnv for {} dropped without finish()",
                self.project
            );
        }
        let mut projects: Vec<String> = std::fs::read_dir(self.root.join("projects"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !projects.contains(&self.project) {
            projects.push(self.project.clone());
        }
        for p in projects {
            let out = self
                .berth()
                .current_dir(&self.root)
                .args(["-p", &p, "down", "-v", "-t", "0"])
                .output();
            if let Ok(o) = out {
                if !o.status.success() {
                    eprintln!(
                        "cleanup of project {p} failed: {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.root.join("containers")) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.berth().args(["container", "rm", "-f", &id]).output();
            }
        }
    }
}

/// Guard for [`enter_fresh_netns`]: puts the thread back into its old namespace on drop.
pub struct NetnsGuard {
    old: std::fs::File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = nix::sched::setns(self.old.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
    }
}

/// Move the calling thread into a new network namespace with `lo` up. Threads and
/// processes it starts afterwards inherit the namespace; the namespace disappears when the
/// last of them is gone.
pub fn enter_fresh_netns() -> NetnsGuard {
    let old = std::fs::File::open("/proc/thread-self/ns/net").expect("opening current netns");
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("running ip");
    assert!(st.success(), "ip link set lo up failed");
    NetnsGuard { old }
}

/// Poll `f` until it returns `Ok` or `timeout` passes; panic with the last error then.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(5);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("condition not met within {timeout:?}: {e}")
            }
            Err(_) => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Write `content` to `dir/name`, creating `dir`.
pub fn write_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("creating dir");
    let p = dir.join(name);
    std::fs::write(&p, content).expect("writing file");
    p
}
