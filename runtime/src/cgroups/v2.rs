//! cgroup v2: one `berth/<id>` dir under the unified hierarchy.
//!
//! Takes the v2 mountpoint and a container id, gives a [`CgroupManager`]. Controllers are
//! enabled in `cgroup.subtree_control` of the root and of `berth/` only when a limit needs
//! them. Freezing (`cgroup.freeze`) and killing (`cgroup.kill`, kernel ≥ 5.14) are core v2
//! files and need no controller. Device rules on v2 are a BPF_CGROUP_DEVICE program
//! (`devices`), attached when the cgroup is created.

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::debug;

use super::{
    keyed, make_dir, read, read_procs, remove_dir, wait_until, write, CgroupError, CgroupManager,
    CgroupView, Stats, PARENT,
};
use crate::spec::Limits;

/// A container's cgroup on v2.
#[derive(Debug, Clone)]
pub struct CgroupV2 {
    root: PathBuf,
    dir: PathBuf,
}

impl CgroupV2 {
    /// The cgroup `berth/<id>` under the v2 hierarchy mounted at `root`.
    pub fn at(root: PathBuf, id: &str) -> Self {
        let dir = root.join(PARENT).join(id);
        Self { root, dir }
    }

    /// Enables `controller` for children of `dir`, if `dir` offers it.
    fn enable(
        &self,
        dir: &Path,
        controller: &'static str,
        what: &'static str,
    ) -> Result<(), CgroupError> {
        let available = read(&dir.join("cgroup.controllers"))?;
        if !available.split_whitespace().any(|c| c == controller) {
            return Err(CgroupError::ControllerMissing {
                controller,
                what,
                path: dir.to_path_buf(),
            });
        }
        let enabled = read(&dir.join("cgroup.subtree_control"))?;
        if !enabled.split_whitespace().any(|c| c == controller) {
            write(
                &dir.join("cgroup.subtree_control"),
                &format!("+{controller}"),
            )?;
        }
        Ok(())
    }

    fn controller(&self, controller: &'static str, what: &'static str) -> Result<(), CgroupError> {
        self.enable(&self.root, controller, what)?;
        self.enable(&self.root.join(PARENT), controller, what)
    }
}

/// Docker's conversion of cpu shares (2..262144) to a v2 weight (1..10000).
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

impl CgroupManager for CgroupV2 {
    fn create(&self, limits: &Limits, privileged: bool) -> Result<(), CgroupError> {
        make_dir(&self.root.join(PARENT))?;
        let mem = limits.memory.is_some() || limits.memory_reservation.is_some();
        if mem {
            self.controller("memory", "memory")?;
        }
        if limits.cpus.is_some() || limits.cpu_shares.is_some() {
            self.controller("cpu", "cpu")?;
        }
        if limits.pids.is_some() {
            self.controller("pids", "pids")?;
        }
        make_dir(&self.dir)?;
        debug!(path = %self.dir.display(), "cgroup created");
        if !privileged {
            super::devices::attach(&self.dir, &super::devices::docker_default()).map_err(
                |source| CgroupError::Devices {
                    path: self.dir.clone(),
                    source,
                },
            )?;
        }
        let d = &self.dir;
        if let Some(m) = limits.memory {
            write(&d.join("memory.max"), &m.to_string())?;
            let swap = d.join("memory.swap.max");
            if swap.exists() {
                let v = match limits.memory_swap {
                    None => m.to_string(),
                    Some(-1) => "max".to_string(),
                    Some(n) => (n.max(0) as u64).saturating_sub(m).to_string(),
                };
                write(&swap, &v)?;
            }
        }
        if let Some(r) = limits.memory_reservation {
            write(&d.join("memory.low"), &r.to_string())?;
        }
        if let Some(c) = limits.cpus {
            let period = 100_000u64;
            let quota = ((c * period as f64).round() as u64).max(1000);
            write(&d.join("cpu.max"), &format!("{quota} {period}"))?;
        }
        if let Some(s) = limits.cpu_shares {
            write(&d.join("cpu.weight"), &shares_to_weight(s).to_string())?;
        }
        if let Some(p) = limits.pids {
            let v = if p <= 0 {
                "max".to_string()
            } else {
                p.to_string()
            };
            write(&d.join("pids.max"), &v)?;
        }
        Ok(())
    }

    fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        read_procs(&self.dir.join("cgroup.procs"))
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        write(&self.dir.join("cgroup.freeze"), "1")?;
        wait_until(&self.dir, "freeze", || self.is_frozen())
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        write(&self.dir.join("cgroup.freeze"), "0")?;
        wait_until(&self.dir, "thaw", || Ok(!self.is_frozen()?))
    }

    fn is_frozen(&self) -> Result<bool, CgroupError> {
        let p = self.dir.join("cgroup.events");
        if !p.exists() {
            return Ok(false);
        }
        Ok(keyed(&read(&p)?, "frozen") == Some(1))
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        if !self.dir.exists() || self.procs()?.is_empty() {
            return Ok(());
        }
        let killfile = self.dir.join("cgroup.kill");
        if killfile.exists() {
            write(&killfile, "1")?;
        } else {
            // Before 5.14: freeze, kill each task, thaw.
            self.freeze()?;
            for pid in self.procs()? {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            self.thaw()?;
        }
        wait_until(&self.dir, "become empty", || {
            let procs = self.procs()?;
            for pid in &procs {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            Ok(procs.is_empty())
        })
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let d = &self.dir;
        let opt = |name: &str| -> Option<String> { std::fs::read_to_string(d.join(name)).ok() };
        let mut s = Stats::default();
        if let Some(v) = opt("memory.current") {
            s.memory_usage = v.trim().parse().unwrap_or(0);
        }
        s.memory_limit = opt("memory.max").and_then(|v| v.trim().parse().ok());
        if let Some(v) = opt("cpu.stat") {
            s.cpu_usage_ns = keyed(&v, "usage_usec").unwrap_or(0) * 1000;
        }
        s.pids = match opt("pids.current") {
            Some(v) => v.trim().parse().unwrap_or(0),
            None => self.procs()?.len() as u64,
        };
        Ok(s)
    }

    fn oom_killed(&self) -> Result<bool, CgroupError> {
        let p = self.dir.join("memory.events");
        if !p.exists() {
            return Ok(false);
        }
        Ok(keyed(&read(&p)?, "oom_kill").unwrap_or(0) > 0)
    }

    fn remove(&self) -> Result<(), CgroupError> {
        remove_dir(&self.dir)
    }

    fn exists(&self) -> bool {
        self.dir.exists()
    }

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn view(&self) -> CgroupView {
        CgroupView::V2
    }

    fn wants_cgroupns(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_conversion_matches_docker() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
