//! The caller's side: [`Runtime`] starts containers, [`Container`] handles operate on them.
//!
//! Takes a [`ContainerSpec`] (start) or an id (re-attach from the state dir, in any process),
//! gives handles with `status`, `signal`, `stop`, `pause`/`unpause`, `exec`, `stats`, `wait`
//! and `delete`. Safe to call from a multi-threaded (tokio) process: it never forks to do
//! namespace work itself, it spawns berth's binary in a hidden mode (`shim`, `exec`), from a
//! sealed view of the helper (`sealed_exe`). Blocking calls (`run`, `wait`, `stop`, `exec`) should go
//! through `spawn_blocking` in async code. Neighbours: `state` (files), `cgroups`, `seccomp`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, info_span};

use crate::cgroups::{self, CgroupError, Stats};
use crate::exec::{ExecOutput, ExecSpec};
use crate::protocol::{self, ErrorChain, ShimReport};
use crate::spec::{ContainerId, ContainerSpec, Seccomp, SpecError};
use crate::state::{pid_alive, ExitRecord, RunningRecord, StateDir};

/// Errors of runtime operations; each names the container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid container spec")]
    Spec(#[from] SpecError),
    #[error("container {id} already exists")]
    AlreadyExists { id: String },
    #[error("no such container: {id}")]
    NotFound { id: String },
    #[error("container {id}: cannot access {path}")]
    State {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id}: cannot compile the seccomp profile")]
    Seccomp {
        id: String,
        #[source]
        source: crate::seccomp::SeccompError,
    },
    #[error("container {id}: cannot start helper {helper}")]
    Spawn {
        id: String,
        helper: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id}: start failed: {chain}")]
    Start { id: String, chain: ErrorChain },
    #[error("container {id}: exec failed: {chain}")]
    Exec { id: String, chain: ErrorChain },
    #[error("container {id} is not running")]
    NotRunning { id: String },
    #[error("container {id} is paused")]
    Paused { id: String },
    #[error("container {id}: cgroup operation failed")]
    Cgroup {
        id: String,
        #[source]
        source: CgroupError,
    },
    #[error("container {id}: cannot send {signal}")]
    Signal {
        id: String,
        signal: Signal,
        #[source]
        source: nix::Error,
    },
    #[error("container {id}: timed out waiting for exit")]
    Timeout { id: String },
    #[error("container {id}: its shim died without recording an exit status")]
    ShimGone { id: String },
    #[error("container {id} was removed when it exited (--rm)")]
    Removed { id: String },
    #[error("container {id}: delete left errors: {}", errors.join("; "))]
    Delete { id: String, errors: Vec<String> },
}

type Result<T> = std::result::Result<T, RuntimeError>;

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Starting: the state dir exists but the shim has not recorded the init yet.
    Created,
    Running,
    Paused,
    Exited(ExitRecord),
    /// The init is gone and no exit status was recorded (the shim was killed).
    Dead,
}

/// The helper binary for the shim and exec modes: `berth-shim` beside the running
/// executable when it is there, else the running executable itself. Every container start
/// maps the helper from a sealed view (CVE-2019-5736), so a small helper (a couple of
/// MB with only this crate in it, against the CLI's 20 MB) is start-up time saved.
pub fn default_helper() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        let shim = exe.with_file_name(HELPER_NAME);
        if shim != exe && shim.is_file() {
            return shim;
        }
    }
    PathBuf::from("/proc/self/exe")
}

/// An empty dir in the state root: the second lower layer of the helper's sealing overlay
/// (`sealed_exe`). Not a valid container id, so listings skip it.
const SEAL_SCRATCH: &str = ".seal-lower";

/// File name of the dedicated helper binary.
pub const HELPER_NAME: &str = "berth-shim";

/// Entry point: a state dir and the helper binary.
#[derive(Debug, Clone)]
pub struct Runtime {
    state_root: PathBuf,
    helper: PathBuf,
    seal_helper: bool,
    detach_shims: bool,
}

impl Runtime {
    /// Containers live in `state_root/<id>/`. Helpers run from [`default_helper`]: the
    /// small `berth-shim` binary installed next to this executable, else this executable.
    pub fn new(state_root: impl Into<PathBuf>) -> Self {
        Self {
            state_root: state_root.into(),
            helper: default_helper(),
            seal_helper: true,
            detach_shims: true,
        }
    }

    /// Uses another berth binary for the hidden modes (tests pass `CARGO_BIN_EXE_berth`).
    pub fn with_helper(mut self, helper: impl Into<PathBuf>) -> Self {
        self.helper = helper.into();
        self
    }

    /// Whether helpers run from a sealed view of the helper (default true; CVE-2019-5736).
    pub fn with_sealed_helper(mut self, seal: bool) -> Self {
        self.seal_helper = seal;
        self
    }

    /// Whether a shim forks once more to leave this process (default true). A long-lived
    /// caller (the supervisor, a test harness) needs it: an ended shim that is still its
    /// child stays a zombie until it reaps it. A caller that exits soon after (the CLI's
    /// `container` commands) can let its shims stay its children, in their own session,
    /// and save that fork on every start; init or the nearest subreaper reaps them once
    /// the caller is gone.
    pub fn with_detached_shims(mut self, detach: bool) -> Self {
        self.detach_shims = detach;
        self
    }

    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    fn err_state(id: &str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let (id, path) = (id.to_string(), path.to_path_buf());
        move |source| RuntimeError::State { id, path, source }
    }

    /// The path to exec berth's helper binary by: its sealed view (`/proc/self/fd/N`, with
    /// the fd to keep open until the exec) or, unsealed, the binary itself.
    fn helper_program(&self) -> std::io::Result<(PathBuf, Option<std::sync::Arc<OwnedFd>>)> {
        Ok(if self.seal_helper {
            let fd =
                crate::sealed_exe::sealed_copy(&self.helper, &self.state_root.join(SEAL_SCRATCH))?;
            (
                PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
                Some(fd),
            )
        } else {
            (self.helper.clone(), None)
        })
    }

    /// Starts berth's binary in hidden mode `mode` with `stdio` as fds 0-2 and `fds` from
    /// fd 3 on, then the sealed view's mount fd (`sealed_exe::take_mount`; stdin's fd when
    /// there is none), by `posix_spawn` (glibc: a vfork-style clone) rather than fork:
    /// this process's page tables are not copied and its memory does not turn
    /// copy-on-write, which costs a large CLI or the supervisor a fault per page it touches
    /// afterwards. The signal mask is cleared and SIGPIPE reset to default, as
    /// `std::process::Command` does; the child starts in its own session.
    fn spawn_helper(
        &self,
        mode: &str,
        args: &[&str],
        stdio: [BorrowedFd<'_>; 3],
        fds: &[BorrowedFd<'_>],
    ) -> std::io::Result<Pid> {
        use nix::spawn::{posix_spawn, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let (program, _keep) = self.helper_program()?;
        // Dropped after the spawn, when the child holds it too: no dissolving wait here.
        let mount = self
            .seal_helper
            .then(|| crate::sealed_exe::take_mount(&self.helper))
            .flatten();
        let last = [mount.as_ref().map_or(stdio[0], |m| m.as_fd())];
        // Sources above the targets: dup2(fd, fd) would keep FD_CLOEXEC on older glibc, and
        // an earlier dup2 must not overwrite a later source.
        let sources = stdio.iter().chain(fds).chain(&last).map(|fd| {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nobody else owns.
                .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) })
        });
        let mut actions = PosixSpawnFileActions::init()?;
        let mut owned = Vec::with_capacity(4 + fds.len());
        for (target, fd) in sources.enumerate() {
            let fd = fd?;
            actions.add_dup2(fd.as_raw_fd(), target as i32)?;
            owned.push(fd);
        }
        let mut attr = PosixSpawnAttr::init()?;
        let mut default = nix::sys::signal::SigSet::empty();
        default.add(Signal::SIGPIPE);
        attr.set_sigdefault(&default)?;
        attr.set_sigmask(&nix::sys::signal::SigSet::empty())?;
        // Its own session from the start (glibc's POSIX_SPAWN_SETSID, which nix does not
        // name): a Ctrl-C at the caller's terminal cannot reach it before it is set up.
        let setsid = PosixSpawnFlags::from_bits_retain(libc::c_int::from(libc::POSIX_SPAWN_SETSID));
        attr.set_flags(
            PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF
                | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
                | setsid,
        )?;
        let cstr = |b: &[u8]| CString::new(b).map_err(std::io::Error::other);
        // argv[0] "berth" whatever the exec path (`/proc/self/fd/N`), so `ps` and leak checks see berth.
        let argv = ["berth", mode]
            .iter()
            .chain(args)
            .map(|a| cstr(a.as_bytes()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let envp = std::env::vars_os()
            .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(posix_spawn(
            program.as_path(),
            &actions,
            &attr,
            &argv,
            &envp,
        )?)
    }

    /// A command for berth's binary in hidden mode `mode`, with `report` on fd 3.
    fn helper_command(
        &self,
        mode: &str,
        args: &[&str],
        report: &OwnedFd,
    ) -> std::io::Result<(Command, Option<std::sync::Arc<OwnedFd>>)> {
        let (program, keep) = self.helper_program()?;
        let mut cmd = Command::new(program);
        // argv[0] "berth" whatever the exec path (`/proc/self/fd/N`), so `ps` and leak checks see berth.
        cmd.arg0("berth").arg(mode).args(args);
        let fd = report.as_raw_fd();
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if fd == crate::shim::REPORT_FD {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, crate::shim::REPORT_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok((cmd, keep))
    }

    /// Creates and starts a container; returns once its command runs (or the error chain
    /// from inside the new container). The container outlives this process.
    pub fn run(&self, spec: &ContainerSpec) -> Result<Container> {
        self.run_holding(spec).map(|(c, _)| c)
    }

    /// [`Runtime::run`], and for an `auto_remove` container an [`ExitHold`] taken before the
    /// start: however soon the container exits, its shim keeps the state dir (the exit
    /// record and the log) until the hold is dropped; the cgroup, mounts and writable layer
    /// may go before. `docker run --rm` in the foreground: the container removes itself
    /// even if the caller dies, and the caller still gets the code.
    pub fn run_holding(&self, spec: &ContainerSpec) -> Result<(Container, Option<ExitHold>)> {
        spec.validate()?;
        let id = spec.id.as_str();
        let _span = info_span!("container_run", container = id).entered();
        let state = self.new_state_dir(id)?;
        let hold = if spec.auto_remove {
            match ExitHold::take(&state) {
                Ok(h) => Some(h),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(state.dir());
                    return Err(Self::err_state(id, &state.wait_lock())(e));
                }
            }
        } else {
            None
        };
        match self.start_in(&state, spec) {
            Ok((c, removed)) => Ok((c, hold.map(|h| ExitHold { removed, ..h }))),
            Err(e) => {
                drop(hold);
                let _ = std::fs::remove_dir_all(state.dir());
                Err(e)
            }
        }
    }

    /// Creates a container without starting it (`docker create`): the spec is stored and
    /// the container shows as [`Status::Created`] until [`Runtime::start`].
    pub fn create(&self, spec: &ContainerSpec) -> Result<Container> {
        spec.validate()?;
        let id = spec.id.as_str();
        let state = self.new_state_dir(id)?;
        if let Err(e) = StateDir::write_json(&state.spec(), spec) {
            let _ = std::fs::remove_dir_all(state.dir());
            return Err(Self::err_state(id, &state.spec())(e));
        }
        // Made with the state dir, before any shim: waiters never create it (see
        // `wait_removing`). `run_holding` makes it with its hold.
        if spec.auto_remove {
            if let Err(e) = state.open_wait_lock(true) {
                let _ = std::fs::remove_dir_all(state.dir());
                return Err(Self::err_state(id, &state.wait_lock())(e));
            }
        }
        self.get(id)
    }

    /// The state dir of a new container; an error if `id` exists.
    fn new_state_dir(&self, id: &str) -> Result<StateDir> {
        let state = StateDir::new(&self.state_root, id);
        std::fs::create_dir_all(&self.state_root).map_err(Self::err_state(id, &self.state_root))?;
        match std::fs::create_dir(state.dir()) {
            Ok(()) => Ok(state),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(RuntimeError::AlreadyExists { id: id.to_string() })
            }
            Err(e) => Err(Self::err_state(id, state.dir())(e)),
        }
    }

    /// Starts a container made by [`Runtime::create`]; it stays created if this fails.
    pub fn start(&self, id: &str) -> Result<Container> {
        let c = self.get(id)?;
        if c.running.is_some() {
            return Err(RuntimeError::AlreadyExists { id: id.to_string() });
        }
        let _span = info_span!("container_start", container = id).entered();
        self.start_in(&c.state, &c.spec).map(|(c, _)| c)
    }

    /// Starts the shim; gives the container and, with `auto_remove`, the read end of its
    /// removal notice.
    fn start_in(
        &self,
        state: &StateDir,
        spec: &ContainerSpec,
    ) -> Result<(Container, Option<OwnedFd>)> {
        let id = spec.id.as_str();
        StateDir::write_json(&state.spec(), spec).map_err(Self::err_state(id, &state.spec()))?;
        let seccomp_err = |source| RuntimeError::Seccomp {
            id: id.to_string(),
            source,
        };
        let confined = if spec.seccomp == Seccomp::DockerDefault && !spec.privileged {
            crate::seccomp::check_arch().map_err(seccomp_err)?;
            Some(spec.capabilities()?)
        } else {
            None
        };
        let spawn_err = |source| RuntimeError::Spawn {
            id: id.to_string(),
            helper: self.helper.clone(),
            source,
        };
        let pipe =
            || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()));
        let (r, w) = pipe()?;
        let (seccomp_r, seccomp_w) = pipe()?;
        let (removed_r, removed_w) = match spec.auto_remove {
            true => pipe().map(|(r, w)| (Some(r), Some(w)))?,
            false => (None, None),
        };
        let root = self.state_root.to_string_lossy().into_owned();
        let shim_log = std::fs::File::create(state.shim_log())
            .map_err(Self::err_state(id, &state.shim_log()))?;
        let null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(spawn_err)?;
        let mut args = vec![root.as_str(), id];
        if !self.detach_shims {
            args.push(crate::shim::STAY);
        }
        let child = self
            .spawn_helper(
                crate::shim::MODE,
                &args,
                [null.as_fd(), null.as_fd(), shim_log.as_fd()],
                // fd 6 (`shim::SEALED_MOUNT_FD`) is added by `spawn_helper`.
                &[
                    w.as_fd(),
                    seccomp_r.as_fd(),
                    removed_w.as_ref().map_or(null.as_fd(), |w| w.as_fd()),
                ],
            )
            .map_err(spawn_err)?;
        drop((w, seccomp_r, removed_w));
        // The seccomp program is compiled (once per process) while the shim execs and reads
        // its spec: it comes down a pipe, and goes to the state dir for `exec`. If this
        // fails, the pipe closes empty and the shim gives up.
        let seccomp = confined.map(|caps| -> Result<()> {
            let prog = crate::seccomp::docker_default(caps).map_err(seccomp_err)?;
            let bytes = prog.to_bytes();
            StateDir::write_atomic(&state.seccomp(), &bytes)
                .map_err(Self::err_state(id, &state.seccomp()))?;
            // A shim that is already gone has reported why.
            let _ = std::io::Write::write_all(&mut std::fs::File::from(seccomp_w), &bytes);
            Ok(())
        });
        let report = protocol::receive::<ShimReport>(r);
        // A detaching shim's first process exits right after forking the real one; one
        // that stays our child is reaped here only if it failed (and so ends).
        if self.detach_shims || !matches!(report, Ok(Some(ShimReport::Started { .. }))) {
            while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(child, None) {}
        }
        if let Some(Err(e)) = seccomp {
            return Err(e);
        }
        match report {
            Ok(Some(ShimReport::Started { pid })) => {
                debug!(pid, "container started");
                self.get(id).map(|c| (c, removed_r))
            }
            Ok(Some(ShimReport::Failed { chain })) => Err(RuntimeError::Start {
                id: id.to_string(),
                chain,
            }),
            Ok(None) => Err(RuntimeError::Start {
                id: id.to_string(),
                chain: ErrorChain(vec![format!(
                    "the shim exited without a report (see {})",
                    state.shim_log().display()
                )]),
            }),
            Err(e) => Err(spawn_err(e)),
        }
    }

    /// Re-attaches to container `id` from its state dir.
    pub fn get(&self, id: &str) -> Result<Container> {
        let id = ContainerId::new(id).map_err(RuntimeError::Spec)?;
        let state = StateDir::new(&self.state_root, id.as_str());
        let spec: ContainerSpec = StateDir::read_json(&state.spec())
            .map_err(Self::err_state(id.as_str(), &state.spec()))?
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
        let running = StateDir::read_json(&state.running())
            .map_err(Self::err_state(id.as_str(), &state.running()))?;
        Ok(Container {
            runtime: self.clone(),
            state,
            spec,
            running,
        })
    }

    /// Every container in the state dir, sorted by id.
    pub fn list(&self) -> Result<Vec<Container>> {
        let rd = match std::fs::read_dir(&self.state_root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::err_state("*", &self.state_root)(e)),
        };
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(c) = self.get(&name) {
                out.push(c);
            }
        }
        out.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        Ok(out)
    }

    /// Kills whatever is left of container `id`, removes its cgroup, mounts and state.
    /// Idempotent: deleting a container that is already gone succeeds.
    pub fn delete(&self, id: &str) -> Result<()> {
        let cid = ContainerId::new(id).map_err(RuntimeError::Spec)?;
        let _span = info_span!("container_delete", container = id).entered();
        let state = StateDir::new(&self.state_root, cid.as_str());
        let mut errors = Vec::new();
        let cg = cgroups::open(cid.as_str());
        match &cg {
            Ok(cg) => {
                if let Err(e) = cg.kill_all() {
                    errors.push(ErrorChain::from_error(&e).to_string());
                }
            }
            Err(e) => errors.push(ErrorChain::from_error(e).to_string()),
        }
        // Let the shim record the exit and leave, so nothing holds the state dir.
        if let Ok(Some(rec)) = StateDir::read_json::<RunningRecord>(&state.running()) {
            if pid_alive(rec.shim_pid, rec.shim_start)
                && !wait_pid_exit(rec.shim_pid, Duration::from_secs(10))
            {
                let _ = kill(Pid::from_raw(rec.shim_pid), Signal::SIGKILL);
                errors.push(format!("shim {} did not exit; killed", rec.shim_pid));
            }
        }
        self.remove_parts(id, &state, cg.ok(), errors, false)
    }

    /// Removes an exited container from inside its own shim (`auto_remove`): what
    /// [`Runtime::delete`] does after the shim is gone. Processes still in the cgroup (none
    /// normally: they die with the pid namespace's init) are killed first.
    /// Everything but the state dir goes first; `readers_done` then waits until nobody is
    /// reading the exit record (the shim's exclusive lock), and the state dir goes last, so
    /// a caller holding the record finishes its output while the cgroup and mounts go.
    pub(crate) fn remove_exited(
        &self,
        id: &str,
        readers_done: impl FnOnce() -> bool,
    ) -> Result<()> {
        let cid = ContainerId::new(id).map_err(RuntimeError::Spec)?;
        let state = StateDir::new(&self.state_root, cid.as_str());
        let mut errors = Vec::new();
        let cg = cgroups::open(cid.as_str())
            .map_err(|e| errors.push(ErrorChain::from_error(&e).to_string()))
            .ok();
        if let Some(cg) = &cg {
            if let Err(e) = cg.kill_all() {
                errors.push(ErrorChain::from_error(&e).to_string());
            }
        }
        self.remove_outside_state(&state, cg, &mut errors);
        if !readers_done() {
            errors.push(format!(
                "cannot lock {}: the state dir stays",
                state.wait_lock().display()
            ));
        }
        // On an error the state dir stays (with shim.log): the container shows as exited and
        // `rm` can try again, instead of leaving parts no one can find.
        self.remove_state(id, &state, errors, true)
    }

    /// The cgroup, mounts under the state dir, the container's own dirs (`owned_dirs`) and
    /// the state dir (kept after an error with `keep_state_on_error`); `errors` so far are
    /// reported with what fails here.
    fn remove_parts(
        &self,
        id: &str,
        state: &StateDir,
        cg: Option<Box<dyn cgroups::CgroupManager>>,
        mut errors: Vec<String>,
        keep_state_on_error: bool,
    ) -> Result<()> {
        self.remove_outside_state(state, cg, &mut errors);
        self.remove_state(id, state, errors, keep_state_on_error)
    }

    /// The cgroup, mounts under the state dir and the container's own dirs (`owned_dirs`).
    fn remove_outside_state(
        &self,
        state: &StateDir,
        cg: Option<Box<dyn cgroups::CgroupManager>>,
        errors: &mut Vec<String>,
    ) {
        let owned = StateDir::read_json::<ContainerSpec>(&state.spec())
            .ok()
            .flatten()
            .map(|s| s.owned_dirs)
            .unwrap_or_default();
        if let Some(cg) = &cg {
            if let Err(e) = cg.remove() {
                errors.push(ErrorChain::from_error(&e).to_string());
            }
        }
        // The rootfs is only mounted inside the container's mount namespace, but a bind of
        // the state dir by someone else must not make us delete through it.
        if let Ok(text) = crate::state::read_proc("/proc/self/mountinfo") {
            let mut under: Vec<PathBuf> = text
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .map(|m| PathBuf::from(cgroups::unescape_octal(m)))
                .filter(|m| m.starts_with(state.dir()))
                .collect();
            under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for m in under {
                if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                    errors.push(format!("cannot unmount {}: {e}", m.display()));
                }
            }
        }
        for dir in owned.iter().filter(|d| removable(d)) {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("cannot remove {}: {e}", dir.display())),
            }
        }
    }

    /// The state dir (kept after an error with `keep_state_on_error`); `errors` so far are
    /// reported with what fails here.
    fn remove_state(
        &self,
        id: &str,
        state: &StateDir,
        mut errors: Vec<String>,
        keep_state_on_error: bool,
    ) -> Result<()> {
        if errors.is_empty() || !keep_state_on_error {
            let mut again = 3;
            loop {
                match std::fs::remove_dir_all(state.dir()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    // An entry made while we removed the rest: a watcher that had read the
                    // container just before (the supervisor's die marker). The spec is gone
                    // now, so nothing finds the container again: once more.
                    Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && again > 0 => {
                        again -= 1;
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => errors.push(format!("cannot remove {}: {e}", state.dir().display())),
                }
                break;
            }
        }
        debug!(errors = errors.len(), "container deleted");
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Delete {
                id: id.to_string(),
                errors,
            })
        }
    }
}

/// An `owned_dirs` entry delete may remove: absolute, plain names only (no `..`),
/// and never `/` or a top-level dir, whatever a spec says.
fn removable(dir: &Path) -> bool {
    use std::path::Component;
    let mut parts = dir.components();
    parts.next() == Some(Component::RootDir)
        && parts.clone().count() >= 2
        && parts.all(|c| matches!(c, Component::Normal(_)))
}

/// Waits until `pid` exits (any process, via pidfd), up to `timeout`. True if it did.
fn wait_pid_exit(pid: i32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open with integer arguments.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return true; // ESRCH: already gone
    }
    // SAFETY: new fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    wait_readable(fd.as_fd(), timeout)
}

/// Whether `fd` turns readable (a pidfd whose process ended, a pipe at EOF) within
/// `timeout`.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n > 0 {
            return true;
        }
        if n == 0 || Instant::now() >= deadline {
            return false;
        }
    }
}

/// A shared lock on an `auto_remove` container's `wait.lock` (see [`Runtime::run_holding`]):
/// its shim removes the state dir only under an exclusive one. Released by dropping it or
/// by [`Container::wait_removed`].
#[derive(Debug)]
pub struct ExitHold {
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// The read end of the shim's removal notice (`shim::REMOVED_FD`): EOF once the shim
    /// has removed the container, or has ended.
    removed: Option<OwnedFd>,
}

impl ExitHold {
    fn take(state: &StateDir) -> std::io::Result<Self> {
        nix::fcntl::Flock::lock(
            state.open_wait_lock(true)?,
            nix::fcntl::FlockArg::LockShared,
        )
        .map(|lock| Self {
            _lock: lock,
            removed: None,
        })
        .map_err(|(_, e)| e.into())
    }
}

/// A handle on one container, attached through its state dir.
#[derive(Debug, Clone)]
pub struct Container {
    runtime: Runtime,
    state: StateDir,
    spec: ContainerSpec,
    running: Option<RunningRecord>,
}

impl Container {
    pub fn id(&self) -> &ContainerId {
        &self.spec.id
    }

    pub fn spec(&self) -> &ContainerSpec {
        &self.spec
    }

    /// Host pid of the container's PID 1 (once started).
    pub fn pid(&self) -> Option<i32> {
        self.running.as_ref().map(|r| r.pid)
    }

    /// Host pid of the shim.
    pub fn shim_pid(&self) -> Option<i32> {
        self.running.as_ref().map(|r| r.shim_pid)
    }

    /// A pidfd for PID 1 (poll it to learn of the exit without racing pid reuse).
    pub fn pidfd(&self) -> Result<OwnedFd> {
        let pid = self.live_pid()?;
        // SAFETY: pidfd_open with integer arguments.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return Err(self.not_running());
        }
        // SAFETY: new fd owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
    }

    /// The JSON-lines log file.
    pub fn log_path(&self) -> PathBuf {
        self.spec
            .log
            .path
            .clone()
            .unwrap_or_else(|| self.state.default_log())
    }

    /// The state dir (`<root>/<id>`).
    pub fn state_dir(&self) -> &Path {
        self.state.dir()
    }

    fn not_running(&self) -> RuntimeError {
        RuntimeError::NotRunning {
            id: self.spec.id.to_string(),
        }
    }

    fn cg_err(&self) -> impl FnOnce(CgroupError) -> RuntimeError + '_ {
        move |source| RuntimeError::Cgroup {
            id: self.spec.id.to_string(),
            source,
        }
    }

    fn live_pid(&self) -> Result<i32> {
        match &self.running {
            Some(r) if pid_alive(r.pid, r.pid_start) => Ok(r.pid),
            _ => Err(self.not_running()),
        }
    }

    fn exit_record(&self) -> Result<Option<ExitRecord>> {
        StateDir::read_json(&self.state.exit()).map_err(Runtime::err_state(
            self.spec.id.as_str(),
            &self.state.exit(),
        ))
    }

    /// The current status, read from disk and /proc.
    pub fn status(&self) -> Result<Status> {
        if let Some(e) = self.exit_record()? {
            return Ok(Status::Exited(e));
        }
        let Some(r) = &self.running else {
            return Ok(Status::Created);
        };
        let ended = || -> Result<Status> {
            // The shim may be writing exit.json right now.
            if pid_alive(r.shim_pid, r.shim_start) {
                return Ok(Status::Running);
            }
            Ok(match self.exit_record()? {
                Some(e) => Status::Exited(e),
                None => Status::Dead,
            })
        };
        if !pid_alive(r.pid, r.pid_start) {
            return ended();
        }
        let frozen = cgroups::open(self.spec.id.as_str()).and_then(|cg| cg.is_frozen());
        live_status(
            frozen,
            || pid_alive(r.pid, r.pid_start),
            ended,
            self.cg_err(),
        )
    }

    /// Sends `signal` to PID 1.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.live_pid()?;
        debug!(container = %self.spec.id, pid, %signal, "signal");
        kill(Pid::from_raw(pid), signal).map_err(|source| RuntimeError::Signal {
            id: self.spec.id.to_string(),
            signal,
            source,
        })
    }

    /// Passes on a signal its foreground client caught (`docker run`'s sig-proxy). A
    /// terminating signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) that PID 1 neither catches,
    /// blocks nor ignores on purpose would be dropped by the kernel (a pid-namespace init
    /// gets no default actions), leaving the client hanging where `docker run` hangs: the
    /// container is killed instead, as the signal asked. True when it was killed.
    pub fn forward(&self, signal: Signal) -> Result<bool> {
        let pid = self.live_pid()?;
        let terminating = matches!(
            signal,
            Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP | Signal::SIGQUIT
        );
        let status = proc_status(pid);
        let dropped = !status_handles(&status, signal) && !status_has(&status, "SigIgn:", signal);
        if terminating && dropped {
            debug!(pid, %signal, "PID 1 has no handler for the forwarded signal: killing");
            self.kill_all()?;
            return Ok(true);
        }
        self.signal(signal)?;
        Ok(false)
    }

    /// SIGKILLs every process of the container (through its cgroup).
    pub fn kill_all(&self) -> Result<()> {
        let cg = cgroups::open(self.spec.id.as_str()).map_err(self.cg_err())?;
        cg.kill_all().map_err(self.cg_err())
    }

    /// Stops like `docker stop`: the stop signal, up to `timeout` of grace, then SIGKILL to
    /// everything in the cgroup; returns the exit record. When the stop signal is SIGTERM or
    /// SIGINT and PID 1 neither catches nor blocks it, the kernel drops it (a pid-namespace
    /// init gets no default actions, `pid_namespaces(7)`), so the grace period is skipped.
    pub fn stop(&self, timeout: Duration) -> Result<ExitRecord> {
        let _span = info_span!("container_stop", container = %self.spec.id).entered();
        if let Some(e) = self.exit_record()? {
            return Ok(e);
        }
        if let Ok(pid) = self.live_pid() {
            let sig = self.spec.stop_signal()?;
            let cg = cgroups::open(self.spec.id.as_str()).map_err(self.cg_err())?;
            // A frozen container cannot handle the signal; thaw first, as Docker does.
            if cg.is_frozen().unwrap_or(false) {
                cg.thaw().map_err(self.cg_err())?;
            }
            let droppable = matches!(sig, Signal::SIGTERM | Signal::SIGINT);
            if droppable && !handles_signal(pid, sig) {
                debug!(pid, signal = %sig, "PID 1 has no handler for the stop signal: killing without grace");
                cg.kill_all().map_err(self.cg_err())?;
            } else {
                let _ = kill(Pid::from_raw(pid), sig);
                if self.wait(Some(timeout)).is_err() {
                    debug!(pid, "grace period over: killing");
                    cg.kill_all().map_err(self.cg_err())?;
                }
            }
        }
        self.wait(Some(Duration::from_secs(10)))
    }

    /// Freezes every process (cgroup freezer).
    pub fn pause(&self) -> Result<()> {
        self.live_pid()?;
        let cg = cgroups::open(self.spec.id.as_str()).map_err(self.cg_err())?;
        cg.freeze().map_err(self.cg_err())
    }

    pub fn unpause(&self) -> Result<()> {
        self.live_pid()?;
        let cg = cgroups::open(self.spec.id.as_str()).map_err(self.cg_err())?;
        cg.thaw().map_err(self.cg_err())
    }

    /// Memory, CPU and pids usage.
    pub fn stats(&self) -> Result<Stats> {
        let cg = cgroups::open(self.spec.id.as_str()).map_err(self.cg_err())?;
        cg.stats().map_err(self.cg_err())
    }

    /// Waits for PID 1 to exit and its shim to record it; `None` waits forever. A container
    /// that removes itself (`auto_remove`) is held until its exit record is read, or, when
    /// it was already gone, [`RuntimeError::Removed`].
    pub fn wait(&self, timeout: Option<Duration>) -> Result<ExitRecord> {
        if self.spec.auto_remove {
            return self.wait_removing(timeout);
        }
        if let Some(e) = self.exit_record()? {
            return Ok(e);
        }
        let Some(r) = &self.running else {
            return Err(self.not_running());
        };
        if pid_alive(r.shim_pid, r.shim_start) {
            let t = timeout.unwrap_or(Duration::from_secs(u32::MAX as u64));
            if !wait_pid_exit(r.shim_pid, t) {
                return Err(RuntimeError::Timeout {
                    id: self.spec.id.to_string(),
                });
            }
        }
        self.exit_record()?.ok_or_else(|| RuntimeError::ShimGone {
            id: self.spec.id.to_string(),
        })
    }

    /// [`Container::wait`] for an `auto_remove` container: under a shared flock on
    /// `wait.lock` (the shim removes only under an exclusive one), wait for PID 1 to exit,
    /// then for the shim to write `exit.json`.
    fn wait_removing(&self, timeout: Option<Duration>) -> Result<ExitRecord> {
        let id = self.spec.id.to_string();
        let removed = || RuntimeError::Removed { id: id.clone() };
        // Made with the state dir (`Runtime::run_holding`): not re-created here, where it
        // could reappear in a dir the shim is removing and keep the dir from going.
        let lock = self.state.open_wait_lock(false).map_err(|_| removed())?;
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockShared)
            .map_err(|_| removed())
            .and_then(|_held| {
                // The dir may have gone while we waited for the lock.
                if !self.state.spec().exists() {
                    return Err(removed());
                }
                let deadline =
                    Instant::now() + timeout.unwrap_or(Duration::from_secs(u32::MAX as u64));
                if let Some(r) = &self.running {
                    if pid_alive(r.pid, r.pid_start)
                        && !wait_pid_exit(r.pid, deadline.saturating_duration_since(Instant::now()))
                    {
                        return Err(RuntimeError::Timeout { id: id.clone() });
                    }
                } else if self.exit_record()?.is_none() {
                    return Err(self.not_running());
                }
                // exit.json follows PID 1's exit within a fraction of a millisecond: look
                // again after 0.1 ms, then back off to 20 ms. (An inotify watch would wake
                // at once, but closing one waits for an SRCU grace period: 5-8 ms here.)
                let mut pause = Duration::from_micros(100);
                loop {
                    if let Some(e) = self.exit_record()? {
                        return Ok(e);
                    }
                    let shim_alive = self
                        .running
                        .as_ref()
                        .is_some_and(|r| pid_alive(r.shim_pid, r.shim_start));
                    if !shim_alive {
                        return Err(RuntimeError::ShimGone { id: id.clone() });
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RuntimeError::Timeout { id: id.clone() });
                    }
                    std::thread::sleep(left.min(pause));
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
            })
    }

    /// For an `auto_remove` container whose exit has been read (and every other
    /// [`ExitHold`] dropped): waits up to `timeout` for its shim to finish removing it. `Ok(false)` when
    /// the shim is gone but the container is not (the removal failed, `shim.log` says why):
    /// [`Runtime::delete`] can try again and report it.
    ///
    /// `hold`, the one [`Runtime::run_holding`] gave, is released here; its removal notice
    /// then returns as soon as the container is gone, without waiting for the shim's own
    /// exit (~0.3 ms of `run --rm` here: freeing the process, the last close of its log).
    pub fn wait_removed(&self, hold: Option<ExitHold>, timeout: Duration) -> Result<bool> {
        let notice = hold.and_then(|h| h.removed);
        if let Some(r) = &self.running {
            let done = match &notice {
                Some(fd) => wait_readable(fd.as_fd(), timeout),
                None => !pid_alive(r.shim_pid, r.shim_start) || wait_pid_exit(r.shim_pid, timeout),
            };
            if !done {
                return Err(RuntimeError::Timeout {
                    id: self.spec.id.to_string(),
                });
            }
        }
        Ok(!self.state.dir().exists())
    }

    /// Runs a process inside the running container and captures its output (with
    /// `exec.tty`, the output goes to this process's terminal instead and is not captured).
    pub fn exec(&self, exec: &ExecSpec) -> Result<ExecOutput> {
        let id = self.spec.id.as_str();
        self.live_pid()?;
        if matches!(self.status()?, Status::Paused) {
            return Err(RuntimeError::Paused { id: id.to_string() });
        }
        let rt = &self.runtime;
        let spawn_err = |source| RuntimeError::Spawn {
            id: id.to_string(),
            helper: rt.helper.clone(),
            source,
        };
        let json = serde_json::to_string(exec).map_err(|e| spawn_err(std::io::Error::other(e)))?;
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
        let root = rt.state_root.to_string_lossy().into_owned();
        let (mut cmd, _keep) = rt
            .helper_command(crate::exec::MODE, &[&root, id, &json], &w)
            .map_err(spawn_err)?;
        if exec.detach {
            // Its own session, nothing attached: it outlives us and our terminal.
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    nix::unistd::setsid()
                        .map(|_| ())
                        .map_err(std::io::Error::from)
                });
            }
            let mut child = cmd.spawn().map_err(spawn_err)?;
            drop(w);
            // EOF once the process runs; an error chain if it could not start.
            if let Ok(Some(chain)) = protocol::receive::<ErrorChain>(r) {
                let _ = child.wait();
                return Err(RuntimeError::Exec {
                    id: id.to_string(),
                    chain,
                });
            }
            // The helper stays until the process ends; reap it if we are still around.
            std::thread::spawn(move || child.wait());
            return Ok(ExecOutput {
                code: 0,
                stdout: Vec::new(),
                stderr: Vec::new(),
            });
        }
        if exec.tty {
            // The helper relays the pty to our own terminal: nothing is captured.
            let stdin = if exec.interactive {
                Stdio::inherit()
            } else {
                Stdio::null()
            };
            cmd.stdin(stdin)
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
        } else {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        drop(w);
        let out = child.wait_with_output().map_err(spawn_err)?;
        if let Ok(Some(chain)) = protocol::receive::<ErrorChain>(r) {
            return Err(RuntimeError::Exec {
                id: id.to_string(),
                chain,
            });
        }
        use std::os::unix::process::ExitStatusExt;
        let code = out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
        Ok(ExecOutput {
            code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Removes the container (see [`Runtime::delete`]).
    pub fn delete(self) -> Result<()> {
        self.runtime.delete(self.spec.id.as_str())
    }
}

/// Whether `pid` catches or blocks `sig` (SigCgt / SigBlk in /proc/PID/status); true when
/// unknown, so the caller keeps the grace period.
pub(crate) fn handles_signal(pid: i32, sig: Signal) -> bool {
    status_handles(&proc_status(pid), sig)
}

/// `/proc/PID/status`, empty when unreadable (every mask then reads as "has it").
fn proc_status(pid: i32) -> String {
    crate::state::read_proc(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// The status of a container whose PID 1 was alive a moment ago, from its freezer state.
/// A failed read is only an error (`cg_err`) while PID 1 still lives: an `auto_remove` shim
/// removes the cgroup as soon as PID 1 has exited (`ENOENT`, or `ENODEV` from a file
/// opened just before), and then the container has ended (`ended`) rather than failed.
fn live_status(
    frozen: std::result::Result<bool, CgroupError>,
    init_alive: impl FnOnce() -> bool,
    ended: impl FnOnce() -> Result<Status>,
    cg_err: impl FnOnce(CgroupError) -> RuntimeError,
) -> Result<Status> {
    match frozen {
        Ok(true) => Ok(Status::Paused),
        Ok(false) => Ok(Status::Running),
        Err(_) if !init_alive() => ended(),
        Err(e) => Err(cg_err(e)),
    }
}

fn status_handles(status: &str, sig: Signal) -> bool {
    status_has(status, "SigCgt:", sig) || status_has(status, "SigBlk:", sig)
}

/// Whether `sig` is in the mask `key` (e.g. `SigIgn:`) of a /proc/PID/status text; true
/// when the mask can't be read.
fn status_has(status: &str, key: &str, sig: Signal) -> bool {
    let bit = 1u64 << (sig as i32 - 1);
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    mask & bit != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_gone_with_its_exited_init_is_an_end_not_an_error() {
        let gone = || CgroupError::Mountinfo(std::io::Error::from_raw_os_error(libc::ENODEV));
        let cg_err = |source| RuntimeError::Cgroup {
            id: "c".into(),
            source,
        };
        let exited = || Ok(Status::Dead);
        let never = || -> Result<Status> { panic!("PID 1 is alive: not ended") };
        // Read fine: paused or running, whatever else.
        assert!(matches!(
            live_status(Ok(true), || true, never, cg_err),
            Ok(Status::Paused)
        ));
        assert!(matches!(
            live_status(Ok(false), || false, never, cg_err),
            Ok(Status::Running)
        ));
        // The read failed because PID 1 exited and the cgroup went in between.
        assert!(matches!(
            live_status(Err(gone()), || false, exited, cg_err),
            Ok(Status::Dead)
        ));
        // PID 1 still alive: the failure is real.
        assert!(matches!(
            live_status(Err(gone()), || true, never, cg_err),
            Err(RuntimeError::Cgroup { .. })
        ));
    }

    #[test]
    fn only_plain_deep_owned_dirs_are_removable() {
        assert!(removable(Path::new("/var/lib/berth/container-rw/x")));
        assert!(removable(Path::new("/a/b")));
        for bad in ["/", "/var", "relative/dir/x", "/a/b/../..", "/a/../b/c"] {
            assert!(!removable(Path::new(bad)), "{bad}");
        }
    }

    #[test]
    fn reads_caught_and_blocked_masks() {
        let plain =
            "SigBlk:\t0000000000000000\nSigIgn:\t0000000000004000\nSigCgt:\t0000000000000000\n";
        assert!(
            !status_handles(plain, Signal::SIGTERM),
            "ignored is not handled"
        );
        let caught = plain.replace("SigCgt:\t0000000000000000", "SigCgt:\t0000000000004000");
        assert!(status_handles(&caught, Signal::SIGTERM));
        assert!(!status_handles(&caught, Signal::SIGINT));
        let blocked = plain.replace("SigBlk:\t0000000000000000", "SigBlk:\t0000000000000002");
        assert!(status_handles(&blocked, Signal::SIGINT));
        assert!(
            status_handles("garbage", Signal::SIGTERM),
            "unreadable: keep the grace period"
        );
        assert!(
            handles_signal(-1, Signal::SIGTERM),
            "unknown pid: assume handled"
        );
    }
}
