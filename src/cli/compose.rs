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
    /// Services to show
    pub services: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// Detached mode: run the command in the background
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Disable pseudo-TTY allocation (berth's exec never allocates one yet)
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
    }
}

fn open_engine(g: &GlobalOpts) -> anyhow::Result<Arc<Engine>> {
    let exe = std::env::current_exe().context("cannot find the berth binary")?;
    Ok(Arc::new(Engine::open(&g.root, exe).with_context(|| {
        format!("opening berth state at {}", g.root.display())
    })?))
}

fn load(g: &GlobalOpts, services: &[String]) -> anyhow::Result<Project> {
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
    };
    let follow = print_logs(engine.clone(), name.clone(), Vec::new(), None, style, true);
    tokio::select! {
        r = follow => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
        }
    }
    let timeout = Duration::from_secs(args.timeout.unwrap_or(10));
    tokio::select! {
        r = engine.stop(&name, &[], timeout) => r?,
        _ = tokio::signal::ctrl_c() => {
            engine.stop(&name, &[], Duration::ZERO).await?;
        }
    }
    Ok(ExitCode::from(130))
}

async fn down(g: &GlobalOpts, args: DownArgs) -> anyhow::Result<ExitCode> {
    // Like `docker compose -p NAME down`, this works from state alone when no compose file
    // is around (a fixture's temp dir already gone, a test cleaning up after a panic).
    let (name, declared) = match load(g, &[]) {
        Ok(project) => {
            let declared: Vec<String> = project
                .volumes
                .values()
                .filter(|v| !v.external)
                .map(|v| v.name.clone())
                .collect();
            (project.name.as_str().to_string(), declared)
        }
        Err(e) => match &g.project_name {
            Some(n) => {
                tracing::info!(error = %e, "no project files; taking down project {n} from state");
                (n.clone(), Vec::new())
            }
            None => return Err(e),
        },
    };
    let engine = open_engine(g)?;
    let mut volumes = Vec::new();
    if args.volumes {
        volumes = declared;
        // Volumes this project created (declared or anonymous), by their labels and names.
        for v in engine.volumes.list().unwrap_or_default() {
            let labelled = v.labels.get("com.docker.compose.project") == Some(&name);
            let anonymous = v.name.starts_with(&format!("{name}-")) && v.name.contains("-anon-");
            if (labelled || anonymous) && !volumes.contains(&v.name) {
                volumes.push(v.name);
            }
        }
    }
    engine
        .down(
            &name,
            &volumes,
            Duration::from_secs(args.timeout.unwrap_or(10)),
        )
        .await
        .with_context(|| format!("taking down project {name}"))?;
    Ok(ExitCode::SUCCESS)
}

async fn ps(g: &GlobalOpts, args: PsArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(g)?;
    let engine = open_engine(g)?;
    let mut rows = engine.ps(&name, args.all).await?;
    if !args.service_names.is_empty() {
        rows.retain(|r| args.service_names.contains(&r.service));
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
    let spec = berth_runtime::ExecSpec {
        args: args.command.clone(),
        env: args.env.clone(),
        user: args.user.clone(),
        working_dir: args.workdir.clone(),
    };
    let out = engine
        .exec(&name, &args.service, args.index, spec, args.detach)
        .await?;
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
    print_logs(
        engine,
        name,
        args.services,
        tail,
        LogStyle {
            color,
            timestamps: args.timestamps,
            no_prefix: args.no_log_prefix,
        },
        args.follow,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

fn prefix_of(service: &str, n: u32) -> String {
    format!("{service}-{n}")
}

/// How log lines are printed.
#[derive(Debug, Clone, Copy)]
struct LogStyle {
    color: bool,
    timestamps: bool,
    no_prefix: bool,
}

/// Print the project's logs (the last `tail` lines of each container first); with
/// `follow`, keep printing new lines as they are written, picking up new containers,
/// until the future is dropped.
async fn print_logs(
    engine: Arc<Engine>,
    project: String,
    services: Vec<String>,
    tail: Option<usize>,
    style: LogStyle,
    follow: bool,
) -> anyhow::Result<()> {
    // Lines already printed per log file.
    let mut seen: std::collections::HashMap<std::path::PathBuf, usize> = Default::default();
    let mut first = true;
    loop {
        let files = engine.log_files(&project, &services).await?;
        let width = files
            .iter()
            .map(|f| prefix_of(&f.1, f.2).len())
            .max()
            .unwrap_or(0);
        for (i, (_, svc, n, path)) in files.iter().enumerate() {
            let lines = berth_runtime::log::read_log(path).unwrap_or_default();
            let start = match seen.get(path) {
                Some(s) => (*s).min(lines.len()),
                None if first => tail.map(|t| lines.len().saturating_sub(t)).unwrap_or(0),
                None => 0,
            };
            for l in &lines[start..] {
                render::log_line(
                    &prefix_of(svc, *n),
                    width,
                    i,
                    style.color,
                    style.no_prefix,
                    style.timestamps,
                    l,
                );
            }
            seen.insert(path.clone(), lines.len());
        }
        if !follow {
            return Ok(());
        }
        first = false;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
