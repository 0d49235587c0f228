//! `berth container ...`: single containers with docker-run habits (owned by the runtime work).
//!
//! Takes parsed arguments and the global options (`--root`: containers live in
//! `<root>/containers`, shared with compose's), gives Docker-like output and exit codes. The
//! work is `berth_runtime`'s; this file parses, builds a `ContainerSpec` (from `--rootfs DIR`
//! or an image in the store) and formats. Runtime calls block, so they run on
//! `spawn_blocking`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_runtime::{
    Container, ContainerId, ContainerSpec, ExecSpec, Limits, Rootfs, Runtime, Signal, Status,
};

use super::GlobalOpts;
use crate::state::Root;

/// Label in which an earlier berth named the writable layer of an image-based `container
/// run` (now the spec's `owned_dirs`); `rm` still removes it for such containers.
const RW_LABEL: &str = "berth.container.rw-dir";

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ContainerCommand {
    /// Create and run a new container
    Run(Box<RunArgs>),
    /// List containers
    #[command(visible_alias = "ps", visible_alias = "list")]
    Ls(LsArgs),
    /// Stop running containers (stop signal, grace period, then SIGKILL)
    Stop(StopArgs),
    /// Send a signal to running containers
    Kill(KillArgs),
    /// Pause all processes in containers
    Pause(NamesArgs),
    /// Unpause all processes in containers
    Unpause(NamesArgs),
    /// Remove containers
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Print a container's logs
    Logs(LogsArgs),
    /// Show a container's spec and state as JSON
    Inspect(NamesArgs),
    /// Run a command in a running container
    Exec(ExecArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container name
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep STDIN open and attach it (piped input reaches the container; EOF closes it)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY (with -i: an interactive terminal, raw mode, resizes followed)
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Container name (default: a random one)
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables (KEY=VALUE, or KEY to copy it from here)
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container host name
    #[arg(long)]
    pub hostname: Option<String>,
    /// Memory limit (e.g. 64m, 1g)
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Number of CPUs
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Tune container pids limit
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    /// Add Linux capabilities
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Give extended privileges to this container
    #[arg(long)]
    pub privileged: bool,
    /// Mount the container's root filesystem as read only
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Run an init inside the container that forwards signals and reaps processes
    #[arg(long)]
    pub init: bool,
    /// Overwrite the default entrypoint of the image
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Security options (no-new-privileges, seccomp=unconfined)
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// Use this directory as the root filesystem instead of an image
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// IMAGE [COMMAND] [ARG...] (with --rootfs: COMMAND [ARG...])
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only display container names
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct NamesArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct KillArgs {
    /// Signal to send to the container
    #[arg(short = 's', long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL)
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// Follow log output until the container exits
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Show timestamps
    #[arg(short = 't', long)]
    pub timestamps: bool,
    pub container: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep STDIN open
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Set environment variables
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Username or UID
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    pub container: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

pub async fn run(g: &GlobalOpts, cmd: ContainerCommand) -> anyhow::Result<ExitCode> {
    let root = g.root.clone();
    tokio::task::spawn_blocking(move || run_blocking(Root::new(root), cmd))
        .await
        .context("container command task failed")?
}

/// The same without an async runtime (the CLI's entry for `berth container ...`).
pub fn run_sync(g: &GlobalOpts, cmd: ContainerCommand) -> anyhow::Result<ExitCode> {
    run_blocking(Root::new(g.root.clone()), cmd)
}

/// The CLI ends soon after its command: its shims may stay its children (no extra fork per
/// start, see `Runtime::with_detached_shims`).
fn runtime(root: &Root) -> Runtime {
    Runtime::new(root.containers_dir()).with_detached_shims(false)
}

fn run_blocking(root: Root, cmd: ContainerCommand) -> anyhow::Result<ExitCode> {
    let rt = runtime(&root);
    match cmd {
        ContainerCommand::Run(a) => run_container(&root, &rt, *a),
        ContainerCommand::Ls(a) => ls(&rt, a),
        ContainerCommand::Stop(a) => each(&rt, &a.containers, |c| {
            match c.stop(Duration::from_secs(a.time)) {
                // `-d --rm`: stopped, and removed by its shim right away.
                Ok(_) | Err(berth_runtime::RuntimeError::Removed { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }),
        ContainerCommand::Kill(a) => {
            let sig = berth_runtime::spec::parse_signal(&a.signal)
                .with_context(|| format!("invalid signal {:?}", a.signal))?;
            each(&rt, &a.containers, |c| {
                if sig == Signal::SIGKILL {
                    c.kill_all().map_err(Into::into)
                } else {
                    c.signal(sig).map_err(Into::into)
                }
            })
        }
        ContainerCommand::Pause(a) => each(&rt, &a.containers, |c| c.pause().map_err(Into::into)),
        ContainerCommand::Unpause(a) => {
            each(&rt, &a.containers, |c| c.unpause().map_err(Into::into))
        }
        ContainerCommand::Rm(a) => each(&rt, &a.containers, |c| {
            if !a.force && matches!(c.status()?, Status::Running | Status::Paused) {
                bail!("cannot remove container {}: container is running: stop the container before removing or force remove", c.id());
            }
            remove(&rt, c)
        }),
        ContainerCommand::Logs(a) => {
            let c = rt.get(&a.container)?;
            print_logs(&c, a.follow, a.timestamps, None)?;
            Ok(ExitCode::SUCCESS)
        }
        ContainerCommand::Inspect(a) => {
            let mut out = Vec::new();
            for name in &a.containers {
                let c = rt.get(name)?;
                let (status, exit) = match c.status()? {
                    Status::Exited(e) => ("exited", Some(e)),
                    Status::Created => ("created", None),
                    Status::Running => ("running", None),
                    Status::Paused => ("paused", None),
                    Status::Dead => ("dead", None),
                };
                out.push(serde_json::json!({
                    "Name": c.id().as_str(),
                    "State": { "Status": status, "Pid": c.pid(), "ShimPid": c.shim_pid(), "Exit": exit },
                    "LogPath": c.log_path(),
                    "Spec": c.spec(),
                }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
        ContainerCommand::Exec(a) => {
            let c = rt.get(&a.container)?;
            let mut e = ExecSpec::new(a.command);
            e.env = expand_env(&a.env);
            e.user = a.user;
            e.working_dir = a.workdir;
            e.tty = a.tty;
            e.interactive = a.interactive;
            let out = c.exec(&e)?;
            std::io::stdout().write_all(&out.stdout)?;
            std::io::stderr().write_all(&out.stderr)?;
            Ok(ExitCode::from(out.code.clamp(0, 255) as u8))
        }
    }
}

/// Applies `f` to each named container; reports every failure, Docker style.
fn each(
    rt: &Runtime,
    names: &[String],
    f: impl Fn(Container) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for name in names {
        match rt.get(name).map_err(anyhow::Error::from).and_then(&f) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("Error response from berth: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn remove(rt: &Runtime, c: Container) -> anyhow::Result<()> {
    // `delete` removes the spec's `owned_dirs`; containers made by an earlier berth name
    // their writable layer only in this label.
    let rw = c.spec().labels.get(RW_LABEL).cloned();
    rt.delete(c.id().as_str())?;
    if let Some(rw) = rw {
        std::fs::remove_dir_all(&rw)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .with_context(|| format!("removing the writable layer {rw}"))?;
    }
    Ok(())
}

/// `KEY` alone copies the variable from this environment, as `docker run -e KEY` does.
fn expand_env(env: &[String]) -> Vec<String> {
    env.iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                std::env::var(e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect()
}

/// `64m`, `1g`, `512k`, `1024` (bytes).
fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num.parse().with_context(|| format!("invalid size {s:?}"))?;
    Ok((n * mul as f64) as u64)
}

fn random_name() -> String {
    let mut b = [0u8; 6];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    format!("c-{}", hex::encode(b))
}

fn run_container(root: &Root, rt: &Runtime, a: RunArgs) -> anyhow::Result<ExitCode> {
    if a.tty && a.interactive && !a.detach && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // As docker: raw mode and resizes need a terminal on our side.
        bail!("the input device is not a TTY");
    }
    let name = a.name.clone().unwrap_or_else(random_name);
    let id = ContainerId::new(name.clone())?;
    let mut args = a.args.clone();
    let mut env = Vec::new();
    let mut user = None;
    let mut workdir = None;
    let mut owned_dirs = Vec::new();
    let rootfs = match &a.rootfs {
        Some(dir) => {
            if let Some(ep) = &a.entrypoint {
                args.insert(0, ep.clone());
            }
            Rootfs::Dir(
                dir.canonicalize()
                    .with_context(|| format!("rootfs {}", dir.display()))?,
            )
        }
        None => {
            let reference = args.remove(0);
            let store =
                crate::image::store::Store::open(root.path()).context("opening the image store")?;
            let image = store
                .get(&reference)
                .with_context(|| format!("image {reference}"))?;
            let cfg = &image.config.config;
            let entry = match &a.entrypoint {
                Some(ep) => vec![ep.clone()],
                None => cfg.entrypoint.clone().unwrap_or_default(),
            };
            let cmd = if !args.is_empty() || a.entrypoint.is_some() {
                args.clone()
            } else {
                cfg.cmd.clone().unwrap_or_default()
            };
            args = entry.into_iter().chain(cmd).collect();
            env = cfg.env.clone().unwrap_or_default();
            user = cfg.user.clone().filter(|u| !u.is_empty());
            workdir = cfg.working_dir.clone().filter(|w| !w.is_empty());
            let rw = root.path().join("container-rw").join(&name);
            let parent = rw.parent().unwrap_or(root.path());
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            // A new dir only: never another container's layer, nor one left behind.
            match std::fs::create_dir(&rw) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                    "container {name} already exists (or its writable layer {} was left behind)",
                    rw.display()
                ),
                other => other.with_context(|| format!("creating {}", rw.display()))?,
            }
            for d in ["upper", "work"] {
                std::fs::create_dir(rw.join(d))
                    .with_context(|| format!("creating {}", rw.display()))?;
            }
            // The writable layer goes with the container, whoever removes it.
            owned_dirs.push(rw.clone());
            Rootfs::Overlay {
                lower: image.layers.clone(),
                upper: rw.join("upper"),
                work: rw.join("work"),
            }
        }
    };
    if args.is_empty() {
        bail!("no command specified");
    }
    let mut spec = ContainerSpec::new(id, rootfs, args);
    spec.owned_dirs = owned_dirs;
    // `--rm`: the shim removes the container once it has exited, as Docker's daemon does
    // (`AutoRemove`), so it goes even if berth is killed; in the foreground berth holds the
    // exit record until it has read the code.
    spec.auto_remove = a.rm;
    spec.env = env;
    spec.env.extend(expand_env(&a.env));
    spec.user = a.user.clone().or(user);
    spec.working_dir = a.workdir.clone().or(workdir);
    spec.hostname = Some(
        a.hostname
            .clone()
            .unwrap_or_else(|| name.chars().take(12).collect()),
    );
    spec.limits = Limits {
        memory: a.memory.as_deref().map(parse_bytes).transpose()?,
        cpus: a.cpus,
        pids: a.pids_limit,
        ..Default::default()
    };
    spec.cap_add = a.cap_add.clone();
    spec.cap_drop = a.cap_drop.clone();
    spec.privileged = a.privileged;
    spec.read_only_rootfs = a.read_only;
    spec.init = a.init;
    spec.tty = a.tty;
    spec.open_stdin = a.interactive;
    spec.attach = !a.detach && (a.tty || a.interactive);
    if a.tty {
        spec.console_size = berth_runtime::terminal_size();
    }
    for o in &a.security_opt {
        match o.as_str() {
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true" => {
                spec.no_new_privileges = true
            }
            "seccomp=unconfined" | "seccomp:unconfined" => {
                spec.seccomp = berth_runtime::Seccomp::Unconfined
            }
            other => bail!("unsupported security option {other:?}"),
        }
    }
    // Without a terminal, signals to berth go on to the container, as `docker run`'s
    // sig-proxy does: caught from before the start (none is lost in between) until the
    // container is removed (a Ctrl-C cannot cut the `--rm` cleanup short).
    let proxy = if a.detach || a.tty {
        None
    } else {
        berth_runtime::CaughtSignals::install(&PROXIED)
    };
    let (c, hold) = match rt.run_holding(&spec) {
        Ok(started) => started,
        Err(e) => {
            for dir in &spec.owned_dirs {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(e.into());
        }
    };
    if a.detach {
        drop(hold);
        println!("{name}");
        return Ok(ExitCode::SUCCESS);
    }
    // From here on, `--rm` removes the container however this ends.
    let ended = attach_and_wait(&c, &name, &a, proxy.as_ref());
    if a.rm {
        if !matches!(ended, Ok(Ok(_))) {
            // Ended by a signal (an ssh disconnect, a kill) or an error: it may still run;
            // stop it, briefly, to remove it.
            let _ = c.stop(Duration::from_secs(2));
        }
        // The code is read: let the shim remove it, and return once it is gone.
        let removed = match c.wait_removed(hold, Duration::from_secs(10)) {
            Ok(true) => Ok(()),
            // The shim could not (shim.log says why) or is stuck: remove it here, and say
            // what fails.
            Ok(false) | Err(_) => remove(rt, c),
        };
        if ended.is_ok() {
            removed?;
        }
    }
    match ended? {
        Ok(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Err(sig) => {
            berth_runtime::reraise(sig);
            Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8))
        }
    }
}

/// Attaches to `c` as `a` asks, relays until it ends, waits for it: its exit code, or
/// `Err(signal)` when a signal ended a terminal session (the terminal is restored, the
/// container still runs). A container that has exited before we could attach (its shim no
/// longer waits for us): its log and exit code.
fn attach_and_wait(
    c: &Container,
    name: &str,
    a: &RunArgs,
    proxy: Option<&berth_runtime::CaughtSignals>,
) -> anyhow::Result<Result<i32, i32>> {
    let attached = if a.tty || a.interactive {
        match c.attach() {
            Ok(at) => Some(at),
            Err(_) if matches!(c.status()?, Status::Exited(_)) => None,
            Err(e) => return Err(e).with_context(|| format!("attaching to {name}")),
        }
    } else {
        None
    };
    match attached {
        // The tty's output comes through the attach socket (the log has it too).
        Some(at) if a.tty => {
            if let berth_runtime::AttachEnd::Signal(sig) = at.relay_tty(a.interactive) {
                return Ok(Err(sig));
            }
        }
        attached => {
            if let Some(mut w) = attached.and_then(|at| at.into_stdin()) {
                // Its own thread: a stdin that never ends must not keep berth alive.
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut w);
                });
            }
            print_logs(c, true, false, proxy.map(|p| (p, name)))?;
        }
    }
    Ok(Ok(c.wait(None)?.code))
}

/// What a foreground `container run` without a terminal passes on to its container.
const PROXIED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Prints the log; with `follow`, keeps reading until the container has exited. With
/// `proxy`, the signals it caught are passed on to the container (named for messages).
fn print_logs(
    c: &Container,
    follow: bool,
    timestamps: bool,
    proxy: Option<(&berth_runtime::CaughtSignals, &str)>,
) -> anyhow::Result<()> {
    use std::io::{BufRead, Seek};
    use std::os::unix::fs::MetadataExt;
    let path = c.log_path();
    let mut pos = 0u64;
    let mut file: Option<(u64, std::fs::File)> = None;
    // While proxying, output that cannot be written (a hung-up terminal: EIO) is dropped
    // and berth keeps following: the container's exit code still decides.
    let mut output_gone = false;
    let mut killed = false;
    loop {
        for sig in proxy.map(|(p, _)| p.pending()).unwrap_or_default() {
            if killed {
                break;
            }
            match c.forward(sig) {
                Ok(true) => {
                    killed = true;
                    let name = proxy.map(|(_, n)| n).unwrap_or_default();
                    // Not eprintln: after a hang-up stderr is gone too.
                    let _ = writeln!(
                        std::io::stderr(),
                        "berth: {name}: its PID 1 has no handler for {sig}, which the kernel drops; killed the container"
                    );
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(%sig, error = %e, "not forwarded"),
            }
        }
        let done = !follow || matches!(c.status()?, Status::Exited(_) | Status::Dead);
        // The file stays open between rounds: the lines of a container that removes itself
        // (`--rm`) are still read to the end. Once read through, a new file at the path
        // (rotation) is followed from its start.
        loop {
            if file.is_none() {
                pos = 0;
                file = std::fs::File::open(&path)
                    .ok()
                    .and_then(|f| Some((f.metadata().ok()?.ino(), f)));
            }
            let Some((ino, f)) = &file else { break };
            let ino = *ino;
            let mut r = std::io::BufReader::new(f);
            r.seek(std::io::SeekFrom::Start(pos))?;
            loop {
                let mut line = String::new();
                let n = r.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break; // a partial line is read again, whole, next round
                }
                pos += n as u64;
                let Ok(rec) = serde_json::from_str::<berth_runtime::log::LogLine>(&line) else {
                    continue;
                };
                let text = if timestamps {
                    format!("{} {}", rec.time, rec.log)
                } else {
                    rec.log
                };
                if output_gone {
                    continue;
                }
                let written = if rec.stream == "stderr" {
                    std::io::stderr().write_all(text.as_bytes())
                } else {
                    std::io::stdout().write_all(text.as_bytes())
                };
                match written {
                    Err(_) if proxy.is_some() => output_gone = true,
                    other => other?,
                }
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.ino() != ino || m.len() < pos => file = None,
                _ => break, // the same file, or removed with its container
            }
        }
        match std::io::stdout().flush() {
            Err(_) if proxy.is_some() => output_gone = true,
            other => other?,
        }
        if done {
            return Ok(());
        }
        // Poll the log every 50 ms, but wake at once when the container exits (the wait
        // is a pidfd poll), so a short-lived container costs no extra tick.
        match c.wait(Some(Duration::from_millis(50))) {
            Ok(_)
            | Err(berth_runtime::RuntimeError::Timeout { .. })
            | Err(berth_runtime::RuntimeError::Removed { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn ls(rt: &Runtime, a: LsArgs) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    for c in rt.list()? {
        let status = c.status()?;
        let running = matches!(status, Status::Running | Status::Paused);
        if !a.all && !running {
            continue;
        }
        let st = match status {
            Status::Created => "Created".to_string(),
            Status::Running => "Up".to_string(),
            Status::Paused => "Up (Paused)".to_string(),
            Status::Exited(e) => format!("Exited ({})", e.code),
            Status::Dead => "Dead".to_string(),
        };
        let cmd = c.spec().args.join(" ");
        let cmd = if cmd.len() > 30 {
            format!(
                "\"{}…\"",
                &cmd[..cmd.char_indices().nth(28).map(|x| x.0).unwrap_or(cmd.len())]
            )
        } else {
            format!("\"{cmd}\"")
        };
        let pid = if running {
            c.pid().map(|p| p.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        rows.push((c.id().to_string(), cmd, st, pid));
    }
    let mut out = std::io::stdout().lock();
    if a.quiet {
        for r in rows {
            writeln!(out, "{}", r.0)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
    let w1 = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .max(7);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(6);
    writeln!(
        out,
        "{:<w0$}   {:<w1$}   {:<w2$}   PID",
        "NAME", "COMMAND", "STATUS"
    )?;
    for r in rows {
        writeln!(out, "{:<w0$}   {:<w1$}   {:<w2$}   {}", r.0, r.1, r.2, r.3)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512k").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert_eq!(parse_bytes("1.5m").unwrap(), 3 << 19);
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn env_without_value_is_copied() {
        std::env::set_var("BERTH_TEST_ENV_COPY", "v");
        assert_eq!(
            expand_env(&[
                "A=1".into(),
                "BERTH_TEST_ENV_COPY".into(),
                "BERTH_UNSET_XYZ".into()
            ]),
            vec!["A=1".to_string(), "BERTH_TEST_ENV_COPY=v".to_string()]
        );
    }
}
