//! [`ContainerSpec`]: everything the runtime needs to start one container.
//!
//! Built by the engine (`engine::spec`, from a compose service + image + network attachment),
//! written as JSON to the container's state dir and read back by the shim and exec helpers,
//! so every type here is serde. It knows nothing of Compose: labels are an opaque map.
//! `validate` checks what can be checked without touching the host, before anything starts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::capabilities::{CapSet, CapabilityError};

/// A container id: 1–128 characters of `[A-Za-z0-9_.-]`, starting alphanumeric. It names the
/// state dir and cgroups, so it can never contain `/` or be `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerId(String);

impl ContainerId {
    pub fn new(s: impl Into<String>) -> Result<Self, SpecError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if ok {
            Ok(Self(s))
        } else {
            Err(SpecError::InvalidId { id: s })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ContainerId {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        Self::new(s)
    }
}

impl From<ContainerId> for String {
    fn from(id: ContainerId) -> String {
        id.0
    }
}

impl FromStr for ContainerId {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Self::new(s)
    }
}

/// The root filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rootfs {
    /// overlayfs of image layer dirs (`lower`, bottom → top) with a per-container `upper` and
    /// `work` dir (same filesystem). Mounted inside the container's mount namespace only.
    Overlay {
        lower: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    /// A plain directory, bind-mounted (changes persist in it).
    Dir(PathBuf),
}

/// An extra mount inside the container (volumes, binds, tmpfs, generated /etc files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Mount {
    /// A recursive bind mount of a host file or directory.
    Bind {
        source: PathBuf,
        /// Absolute path inside the container; resolved without leaving the rootfs.
        target: PathBuf,
        #[serde(default)]
        read_only: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        target: PathBuf,
        /// Size in bytes (kernel default: half of RAM).
        #[serde(default)]
        size: Option<u64>,
        /// Permission bits of the root dir (default 1777, as Docker).
        #[serde(default)]
        mode: Option<u32>,
    },
}

impl Mount {
    pub fn target(&self) -> &std::path::Path {
        match self {
            Mount::Bind { target, .. } | Mount::Tmpfs { target, .. } => target,
        }
    }
}

/// Which network namespace the container gets.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// A new, empty network namespace (only `lo`, down). The engine attaches veths later.
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// Join an existing namespace, given as a file (e.g. a `/run/netns/<name>` bind mount or
    /// `/proc/<pid>/ns/net`).
    Join(PathBuf),
}

/// Resource limits (cgroups). `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes.
    #[serde(default)]
    pub memory: Option<u64>,
    /// Soft limit in bytes (v1 `memory.soft_limit_in_bytes`, v2 `memory.low`).
    #[serde(default)]
    pub memory_reservation: Option<u64>,
    /// Memory + swap in bytes; `-1` unlimited. Default as Docker: twice `memory`.
    #[serde(default)]
    pub memory_swap: Option<i64>,
    /// CPUs as a fraction (`1.5`), turned into a CFS quota over a 100 ms period.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Relative CPU weight, Docker's scale (default 1024).
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// Maximum number of tasks.
    #[serde(default)]
    pub pids: Option<i64>,
}

/// Seccomp profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    /// Docker's default profile (x86_64), adjusted to the capabilities as Docker does.
    #[default]
    DockerDefault,
    /// No filter.
    Unconfined,
}

/// One resource limit, e.g. `nofile`. Clamped to the caller's hard limit at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Docker's names: `nofile`, `nproc`, `core`, `memlock`, `stack`, `fsize`, …
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// Where and how the shim writes the container's output.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogConfig {
    /// JSON-lines log file; default `<state>/<id>/container.log`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Rotate when the file passes this many bytes (default: never).
    #[serde(default)]
    pub max_size: Option<u64>,
    /// Rotated files to keep (`.1` … `.N`), default 1.
    #[serde(default)]
    pub max_files: Option<u32>,
}

/// Everything needed to create and start one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub id: ContainerId,
    pub rootfs: Rootfs,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// argv; `args[0]` is looked up in the container's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE`. `PATH`, `HOSTNAME` and `HOME` get Docker's defaults when absent.
    #[serde(default)]
    pub env: Vec<String>,
    /// Docker's forms: `name`, `uid`, `uid:gid`, `name:group`; default root.
    #[serde(default)]
    pub user: Option<String>,
    /// Absolute; created if missing (as Docker does). Default `/`.
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub domainname: Option<String>,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// All capabilities, no seccomp, no masked or read-only paths, writable /sys and cgroupfs,
    /// all devices allowed in the devices cgroup. Host device nodes are *not* bound in.
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub seccomp: Seccomp,
    /// `security_opt: [no-new-privileges]`; Docker leaves it off.
    #[serde(default)]
    pub no_new_privileges: bool,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// `net.*` (only with a private network namespace) and IPC sysctls (`kernel.shm*`,
    /// `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`).
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default)]
    pub read_only_rootfs: bool,
    /// A pseudo-terminal (in the container's own devpts) as stdin/stdout/stderr and
    /// controlling terminal; the shim holds the master and logs its output as `stdout`.
    #[serde(default)]
    pub tty: bool,
    /// `stdin_open` / `run -i`: keep the container's stdin open for an attach client
    /// (`crate::attach`). Without a tty it is a pipe whose write end the shim hands to the
    /// first client (EOF when that client closes it); with a tty the pty already is stdin.
    /// Without it, stdin is `/dev/null` (or the pty, with `tty`).
    #[serde(default)]
    pub open_stdin: bool,
    /// A client attaches right after the start (`run` in the foreground): with a tty, the
    /// output written before it connects (up to 1 MiB) is kept for it, so it sees it all.
    #[serde(default)]
    pub attach: bool,
    /// Initial pty size `[rows, cols]` (Docker's `ConsoleSize`), set before the start report.
    #[serde(default)]
    pub console_size: Option<[u16; 2]>,
    /// Signal name (`SIGTERM`, `TERM`) or number; default SIGTERM.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Run berth's tiny init as PID 1 (forwards signals, reaps zombies).
    #[serde(default)]
    pub init: bool,
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    #[serde(default)]
    pub log: LogConfig,
    /// Opaque to the runtime; the engine keeps compose labels here.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Directories of this container alone (its writable layer), removed with it.
    #[serde(default)]
    pub owned_dirs: Vec<PathBuf>,
    /// The shim removes the container once it has exited (`docker run --rm`).
    #[serde(default)]
    pub auto_remove: bool,
}

/// Errors found in a spec before anything runs.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid container id {id:?}: use 1-128 characters of [A-Za-z0-9_.-], starting alphanumeric")]
    InvalidId { id: String },
    #[error("container {id}: args must not be empty")]
    NoArgs { id: ContainerId },
    #[error("container {id}: mount target {target:?} must be an absolute path")]
    RelativeTarget { id: ContainerId, target: PathBuf },
    #[error("container {id}: working dir {dir:?} must be an absolute path")]
    RelativeWorkdir { id: ContainerId, dir: String },
    #[error("container {id}: overlay rootfs needs at least one lower layer")]
    NoLayers { id: ContainerId },
    #[error("container {id}: unknown signal {signal:?}")]
    Signal { id: ContainerId, signal: String },
    #[error("container {id}: unknown rlimit {name:?}")]
    Rlimit { id: ContainerId, name: String },
    #[error(
        "container {id}: sysctl {key:?} is not namespaced or not allowed with this network mode"
    )]
    Sysctl { id: ContainerId, key: String },
    #[error("container {id}: environment entry {entry:?} has no '='")]
    Env { id: ContainerId, entry: String },
    #[error("container {id}: invalid capability list")]
    Capability {
        id: ContainerId,
        #[source]
        source: CapabilityError,
    },
    #[error("container {id}: invalid cpus value {cpus}")]
    Cpus { id: ContainerId, cpus: f64 },
}

/// Parses `SIGTERM`, `TERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let up = s.trim().to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    Signal::from_str(&name).ok()
}

/// Maps Docker's rlimit names to `RLIMIT_*`.
pub(crate) fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(
        match name.to_ascii_lowercase().trim_start_matches("rlimit_") {
            "as" => libc::RLIMIT_AS,
            "core" => libc::RLIMIT_CORE,
            "cpu" => libc::RLIMIT_CPU,
            "data" => libc::RLIMIT_DATA,
            "fsize" => libc::RLIMIT_FSIZE,
            "locks" => libc::RLIMIT_LOCKS,
            "memlock" => libc::RLIMIT_MEMLOCK,
            "msgqueue" => libc::RLIMIT_MSGQUEUE,
            "nice" => libc::RLIMIT_NICE,
            "nofile" => libc::RLIMIT_NOFILE,
            "nproc" => libc::RLIMIT_NPROC,
            "rss" => libc::RLIMIT_RSS,
            "rtprio" => libc::RLIMIT_RTPRIO,
            "rttime" => libc::RLIMIT_RTTIME,
            "sigpending" => libc::RLIMIT_SIGPENDING,
            "stack" => libc::RLIMIT_STACK,
            _ => return None,
        },
    )
}

impl ContainerSpec {
    /// A spec with Docker's defaults for everything but id, rootfs and args.
    pub fn new(id: ContainerId, rootfs: Rootfs, args: Vec<String>) -> Self {
        Self {
            id,
            rootfs,
            mounts: Vec::new(),
            args,
            env: Vec::new(),
            user: None,
            working_dir: None,
            hostname: None,
            domainname: None,
            network: Network::None,
            limits: Limits::default(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            privileged: false,
            seccomp: Seccomp::DockerDefault,
            no_new_privileges: false,
            rlimits: Vec::new(),
            sysctls: BTreeMap::new(),
            read_only_rootfs: false,
            tty: false,
            open_stdin: false,
            attach: false,
            console_size: None,
            stop_signal: None,
            init: false,
            oom_score_adj: None,
            log: LogConfig::default(),
            labels: BTreeMap::new(),
            owned_dirs: Vec::new(),
            auto_remove: false,
        }
    }

    /// The capability set after `privileged`, `cap_add` and `cap_drop`.
    /// The capability set after Docker's rules, limited to what this process can hand on:
    /// `privileged` and `cap_add: [ALL]` mean "every capability berth has"; a capability
    /// named in `cap_add` that berth lacks is an error naming it.
    pub fn capabilities(&self) -> Result<CapSet, SpecError> {
        let err = |source| SpecError::Capability {
            id: self.id.clone(),
            source,
        };
        let want = CapSet::resolve(self.privileged, &self.cap_add, &self.cap_drop).map_err(err)?;
        let avail = CapSet::available();
        let everything =
            self.privileged || self.cap_add.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
        if !everything {
            // Only a capability named in `cap_add` is an error when berth lacks it; the
            // defaults quietly shrink to what berth has (e.g. run from a restricted unit).
            for name in &self.cap_add {
                let cap: crate::capabilities::Capability = name.parse().map_err(err)?;
                if !avail.contains(cap) {
                    return Err(err(crate::capabilities::CapabilityError::Unavailable {
                        cap,
                    }));
                }
            }
        }
        Ok(want.intersect(avail))
    }

    /// The stop signal (default SIGTERM).
    pub fn stop_signal(&self) -> Result<Signal, SpecError> {
        match &self.stop_signal {
            None => Ok(Signal::SIGTERM),
            Some(s) => parse_signal(s).ok_or_else(|| SpecError::Signal {
                id: self.id.clone(),
                signal: s.clone(),
            }),
        }
    }

    /// Checks everything that needs no host access.
    pub fn validate(&self) -> Result<(), SpecError> {
        let id = || self.id.clone();
        if self.args.is_empty() {
            return Err(SpecError::NoArgs { id: id() });
        }
        if let Rootfs::Overlay { lower, .. } = &self.rootfs {
            if lower.is_empty() {
                return Err(SpecError::NoLayers { id: id() });
            }
        }
        for m in &self.mounts {
            if !m.target().is_absolute() {
                return Err(SpecError::RelativeTarget {
                    id: id(),
                    target: m.target().to_path_buf(),
                });
            }
        }
        if let Some(dir) = &self.working_dir {
            if !dir.starts_with('/') {
                return Err(SpecError::RelativeWorkdir {
                    id: id(),
                    dir: dir.clone(),
                });
            }
        }
        for e in &self.env {
            if !e.contains('=') {
                return Err(SpecError::Env {
                    id: id(),
                    entry: e.clone(),
                });
            }
        }
        self.stop_signal()?;
        self.capabilities()?;
        for r in &self.rlimits {
            if rlimit_resource(&r.name).is_none() {
                return Err(SpecError::Rlimit {
                    id: id(),
                    name: r.name.clone(),
                });
            }
        }
        if let Some(c) = self.limits.cpus {
            if !(c.is_finite() && c > 0.0) {
                return Err(SpecError::Cpus { id: id(), cpus: c });
            }
        }
        for key in self.sysctls.keys() {
            let ipc = key.starts_with("kernel.shm")
                || key.starts_with("kernel.msg")
                || key == "kernel.sem"
                || key.starts_with("fs.mqueue.");
            let net = key.starts_with("net.") && self.network != Network::Host;
            if !(ipc || net) || key.contains("..") || key.contains('/') {
                return Err(SpecError::Sysctl {
                    id: id(),
                    key: key.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec::new(
            ContainerId::new("web-1").unwrap(),
            Rootfs::Dir("/tmp/x".into()),
            vec!["true".into()],
        )
    }

    #[test]
    fn ids_are_checked() {
        assert!(ContainerId::new("a.b_c-1").is_ok());
        for bad in ["", "..", "-a", "a/b", &"x".repeat(129)] {
            assert!(ContainerId::new(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<ContainerId>("\"../x\"").is_err());
    }

    #[test]
    fn spec_round_trips_through_json() {
        let mut s = spec();
        s.mounts.push(Mount::Tmpfs {
            target: "/run".into(),
            size: Some(1 << 20),
            mode: None,
        });
        s.network = Network::Join("/run/netns/bt0".into());
        s.labels
            .insert("com.docker.compose.service".into(), "web".into());
        let back: ContainerSpec =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn validation_catches_bad_input() {
        let mut s = spec();
        s.validate().unwrap();
        s.stop_signal = Some("SIGNOPE".into());
        assert!(matches!(s.validate(), Err(SpecError::Signal { .. })));
        let mut s = spec();
        s.sysctls.insert("kernel.hostname".into(), "x".into());
        assert!(matches!(s.validate(), Err(SpecError::Sysctl { .. })));
        let mut s = spec();
        s.network = Network::Host;
        s.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        assert!(matches!(s.validate(), Err(SpecError::Sysctl { .. })));
        let mut s = spec();
        s.tty = true;
        s.validate().expect("a tty is supported");
    }

    #[test]
    fn signals_parse_like_docker() {
        assert_eq!(parse_signal("TERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("sigusr1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("FOO"), None);
    }
}
