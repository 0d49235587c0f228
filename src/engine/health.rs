//! Healthchecks: the service's `healthcheck` (or the image's `HEALTHCHECK`) run inside the
//! container through the runtime's exec, with Docker's timing rules.
//!
//! [`resolve`] turns a service and its image into a [`Check`], kept in the container's
//! record. The project supervisor runs the checks ([`monitor`]) for as long as containers
//! run, and writes each container's [`Health`] (`starting`, `healthy`, `unhealthy`, the
//! failing streak and the last results, as Docker's inspect shows them) to
//! `<project>/files/<container>/health.json`, emitting `health_status` events on changes.
//! `up` waits (`service_healthy`, `--wait`) and `ps` only read that file
//! ([`read`], [`wait_healthy`]). Neighbours: `engine::supervisor`, `engine::lifecycle`,
//! `berth_runtime::Container::exec`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::lifecycle::EngineError;
use crate::image::store::Image;
use crate::project::model::Service;
use crate::state::{self, ProjectRecord, Root};

/// Docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u64 = 3;
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);

/// A resolved healthcheck.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u64,
    pub start_period: Duration,
    pub start_interval: Duration,
}

fn nanos(n: Option<i64>) -> Option<Duration> {
    n.filter(|v| *v > 0).map(|v| Duration::from_nanos(v as u64))
}

/// `["CMD", a, b]` → `[a, b]`; `["CMD-SHELL", s]` → `["/bin/sh", "-c", s]`; `NONE` → none.
pub fn test_argv(test: &[String]) -> Option<Vec<String>> {
    match test.first().map(String::as_str) {
        Some("CMD") => Some(test[1..].to_vec()).filter(|v| !v.is_empty()),
        Some("CMD-SHELL") => Some(vec!["/bin/sh".into(), "-c".into(), test[1..].join(" ")]),
        Some("NONE") | None => None,
        // compose's string form, already split by the loader into one element.
        Some(_) => Some(vec!["/bin/sh".into(), "-c".into(), test.join(" ")]),
    }
}

/// The healthcheck that applies: the service's, else the image's; `None` when disabled
/// or absent.
pub fn resolve(service: &Service, image: &Image) -> Option<Check> {
    let img = image.config.config.healthcheck.as_ref();
    if let Some(h) = &service.healthcheck {
        if h.disable {
            return None;
        }
        let test = if h.test.is_empty() {
            img.and_then(|i| i.test.clone()).unwrap_or_default()
        } else {
            h.test.clone()
        };
        return Some(Check {
            argv: test_argv(&test)?,
            interval: h
                .interval
                .map(|d| d.0)
                .or_else(|| img.and_then(|i| nanos(i.interval)))
                .unwrap_or(DEFAULT_INTERVAL),
            timeout: h
                .timeout
                .map(|d| d.0)
                .or_else(|| img.and_then(|i| nanos(i.timeout)))
                .unwrap_or(DEFAULT_TIMEOUT),
            retries: h
                .retries
                .or_else(|| img.and_then(|i| i.retries).map(|r| r as u64))
                .unwrap_or(DEFAULT_RETRIES),
            start_period: h
                .start_period
                .map(|d| d.0)
                .or_else(|| img.and_then(|i| nanos(i.start_period)))
                .unwrap_or_default(),
            start_interval: h
                .start_interval
                .map(|d| d.0)
                .or_else(|| img.and_then(|i| nanos(i.start_interval)))
                .unwrap_or(DEFAULT_START_INTERVAL),
        });
    }
    let i = img?;
    Some(Check {
        argv: test_argv(i.test.as_deref().unwrap_or_default())?,
        interval: nanos(i.interval).unwrap_or(DEFAULT_INTERVAL),
        timeout: nanos(i.timeout).unwrap_or(DEFAULT_TIMEOUT),
        retries: i
            .retries
            .map(|r| r.max(0) as u64)
            .unwrap_or(DEFAULT_RETRIES),
        start_period: nanos(i.start_period).unwrap_or_default(),
        start_interval: nanos(i.start_interval).unwrap_or(DEFAULT_START_INTERVAL),
    })
}

/// The health of one container run, as the supervisor last wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    pub failing_streak: u64,
    /// The container's PID 1 this applies to (a restarted container starts over).
    pub pid: i32,
    /// The last results, newest last (at most [`LOG_LEN`]).
    pub log: Vec<Probe>,
}

/// One probe's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub start: String,
    pub exit_code: i32,
    pub output: String,
}

/// Results kept per container, like Docker.
pub const LOG_LEN: usize = 5;

/// Where the supervisor writes the health of `container`.
pub fn path(root: &Root, project: &str, container: &str) -> std::path::PathBuf {
    root.container_files_dir(project, container)
        .join("health.json")
}

/// The current health of a running container, if it has a check and one was recorded for
/// its current process.
pub fn read(root: &Root, project: &str, c: &berth_runtime::Container) -> Option<Health> {
    let h: Health = state::read_json(&path(root, project, c.id().as_str()))
        .ok()
        .flatten()?;
    (Some(h.pid) == c.pid()).then_some(h)
}

/// Wait until the supervisor reports `container` healthy; an error when it turns
/// unhealthy or exits first. `check` is `None` when it has no healthcheck.
pub async fn wait_healthy(
    root: &Root,
    project: &str,
    service: &str,
    check: Option<&Check>,
    container: berth_runtime::Container,
) -> Result<(), EngineError> {
    let name = container.id().to_string();
    if check.is_none() {
        return Err(EngineError::Invalid(format!(
            "service {service} has no healthcheck, so it can't become healthy"
        )));
    }
    loop {
        match container.status() {
            Ok(berth_runtime::Status::Exited(x)) => {
                return Err(EngineError::Invalid(format!(
                    "container {name} exited ({}) before it became healthy",
                    x.code
                )))
            }
            Ok(berth_runtime::Status::Dead) => {
                return Err(EngineError::Invalid(format!(
                    "container {name} died before it became healthy"
                )))
            }
            _ => {}
        }
        if let Some(h) = read(root, project, &container) {
            match h.status.as_str() {
                "healthy" => return Ok(()),
                "unhealthy" => {
                    let last = h
                        .log
                        .last()
                        .map(|p| format!("exit {}: {}", p.exit_code, p.output.trim()))
                        .unwrap_or_default();
                    return Err(EngineError::Invalid(format!(
                        "container {name} is unhealthy: {} failed checks, last: {last}",
                        h.failing_streak
                    )));
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run every container's healthcheck while it runs, until the process ends (the
/// supervisor's loop): one task per container run, restarted when the container is.
pub async fn monitor(root: Root, project: String) {
    let runtime = berth_runtime::Runtime::new(root.containers_dir());
    // (container, pid) → its probe task.
    let mut tasks: HashMap<String, (i32, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        if let Ok(Some(record)) = state::read_json::<ProjectRecord>(&root.project_state(&project)) {
            let mut live = Vec::new();
            for c in &record.containers {
                let Some(check) = c.health.clone() else {
                    continue;
                };
                let rt = runtime.clone();
                let id = c.id.clone();
                let handle = tokio::task::spawn_blocking(move || {
                    let h = rt.get(&id).ok()?;
                    matches!(h.status(), Ok(berth_runtime::Status::Running)).then_some(h)
                })
                .await
                .ok()
                .flatten();
                let Some(handle) = handle else { continue };
                let Some(pid) = handle.pid() else { continue };
                live.push(c.id.clone());
                if tasks
                    .get(&c.id)
                    .is_some_and(|(p, t)| *p == pid && !t.is_finished())
                {
                    continue;
                }
                if let Some((_, t)) = tasks.remove(&c.id) {
                    t.abort();
                }
                debug!(container = %c.id, pid, "healthcheck starts");
                let task = tokio::spawn(probe_loop(
                    root.clone(),
                    project.clone(),
                    handle,
                    pid,
                    check,
                ));
                tasks.insert(c.id.clone(), (pid, task));
            }
            tasks.retain(|id, (_, t)| {
                let keep = live.contains(id);
                if !keep {
                    t.abort();
                }
                keep
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Docker's rules: probes every `start_interval` during the start period (failures there
/// don't count, a success ends it), then every `interval`; `retries` consecutive failures
/// make the container unhealthy, a success makes it healthy again. The first probe runs
/// soon after the start (at most half a second), not a whole interval later.
async fn probe_loop(
    root: Root,
    project: String,
    container: berth_runtime::Container,
    pid: i32,
    check: Check,
) {
    let id = container.id().to_string();
    let file = path(&root, &project, &id);
    let started = Instant::now();
    let container = std::sync::Arc::new(container);
    let mut h = Health {
        status: "starting".into(),
        pid,
        ..Default::default()
    };
    let _ = state::write_json(&file, &h);
    let mut delay = check
        .start_interval
        .min(check.interval)
        .min(Duration::from_millis(500));
    loop {
        tokio::time::sleep(delay).await;
        let c = container.clone();
        let argv = check.argv.clone();
        let start = super::events::now();
        // The helper kills the probe at the timeout; the async timeout (a little later) is
        // only a backstop, so a hung probe never holds a blocking thread for long.
        let spec = berth_runtime::ExecSpec {
            timeout_ms: Some(check.timeout.as_millis().max(1) as u64),
            ..berth_runtime::ExecSpec::new(argv)
        };
        let probe = tokio::task::spawn_blocking(move || c.exec(&spec));
        let backstop = check.timeout + Duration::from_secs(2);
        let t0 = Instant::now();
        let (exit_code, output) = match tokio::time::timeout(backstop, probe).await {
            Ok(Ok(Ok(out))) if out.code == 137 && t0.elapsed() >= check.timeout => {
                (-1, format!("timed out after {:?}", check.timeout))
            }
            Ok(Ok(Ok(out))) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                (out.code, text.chars().take(4096).collect())
            }
            Ok(Ok(Err(e))) => (-1, e.to_string()),
            Ok(Err(e)) => (-1, e.to_string()),
            Err(_) => (-1, format!("timed out after {:?}", check.timeout)),
        };
        let in_start = started.elapsed() < check.start_period && h.status == "starting";
        let before = h.status.clone();
        if exit_code == 0 {
            h.failing_streak = 0;
            h.status = "healthy".into();
        } else if !in_start {
            h.failing_streak += 1;
            if h.failing_streak >= check.retries.max(1) {
                h.status = "unhealthy".into();
            }
        }
        h.log.push(Probe {
            start,
            exit_code,
            output,
        });
        if h.log.len() > LOG_LEN {
            h.log.remove(0);
        }
        let _ = state::write_json(&file, &h);
        if h.status != before {
            super::events::emit(
                &root,
                &project,
                &container,
                &format!("health_status: {}", h.status),
                &[],
            );
        }
        delay = if h.status == "starting" && started.elapsed() < check.start_period {
            check.start_interval
        } else {
            check.interval
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn test_forms() {
        assert_eq!(test_argv(&v(&["CMD", "true"])), Some(v(&["true"])));
        assert_eq!(
            test_argv(&v(&["CMD-SHELL", "test -f /x"])),
            Some(v(&["/bin/sh", "-c", "test -f /x"]))
        );
        assert_eq!(test_argv(&v(&["NONE"])), None);
        assert_eq!(test_argv(&[]), None);
    }
}
