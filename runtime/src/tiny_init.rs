//! `init: true`: berth's tiny init as the container's PID 1 (the role of tini/docker-init).
//!
//! Takes the already-prepared command (path, argv, envp; security settings are applied before,
//! so PID 1 is as confined as the workload), gives a PID 1 that forks the command, forwards
//! every catchable signal to it, reaps every zombie re-parented to it, and exits with the
//! command's status (128 + signal when it was killed). Called from `init::become_process`.
//!
//! Signals are blocked and taken with `sigwait`; no-op handlers are installed as well so that
//! SigCgt in /proc shows them (the stop logic in `container` reads it to decide whether PID 1
//! can react to SIGTERM at all; `pid_namespaces(7)`).

use std::convert::Infallible;
use std::ffi::CString;

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::init::InitError;

/// Runs the command under a reaping, signal-forwarding PID 1. Returns only if fork fails.
/// Every signal sigwait can take (not SIGKILL/SIGSTOP, which cannot be blocked or waited).
fn forwardable() -> SigSet {
    let mut set = SigSet::empty();
    for s in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        set.add(s);
    }
    set
}

extern "C" fn noop(_: libc::c_int) {}

pub(crate) fn run(
    path: &CString,
    argv: &[CString],
    envp: &[CString],
) -> Result<Infallible, InitError> {
    // SAFETY: prctl with a static NUL-terminated name.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"berth-init".as_ptr(), 0, 0, 0) };
    let all = forwardable();
    // Blocked signals are queued for a pid-namespace init, but sigwait unblocks them while it
    // waits (SigBlk reads 0 then). A no-op handler makes "catches SIGTERM" visible in SigCgt,
    // which `Container::stop` reads; the handler never runs because sigwait dequeues first.
    // execve resets caught signals to the default in the command.
    for s in all.iter() {
        if s == Signal::SIGCHLD {
            continue;
        }
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(noop),
            nix::sys::signal::SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: installs an async-signal-safe no-op handler.
        let _ = unsafe { nix::sys::signal::sigaction(s, &action) };
    }
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut old)).map_err(
        |source| InitError::Sys {
            what: "block signals in init".into(),
            source,
        },
    )?;
    // A pipe to learn whether the child's execve worked (CLOEXEC: EOF means it did).
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| InitError::Sys {
            what: "create init pipe".into(),
            source,
        })?;
    // SAFETY: single-threaded process; the child only execs or reports and _exits.
    match unsafe { fork() }.map_err(|source| InitError::Sys {
        what: "fork the command".into(),
        source,
    })? {
        ForkResult::Child => {
            drop(r);
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            let err = nix::unistd::execve(path, argv, envp).unwrap_err();
            crate::init::fail(
                w,
                &InitError::Exec {
                    path: path.to_string_lossy().into_owned(),
                    source: err,
                },
            );
        }
        ForkResult::Parent { child } => {
            drop(w);
            if let Ok(Some(chain)) = crate::protocol::receive::<crate::protocol::ErrorChain>(r) {
                // Re-raise the child's error as ours so the shim reports it.
                return Err(InitError::Exec {
                    path: chain.to_string(),
                    source: nix::Error::ENOEXEC,
                });
            }
            // The command runs: tell the shim by closing our copy of its error pipe (every
            // fd above stdio is CLOEXEC, and PID 1 never execs, so close them here).
            // SAFETY: closes fds this process no longer needs; none is used after this.
            if unsafe { libc::close_range(3, u32::MAX, 0) } != 0 {
                // Before Linux 5.9: one by one (the init's fds are few and low).
                for fd in 3..1024 {
                    // SAFETY: as above.
                    unsafe { libc::close(fd) };
                }
            }
            supervise(child)
        }
    }
}

fn supervise(child: Pid) -> ! {
    let all = forwardable();
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => exit(code),
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => exit(128 + s as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

fn exit(code: i32) -> ! {
    // SAFETY: plain process exit; the kernel then kills the rest of the pid namespace.
    unsafe { libc::_exit(code) }
}
