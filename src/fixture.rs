//! A compose project as an integration-test fixture: load it, bring it up and wait until it
//! is ready, look up where its services are, exec into them, read their logs, and take it
//! all down when the fixture is dropped, even when the test panics.
//!
//! ```no_run
//! use berth::fixture::Stack;
//!
//! let stack = Stack::builder("tests/stacks/web").up().unwrap();
//! let addr = stack.port("web", 8080).unwrap(); // 127.0.0.1:<published port>
//! let out = stack.exec("web", &["cat", "/etc/hostname"]).unwrap();
//! assert_eq!(out.code, 0);
//! // dropped here: `down -v` of the whole project
//! ```
//!
//! The API is synchronous (it owns a small tokio runtime), so plain `#[test]` functions can
//! use it; calls made from inside an async runtime run on a helper thread. Containers are
//! started by the `berth` binary's helpers: [`StackBuilder::berth_binary`], else
//! `BERTH_BIN`, else a `berth` beside the running test binary's target directory, else
//! `berth` on `PATH`.
//!
//! Neighbours: `project::load` (the same loader as the CLI), `engine::Engine` (the same
//! plan/up/down as `berth up --wait` / `berth down -v`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::lifecycle::chain;
use crate::engine::{Engine, PsRow};
use crate::network::Protocol;
use crate::plan::UpOptions;
use crate::project::{LoadOptions, Project};
use crate::state::{self, ProjectRecord};

/// What can go wrong with a fixture, with the project (and service) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot find the berth binary (set BERTH_BIN or StackBuilder::berth_binary)")]
    NoBinary,
    #[error("cannot start the fixture's async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("loading the compose project in {dir}")]
    Load {
        dir: PathBuf,
        #[source]
        source: Box<crate::project::LoadError>,
    },
    #[error("project {project}: {action}: {message}")]
    Engine {
        project: String,
        action: &'static str,
        message: String,
    },
    #[error("project {project} was not ready within {secs}s")]
    Timeout { project: String, secs: u64 },
    #[error("project {project}: {what}")]
    NotFound { project: String, what: String },
}

/// How to load and bring up a [`Stack`].
#[derive(Debug, Clone)]
pub struct StackBuilder {
    dir: PathBuf,
    files: Vec<PathBuf>,
    project_name: Option<String>,
    profiles: Vec<String>,
    services: Vec<String>,
    env: BTreeMap<String, String>,
    root: Option<PathBuf>,
    berth_binary: Option<PathBuf>,
    dns_upstream: Option<String>,
    wait_timeout: Duration,
    stop_timeout: Duration,
}

impl StackBuilder {
    /// Compose files (`-f`), relative to the project directory; default: discovery.
    pub fn file(mut self, f: impl Into<PathBuf>) -> Self {
        self.files.push(f.into());
        self
    }
    /// The project name (`-p`); default: as `berth up` would pick it.
    pub fn project_name(mut self, name: impl Into<String>) -> Self {
        self.project_name = Some(name.into());
        self
    }
    /// Enable a profile (`--profile`).
    pub fn profile(mut self, p: impl Into<String>) -> Self {
        self.profiles.push(p.into());
        self
    }
    /// Bring up only these services (and what they depend on).
    pub fn service(mut self, s: impl Into<String>) -> Self {
        self.services.push(s.into());
        self
    }
    /// A variable for interpolation, as if set in the shell (wins over `.env`).
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }
    /// berth's state root (`--root`); default `BERTH_ROOT`, else `/var/lib/berth`.
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }
    /// The `berth` binary that runs supervisor and container helpers.
    pub fn berth_binary(mut self, p: impl Into<PathBuf>) -> Self {
        self.berth_binary = Some(p.into());
        self
    }
    /// Where the project's DNS forwards names it doesn't know: `none`, `resolv.conf` or
    /// `ip[:port],…` (see `BERTH_DNS_UPSTREAM`); default: inherited from the environment.
    pub fn dns_upstream(mut self, v: impl Into<String>) -> Self {
        self.dns_upstream = Some(v.into());
        self
    }
    /// How long `up` may wait for every service to be running/healthy (default 60 s).
    pub fn wait_timeout(mut self, t: Duration) -> Self {
        self.wait_timeout = t;
        self
    }
    /// Grace period for stopping containers on down (default 10 s, like compose).
    pub fn stop_timeout(mut self, t: Duration) -> Self {
        self.stop_timeout = t;
        self
    }

    /// Load the project, then `up --wait`: returns when every service is running (healthy
    /// when it has a healthcheck, exited 0 for a `service_completed_successfully`
    /// dependency). On failure whatever was created is taken down again.
    pub fn up(self) -> Result<Stack, FixtureError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(FixtureError::Runtime)?;
        let exe = match &self.berth_binary {
            Some(p) => p.clone(),
            None => find_berth().ok_or(FixtureError::NoBinary)?,
        };
        let root = self
            .root
            .clone()
            .or_else(|| std::env::var_os("BERTH_ROOT").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/lib/berth"));
        let mut opts = LoadOptions {
            working_dir: self.dir.clone(),
            files: self.files.clone(),
            project_name: self.project_name.clone(),
            profiles: self.profiles.clone(),
            services_named: self.services.clone(),
            interpolate: true,
            environment: std::env::vars().collect(),
            ..LoadOptions::default()
        };
        opts.environment.extend(self.env.clone());
        let project = crate::project::load(&opts).map_err(|source| FixtureError::Load {
            dir: self.dir.clone(),
            source: Box::new(source),
        })?;
        let name = project.name.as_str().to_string();
        let engine_err = |action: &'static str| {
            let project = name.clone();
            move |e: crate::engine::EngineError| FixtureError::Engine {
                project,
                action,
                message: chain(&e),
            }
        };
        // The network manager's netlink socket registers with the current runtime.
        let entered = rt.enter();
        let mut engine = Engine::open(&root, exe).map_err(engine_err("opening state"))?;
        drop(entered);
        if let Some(up) = &self.dns_upstream {
            engine
                .supervisor_env
                .push(("BERTH_DNS_UPSTREAM".into(), up.clone()));
        }
        let mut stack = Stack {
            rt: Some(rt),
            engine: Arc::new(engine),
            project: Arc::new(project),
            stop_timeout: self.stop_timeout,
            down: false,
        };
        // From here on, dropping `stack` (an error below) takes down what was created.
        let opts = UpOptions {
            wait: true,
            ..UpOptions::default()
        };
        let (engine, project) = (stack.engine.clone(), stack.project.clone());
        let services = self.services.clone();
        let secs = self.wait_timeout.as_secs();
        let wait = self.wait_timeout;
        let result = stack.block_on(async move {
            let plan = engine
                .plan_up(&project, &opts, &services, false, &BTreeMap::new())
                .await
                .map_err(engine_err("planning"))?;
            // Progress events are not printed by a fixture.
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            match tokio::time::timeout(wait, engine.up(project.clone(), plan, tx)).await {
                Ok(r) => r.map_err(engine_err("up")),
                Err(_) => Err(FixtureError::Timeout {
                    project: project.name.as_str().to_string(),
                    secs,
                }),
            }
        });
        match result {
            Ok(()) => Ok(stack),
            Err(e) => {
                // Keep the up error; a failing down is logged by `Drop`.
                let _ = stack.down_inner();
                Err(e)
            }
        }
    }
}

/// A running compose project; `down -v` when dropped (or by [`Stack::down`]).
pub struct Stack {
    rt: Option<tokio::runtime::Runtime>,
    engine: Arc<Engine>,
    project: Arc<Project>,
    stop_timeout: Duration,
    down: bool,
}

impl Stack {
    /// A builder for the compose project in `dir` (where its `compose.yaml` is).
    pub fn builder(dir: impl AsRef<Path>) -> StackBuilder {
        StackBuilder {
            dir: dir.as_ref().to_path_buf(),
            files: Vec::new(),
            project_name: None,
            profiles: Vec::new(),
            services: Vec::new(),
            env: BTreeMap::new(),
            root: None,
            berth_binary: None,
            dns_upstream: None,
            wait_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
        }
    }

    /// The project's name.
    pub fn name(&self) -> &str {
        self.project.name.as_str()
    }

    /// The loaded project model.
    pub fn project(&self) -> &Project {
        &self.project
    }

    /// The host address of the first container of `service`'s published TCP
    /// `container_port` (an unspecified host IP is reported as 127.0.0.1, so the address
    /// can be connected to).
    pub fn port(&self, service: &str, container_port: u16) -> Result<SocketAddr, FixtureError> {
        self.port_of(service, 1, container_port, Protocol::Tcp)
    }

    /// Like [`Stack::port`] for container `index` (1-based) and a protocol.
    pub fn port_of(
        &self,
        service: &str,
        index: u32,
        container_port: u16,
        protocol: Protocol,
    ) -> Result<SocketAddr, FixtureError> {
        let id = self.container_id(service, index)?;
        let ports = self
            .engine
            .networks
            .ports(self.name())
            .map_err(|e| FixtureError::Engine {
                project: self.name().to_string(),
                action: "reading published ports",
                message: chain(&e),
            })?;
        let p = ports
            .iter()
            .find(|p| {
                p.container == id && p.container_port == container_port && p.protocol == protocol
            })
            .ok_or_else(|| {
                self.not_found(format!(
                    "service {service} publishes no port {container_port}/{}",
                    protocol.as_str()
                ))
            })?;
        let ip = p
            .host_ip
            .filter(|i| !i.is_unspecified())
            .unwrap_or(Ipv4Addr::LOCALHOST);
        Ok(SocketAddr::from((ip, p.host_port)))
    }

    /// The IPv4 address of the first container of `service` on its first network.
    pub fn ip(&self, service: &str) -> Result<Ipv4Addr, FixtureError> {
        self.address(service, None)
            .ok_or_else(|| self.not_found(format!("service {service} has no network address")))
    }

    /// The address of the first container of `service` on `network` (the compose key,
    /// e.g. `default`, or the full name).
    pub fn ip_on(&self, service: &str, network: &str) -> Result<Ipv4Addr, FixtureError> {
        let full = self
            .project
            .networks
            .iter()
            .find(|(k, _)| k.as_str() == network)
            .map(|(_, n)| n.name.clone())
            .unwrap_or_else(|| network.to_string());
        self.address(service, Some(&full))
            .ok_or_else(|| self.not_found(format!("service {service} is not on network {network}")))
    }

    /// The first container of `service`'s address on network `full` (its first network
    /// when `None`).
    fn address(&self, service: &str, full: Option<&str>) -> Option<Ipv4Addr> {
        let record = self.record().ok()?;
        let c = record
            .containers
            .iter()
            .filter(|c| c.service == service && !c.oneoff)
            .min_by_key(|c| c.number)?;
        let a = match full {
            Some(n) => c.attachments.iter().find(|a| a.network == n),
            None => c.attachments.first(),
        };
        a.map(|a| a.ip)
    }

    /// Run `args` in the first container of `service` and wait for it (like
    /// `berth exec -T`).
    pub fn exec(
        &self,
        service: &str,
        args: &[&str],
    ) -> Result<berth_runtime::ExecOutput, FixtureError> {
        let spec = berth_runtime::ExecSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let (engine, name, service) = (
            self.engine.clone(),
            self.name().to_string(),
            service.to_string(),
        );
        self.block_on(async move { engine.exec(&name, &service, 1, spec).await })
            .map_err(|e| self.engine_error("exec", &e))
    }

    /// The log text (stdout and stderr, in order) of every container of `service`.
    pub fn logs(&self, service: &str) -> Result<String, FixtureError> {
        let (engine, name, services) = (
            self.engine.clone(),
            self.name().to_string(),
            vec![service.to_string()],
        );
        let files = self
            .block_on(async move { engine.log_files(&name, &services).await })
            .map_err(|e| self.engine_error("reading logs", &e))?;
        let mut text = String::new();
        for (_, _, _, path) in files {
            for l in berth_runtime::log::read_log(&path).unwrap_or_default() {
                text.push_str(&l.log);
            }
        }
        Ok(text)
    }

    /// The project's containers, like `berth ps -a`.
    pub fn ps(&self) -> Result<Vec<PsRow>, FixtureError> {
        let (engine, name) = (self.engine.clone(), self.name().to_string());
        self.block_on(async move { engine.ps(&name, true).await })
            .map_err(|e| self.engine_error("ps", &e))
    }

    /// `down -v` now, reporting errors (dropping the stack does the same, logging them).
    pub fn down(mut self) -> Result<(), FixtureError> {
        self.down_inner()
    }

    fn down_inner(&mut self) -> Result<(), FixtureError> {
        if self.down {
            return Ok(());
        }
        self.down = true;
        let (engine, project, timeout) =
            (self.engine.clone(), self.project.clone(), self.stop_timeout);
        self.block_on(async move {
            let name = project.name.as_str();
            let volumes = engine.project_volumes(name, project.own_volume_names());
            engine.down(name, &volumes, timeout).await
        })
        .map_err(|e| self.engine_error("down", &e))
    }

    fn record(&self) -> Result<ProjectRecord, FixtureError> {
        state::read_json::<ProjectRecord>(&self.engine.root.project_state(self.name()))
            .ok()
            .flatten()
            .ok_or_else(|| self.not_found("no state (is it up?)".into()))
    }

    fn container_id(&self, service: &str, index: u32) -> Result<String, FixtureError> {
        self.record()?
            .containers
            .iter()
            .find(|c| c.service == service && c.number == index && !c.oneoff)
            .map(|c| c.id.clone())
            .ok_or_else(|| self.not_found(format!("service {service} has no container #{index}")))
    }

    fn not_found(&self, what: String) -> FixtureError {
        FixtureError::NotFound {
            project: self.name().to_string(),
            what,
        }
    }

    fn engine_error(&self, action: &'static str, e: &crate::engine::EngineError) -> FixtureError {
        FixtureError::Engine {
            project: self.name().to_string(),
            action,
            message: chain(e),
        }
    }

    /// Run `f` on the fixture's runtime; on a helper thread when called from inside
    /// another async runtime (where blocking on ours would panic).
    fn block_on<F>(&self, f: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let rt = self
            .rt
            .as_ref()
            .expect("the runtime lives as long as the stack");
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| rt.block_on(f))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            rt.block_on(f)
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Err(e) = self.down_inner() {
            tracing::error!(error = %e, "taking down the fixture's project");
            eprintln!("berth fixture: {e}");
        }
        if let Some(rt) = self.rt.take() {
            // Dropping a runtime inside another async context panics; this doesn't.
            rt.shutdown_background();
        }
    }
}

/// The berth binary for a fixture: `BERTH_BIN`, a `berth` in the target directory the
/// running test binary was built into (`target/<profile>/deps/x` → `target/<profile>/berth`),
/// else `berth` on `PATH`.
fn find_berth() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_BIN") {
        return Some(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join("berth");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("berth"))
            .find(|p| p.is_file())
    })
}
