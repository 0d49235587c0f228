//! berth-runtime: berth's embedded, synchronous container runtime.
//!
//! It knows nothing of Compose. The engine builds a [`ContainerSpec`] and calls:
//!
//! ```text
//! let rt = Runtime::new("<root>/containers");            // .with_helper(path) in tests
//! let c: Container = rt.run(&spec)?;                      // create + start; returns once the command runs
//! let c = rt.get("id")?;  rt.list()?;                     // re-attach from disk, in any process
//! c.status()? -> Status   c.pid()   c.shim_pid()   c.pidfd()?   c.log_path()   c.state_dir()
//! c.signal(Signal::SIGHUP)?;  c.stop(Duration)? -> ExitRecord;  c.kill_all()?
//! c.pause()?; c.unpause()?;   c.stats()? -> Stats
//! c.exec(&ExecSpec::new(["sh", "-c", "…"]))? -> ExecOutput { code, stdout, stderr }
//! c.wait(Some(timeout))? -> ExitRecord { code, signal, oom_killed, .. }
//! rt.delete("id")? / c.delete()?                          // idempotent
//! ```
//!
//! and, first thing in `main`, [`hidden_main`], which runs berth's hidden single-threaded modes.
//!
//! Process model: the caller (possibly a tokio process) never forks to do namespace work. It
//! spawns its own binary, from a sealed, unwritable view (`sealed_exe`, CVE-2019-5736), as a
//! per-container **shim** (`shim`) that detaches, owns the container's cgroup, stdout/stderr
//! (JSON-lines log, [`log`]) and exit status ([`state`]), and survives the caller. The shim
//! forks the container **init** (`init`: namespaces, `rootfs`, [`user`],
//! [`capabilities`], [`seccomp`], exec; optionally `tiny_init` as PID 1). **exec** (`exec`)
//! is another hidden mode that joins a running container. Errors from the far side come back as
//! an [`ErrorChain`] over a pipe (`protocol`). cgroups v1 and v2 sit behind
//! [`cgroups::CgroupManager`].
//!
//! Modules: `spec` (input), `container` (caller side API), `shim`, `init`, `tiny_init`, `exec`,
//! `tty` (ptys for `tty: true` and `exec -t`), `attach` (`Container::attach`: the shim's
//! attach socket for `run -it`/`-i`), `rootfs`, `cgroups/{v1,v2}`, `capabilities`, `seccomp` (+ Docker's profile as data),
//! `user`, `log`, `state`, `protocol`, `sealed_exe`.

mod attach;
pub mod capabilities;
pub mod cgroups;
mod container;
mod exec;
mod init;
pub mod log;
mod protocol;
mod rootfs;
mod sealed_exe;
pub mod seccomp;
mod shim;
pub mod spec;
pub mod state;
mod tiny_init;
mod tty;
pub mod user;

pub use attach::{Attach, AttachEnd};
pub use container::{
    default_helper, Container, ExitHold, Runtime, RuntimeError, Status, HELPER_NAME,
};
pub use exec::{ExecOutput, ExecSpec};
pub use protocol::ErrorChain;
pub use rootfs::{MASKED_PATHS, READONLY_PATHS};
/// argv[1] of a running shim (how `ps`-style tools, the bench, find shims).
pub use shim::MODE as SHIM_MODE;
pub use spec::{
    ContainerId, ContainerSpec, Limits, LogConfig, Mount, Network, Rlimit, Rootfs, Seccomp,
};
pub use state::ExitRecord;
pub use tty::{reraise, terminal_size, CaughtSignals};

pub use nix::sys::signal::Signal;

/// The body of a `#![no_main]` binary's C `main` (`berth`, `berth-shim`, which are
/// started once or twice per container start): runs `body` with what std's start-up would
/// have set up, and gives the exit status std's `main` would give. std's start-up also finds
/// the main thread's stack through `pthread_getattr_np` (glibc reads and parses
/// `/proc/self/maps` for it) and installs a stack-overflow handler with its own signal
/// stack, ~0.15 ms per process here; skipped. Kept: SIGPIPE ignored (a write to a closed
/// pipe or socket fails with EPIPE instead of killing the process), fds 0-2 open (on
/// `/dev/null` if they were closed, so no file opened later becomes stdout), stdout flushed
/// at the end, 101 after a panic. Lost: the "has overflowed its stack" message (a plain
/// SIGSEGV instead). Arguments still come from glibc through std (`std::env::args_os`).
pub fn no_main(body: impl FnOnce() -> std::process::ExitCode + std::panic::UnwindSafe) -> i32 {
    no_main_prelude();
    let code = std::panic::catch_unwind(body).map_or(101, exit_status);
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code
}

fn no_main_prelude() {
    // SAFETY: signal() with SIG_IGN; poll on a local array; open of a constant path.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        });
        loop {
            if libc::poll(fds.as_mut_ptr(), 3, 0) >= 0 {
                break;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                // As std: without poll, ask each fd.
                for p in &mut fds {
                    if libc::fcntl(p.fd, libc::F_GETFD) == -1 {
                        p.revents = libc::POLLNVAL;
                    }
                }
                break;
            }
        }
        for p in fds {
            // open() takes the lowest free fd: this one.
            if p.revents & libc::POLLNVAL != 0
                && libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) == -1
            {
                libc::abort();
            }
        }
    }
}

/// The process exit status `main` returning `code` would give (std keeps it private;
/// `ExitCode` compares equal to `ExitCode::from(n)` for the `n` it was made from).
fn exit_status(code: std::process::ExitCode) -> i32 {
    (0..=u8::MAX)
        .find(|&n| std::process::ExitCode::from(n) == code)
        .map_or(1, i32::from)
}

/// Runs a hidden mode (shim, exec helper) when this process was started in one and returns
/// its exit code; `None` for a normal CLI start. Must be called first in `main`, before any
/// thread exists: the modes fork and `setns`, which need a single-threaded process.
pub fn hidden_main() -> Option<u8> {
    // args_os: a normal CLI start may have non-UTF-8 arguments, which `args()` would panic on.
    let mode = std::env::args_os().nth(1)?;
    let rest: Vec<String> = std::env::args_os()
        .skip(2)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mode = mode.to_str()?;
    // The caller's dup2 cleared the close-on-exec flag of the fds it passed (3: report;
    // 4 to 6: the shim's seccomp program, removal notice and sealed mount): set it again,
    // so none reaches the workload even if the init's close_range(CLOEXEC) fails (it
    // needs Linux 5.11).
    let passed: &[i32] = match mode {
        shim::MODE => &[
            shim::REPORT_FD,
            shim::SECCOMP_FD,
            shim::REMOVED_FD,
            shim::SEALED_MOUNT_FD,
        ],
        exec::MODE => &[shim::REPORT_FD],
        _ => &[],
    };
    for &fd in passed {
        // SAFETY: fcntl on an integer fd changes only its flags.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    if mode == shim::MODE {
        // Anything else the caller left open without close-on-exec (a test harness's pipe,
        // say) would stay open in the shim for the container's whole life, and keep a
        // reader of it waiting for EOF as long.
        // SAFETY: close_range over fds this process never uses; an error (ENOSYS before
        // Linux 5.9) leaves them open, as before.
        unsafe { libc::close_range(shim::SEALED_MOUNT_FD as u32 + 1, u32::MAX, 0) };
    }
    match mode {
        shim::MODE => Some(shim::main(&rest)),
        exec::MODE => Some(exec::main(&rest)),
        _ => None,
    }
}
