//! cgroups: limits, freezer, kill-all, stats and OOM detection for one container, on cgroup v1
//! or v2, picked at run time from `/proc/self/mountinfo`.
//!
//! Takes a container id and [`Limits`], gives a [`CgroupManager`] trait object. Cgroups are
//! named `berth/<id>` (under each v1 controller, or under the v2 root), so leftovers are easy
//! to find. The shim creates the cgroup and the container init joins it (`join_self`) before it
//! execs; `container` operations (pause, stop, stats, delete) re-open it by id from any process.
//! `rootfs` mounts the [`CgroupView`] read-only inside the container.
//!
//! A hybrid host (v1 controllers plus a cgroup2 mount at `/sys/fs/cgroup/unified`, like this
//! one) uses v1: the v2 hierarchy there holds no controller we need. [`CGROUP_ROOT_ENV`]
//! forces the v2 driver on a given cgroup2 mount (how the v2 path is tested on such a host).

pub mod devices;
pub mod v1;
pub mod v2;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::spec::Limits;

/// The name of berth's parent cgroup in every hierarchy.
pub const PARENT: &str = "berth";

/// Errors from cgroup operations; each names the file or dir involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/self/mountinfo")]
    Mountinfo(#[source] std::io::Error),
    #[error("no usable cgroup hierarchy is mounted")]
    NoHierarchy,
    #[error("{path} (from ${}) is not a cgroup2 mount", CGROUP_ROOT_ENV)]
    NotCgroup2 { path: PathBuf },
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the {controller} controller is not available for {path}, needed for the {what} limit"
    )]
    ControllerMissing {
        controller: &'static str,
        what: &'static str,
        path: PathBuf,
    },
    #[error("cannot restrict devices for {path}")]
    Devices {
        path: PathBuf,
        #[source]
        source: devices::DeviceFilterError,
    },
    #[error("timed out waiting for {path} to {what}")]
    Timeout { path: PathBuf, what: &'static str },
}

/// Resource usage of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Current memory usage in bytes.
    pub memory_usage: u64,
    /// Memory limit in bytes (`None`: unlimited).
    pub memory_limit: Option<u64>,
    /// Total CPU time in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Number of tasks.
    pub pids: u64,
}

/// What the container sees at `/sys/fs/cgroup` (mounted read-only by `rootfs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupView {
    /// A tmpfs with one bind per hierarchy of the container's own cgroup dir, plus symlinks
    /// for co-mounted controllers (`cpu -> cpu,cpuacct`).
    V1 {
        /// (name under /sys/fs/cgroup, host dir of the container's cgroup)
        binds: Vec<(String, PathBuf)>,
        /// (link name, target)
        links: Vec<(String, String)>,
    },
    /// A cgroup2 mount made inside the container's cgroup namespace.
    V2,
}

/// One container's cgroup, whichever the version.
pub trait CgroupManager: std::fmt::Debug + Send + Sync {
    /// Creates the cgroup and writes the limits. Fails if a requested limit has no controller.
    fn create(&self, limits: &Limits, privileged: bool) -> Result<(), CgroupError>;
    /// Moves `pid` (a whole process) into the cgroup.
    fn add_process(&self, pid: i32) -> Result<(), CgroupError>;
    /// Moves the calling process, which must be single-threaded, into the cgroup. On v1 this
    /// writes `0` to `tasks`: migrating only the current thread skips the global
    /// threadgroup rwsem whose write side waits for an RCU grace period (measured 10-16 ms
    /// per start here for a `cgroup.procs` write, 0.2 ms for this).
    fn join_self(&self) -> Result<(), CgroupError> {
        self.add_process(std::process::id() as i32)
    }
    /// Pids of the processes in the cgroup (empty when it does not exist).
    fn procs(&self) -> Result<Vec<i32>, CgroupError>;
    /// Freezes every task and waits until the kernel reports them frozen.
    fn freeze(&self) -> Result<(), CgroupError>;
    fn thaw(&self) -> Result<(), CgroupError>;
    fn is_frozen(&self) -> Result<bool, CgroupError>;
    /// SIGKILLs every process in the cgroup and waits until it is empty.
    fn kill_all(&self) -> Result<(), CgroupError>;
    fn stats(&self) -> Result<Stats, CgroupError>;
    /// Whether the kernel OOM killer has killed a task in this cgroup.
    fn oom_killed(&self) -> Result<bool, CgroupError>;
    /// Removes the cgroup (and berth's parent when empty). Idempotent.
    fn remove(&self) -> Result<(), CgroupError>;
    /// Whether any of the container's cgroup dirs exist.
    fn exists(&self) -> bool;
    /// The host dirs of this container's cgroup (for leak checks and logs).
    fn paths(&self) -> Vec<PathBuf>;
    /// The in-container view to mount.
    fn view(&self) -> CgroupView;
    /// Whether the init must unshare a cgroup namespace (v2) after being placed.
    fn wants_cgroupns(&self) -> bool;
}

/// Every v1 controller name (super options also hold flags such as `xattr`, `noprefix`).
const V1_CONTROLLERS: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// One `cgroup`/`cgroup2` line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub mountpoint: PathBuf,
    pub v2: bool,
    /// v1 controllers (from the super options), e.g. `["cpu", "cpuacct"]`.
    pub controllers: Vec<String>,
}

/// Parses the cgroup mounts out of mountinfo text (`proc(5)`).
pub(crate) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let mountpoint = PathBuf::from(unescape_octal(l[4]));
        match r[0] {
            "cgroup2" => out.push(CgroupMount {
                mountpoint,
                v2: true,
                controllers: vec![],
            }),
            "cgroup" => {
                let controllers = r[2]
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o))
                    .map(String::from)
                    .collect();
                out.push(CgroupMount {
                    mountpoint,
                    v2: false,
                    controllers,
                });
            }
            _ => {}
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Overrides detection: the cgroup2 mountpoint to use (`BERTH_CGROUP_ROOT=/sys/fs/cgroup/unified`
/// runs containers on the v2 driver on a hybrid host). Every berth process of a container
/// (CLI, shim, exec helper) must see the same value; the helpers inherit it.
pub const CGROUP_ROOT_ENV: &str = "BERTH_CGROUP_ROOT";

/// The host's cgroup mounts, read from mountinfo once per process (a CLI command opens the
/// cgroup several times; the hierarchies do not move while berth runs).
fn cgroup_mounts() -> Result<&'static [CgroupMount], CgroupError> {
    static MOUNTS: std::sync::OnceLock<Vec<CgroupMount>> = std::sync::OnceLock::new();
    if let Some(m) = MOUNTS.get() {
        return Ok(m);
    }
    let text = crate::state::read_proc("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
    Ok(MOUNTS.get_or_init(|| parse_mountinfo(&text)))
}

/// Opens the cgroup of container `id` with the driver this host uses. Does not create it.
pub fn open(id: &str) -> Result<Box<dyn CgroupManager>, CgroupError> {
    if let Some(root) = std::env::var_os(CGROUP_ROOT_ENV).filter(|r| !r.is_empty()) {
        let root = PathBuf::from(root);
        if !root.join("cgroup.controllers").is_file() {
            return Err(CgroupError::NotCgroup2 { path: root });
        }
        return Ok(Box::new(v2::CgroupV2::at(root, id)));
    }
    let mounts = cgroup_mounts()?;
    let has_v1 = mounts.iter().any(|m| !m.v2);
    if has_v1 {
        return Ok(Box::new(v1::CgroupV1::from_mounts(mounts, id)?));
    }
    let root = mounts
        .iter()
        .find(|m| m.v2)
        .map(|m| m.mountpoint.clone())
        .ok_or(CgroupError::NoHierarchy)?;
    Ok(Box::new(v2::CgroupV2::at(root, id)))
}

pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    tracing::debug!(path = %path.display(), value, "cgroup write");
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// Writes each value to `path` in its own write(2) on one open file (cgroupfs takes one rule
/// per write: v1's `devices.allow` list costs one open instead of one per rule).
pub(crate) fn write_each(path: &Path, values: &[&str]) -> Result<(), CgroupError> {
    use std::io::Write;
    let err = |value: &str, source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| err(values.first().copied().unwrap_or_default(), e))?;
    for v in values {
        tracing::debug!(path = %path.display(), value = v, "cgroup write");
        match f.write(v.as_bytes()) {
            Ok(n) if n == v.len() => {}
            Ok(_) => return Err(err(v, std::io::ErrorKind::WriteZero.into())),
            Err(e) => return Err(err(v, e)),
        }
    }
    Ok(())
}

pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    Ok(read(path)?.trim().parse().unwrap_or(0))
}

/// Reads a `key value` line out of a flat-keyed file such as `memory.events`.
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

pub(crate) fn read_procs(path: &Path) -> Result<Vec<i32>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// mkdir -p for `<hierarchy>/berth/<id>`. Retries once when a concurrent `remove` deleted
/// the empty `berth` parent between our two mkdirs.
pub(crate) fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    for attempt in 0..3 {
        match std::fs::create_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 2 => continue,
            Err(source) => {
                return Err(CgroupError::Create {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// rmdir with retries: right after the last task exits the kernel may still report EBUSY.
pub(crate) fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => {
                tracing::debug!(path = %dir.display(), "cgroup removed");
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
    // The shared parent goes when it is empty, so nothing of berth's stays on the host;
    // another container may be using it (ENOTEMPTY, EBUSY), which is fine. A container
    // being created under it at that moment retries (`make_dir`).
    if let Some(parent) = dir.parent() {
        if parent.file_name().is_some_and(|n| n == PARENT) {
            let _ = std::fs::remove_dir(parent);
        }
    }
    Ok(())
}

/// Polls `check` until it returns true or 5 s pass.
pub(crate) fn wait_until(
    path: &Path,
    what: &'static str,
    mut check: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pause = Duration::from_micros(200);
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CgroupError::Timeout {
                path: path.to_path_buf(),
                what,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hybrid_mountinfo() {
        let text = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/memory rw shared:15 - cgroup cgroup rw,memory
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert!(m[0].v2);
        assert!(
            m[1].controllers.is_empty(),
            "name=systemd is not a controller"
        );
        assert_eq!(m[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(m[3].mountpoint, PathBuf::from("/sys/fs/cgroup/memory"));
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }

    #[test]
    fn keyed_reads_flat_files() {
        assert_eq!(
            keyed("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n", "oom_kill"),
            Some(2)
        );
        assert_eq!(keyed("a 1\n", "b"), None);
    }
}
