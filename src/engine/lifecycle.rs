//! The compose lifecycle on one state root: `up` (observe → reconcile → execute), `down`,
//! `stop`, and the views `ps` and `logs` read from state.
//!
//! Takes a loaded `Project` (or just a project name, for commands that work from state);
//! gives running containers and an up-to-date `state::ProjectRecord`. Decisions come from
//! `plan::reconcile`; this module carries out each operation: images from `image`, links,
//! ports and netns pins from `network`, volumes from `volume`, containers from
//! `berth_runtime` (on blocking threads: the runtime is synchronous), DNS names through the
//! project's supervisor. Teardown goes on after errors and reports all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Mutex;
use tracing::{debug, info};

use super::spec::{self, labels, Placement};
use super::supervisor;
use crate::image::store::{Image, Store as ImageStore};
use crate::network::{self, NetworkManager, NetworkSpec, PortBinding, PortRange, Protocol};
use crate::plan::{self, Condition, Desired, Observed, Op, Plan, UpOptions};
use crate::project::model::{MountType, Project, Service};
use crate::state::{self, AttachmentRecord, ContainerRecord, NetworkRecord, ProjectRecord, Root};
use crate::volume::VolumeStore;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Engine errors: what failed, and why (the cause chain is kept).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what}")]
    Failed {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{} operation(s) failed:\n  {}", .0.len(), .0.join("\n  "))]
    Many(Vec<String>),
}

impl EngineError {
    /// `Ok` when nothing failed, else every failure together (teardown goes on after an
    /// error and reports them all).
    pub(crate) fn all_ok(errors: Vec<String>) -> Result<(), EngineError> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Many(errors))
        }
    }
}

fn failed<E: Into<BoxError>>(what: impl Into<String>) -> impl FnOnce(E) -> EngineError {
    let what = what.into();
    move |e| EngineError::Failed {
        what,
        source: e.into(),
    }
}

/// Render an error with its cause chain on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Progress events for the CLI to render.
#[derive(Debug, Clone)]
pub enum Event {
    Started {
        what: String,
    },
    Done {
        what: String,
        elapsed: Duration,
    },
    /// The operation failed (the error itself comes back from `up`).
    Failed {
        what: String,
        elapsed: Duration,
    },
}

/// One row of `ps`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PsRow {
    pub name: String,
    pub service: String,
    pub number: u32,
    pub image: String,
    pub command: String,
    pub state: String,
    pub status: String,
    pub exit_code: Option<i32>,
    pub ports: Vec<String>,
    /// Host pid of the container's PID 1 while it runs.
    pub pid: Option<i32>,
    /// `starting`, `healthy` or `unhealthy` for a running container with a healthcheck.
    pub health: Option<String>,
    /// A `run` one-off.
    #[serde(skip)]
    pub oneoff: bool,
}

/// Everything the lifecycle needs, opened on one state root.
pub struct Engine {
    pub root: Root,
    pub runtime: berth_runtime::Runtime,
    pub images: Arc<ImageStore>,
    pub networks: Arc<NetworkManager>,
    pub volumes: VolumeStore,
    /// The berth binary (started as supervisor; the runtime's helper too).
    pub exe: PathBuf,
    /// Extra environment for a supervisor this engine starts (e.g. `BERTH_DNS_UPSTREAM`
    /// set by a test fixture); the supervisor inherits this process's environment too.
    pub supervisor_env: Vec<(String, String)>,
}

impl Engine {
    /// Open the stores under `root`. `exe` is the berth binary (`/proc/self/exe` normally).
    pub fn open(root: &Path, exe: PathBuf) -> Result<Engine, EngineError> {
        let root = Root::new(root);
        let images = ImageStore::open(root.path()).map_err(failed("opening the image store"))?;
        let networks = NetworkManager::new(root.path()).map_err(failed("opening network state"))?;
        // The runtime's helper is the `berth-shim` installed beside `exe`, else `exe`
        // itself: `exe` is the berth binary, not necessarily this process (a test
        // fixture's process is the test binary).
        let sibling = exe.with_file_name(berth_runtime::HELPER_NAME);
        let helper = if sibling.is_file() {
            sibling
        } else {
            exe.clone()
        };
        Ok(Engine {
            runtime: berth_runtime::Runtime::new(root.containers_dir()).with_helper(helper),
            supervisor_env: Vec::new(),
            volumes: VolumeStore::new(root.volumes_dir()),
            images: Arc::new(images),
            networks: Arc::new(networks),
            root,
            exe,
        })
    }

    fn rw_dir(&self, container: &str) -> PathBuf {
        self.root.path().join("rw").join(container)
    }

    /// Containers of `project` known to the runtime.
    pub(crate) async fn project_containers(
        &self,
        project: &str,
    ) -> Result<Vec<berth_runtime::Container>, EngineError> {
        let rt = self.runtime.clone();
        let all = tokio::task::spawn_blocking(move || rt.list())
            .await
            .map_err(failed("listing containers"))?
            .map_err(failed("listing containers"))?;
        Ok(all
            .into_iter()
            .filter(|c| c.spec().labels.get(labels::PROJECT).map(String::as_str) == Some(project))
            .collect())
    }

    async fn observe(&self, project: &str) -> Result<Vec<Observed>, EngineError> {
        let mut out = Vec::new();
        for c in self.project_containers(project).await? {
            let l = &c.spec().labels;
            if is_oneoff(&c) {
                continue; // `run` containers are not the service's replicas
            }
            let running = matches!(
                c.status(),
                Ok(berth_runtime::Status::Running
                    | berth_runtime::Status::Created
                    | berth_runtime::Status::Paused)
            );
            out.push(Observed {
                id: c.id().to_string(),
                service: l.get(labels::SERVICE).cloned().unwrap_or_default(),
                number: l
                    .get(labels::NUMBER)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1),
                config_hash: l.get(labels::CONFIG_HASH).cloned().unwrap_or_default(),
                running,
            });
        }
        Ok(out)
    }

    /// Compute the plan of an `up` (what `--dry-run` prints).
    pub async fn plan_up(
        &self,
        project: &Project,
        opts: &UpOptions,
        selected: &[String],
        no_deps: bool,
        scale: &BTreeMap<String, u32>,
    ) -> Result<Plan, EngineError> {
        let chosen = select_services(project, selected, no_deps)?;
        let mut desired: Vec<Desired> = project
            .services
            .values()
            .filter(|s| chosen.contains(&s.name))
            .map(|s| desired_of(s, &chosen))
            .collect();
        for d in &mut desired {
            if let Some(n) = scale.get(&d.service) {
                if *n > 1 && d.container_name.is_some() {
                    return Err(EngineError::Invalid(format!(
                        "service {} has a container_name, so it can't be scaled to {n}",
                        d.service
                    )));
                }
                d.replicas = *n;
            }
        }
        let observed: Vec<Observed> = self
            .observe(project.name.as_str())
            .await?
            .into_iter()
            // Containers of project services that were not selected are left alone.
            .filter(|o| {
                chosen.contains(&o.service)
                    || !project.services.values().any(|s| s.name == o.service)
            })
            .collect();
        plan::reconcile(project.name.as_str(), &desired, &observed, opts)
            .map_err(|e| EngineError::Invalid(e.to_string()))
    }

    /// `up`: converge the project, then wait for what the plan waits for. Also carries out
    /// a [`Engine::plan_run`] plan (the one-off is running when this returns).
    pub async fn up(
        self: &Arc<Self>,
        project: Arc<Project>,
        plan: Plan,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
    ) -> Result<(), EngineError> {
        let run = self.new_run(project, events)?;
        execute(run, plan).await
    }

    fn new_run(
        self: &Arc<Self>,
        project: Arc<Project>,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
    ) -> Result<Arc<Run>, EngineError> {
        let name = project.name.as_str().to_string();
        let record = state::read_json::<ProjectRecord>(&self.root.project_state(&name))
            .map_err(failed("reading the project record"))?
            .unwrap_or_else(|| ProjectRecord {
                project: name.clone(),
                ..Default::default()
            });
        Ok(Arc::new(Run {
            engine: self.clone(),
            project,
            record: Mutex::new(record),
            images: Mutex::new(HashMap::new()),
            events,
        }))
    }

    /// The plan of `run`: the one-off container `name` of `service` (whose config the
    /// caller has already adjusted: command, env, ports…) and what it needs, as docker
    /// compose makes it: the project's networks and volumes (and so its supervisor and
    /// DNS) even with `no_deps`, else also an `up` of the services it depends on and the
    /// waits for its `depends_on` conditions. `attach`: a client attaches right after the
    /// start (`run` in the foreground), which the container's shim waits for.
    pub async fn plan_run(
        &self,
        project: &Project,
        service: &str,
        name: &str,
        no_deps: bool,
        attach: bool,
        auto_remove: bool,
    ) -> Result<Plan, EngineError> {
        let svc = project
            .services
            .values()
            .find(|s| s.name == service)
            .ok_or_else(|| EngineError::Invalid(format!("no such service: {service}")))?;
        let all: BTreeSet<String> = project.services.values().map(|s| s.name.clone()).collect();
        let direct: Vec<String> = svc
            .depends_on
            .keys()
            .map(|k| k.as_str().to_string())
            .filter(|d| all.contains(d))
            .collect();
        let chosen = if no_deps || direct.is_empty() {
            BTreeSet::new()
        } else {
            select_services(project, &direct, false)?
        };
        let deps: Vec<Desired> = project
            .services
            .values()
            .filter(|s| chosen.contains(&s.name))
            .map(|s| desired_of(s, &chosen))
            .collect();
        let observed: Vec<Observed> = self
            .observe(project.name.as_str())
            .await?
            .into_iter()
            .filter(|o| chosen.contains(&o.service))
            .collect();
        plan::plan_run(
            project.name.as_str(),
            &desired_of(svc, &all),
            name,
            attach,
            auto_remove,
            &deps,
            &observed,
        )
        .map_err(|e| EngineError::Invalid(e.to_string()))
    }

    /// Remove container `name` of the project (a `run --rm` one-off when it exited).
    pub async fn remove_one(
        self: &Arc<Self>,
        project: Arc<Project>,
        name: &str,
        timeout: Duration,
    ) -> Result<(), EngineError> {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        self.new_run(project, tx)?.remove(name, timeout).await
    }

    /// Wait until container `name` has exited; its exit code (128+N for a signal).
    pub async fn wait_exit(&self, name: &str) -> Result<i32, EngineError> {
        loop {
            let rt = self.runtime.clone();
            let n = name.to_string();
            let status = tokio::task::spawn_blocking(move || rt.get(&n).and_then(|c| c.status()))
                .await
                .map_err(failed(format!("container {name}")))?
                .map_err(failed(format!("container {name}")))?;
            match status {
                berth_runtime::Status::Exited(x) => return Ok(x.code),
                berth_runtime::Status::Dead => {
                    return Err(EngineError::Invalid(format!("container {name} is dead")))
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The volumes `down -v` removes: `declared` (the project's non-external volumes by
    /// full name) plus every volume labelled with the project or named as its anonymous
    /// volumes.
    pub fn project_volumes(&self, project: &str, mut declared: Vec<String>) -> Vec<String> {
        for v in self.volumes.list().unwrap_or_default() {
            let labelled = v.labels.get(labels::PROJECT).map(String::as_str) == Some(project);
            let anonymous = v.name.starts_with(&format!("{project}-")) && v.name.contains("-anon-");
            if (labelled || anonymous) && !declared.contains(&v.name) {
                declared.push(v.name);
            }
        }
        declared
    }

    /// `down`: stop and remove every container of the project, its networks, its
    /// supervisor and (with `remove_volumes`) its volumes. Works from state, goes on after
    /// errors, reports them all.
    pub async fn down(
        &self,
        project: &str,
        volumes: &[String],
        timeout: Duration,
    ) -> Result<(), EngineError> {
        let mut errors: Vec<String> = Vec::new();
        let record = state::read_json::<ProjectRecord>(&self.root.project_state(project))
            .unwrap_or_default()
            .unwrap_or_default();
        // id → (service, services it depends on), from the labels (and the record for a
        // container the runtime no longer knows).
        let mut ids: BTreeMap<String, (String, Vec<String>)> = record
            .containers
            .iter()
            .map(|c| (c.id.clone(), (c.service.clone(), Vec::new())))
            .collect();
        for c in self.project_containers(project).await.unwrap_or_default() {
            let l = &c.spec().labels;
            ids.insert(
                c.id().to_string(),
                (
                    l.get(labels::SERVICE).cloned().unwrap_or_default(),
                    spec::depends_on_services(
                        l.get(labels::DEPENDS_ON).map(String::as_str).unwrap_or(""),
                    ),
                ),
            );
        }
        // Marked stopped on purpose first, so the supervisor's restart policies leave the
        // containers alone while they stop; the supervisor itself goes last, so DNS still
        // answers while dependents shut down gracefully.
        if !record.containers.is_empty() {
            let mut marked = record.clone();
            for c in &mut marked.containers {
                c.stopped = true;
            }
            if let Err(e) = state::write_json(&self.root.project_state(project), &marked) {
                errors.push(chain(&e));
            }
        }
        // Network state of the project's own networks goes in one `teardown_project`
        // below (one nft delete, one link-group delete); containers only leave external
        // networks one by one.
        let external: BTreeSet<String> = record
            .networks
            .iter()
            .filter(|n| n.external)
            .map(|n| n.name.clone())
            .collect();
        // In reverse dependency order: each wave removes, in parallel, the containers no
        // remaining container of another service depends on (dependents go first).
        for wave in down_waves(ids) {
            let mut tasks = Vec::new();
            for id in wave {
                let rec = record.containers.iter().find(|c| c.id == id).cloned();
                tasks.push(self.remove_container(project, id, rec, timeout, Some(&external)));
            }
            for r in futures::future::join_all(tasks).await {
                if let Err(e) = r {
                    errors.push(chain(&e));
                }
            }
        }
        if let Err(e) = supervisor::shutdown(&self.root, project).await {
            errors.push(chain(&e));
        }
        if let Err(es) = self.networks.teardown_project(project).await {
            errors.extend(es.iter().map(|e| chain(e)));
        }
        for v in volumes {
            if let Err(e) = self.volumes.remove(v) {
                errors.push(chain(&e));
            }
        }
        if errors.is_empty() {
            let _ = std::fs::remove_dir_all(self.root.project_dir(project));
            Ok(())
        } else {
            // Keep the project dir (record, logs) so a second `down` can finish the job.
            Err(EngineError::Many(errors))
        }
    }

    /// Stop, delete and detach one container; idempotent. With `only_networks`, network
    /// state is released only for those networks (the caller tears the rest down at once).
    pub(crate) async fn remove_container(
        &self,
        project: &str,
        id: String,
        rec: Option<ContainerRecord>,
        timeout: Duration,
        only_networks: Option<&BTreeSet<String>>,
    ) -> Result<(), EngineError> {
        let rt = self.runtime.clone();
        let id2 = id.clone();
        let (root2, project2) = (self.root.clone(), project.to_string());
        let netns_from_spec =
            tokio::task::spawn_blocking(move || -> Result<Option<PathBuf>, EngineError> {
                // Held while it goes: a restart policy can't start it again meanwhile.
                let _lock = lock_container(&root2, &id2);
                let mut gone = None;
                let netns = match rt.get(&id2) {
                    Ok(c) => {
                        let netns = match &c.spec().network {
                            berth_runtime::Network::Join(p) => Some(p.clone()),
                            _ => None,
                        };
                        // A created, never started container has nothing to stop.
                        let started = c.pid().is_some();
                        if started
                            && matches!(
                                c.status(),
                                Ok(berth_runtime::Status::Running
                                    | berth_runtime::Status::Paused
                                    | berth_runtime::Status::Created)
                            )
                        {
                            c.stop(timeout)
                                .map_err(failed(format!("stopping container {id2}")))?;
                        }
                        super::events::claim_die(&root2, &project2, &c);
                        gone = Some(c);
                        netns
                    }
                    Err(_) => None,
                };
                rt.delete(&id2)
                    .map_err(failed(format!("removing container {id2}")))?;
                if let Some(c) = &gone {
                    super::events::emit(&root2, &project2, c, "destroy", &[]);
                }
                let _ = std::fs::remove_file(root2.container_lock(&id2));
                Ok(netns)
            })
            .await
            .map_err(failed(format!("removing container {id}")))??;
        let mut errors = Vec::new();
        if only_networks.is_none() {
            if let Err(e) = self.networks.unpublish(project, &id).await {
                errors.push(chain(&e));
            }
        }
        if let Some(rec) = &rec {
            for a in &rec.attachments {
                if only_networks.is_some_and(|only| !only.contains(&a.network)) {
                    continue;
                }
                if let Err(e) = self.networks.detach(&a.network, &id).await {
                    if !matches!(
                        e,
                        network::NetworkError::NotAttached { .. }
                            | network::NetworkError::NotFound { .. }
                    ) {
                        errors.push(chain(&e));
                    }
                }
            }
        }
        let netns = rec.and_then(|r| r.netns).or(netns_from_spec);
        // Only our own pins; a joined `container:`/`service:` netns belongs to its owner.
        let own_pin = netns.filter(|ns| {
            ns.starts_with(self.root.netns_dir())
                && ns.file_name().map(|f| f == id.as_str()).unwrap_or(false)
        });
        // Unmount and unlinks block (2-10 ms each on a busy disk): on a blocking thread,
        // so `down` removes its containers in parallel instead of one after another.
        let (rw, files) = (
            self.rw_dir(&id),
            self.root.container_files_dir(project, &id),
        );
        let pin_err = tokio::task::spawn_blocking(move || {
            let err = own_pin.and_then(|ns| network::netns::remove_netns(&ns).err());
            let _ = std::fs::remove_dir_all(rw);
            let _ = std::fs::remove_dir_all(files);
            err
        })
        .await
        .map_err(failed(format!("removing container {id}")))?;
        if let Some(e) = pin_err {
            errors.push(chain(&e));
        }
        debug!(container = %id, "removed");
        EngineError::all_ok(errors)
    }

    /// `stop`: stop containers (of `services`, or all) without removing them.
    pub async fn stop(
        &self,
        project: &str,
        services: &[String],
        timeout: Duration,
    ) -> Result<(), EngineError> {
        // Mark them stopped first, so the supervisor's restart policy leaves them alone.
        let path = self.root.project_state(project);
        if let Ok(Some(mut r)) = state::read_json::<ProjectRecord>(&path) {
            for c in &mut r.containers {
                if services.is_empty() || services.contains(&c.service) {
                    c.stopped = true;
                }
            }
            state::write_json(&path, &r).map_err(failed("writing the project record"))?;
        }
        let mut tasks = Vec::new();
        for c in self.project_containers(project).await? {
            let svc = c
                .spec()
                .labels
                .get(labels::SERVICE)
                .cloned()
                .unwrap_or_default();
            if !services.is_empty() && !services.contains(&svc) {
                continue;
            }
            let (root, project) = (self.root.clone(), project.to_string());
            tasks.push(tokio::task::spawn_blocking(move || {
                super::verbs::stop_one(&root, &project, &c, timeout)
            }));
        }
        let mut errors = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(chain(&e)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        EngineError::all_ok(errors)
    }

    /// `exec`: run a command in container `index` of `service` (with `spec.detach`,
    /// return once it runs).
    pub async fn exec(
        &self,
        project: &str,
        service: &str,
        index: u32,
        spec: berth_runtime::ExecSpec,
    ) -> Result<berth_runtime::ExecOutput, EngineError> {
        let c = self
            .project_containers(project)
            .await?
            .into_iter()
            .find(|c| {
                let l = &c.spec().labels;
                l.get(labels::SERVICE).map(String::as_str) == Some(service)
                    && l.get(labels::NUMBER).and_then(|n| n.parse().ok()) == Some(index)
                    && !is_oneoff(c)
            })
            .ok_or_else(|| {
                EngineError::Invalid(format!(
                    "service \"{service}\" is not running container #{index}"
                ))
            })?;
        if !matches!(c.status(), Ok(berth_runtime::Status::Running)) {
            return Err(EngineError::Invalid(format!(
                "container {} is not running",
                c.id()
            )));
        }
        let id = c.id().to_string();
        tokio::task::spawn_blocking(move || c.exec(&spec))
            .await
            .map_err(failed(format!("exec in {id}")))?
            .map_err(failed(format!("exec in {id}")))
    }

    /// `ps`: the project's containers, by service and number.
    pub async fn ps(&self, project: &str, all: bool) -> Result<Vec<PsRow>, EngineError> {
        let ports = self.networks.ports(project).unwrap_or_default();
        let mut rows = Vec::new();
        for c in self.project_containers(project).await? {
            let spec = c.spec();
            let status = c
                .status()
                .map_err(failed(format!("reading state of {}", c.id())))?;
            let (state, status_text, code) = match &status {
                berth_runtime::Status::Created => ("created", "Created".to_string(), None),
                berth_runtime::Status::Running => ("running", "Up".to_string(), None),
                berth_runtime::Status::Paused => ("paused", "Up (Paused)".to_string(), None),
                berth_runtime::Status::Exited(x) => {
                    ("exited", format!("Exited ({})", x.code), Some(x.code))
                }
                berth_runtime::Status::Dead => ("dead", "Dead".to_string(), None),
            };
            if !all && !matches!(state, "running" | "paused" | "created") {
                continue;
            }
            let health = (state == "running")
                .then(|| super::health::read(&self.root, project, &c))
                .flatten()
                .map(|h| h.status);
            let status_text = match health.as_deref() {
                Some("starting") => format!("{status_text} (health: starting)"),
                Some(h) => format!("{status_text} ({h})"),
                None => status_text,
            };
            let id = c.id().to_string();
            rows.push(PsRow {
                name: id.clone(),
                service: spec
                    .labels
                    .get(labels::SERVICE)
                    .cloned()
                    .unwrap_or_default(),
                number: spec
                    .labels
                    .get(labels::NUMBER)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1),
                image: spec.labels.get(labels::IMAGE).cloned().unwrap_or_default(),
                command: spec.args.join(" "),
                state: state.into(),
                status: status_text,
                exit_code: code,
                pid: if state == "running" { c.pid() } else { None },
                health,
                oneoff: is_oneoff(&c),
                ports: ports
                    .iter()
                    .filter(|p| p.container == id)
                    .map(|p| {
                        let ip = p
                            .host_ip
                            .map(|i| i.to_string())
                            .unwrap_or_else(|| "0.0.0.0".into());
                        format!("{ip}:{}->{}/{}", p.host_port, p.container_port, p.protocol)
                    })
                    .collect(),
            });
        }
        rows.sort_by(|a, b| (&a.service, a.number).cmp(&(&b.service, b.number)));
        Ok(rows)
    }

    /// Log files of the project's containers, by service and number: (name, service, path).
    pub async fn log_files(
        &self,
        project: &str,
        services: &[String],
    ) -> Result<Vec<(String, String, u32, PathBuf)>, EngineError> {
        let mut out = Vec::new();
        for c in self.project_containers(project).await? {
            let l = &c.spec().labels;
            let svc = l.get(labels::SERVICE).cloned().unwrap_or_default();
            if !services.is_empty() && !services.contains(&svc) {
                continue;
            }
            let n = l
                .get(labels::NUMBER)
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            out.push((c.id().to_string(), svc, n, c.log_path()));
        }
        out.sort_by(|a, b| (&a.1, a.2).cmp(&(&b.1, b.2)));
        Ok(out)
    }
}

/// Take container `id`'s lock (blocking); `None` if the lock file can't be made (then
/// nothing is serialised, as before locks existed).
pub(crate) fn lock_container(root: &Root, id: &str) -> Option<nix::fcntl::Flock<std::fs::File>> {
    let path = root.container_lock(id);
    let _ = std::fs::create_dir_all(path.parent()?);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ok()?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok()
}

/// A `run` one-off: not one of its service's replicas (`exec`, `port`, waits skip it).
pub(crate) fn is_oneoff(c: &berth_runtime::Container) -> bool {
    c.spec().labels.get(labels::ONEOFF).map(String::as_str) == Some("True")
}

/// The order `down` removes containers in: waves of ids, dependents before what they
/// depend on; a wave is every container no remaining container of another service depends
/// on (all the rest at once if a cycle is left).
fn down_waves(mut left: BTreeMap<String, (String, Vec<String>)>) -> Vec<Vec<String>> {
    let mut waves = Vec::new();
    while !left.is_empty() {
        let needed: BTreeSet<&str> = left
            .values()
            .flat_map(|(svc, deps)| deps.iter().filter(move |d| *d != svc))
            .map(String::as_str)
            .collect();
        let mut wave: Vec<String> = left
            .iter()
            .filter(|(_, (svc, _))| !needed.contains(svc.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        if wave.is_empty() {
            wave = left.keys().cloned().collect();
        }
        for id in &wave {
            left.remove(id);
        }
        waves.push(wave);
    }
    waves
}

/// Start an existing container that is not running: a created one for the first time, a
/// stopped one again with the same spec and writable layer, as `docker start` does.
pub(crate) fn start_in_place(
    rt: &berth_runtime::Runtime,
    root: &Root,
    project: &str,
    c: &berth_runtime::Container,
) -> Result<berth_runtime::Container, EngineError> {
    let id = c.id().to_string();
    if matches!(c.status(), Ok(berth_runtime::Status::Created)) && c.pid().is_none() {
        return rt
            .start(&id)
            .map_err(failed(format!("starting container {id}")));
    }
    super::events::claim_die(root, project, c);
    let mut spec = c.spec().clone();
    // Started again: no client is expected to attach (only `run` attaches, right after
    // the first start), so the shim must not wait for one when it exits.
    spec.attach = false;
    rt.delete(&id)
        .map_err(failed(format!("starting container {id}")))?;
    rt.run(&spec)
        .map_err(failed(format!("starting container {id}")))
}

/// The services an `up` works on: the named ones and (unless `no_deps`) everything they
/// depend on; all services when none is named.
pub fn select_services(
    project: &Project,
    selected: &[String],
    no_deps: bool,
) -> Result<BTreeSet<String>, EngineError> {
    let names: BTreeSet<String> = project.services.values().map(|s| s.name.clone()).collect();
    if selected.is_empty() {
        return Ok(names);
    }
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = Vec::new();
    for s in selected {
        if !names.contains(s) {
            return Err(EngineError::Invalid(format!("no such service: {s}")));
        }
        todo.push(s.clone());
    }
    while let Some(s) = todo.pop() {
        if !out.insert(s.clone()) || no_deps {
            continue;
        }
        if let Some(svc) = project.services.values().find(|x| x.name == s) {
            for d in svc.depends_on.keys() {
                if names.contains(d.as_str()) {
                    todo.push(d.as_str().to_string());
                }
            }
        }
    }
    Ok(out)
}

fn desired_of(s: &Service, chosen: &BTreeSet<String>) -> Desired {
    use crate::project::model::Condition as C;
    Desired {
        service: s.name.clone(),
        replicas: s.replicas(),
        config_hash: crate::project::hash::service_config_hash(s),
        container_name: s.container_name.clone(),
        healthcheck: s
            .healthcheck
            .as_ref()
            .is_some_and(|h| !h.disable && !h.test.is_empty()),
        depends_on: s
            .depends_on
            .iter()
            .filter(|(n, _)| chosen.contains(n.as_str()))
            .map(|(n, d)| plan::Dependency {
                service: n.as_str().to_string(),
                condition: match d.condition {
                    C::ServiceStarted => Condition::Started,
                    C::ServiceHealthy => Condition::Healthy,
                    C::ServiceCompletedSuccessfully => Condition::CompletedSuccessfully,
                },
                required: d.required,
                restart: d.restart,
            })
            .collect(),
    }
}

/// The state of one `up` execution, shared by its operations.
struct Run {
    engine: Arc<Engine>,
    project: Arc<Project>,
    record: Mutex<ProjectRecord>,
    images: Mutex<HashMap<String, Arc<Image>>>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
}

type StepFuture = Shared<BoxFuture<'static, Result<(), Arc<String>>>>;

/// Run the plan: every step starts as soon as the steps it waits for are done; a failed
/// step fails the steps after it. The executor decides nothing.
async fn execute(run: Arc<Run>, plan: Plan) -> Result<(), EngineError> {
    let mut futs: Vec<StepFuture> = Vec::with_capacity(plan.steps.len());
    for step in plan.steps {
        let deps: Vec<StepFuture> = step.after.iter().map(|i| futs[*i].clone()).collect();
        let run = run.clone();
        let op = step.op.clone();
        let fut = async move {
            for d in deps {
                if d.await.is_err() {
                    return Err(Arc::new(format!(
                        "{op}: skipped, an operation it waits for failed"
                    )));
                }
            }
            let what = op.to_string();
            let _ = run.events.send(Event::Started { what: what.clone() });
            let t = Instant::now();
            match run.clone().perform(&op).await {
                Ok(()) => {
                    let _ = run.events.send(Event::Done {
                        what,
                        elapsed: t.elapsed(),
                    });
                    Ok(())
                }
                Err(e) => {
                    let _ = run.events.send(Event::Failed {
                        what: what.clone(),
                        elapsed: t.elapsed(),
                    });
                    Err(Arc::new(format!("{what}: {}", chain(&e))))
                }
            }
        }
        .boxed()
        .shared();
        futs.push(fut);
    }
    let results = futures::future::join_all(futs).await;
    let mut errors: Vec<String> = Vec::new();
    for r in results {
        if let Err(e) = r {
            if !e.contains("skipped, an operation it waits for failed") {
                errors.push((*e).clone());
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(EngineError::Many(errors))
    }
}

impl Run {
    fn name(&self) -> &str {
        self.project.name.as_str()
    }

    fn service(&self, name: &str) -> Result<&Service, EngineError> {
        self.project
            .services
            .values()
            .find(|s| s.name == name)
            .ok_or_else(|| EngineError::Invalid(format!("no such service: {name}")))
    }

    async fn perform(self: Arc<Self>, op: &Op) -> Result<(), EngineError> {
        match op {
            Op::EnsureNetworks => self.ensure_networks().await,
            Op::EnsureImage { service } => self.ensure_image(service).await.map(|_| ()),
            Op::Remove { id, .. } => self.remove(id, Duration::from_secs(10)).await,
            Op::Create {
                service,
                number,
                name,
            } => self.create(service, *number, name, false, false).await,
            Op::Start { name, .. } => self.start(name).await,
            Op::Restart { name, .. } => self.restart(name).await,
            Op::Wait { service, condition } => self.wait(service, *condition).await,
            Op::RunOneoff {
                service,
                name,
                attach,
                auto_remove,
            } => {
                self.create(service, 1, name, true, *attach).await?;
                if *auto_remove {
                    // Before the start: the supervisor may see it exit at once.
                    let mut r = self.record.lock().await;
                    for c in r.containers.iter_mut().filter(|c| c.id == *name) {
                        c.auto_remove = true;
                    }
                    self.save(&r).await?;
                }
                self.start(name).await
            }
        }
    }

    /// Stop and remove container `id` and its record entry (its DNS names go with it).
    async fn remove(&self, id: &str, timeout: Duration) -> Result<(), EngineError> {
        // Marked stopped first, so no restart policy brings it back mid-removal.
        let rec = {
            let mut r = self.record.lock().await;
            for c in r.containers.iter_mut().filter(|c| c.id == id) {
                c.stopped = true;
            }
            let rec = r.containers.iter().find(|c| c.id == id).cloned();
            if rec.is_some() {
                self.save(&r).await?;
            }
            rec
        };
        self.engine
            .remove_container(self.name(), id.to_string(), rec, timeout, None)
            .await?;
        let mut r = self.record.lock().await;
        r.containers.retain(|c| c.id != id);
        self.save(&r).await
    }

    /// Stop container `name` (marked stopped first, so no restart policy races us), then
    /// start it again with the same spec and writable layer.
    async fn restart(&self, name: &str) -> Result<(), EngineError> {
        {
            let mut r = self.record.lock().await;
            for c in r.containers.iter_mut().filter(|c| c.id == name) {
                c.stopped = true;
            }
            self.save(&r).await?;
        }
        let rt = self.engine.runtime.clone();
        let n = name.to_string();
        tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
            let c = rt.get(&n).map_err(failed(format!("container {n}")))?;
            if matches!(
                c.status(),
                Ok(berth_runtime::Status::Running | berth_runtime::Status::Paused)
            ) {
                c.stop(Duration::from_secs(10))
                    .map_err(failed(format!("stopping container {n}")))?;
            }
            Ok(())
        })
        .await
        .map_err(failed(format!("restarting container {name}")))??;
        self.start(name).await
    }

    /// Persist the record and have the supervisor apply it (DNS names change now).
    async fn save(&self, r: &ProjectRecord) -> Result<(), EngineError> {
        let e = &self.engine;
        state::write_json(&e.root.project_state(self.name()), r)
            .map_err(failed("writing the project record"))?;
        supervisor::ensure(&e.root, self.name(), &e.exe, &e.supervisor_env)
            .await
            .map_err(failed("starting the project supervisor"))?;
        supervisor::request(&e.root, self.name(), &super::protocol::Request::Reload)
            .await
            .map_err(failed("updating the project supervisor"))?;
        Ok(())
    }

    async fn ensure_networks(&self) -> Result<(), EngineError> {
        let e = &self.engine;
        let mut used: BTreeSet<String> = BTreeSet::new();
        for s in self.project.services.values() {
            if matches!(s.network_mode.as_deref(), Some(m) if m != "bridge") {
                continue;
            }
            for n in s.networks.keys() {
                used.insert(n.as_str().to_string());
            }
        }
        // Everything external must exist before anything is created, so a missing one
        // fails `up` with nothing half-made.
        for vol in self.project.volumes.values().filter(|v| v.external) {
            if e.volumes
                .get(&vol.name)
                .map_err(failed(format!("volume {}", vol.name)))?
                .is_none()
            {
                return Err(EngineError::Invalid(format!(
                    "external volume {:?} not found",
                    vol.name
                )));
            }
        }
        for (key, net) in &self.project.networks {
            if net.external && used.contains(key.as_str()) {
                let found = e
                    .networks
                    .network(&net.name)
                    .map_err(failed(format!("looking up network {}", net.name)))?;
                if found.is_none() {
                    return Err(EngineError::Invalid(format!(
                        "network {} declared as external, but could not be found",
                        net.name
                    )));
                }
            }
        }
        let mut records = Vec::new();
        for (key, net) in &self.project.networks {
            if !used.contains(key.as_str()) {
                continue;
            }
            let info = if net.external {
                e.networks
                    .network(&net.name)
                    .map_err(failed(format!("looking up network {}", net.name)))?
                    .ok_or_else(|| {
                        EngineError::Invalid(format!(
                            "network {} declared as external, but could not be found",
                            net.name
                        ))
                    })?
            } else {
                if let Some(d) = net.driver.as_deref() {
                    if d != "bridge" {
                        return Err(EngineError::Invalid(format!(
                            "network {}: driver {d:?} is not supported yet (only bridge)",
                            key.as_str()
                        )));
                    }
                }
                let pool = net.ipam.as_ref().and_then(|i| i.config.first());
                let parse_net = |s: &Option<String>,
                                 what: &str|
                 -> Result<Option<ipnet::Ipv4Net>, EngineError> {
                    s.as_deref()
                        .map(|v| {
                            v.parse().map_err(|_| {
                                EngineError::Invalid(format!(
                                    "network {}: invalid {what} {v:?}",
                                    key.as_str()
                                ))
                            })
                        })
                        .transpose()
                };
                let spec = NetworkSpec {
                    project: self.name().to_string(),
                    name: net.name.clone(),
                    subnet: parse_net(&pool.and_then(|p| p.subnet.clone()), "subnet")?,
                    gateway: pool
                        .and_then(|p| p.gateway.as_deref())
                        .map(|g| {
                            g.parse().map_err(|_| {
                                EngineError::Invalid(format!(
                                    "network {}: invalid gateway {g:?}",
                                    key.as_str()
                                ))
                            })
                        })
                        .transpose()?,
                    ip_range: parse_net(&pool.and_then(|p| p.ip_range.clone()), "ip_range")?,
                    internal: net.internal,
                    bridge_name: net
                        .driver_opts
                        .get("com.docker.network.bridge.name")
                        .cloned(),
                    mtu: net
                        .driver_opts
                        .get("com.docker.network.driver.mtu")
                        .and_then(|m| m.parse().ok()),
                    labels: net.labels.clone(),
                    enable_ipv6: net.enable_ipv6.unwrap_or(false),
                };
                e.networks
                    .ensure_network(&spec)
                    .await
                    .map_err(failed(format!("creating network {}", net.name)))?
            };
            records.push(NetworkRecord {
                key: key.as_str().to_string(),
                name: info.name.clone(),
                bridge: info.bridge.clone(),
                subnet: info.subnet.to_string(),
                gateway: info.gateway,
                internal: info.internal,
                external: net.external,
            });
        }
        // Named volumes of the project (created here too: they are project-wide).
        for (key, vol) in &self.project.volumes {
            if vol.external {
                if e.volumes
                    .get(&vol.name)
                    .map_err(failed(format!("volume {}", vol.name)))?
                    .is_none()
                {
                    return Err(EngineError::Invalid(format!(
                        "external volume {:?} not found",
                        vol.name
                    )));
                }
                continue;
            }
            if let Some(d) = vol.driver.as_deref() {
                if d != "local" {
                    return Err(EngineError::Invalid(format!(
                        "volume {}: driver {d:?} is not supported yet (only local)",
                        key.as_str()
                    )));
                }
            }
            let mut l = vol.labels.clone();
            l.insert("com.docker.compose.project".into(), self.name().to_string());
            l.insert("com.docker.compose.volume".into(), key.as_str().to_string());
            e.volumes
                .ensure(&vol.name, &l)
                .map_err(failed(format!("creating volume {}", vol.name)))?;
        }
        let mut r = self.record.lock().await;
        r.project = self.name().to_string();
        r.working_dir = self.project.working_dir.clone();
        r.config_files = self.project.compose_files.clone();
        r.networks = records;
        self.save(&r).await
    }

    async fn ensure_image(&self, service: &str) -> Result<Arc<Image>, EngineError> {
        let svc = self.service(service)?;
        let reference = svc.image.clone().ok_or_else(|| {
            EngineError::Invalid(format!(
                "service {service} has no image (build is not supported yet)"
            ))
        })?;
        if let Some(i) = self.images.lock().await.get(&reference) {
            return Ok(i.clone());
        }
        let store = self.engine.images.clone();
        let r2 = reference.clone();
        let found = tokio::task::spawn_blocking(move || store.get(&r2))
            .await
            .map_err(failed(format!("looking up image {reference}")))?;
        let image = match found {
            Ok(i) => i,
            Err(e) if !matches!(e, crate::image::store::StoreError::NotFound { .. }) => {
                return Err(failed(format!("service {service}: image {reference}"))(e));
            }
            Err(_) => {
                let r = crate::image::ImageRef::parse(&reference)
                    .map_err(failed(format!("service {service}: image {reference:?}")))?;
                info!(image = %reference, "pulling");
                // The pull future is not provably `Send` (higher-ranked closures inside
                // it), so it runs on a blocking thread driven by this runtime's handle.
                let store = self.engine.images.clone();
                let handle = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    handle.block_on(crate::image::registry::pull(
                        &store,
                        &crate::image::registry::RegistryConfig::from_env(),
                        &r,
                        &crate::image::registry::PullOptions {
                            platform: None,
                            progress: crate::image::registry::Progress::Quiet,
                        },
                    ))
                })
                .await
                .map_err(failed(format!(
                    "pulling image {reference} for service {service}"
                )))?
                .map_err(failed(format!(
                    "pulling image {reference} for service {service}"
                )))?;
                let store = self.engine.images.clone();
                let r2 = reference.clone();
                tokio::task::spawn_blocking(move || store.get(&r2))
                    .await
                    .map_err(failed(format!("looking up image {reference}")))?
                    .map_err(failed(format!("image {reference}")))?
            }
        };
        let image = Arc::new(image);
        self.images.lock().await.insert(reference, image.clone());
        Ok(image)
    }

    /// Create container `name` of `service`; a `oneoff` (of `run`) is labelled
    /// `oneoff=True`, gets no service-name DNS alias and no restart policy, and is ignored
    /// by convergence. `attach`: a client attaches right after the start.
    async fn create(
        &self,
        service: &str,
        number: u32,
        name: &str,
        oneoff: bool,
        attach: bool,
    ) -> Result<(), EngineError> {
        let e = &self.engine;
        let svc = self.service(service)?.clone();
        let image = self.ensure_image(service).await?;
        let project = self.name().to_string();

        // Network namespace: our own pin (bridge), none, host, or another container's.
        let mode =
            network::mode::NetworkMode::parse(svc.network_mode.as_deref().unwrap_or("bridge"))
                .map_err(failed(format!("service {service}: network_mode")))?;
        let (netns, own_pin) = match &mode {
            network::mode::NetworkMode::Bridge => {
                let p = e.networks.netns_path(name);
                network::netns::create_netns(&p)
                    .await
                    .map_err(failed(format!("creating the network namespace of {name}")))?;
                (Some(p), true)
            }
            network::mode::NetworkMode::None => (None, false),
            network::mode::NetworkMode::Host => (None, false),
            network::mode::NetworkMode::Service(other) => {
                let r = self.record.lock().await;
                let ns = r
                    .containers
                    .iter()
                    .filter(|c| &c.service == other && !c.oneoff)
                    .min_by_key(|c| c.number)
                    .and_then(|c| c.netns.clone())
                    .ok_or_else(|| {
                        EngineError::Invalid(format!(
                            "service {service}: network_mode service:{other}: {other} has no running container"
                        ))
                    })?;
                (Some(ns), false)
            }
            network::mode::NetworkMode::Container(other) => {
                let ns = e.networks.netns_path(other);
                if !ns.exists() {
                    return Err(EngineError::Invalid(format!(
                        "service {service}: network_mode container:{other}: no such container"
                    )));
                }
                (Some(ns), false)
            }
        };

        // Attach to each network; the first (by name) gets the default route, as compose
        // orders them when no priority is given.
        let mut attachments = Vec::new();
        if own_pin {
            let netns = netns.clone().expect("own pin has a path");
            let r = self.record.lock().await.networks.clone();
            for (i, (key, opts)) in svc.networks.iter().enumerate() {
                let nrec = r.iter().find(|n| n.key == key.as_str()).ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "service {service}: network {} was not created",
                        key.as_str()
                    ))
                })?;
                let info = e
                    .networks
                    .network(&nrec.name)
                    .map_err(failed(format!("network {}", nrec.name)))?
                    .ok_or_else(|| {
                        EngineError::Invalid(format!("network {} is gone", nrec.name))
                    })?;
                let ipv4 = opts
                    .as_ref()
                    .and_then(|o| o.ipv4_address.as_deref())
                    .map(|a| {
                        a.parse::<Ipv4Addr>().map_err(|_| {
                            EngineError::Invalid(format!(
                                "service {service}: invalid ipv4_address {a:?}"
                            ))
                        })
                    })
                    .transpose()?;
                let mac = super::netcfg::mac_address(&svc, i, opts.as_ref())
                    .map_err(EngineError::Invalid)?;
                let att = e
                    .networks
                    .attach(&info, &netns, name, i as u32, ipv4, mac)
                    .await
                    .map_err(failed(format!("attaching {name} to network {}", info.name)))?;
                // A `run` one-off answers to its own name only, not the service's.
                let mut names = if oneoff {
                    vec![name.to_string()]
                } else {
                    vec![svc.name.clone(), name.to_string()]
                };
                if let Some(cn) = &svc.container_name {
                    names.push(cn.clone());
                }
                if let Some(h) = &svc.hostname {
                    names.push(h.clone());
                }
                if let Some(o) = opts {
                    names.extend(o.aliases.iter().cloned());
                }
                attachments.push(AttachmentRecord {
                    network: info.name.clone(),
                    ip: att.ip,
                    ifname: att.ifname.clone(),
                    host_veth: att.host_veth.clone(),
                    dns_names: names,
                    link_aliases: super::netcfg::link_aliases(&svc, &r, &e.networks),
                });
            }
        }

        // /etc/hosts, /etc/hostname, /etc/resolv.conf.
        let files_dir = e.root.container_files_dir(&project, name);
        std::fs::create_dir_all(&files_dir)
            .map_err(failed(format!("creating {}", files_dir.display())))?;
        let hostname = svc.hostname.clone().unwrap_or_else(|| name.to_string());
        let own: Vec<IpAddr> = attachments.iter().map(|a| IpAddr::V4(a.ip)).collect();
        let mut extra = Vec::new();
        for h in &svc.extra_hosts {
            let (host, ip) = h
                .split_once('=')
                .or_else(|| h.split_once(':'))
                .ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "service {service}: invalid extra_hosts entry {h:?}"
                    ))
                })?;
            let ip: IpAddr = ip
                .trim_matches(|c| c == '[' || c == ']')
                .parse()
                .map_err(|_| {
                    EngineError::Invalid(format!(
                        "service {service}: invalid address in extra_hosts entry {h:?}"
                    ))
                })?;
            extra.push((host.to_string(), ip));
        }
        let gateway = {
            let r = self.record.lock().await;
            attachments
                .first()
                .and_then(|a| r.networks.iter().find(|n| n.name == a.network))
                .map(|n| IpAddr::V4(n.gateway))
        };
        let dns: Vec<IpAddr> = svc.dns.iter().filter_map(|d| d.parse().ok()).collect();
        let mut etc_files = Vec::new();
        if !matches!(mode, network::mode::NetworkMode::Host) {
            let write = |file: &str, content: String| -> Result<PathBuf, EngineError> {
                let p = files_dir.join(file);
                std::fs::write(&p, content).map_err(failed(format!("writing {}", p.display())))?;
                Ok(p)
            };
            etc_files.push((
                write(
                    "hosts",
                    network::container_files::hosts(
                        &hostname,
                        svc.domainname.as_deref(),
                        &own,
                        &extra,
                    ),
                )?,
                "/etc/hosts",
            ));
            etc_files.push((
                write("hostname", network::container_files::hostname(&hostname))?,
                "/etc/hostname",
            ));
            etc_files.push((
                write(
                    "resolv.conf",
                    network::container_files::resolv_conf(
                        gateway,
                        &dns,
                        &svc.dns_search,
                        &svc.dns_opt,
                    ),
                )?,
                "/etc/resolv.conf",
            ));
        }

        // Mounts: named and anonymous volumes, binds, tmpfs.
        let mut mounts = Vec::new();
        for m in &svc.volumes {
            let target = PathBuf::from(&m.target);
            match m.kind {
                MountType::Volume => {
                    let declared = m.source.as_ref().map(|src| {
                        self.project
                            .volumes
                            .iter()
                            .find(|(k, _)| k.as_str() == src)
                            .map(|(_, v)| v.clone())
                            .ok_or_else(|| {
                                EngineError::Invalid(format!(
                                    "service {service}: volume {src} is not declared"
                                ))
                            })
                    });
                    let declared = declared.transpose()?;
                    // `driver: local` with driver_opts: a bind of `device` or a tmpfs,
                    // as Docker's local driver mounts them.
                    if let Some(v) = declared.as_ref().filter(|v| !v.driver_opts.is_empty()) {
                        mounts.push(local_driver_mount(service, v, target, m.read_only)?);
                        continue;
                    }
                    let vname = match &declared {
                        Some(v) => v.name.clone(),
                        None => format!("{name}-anon-{}", hex_short(&m.target)),
                    };
                    let v = e
                        .volumes
                        .ensure(&vname, &BTreeMap::new())
                        .map_err(failed(format!("volume {vname}")))?;
                    let nocopy = m.volume.as_ref().map(|o| o.nocopy).unwrap_or(false);
                    if !nocopy {
                        e.volumes
                            .populate_from_layers(&vname, &image.layers, &m.target)
                            .map_err(failed(format!("populating volume {vname}")))?;
                    }
                    mounts.push(berth_runtime::Mount::Bind {
                        source: v.data,
                        target,
                        read_only: m.read_only,
                    });
                }
                MountType::Bind => {
                    let src = PathBuf::from(m.source.clone().unwrap_or_default());
                    if let Some(b) = &m.bind {
                        // SELinux relabelling has no meaning without SELinux here; bind
                        // propagation other than Docker's default (rprivate) is not applied
                        // yet. Both are accepted so compose files keep working.
                        if let Some(z) = &b.selinux {
                            debug!(service, target = %m.target, selinux = %z, "ignoring SELinux relabel option");
                        }
                        if let Some(p) = b
                            .propagation
                            .as_deref()
                            .filter(|p| *p != "rprivate" && *p != "private")
                        {
                            tracing::warn!(service, target = %m.target, propagation = p, "bind propagation is not supported yet; using rprivate");
                        }
                    }
                    if !src.exists() {
                        // The loader sets this: true for the short syntax, the user's
                        // choice (default false) for the long one.
                        let create = m.bind.as_ref().is_some_and(|b| b.create_host_path);
                        if create {
                            std::fs::create_dir_all(&src).map_err(failed(format!(
                                "service {service}: creating bind source {}",
                                src.display()
                            )))?;
                        } else {
                            return Err(EngineError::Invalid(format!(
                                "service {service}: bind source path {} does not exist",
                                src.display()
                            )));
                        }
                    }
                    mounts.push(berth_runtime::Mount::Bind {
                        source: src,
                        target,
                        read_only: m.read_only,
                    });
                }
                MountType::Tmpfs => mounts.push(berth_runtime::Mount::Tmpfs {
                    target,
                    size: m.tmpfs.as_ref().and_then(|t| t.size),
                    mode: m.tmpfs.as_ref().and_then(|t| t.mode),
                }),
                #[allow(unreachable_patterns)]
                _ => {
                    return Err(EngineError::Invalid(format!(
                        "service {service}: mount type of {} is not supported yet",
                        m.target
                    )))
                }
            }
        }

        // The image's `VOLUME`s not covered by a service mount get anonymous volumes,
        // populated from the image like Docker's.
        for path in image.config.config.volumes.iter().flat_map(|v| v.keys()) {
            let covered = svc
                .volumes
                .iter()
                .any(|m| m.target.trim_end_matches('/') == path.trim_end_matches('/'));
            if covered || !path.starts_with('/') {
                continue;
            }
            let vname = format!("{name}-anon-{}", hex_short(path));
            let v = e
                .volumes
                .ensure(&vname, &BTreeMap::new())
                .map_err(failed(format!("volume {vname}")))?;
            e.volumes
                .populate_from_layers(&vname, &image.layers, path)
                .map_err(failed(format!("populating volume {vname}")))?;
            mounts.push(berth_runtime::Mount::Bind {
                source: v.data,
                target: PathBuf::from(path),
                read_only: false,
            });
        }

        // Secrets and configs: files prepared under the container's files dir, bound
        // read-only at their targets with the requested owner and mode.
        for (kind, refs) in [("secret", &svc.secrets), ("config", &svc.configs)] {
            for r in refs {
                let content = self.file_object(kind, &r.source)?;
                let dir = files_dir.join(format!("{kind}s"));
                std::fs::create_dir_all(&dir)
                    .map_err(failed(format!("creating {}", dir.display())))?;
                let path = dir.join(&r.source);
                let _ = std::fs::remove_file(&path);
                std::fs::write(&path, &content)
                    .map_err(failed(format!("writing {kind} {}", r.source)))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(r.mode.unwrap_or(0o444)),
                )
                .map_err(failed(format!("{kind} {}: setting its mode", r.source)))?;
                let id = |v: &Option<String>, what: &str| -> Result<Option<u32>, EngineError> {
                    v.as_deref()
                        .map(|x| {
                            x.parse::<u32>().map_err(|_| {
                                EngineError::Invalid(format!(
                                    "service {service}: {kind} {}: {what} {x:?} must be numeric",
                                    r.source
                                ))
                            })
                        })
                        .transpose()
                };
                std::os::unix::fs::chown(&path, id(&r.uid, "uid")?, id(&r.gid, "gid")?)
                    .map_err(failed(format!("{kind} {}: setting its owner", r.source)))?;
                let target = if r.target.starts_with('/') {
                    PathBuf::from(&r.target)
                } else if kind == "secret" {
                    PathBuf::from("/run/secrets").join(&r.target)
                } else {
                    PathBuf::from("/").join(&r.target)
                };
                mounts.push(berth_runtime::Mount::Bind {
                    source: path,
                    target,
                    read_only: true,
                });
            }
        }

        // volumes_from: the volume and bind mounts of another service's (first) container
        // or of a named container, read-only with `:ro`. Generated files are not shared.
        for vf in &svc.volumes_from {
            let (what, mode) = match vf.rsplit_once(':') {
                Some((w, m)) if m == "ro" || m == "rw" => (w, Some(m)),
                _ => (vf.as_str(), None),
            };
            let source_id = match what.strip_prefix("container:") {
                Some(c) => c.to_string(),
                None => {
                    let r = self.record.lock().await;
                    r.containers
                        .iter()
                        .filter(|c| c.service == what && !c.oneoff)
                        .min_by_key(|c| c.number)
                        .map(|c| c.id.clone())
                        .ok_or_else(|| {
                            EngineError::Invalid(format!(
                                "service {service}: volumes_from {what}: it has no container"
                            ))
                        })?
                }
            };
            let rt = e.runtime.clone();
            let sid = source_id.clone();
            let theirs =
                tokio::task::spawn_blocking(move || rt.get(&sid).map(|c| c.spec().mounts.clone()))
                    .await
                    .map_err(failed(format!("volumes_from {source_id}")))?
                    .map_err(failed(format!(
                        "service {service}: volumes_from {source_id}"
                    )))?;
            let generated = e.root.path().join("projects");
            for m in theirs {
                if let berth_runtime::Mount::Bind {
                    source,
                    target,
                    read_only,
                } = m
                {
                    if source.starts_with(&generated) {
                        continue;
                    }
                    mounts.push(berth_runtime::Mount::Bind {
                        source,
                        target,
                        read_only: match mode {
                            Some("ro") => true,
                            Some(_) => false,
                            None => read_only,
                        },
                    });
                }
            }
        }

        // A fresh writable layer.
        let rw = e.rw_dir(name);
        let _ = std::fs::remove_dir_all(&rw);
        for d in ["upper", "work"] {
            std::fs::create_dir_all(rw.join(d))
                .map_err(failed(format!("creating {}", rw.display())))?;
        }

        let placement = Placement {
            project: project.clone(),
            container: name.to_string(),
            number,
            config_hash: crate::project::hash::service_config_hash(&svc),
            working_dir: self.project.working_dir.clone(),
            config_files: self.project.compose_files.clone(),
            rw_dir: rw,
            oneoff,
            attach,
            // Beside the generated /etc files (removed with the container, kept across
            // restarts); not visible inside the container.
            log_path: Some(files_dir.join("container.log")),
            netns: match &mode {
                network::mode::NetworkMode::Host => None,
                _ => netns.clone(),
            },
            etc_files,
            mounts,
        };
        let mut cspec = spec::container_spec(&svc, &image, &placement)
            .map_err(failed(format!("container {name}")))?;
        if matches!(mode, network::mode::NetworkMode::Host) {
            cspec.network = berth_runtime::Network::Host;
        }

        // Record first (names resolvable before the process starts), then publish ports.
        {
            let mut r = self.record.lock().await;
            r.containers.retain(|c| c.id != name);
            r.containers.push(ContainerRecord {
                id: name.to_string(),
                service: service.to_string(),
                number,
                config_hash: placement.config_hash.clone(),
                netns: if own_pin { netns.clone() } else { None },
                attachments: attachments.clone(),
                restart: if oneoff {
                    "no".into()
                } else {
                    svc.restart.to_string()
                },
                stopped: false,
                health: super::health::resolve(&svc, &image),
                oneoff,
                auto_remove: false,
            });
            self.save(&r).await?;
        }
        if !svc.ports.is_empty() {
            let ip = attachments.first().map(|a| a.ip).ok_or_else(|| {
                EngineError::Invalid(format!("service {service}: ports need a bridge network"))
            })?;
            let mut bindings = Vec::new();
            for p in &svc.ports {
                bindings.push(port_binding(service, name, ip, p)?);
            }
            e.networks
                .publish(&project, &bindings)
                .await
                .map_err(failed(format!("publishing ports of {name}")))?;
        }
        super::events::emit_for(
            &e.root,
            &project,
            name,
            service,
            svc.image.as_deref().unwrap_or(""),
            "create",
            &[],
        );
        // The runtime keeps the created container (`ps` shows it, `start` starts it,
        // `down`/`rm` remove it), as `docker create` does.
        let rt = e.runtime.clone();
        tokio::task::spawn_blocking(move || rt.create(&cspec))
            .await
            .map_err(failed(format!("creating container {name}")))?
            .map_err(failed(format!("creating container {name}")))?;
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), EngineError> {
        {
            // Started by `up` again: its restart policy applies again.
            let mut r = self.record.lock().await;
            let mut changed = false;
            for c in r
                .containers
                .iter_mut()
                .filter(|c| c.id == name && c.stopped)
            {
                c.stopped = false;
                changed = true;
            }
            if changed {
                self.save(&r).await?;
            }
        }
        let rt = self.engine.runtime.clone();
        let name2 = name.to_string();
        let (root2, project2) = (self.engine.root.clone(), self.name().to_string());
        tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
            let old = rt
                .get(&name2)
                .map_err(failed(format!("container {name2}")))?;
            let c = start_in_place(&rt, &root2, &project2, &old)?;
            super::events::emit(&root2, &project2, &c, "start", &[]);
            Ok(())
        })
        .await
        .map_err(failed(format!("starting container {name}")))?
    }

    async fn wait(&self, service: &str, condition: Condition) -> Result<(), EngineError> {
        let ids: Vec<String> = self
            .record
            .lock()
            .await
            .containers
            .iter()
            .filter(|c| c.service == service && !c.oneoff)
            .map(|c| c.id.clone())
            .collect();
        for id in ids {
            let rt = self.engine.runtime.clone();
            let c = rt.get(&id).map_err(failed(format!("container {id}")))?;
            match condition {
                Condition::Started => {}
                Condition::Running => {
                    if let Ok(berth_runtime::Status::Exited(x)) = c.status() {
                        return Err(EngineError::Invalid(format!(
                            "container {id} exited ({})",
                            x.code
                        )));
                    }
                }
                Condition::CompletedSuccessfully => {
                    let rec = tokio::task::spawn_blocking(move || c.wait(None))
                        .await
                        .map_err(failed(format!("waiting for {id}")))?
                        .map_err(failed(format!("waiting for {id}")))?;
                    if rec.code != 0 {
                        return Err(EngineError::Invalid(format!(
                            "service {service} didn't complete successfully: exit {}",
                            rec.code
                        )));
                    }
                }
                Condition::Healthy => {
                    let check = self
                        .record
                        .lock()
                        .await
                        .containers
                        .iter()
                        .find(|r| r.id == id)
                        .and_then(|r| r.health.clone());
                    let e = &self.engine;
                    super::health::wait_healthy(&e.root, self.name(), service, check.as_ref(), c)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

impl Run {
    /// The content of secret or config `name`: from its file, an environment variable or
    /// (configs) inline content.
    fn file_object(&self, kind: &str, name: &str) -> Result<Vec<u8>, EngineError> {
        let (file, env, content, external) = if kind == "secret" {
            let s = self
                .project
                .secrets
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v)| v)
                .ok_or_else(|| EngineError::Invalid(format!("secret {name} is not declared")))?;
            (s.file.clone(), s.environment.clone(), None, s.external)
        } else {
            let c = self
                .project
                .configs
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v)| v)
                .ok_or_else(|| EngineError::Invalid(format!("config {name} is not declared")))?;
            (
                c.file.clone(),
                c.environment.clone(),
                c.content.clone(),
                c.external,
            )
        };
        if external {
            return Err(EngineError::Invalid(format!(
                "{kind} {name}: external {kind}s need a swarm; use file, environment or content"
            )));
        }
        if let Some(f) = file {
            return std::fs::read(&f).map_err(failed(format!("{kind} {name}: reading {f}")));
        }
        if let Some(var) = env {
            return self
                .project
                .environment
                .get(&var)
                .cloned()
                .or_else(|| std::env::var(&var).ok())
                .map(String::into_bytes)
                .ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "{kind} {name}: environment variable {var} is not set"
                    ))
                });
        }
        if let Some(c) = content {
            return Ok(c.into_bytes());
        }
        Err(EngineError::Invalid(format!(
            "{kind} {name} has no file, environment or content"
        )))
    }
}

/// A volume with `driver_opts` (local driver): `type: none` + `o: bind` + `device` binds
/// the device path; `type: tmpfs` mounts a tmpfs (`o: size=...`). Others need drivers berth
/// does not have.
fn local_driver_mount(
    service: &str,
    v: &crate::project::model::Volume,
    target: PathBuf,
    read_only: bool,
) -> Result<berth_runtime::Mount, EngineError> {
    let o = v.driver_opts.get("o").map(String::as_str).unwrap_or("");
    let opts: Vec<&str> = o
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .collect();
    match v.driver_opts.get("type").map(String::as_str) {
        Some("tmpfs") => {
            let size = opts
                .iter()
                .find_map(|x| x.strip_prefix("size="))
                .map(|sz| {
                    crate::project::decode::parse_bytes(sz).map_err(|_| {
                        EngineError::Invalid(format!("volume {}: invalid size {sz:?}", v.name))
                    })
                })
                .transpose()?;
            Ok(berth_runtime::Mount::Tmpfs {
                target,
                size,
                mode: None,
            })
        }
        Some("none") | None if opts.contains(&"bind") => {
            let device = v.driver_opts.get("device").ok_or_else(|| {
                EngineError::Invalid(format!(
                    "volume {}: a bind needs driver_opts.device",
                    v.name
                ))
            })?;
            let source = PathBuf::from(device);
            if !source.exists() {
                return Err(EngineError::Invalid(format!(
                    "service {service}: volume {}: device {device} does not exist",
                    v.name
                )));
            }
            Ok(berth_runtime::Mount::Bind {
                source,
                target,
                read_only: read_only || opts.contains(&"ro"),
            })
        }
        other => Err(EngineError::Invalid(format!(
            "volume {}: driver_opts type {:?} is not supported yet (bind and tmpfs are)",
            v.name,
            other.unwrap_or("")
        ))),
    }
}

fn hex_short(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..6])
}

fn parse_range(s: &str) -> Option<PortRange> {
    match s.split_once('-') {
        Some((a, b)) => Some(PortRange {
            start: a.parse().ok()?,
            end: b.parse().ok()?,
        }),
        None => s.parse().ok().map(PortRange::single),
    }
}

fn port_binding(
    service: &str,
    container: &str,
    ip: Ipv4Addr,
    p: &crate::project::model::Port,
) -> Result<PortBinding, EngineError> {
    let bad = |what: &str| EngineError::Invalid(format!("service {service}: invalid port {what}"));
    let host_ip = match p.host_ip.as_deref() {
        None | Some("") | Some("0.0.0.0") => None,
        Some(h) => Some(
            h.parse::<Ipv4Addr>()
                .map_err(|_| bad(&format!("host_ip {h:?}")))?,
        ),
    };
    let host_port = match p.published.as_deref() {
        None | Some("") => None,
        Some(s) => Some(parse_range(s).ok_or_else(|| bad(&format!("published {s:?}")))?),
    };
    let protocol = match p.protocol.as_str() {
        "" | "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => return Err(bad(&format!("protocol {other:?}"))),
    };
    Ok(PortBinding {
        container: container.to_string(),
        host_ip,
        host_port,
        container_ip: ip,
        container_port: PortRange::single(p.target),
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, svc: &str, deps: &[&str]) -> (String, (String, Vec<String>)) {
        (
            id.into(),
            (svc.into(), deps.iter().map(|d| d.to_string()).collect()),
        )
    }

    #[test]
    fn down_removes_dependents_first_in_parallel_waves() {
        let waves = down_waves(BTreeMap::from([
            c("p-db-1", "db", &[]),
            c("p-web-1", "web", &["db", "cache"]),
            c("p-web-2", "web", &["db", "cache"]),
            c("p-cache-1", "cache", &[]),
            c("p-lone-1", "lone", &[]),
            c("p-proxy-1", "proxy", &["web"]),
        ]));
        assert_eq!(
            waves,
            vec![
                vec!["p-lone-1".to_string(), "p-proxy-1".into()],
                vec!["p-web-1".into(), "p-web-2".into()],
                vec!["p-cache-1".into(), "p-db-1".into()],
            ]
        );
        // A cycle (impossible after the loader, but from stale labels) still ends.
        let waves = down_waves(BTreeMap::from([c("a", "a", &["b"]), c("b", "b", &["a"])]));
        assert_eq!(waves, vec![vec!["a".to_string(), "b".into()]]);
    }

    #[test]
    fn depends_on_label_round_trip() {
        assert_eq!(
            spec::depends_on_services("db:service_healthy:false,cache:service_started:true"),
            vec!["db", "cache"]
        );
        assert!(spec::depends_on_services("").is_empty());
    }
}
