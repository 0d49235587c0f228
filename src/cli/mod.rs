//! Command-line interface: clap definitions and dispatch, one file per verb group.
//!
//! Takes argv, gives an exit code. Two entry points, one per binary:
//! - [`front_main`], the `berth` binary: the runtime's hidden single-threaded modes, then
//!   `berth container …`, synchronous and without the async stack; any other command is
//!   exec'd, unchanged, in `berth-full` beside it ([`crate::FULL_NAME`]). A container's start→exit
//!   time includes the CLI's own start-up, which grows with the binary: `berth` is ~3 MB,
//!   where the whole CLI is ~17 MB (bench section 1).
//! - [`main`], the `berth-full` binary: the hidden modes and the supervisor, then every
//!   command (the tokio runtime for all but `container`).
//!
//! Errors are `anyhow` with context here, at the edge; libraries use `thiserror`. `render`
//! is the only place that prints results.

pub mod compose;
pub mod config;
pub mod container;
pub mod image;
pub mod network;
pub mod render;
pub mod run;
pub mod system;
pub mod verbs;
pub mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::FULL_NAME;

/// Options shared by every command, with docker compose's names. Like docker compose's,
/// they go before the subcommand (`berth -f x.yaml logs -f`), so subcommands can reuse the
/// short letters (`logs -f`, `down -v`, `run -p`); only `--root` is accepted anywhere.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalOpts {
    /// Compose configuration files (repeatable, `-` for stdin)
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Project name
    #[arg(short = 'p', long = "project-name")]
    pub project_name: Option<String>,
    /// Alternate working directory (default: the directory of the first compose file)
    #[arg(long)]
    pub project_directory: Option<PathBuf>,
    /// Alternate environment files (repeatable)
    #[arg(long = "env-file")]
    pub env_files: Vec<PathBuf>,
    /// Profiles to enable (repeatable)
    #[arg(long = "profile")]
    pub profiles: Vec<String>,
    /// Progress output: auto, tty, plain, json, quiet
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// ANSI control characters: never, always, auto
    #[arg(long, default_value = "auto")]
    pub ansi: String,
    /// berth's state root (images, containers, volumes, networks)
    #[arg(
        long,
        global = true,
        env = "BERTH_ROOT",
        default_value = "/var/lib/berth"
    )]
    pub root: PathBuf,
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG wins when set
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The top of `berth --help`, shared by [`Cli`] and [`ContainerCli`].
const ABOUT: &str = "Compose-style multi-container orchestrator with its own container runtime";

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = ABOUT
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse, resolve and render the compose file in canonical format
    Config(config::ConfigArgs),
    #[command(flatten)]
    Compose(compose::ComposeCommand),
    /// Manage images
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// List images: the project's containers' (in a compose project) or the store's
    Images(verbs::ImagesArgs),
    /// Manage networks
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Manage single containers
    #[command(subcommand)]
    Container(container::ContainerCommand),
    /// Manage berth (disk usage)
    #[command(subcommand)]
    System(system::SystemCommand),
    /// Manage volumes
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
}

/// `berth container …` alone: clap builds the definition of every subcommand before it
/// parses, and the compose verbs' are most of it (0.1-0.3 ms of CPU per command). The
/// same name, version and `container` subcommand as [`Cli`], so help and errors read the
/// same (a unit test compares them).
#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = ABOUT
)]
struct ContainerCli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: ContainerOnly,
}

#[derive(Debug, Subcommand)]
enum ContainerOnly {
    /// Manage single containers
    #[command(subcommand)]
    Container(container::ContainerCommand),
}

/// Entry point of the `berth` binary: `berth container …` here, everything else in
/// `berth-full`.
pub fn front_main() -> ExitCode {
    // Kept here too: the runtime falls back to this binary as its helper when `berth-shim`
    // is missing.
    if let Some(code) = berth_runtime::hidden_main() {
        return ExitCode::from(code);
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "container") {
        let ContainerCli {
            global,
            command: ContainerOnly::Container(cmd),
        } = ContainerCli::parse();
        init_tracing_front(global.verbose);
        return container_sync(&global, cmd);
    }
    exec_full()
}

/// Replaces this process with `berth-full` and the same argv (argv[0] too, so usage and
/// errors still name `berth`). Returns only when that fails.
fn exec_full() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "berth".into());
    let full = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(FULL_NAME),
        Err(e) => {
            eprintln!("berth: cannot find its own binary, and so {FULL_NAME} beside it: {e}");
            return ExitCode::from(127);
        }
    };
    let e = std::process::Command::new(&full)
        .arg0(arg0)
        .args(args)
        .exec();
    eprintln!(
        "berth: cannot run {}: {e} (every command but `berth container` is in {FULL_NAME}, \
         installed beside berth)",
        full.display()
    );
    ExitCode::from(127)
}

/// `container` commands are synchronous: no async runtime, whose worker threads and
/// hand-offs cost start->exit time (section 1 of the bench).
fn container_sync(global: &GlobalOpts, cmd: container::ContainerCommand) -> ExitCode {
    match container::run_sync(global, cmd) {
        Ok(code) => code,
        Err(err) => {
            render::error(&err);
            ExitCode::FAILURE
        }
    }
}

/// Entry point of the `berth-full` binary.
pub fn main() -> ExitCode {
    // Hidden modes (container init, shim) must run before tokio starts any thread.
    if let Some(code) = berth_runtime::hidden_main() {
        return ExitCode::from(code);
    }
    // The per-project supervisor: its own small runtime, without the CLI parser.
    if let Some(code) = crate::engine::supervisor::main_if_supervising() {
        return code;
    }
    let cli = Cli::parse();
    init_tracing(cli.global.verbose);
    if let Command::Container(cmd) = cli.command {
        return container_sync(&cli.global, cmd);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            render::error(&err);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Config(args) => config::run(g, args).await,
        Command::Compose(cmd) => compose::run(g, cmd).await,
        Command::Image(cmd) => image::run(g, cmd).await,
        Command::Images(args) => verbs::images(g, args).await,
        Command::Network(cmd) => network::run(g, cmd).await,
        Command::Container(cmd) => container::run(g, cmd).await,
        Command::System(cmd) => system::run(g, cmd).await,
        Command::Volume(cmd) => volume::run(g, cmd).await,
    }
}

/// The level `-v` asks for, where `RUST_LOG` is unset.
fn verbosity(verbose: u8) -> tracing_subscriber::filter::LevelFilter {
    use tracing_subscriber::filter::LevelFilter;
    match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// `berth-full`'s logging: to stderr, at the `-v` level or as `RUST_LOG` says (`EnvFilter`:
/// targets, spans and fields).
fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    install_tracing(
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::default().add_directive(verbosity(verbose).into())),
    );
}

/// `berth`'s logging, for `container` commands: `RUST_LOG` read with `Targets`
/// (`target=level` directives and a default level, `warn,berth_runtime=debug`), parsed
/// without the regex engine `EnvFilter` needs (its Unicode tables were a third of
/// `berth`'s relocations). A value it cannot read is reported, then the `-v` level holds.
fn init_tracing_front(verbose: u8) {
    use tracing_subscriber::filter::Targets;
    let targets = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| match v.parse::<Targets>() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!(
                    "berth: RUST_LOG={v:?} ignored ({e}): `berth container` takes \
                     target=level directives"
                );
                None
            }
        });
    install_tracing(targets.unwrap_or_else(|| Targets::new().with_default(verbosity(verbose))));
}

fn install_tracing<F>(filter: F)
where
    F: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `berth container …` parses, helps and fails the same on the short path as on the
    /// whole command tree.
    #[test]
    fn container_commands_parse_the_same_without_the_rest_of_the_tree() {
        let cases: [&[&str]; 9] = [
            &["berth", "container", "--help"],
            &["berth", "container", "run", "--help"],
            &["berth", "container"],
            &["berth", "container", "rn"],
            &["berth", "container", "run"],
            &["berth", "container", "run", "--bogus", "img"],
            &["berth", "container", "--version"],
            &[
                "berth",
                "container",
                "run",
                "--rm",
                "-e",
                "A=1",
                "-v",
                "img",
                "sh",
            ],
            &["berth", "container", "ls", "-aq", "--root", "/tmp/x"],
        ];
        for argv in cases {
            let whole = match Cli::try_parse_from(argv) {
                Ok(Cli {
                    global,
                    command: Command::Container(cmd),
                }) => Ok(format!("{global:?} {cmd:?}")),
                Ok(other) => panic!("{argv:?} parsed as {other:?}"),
                Err(e) => Err((e.kind(), e.to_string())),
            };
            let short = match ContainerCli::try_parse_from(argv) {
                Ok(ContainerCli {
                    global,
                    command: ContainerOnly::Container(cmd),
                }) => Ok(format!("{global:?} {cmd:?}")),
                Err(e) => Err((e.kind(), e.to_string())),
            };
            assert_eq!(whole, short, "{argv:?}");
        }
    }
}
