//! Restart policies, applied by the project supervisor: `no`, `always`, `on-failure[:N]`,
//! `unless-stopped`, with Docker's backoff (100 ms doubling, capped at one minute, reset
//! once a container has run for ten seconds).
//!
//! Takes the project record (policies, "stopped on purpose" marks) and the runtime's
//! container states; restarts exited containers with the same spec and writable layer.
//! The decision is a pure function ([`decide`]); the monitor loop only observes and acts.
//! Neighbours: `engine::supervisor` (runs the loop), `state::ProjectRecord`,
//! `berth_runtime`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::state::{self, ProjectRecord, Root};

/// A parsed restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    No,
    Always,
    UnlessStopped,
    OnFailure(Option<u32>),
}

impl Policy {
    /// Parse compose's spelling; unknown values mean `no` (the loader already refused them).
    pub fn parse(s: &str) -> Policy {
        match s {
            "always" => Policy::Always,
            "unless-stopped" => Policy::UnlessStopped,
            "on-failure" => Policy::OnFailure(None),
            other => match other.strip_prefix("on-failure:") {
                Some(n) => Policy::OnFailure(n.parse().ok()),
                None => Policy::No,
            },
        }
    }
}

/// Restart an exited container? `restarts` is how often the supervisor already did.
pub fn decide(policy: Policy, stopped_on_purpose: bool, exit_code: i32, restarts: u32) -> bool {
    if stopped_on_purpose {
        return false;
    }
    match policy {
        Policy::No => false,
        Policy::Always | Policy::UnlessStopped => true,
        Policy::OnFailure(max) => exit_code != 0 && max.is_none_or(|m| restarts < m),
    }
}

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(60);
const RESET_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Track {
    restarts: u32,
    delay: Duration,
    last_start: Instant,
    /// When the exit was first seen: the restart waits `delay` from here.
    exited_at: Option<Instant>,
}

/// Watch the project's containers until the process ends.
pub async fn monitor(root: Root, project: String) {
    // The default helper: the small `berth-shim` beside this binary (else this binary).
    let runtime = berth_runtime::Runtime::new(root.containers_dir());
    let mut tracks: HashMap<String, Track> = HashMap::new();
    // For `run -d --rm` one-offs: the engine, opened on first use, and when a failed
    // removal is tried again (the delay doubles from 1 s to a minute).
    let mut engine: Option<super::Engine> = None;
    let mut retry: HashMap<String, (Duration, Instant)> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(Some(record)) = state::read_json::<ProjectRecord>(&root.project_state(&project))
        else {
            continue;
        };
        for c in &record.containers {
            if c.auto_remove {
                // Marked stopped: `rm` or `down` is removing it already.
                if !c.stopped && retry.get(&c.id).is_none_or(|(_, at)| Instant::now() >= *at) {
                    match remove_if_exited(&runtime, &mut engine, &root, &project, &c.id).await {
                        Ok(()) => {
                            retry.remove(&c.id);
                        }
                        Err(()) => {
                            let delay = retry
                                .get(&c.id)
                                .map_or(Duration::from_secs(1), |(d, _)| (*d * 2).min(MAX_DELAY));
                            retry.insert(c.id.clone(), (delay, Instant::now() + delay));
                        }
                    }
                }
                continue;
            }
            let policy = Policy::parse(&c.restart);
            if policy == Policy::No || c.stopped {
                continue;
            }
            let rt = runtime.clone();
            let id = c.id.clone();
            let status =
                tokio::task::spawn_blocking(move || rt.get(&id).and_then(|h| h.status())).await;
            let track = tracks.entry(c.id.clone()).or_insert_with(|| Track {
                restarts: 0,
                delay: FIRST_DELAY,
                last_start: Instant::now(),
                exited_at: None,
            });
            let code = match status {
                Ok(Ok(berth_runtime::Status::Exited(x))) => x.code,
                Ok(Ok(berth_runtime::Status::Dead)) => 137,
                Ok(Ok(_)) => {
                    if track.last_start.elapsed() >= RESET_AFTER {
                        track.delay = FIRST_DELAY;
                    }
                    track.exited_at = None;
                    continue;
                }
                _ => continue, // gone (removed) or unreadable: not ours to act on
            };
            if !decide(policy, c.stopped, code, track.restarts) {
                continue;
            }
            let seen = *track.exited_at.get_or_insert_with(Instant::now);
            if seen.elapsed() < track.delay {
                continue;
            }
            let rt = runtime.clone();
            let id = c.id.clone();
            let (root2, project2) = (root.clone(), project.clone());
            let project_state = root.project_state(&project);
            let res = tokio::task::spawn_blocking(move || -> Result<bool, String> {
                // Under the container's lock, and only if it is still not stopped on
                // purpose: `down`/`rm` mark it first and remove it under the same lock.
                let _lock = super::lifecycle::lock_container(&root2, &id);
                let fresh = state::read_json::<ProjectRecord>(&project_state)
                    .ok()
                    .flatten();
                if !fresh.is_some_and(|r| r.containers.iter().any(|x| x.id == id && !x.stopped)) {
                    return Ok(false);
                }
                let old = rt.get(&id).map_err(|e| e.to_string())?;
                // Claims its die event before the state dir goes.
                let new = super::lifecycle::start_in_place(&rt, &root2, &project2, &old)
                    .map_err(|e| super::lifecycle::chain(&e))?;
                super::events::emit(&root2, &project2, &new, "start", &[]);
                super::events::emit(&root2, &project2, &new, "restart", &[]);
                Ok(true)
            })
            .await;
            match res {
                Ok(Ok(false)) => {}
                Ok(Ok(true)) => {
                    track.restarts += 1;
                    track.last_start = Instant::now();
                    track.exited_at = None;
                    info!(container = %c.id, exit_code = code, restarts = track.restarts, "restarted by policy {}", c.restart);
                    track.delay = (track.delay * 2).min(MAX_DELAY);
                }
                Ok(Err(e)) => warn!(container = %c.id, error = %e, "restart failed"),
                Err(e) => warn!(container = %c.id, error = %e, "restart task failed"),
            }
        }
        tracks.retain(|id, _| record.containers.iter().any(|c| &c.id == id));
        debug!(tracked = tracks.len(), "restart monitor pass");
    }
}

/// A `run -d --rm` one-off that has exited is removed (as `rm` would, DNS name included);
/// an entry whose container is already gone (written back by a command that had read the
/// record before) is dropped. `Err` when the removal failed (retried later).
async fn remove_if_exited(
    runtime: &berth_runtime::Runtime,
    engine: &mut Option<super::Engine>,
    root: &Root,
    project: &str,
    id: &str,
) -> Result<(), ()> {
    let (rt, id2) = (runtime.clone(), id.to_string());
    let status = tokio::task::spawn_blocking(move || rt.get(&id2).and_then(|h| h.status())).await;
    let done = matches!(
        status,
        Ok(Ok(
            berth_runtime::Status::Exited(_) | berth_runtime::Status::Dead
        )) | Ok(Err(berth_runtime::RuntimeError::NotFound { .. }))
    );
    if !done {
        return Ok(());
    }
    if engine.is_none() {
        let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        match super::Engine::open(root.path(), exe) {
            Ok(e) => *engine = Some(e),
            Err(e) => {
                warn!(container = id, error = %e, "cannot open the engine to remove a one-off");
                return Err(());
            }
        }
    }
    let Some(e) = engine else { return Err(()) };
    match e.remove_exited_oneoff(project, id).await {
        Ok(()) => {
            info!(container = id, "one-off removed after its exit (run --rm)");
            Ok(())
        }
        Err(err) => {
            warn!(container = id, error = %err, "cannot remove the exited one-off");
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        assert_eq!(Policy::parse("no"), Policy::No);
        assert_eq!(Policy::parse("always"), Policy::Always);
        assert_eq!(Policy::parse("on-failure:2"), Policy::OnFailure(Some(2)));
        assert_eq!(Policy::parse("on-failure"), Policy::OnFailure(None));
        assert_eq!(Policy::parse("unless-stopped"), Policy::UnlessStopped);
    }

    #[test]
    fn decisions() {
        assert!(!decide(Policy::No, false, 1, 0));
        assert!(decide(Policy::Always, false, 0, 99));
        assert!(!decide(Policy::Always, true, 1, 0), "stopped on purpose");
        assert!(decide(Policy::OnFailure(Some(2)), false, 1, 1));
        assert!(
            !decide(Policy::OnFailure(Some(2)), false, 1, 2),
            "max reached"
        );
        assert!(
            !decide(Policy::OnFailure(None), false, 0, 0),
            "success is final"
        );
        assert!(decide(Policy::UnlessStopped, false, 0, 0));
    }
}
