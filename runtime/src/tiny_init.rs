//! `init: true`: berth's tiny init as the container's PID 1 (the role of tini/docker-init).
//!
//! Takes the already-prepared command (path, argv, envp; security settings are applied before,
//! so PID 1 is as confined as the workload), gives a PID 1 that forks the command, forwards
//! every catchable signal to it, reaps every zombie re-parented to it, and exits with the
//! command's status (128 + signal when it was killed). Called from `init::become_process`.
//!
//! Signals are blocked and taken with `sigwaitinfo`, so PID 1 has no handlers: the stop logic
//! in `container` therefore looks at SigBlk as well as SigCgt (a blocked signal is queued, not
//! dropped, for a pid-namespace init; `pid_namespaces(7)`).

use std::convert::Infallible;
use std::ffi::CString;

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::init::InitError;

/// Runs the command under a reaping, signal-forwarding PID 1. Returns only if fork fails.
pub(crate) fn run(path: &CString, argv: &[CString], envp: &[CString]) -> Result<Infallible, InitError> {
    let all = SigSet::all();
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut old))
        .map_err(|source| InitError::Sys { what: "block signals in init".into(), source })?;
    // A pipe to learn whether the child's execve worked (CLOEXEC: EOF means it did).
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|source| InitError::Sys { what: "create init pipe".into(), source })?;
    // SAFETY: single-threaded process; the child only execs or reports and _exits.
    match unsafe { fork() }.map_err(|source| InitError::Sys { what: "fork the command".into(), source })? {
        ForkResult::Child => {
            drop(r);
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            let err = nix::unistd::execve(path, argv, envp).unwrap_err();
            crate::init::fail(
                w,
                &InitError::Exec { path: path.to_string_lossy().into_owned(), source: err },
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
            unsafe { libc::close_range(3, u32::MAX, 0) };
            supervise(child)
        }
    }
}

fn supervise(child: Pid) -> ! {
    let all = SigSet::all();
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
