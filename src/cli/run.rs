//! `berth run`: a one-off container of a service, with docker compose v2's flags.
//!
//! The service's config is adjusted here (command, entrypoint, env, user, workdir, ports,
//! volumes); the engine's `run` plan makes what the one-off needs as `up` would (the
//! project's networks and volumes, its dependencies unless `--no-deps`), then creates
//! and starts the one-off (`<project>-<service>-run-<hex>`, label `oneoff=True`).
//! In the foreground its stdin is attached (a tty when stdin and stdout are terminals, or
//! with `-t`, unless `-T`: the terminal goes raw and is relayed both ways, resizes included;
//! otherwise stdin is copied into the container's stdin pipe and the output streamed from
//! the log), and berth exits with its exit code. The mechanism is the shim's attach socket
//! (`berth_runtime::Attach`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::{render, GlobalOpts};
use crate::plan::Op;
use crate::project::model::CommandLine;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Run container in background and print container name
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Automatically remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Override the entrypoint of the image
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Set environment variables
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Run as specified username or uid
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Publish a container's port(s) to the host
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Run command with all service's ports enabled and mapped to the host
    #[arg(short = 'P', long)]
    pub service_ports: bool,
    /// Bind mount a volume
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Add or override a label
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// Don't start linked services
    #[arg(long)]
    pub no_deps: bool,
    /// Disable pseudo-TTY allocation (by default one is allocated when stdin and stdout
    /// are terminals)
    #[arg(short = 'T', long = "no-TTY", conflicts_with = "tty")]
    pub no_tty: bool,
    /// Allocate a pseudo-TTY even when stdin or stdout is not a terminal
    #[arg(short = 't', long = "tty", hide = true)]
    pub tty: bool,
    /// Keep STDIN open and attached (the default, as in docker compose)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Service name
    pub service: String,
    /// Command and arguments (default: the service's command)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub async fn run(g: &GlobalOpts, args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut project = super::compose::load(g, std::slice::from_ref(&args.service))?;
    let key = project
        .services
        .keys()
        .find(|k| k.as_str() == args.service)
        .cloned()
        .with_context(|| format!("no such service: {}", args.service))?;
    let pname = project.name.clone();
    let dir = project.working_dir.clone();
    let shell_env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let name = match &args.name {
        Some(n) => n.clone(),
        None => format!(
            "{}-{}-run-{}",
            pname.as_str(),
            args.service,
            &uuid_hex()[..12]
        ),
    };
    {
        let svc = project.services.get_mut(&key).expect("found above");
        if !args.command.is_empty() {
            svc.command = Some(CommandLine::Exec(args.command.clone()));
        }
        if let Some(ep) = &args.entrypoint {
            let argv = shell_words::split(ep)
                .with_context(|| format!("--entrypoint {ep:?}: unbalanced quotes"))?;
            svc.entrypoint = Some(CommandLine::Exec(argv));
        }
        for e in &args.env {
            match e.split_once('=') {
                Some((k, v)) => svc.environment.insert(k.into(), Some(v.into())),
                // `-e NAME`: from berth's own environment, unset when it has none.
                None => svc.environment.insert(e.clone(), std::env::var(e).ok()),
            };
        }
        if let Some(w) = &args.workdir {
            svc.working_dir = Some(w.clone());
        }
        if let Some(u) = &args.user {
            svc.user = Some(u.clone());
        }
        for l in &args.labels {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            svc.labels.insert(k.into(), v.into());
        }
        // Like compose: the service's ports only with --service-ports; -p adds its own.
        if !args.service_ports {
            svc.ports.clear();
        }
        for p in &args.publish {
            let ports = crate::project::decode::parse_port(p)
                .map_err(|why| anyhow::anyhow!("--publish {p:?}: {why}"))?;
            svc.ports.extend(ports);
        }
        for v in &args.volumes {
            let m = crate::project::decode::parse_short_mount(v, &pname, &dir, &shell_env)
                .map_err(|why| anyhow::anyhow!("--volume {v:?}: {why}"))?;
            svc.volumes.push(m);
        }
        // A one-off has its own name, however the service names its container.
        svc.container_name = None;
        if !args.detach {
            // As docker compose: stdin attached (-i is the default), a tty when stdout is a
            // terminal (and stdin: its input goes raw) unless -T, or with -t. With -d the
            // service's own settings stay.
            svc.tty = !args.no_tty && (args.tty || stdio_is_terminal());
            svc.stdin_open = true;
        }
    }
    let tty = project.services[&key].tty && !args.detach;
    let project = Arc::new(project);
    let engine = super::compose::open_engine(g)?;
    // What the one-off needs, made as `up` makes it (networks, volumes, supervisor, and
    // the dependencies unless --no-deps), then the one-off itself.
    let plan = engine
        .plan_run(
            &project,
            &args.service,
            &name,
            args.no_deps,
            !args.detach,
            args.detach && args.rm,
        )
        .await?;
    // Progress only when dependencies are brought up: the networks, the image check and
    // the one-off itself are no news (compose prints nothing for them either).
    let progress = if plan.steps.iter().any(|s| {
        !matches!(
            s.op,
            Op::EnsureNetworks | Op::EnsureImage { .. } | Op::RunOneoff { .. }
        )
    }) {
        g.progress.clone()
    } else {
        "quiet".to_string()
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(render::progress(rx, progress));
    let started = engine
        .up(project.clone(), plan, tx)
        .await
        .with_context(|| format!("running service {}", args.service));
    let _ = printer.await;
    if args.detach {
        if let Err(e) = started {
            if args.rm {
                // Never started, so the supervisor won't see it exit: remove it here.
                let _ = engine
                    .remove_one(project.clone(), &name, Duration::from_secs(10))
                    .await;
            }
            return Err(e);
        }
        println!("{name}");
        return Ok(ExitCode::SUCCESS);
    }
    // From here on, `--rm` removes the one-off however this ends.
    let result = match started {
        Ok(()) if tty => attach_tty(&engine, pname.as_str(), &args.service, &name).await,
        Ok(()) => match attach_stdin(&engine, &name).await {
            Ok(()) => follow_to_exit(&engine, pname.as_str(), &args.service, &name).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    if args.rm {
        // Ended by a signal (an ssh disconnect, a kill): the one-off is stopped with a short
        // grace and removed before berth ends with that signal.
        let grace = match result {
            Ok(Ended::Signal(_)) => Duration::from_secs(2),
            _ => Duration::from_secs(10),
        };
        let removed = engine
            .remove_one(project.clone(), &name, grace)
            .await
            .with_context(|| format!("removing {name}"));
        if let (Ok(_), Err(e)) = (&result, removed) {
            return Err(e);
        }
    }
    match result? {
        Ended::Code(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Ended::Signal(sig) => {
            berth_runtime::reraise(sig);
            Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8))
        }
    }
}

/// How an attached one-off session ended for berth.
enum Ended {
    /// The one-off exited with this code.
    Code(i32),
    /// berth got this signal (SIGTERM, SIGHUP, SIGINT with a tty): the caller re-raises it.
    Signal(i32),
}

/// The one-off has exited (exit.json is written).
async fn has_exited(engine: &std::sync::Arc<crate::engine::Engine>, name: &str) -> bool {
    let rt = engine.runtime.clone();
    let n = name.to_string();
    tokio::task::spawn_blocking(move || rt.get(&n).and_then(|c| c.status()))
        .await
        .is_ok_and(|s| matches!(s, Ok(berth_runtime::Status::Exited(_))))
}

/// Relay the one-off's tty to ours (raw, resizes followed) until its output ends; its exit
/// code. A SIGTERM/SIGHUP/SIGINT to berth restores the terminal and is returned; the one-off
/// keeps running (its shim is its parent) unless the caller removes it. A one-off that has
/// exited before we could attach (its shim no longer waits): its log and exit code.
async fn attach_tty(
    engine: &std::sync::Arc<crate::engine::Engine>,
    project: &str,
    service: &str,
    name: &str,
) -> anyhow::Result<Ended> {
    let rt = engine.runtime.clone();
    let n = name.to_string();
    let attached = tokio::task::spawn_blocking(move || {
        let c = rt.get(&n)?;
        Ok::<_, anyhow::Error>(c.attach()?)
    })
    .await?
    .with_context(|| format!("attaching to {name}"));
    let attach = match attached {
        Ok(a) => a,
        Err(_) if has_exited(engine, name).await => {
            return follow_to_exit(engine, project, service, name).await
        }
        Err(e) => return Err(e),
    };
    let end = tokio::task::spawn_blocking(move || attach.relay_tty(true)).await?;
    if let berth_runtime::AttachEnd::Signal(sig) = end {
        return Ok(Ended::Signal(sig));
    }
    Ok(Ended::Code(engine.wait_exit(name).await?))
}

/// Copy our stdin into the one-off's stdin pipe (on a thread of its own: it may block on
/// a stdin that never ends, which must not hold up berth's exit); EOF closes it.
async fn attach_stdin(
    engine: &std::sync::Arc<crate::engine::Engine>,
    name: &str,
) -> anyhow::Result<()> {
    let rt = engine.runtime.clone();
    let n = name.to_string();
    let stdin = match tokio::task::spawn_blocking(move || {
        let c = rt.get(&n)?;
        Ok::<_, anyhow::Error>(c.attach()?.into_stdin())
    })
    .await?
    .with_context(|| format!("attaching to {name}"))
    {
        Ok(w) => w,
        // Exited before we came: nothing to feed, its log and exit code follow.
        Err(_) if has_exited(engine, name).await => None,
        Err(e) => return Err(e),
    };
    if let Some(mut w) = stdin {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut w);
        });
    }
    Ok(())
}

/// Stream the one-off's output until it exits (Ctrl-C stops it); its exit code. SIGHUP or
/// SIGTERM to berth ends the streaming and is returned.
async fn follow_to_exit(
    engine: &std::sync::Arc<crate::engine::Engine>,
    project: &str,
    service: &str,
    name: &str,
) -> anyhow::Result<Ended> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("catching SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("catching SIGTERM")?;
    let style = super::compose::LogStyle {
        raw: true,
        ..Default::default()
    };
    let mut logs = super::compose::LogFollower::new(
        engine.clone(),
        project.to_string(),
        vec![service.to_string()],
        None,
        style,
    );
    logs.only = Some(name.to_string());
    let code = loop {
        tokio::select! {
            r = engine.wait_exit(name) => break r?,
            _ = hup.recv() => return Ok(Ended::Signal(libc::SIGHUP)),
            _ = term.recv() => return Ok(Ended::Signal(libc::SIGTERM)),
            _ = tokio::time::sleep(Duration::from_millis(100)) => logs.pass().await?,
            _ = tokio::signal::ctrl_c() => {
                // Like docker: Ctrl-C stops the one-off (SIGTERM, then SIGKILL after 10 s).
                let rt = engine.runtime.clone();
                let n = name.to_string();
                tokio::task::spawn_blocking(move || rt.get(&n).and_then(|c| c.stop(Duration::from_secs(10))))
                    .await?
                    .ok();
            }
        }
    };
    logs.pass().await?;
    Ok(Ended::Code(code))
}

/// Both stdin and stdout are terminals: `berth run db pg_dump > dump.sql` gets no tty.
fn stdio_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// 32 random hex digits (a one-off container's name suffix, like compose's).
fn uuid_hex() -> String {
    let mut b = [0u8; 16];
    if getrandom(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = (t ^ (std::process::id() as u128) << 64).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}
