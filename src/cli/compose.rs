//! The compose lifecycle verbs with docker compose v2's flags: `up`, `down`, `ps`, `logs`,
//! `stop`, `start`, `restart`, `kill`, `rm`, plus the hidden `__supervise` mode.
//!
//! Takes parsed flags; loads the project (`project::load`), hands it to `engine`, and
//! renders results. Decides nothing itself.

use std::process::ExitCode;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::{render, GlobalOpts};
use crate::engine::{self, Engine};
use crate::plan::UpOptions;
use crate::project::Project;

#[derive(Debug, clap::Subcommand)]
pub enum ComposeCommand {
    /// Create and start containers
    Up(UpArgs),
    /// Stop and remove containers, networks (and volumes with -v)
    Down(DownArgs),
    /// List containers
    Ps(PsArgs),
    /// View output from containers
    Logs(LogsArgs),
    /// Stop services
    Stop(StopArgs),
    /// Execute a command in a running container
    Exec(ExecArgs),
    /// Run a one-off command on a service
    Run(super::run::RunArgs),
    /// Start services
    Start(super::verbs::StartArgs),
    /// Restart service containers
    Restart(super::verbs::RestartArgs),
    /// Force stop service containers
    Kill(super::verbs::KillArgs),
    /// Pause services
    Pause(super::verbs::ServicesArgs),
    /// Unpause services
    Unpause(super::verbs::ServicesArgs),
    /// Removes stopped service containers
    Rm(super::verbs::RmArgs),
    /// Creates containers for a service
    Create(super::verbs::CreateArgs),
    /// Display the running processes
    Top(super::verbs::ServicesArgs),
    /// Print the public port for a port binding
    Port(super::verbs::PortArgs),
    /// Receive real time events from containers
    Events(super::verbs::EventsArgs),
    /// Block until containers of all (or specified) services stop
    Wait(super::verbs::WaitArgs),
    /// List running compose projects
    Ls(super::verbs::LsArgs),
    /// Copy files/folders between a service container and the local filesystem
    Cp(super::verbs::CpArgs),
    /// Pull service images
    Pull(super::verbs::PullArgs),
    /// Run the per-project supervisor (started by `up`; not for direct use)
    #[command(name = "__supervise", hide = true)]
    Supervise { project: String },
}

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Detached mode: run containers in the background
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Wait for services to be running|healthy (implies detached mode)
    #[arg(long)]
    pub wait: bool,
    /// Maximum seconds to wait for the project to be running|healthy
    #[arg(long)]
    pub wait_timeout: Option<u64>,
    /// Recreate containers even if their configuration hasn't changed
    #[arg(long, conflicts_with = "no_recreate")]
    pub force_recreate: bool,
    /// If containers already exist, don't recreate them
    #[arg(long)]
    pub no_recreate: bool,
    /// Don't start linked services
    #[arg(long)]
    pub no_deps: bool,
    /// Remove containers for services not defined in the compose file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Create containers without starting them
    #[arg(long)]
    pub no_start: bool,
    /// Shutdown timeout in seconds
    #[arg(short = 't', long)]
    pub timeout: Option<u64>,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Scale SERVICE to NUM instances (overrides `scale` and `deploy.replicas`)
    #[arg(long, value_name = "SERVICE=NUM")]
    pub scale: Vec<String>,
    /// Stops all containers if any container was stopped (foreground only)
    #[arg(long, conflicts_with_all = ["detach", "wait"])]
    pub abort_on_container_exit: bool,
    /// Stops all containers if any container exited with failure (foreground only)
    #[arg(long, conflicts_with_all = ["detach", "wait", "abort_on_container_exit"])]
    pub abort_on_container_failure: bool,
    /// Return the exit code of the selected service container (implies
    /// --abort-on-container-exit)
    #[arg(long, value_name = "SERVICE", conflicts_with_all = ["detach", "wait"])]
    pub exit_code_from: Option<String>,
    /// Services to start (default: all)
    pub services: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DownArgs {
    /// Remove named volumes declared in the volumes section and anonymous volumes
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Remove containers for services not defined in the compose file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Shutdown timeout in seconds
    #[arg(short = 't', long)]
    pub timeout: Option<u64>,
    /// Remove images used by services: "local" (only images without a custom tag, i.e.
    /// built for the project) or "all"
    #[arg(long, value_parser = ["local", "all"])]
    pub rmi: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PsArgs {
    /// Show all stopped containers
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only display IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Display services
    #[arg(long)]
    pub services: bool,
    /// Format: table or json
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Filter containers by state (repeatable)
    #[arg(long, value_parser = ["paused", "restarting", "removing", "running", "dead", "created", "exited"])]
    pub status: Vec<String>,
    /// Filter containers by a property (only `status=STATE`)
    #[arg(long)]
    pub filter: Option<String>,
    /// Services to list
    pub service_names: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs for each container
    #[arg(short = 'n', long = "tail")]
    pub tail: Option<String>,
    /// Show timestamps
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Produce monochrome output
    #[arg(long)]
    pub no_color: bool,
    /// Don't print prefix in logs
    #[arg(long)]
    pub no_log_prefix: bool,
    /// Show logs since timestamp (e.g. 2013-01-02T13:23:37Z) or relative (e.g. 42m)
    #[arg(long)]
    pub since: Option<String>,
    /// Show logs before a timestamp (e.g. 2013-01-02T13:23:37Z) or relative (e.g. 42m)
    #[arg(long)]
    pub until: Option<String>,
    /// Services to show
    pub services: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// Detached mode: run the command in the background
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Disable pseudo-TTY allocation (by default one is allocated when stdin is a terminal)
    #[arg(short = 'T', long = "no-TTY")]
    pub no_tty: bool,
    /// Set environment variables
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Path to workdir directory for this command
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Run the command as this user
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Index of the container if the service has multiple replicas
    #[arg(long, default_value_t = 1)]
    pub index: u32,
    /// Service name
    pub service: String,
    /// Command and arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StopArgs {
    /// Shutdown timeout in seconds
    #[arg(short = 't', long)]
    pub timeout: Option<u64>,
    /// Services to stop (default: all)
    pub services: Vec<String>,
}

/// Dispatch one compose verb.
pub async fn run(g: &GlobalOpts, cmd: ComposeCommand) -> anyhow::Result<ExitCode> {
    let root = crate::state::Root::new(&g.root);
    match cmd {
        ComposeCommand::Supervise { project } => {
            engine::run_supervisor(&root, &project)
                .await
                .with_context(|| format!("supervisor of project {project}"))?;
            Ok(ExitCode::SUCCESS)
        }
        ComposeCommand::Up(args) => up(g, args).await,
        ComposeCommand::Down(args) => down(g, args).await,
        ComposeCommand::Ps(args) => ps(g, args).await,
        ComposeCommand::Logs(args) => logs(g, args).await,
        ComposeCommand::Stop(args) => stop(g, args).await,
        ComposeCommand::Exec(args) => exec(g, args).await,
        ComposeCommand::Start(a) => super::verbs::start(g, a).await,
        ComposeCommand::Restart(a) => super::verbs::restart(g, a).await,
        ComposeCommand::Kill(a) => super::verbs::kill(g, a).await,
        ComposeCommand::Pause(a) => super::verbs::pause(g, a, true).await,
        ComposeCommand::Unpause(a) => super::verbs::pause(g, a, false).await,
        ComposeCommand::Rm(a) => super::verbs::rm(g, a).await,
        ComposeCommand::Create(a) => super::verbs::create(g, a).await,
        ComposeCommand::Top(a) => super::verbs::top(g, a).await,
        ComposeCommand::Port(a) => super::verbs::port(g, a).await,
        ComposeCommand::Events(a) => super::verbs::events(g, a).await,
        ComposeCommand::Wait(a) => super::verbs::wait(g, a).await,
        ComposeCommand::Ls(a) => super::verbs::ls(g, a).await,
        ComposeCommand::Cp(a) => super::verbs::cp(g, a).await,
        ComposeCommand::Pull(a) => super::verbs::pull(g, a).await,
        ComposeCommand::Run(args) => super::run::run(g, args).await,
    }
}

pub(crate) fn open_engine(g: &GlobalOpts) -> anyhow::Result<Arc<Engine>> {
    let exe = std::env::current_exe().context("cannot find the berth binary")?;
    Ok(Arc::new(Engine::open(&g.root, exe).with_context(|| {
        format!("opening berth state at {}", g.root.display())
    })?))
}

pub(crate) fn load(g: &GlobalOpts, services: &[String]) -> anyhow::Result<Project> {
    let opts = super::config::load_options(g, services, true)?;
    Ok(crate::project::load(&opts)?)
}

/// The project name for commands that work from state: the loaded project's name, so
/// `-p`, `COMPOSE_PROJECT_NAME`, `name:` and the directory name all apply as for `up`.
fn project_name(g: &GlobalOpts) -> anyhow::Result<String> {
    Ok(load(g, &[])?.name.as_str().to_string())
}

async fn up(g: &GlobalOpts, args: UpArgs) -> anyhow::Result<ExitCode> {
    let project = Arc::new(load(g, &args.services)?);
    let engine = open_engine(g)?;
    let opts = UpOptions {
        force_recreate: args.force_recreate,
        no_recreate: args.no_recreate,
        remove_orphans: args.remove_orphans,
        no_start: args.no_start,
        wait: args.wait,
    };
    let mut scale = std::collections::BTreeMap::new();
    for s in &args.scale {
        let (svc, n) = s
            .split_once('=')
            .with_context(|| format!("--scale {s:?}: expected SERVICE=NUM"))?;
        let n: u32 = n
            .parse()
            .with_context(|| format!("--scale {s:?}: {n:?} is not a number"))?;
        if !project.services.values().any(|x| x.name == svc) {
            anyhow::bail!("--scale {s:?}: no such service: {svc}");
        }
        scale.insert(svc.to_string(), n);
    }
    if let Some(svc) = &args.exit_code_from {
        if !project.services.values().any(|x| &x.name == svc) {
            anyhow::bail!("--exit-code-from {svc}: no such service: {svc}");
        }
    }
    let plan = engine
        .plan_up(&project, &opts, &args.services, args.no_deps, &scale)
        .await?;
    if args.dry_run {
        render::plan(&plan);
        return Ok(ExitCode::SUCCESS);
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(render::progress(rx, g.progress.clone()));
    let result = match args.wait_timeout.filter(|_| args.wait) {
        Some(secs) => match tokio::time::timeout(
            Duration::from_secs(secs),
            engine.up(project.clone(), plan, tx),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => {
                let _ = printer.await;
                anyhow::bail!(
                    "project {} was not ready within {secs}s",
                    project.name.as_str()
                );
            }
        },
        None => engine.up(project.clone(), plan, tx).await,
    };
    let _ = printer.await;
    result.with_context(|| format!("bringing up project {}", project.name.as_str()))?;
    if args.detach || args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    // Foreground: stream logs until Ctrl-C, then stop the project's containers.
    let name = project.name.as_str().to_string();
    let style = LogStyle {
        color: std::io::IsTerminal::is_terminal(&std::io::stdout()),
        timestamps: false,
        no_prefix: false,
        raw: false,
    };
    let abort = args.abort_on_container_exit
        || args.abort_on_container_failure
        || args.exit_code_from.is_some();
    let mut logs = LogFollower::new(engine.clone(), name.clone(), Vec::new(), None, style);
    // Foreground `up` ends on Ctrl-C, or with --abort-on-container-exit when a container
    // exits (with --abort-on-container-failure: exits non-zero).
    // Watched: the replicas of the services this `up` brought up (it started every one of
    // them that was not running), not `run` one-offs or other services' containers.
    let chosen = engine::lifecycle::select_services(&project, &args.services, args.no_deps)?;
    let watched: Vec<String> = engine
        .ps(&name, true)
        .await?
        .into_iter()
        .filter(|r| !r.oneoff && chosen.contains(&r.service))
        .map(|r| r.name)
        .collect();
    let exited = async {
        if !abort {
            return std::future::pending().await;
        }
        loop {
            if let Ok(rows) = engine.ps(&name, true).await {
                if let Some(r) = rows.iter().find(|r| {
                    watched.contains(&r.name)
                        && r.state == "exited"
                        && (!args.abort_on_container_failure || r.exit_code != Some(0))
                }) {
                    return (r.name.clone(), r.exit_code.unwrap_or(0));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut code = 130;
    tokio::select! {
        r = logs.follow() => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
        }
        (who, c) = exited => {
            logs.pass().await?;
            eprintln!("{who} exited with code {c}");
            eprintln!("Aborting on container exit...");
            code = c;
        }
    }
    let timeout = Duration::from_secs(args.timeout.unwrap_or(10));
    tokio::select! {
        r = engine.stop(&name, &[], timeout) => r?,
        _ = tokio::signal::ctrl_c() => {
            engine.stop(&name, &[], Duration::ZERO).await?;
        }
    }
    logs.pass().await?;
    if let Some(svc) = &args.exit_code_from {
        let rows = engine.ps(&name, true).await?;
        code = rows
            .iter()
            .find(|r| &r.service == svc && watched.contains(&r.name))
            .and_then(|r| r.exit_code)
            .unwrap_or(0);
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

async fn down(g: &GlobalOpts, args: DownArgs) -> anyhow::Result<ExitCode> {
    // Like `docker compose -p NAME down`, this works from state alone when no compose file
    // is around (a fixture's temp dir already gone, a test cleaning up after a panic).
    let (name, declared, images) = match load(g, &[]) {
        Ok(project) => {
            let declared = project.own_volume_names();
            // `--rmi all`: every service's image; `local`: only images built for the
            // project (named after it, services without `image:`; berth builds none yet).
            let images: Vec<String> = project
                .services
                .values()
                .filter_map(|s| match (args.rmi.as_deref(), &s.image) {
                    (Some("all"), Some(i)) => Some(i.clone()),
                    (Some(_), None) => Some(format!("{}-{}", project.name.as_str(), s.name)),
                    _ => None,
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            (project.name.as_str().to_string(), declared, images)
        }
        Err(e) => match &g.project_name {
            Some(n) => {
                tracing::info!(error = %e, "no project files; taking down project {n} from state");
                (n.clone(), Vec::new(), Vec::new())
            }
            None => return Err(e),
        },
    };
    let engine = open_engine(g)?;
    let volumes = if args.volumes {
        engine.project_volumes(&name, declared)
    } else {
        Vec::new()
    };
    engine
        .down(
            &name,
            &volumes,
            Duration::from_secs(args.timeout.unwrap_or(10)),
        )
        .await
        .with_context(|| format!("taking down project {name}"))?;
    let in_use = super::image::containers_in_use(&g.root);
    let mut failed = false;
    for image in &images {
        match engine.images.remove(image, false, &in_use) {
            Ok(_) => eprintln!(" ✔ Image {image}  Removed"),
            Err(crate::image::store::StoreError::NotFound { .. }) => {}
            Err(e) => {
                render::error(&anyhow::Error::new(e).context(format!("removing image {image}")));
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

async fn ps(g: &GlobalOpts, args: PsArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(g)?;
    let engine = open_engine(g)?;
    let mut status = args.status.clone();
    if let Some(f) = &args.filter {
        match f.split_once('=') {
            Some(("status", v)) => status.push(v.to_string()),
            _ => anyhow::bail!("--filter {f:?}: only status=STATE is supported"),
        }
    }
    // Asking for a state that only stopped containers have implies -a, as in compose.
    let mut rows = engine.ps(&name, args.all || !status.is_empty()).await?;
    if !args.service_names.is_empty() {
        rows.retain(|r| args.service_names.contains(&r.service));
    }
    if !status.is_empty() {
        rows.retain(|r| status.contains(&r.state));
    }
    render::ps(&rows, args.quiet, args.services, &args.format)?;
    Ok(ExitCode::SUCCESS)
}

async fn stop(g: &GlobalOpts, args: StopArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(g)?;
    let engine = open_engine(g)?;
    engine
        .stop(
            &name,
            &args.services,
            Duration::from_secs(args.timeout.unwrap_or(10)),
        )
        .await?;
    Ok(ExitCode::SUCCESS)
}

async fn exec(g: &GlobalOpts, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(g)?;
    let engine = open_engine(g)?;
    // As docker compose: a tty when stdin is a terminal unless -T; stdin is then forwarded.
    let tty = !args.no_tty && !args.detach && std::io::IsTerminal::is_terminal(&std::io::stdin());
    let spec = berth_runtime::ExecSpec {
        args: args.command.clone(),
        env: args.env.clone(),
        user: args.user.clone(),
        working_dir: args.workdir.clone(),
        tty,
        interactive: tty,
        detach: args.detach,
        timeout_ms: None,
    };
    let out = engine.exec(&name, &args.service, args.index, spec).await?;
    use std::io::Write;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    Ok(ExitCode::from(out.code.clamp(0, 255) as u8))
}

async fn logs(g: &GlobalOpts, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(g)?;
    let engine = open_engine(g)?;
    let tail = match args.tail.as_deref() {
        None | Some("all") => None,
        Some(n) => Some(
            n.parse::<usize>()
                .with_context(|| format!("--tail {n:?}: not a number"))?,
        ),
    };
    let color = !args.no_color && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let now = time::OffsetDateTime::now_utc();
    let bound = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<i128>> {
        v.as_deref()
            .map(|s| {
                parse_time_bound(s, now).map_err(|why| anyhow::anyhow!("--{flag} {s:?}: {why}"))
            })
            .transpose()
    };
    let mut logs = LogFollower::new(
        engine,
        name,
        args.services,
        tail,
        LogStyle {
            color,
            timestamps: args.timestamps,
            no_prefix: args.no_log_prefix,
            raw: false,
        },
    );
    logs.since = bound("since", &args.since)?;
    logs.until = bound("until", &args.until)?;
    if args.follow {
        logs.follow().await?;
    } else {
        logs.pass().await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--since`/`--until`: an RFC 3339 time, a unix timestamp (`1700000000[.5]`) or a
/// duration before `now` (`42m`, `1h30m`, `10s`); as unix nanoseconds.
fn parse_time_bound(s: &str, now: time::OffsetDateTime) -> Result<i128, String> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t.unix_timestamp_nanos());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Ok((secs * 1e9) as i128);
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                1e-3
            }
            ('h', _) => 3600.0,
            ('m', _) => 60.0,
            ('s', _) => 1.0,
            _ => return Err("expected a timestamp or a duration like 42m".into()),
        };
        let n: f64 = num
            .parse()
            .map_err(|_| "expected a timestamp or a duration like 42m".to_string())?;
        total += n * unit;
        num.clear();
    }
    if !num.is_empty() || s.is_empty() {
        return Err("expected a timestamp or a duration like 42m".into());
    }
    Ok(now.unix_timestamp_nanos() - (total * 1e9) as i128)
}

fn prefix_of(service: &str, n: u32) -> String {
    format!("{service}-{n}")
}

/// How log lines are printed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogStyle {
    pub(crate) color: bool,
    pub(crate) timestamps: bool,
    pub(crate) no_prefix: bool,
    /// The containers' own output as they wrote it: stdout to stdout, stderr to stderr,
    /// no prefix (what `run` shows).
    pub(crate) raw: bool,
}

/// Prints the project's logs: the last `tail` lines of each container first, then (each
/// [`LogFollower::pass`]) only what was appended since, read from the byte offset where the
/// previous pass stopped, picking up new containers and rotated files.
pub(crate) struct LogFollower {
    engine: Arc<Engine>,
    project: String,
    services: Vec<String>,
    tail: Option<usize>,
    style: LogStyle,
    /// Only this container's log, when set.
    pub(crate) only: Option<String>,
    /// Only lines with a time in `since..=until` (unix ns).
    since: Option<i128>,
    until: Option<i128>,
    /// Per log file: (inode, bytes consumed, an unterminated last line).
    files: std::collections::HashMap<std::path::PathBuf, (u64, u64, Vec<u8>)>,
    /// `tail` applies to the files of the first pass only; containers that appear later
    /// are shown from their first line.
    first_pass: bool,
}

impl LogFollower {
    pub(crate) fn new(
        engine: Arc<Engine>,
        project: String,
        services: Vec<String>,
        tail: Option<usize>,
        style: LogStyle,
    ) -> Self {
        LogFollower {
            engine,
            project,
            services,
            tail,
            style,
            only: None,
            since: None,
            until: None,
            files: Default::default(),
            first_pass: true,
        }
    }

    /// Keep printing new lines until the future is dropped.
    async fn follow(&mut self) -> anyhow::Result<()> {
        loop {
            self.pass().await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Print what is new in every log file.
    pub(crate) async fn pass(&mut self) -> anyhow::Result<()> {
        use std::io::{Read, Seek};
        use std::os::unix::fs::MetadataExt;
        let files = self.engine.log_files(&self.project, &self.services).await?;
        let width = files
            .iter()
            .map(|f| prefix_of(&f.1, f.2).len())
            .max()
            .unwrap_or(0);
        for (i, (id, svc, n, path)) in files.iter().enumerate() {
            if self.only.as_ref().is_some_and(|o| o != id) {
                continue;
            }
            let Ok(mut f) = std::fs::File::open(path) else {
                continue;
            };
            let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
            let first = self.first_pass && !self.files.contains_key(path);
            let entry = self
                .files
                .entry(path.clone())
                .or_insert((ino, 0, Vec::new()));
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if entry.0 != ino || len < entry.1 {
                // Rotated (a new file under the same name): start over at its top.
                *entry = (ino, 0, Vec::new());
            }
            if f.seek(std::io::SeekFrom::Start(entry.1)).is_err() {
                continue;
            }
            let mut buf = std::mem::take(&mut entry.2);
            let read = f.read_to_end(&mut buf).unwrap_or(0);
            entry.1 += read as u64;
            let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            entry.2 = buf[complete..].to_vec();
            let text = String::from_utf8_lossy(&buf[..complete]);
            let mut lines: Vec<berth_runtime::log::LogLine> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|l: &berth_runtime::log::LogLine| self.in_window(&l.time))
                .collect();
            if first {
                if let Some(t) = self.tail {
                    lines.drain(..lines.len().saturating_sub(t));
                }
            }
            for l in &lines {
                if self.style.raw {
                    render::raw_log_line(l)?;
                    continue;
                }
                render::log_line(
                    &prefix_of(svc, *n),
                    width,
                    i,
                    self.style.color,
                    self.style.no_prefix,
                    self.style.timestamps,
                    l,
                );
            }
        }
        self.first_pass = false;
        Ok(())
    }

    fn in_window(&self, time: &str) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Ok(t) =
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        else {
            return true;
        };
        let t = t.unix_timestamp_nanos();
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_time_bound;

    #[test]
    fn time_bounds() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let ns = |s: i128| s * 1_000_000_000;
        assert_eq!(parse_time_bound("42m", now), Ok(ns(1_000_000 - 42 * 60)));
        assert_eq!(parse_time_bound("1h30m", now), Ok(ns(1_000_000 - 5400)));
        assert_eq!(
            parse_time_bound("500ms", now),
            Ok(ns(1_000_000) - 500_000_000)
        );
        assert_eq!(parse_time_bound("1700000000", now), Ok(ns(1_700_000_000)));
        assert_eq!(
            parse_time_bound("1970-01-02T00:00:00Z", now),
            Ok(ns(86_400))
        );
        assert!(parse_time_bound("yesterday", now).is_err());
        assert!(parse_time_bound("5", now).is_ok());
        assert!(parse_time_bound("10x", now).is_err());
    }
}
