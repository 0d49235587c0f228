//! cgroup v1: one `berth/<id>` dir under each controller hierarchy berth uses (memory, cpu,
//! cpuacct, pids, freezer, devices).
//!
//! Takes the hierarchy list parsed from mountinfo (`cgroups::parse_mountinfo`), gives a
//! [`CgroupManager`]. The devices controller gets Docker's allowlist, because with
//! CAP_MKNOD a container could otherwise create and open host block devices.

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::debug;

use super::{
    keyed, make_dir, read, read_procs, read_u64, remove_dir, wait_until, write, write_each,
    CgroupError, CgroupManager, CgroupMount, CgroupView, Stats, PARENT,
};
use crate::spec::Limits;

/// Controllers berth creates a cgroup in.
const USED: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "freezer", "devices"];

/// Docker's default device rules (moby `oci/devices_linux.go` + runc's defaults): mknod of
/// anything, and read/write only on the harmless nodes berth creates in /dev.
const DEVICE_ALLOW: [&str; 11] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",    // null
    "c 1:5 rwm",    // zero
    "c 1:7 rwm",    // full
    "c 1:8 rwm",    // random
    "c 1:9 rwm",    // urandom
    "c 5:0 rwm",    // tty
    "c 5:2 rwm",    // ptmx
    "c 136:* rwm",  // pts
    "c 10:200 rwm", // tun
];

/// One v1 hierarchy and the container's dir in it.
#[derive(Debug, Clone)]
struct Hierarchy {
    /// e.g. `/sys/fs/cgroup/cpu,cpuacct`
    mountpoint: PathBuf,
    controllers: Vec<String>,
    /// `<mountpoint>/berth/<id>`
    dir: PathBuf,
}

/// A container's cgroups on v1.
#[derive(Debug, Clone)]
pub struct CgroupV1 {
    hierarchies: Vec<Hierarchy>,
}

impl CgroupV1 {
    pub(crate) fn from_mounts(mounts: &[CgroupMount], id: &str) -> Result<Self, CgroupError> {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for m in mounts.iter().filter(|m| !m.v2) {
            if !m.controllers.iter().any(|c| USED.contains(&c.as_str())) {
                continue;
            }
            // The same hierarchy can be mounted twice; keep the first.
            if hierarchies.iter().any(|h| h.controllers == m.controllers) {
                continue;
            }
            hierarchies.push(Hierarchy {
                mountpoint: m.mountpoint.clone(),
                controllers: m.controllers.clone(),
                dir: m.mountpoint.join(PARENT).join(id),
            });
        }
        if hierarchies.is_empty() {
            return Err(CgroupError::NoHierarchy);
        }
        Ok(Self { hierarchies })
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.hierarchies
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
            .map(|h| h.dir.as_path())
    }

    fn need(&self, controller: &'static str, what: &'static str) -> Result<&Path, CgroupError> {
        self.dir(controller)
            .ok_or_else(|| CgroupError::ControllerMissing {
                controller,
                what,
                path: PathBuf::from("/sys/fs/cgroup"),
            })
    }

    /// The dir whose `cgroup.procs` lists the container's tasks.
    fn procs_dir(&self) -> &Path {
        self.dir("freezer")
            .or_else(|| self.dir("memory"))
            .unwrap_or(&self.hierarchies[0].dir)
    }

    fn freezer_state(&self) -> Result<Option<String>, CgroupError> {
        let Some(d) = self.dir("freezer") else {
            return Ok(None);
        };
        let p = d.join("freezer.state");
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CgroupError::Read { path: p, source }),
        }
    }

    fn set_freezer(&self, state: &'static str) -> Result<(), CgroupError> {
        let d = self.need("freezer", "pause")?;
        let p = d.join("freezer.state");
        write(&p, state)?;
        wait_until(
            &p,
            if state == "FROZEN" { "freeze" } else { "thaw" },
            || Ok(self.freezer_state()?.as_deref() == Some(state)),
        )
    }
}

impl CgroupManager for CgroupV1 {
    fn create(&self, limits: &Limits, privileged: bool) -> Result<(), CgroupError> {
        for h in &self.hierarchies {
            make_dir(&h.dir)?;
            debug!(path = %h.dir.display(), "cgroup created");
        }
        if let Some(mem) = limits.memory {
            let d = self.need("memory", "memory")?;
            write(&d.join("memory.limit_in_bytes"), &mem.to_string())?;
            // memsw exists only with swap accounting; without it there is no swap to limit.
            let memsw = d.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                let total = match limits.memory_swap {
                    None => Some(mem.saturating_mul(2)),
                    Some(-1) => None,
                    Some(n) => Some((n.max(0) as u64).max(mem)),
                };
                if let Some(t) = total {
                    write(&memsw, &t.to_string())?;
                }
            }
        }
        if let Some(r) = limits.memory_reservation {
            let d = self.need("memory", "memory reservation")?;
            write(&d.join("memory.soft_limit_in_bytes"), &r.to_string())?;
        }
        if let Some(cpus) = limits.cpus {
            let d = self.need("cpu", "cpus")?;
            let period = 100_000u64;
            write(&d.join("cpu.cfs_period_us"), &period.to_string())?;
            let quota = ((cpus * period as f64).round() as u64).max(1000);
            write(&d.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if let Some(shares) = limits.cpu_shares {
            let d = self.need("cpu", "cpu shares")?;
            write(&d.join("cpu.shares"), &shares.max(2).to_string())?;
        }
        if let Some(pids) = limits.pids {
            let d = self.need("pids", "pids")?;
            let v = if pids <= 0 {
                "max".to_string()
            } else {
                pids.to_string()
            };
            write(&d.join("pids.max"), &v)?;
        }
        if let Some(d) = self.dir("devices") {
            if privileged {
                write(&d.join("devices.allow"), "a")?;
            } else {
                write(&d.join("devices.deny"), "a")?;
                write_each(&d.join("devices.allow"), &DEVICE_ALLOW)?;
            }
        }
        Ok(())
    }

    fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        for h in &self.hierarchies {
            write(&h.dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn join_self(&self) -> Result<(), CgroupError> {
        for h in &self.hierarchies {
            write(&h.dir.join("tasks"), "0")?;
        }
        Ok(())
    }

    fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        read_procs(&self.procs_dir().join("cgroup.procs"))
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        self.set_freezer("FROZEN")
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        self.set_freezer("THAWED")
    }

    fn is_frozen(&self) -> Result<bool, CgroupError> {
        Ok(matches!(
            self.freezer_state()?.as_deref(),
            Some("FROZEN") | Some("FREEZING")
        ))
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        if !self.procs_dir().exists() || self.procs()?.is_empty() {
            return Ok(());
        }
        // Freeze first so nothing forks between reading the list and the kills; SIGKILL is
        // delivered to frozen tasks once they thaw.
        let frozen = self.dir("freezer").is_some() && self.freeze().is_ok();
        for pid in self.procs()? {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if frozen {
            self.thaw()?;
        }
        let p = self.procs_dir().join("cgroup.procs");
        wait_until(&p, "become empty", || {
            let procs = self.procs()?;
            for pid in &procs {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            Ok(procs.is_empty())
        })
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let mut s = Stats::default();
        if let Some(d) = self.dir("memory") {
            s.memory_usage = read_u64(&d.join("memory.usage_in_bytes"))?;
            let lim = read_u64(&d.join("memory.limit_in_bytes"))?;
            // v1 reports "unlimited" as a huge page-rounded number.
            s.memory_limit = (lim < (1u64 << 62)).then_some(lim);
        }
        if let Some(d) = self.dir("cpuacct") {
            s.cpu_usage_ns = read_u64(&d.join("cpuacct.usage"))?;
        }
        if let Some(d) = self.dir("pids") {
            s.pids = read_u64(&d.join("pids.current"))?;
        }
        Ok(s)
    }

    fn oom_killed(&self) -> Result<bool, CgroupError> {
        let Some(d) = self.dir("memory") else {
            return Ok(false);
        };
        let p = d.join("memory.oom_control");
        if !p.exists() {
            return Ok(false);
        }
        // `oom_kill` (kernel ≥ 4.13) counts kills in this cgroup.
        Ok(keyed(&read(&p)?, "oom_kill").unwrap_or(0) > 0)
    }

    fn remove(&self) -> Result<(), CgroupError> {
        let mut first = None;
        for h in &self.hierarchies {
            if let Err(e) = remove_dir(&h.dir) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn exists(&self) -> bool {
        self.hierarchies.iter().any(|h| h.dir.exists())
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.dir.clone()).collect()
    }

    fn view(&self) -> CgroupView {
        let mut binds = Vec::new();
        let mut links = Vec::new();
        for h in &self.hierarchies {
            let name = h
                .mountpoint
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| h.controllers.join(","));
            for c in &h.controllers {
                if *c != name {
                    links.push((c.clone(), name.clone()));
                }
            }
            binds.push((name, h.dir.clone()));
        }
        CgroupView::V1 { binds, links }
    }

    fn wants_cgroupns(&self) -> bool {
        // Docker on v1 keeps the host cgroup namespace; the binds give the container its view.
        false
    }
}
