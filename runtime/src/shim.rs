//! The per-container shim: berth's own binary in a hidden, single-threaded mode, the parent of
//! the container for its whole life.
//!
//! Takes `<state root> <id> [--stay]` on argv, a report pipe on fd 3, the seccomp
//! program's pipe on fd 4, the write end of a removal notice on fd 5 (closed once an
//! `auto_remove` container is gone, so its caller need not wait for this process's own
//! exit) and the caller's sealed helper mount on fd 6 (kept) from `Runtime::run`, gives a
//! running container: it detaches (setsid, and unless `--stay` keeps it the caller's
//! child, a second fork, so the caller can reap the first process at once; either way the
//! shim survives the caller's death), becomes a child
//! subreaper, forks the container init into a new pid namespace (unshare(NEWPID) before
//! fork makes the child PID 1), creates the cgroup while the init unshares its namespaces,
//! and lets it join; waits for its exec, reports the pid or the error chain on fd 3, then
//! copies stdout/stderr into the JSON-lines log, reaps PID 1 and writes `exit.json` with
//! OOM detection. Neighbours: `init` (child side), `state` (files), `log` (format),
//! `cgroups`.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};
use tracing::{debug, warn};

use crate::cgroups::{self, CgroupManager};
use crate::init::{self, InitContext};
use crate::log::{LogWriter, Stream};
use crate::protocol::{self, ErrorChain, ShimReport};
use crate::seccomp::SeccompProgram;
use crate::spec::{ContainerSpec, Rootfs, Seccomp};
use crate::state::{now_rfc3339, pid_start_time, ExitRecord, RunningRecord, StateDir};

/// The argv[1] that selects this mode. Versioned with the fds the caller passes (bump the
/// suffix when they change): a shim and a caller with different fd protocols (a
/// long-running supervisor after an upgrade) refuse each other instead of misreading fd 4
/// (or, an older shim, starting without seccomp).
pub const MODE: &str = "__berth-runtime-shim-4";
/// The fd on which the caller waits for the [`ShimReport`].
pub(crate) const REPORT_FD: i32 = 3;
/// The fd on which the caller sends the compiled seccomp program (`SeccompProgram::to_bytes`)
/// and closes; read only when the spec asks for seccomp.
pub(crate) const SECCOMP_FD: i32 = 4;
/// With `auto_remove`, the write end of a pipe the caller keeps the read end of: closed as
/// soon as the container has been removed (else when the shim ends). Never written to.
/// `/dev/null` otherwise.
pub(crate) const REMOVED_FD: i32 = 5;
/// The caller's sealed view of the helper (`sealed_exe::take_mount`), or `/dev/null`: kept
/// until the shim exits, so the caller's close is not the last one, which would wait for
/// the mount to dissolve.
pub(crate) const SEALED_MOUNT_FD: i32 = 6;
/// The optional third argument: stay the caller's child instead of forking again
/// (`Runtime::with_detached_shims(false)`).
pub(crate) const STAY: &str = "--stay";

/// Shim entry point; returns the process exit code.
pub(crate) fn main(args: &[String]) -> u8 {
    let (Some(root), Some(id)) = (args.first(), args.get(1)) else {
        eprintln!("berth shim: usage: {MODE} <state-root> <id> [{STAY}]");
        return 2;
    };
    // SAFETY: the caller dup'ed the report pipe to fd 3 for us; nothing else owns it.
    let report = unsafe { OwnedFd::from_raw_fd(REPORT_FD) };
    // SAFETY: likewise the seccomp pipe on fd 4.
    let seccomp = unsafe { OwnedFd::from_raw_fd(SECCOMP_FD) };
    // SAFETY: likewise the removal notice on fd 5.
    let removed_notice = unsafe { OwnedFd::from_raw_fd(REMOVED_FD) };
    // SAFETY: likewise fd 6. Held until this function returns.
    let _sealed_mount = unsafe { OwnedFd::from_raw_fd(SEALED_MOUNT_FD) };
    // Our own session: no signal of the caller's terminal reaches us (the caller's spawn
    // made it already; EPERM then).
    let _ = nix::unistd::setsid();
    if args.get(2).map(String::as_str) != Some(STAY) {
        // SAFETY: single-threaded (hidden modes run before any thread exists).
        match unsafe { fork() } {
            Ok(ForkResult::Parent { .. }) => return 0,
            Ok(ForkResult::Child) => {}
            Err(e) => {
                let chain = ErrorChain(vec!["cannot fork the shim".into(), e.to_string()]);
                let _ = protocol::send(report, &ShimReport::Failed { chain });
                return 1;
            }
        }
    }
    // SAFETY: prctl with integer arguments / a static name. Orphans of exec'd processes come
    // to us; the name replaces the memfd's fd number in `ps`.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"berth-shim".as_ptr(), 0, 0, 0);
    }
    let state = StateDir::new(Path::new(root), id);
    match start(&state, seccomp) {
        Ok(running) => {
            let pid = running.pid;
            // state.json before the report, so the caller can re-attach as soon as it returns.
            let shim_pid = std::process::id() as i32;
            let record = RunningRecord {
                pid,
                pid_start: pid_start_time(pid).unwrap_or(0),
                shim_pid,
                shim_start: pid_start_time(shim_pid).unwrap_or(0),
                started_at: now_rfc3339(),
            };
            if let Err(e) = StateDir::write_json(&state.running(), &record) {
                warn!(error = %e, "cannot write state.json");
            }
            if protocol::send(report, &ShimReport::Started { pid }).is_err() {
                warn!(id, "caller went away before the start report");
            }
            // The spec, the seccomp program and the start-up buffers are freed by now:
            // hand their heap pages back, the shim stays resident as long as the container.
            // SAFETY: malloc_trim only releases free memory.
            unsafe {
                libc::malloc_trim(0);
            }
            let auto_remove = running.auto_remove;
            // Only an auto-remove's caller waits on the notice (else it is /dev/null).
            let removed_notice = auto_remove.then_some(removed_notice);
            // Without an exit record (a full disk), nothing is removed: waiters see the
            // shim gone (`ShimGone`), and whoever removes it later has the state dir.
            if supervise(&state, running) && auto_remove {
                // Waiters read exit.json under a shared lock: the state dir goes once none
                // is reading (the lock is held until the shim exits). If the lock cannot be
                // had, the state dir stays.
                let mut readers_done = None;
                let wait_readers = || {
                    readers_done = state.open_wait_lock(true).ok().and_then(|f| {
                        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok()
                    });
                    readers_done.is_some()
                };
                // We are the shim `delete` would wait for: remove the rest ourselves.
                let rt = crate::Runtime::new(Path::new(root));
                if let Err(e) = rt.remove_exited(id, wait_readers) {
                    eprintln!(
                        "berth shim: auto-remove {id}: {}",
                        ErrorChain::from_error(&e)
                    );
                    return 1;
                }
                debug!(id, "container removed after its exit");
                // The caller waits for this, not for the rest of our exit (freeing this
                // process, the last close of the log's unlinked inode).
                drop(removed_notice);
            }
            0
        }
        Err(chain) => {
            eprintln!("berth shim: start container {id}: {chain}");
            let _ = protocol::send(report, &ShimReport::Failed { chain });
            1
        }
    }
}

/// What the shim keeps after a successful start.
struct Running {
    pid: i32,
    cgroup: Box<dyn CgroupManager>,
    /// The stdout pipe, or the pty master with `tty: true`.
    stdout: OwnedFd,
    /// `None` with a tty (everything comes through the master, logged as stdout).
    stderr: Option<OwnedFd>,
    log: LogWriter,
    /// The attach socket (`crate::attach`), with a tty or `open_stdin`.
    attach: Option<crate::attach::Server>,
    /// Remove the container once it has exited (`run --rm`).
    auto_remove: bool,
}

fn chain_of(context: &str, e: &(dyn std::error::Error + 'static)) -> ErrorChain {
    ErrorChain::from_error(e).context(context)
}

fn start(state: &StateDir, seccomp_pipe: OwnedFd) -> Result<Running, ErrorChain> {
    let spec: ContainerSpec = StateDir::read_json(&state.spec())
        .map_err(|e| chain_of("cannot read spec.json", &e))?
        .ok_or_else(|| ErrorChain(vec!["spec.json is missing".into()]))?;
    let caps = spec
        .capabilities()
        .map_err(|e| chain_of("invalid spec", &e))?;
    let log_path = spec.log.path.clone().unwrap_or_else(|| state.default_log());
    let log = LogWriter::open(
        &log_path,
        spec.log.max_size,
        spec.log.max_files.unwrap_or(1),
    )
    .map_err(|e| chain_of(&format!("cannot open log file {}", log_path.display()), &e))?;
    if matches!(spec.rootfs, Rootfs::Overlay { .. }) {
        std::fs::create_dir_all(state.rootfs())
            .map_err(|e| chain_of("cannot create the rootfs mountpoint", &e))?;
    }

    // Bound before the start report, so a client can connect as soon as `run` returns.
    let mut attach = if spec.tty || spec.open_stdin {
        Some(
            crate::attach::Server::bind(state.dir(), spec.attach, spec.tty)
                .map_err(|e| chain_of("cannot create the attach socket", &e))?,
        )
    } else {
        None
    };

    let seccomp = if spec.seccomp == Seccomp::DockerDefault && !spec.privileged {
        // Read last before the fork: the caller compiles it while this process starts.
        // Docker's profile is ~3.5 KB: one read, not a series of growing ones.
        let mut bytes = Vec::with_capacity(16 * 1024);
        std::io::Read::read_to_end(&mut std::fs::File::from(seccomp_pipe), &mut bytes)
            .map_err(|e| chain_of("cannot read the seccomp program", &e))?;
        Some(
            SeccompProgram::from_bytes(&bytes)
                .map_err(|e| chain_of("no valid seccomp program from the caller", &e))?,
        )
    } else {
        drop(seccomp_pipe);
        None
    };
    let cgroup = cgroups::open(spec.id.as_str()).map_err(|e| chain_of("cannot open cgroup", &e))?;
    match spawn_init(&spec, state, cgroup.as_ref(), caps, seccomp.as_ref()) {
        Ok((pid, stdout, stderr, stdin)) => {
            if let Some(a) = &mut attach {
                if spec.tty {
                    match stdout.try_clone() {
                        Ok(m) => a.set_master(m),
                        Err(e) => {
                            // A client would get nothing and wait: fail the start instead.
                            let _ = nix::sys::signal::kill(
                                Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                            let _ = waitpid(Pid::from_raw(pid), None);
                            let _ = cgroup.kill_all();
                            let _ = cgroup.remove();
                            return Err(chain_of("cannot dup the pty master for attach", &e));
                        }
                    }
                }
                if let Some(w) = stdin {
                    a.set_stdin(w);
                }
            }
            Ok(Running {
                pid,
                cgroup,
                stdout,
                stderr,
                log,
                attach,
                auto_remove: spec.auto_remove,
            })
        }
        Err(e) => {
            let _ = cgroup.kill_all();
            let _ = cgroup.remove();
            Err(e)
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ErrorChain> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| chain_of("cannot create a pipe", &e))
}

fn spawn_init(
    spec: &ContainerSpec,
    state: &StateDir,
    cgroup: &dyn CgroupManager,
    caps: crate::capabilities::CapSet,
    seccomp: Option<&SeccompProgram>,
) -> Result<(i32, OwnedFd, Option<OwnedFd>, Option<OwnedFd>), ErrorChain> {
    let (out_r, out_w) = pipe()?;
    // `open_stdin` without a tty: a pipe whose write end the attach socket hands out.
    let (in_r, in_w) = if spec.open_stdin && !spec.tty {
        let (r, w) = pipe()?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let (err_r, err_w) = pipe()?;
    let (fail_r, fail_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let devnull =
        std::fs::File::open("/dev/null").map_err(|e| chain_of("cannot open /dev/null", &e))?;
    let (console_parent, console_child) = if spec.tty {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| chain_of("cannot create the console socket", &e))?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    // The next child is PID 1 of a new pid namespace; the shim itself stays outside.
    unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| chain_of("cannot unshare the pid namespace", &e))?;
    // SAFETY: the shim is single-threaded.
    let child =
        match unsafe { fork() }.map_err(|e| chain_of("cannot fork the container init", &e))? {
            ForkResult::Child => {
                drop((out_r, err_r, fail_r, console_parent, in_w, ready_w));
                let _ = match &in_r {
                    Some(r) => nix::unistd::dup2_stdin(r.as_fd()),
                    None => nix::unistd::dup2_stdin(devnull.as_fd()),
                };
                drop(in_r);
                let _ = nix::unistd::dup2_stdout(out_w.as_fd());
                let _ = nix::unistd::dup2_stderr(err_w.as_fd());
                drop((out_w, err_w, devnull));
                let ctx = InitContext {
                    spec,
                    rootfs_mountpoint: state.rootfs(),
                    view: cgroup.view(),
                    cgroupns: cgroup.wants_cgroupns(),
                    seccomp,
                    caps,
                    cgroup,
                    cgroup_ready: ready_r,
                    console: console_child,
                };
                let Err(e) = init::run(ctx);
                init::fail(fail_w, &e);
            }
            ForkResult::Parent { child } => child,
        };
    drop((out_w, err_w, fail_w, devnull, console_child, in_r, ready_r));
    let abort = |chain: ErrorChain| {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(child, None);
        chain
    };
    debug!(pid = child.as_raw(), "container init forked");
    // The cgroup is made while the init unshares its namespaces; it waits for this byte
    // before it joins (and gets EOF, and ends, if the cgroup could not be made).
    // (The caller removes a cgroup left half-made.)
    if let Err(e) = cgroup.create(&spec.limits, spec.privileged) {
        drop(ready_w);
        return Err(abort(chain_of("cannot create cgroup", &e)));
    }
    // An init that failed before it read this has sent its error, which comes next.
    let _ = nix::unistd::write(&ready_w, &[1]);
    drop(ready_w);
    // The init sends the pty master before it execs: take it first, so the console size is
    // set while the init is still busy with its own setup. EOF (no fd) if it failed.
    let early_master = console_parent.as_ref().map(crate::tty::recv_fd);
    if let (Some(Ok(Some(m))), Some(size)) = (&early_master, spec.console_size) {
        crate::tty::set_winsize(m.as_raw_fd(), size);
    }
    // The init has joined the cgroup itself (`CgroupManager::join_self`, the cheap path on v1).
    match protocol::receive::<ErrorChain>(fail_r) {
        Ok(None) => match early_master {
            None => Ok((child.as_raw(), out_r, Some(err_r), in_w)),
            Some(received) => match received {
                Ok(Some(master)) => Ok((child.as_raw(), master, None, None)),
                Ok(None) => Err(abort(ErrorChain(vec![
                    "the container init sent no pty master".into(),
                ]))),
                Err(e) => Err(abort(chain_of("cannot receive the pty master", &e))),
            },
        },
        Ok(Some(chain)) => Err(abort(chain.context("container init"))),
        Err(e) => Err(abort(chain_of("cannot read the init's report", &e))),
    }
}

/// Returns whether the exit record was written.
fn supervise(state: &StateDir, mut r: Running) -> bool {
    pump_logs(&mut r);
    let status = loop {
        match waitpid(Pid::from_raw(r.pid), None) {
            Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => break s,
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                warn!(error = %e, "waitpid on the container init failed");
                break WaitStatus::Exited(Pid::from_raw(r.pid), 255);
            }
        }
    };
    // Reap anything else re-parented to us (we are a subreaper).
    while let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
        waitpid(None, Some(WaitPidFlag::WNOHANG))
    {}
    let oom_killed = r.cgroup.oom_killed().unwrap_or(false);
    let (code, signal) = match status {
        WaitStatus::Exited(_, c) => (c, None),
        WaitStatus::Signaled(_, s, _) => (128 + s as i32, Some(s as i32)),
        _ => (255, None),
    };
    let exit = ExitRecord {
        code,
        signal,
        oom_killed,
        finished_at: now_rfc3339(),
    };
    debug!(?exit, "container exited");
    let recorded = match StateDir::write_json(&state.exit(), &exit) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("berth shim: cannot write exit.json: {e}");
            false
        }
    };
    if let Some(a) = &mut r.attach {
        a.finish(std::time::Duration::from_secs(5));
    }
    recorded
}

/// Copies both pipes into the log until both reach EOF (when every process holding them,
/// i.e. the whole pid namespace, is gone).
fn pump_logs(r: &mut Running) {
    let mut open = [true, true];
    let mut buf = vec![0u8; 64 * 1024];
    let fds = [
        r.stdout.as_raw_fd(),
        r.stderr.as_ref().map_or(-1, |f| f.as_raw_fd()),
    ];
    open[1] = r.stderr.is_some();
    while open.iter().any(|o| *o) {
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .zip(open)
            .map(|(fd, o)| libc::pollfd {
                fd: if o { *fd } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if let Some(a) = &r.attach {
            pfds.extend(a.pollfds());
        }
        // SAFETY: valid array of pollfd.
        let timeout = r.attach.as_ref().map_or(-1, |a| a.poll_timeout());
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            if nix::Error::last() == nix::Error::EINTR {
                continue;
            }
            break;
        }
        if let Some(a) = &mut r.attach {
            a.handle(&pfds[2..]);
        }
        for (i, p) in pfds.iter().take(2).enumerate() {
            if !open[i] || p.revents == 0 {
                continue;
            }
            let stream = if i == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            let fd = if i == 0 {
                &r.stdout
            } else {
                r.stderr.as_ref().unwrap_or(&r.stdout)
            };
            // A pty master reads EIO once no slave is left: the end, like a pipe's EOF.
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) | Err(_) => {
                    open[i] = false;
                    let _ = r.log.flush_stream(stream);
                }
                Ok(n) => {
                    if let Some(a) = &mut r.attach {
                        a.output(&buf[..n]);
                    }
                    if let Err(e) = r.log.push(stream, &buf[..n]) {
                        warn!(error = %e, "cannot write the container log");
                    }
                }
            }
        }
    }
}
