//! The on-disk state of one container: the only place that knows file names under
//! `<state dir>/<id>/`.
//!
//! Takes a state dir and an id, gives paths and typed records: the spec (`spec.json`, written
//! by the caller), the compiled seccomp program (`seccomp.bpf`), the running record
//! (`state.json`, written by the shim once the init runs), and the exit record (`exit.json`,
//! written by the shim after reaping). Writes are atomic (temp file + rename), so any process
//! can re-attach at any time. Neighbours: `container` (reads), `shim` (writes).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Written by the shim when the container's init runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningRecord {
    /// Host pid of the container's PID 1.
    pub pid: i32,
    /// Its start time (field 22 of /proc/PID/stat), to detect pid reuse.
    pub pid_start: u64,
    pub shim_pid: i32,
    pub shim_start: u64,
    /// RFC 3339.
    pub started_at: String,
}

/// Written by the shim when PID 1 exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Docker's convention: the exit code, or 128 + signal; 137 when OOM-killed.
    pub code: i32,
    /// The signal that killed PID 1, if any.
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at: String,
}

/// Paths of one container's state.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path, id: &str) -> Self {
        Self { dir: root.join(id) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn spec(&self) -> PathBuf {
        self.dir.join("spec.json")
    }
    pub fn seccomp(&self) -> PathBuf {
        self.dir.join("seccomp.bpf")
    }
    pub fn running(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// The overlay mountpoint (only ever mounted inside the container's mount namespace).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    pub fn default_log(&self) -> PathBuf {
        self.dir.join("container.log")
    }
    /// The shim's own stderr (its tracing output and panics).
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }
    /// With `auto_remove`: made with the state dir; waiters hold a shared flock on it while
    /// they read `exit.json`, the shim takes it exclusively before removing the state dir.
    pub fn wait_lock(&self) -> PathBuf {
        self.dir.join("wait.lock")
    }

    /// Opens [`wait_lock`](Self::wait_lock) for flock, creating it if `create`.
    pub fn open_wait_lock(&self, create: bool) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(create)
            .create(create)
            .truncate(false)
            .open(self.wait_lock())
    }

    pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Atomic write: temp file in the same dir, fsync-free rename.
    pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
        Self::write_atomic(
            path,
            &serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?,
        )
    }

    /// Atomic write of `bytes`: temp file in the same dir, fsync-free rename.
    pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        // Per process: two writers of one file never rename each other's half-written copy.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }
}

/// Reads a file under /proc. Its size shows as 0, so `std::fs::read_to_string` would read
/// it in steps growing from 32 bytes (seven reads for mountinfo); one 8 KiB buffer takes
/// most of them in one. Not UTF-8 is no error: a process names itself (`PR_SET_NAME`) and a
/// mount point can be any bytes; such bytes read as U+FFFD, the fields berth parses are ASCII.
pub fn read_proc(path: impl AsRef<Path>) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(8192);
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// The fields of a `/proc/PID/stat` line from the third (state) on. The command name may
/// contain spaces and parentheses: they start after the last ')'.
pub fn stat_fields(stat: &str) -> Option<std::str::Split<'_, char>> {
    Some(stat.get(stat.rfind(')')? + 2..)?.split(' '))
}

/// Start time of `pid` in clock ticks since boot, `None` if it does not exist.
pub fn pid_start_time(pid: i32) -> Option<u64> {
    let stat = read_proc(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.nth(19)?.parse().ok()
}

/// Whether `pid` is alive and is the process that started at `start` (not a zombie).
pub fn pid_alive(pid: i32, start: u64) -> bool {
    let Ok(stat) = read_proc(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(mut fields) = stat_fields(&stat) else {
        return false;
    };
    let state = fields.next().unwrap_or("");
    state != "Z" && state != "X" && fields.nth(18).and_then(|v| v.parse().ok()) == Some(start)
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable() {
        let me = std::process::id() as i32;
        let t = pid_start_time(me).unwrap();
        assert!(pid_alive(me, t));
        assert!(!pid_alive(me, t + 1));
        // An exited, unreaped child (a zombie) is not alive, nor is it once reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let start = pid_start_time(pid).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pid_alive(pid, start) {
            assert!(
                std::time::Instant::now() < deadline,
                "a zombie read as alive"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(pid_start_time(pid), Some(start), "still a zombie");
        child.wait().unwrap();
        assert!(!pid_alive(pid, start));
        assert_eq!(pid_start_time(pid), None);
    }

    /// A process may name itself in any bytes: it is still alive to berth (a non-UTF-8
    /// name made `stop` time out on a running container).
    #[test]
    fn a_process_named_in_non_utf8_is_alive() {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join(std::ffi::OsStr::from_bytes(b"sl\xffp"));
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        // argv[0] "sleep" for multi-call binaries; the name comes from the file exec'd.
        let mut child = std::process::Command::new(&link)
            .arg0("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // Once it has exec'd, its name is the link's.
        while !std::fs::read(format!("/proc/{pid}/comm"))
            .unwrap()
            .starts_with(b"sl\xff")
        {
            assert!(std::time::Instant::now() < deadline, "never exec'd");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let start = pid_start_time(pid);
        let alive = start.is_some_and(|s| pid_alive(pid, s));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(start.is_some() && alive, "start {start:?}, alive {alive}");
    }

    #[test]
    fn json_round_trip_is_atomic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("exit.json");
        let rec = ExitRecord {
            code: 137,
            signal: Some(9),
            oom_killed: true,
            finished_at: now_rfc3339(),
        };
        StateDir::write_json(&p, &rec).unwrap();
        assert_eq!(StateDir::read_json::<ExitRecord>(&p).unwrap(), Some(rec));
        assert!(!p.with_extension("tmp").exists());
        assert_eq!(
            StateDir::read_json::<ExitRecord>(&d.path().join("none")).unwrap(),
            None
        );
    }
}
