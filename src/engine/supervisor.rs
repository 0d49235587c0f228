//! The per-project supervisor: a small tokio process started by `up` and found again by
//! later commands through a socket and a lock in the project's state dir. It owns what must
//! outlive one CLI invocation but not one container: the embedded DNS server, the
//! healthchecks (`engine::health::monitor`), restart policies (`engine::restart`) and the
//! `die` events (`engine::events`). Containers themselves are owned by their
//! shims, so the supervisor can die and be replaced without touching them: a new one
//! re-reads the project record from disk and serves the same answers.
//!
//! Takes: the state root and a project name. Gives: [`serve`] (the hidden
//! `berth __supervise` mode) and [`ensure`] / [`request`] (the client side). Neighbours:
//! `engine::protocol` (wire format), `state` (paths, `ProjectRecord`), `network::dns`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use super::protocol::{Reply, Request};
use crate::state::{self, Root};

/// Supervisor errors.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot {action} for project {project}")]
    Io {
        action: &'static str,
        project: String,
        #[source]
        source: std::io::Error,
    },
    #[error("supervisor of project {project} did not come up within {waited:?}; see {log}")]
    StartTimeout {
        project: String,
        waited: Duration,
        log: PathBuf,
    },
    #[error("supervisor of project {project} answered an error: {message}")]
    Remote { project: String, message: String },
    #[error("supervisor of project {project} sent a malformed reply")]
    Protocol {
        project: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
}

/// The hooks the supervisor applies a project record with (DNS today).
pub trait Services: Send {
    /// Make the served state match `record` (start/stop listeners, replace records).
    fn apply(
        &mut self,
        record: &state::ProjectRecord,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
    /// Stop everything (before exit).
    fn shutdown(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// Run the supervisor for `project` until a `Shutdown` request. Exits quietly with
/// `Ok(false)` when another live supervisor already holds the lock.
pub async fn serve<S: Services>(
    root: &Root,
    project: &str,
    mut services: S,
) -> Result<bool, SupervisorError> {
    let io = |action: &'static str| {
        let project = project.to_string();
        move |source| SupervisorError::Io {
            action,
            project,
            source,
        }
    };
    let dir = root.project_dir(project);
    std::fs::create_dir_all(&dir).map_err(io("create the project state dir"))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.supervisor_lock(project))
        .map_err(io("open the supervisor lock"))?;
    // flock, not a pid file: the kernel drops it when we die, however we die.
    let lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            info!(project, "another supervisor is running");
            return Ok(false);
        }
        Err((_, e)) => return Err(io("lock the supervisor lock")(e.into())),
    };
    let sock = root.supervisor_socket(project);
    // We hold the lock, so a socket file left here belongs to a dead supervisor.
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(io("bind the supervisor socket"))?;

    if let Some(record) = state::read_json::<state::ProjectRecord>(&root.project_state(project))? {
        if let Err(e) = services.apply(&record).await {
            warn!(project, error = %e, "applying the project record at start");
        }
    }
    info!(project, pid = std::process::id(), "supervisor serving");

    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept on the supervisor socket");
                continue;
            }
        };
        let (rd, mut wr) = stream.into_split();
        let mut lines = BufReader::new(rd).lines();
        let Ok(Some(line)) = lines.next_line().await else {
            continue;
        };
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = write_reply(&mut wr, &Reply::err(format!("bad request: {e}"))).await;
                continue;
            }
        };
        debug!(?req, "supervisor request");
        let reply = match req {
            Request::Ping => Reply::ok(),
            Request::Reload => {
                match state::read_json::<state::ProjectRecord>(&root.project_state(project)) {
                    Ok(Some(record)) => match services.apply(&record).await {
                        Ok(()) => Reply::ok(),
                        Err(e) => Reply::err(e),
                    },
                    Ok(None) => Reply::ok(),
                    Err(e) => Reply::err(e.to_string()),
                }
            }
            Request::Shutdown => {
                services.shutdown().await;
                let _ = write_reply(&mut wr, &Reply::ok()).await;
                let _ = std::fs::remove_file(&sock);
                drop(lock);
                info!(project, "supervisor stopped");
                return Ok(true);
            }
        };
        let _ = write_reply(&mut wr, &reply).await;
    }
}

async fn write_reply(wr: &mut tokio::net::unix::OwnedWriteHalf, r: &Reply) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    wr.write_all(&bytes).await
}

/// Send one request to the project's supervisor. `Ok(None)` when none is listening.
pub async fn request(
    root: &Root,
    project: &str,
    req: &Request,
) -> Result<Option<Reply>, SupervisorError> {
    let sock = root.supervisor_socket(project);
    let stream = match UnixStream::connect(&sock).await {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let (rd, mut wr) = stream.into_split();
    let mut bytes = serde_json::to_vec(req).expect("requests always serialise");
    bytes.push(b'\n');
    if wr.write_all(&bytes).await.is_err() {
        return Ok(None);
    }
    let mut lines = BufReader::new(rd).lines();
    let line = match lines.next_line().await {
        Ok(Some(l)) => l,
        _ => return Ok(None),
    };
    let reply: Reply = serde_json::from_str(&line).map_err(|source| SupervisorError::Protocol {
        project: project.to_string(),
        source,
    })?;
    if !reply.ok {
        return Err(SupervisorError::Remote {
            project: project.to_string(),
            message: reply.error.unwrap_or_default(),
        });
    }
    Ok(Some(reply))
}

/// Make sure a supervisor serves `project`, starting one (`exe __supervise`, detached in
/// its own session so it outlives this CLI and a terminal's Ctrl-C) if none answers.
/// `env` is added to the supervisor's environment (e.g. `BERTH_DNS_UPSTREAM`).
/// Returns its pid.
pub async fn ensure(
    root: &Root,
    project: &str,
    exe: &Path,
    env: &[(String, String)],
) -> Result<u32, SupervisorError> {
    if let Some(r) = request(root, project, &Request::Ping).await? {
        return Ok(r.pid);
    }
    let io = |action: &'static str| {
        let project = project.to_string();
        move |source| SupervisorError::Io {
            action,
            project,
            source,
        }
    };
    std::fs::create_dir_all(root.project_dir(project)).map_err(io("create the project dir"))?;
    let log_path = root.supervisor_log(project);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io("open the supervisor log"))?;
    let log2 = log.try_clone().map_err(io("open the supervisor log"))?;
    let mut cmd = std::process::Command::new(supervisor_exe(exe));
    cmd.arg("--root")
        .arg(root.path())
        .arg("__supervise")
        .arg(project)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(io("start the supervisor"))?;
    let started = Instant::now();
    let waited = Duration::from_secs(10);
    loop {
        if let Some(r) = request(root, project, &Request::Ping).await? {
            // Reap our direct child when it exits later, so it never lingers as a zombie
            // while this CLI runs on (the supervisor is reparented when we exit).
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return Ok(r.pid);
        }
        if let Ok(Some(_)) = child.try_wait() {
            // It exited: maybe it lost the lock race to another supervisor; ask again.
            if let Some(r) = request(root, project, &Request::Ping).await? {
                return Ok(r.pid);
            }
            return Err(SupervisorError::StartTimeout {
                project: project.to_string(),
                waited: started.elapsed(),
                log: log_path,
            });
        }
        if started.elapsed() > waited {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SupervisorError::StartTimeout {
                project: project.to_string(),
                waited,
                log: log_path,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ask the supervisor to stop and wait until its socket is gone. No-op when none runs.
pub async fn shutdown(root: &Root, project: &str) -> Result<(), SupervisorError> {
    let Some(reply) = request(root, project, &Request::Shutdown).await? else {
        return Ok(());
    };
    // Wait for the process to be gone so nothing of the project remains after `down`.
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid = nix::unistd::Pid::from_raw(reply.pid as i32);
    while Instant::now() < deadline {
        if nix::sys::signal::kill(pid, None).is_err() || is_zombie(reply.pid) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    warn!(
        project,
        pid = reply.pid,
        "supervisor still alive after shutdown; killing it"
    );
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    berth_runtime::state::read_proc(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(berth_runtime::state::stat_fields(&s)?.next()? == "Z"))
        .unwrap_or(true)
}

/// File name of the dedicated supervisor binary, installed beside `berth`.
pub const SUPERVISOR_NAME: &str = "berth-supervisor";

/// What [`ensure`] runs: `berth-supervisor` beside `exe` when it is installed (it links
/// only the supervisor, so it stays resident at about half the size), else `exe` itself.
fn supervisor_exe(exe: &Path) -> PathBuf {
    // Its own small binary, else the whole CLI (when `exe` is the small `berth`, which would
    // only exec it), else `exe` itself.
    for name in [SUPERVISOR_NAME, crate::FULL_NAME] {
        let p = exe.with_file_name(name);
        if p != exe && p.is_file() {
            return p;
        }
    }
    exe.to_path_buf()
}

/// Entry point of the supervisor process (`berth-supervisor`, or `cli::main` before the
/// CLI parser runs) when the command line is exactly what [`ensure`] spawns: `--root DIR
/// __supervise PROJECT`. `None` for anything else (the clap `__supervise` command covers
/// other spellings, on the CLI's runtime).
///
/// Sized for a process that lives as long as the project (issue #9: supervisor and 10
/// shims ≤ 15 MB RSS): one glibc malloc arena instead of one per thread; a current-thread
/// tokio runtime (a DNS answer takes microseconds; blocking work goes to a small pool
/// whose idle threads exit after a second); and no clap command tree built, so fewer
/// pages of the binary are ever touched.
pub fn main_if_supervising() -> Option<std::process::ExitCode> {
    use std::process::ExitCode;
    let mut args = std::env::args_os().skip(1);
    let (flag, root, mode, project) = (args.next()?, args.next()?, args.next()?, args.next()?);
    if flag != "--root" || mode != "__supervise" || args.next().is_some() {
        return None;
    }
    let project = project.into_string().ok()?;
    // SAFETY: mallopt before any other thread exists; M_ARENA_MAX only caps how many
    // arenas later threads may create.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .thread_keep_alive(Duration::from_secs(1))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "berth: supervisor of project {project}: cannot start the async runtime: {e}"
            );
            return Some(ExitCode::FAILURE);
        }
    };
    let root = Root::new(PathBuf::from(root));
    Some(match rt.block_on(super::run_supervisor(&root, &project)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: supervisor of project {project}: {e:#}");
            ExitCode::FAILURE
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervisor_runs_from_the_small_binary_when_installed() {
        let dir = tempfile::tempdir().unwrap();
        let berth = dir.path().join("berth");
        std::fs::write(&berth, b"").unwrap();
        assert_eq!(supervisor_exe(&berth), berth, "falls back to berth itself");
        let small = dir.path().join(SUPERVISOR_NAME);
        std::fs::write(&small, b"").unwrap();
        assert_eq!(supervisor_exe(&berth), small);
        // A directory of that name is not a binary.
        std::fs::remove_file(&small).unwrap();
        std::fs::create_dir(&small).unwrap();
        assert_eq!(supervisor_exe(&berth), berth);
    }
}
