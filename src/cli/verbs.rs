//! The compose verbs beyond up/down/ps/logs/stop/exec, with docker compose v2's flags:
//! `start`, `restart`, `kill`, `pause`, `unpause`, `rm`, `create`, `top`, `port`, `events`,
//! `wait`, `ls`, `cp`, `pull`, `images`.
//!
//! Takes parsed flags; loads the project for its name, services and dependency order, hands
//! the work to `engine::verbs`, and renders results through `render`. Exit codes: 1 on
//! errors, `wait` the first container's exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::{render, GlobalOpts};
use crate::engine::verbs::CpDirection;
use crate::engine::{events, Engine};
use crate::project::Project;

#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// Services to start (default: all)
    pub services: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RestartArgs {
    /// Shutdown timeout in seconds
    #[arg(short = 't', long)]
    pub timeout: Option<u64>,
    /// Services to restart (default: all)
    pub services: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct KillArgs {
    /// SIGNAL to send to the container
    #[arg(short = 's', long, default_value = "SIGKILL")]
    pub signal: String,
    /// Services to kill (default: all)
    pub services: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServicesArgs {
    /// Services (default: all)
    pub services: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RmArgs {
    /// Don't ask to confirm removal (berth never asks)
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Stop the containers, if required, before removing
    #[arg(short = 's', long)]
    pub stop: bool,
    /// Remove any anonymous volumes attached to containers
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Services to remove (default: all)
    pub services: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Recreate containers even if their configuration hasn't changed
    #[arg(long, conflicts_with = "no_recreate")]
    pub force_recreate: bool,
    /// If containers already exist, don't recreate them
    #[arg(long)]
    pub no_recreate: bool,
    /// Remove containers for services not defined in the compose file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Services to create (default: all)
    pub services: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PortArgs {
    /// tcp or udp
    #[arg(long, default_value = "tcp")]
    pub protocol: String,
    /// Index of the container if the service has multiple replicas
    #[arg(long, default_value_t = 1)]
    pub index: u32,
    pub service: String,
    pub private_port: u16,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Output events as a stream of json objects
    #[arg(long)]
    pub json: bool,
    /// Services (default: all)
    pub services: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Services to wait for
    #[arg(required = true)]
    pub services: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LsArgs {
    /// Show all stopped Compose projects
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only display project names
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Format: table or json
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CpArgs {
    /// Index of the container if the service has multiple replicas
    #[arg(long, default_value_t = 1)]
    pub index: u32,
    /// Always follow a symbolic link given as SRC_PATH
    #[arg(short = 'L', long)]
    pub follow_link: bool,
    /// Archive mode (accepted; berth copies modes and leaves owners to the copying user)
    #[arg(short = 'a', long)]
    pub archive: bool,
    /// SERVICE:SRC_PATH or a host path
    pub source: String,
    /// SERVICE:DEST_PATH or a host path
    pub destination: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// Pull what it can and ignore images with pull failures
    #[arg(long)]
    pub ignore_pull_failures: bool,
    /// Pull without printing progress information
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Services to pull (default: all)
    pub services: Vec<String>,
}

/// `berth images`: in a compose project (a compose file here, or `-f`/`-p`/
/// `--project-directory` given) the images of the project's containers, like `docker
/// compose images`; otherwise every image in the store, like `docker images`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImagesArgs {
    /// Only show image IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Format: table or json (project images)
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Show manifest digests (store listing)
    #[arg(long)]
    pub digests: bool,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Services (in a project), or a REPOSITORY[:TAG] to filter the store listing
    pub names: Vec<String>,
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

/// The project name and (when the compose file loads) the project, with the named
/// services checked against it. Works from state alone with `-p` and no compose file.
fn project_for(g: &GlobalOpts, services: &[String]) -> anyhow::Result<(String, Option<Project>)> {
    match load(g, &[]) {
        Ok(p) => {
            for s in services {
                if !p.services.values().any(|x| &x.name == s) {
                    anyhow::bail!("no such service: {s}");
                }
            }
            Ok((p.name.as_str().to_string(), Some(p)))
        }
        Err(e) => match &g.project_name {
            Some(n) => {
                tracing::info!(error = %e, "no project files; working on project {n} from state");
                Ok((n.clone(), None))
            }
            None => Err(e),
        },
    }
}

/// Services in dependency order (dependencies first): `selected` (all when empty).
pub fn dependency_order(project: &Project, selected: &[String]) -> Vec<String> {
    fn visit(
        project: &Project,
        name: &str,
        seen: &mut std::collections::BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        if let Some(s) = project.services.values().find(|s| s.name == name) {
            for d in s.depends_on.keys() {
                visit(project, d.as_str(), seen, out);
            }
        }
        out.push(name.to_string());
    }
    let mut seen = Default::default();
    let mut all = Vec::new();
    for s in project.services.values() {
        visit(project, &s.name, &mut seen, &mut all);
    }
    if selected.is_empty() {
        all
    } else {
        all.into_iter().filter(|s| selected.contains(s)).collect()
    }
}

fn order_of(project: &Option<Project>, services: &[String]) -> Vec<String> {
    match project {
        Some(p) => dependency_order(p, services),
        None => services.to_vec(),
    }
}

pub async fn start(g: &GlobalOpts, a: StartArgs) -> anyhow::Result<ExitCode> {
    let (name, project) = project_for(g, &a.services)?;
    let engine = open_engine(g)?;
    let order = order_of(&project, &a.services);
    let started = engine
        .start_services(&name, &order)
        .await
        .with_context(|| format!("starting project {name}"))?;
    for id in started {
        render::status("Container", &id, "Started");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn restart(g: &GlobalOpts, a: RestartArgs) -> anyhow::Result<ExitCode> {
    let (name, project) = project_for(g, &a.services)?;
    let engine = open_engine(g)?;
    let order = order_of(&project, &[]);
    let done = engine
        .restart_services(
            &name,
            &order,
            &a.services,
            Duration::from_secs(a.timeout.unwrap_or(10)),
        )
        .await
        .with_context(|| format!("restarting project {name}"))?;
    for id in done {
        render::status("Container", &id, "Started");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn kill(g: &GlobalOpts, a: KillArgs) -> anyhow::Result<ExitCode> {
    let (name, _) = project_for(g, &a.services)?;
    let signal = crate::engine::verbs::parse_signal(&a.signal)?;
    let engine = open_engine(g)?;
    let killed = engine.kill(&name, &a.services, signal).await?;
    if killed.is_empty() {
        eprintln!("no container to kill");
    }
    for id in killed {
        render::status("Container", &id, "Killed");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn pause(g: &GlobalOpts, a: ServicesArgs, freeze: bool) -> anyhow::Result<ExitCode> {
    let (name, _) = project_for(g, &a.services)?;
    let engine = open_engine(g)?;
    let done = engine.pause(&name, &a.services, freeze).await?;
    for id in done {
        render::status("Container", &id, if freeze { "Paused" } else { "Unpaused" });
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rm(g: &GlobalOpts, a: RmArgs) -> anyhow::Result<ExitCode> {
    let (name, _) = project_for(g, &a.services)?;
    let engine = open_engine(g)?;
    let removed = engine
        .rm(
            &name,
            &a.services,
            a.stop,
            a.volumes,
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("removing containers of project {name}"))?;
    if removed.is_empty() {
        eprintln!("No stopped containers");
    }
    for id in removed {
        render::status("Container", &id, "Removed");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn create(g: &GlobalOpts, a: CreateArgs) -> anyhow::Result<ExitCode> {
    let project = Arc::new(load(g, &a.services)?);
    let engine = open_engine(g)?;
    let opts = crate::plan::UpOptions {
        force_recreate: a.force_recreate,
        no_recreate: a.no_recreate,
        remove_orphans: a.remove_orphans,
        no_start: true,
        ..Default::default()
    };
    let plan = engine
        .plan_up(&project, &opts, &a.services, false, &Default::default())
        .await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(render::progress(rx, g.progress.clone()));
    let result = engine.up(project.clone(), plan, tx).await;
    let _ = printer.await;
    result.with_context(|| format!("creating project {}", project.name.as_str()))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn top(g: &GlobalOpts, a: ServicesArgs) -> anyhow::Result<ExitCode> {
    let (name, _) = project_for(g, &a.services)?;
    let engine = open_engine(g)?;
    let tops = engine.top(&name, &a.services).await?;
    for (i, (id, rows)) in tops.iter().enumerate() {
        if i > 0 {
            render::lines(&[""])?;
        }
        render::lines(&[id])?;
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.uid.clone(),
                    r.pid.to_string(),
                    r.ppid.to_string(),
                    r.c.to_string(),
                    r.stime.clone(),
                    r.tty.clone(),
                    r.time.clone(),
                    r.cmd.clone(),
                ]
            })
            .collect();
        render::table(
            &["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
            &rows,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn port(g: &GlobalOpts, a: PortArgs) -> anyhow::Result<ExitCode> {
    if a.protocol != "tcp" && a.protocol != "udp" {
        anyhow::bail!("--protocol {:?}: expected tcp or udp", a.protocol);
    }
    let (name, _) = project_for(g, std::slice::from_ref(&a.service))?;
    let engine = open_engine(g)?;
    let addr = engine
        .port(&name, &a.service, a.index, a.private_port, &a.protocol)
        .await?;
    render::lines(&[addr])?;
    Ok(ExitCode::SUCCESS)
}

pub async fn events(g: &GlobalOpts, a: EventsArgs) -> anyhow::Result<ExitCode> {
    let (name, _) = project_for(g, &a.services)?;
    let engine = open_engine(g)?;
    let path = engine.root.events_log(&name);
    // Like `docker compose events`: from now on, until interrupted.
    let mut offset = events::end_offset(&path);
    loop {
        // Exits are noticed here too, so events work even without a live supervisor.
        let (root, rt, p) = (engine.root.clone(), engine.runtime.clone(), name.clone());
        let _ = tokio::task::spawn_blocking(move || events::scan_dies(&root, &rt, &p)).await;
        let (evs, next) = events::read_from(&path, offset);
        offset = next;
        let out: Vec<String> = evs
            .iter()
            .filter(|e| a.services.is_empty() || a.services.contains(&e.service))
            .map(|e| {
                if a.json {
                    serde_json::to_string(e).unwrap_or_default()
                } else {
                    e.text()
                }
            })
            .collect();
        render::lines(&out)?;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

pub async fn wait(g: &GlobalOpts, a: WaitArgs) -> anyhow::Result<ExitCode> {
    let (name, _) = project_for(g, &a.services)?;
    let engine = open_engine(g)?;
    let first = engine
        .wait_services(&name, &a.services, |id, code| {
            let _ = render::lines(&[format!("{id} exited with code {code}")]);
        })
        .await?;
    Ok(ExitCode::from(first.clamp(0, 255) as u8))
}

pub async fn ls(g: &GlobalOpts, a: LsArgs) -> anyhow::Result<ExitCode> {
    let engine = open_engine(g)?;
    let rows = engine.ls(a.all).await?;
    if a.quiet {
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        render::lines(&names)?;
    } else if a.format == "json" {
        render::lines(&[serde_json::to_string(&rows)?])?;
    } else if a.format == "table" {
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .map(|r| vec![r.name, r.status, r.config_files])
            .collect();
        render::table(&["NAME", "STATUS", "CONFIG FILES"], &rows)?;
    } else {
        anyhow::bail!("--format {:?}: expected table or json", a.format);
    }
    Ok(ExitCode::SUCCESS)
}

/// `SERVICE:PATH` → (service, path); a path starting with `/` or `.` is the host's.
fn container_side(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    arg.split_once(':').filter(|(s, _)| !s.is_empty())
}

pub async fn cp(g: &GlobalOpts, a: CpArgs) -> anyhow::Result<ExitCode> {
    let (direction, service, inside, host) =
        match (container_side(&a.source), container_side(&a.destination)) {
            (Some((s, p)), None) => (CpDirection::OutOfContainer, s, p, a.destination.as_str()),
            (None, Some((s, p))) => (CpDirection::IntoContainer, s, p, a.source.as_str()),
            (Some(_), Some(_)) => anyhow::bail!("copying between services is not supported"),
            (None, None) => {
                anyhow::bail!("one of source or destination must be a service path (SERVICE:PATH)")
            }
        };
    if host == "-" {
        anyhow::bail!("copying a tar stream from/to stdin/stdout is not supported yet");
    }
    let host_path = if host.starts_with('/') {
        PathBuf::from(host)
    } else {
        // join keeps a trailing `/` or `/.`, which carry meaning.
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(host)
    };
    let (name, _) = project_for(g, &[service.to_string()])?;
    let engine = open_engine(g)?;
    let bytes = engine
        .cp(
            &name,
            service,
            a.index,
            direction,
            inside,
            &host_path,
            a.follow_link,
        )
        .await?;
    eprintln!("Successfully copied {bytes} bytes");
    Ok(ExitCode::SUCCESS)
}

pub async fn pull(g: &GlobalOpts, a: PullArgs) -> anyhow::Result<ExitCode> {
    let project = load(g, &[])?;
    for s in &a.services {
        if !project.services.values().any(|x| &x.name == s) {
            anyhow::bail!("no such service: {s}");
        }
    }
    let engine = open_engine(g)?;
    let warnings = engine
        .pull_images(&project, &a.services, a.quiet, a.ignore_pull_failures)
        .await
        .with_context(|| format!("pulling images of project {}", project.name.as_str()))?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn images(g: &GlobalOpts, a: ImagesArgs) -> anyhow::Result<ExitCode> {
    let explicit = !g.files.is_empty() || g.project_name.is_some() || g.project_directory.is_some();
    let project = match load(g, &[]) {
        Ok(p) => Some(p),
        Err(e) if explicit && g.project_name.is_none() => return Err(e),
        Err(_) => None,
    };
    if project.is_none() && !explicit {
        // Not in a project: the store, like `docker images`.
        return super::image::run_images(
            g,
            super::image::ImagesArgs {
                repository: a.names.first().cloned(),
                quiet: a.quiet,
                digests: a.digests,
                no_trunc: a.no_trunc,
            },
        )
        .await;
    }
    let (name, _) = project_for(g, &a.names)?;
    let engine = open_engine(g)?;
    let rows = engine.project_images(&name, &a.names).await?;
    if a.quiet {
        let mut ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        ids.dedup();
        render::lines(&ids)?;
    } else if a.format == "json" {
        render::lines(&[serde_json::to_string(&rows)?])?;
    } else {
        let short = |id: &str| -> String {
            let hex = id.strip_prefix("sha256:").unwrap_or(id);
            if a.no_trunc {
                id.to_string()
            } else {
                hex.chars().take(12).collect()
            }
        };
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.container.clone(),
                    r.repository.clone(),
                    r.tag.clone(),
                    short(&r.id),
                    super::image::human_size(r.size),
                ]
            })
            .collect();
        render::table(
            &["CONTAINER", "REPOSITORY", "TAG", "IMAGE ID", "SIZE"],
            &rows,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
