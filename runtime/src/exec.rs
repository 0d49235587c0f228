//! `exec`: run another process inside a running container (used by `exec` and healthchecks).
//!
//! Takes an [`ExecSpec`] and the container's state, gives the process's exit code (its output
//! goes to the helper's stdout/stderr, which `Container::exec` captures). The work happens in
//! berth's binary in a hidden single-threaded mode: mark itself non-dumpable (so the container
//! cannot open `/proc/<helper>/exe`, CVE-2019-5736), join the container's cgroup, `setns` into
//! its cgroup (v2), ipc, uts, net, pid and mount namespaces, then fork (a pid namespace only
//! applies to children) and give the child the container's security settings through
//! `init::become_process`. Errors travel back on fd 3 as an [`ErrorChain`].

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sched::{setns, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult};
use serde::{Deserialize, Serialize};

use crate::cgroups;
use crate::init::{self, ProcessSpec};
use crate::protocol::{self, ErrorChain};
use crate::seccomp::SeccompProgram;
use crate::spec::{ContainerSpec, Seccomp};
use crate::state::{pid_alive, RunningRecord, StateDir};

/// The argv[1] that selects this mode.
pub(crate) const MODE: &str = "__berth-runtime-exec";

/// A process to run in a running container. Unset fields inherit the container's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub args: Vec<String>,
    /// Added to (and overriding) the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Allocate a pty in the container (`exec -t`): the helper relays it to its own
    /// stdin/stdout, which `Container::exec` then inherits instead of capturing.
    #[serde(default)]
    pub tty: bool,
    /// Forward stdin (`exec -i`); without it stdin is `/dev/null`.
    #[serde(default)]
    pub interactive: bool,
    /// `exec -d`: `Container::exec` returns once the process runs; it keeps running in
    /// its own session (no output is captured), reaped by its helper.
    #[serde(default)]
    pub detach: bool,
    /// Kill the process (SIGKILL) when it runs longer than this (healthcheck timeouts),
    /// so a hung probe never outlives its check.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl ExecSpec {
    pub fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Self {
        Self {
            args: args.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
}

/// The result of an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code, or 128 + signal.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Helper entry point: `<state-root> <id> <exec-spec-json>`.
pub(crate) fn main(args: &[String]) -> u8 {
    let (Some(root), Some(id), Some(json)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("berth exec: usage: {MODE} <state-root> <id> <json>");
        return 2;
    };
    // SAFETY: `Container::exec` dup'ed the report pipe to fd 3 for us.
    let report = unsafe { OwnedFd::from_raw_fd(crate::shim::REPORT_FD) };
    let state = StateDir::new(Path::new(root), id);
    match run(&state, json) {
        Ok(code) => code.clamp(0, 255) as u8,
        Err(chain) => {
            let _ = protocol::send(report, &chain);
            126
        }
    }
}

fn chain_of(context: &str, e: &(dyn std::error::Error + 'static)) -> ErrorChain {
    ErrorChain::from_error(e).context(context)
}

fn run(state: &StateDir, json: &str) -> Result<i32, ErrorChain> {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let exec: ExecSpec =
        serde_json::from_str(json).map_err(|e| chain_of("invalid exec spec", &e))?;
    if exec.args.is_empty() {
        return Err(ErrorChain(vec!["exec needs a command".into()]));
    }
    let spec: ContainerSpec = StateDir::read_json(&state.spec())
        .map_err(|e| chain_of("cannot read spec.json", &e))?
        .ok_or_else(|| ErrorChain(vec!["container has no spec.json".into()]))?;
    let running: RunningRecord = StateDir::read_json(&state.running())
        .map_err(|e| chain_of("cannot read state.json", &e))?
        .ok_or_else(|| ErrorChain(vec![format!("container {} is not running", spec.id)]))?;
    if !pid_alive(running.pid, running.pid_start) {
        return Err(ErrorChain(vec![format!(
            "container {} is not running",
            spec.id
        )]));
    }
    let caps = spec
        .capabilities()
        .map_err(|e| chain_of("invalid spec", &e))?;
    let seccomp = if spec.seccomp == Seccomp::DockerDefault && !spec.privileged {
        let bytes =
            std::fs::read(state.seccomp()).map_err(|e| chain_of("cannot read seccomp.bpf", &e))?;
        Some(SeccompProgram::from_bytes(&bytes).map_err(|e| chain_of("invalid seccomp.bpf", &e))?)
    } else {
        None
    };
    let cg = cgroups::open(spec.id.as_str()).map_err(|e| chain_of("cannot open cgroup", &e))?;
    cg.join_self()
        .map_err(|e| chain_of("cannot join the container's cgroup", &e))?;

    // Open every namespace first: after joining the mount namespace, /proc is the container's.
    let mut kinds = vec![];
    if cg.wants_cgroupns() {
        kinds.push(("cgroup", CloneFlags::CLONE_NEWCGROUP));
    }
    kinds.extend([
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ]);
    let mut fds = Vec::new();
    for (name, flag) in kinds {
        let p = format!("/proc/{}/ns/{name}", running.pid);
        let f = std::fs::File::open(&p).map_err(|e| chain_of(&format!("cannot open {p}"), &e))?;
        fds.push((name, flag, f));
    }
    for (name, flag, f) in &fds {
        setns(f, *flag).map_err(|e| chain_of(&format!("cannot join the {name} namespace"), &e))?;
    }
    drop(fds);
    let _ = nix::unistd::chdir("/");

    let (fail_r, fail_w) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| chain_of("cannot create a pipe", &e))?;
    let mut env = spec.env.clone();
    env.extend(exec.env.iter().cloned());
    let hostname = nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned());
    // After joining the mount namespace: the pty comes from the container's devpts.
    let pty = if exec.tty {
        let (master, slave) = crate::tty::open_pty()
            .map_err(|e| chain_of("cannot open a pty in the container", &e))?;
        // The user's size before the process starts, so its first look is right.
        if let Some(term) = crate::tty::terminal_fd() {
            crate::tty::copy_winsize(term, std::os::fd::AsRawFd::as_raw_fd(&master));
        }
        Some((master, slave))
    } else {
        None
    };
    // SAFETY: the helper is single-threaded.
    match unsafe { fork() }.map_err(|e| chain_of("cannot fork into the container", &e))? {
        ForkResult::Child => {
            drop(fail_r);
            if let Some((master, slave)) = pty {
                drop(master);
                if let Err(e) = crate::tty::become_controlling(slave) {
                    let e = init::InitError::Sys {
                        what: "make the pty the controlling terminal".into(),
                        source: e,
                    };
                    init::fail(fail_w, &e);
                }
            }
            let p = ProcessSpec {
                args: &exec.args,
                env: &env,
                user: exec.user.as_deref().or(spec.user.as_deref()),
                working_dir: exec.working_dir.as_deref().or(spec.working_dir.as_deref()),
                hostname: hostname.as_deref(),
                rlimits: &spec.rlimits,
                caps,
                seccomp: seccomp.as_ref(),
                no_new_privileges: spec.no_new_privileges,
                tiny_init: false,
            };
            let Err(e) = init::become_process(&p);
            init::fail(fail_w, &e);
        }
        ForkResult::Parent { child } => {
            drop(fail_w);
            let report = protocol::receive::<ErrorChain>(fail_r);
            if exec.detach && report.as_ref().is_ok_and(|r| r.is_none()) {
                // Started: close our end of the caller's report pipe (it reads EOF, "ok")
                // by putting /dev/null in its place, then stay to reap the process.
                if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                    // SAFETY: dup2 onto fd 3, which stays open (now /dev/null) for its
                    // owner in `main`; no other memory is touched.
                    unsafe {
                        libc::dup2(
                            std::os::fd::AsRawFd::as_raw_fd(&null),
                            crate::shim::REPORT_FD,
                        )
                    };
                }
            }
            if let Some((master, slave)) = pty {
                drop(slave);
                if report.as_ref().is_ok_and(|r| r.is_none()) {
                    let raw = if exec.interactive {
                        crate::tty::RawMode::enter(0)
                    } else {
                        None
                    };
                    let m = std::os::fd::AsRawFd::as_raw_fd(&master);
                    // Resizes of the user's terminal follow (SIGWINCH reaches us: we are in
                    // the caller's foreground process group).
                    let end = crate::tty::relay(m, m, exec.interactive, crate::tty::terminal_fd());
                    drop(raw);
                    if let crate::tty::RelayEnd::Signal(sig) = end {
                        crate::tty::reraise(sig);
                    }
                }
            }
            let mut deadline = exec
                .timeout_ms
                .map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
            let status = loop {
                let flags = deadline.map(|_| nix::sys::wait::WaitPidFlag::WNOHANG);
                match waitpid(child, flags) {
                    Err(nix::Error::EINTR) => continue,
                    Ok(WaitStatus::StillAlive) => {
                        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                            let _ = nix::sys::signal::kill(child, nix::sys::signal::SIGKILL);
                            deadline = None; // now wait for it to go
                        } else {
                            std::thread::sleep(std::time::Duration::from_millis(10));
                        }
                    }
                    other => break other,
                }
            };
            if let Ok(Some(chain)) = report {
                return Err(chain.context("exec in container"));
            }
            match status {
                Ok(WaitStatus::Exited(_, c)) => Ok(c),
                Ok(WaitStatus::Signaled(_, s, _)) => Ok(128 + s as i32),
                Ok(_) => Ok(255),
                Err(e) => Err(chain_of("cannot wait for the exec'd process", &e)),
            }
        }
    }
}
