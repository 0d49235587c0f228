//! The compose verbs that act on existing containers, from state: `start`, `restart`,
//! `kill`, `pause`, `unpause`, `rm`, `top`, `port`, `wait`, `ls`, `images`, `cp`, `pull`.
//!
//! Takes a project name (and, where the compose file matters, the loaded `Project`); works
//! on the runtime's containers labelled with the project and on the project record. Every
//! verb that changes a container writes its event (`engine::events`). Restart policies:
//! `stop`, `kill` (with a terminating signal) and `rm` mark the container "stopped on
//! purpose" in the record before acting, so the supervisor does not bring it back until the
//! next `start`/`restart`/`up`, as Docker does. Neighbours: `engine::lifecycle` (the
//! container helpers), `engine::supervisor`, `berth_runtime`, `network` (published ports),
//! `image` (store, registry), `state`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::events;
use super::lifecycle::{chain, Engine, EngineError};
use super::spec::labels;
use super::supervisor;
use crate::project::Project;
use crate::state::{self, ProjectRecord};

fn failed<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> EngineError {
    let what = what.into();
    move |e| EngineError::Failed {
        what,
        source: e.into(),
    }
}

fn service_of(c: &berth_runtime::Container) -> String {
    c.spec()
        .labels
        .get(labels::SERVICE)
        .cloned()
        .unwrap_or_default()
}

fn number_of(c: &berth_runtime::Container) -> u32 {
    c.spec()
        .labels
        .get(labels::NUMBER)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

fn is_live(c: &berth_runtime::Container) -> bool {
    matches!(
        c.status(),
        Ok(berth_runtime::Status::Running | berth_runtime::Status::Paused)
    )
}

/// Signals whose intent is to end the container: a container killed with one of them is
/// not revived by its restart policy (Docker's "manually stopped"). Others (HUP, USR1, …)
/// are notifications and leave the policy alone.
fn terminating(sig: berth_runtime::Signal) -> bool {
    use berth_runtime::Signal as S;
    matches!(sig, S::SIGKILL | S::SIGTERM | S::SIGINT | S::SIGQUIT)
}

/// Parse `SIGKILL`, `KILL`, `kill` or `9`.
pub fn parse_signal(s: &str) -> Result<berth_runtime::Signal, EngineError> {
    let bad = || EngineError::Invalid(format!("invalid signal {s:?}"));
    if let Ok(n) = s.parse::<i32>() {
        return berth_runtime::Signal::try_from(n).map_err(|_| bad());
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<berth_runtime::Signal>().map_err(|_| bad())
}

/// One row of `ls`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LsRow {
    pub name: String,
    pub status: String,
    pub config_files: String,
}

/// One row of `images`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageRow {
    #[serde(rename = "ContainerName")]
    pub container: String,
    #[serde(rename = "Repository")]
    pub repository: String,
    #[serde(rename = "Tag")]
    pub tag: String,
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Size")]
    pub size: u64,
}

/// One process of `top` (ps -ef columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopRow {
    pub uid: String,
    pub pid: i32,
    pub ppid: i32,
    pub c: u64,
    pub stime: String,
    pub tty: String,
    pub time: String,
    pub cmd: String,
}

/// Which way `cp` copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpDirection {
    IntoContainer,
    OutOfContainer,
}

impl Engine {
    /// Containers of `project` (of `services`, or all), by service and number.
    async fn selected(
        &self,
        project: &str,
        services: &[String],
    ) -> Result<Vec<berth_runtime::Container>, EngineError> {
        let mut out: Vec<_> = self
            .selected_with_oneoffs(project, services)
            .await?
            .into_iter()
            .filter(|c| !super::lifecycle::is_oneoff(c))
            .collect();
        out.sort_by_key(|c| (service_of(c), number_of(c)));
        Ok(out)
    }

    /// Like `selected`, `run` one-offs included (what `rm` removes).
    async fn selected_with_oneoffs(
        &self,
        project: &str,
        services: &[String],
    ) -> Result<Vec<berth_runtime::Container>, EngineError> {
        let mut out: Vec<_> = self
            .project_containers(project)
            .await?
            .into_iter()
            .filter(|c| services.is_empty() || services.contains(&service_of(c)))
            .collect();
        out.sort_by_key(|c| (service_of(c), number_of(c)));
        Ok(out)
    }

    /// Set the "stopped on purpose" mark of containers `ids` in the project record.
    fn mark_stopped(
        &self,
        project: &str,
        ids: &[String],
        stopped: bool,
    ) -> Result<(), EngineError> {
        let path = self.root.project_state(project);
        if let Ok(Some(mut r)) = state::read_json::<ProjectRecord>(&path) {
            let mut changed = false;
            for c in r.containers.iter_mut().filter(|c| ids.contains(&c.id)) {
                changed |= c.stopped != stopped;
                c.stopped = stopped;
            }
            if changed {
                state::write_json(&path, &r).map_err(failed("writing the project record"))?;
            }
        }
        Ok(())
    }

    /// `start`: start the existing, not running containers of `order` (services in
    /// dependency order; all of them when empty). Returns the started containers.
    pub async fn start_services(
        &self,
        project: &str,
        order: &[String],
    ) -> Result<Vec<String>, EngineError> {
        let all = self.selected(project, &[]).await?;
        if all.is_empty() {
            return Err(EngineError::Invalid(format!(
                "project {project} has no containers to start (bring it up first)"
            )));
        }
        // Services without an order (not in the compose file any more) go last.
        let mut services: Vec<String> = order.to_vec();
        for c in &all {
            let s = service_of(c);
            if order.is_empty() && !services.contains(&s) {
                services.push(s);
            }
        }
        supervisor::ensure(&self.root, project, &self.exe, &self.supervisor_env)
            .await
            .map_err(failed("starting the project supervisor"))?;
        let mut started = Vec::new();
        for svc in services {
            let todo: Vec<berth_runtime::Container> = all
                .iter()
                .filter(|c| service_of(c) == svc && !is_live(c))
                .cloned()
                .collect();
            let ids: Vec<String> = todo.iter().map(|c| c.id().to_string()).collect();
            self.mark_stopped(project, &ids, false)?;
            let mut tasks = Vec::new();
            for c in todo {
                let (rt, root, p) = (self.runtime.clone(), self.root.clone(), project.to_string());
                tasks.push(tokio::task::spawn_blocking(move || {
                    restart_in_place(&rt, &root, &p, &c)
                }));
            }
            let mut errors = Vec::new();
            for t in tasks {
                match t.await {
                    Ok(Ok(id)) => started.push(id),
                    Ok(Err(e)) => errors.push(chain(&e)),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if !errors.is_empty() {
                return Err(EngineError::Many(errors));
            }
        }
        Ok(started)
    }

    /// `restart`: stop (with `timeout`) and start again every container of `order`.
    pub async fn restart_services(
        &self,
        project: &str,
        order: &[String],
        services: &[String],
        timeout: Duration,
    ) -> Result<Vec<String>, EngineError> {
        let targets = self.selected(project, services).await?;
        let ids: Vec<String> = targets.iter().map(|c| c.id().to_string()).collect();
        // Stopped on purpose while they go down, so the restart policy doesn't race us.
        self.mark_stopped(project, &ids, true)?;
        let mut tasks = Vec::new();
        for c in targets {
            let (root, p) = (self.root.clone(), project.to_string());
            tasks.push(tokio::task::spawn_blocking(move || {
                stop_one(&root, &p, &c, timeout)
            }));
        }
        let mut errors = Vec::new();
        for (id, t) in ids.iter().zip(tasks) {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push((id.clone(), chain(&e))),
                Err(e) => errors.push((id.clone(), e.to_string())),
            }
        }
        // One that could not be stopped still runs: its restart policy applies again.
        let failed: Vec<String> = errors.iter().map(|(id, _)| id.clone()).collect();
        self.mark_stopped(project, &failed, false)?;
        let mut order: Vec<String> = if services.is_empty() {
            order.to_vec()
        } else {
            order
                .iter()
                .filter(|s| services.contains(s))
                .cloned()
                .collect()
        };
        if order.is_empty() {
            // No compose file to order by (`-p NAME`): just the services named.
            order = services.to_vec();
        }
        // The ones that did stop start again even when others failed.
        let started = self.start_services(project, &order).await?;
        EngineError::all_ok(errors.into_iter().map(|(_, e)| e).collect())?;
        for c in self.selected(project, services).await? {
            if started.iter().any(|s| s == c.id().as_str()) {
                events::emit(&self.root, project, &c, "restart", &[]);
            }
        }
        Ok(started)
    }

    /// `kill`: send `signal` to PID 1 of every running container of `services`.
    pub async fn kill(
        &self,
        project: &str,
        services: &[String],
        signal: berth_runtime::Signal,
    ) -> Result<Vec<String>, EngineError> {
        let targets: Vec<_> = self
            .selected(project, services)
            .await?
            .into_iter()
            .filter(is_live)
            .collect();
        let ids: Vec<String> = targets.iter().map(|c| c.id().to_string()).collect();
        if terminating(signal) {
            self.mark_stopped(project, &ids, true)?;
        }
        let mut errors = Vec::new();
        for c in &targets {
            // A frozen process can't act on a catchable signal; SIGKILL works anyway.
            match c.signal(signal) {
                Ok(()) => events::emit(
                    &self.root,
                    project,
                    c,
                    "kill",
                    &[("signal", signal.as_str().to_string())],
                ),
                Err(e) => errors.push(chain(&e)),
            }
        }
        EngineError::all_ok(errors)?;
        Ok(ids)
    }

    /// `pause` (`freeze`) or `unpause` the containers of `services`.
    pub async fn pause(
        &self,
        project: &str,
        services: &[String],
        freeze: bool,
    ) -> Result<Vec<String>, EngineError> {
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for c in self.selected(project, services).await? {
            let want = if freeze {
                berth_runtime::Status::Running
            } else {
                berth_runtime::Status::Paused
            };
            if c.status().ok() != Some(want) {
                continue;
            }
            let c2 = c.clone();
            let r =
                tokio::task::spawn_blocking(move || if freeze { c2.pause() } else { c2.unpause() })
                    .await;
            match r {
                Ok(Ok(())) => {
                    events::emit(
                        &self.root,
                        project,
                        &c,
                        if freeze { "pause" } else { "unpause" },
                        &[],
                    );
                    done.push(c.id().to_string());
                }
                Ok(Err(e)) => errors.push(chain(&e)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        EngineError::all_ok(errors)?;
        Ok(done)
    }

    /// `rm`: remove the stopped containers of `services` (running ones too with `stop`,
    /// after stopping them), their network attachments and (with `volumes`) their
    /// anonymous volumes. Returns the removed containers.
    pub async fn rm(
        &self,
        project: &str,
        services: &[String],
        stop: bool,
        volumes: bool,
        timeout: Duration,
    ) -> Result<Vec<String>, EngineError> {
        let targets: Vec<_> = self
            .selected_with_oneoffs(project, services)
            .await?
            .into_iter()
            .filter(|c| stop || !is_live(c))
            .collect();
        let ids: Vec<String> = targets.iter().map(|c| c.id().to_string()).collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        self.mark_stopped(project, &ids, true)?;
        let path = self.root.project_state(project);
        let record = state::read_json::<ProjectRecord>(&path)
            .map_err(failed("reading the project record"))?
            .unwrap_or_default();
        let mut errors = Vec::new();
        let mut removed = Vec::new();
        for c in targets {
            let id = c.id().to_string();
            if is_live(&c) {
                let (root, p, c2) = (self.root.clone(), project.to_string(), c.clone());
                match tokio::task::spawn_blocking(move || stop_one(&root, &p, &c2, timeout)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        errors.push(chain(&e));
                        continue;
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        continue;
                    }
                }
            }
            events::claim_die(&self.root, project, &c);
            let rec = record.containers.iter().find(|r| r.id == id).cloned();
            match self
                .remove_container(project, id.clone(), rec, timeout, None)
                .await
            {
                Ok(()) => removed.push(id),
                Err(e) => errors.push(chain(&e)),
            }
        }
        // Forget them in the record and have the supervisor drop their DNS names.
        if let Ok(Some(mut r)) = state::read_json::<ProjectRecord>(&path) {
            r.containers.retain(|c| !removed.contains(&c.id));
            state::write_json(&path, &r).map_err(failed("writing the project record"))?;
            if let Err(e) =
                supervisor::request(&self.root, project, &super::protocol::Request::Reload).await
            {
                errors.push(chain(&e));
            }
        }
        if volumes {
            for v in self.volumes.list().unwrap_or_default() {
                if removed
                    .iter()
                    .any(|id| v.name.starts_with(&format!("{id}-anon-")))
                {
                    if let Err(e) = self.volumes.remove(&v.name) {
                        errors.push(chain(&e));
                    }
                }
            }
        }
        EngineError::all_ok(errors)?;
        Ok(removed)
    }

    /// A `run -d --rm` one-off that has exited (the supervisor calls this): removed as `rm`
    /// removes it, forgotten in the record, its DNS name dropped.
    pub async fn remove_exited_oneoff(&self, project: &str, id: &str) -> Result<(), EngineError> {
        let path = self.root.project_state(project);
        let rec = state::read_json::<ProjectRecord>(&path)
            .map_err(failed("reading the project record"))?
            .unwrap_or_default()
            .containers
            .into_iter()
            .find(|c| c.id == id);
        self.remove_container(project, id.to_string(), rec, Duration::ZERO, None)
            .await?;
        if let Ok(Some(mut r)) = state::read_json::<ProjectRecord>(&path) {
            r.containers.retain(|c| c.id != id);
            state::write_json(&path, &r).map_err(failed("writing the project record"))?;
        }
        // Called from inside the supervisor too: bounded, so one stuck client of its socket
        // can't hold this up for good.
        let reload = supervisor::request(&self.root, project, &super::protocol::Request::Reload);
        match tokio::time::timeout(Duration::from_secs(5), reload).await {
            Ok(r) => r
                .map(|_| ())
                .map_err(failed("asking the supervisor to drop its DNS name")),
            Err(_) => Err(EngineError::Invalid(
                "the supervisor did not answer a DNS reload within 5 s".into(),
            )),
        }
    }

    /// `top`: the processes of each running container of `services`.
    pub async fn top(
        &self,
        project: &str,
        services: &[String],
    ) -> Result<Vec<(String, Vec<TopRow>)>, EngineError> {
        let mut out = Vec::new();
        for c in self.selected(project, services).await? {
            if !is_live(&c) {
                continue;
            }
            let Some(pid) = c.pid() else { continue };
            let rows = tokio::task::spawn_blocking(move || top_rows(pid))
                .await
                .map_err(failed("reading /proc"))?;
            out.push((c.id().to_string(), rows));
        }
        Ok(out)
    }

    /// Replica `index` of `service` (never a `run` one-off), or an error naming both.
    async fn replica(
        &self,
        project: &str,
        service: &str,
        index: u32,
    ) -> Result<berth_runtime::Container, EngineError> {
        self.selected(project, &[service.to_string()])
            .await?
            .into_iter()
            .find(|c| number_of(c) == index && !super::lifecycle::is_oneoff(c))
            .ok_or_else(|| {
                EngineError::Invalid(format!("service \"{service}\" has no container #{index}"))
            })
    }

    /// `port`: the host address published for `port`/`protocol` of container `index` of
    /// `service`.
    pub async fn port(
        &self,
        project: &str,
        service: &str,
        index: u32,
        port: u16,
        protocol: &str,
    ) -> Result<String, EngineError> {
        let c = self.replica(project, service, index).await?;
        let ports = self
            .networks
            .ports(project)
            .map_err(failed("reading published ports"))?;
        ports
            .iter()
            .find(|p| {
                p.container == c.id().as_str()
                    && p.container_port == port
                    && p.protocol.to_string() == protocol
            })
            .map(|p| {
                let ip = p
                    .host_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "0.0.0.0".into());
                format!("{ip}:{}", p.host_port)
            })
            .ok_or_else(|| {
                EngineError::Invalid(format!(
                    "no port {port}/{protocol} is published for container {}",
                    c.id()
                ))
            })
    }

    /// `wait`: block until every container of `services` has stopped; `on_exit` is called
    /// as each one does. Returns the exit code of the first one that stopped.
    pub async fn wait_services(
        &self,
        project: &str,
        services: &[String],
        mut on_exit: impl FnMut(&str, i32),
    ) -> Result<i32, EngineError> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let targets = self.selected(project, services).await?;
        if targets.is_empty() {
            return Err(EngineError::Invalid(format!(
                "no containers for services {}",
                services.join(", ")
            )));
        }
        let mut waits: FuturesUnordered<_> = targets
            .into_iter()
            .map(|c| {
                let id = c.id().to_string();
                let t = tokio::task::spawn_blocking(move || c.wait(None));
                async move { (id, t.await) }
            })
            .collect();
        let mut first = None;
        while let Some((id, r)) = waits.next().await {
            let rec = r
                .map_err(failed(format!("waiting for {id}")))?
                .map_err(failed(format!("waiting for {id}")))?;
            on_exit(&id, rec.code);
            first.get_or_insert(rec.code);
        }
        Ok(first.unwrap_or(0))
    }

    /// `ls`: the projects with state under this root; only those with a running container
    /// unless `all`.
    pub async fn ls(&self, all: bool) -> Result<Vec<LsRow>, EngineError> {
        let rt = self.runtime.clone();
        let containers = tokio::task::spawn_blocking(move || rt.list())
            .await
            .map_err(failed("listing containers"))?
            .map_err(failed("listing containers"))?;
        let mut states: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        for p in self.root.projects() {
            states.entry(p).or_default();
        }
        for c in &containers {
            let Some(p) = c.spec().labels.get(labels::PROJECT) else {
                continue;
            };
            let s = match c.status() {
                Ok(berth_runtime::Status::Running) => "running",
                Ok(berth_runtime::Status::Paused) => "paused",
                Ok(berth_runtime::Status::Created) => "created",
                Ok(berth_runtime::Status::Exited(_)) => "exited",
                _ => "dead",
            };
            *states.entry(p.clone()).or_default().entry(s).or_default() += 1;
            if let Some(f) = c.spec().labels.get(labels::CONFIG_FILES) {
                files.entry(p.clone()).or_insert_with(|| f.clone());
            }
        }
        let mut rows = Vec::new();
        for (name, counts) in states {
            if !all && !counts.contains_key("running") {
                continue;
            }
            let record = state::read_json::<ProjectRecord>(&self.root.project_state(&name))
                .ok()
                .flatten();
            let config_files = match &record {
                Some(r) if !r.config_files.is_empty() => r
                    .config_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                _ => files.get(&name).cloned().unwrap_or_default(),
            };
            let status = counts
                .iter()
                .map(|(s, n)| format!("{s}({n})"))
                .collect::<Vec<_>>()
                .join(", ");
            rows.push(LsRow {
                name,
                status,
                config_files,
            });
        }
        Ok(rows)
    }

    /// `images`: the image of each container of `services`.
    pub async fn project_images(
        &self,
        project: &str,
        services: &[String],
    ) -> Result<Vec<ImageRow>, EngineError> {
        let mut rows = Vec::new();
        for c in self.selected(project, services).await? {
            let reference = c
                .spec()
                .labels
                .get(labels::IMAGE)
                .cloned()
                .unwrap_or_default();
            let (repository, tag) = match crate::image::ImageRef::parse(&reference) {
                Ok(r) => (r.familiar_name(), r.tag().unwrap_or("<none>").to_string()),
                Err(_) => (reference.clone(), "<none>".into()),
            };
            let store = self.images.clone();
            let r2 = reference.clone();
            let found = tokio::task::spawn_blocking(move || store.get(&r2))
                .await
                .map_err(failed(format!("looking up image {reference}")))?;
            let (id, size) = match found {
                Ok(i) => (i.id.to_string(), i.size),
                Err(_) => ("<missing>".into(), 0),
            };
            rows.push(ImageRow {
                container: c.id().to_string(),
                repository,
                tag,
                id,
                size,
            });
        }
        Ok(rows)
    }

    /// `pull`: pull the images of `services` (all with an image when empty). Failures
    /// are errors unless `ignore_failures` (then they are returned as warnings).
    pub async fn pull_images(
        &self,
        project: &Project,
        services: &[String],
        quiet: bool,
        ignore_failures: bool,
    ) -> Result<Vec<String>, EngineError> {
        use crate::image::registry;
        let mut refs: BTreeSet<(String, String)> = BTreeSet::new();
        for s in project.services.values() {
            if !services.is_empty() && !services.contains(&s.name) {
                continue;
            }
            if let Some(i) = &s.image {
                refs.insert((i.clone(), s.name.clone()));
            }
        }
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        let mut done: BTreeSet<String> = BTreeSet::new();
        for (reference, service) in refs {
            if !done.insert(reference.clone()) {
                continue;
            }
            let r = crate::image::ImageRef::parse(&reference)
                .map_err(failed(format!("service {service}: image {reference:?}")))?;
            let store = self.images.clone();
            let handle = tokio::runtime::Handle::current();
            let opts = registry::PullOptions {
                platform: None,
                progress: if quiet {
                    registry::Progress::Quiet
                } else {
                    registry::Progress::Plain
                },
            };
            // Same as `up`: the pull future is not `Send`, so it runs on a blocking thread.
            let res = tokio::task::spawn_blocking(move || {
                handle
                    .block_on(registry::pull(
                        &store,
                        &registry::RegistryConfig::from_env(),
                        &r,
                        &opts,
                    ))
                    .map(|_| ())
                    .map_err(|e| chain(&e))
            })
            .await
            .map_err(failed(format!("pulling {reference}")))?;
            if let Err(e) = res {
                let msg = format!("service {service}: pulling {reference}: {e}");
                if ignore_failures {
                    warnings.push(msg);
                } else {
                    errors.push(msg);
                }
            }
        }
        EngineError::all_ok(errors)?;
        Ok(warnings)
    }

    /// `cp`: copy between `host_path` and `container_path` of container `index` of
    /// `service`, through the running container's root (`/proc/PID/root`) with every path
    /// resolved inside it (`openat2` `RESOLVE_IN_ROOT`): a symlink in the container can't
    /// lead the copy to a host file. `follow` follows a symlink given as the source.
    #[allow(clippy::too_many_arguments)]
    pub async fn cp(
        &self,
        project: &str,
        service: &str,
        index: u32,
        direction: CpDirection,
        container_path: &str,
        host_path: &Path,
        follow: bool,
    ) -> Result<u64, EngineError> {
        let c = self.replica(project, service, index).await?;
        let id = c.id().to_string();
        let (Some(pid), true) = (c.pid(), is_live(&c)) else {
            return Err(EngineError::Invalid(format!(
                "container {id} is not running (berth cp copies through a running container)"
            )));
        };
        let container_path = PathBuf::from(container_path);
        let host_path = host_path.to_path_buf();
        let what = match direction {
            CpDirection::IntoContainer => format!(
                "copying {} to {id}:{}",
                host_path.display(),
                container_path.display()
            ),
            CpDirection::OutOfContainer => format!(
                "copying {id}:{} to {}",
                container_path.display(),
                host_path.display()
            ),
        };
        tokio::task::spawn_blocking(move || -> Result<u64, copy::CopyError> {
            let inside = copy::Tree::container(pid)?;
            // The pid could have been reused between reading it and opening its root.
            if !is_live(&c) || c.pid() != Some(pid) {
                return Err(copy::CopyError::Msg(format!("container {id} stopped")));
            }
            let host = copy::Tree::host()?;
            match direction {
                CpDirection::IntoContainer => {
                    copy::copy(&host, &host_path, &inside, &container_path, follow)
                }
                CpDirection::OutOfContainer => {
                    copy::copy(&inside, &container_path, &host, &host_path, follow)
                }
            }
        })
        .await
        .map_err(failed(what.clone()))?
        .map_err(failed(what))
    }
}

/// Stop one running or paused container (the `stop` of `stop`, `restart` and `rm -s`),
/// writing its kill, die and stop events.
pub(crate) fn stop_one(
    root: &state::Root,
    project: &str,
    c: &berth_runtime::Container,
    timeout: Duration,
) -> Result<(), EngineError> {
    if is_live(c) {
        events::emit(root, project, c, "kill", &[]);
        c.stop(timeout)
            .map_err(failed(format!("stopping {}", c.id())))?;
        events::claim_die(root, project, c);
        events::emit(root, project, c, "stop", &[]);
    }
    Ok(())
}

/// Start a stopped container again with the same spec and writable layer (as `docker
/// start`): its die is recorded first (the state dir goes), then it runs anew.
fn restart_in_place(
    rt: &berth_runtime::Runtime,
    root: &state::Root,
    project: &str,
    c: &berth_runtime::Container,
) -> Result<String, EngineError> {
    let started = super::lifecycle::start_in_place(rt, root, project, c)?;
    events::emit(root, project, &started, "start", &[]);
    Ok(c.id().to_string())
}

/// Processes in the pid namespace of `pid1` (the container's), like `ps -ef`.
pub fn top_rows(pid1: i32) -> Vec<TopRow> {
    let Ok(ns) = std::fs::read_link(format!("/proc/{pid1}/ns/pid")) else {
        return Vec::new();
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)
        .unwrap_or(100) as u64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut rows = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return rows;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/ns/pid"))
            .ok()
            .as_ref()
            != Some(&ns)
        {
            continue;
        }
        let Ok(st) = berth_runtime::state::read_proc(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(fields), Some((head, _))) =
            (berth_runtime::state::stat_fields(&st), st.rsplit_once(')'))
        else {
            continue;
        };
        let comm = head.split_once('(').map(|x| x.1).unwrap_or("").to_string();
        let f: Vec<&str> = fields.collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let ppid = num(1) as i32;
        let tty_nr = num(4);
        let cpu_ticks = num(11) + num(12);
        let start_ticks = num(19);
        let elapsed = uptime - start_ticks as f64 / hz as f64;
        let cpu_secs = cpu_ticks / hz;
        let c = if elapsed > 0.0 {
            ((cpu_ticks as f64 / hz as f64) / elapsed * 100.0).min(99.0) as u64
        } else {
            0
        };
        let uid = berth_runtime::state::read_proc(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|v| v.split_whitespace().next().and_then(|u| u.parse().ok()))
            })
            .unwrap_or(0u32);
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("[{comm}]"));
        let started = btime as i64 + (start_ticks / hz) as i64;
        rows.push(TopRow {
            uid: user,
            pid,
            ppid,
            c,
            stime: stime(started, now),
            tty: if tty_nr == 0 {
                "?".into()
            } else {
                let major = (tty_nr >> 8) & 0xfff;
                let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
                if (136..144).contains(&major) {
                    format!("pts/{}", minor + (major - 136) * 256)
                } else {
                    format!("tty{minor}")
                }
            },
            time: format!(
                "{:02}:{:02}:{:02}",
                cpu_secs / 3600,
                (cpu_secs / 60) % 60,
                cpu_secs % 60
            ),
            cmd,
        });
    }
    rows.sort_by_key(|r| r.pid);
    rows
}

/// ps's STIME: `HH:MM` today, else `MonDD`, in local time.
fn stime(started: i64, now: i64) -> String {
    let local = |t: i64| {
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let tt = t as libc::time_t;
        // SAFETY: localtime_r writes into our tm and reads tt only.
        unsafe { libc::localtime_r(&tt, &mut tm) };
        tm
    };
    let (s, n) = (local(started), local(now));
    if s.tm_yday == n.tm_yday && s.tm_year == n.tm_year {
        format!("{:02}:{:02}", s.tm_hour, s.tm_min)
    } else {
        const MON: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        format!("{}{:02}", MON[s.tm_mon.clamp(0, 11) as usize], s.tm_mday)
    }
}

/// File copies between two directory trees where every path of the container's tree is
/// resolved inside it. The entry points resolve with `openat2` (`RESOLVE_IN_ROOT |
/// RESOLVE_NO_MAGICLINKS` for the container); below them every step is `*at` on a
/// directory fd with `O_NOFOLLOW`, so nothing is ever resolved through a symlink again.
pub mod copy {
    use std::fs::File;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Component, Path, PathBuf};

    use nix::errno::Errno;
    use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};

    /// Copy errors, naming the path.
    #[derive(Debug, thiserror::Error)]
    pub enum CopyError {
        #[error("{path}: {source}")]
        Sys {
            path: String,
            #[source]
            source: Errno,
        },
        #[error("{path}: {source}")]
        Io {
            path: String,
            #[source]
            source: std::io::Error,
        },
        #[error("{0}")]
        Msg(String),
    }

    fn sys(path: &Path) -> impl FnOnce(Errno) -> CopyError + '_ {
        move |source| CopyError::Sys {
            path: path.display().to_string(),
            source,
        }
    }

    /// A directory tree: the host's (normal resolution) or a container's (scoped).
    pub struct Tree {
        root: OwnedFd,
        resolve: ResolveFlag,
    }

    impl Tree {
        pub fn host() -> Result<Tree, CopyError> {
            let p = Path::new("/");
            Ok(Tree {
                root: nix::fcntl::open(p, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
                    .map_err(sys(p))?,
                resolve: ResolveFlag::empty(),
            })
        }

        /// The root of the mount namespace of `pid` (a container's PID 1).
        pub fn container(pid: i32) -> Result<Tree, CopyError> {
            Tree::scoped(&PathBuf::from(format!("/proc/{pid}/root")))
        }

        /// Directory `p` as the root of every path resolved in it.
        pub fn scoped(p: &Path) -> Result<Tree, CopyError> {
            Ok(Tree {
                root: nix::fcntl::open(
                    p,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(sys(p))?,
                resolve: ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            })
        }

        fn open(&self, path: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
            let rel: PathBuf = path
                .components()
                .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
                .collect();
            let rel = if rel.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                rel
            };
            openat2(
                &self.root,
                &rel,
                OpenHow::new()
                    .flags(flags | OFlag::O_CLOEXEC)
                    .resolve(self.resolve),
            )
        }
    }

    enum Src {
        File(OwnedFd, u32),
        Dir(OwnedFd, u32),
        Link(PathBuf),
    }

    fn kind(st: &FileStat) -> SFlag {
        SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
    }

    /// [`reopen_regular`] of the entry `name` of `dir`, not following a symlink there.
    fn open_regular_at(
        dir: &OwnedFd,
        name: &Path,
        flags: OFlag,
        shown: &Path,
    ) -> Result<OwnedFd, CopyError> {
        let fd = openat(
            dir,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys(shown))?;
        reopen_regular(fd, flags, shown)
    }

    /// Open the regular file behind the `O_PATH` descriptor `fd` for I/O (`flags`),
    /// refusing anything else. berth opens these on the host side, outside the container's
    /// device rules: a device node or FIFO a container put there must never be opened for
    /// real, so the type is checked on the very inode first, then that inode is reopened
    /// through `/proc/self/fd`. Writers get the file truncated after the check.
    fn reopen_regular(fd: OwnedFd, flags: OFlag, shown: &Path) -> Result<OwnedFd, CopyError> {
        use std::os::fd::AsRawFd;
        let st = fstat(&fd).map_err(sys(shown))?;
        if kind(&st) != SFlag::S_IFREG {
            return Err(CopyError::Msg(format!(
                "{}: not a regular file",
                shown.display()
            )));
        }
        let out = nix::fcntl::open(
            format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
            flags | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys(shown))?;
        if flags.contains(OFlag::O_WRONLY) {
            nix::unistd::ftruncate(&out, 0).map_err(sys(shown))?;
        }
        Ok(out)
    }

    /// The final component and parent of `p` (`None` for `/`).
    fn split(p: &Path) -> (PathBuf, Option<PathBuf>) {
        match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => (parent.to_path_buf(), Some(PathBuf::from(name))),
            _ => (PathBuf::from("/"), None),
        }
    }

    /// Open the entry `name` of `dir` without following it.
    fn open_entry(dir: &OwnedFd, name: &Path, shown: &Path) -> Result<Option<Src>, CopyError> {
        let st =
            fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(sys(shown))?;
        let mode = (st.st_mode & 0o7777) as u32;
        Ok(match kind(&st) {
            SFlag::S_IFREG => Some(Src::File(
                open_regular_at(dir, name, OFlag::O_RDONLY, shown)?,
                mode,
            )),
            SFlag::S_IFDIR => Some(Src::Dir(
                openat(
                    dir,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(sys(shown))?,
                mode,
            )),
            SFlag::S_IFLNK => Some(Src::Link(PathBuf::from(
                nix::fcntl::readlinkat(dir, name).map_err(sys(shown))?,
            ))),
            _ => None,
        })
    }

    /// Copy `src_path` of `src` to `dst_path` of `dst` with `docker cp`'s rules: into an
    /// existing directory under the source's name, else to that name; `dir/.` copies the
    /// directory's content. Returns the bytes copied.
    pub fn copy(
        src: &Tree,
        src_path: &Path,
        dst: &Tree,
        dst_path: &Path,
        follow: bool,
    ) -> Result<u64, CopyError> {
        let raw = src_path.as_os_str().as_bytes();
        let contents_only = raw.ends_with(b"/.") || raw == b".";
        let src_path: PathBuf = src_path.components().collect();
        let (parent, name) = split(&src_path);
        let source = match &name {
            None => Src::Dir(
                src.open(&src_path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                    .map_err(sys(&src_path))?,
                0o755,
            ),
            Some(name) => {
                let pfd = src
                    .open(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(sys(&parent))?;
                match open_entry(&pfd, name, &src_path)? {
                    Some(Src::Link(_)) if follow => {
                        // Follow it, still inside the tree.
                        let fd = src.open(&src_path, OFlag::O_PATH).map_err(sys(&src_path))?;
                        let st = fstat(&fd).map_err(sys(&src_path))?;
                        let mode = (st.st_mode & 0o7777) as u32;
                        match kind(&st) {
                            SFlag::S_IFDIR => Src::Dir(
                                src.open(&src_path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                                    .map_err(sys(&src_path))?,
                                mode,
                            ),
                            // The inode checked above, not whatever the path names now.
                            SFlag::S_IFREG => {
                                Src::File(reopen_regular(fd, OFlag::O_RDONLY, &src_path)?, mode)
                            }
                            _ => {
                                return Err(CopyError::Msg(format!(
                                    "{}: not a regular file or directory",
                                    src_path.display()
                                )))
                            }
                        }
                    }
                    Some(s) => s,
                    None => {
                        return Err(CopyError::Msg(format!(
                            "{}: not a regular file, directory or symlink",
                            src_path.display()
                        )))
                    }
                }
            }
        };
        let src_name = name.unwrap_or_else(|| PathBuf::from("root"));
        let dst_raw = dst_path.as_os_str().as_bytes();
        let dst_wants_dir = dst_raw.ends_with(b"/");
        let dst_path: PathBuf = dst_path.components().collect();
        let mut bytes = 0u64;
        match dst.open(&dst_path, OFlag::O_PATH) {
            Ok(fd) => {
                let st = fstat(&fd).map_err(sys(&dst_path))?;
                if kind(&st) == SFlag::S_IFDIR {
                    let dir = dst
                        .open(&dst_path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                        .map_err(sys(&dst_path))?;
                    match source {
                        Src::Dir(sfd, _) if contents_only => {
                            copy_children(&sfd, &dir, &dst_path, &mut bytes)?
                        }
                        s => {
                            write_entry(s, &dir, &src_name, &dst_path.join(&src_name), &mut bytes)?
                        }
                    }
                } else {
                    match source {
                        Src::Dir(..) => {
                            return Err(CopyError::Msg(format!(
                                "cannot copy a directory to file {}",
                                dst_path.display()
                            )))
                        }
                        Src::File(sfd, _) => {
                            // Through the scoped resolution (a symlink lands inside the
                            // tree), and only into the regular file checked here.
                            let out = reopen_regular(fd, OFlag::O_WRONLY, &dst_path)?;
                            bytes += pipe(sfd, out, &dst_path)?;
                        }
                        s @ Src::Link(_) => {
                            let (parent, name) = split(&dst_path);
                            let name =
                                name.ok_or_else(|| CopyError::Msg("cannot replace /".into()))?;
                            let pfd = dst
                                .open(&parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                                .map_err(sys(&parent))?;
                            write_entry(s, &pfd, &name, &dst_path, &mut bytes)?;
                        }
                    }
                }
            }
            Err(Errno::ENOENT) => {
                if dst_wants_dir {
                    return Err(CopyError::Msg(format!(
                        "destination directory {} does not exist",
                        dst_path.display()
                    )));
                }
                let (parent, name) = split(&dst_path);
                let name = name.ok_or_else(|| CopyError::Msg("cannot write /".into()))?;
                let pfd = dst
                    .open(&parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                    .map_err(sys(&parent))?;
                write_entry(source, &pfd, &name, &dst_path, &mut bytes)?;
            }
            Err(e) => return Err(sys(&dst_path)(e)),
        }
        Ok(bytes)
    }

    fn pipe(from: OwnedFd, to: OwnedFd, shown: &Path) -> Result<u64, CopyError> {
        let mut r = File::from(from);
        let mut w = File::from(to);
        std::io::copy(&mut r, &mut w).map_err(|source| CopyError::Io {
            path: shown.display().to_string(),
            source,
        })
    }

    /// Create `name` in `dir` from `src`, never following what is already there.
    fn write_entry(
        src: Src,
        dir: &OwnedFd,
        name: &Path,
        shown: &Path,
        bytes: &mut u64,
    ) -> Result<(), CopyError> {
        match src {
            Src::File(sfd, mode) => {
                let out = match openat(
                    dir,
                    name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                ) {
                    Ok(fd) => fd,
                    // Something is there: only a regular file may be overwritten.
                    Err(Errno::EEXIST) => open_regular_at(dir, name, OFlag::O_WRONLY, shown)?,
                    Err(e) => return Err(sys(shown)(e)),
                };
                fchmod(out.as_fd(), Mode::from_bits_truncate(mode)).map_err(sys(shown))?;
                *bytes += pipe(sfd, out, shown)?;
            }
            Src::Dir(sfd, mode) => {
                match mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(sys(shown)(e)),
                }
                let dfd = openat(
                    dir,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(sys(shown))?;
                copy_children(&sfd, &dfd, shown, bytes)?;
                fchmod(dfd.as_fd(), Mode::from_bits_truncate(mode)).map_err(sys(shown))?;
            }
            Src::Link(target) => match nix::unistd::symlinkat(&target, dir, name) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {
                    nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                        .map_err(sys(shown))?;
                    nix::unistd::symlinkat(&target, dir, name).map_err(sys(shown))?;
                }
                Err(e) => return Err(sys(shown)(e)),
            },
        }
        Ok(())
    }

    fn copy_children(
        src: &OwnedFd,
        dst: &OwnedFd,
        shown: &Path,
        bytes: &mut u64,
    ) -> Result<(), CopyError> {
        let dup = nix::unistd::dup(src).map_err(sys(shown))?;
        let mut d = nix::dir::Dir::from_fd(dup).map_err(sys(shown))?;
        let names: Vec<PathBuf> = d
            .iter()
            .flatten()
            .map(|e| PathBuf::from(std::ffi::OsStr::from_bytes(e.file_name().to_bytes())))
            .filter(|n| n.as_os_str() != "." && n.as_os_str() != "..")
            .collect();
        for n in names {
            let shown_n = shown.join(&n);
            match open_entry(src, &n, &shown_n)? {
                Some(s) => write_entry(s, dst, &n, &shown_n, bytes)?,
                None => {
                    tracing::warn!(path = %shown_n.display(), "skipped: not a file, directory or symlink")
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        use berth_runtime::Signal;
        assert_eq!(parse_signal("SIGKILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("hup").unwrap(), Signal::SIGHUP);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(terminating(Signal::SIGTERM) && !terminating(Signal::SIGHUP));
    }

    /// The scoped tree resolves absolute and `..` symlinks inside itself: reads and writes
    /// through them never reach the file outside.
    #[test]
    fn copy_stays_inside_the_scoped_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside.txt");
        std::fs::write(&outside, "HOST\n").unwrap();
        let root = tmp.path().join("rootfs");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("tmp/abs")).unwrap();
        std::os::unix::fs::symlink("../../outside.txt", root.join("tmp/rel")).unwrap();
        let host = copy::Tree::host().unwrap();
        let inside = copy::Tree::scoped(&root).unwrap();
        for link in ["/tmp/abs", "/tmp/rel"] {
            let dest = tmp.path().join("got");
            let _ = std::fs::remove_file(&dest);
            // Following the link inside the tree finds nothing there.
            assert!(copy::copy(&inside, Path::new(link), &host, &dest, true).is_err());
            assert!(!dest.exists());
            // Writing through it doesn't touch the outside file.
            let src = tmp.path().join("evil.txt");
            std::fs::write(&src, "EVIL\n").unwrap();
            let _ = copy::copy(&host, &src, &inside, Path::new(link), false);
            assert_eq!(std::fs::read_to_string(&outside).unwrap(), "HOST\n");
        }
        // A plain round trip, into an existing directory under the source's name.
        std::fs::write(tmp.path().join("a.txt"), "data").unwrap();
        let n = copy::copy(
            &host,
            &tmp.path().join("a.txt"),
            &inside,
            Path::new("/tmp/"),
            false,
        )
        .unwrap();
        assert_eq!(n, 4);
        assert_eq!(
            std::fs::read_to_string(root.join("tmp/a.txt")).unwrap(),
            "data"
        );
    }
}
