//! The container side of a start: runs in the process forked by the shim, which is PID 1 of
//! the new pid namespace, and ends in `execve` of the user's command (or in [`tiny_init`]).
//!
//! Takes the spec, the cgroup view and the precompiled seccomp program, gives a running
//! container process. Order matters: unshare the mount, uts, ipc (and net) namespaces, join
//! a network namespace, hostname (all while the shim creates the cgroup) → wait for the
//! shim's "cgroup ready" → join the cgroup (the init does it itself, see
//! `CgroupManager::join_self`) → unshare the cgroup namespace (after placement, so its root
//! is the container's cgroup) → rootfs and pivot_root (`rootfs`) → sysctls →
//! masked/read-only paths → oom_score_adj → [`become_process`] (rlimits, fds, bounding set,
//! seccomp, user, capabilities, exec). `exec` reuses [`become_process`] for processes
//! joining a running container.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};
use tracing::debug;

use crate::capabilities::{self, CapSet, CapabilityError};
use crate::cgroups::{CgroupManager, CgroupView};
use crate::rootfs::{self, RootfsError};
use crate::seccomp::{SeccompError, SeccompProgram};
use crate::spec::{rlimit_resource, ContainerSpec, Network, Rlimit};
use crate::user::{self, UserError};

/// Docker's PATH when neither image nor user sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors on the container side of a start or exec; sent back to the caller as a chain.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot {what}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot join network namespace {path}")]
    JoinNetns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot set sysctl {key}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set rlimit {name}")]
    Rlimit {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot create working directory {dir}")]
    Workdir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("executable file {cmd:?} not found in $PATH")]
    NotFound { cmd: String },
    #[error("cannot execute {path}")]
    Exec {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("rootfs setup failed")]
    Rootfs(#[from] RootfsError),
    #[error("user setup failed")]
    User(#[from] UserError),
    #[error("capability setup failed")]
    Capability(#[from] CapabilityError),
    #[error("seccomp setup failed")]
    Seccomp(#[from] SeccompError),
    #[error("cannot join the container's cgroup")]
    Cgroup(#[source] crate::cgroups::CgroupError),
    #[error("cannot write oom_score_adj")]
    OomScore(#[source] std::io::Error),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> InitError {
    let what = what.into();
    move |source| InitError::Sys { what, source }
}

/// What the container init needs besides the spec.
pub(crate) struct InitContext<'a> {
    pub spec: &'a ContainerSpec,
    pub rootfs_mountpoint: PathBuf,
    pub view: CgroupView,
    pub cgroupns: bool,
    pub seccomp: Option<&'a SeccompProgram>,
    pub caps: CapSet,
    /// The container's cgroup, which the init joins itself once the shim has made it.
    pub cgroup: &'a dyn CgroupManager,
    /// Readable (one byte) once the shim has created the cgroup and written its limits;
    /// EOF if it could not (the shim reports that, the init just ends).
    pub cgroup_ready: OwnedFd,
    /// With `tty: true`: a unix socket on which the pty master goes to the shim.
    pub console: Option<OwnedFd>,
}

/// The container init. Returns only on error.
pub(crate) fn run(ctx: InitContext<'_>) -> Result<Infallible, InitError> {
    let spec = ctx.spec;
    // The namespaces first, while the shim creates the cgroup: a new network namespace is
    // the costliest step of a start, and the two overlap. (runc places its child before it
    // unshares. Here the namespace objects themselves, and the copy of the host's mount
    // table until pivot_root drops it, are charged to the shim's cgroup; the rootfs mounts
    // and all the container allocates later are its own.) The cgroup namespace waits for
    // the cgroup.
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(sys("unshare namespaces"))?;
    debug!(?flags, "namespaces unshared");
    if let Network::Join(path) = &spec.network {
        let f = std::fs::File::open(path).map_err(|e| InitError::JoinNetns {
            path: path.clone(),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).map_err(|source| InitError::JoinNetns {
            path: path.clone(),
            source,
        })?;
        debug!(path = %path.display(), "joined network namespace");
    }
    if let Some(h) = &spec.hostname {
        nix::unistd::sethostname(h).map_err(sys(format!("set hostname {h:?}")))?;
    }
    if let Some(d) = &spec.domainname {
        let c = CString::new(d.as_str()).unwrap_or_default();
        // SAFETY: valid pointer and length.
        if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } != 0 {
            return Err(sys(format!("set domainname {d:?}"))(nix::Error::last()));
        }
    }
    // Then into the cgroup before the rootfs is built and anything of the container's own
    // runs: its mounts, the user's process and all its children are accounted and limited.
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(&ctx.cgroup_ready, &mut byte) {
            Ok(1) => break,
            // EOF: the shim could not make the cgroup and reports why; nothing to add.
            // SAFETY: as in `fail`, the parent's atexit handlers are not ours to run.
            Ok(_) => unsafe { libc::_exit(1) },
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(sys("wait for the container's cgroup")(e)),
        }
    }
    drop(ctx.cgroup_ready);
    // Still a single-threaded copy of the shim: the cheap self-join (see `join_self`).
    ctx.cgroup.join_self().map_err(InitError::Cgroup)?;
    if ctx.cgroupns {
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(sys("unshare the cgroup namespace"))?;
    }

    rootfs::prepare(spec, &ctx.rootfs_mountpoint, &ctx.view)?;
    for (key, value) in &spec.sysctls {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|source| InitError::Sysctl {
            key: key.clone(),
            source,
        })?;
        debug!(key, value, "sysctl set");
    }
    rootfs::finish(spec)?;
    if let Some(adj) = spec.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(InitError::OomScore)?;
    }
    if let Some(sock) = ctx.console {
        // After pivot_root, so the pty belongs to the container's devpts instance.
        let (master, slave) = crate::tty::open_pty().map_err(sys("open a pty in the container"))?;
        crate::tty::send_fd(&sock, std::os::fd::AsFd::as_fd(&master))
            .map_err(sys("pass the pty master to the shim"))?;
        drop((master, sock));
        crate::tty::become_controlling(slave)
            .map_err(sys("make the pty the controlling terminal"))?;
        debug!("pty set up");
    }

    let hostname = spec.hostname.clone().or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .map(|h| h.to_string_lossy().into_owned())
    });
    become_process(&ProcessSpec {
        args: &spec.args,
        env: &spec.env,
        user: spec.user.as_deref(),
        working_dir: spec.working_dir.as_deref(),
        hostname: hostname.as_deref(),
        rlimits: &spec.rlimits,
        caps: ctx.caps,
        seccomp: ctx.seccomp,
        no_new_privileges: spec.no_new_privileges,
        tiny_init: spec.init,
    })
}

/// The last part shared by the container init and `exec`.
pub(crate) struct ProcessSpec<'a> {
    pub args: &'a [String],
    pub env: &'a [String],
    pub user: Option<&'a str>,
    pub working_dir: Option<&'a str>,
    pub hostname: Option<&'a str>,
    pub rlimits: &'a [Rlimit],
    pub caps: CapSet,
    pub seccomp: Option<&'a SeccompProgram>,
    pub no_new_privileges: bool,
    pub tiny_init: bool,
}

/// Docker's environment: PATH and HOSTNAME first unless given, then the spec's, then HOME
/// from the user's passwd entry unless given. Later duplicates win.
pub(crate) fn build_env(env: &[String], hostname: Option<&str>, home: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let has = |k: &str| {
        env.iter()
            .any(|e| e.split_once('=').map(|(a, _)| a) == Some(k))
    };
    if !has("PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if let Some(h) = hostname {
        if !has("HOSTNAME") {
            out.push(format!("HOSTNAME={h}"));
        }
    }
    for e in env {
        let key = e.split_once('=').map(|(k, _)| k).unwrap_or(e);
        out.retain(|o| o.split_once('=').map(|(k, _)| k) != Some(key));
        out.push(e.clone());
    }
    if !has("HOME") {
        out.push(format!("HOME={home}"));
    }
    out
}

/// Finds `cmd` in `PATH` from `env` (inside the current root), like execvp.
pub(crate) fn lookup(cmd: &str, env: &[String]) -> Result<String, InitError> {
    if cmd.contains('/') {
        return Ok(cmd.to_string());
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(cmd);
        if let Ok(md) = std::fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return Ok(candidate.to_string_lossy().into_owned());
            }
        }
    }
    Err(InitError::NotFound {
        cmd: cmd.to_string(),
    })
}

fn set_rlimits(rlimits: &[Rlimit]) -> Result<(), InitError> {
    for r in rlimits {
        let Some(res) = rlimit_resource(&r.name) else {
            continue;
        };
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::getrlimit(res, &mut cur) };
        // Raising a hard limit needs CAP_SYS_RESOURCE, which root lacks on some hosts: clamp
        // to the caller's hard limit instead of failing (see the brief's host notes).
        let hard = r.hard.min(cur.rlim_max);
        let new = libc::rlimit {
            rlim_cur: r.soft.min(hard),
            rlim_max: hard,
        };
        // SAFETY: valid pointer.
        if unsafe { libc::setrlimit(res, &new) } != 0 {
            return Err(InitError::Rlimit {
                name: r.name.clone(),
                source: nix::Error::last(),
            });
        }
        debug!(
            name = r.name,
            soft = new.rlim_cur,
            hard = new.rlim_max,
            "rlimit set"
        );
    }
    Ok(())
}

/// Every signal back to its default action, none blocked, as a process starts under
/// Docker. An ignored disposition survives execve: the shim's Rust runtime ignores SIGPIPE,
/// and a shell that ran berth in the background ignores SIGINT and SIGQUIT; without this
/// the workload would inherit them (and a shell as PID 1 could not even trap them).
fn reset_signals() {
    /// The kernel's `struct sigaction` on x86_64 (glibc's wrapper refuses signals 32 and 33,
    /// which it keeps for itself, but they can be inherited ignored too).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: rt_sigaction with a valid struct and an 8-byte sigset, no old action.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    std::ptr::addr_of!(dfl),
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                )
            };
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// Applies user, limits and security settings to the calling process and execs `args`.
pub(crate) fn become_process(p: &ProcessSpec<'_>) -> Result<Infallible, InitError> {
    let u = user::resolve_in_current_root(p.user)?;
    let env = build_env(p.env, p.hostname, &u.home);
    let cwd = p.working_dir.unwrap_or("/");
    // Docker creates a missing working dir (as root, before the user switch).
    std::fs::create_dir_all(cwd).map_err(|source| InitError::Workdir {
        dir: cwd.to_string(),
        source,
    })?;
    let exe = lookup(&p.args[0], &env)?;
    set_rlimits(p.rlimits)?;
    // Nothing from the shim or the caller may reach the workload (CVE-2024-21626): mark every
    // fd above stdio close-on-exec. The error pipe already is.
    // SAFETY: close_range with constant arguments.
    unsafe { libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) };
    reset_signals();

    capabilities::drop_bounding(p.caps)?;
    // Without no_new_privs the filter must be loaded while CAP_SYS_ADMIN is still held
    // (`seccomp(2)`); the syscalls that follow (setgroups, setres[ug]id, capset, prctl, chdir,
    // execve) are all in Docker's allowlist.
    if !p.no_new_privileges {
        if let Some(s) = p.seccomp {
            s.load()?;
            debug!("seccomp loaded");
        }
    }
    user::switch(&u)?;
    // Docker gives a non-root user no effective or permitted capabilities; the bounding set
    // still limits what setuid binaries can gain.
    capabilities::apply(if u.uid == 0 {
        p.caps
    } else {
        CapSet::default()
    })?;
    nix::unistd::chdir(cwd).map_err(sys(format!("change to working directory {cwd}")))?;
    if p.no_new_privileges {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(sys("set no_new_privs")(nix::Error::last()));
        }
        if let Some(s) = p.seccomp {
            s.load()?;
            debug!("seccomp loaded");
        }
    }

    let argv: Vec<CString> = p
        .args
        .iter()
        .map(|a| CString::new(a.as_str()).unwrap_or_default())
        .collect();
    let envp: Vec<CString> = env
        .iter()
        .map(|e| CString::new(e.as_str()).unwrap_or_default())
        .collect();
    let path = CString::new(exe.as_str()).unwrap_or_default();
    if p.tiny_init {
        return crate::tiny_init::run(&path, &argv, &envp);
    }
    let err = nix::unistd::execve(&path, &argv, &envp).unwrap_err();
    Err(InitError::Exec {
        path: exe,
        source: err,
    })
}

/// Sends the error chain down `fd` and exits: the end of a failed child.
pub(crate) fn fail(fd: OwnedFd, err: &InitError) -> ! {
    let chain = crate::protocol::ErrorChain::from_error(err);
    let _ = crate::protocol::send(fd, &chain);
    // SAFETY: _exit skips atexit handlers and destructors that belong to the parent's copy.
    unsafe { libc::_exit(127) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_gets_docker_defaults() {
        let e = build_env(&["A=1".into(), "PATH=/x".into()], Some("web"), "/root");
        assert_eq!(e, vec!["HOSTNAME=web", "A=1", "PATH=/x", "HOME=/root"]);
        let e = build_env(
            &["HOME=/h".into(), "A=1".into(), "A=2".into()],
            None,
            "/root",
        );
        assert_eq!(
            e,
            vec![
                format!("PATH={DEFAULT_PATH}"),
                "HOME=/h".into(),
                "A=2".into()
            ]
        );
    }

    #[test]
    fn lookup_uses_path() {
        assert_eq!(lookup("/bin/x", &[]).unwrap(), "/bin/x");
        assert_eq!(
            lookup("sh", &["PATH=/nonexistent:/bin".into()]).unwrap(),
            "/bin/sh"
        );
        assert!(matches!(
            lookup("no-such-cmd-xyz", &[]),
            Err(InitError::NotFound { .. })
        ));
    }
}
