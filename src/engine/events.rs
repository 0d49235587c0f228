//! Container events of a project (`berth events`): an append-only JSON-lines file in the
//! project's state dir (`state::Root::events_log`), one object per line with docker
//! compose's `--json` fields. Every writer appends whole lines with one `write(2)` on an
//! `O_APPEND` descriptor, so the CLI verbs (create, start, stop, kill, pause, unpause,
//! restart, destroy) and the supervisor (die, policy restarts) can write concurrently.
//!
//! `die` has no single owner (a container can exit on its own, be stopped by the CLI or be
//! restarted by the supervisor), so it is *claimed*: the first writer that creates a marker
//! file in the container's runtime state dir (`O_EXCL`) writes it. The marker goes away with
//! the state dir when the container is restarted or removed, so every run dies once.
//!
//! Takes the state root, a project and runtime container handles; gives [`emit`],
//! [`claim_die`], [`watch_dies`] (the supervisor's and the `events` command's poller) and
//! [`read_from`] (the tailer). Neighbours: `engine::verbs`, `engine::lifecycle`,
//! `engine::restart`, `state`.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spec::labels;
use crate::state::{self, ProjectRecord, Root};

/// One event, with compose's `events --json` field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerEvent {
    /// RFC 3339 with nanoseconds, UTC.
    pub time: String,
    /// Always `container`.
    #[serde(rename = "type")]
    pub kind: String,
    pub action: String,
    /// The container (berth's ids are the container names).
    pub id: String,
    pub service: String,
    pub attributes: BTreeMap<String, String>,
}

impl ContainerEvent {
    /// compose's text form: `2006-01-02 15:04:05.000000 container start ID (k=v, …)`.
    pub fn text(&self) -> String {
        let t =
            time::OffsetDateTime::parse(&self.time, &time::format_description::well_known::Rfc3339)
                .ok()
                .and_then(|t| {
                    t.format(time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]"
                    ))
                    .ok()
                })
                .unwrap_or_else(|| self.time.clone());
        let attrs: Vec<String> = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{t} container {} {} ({})",
            self.action,
            self.id,
            attrs.join(", ")
        )
    }
}

pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Append one event for container `c` of `project`. Best effort: events never fail the
/// operation they describe (a failure is logged).
pub fn emit(
    root: &Root,
    project: &str,
    c: &berth_runtime::Container,
    action: &str,
    extra: &[(&str, String)],
) {
    let l = &c.spec().labels;
    emit_for(
        root,
        project,
        c.id().as_str(),
        l.get(labels::SERVICE).map(String::as_str).unwrap_or(""),
        l.get(labels::IMAGE).map(String::as_str).unwrap_or(""),
        action,
        extra,
    );
}

/// [`emit`] without a container handle (e.g. after the container is gone).
pub fn emit_for(
    root: &Root,
    project: &str,
    id: &str,
    service: &str,
    image: &str,
    action: &str,
    extra: &[(&str, String)],
) {
    let mut attributes = BTreeMap::new();
    attributes.insert("name".to_string(), id.to_string());
    if !image.is_empty() {
        attributes.insert("image".to_string(), image.to_string());
    }
    for (k, v) in extra {
        attributes.insert((*k).to_string(), v.clone());
    }
    let ev = ContainerEvent {
        time: now(),
        kind: "container".into(),
        action: action.into(),
        id: id.into(),
        service: service.into(),
        attributes,
    };
    if let Err(e) = append(&root.events_log(project), &ev) {
        tracing::warn!(project, container = id, action, error = %e, "cannot write the event");
    }
}

fn append(path: &Path, ev: &ContainerEvent) -> std::io::Result<()> {
    // Only into an existing project dir: an event must not resurrect a project `down`
    // just removed.
    if !path.parent().is_some_and(Path::is_dir) {
        return Ok(());
    }
    let mut line = serde_json::to_vec(ev).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write: concurrent O_APPEND writers never interleave inside a line.
    f.write_all(&line)
}

/// Write the `die` event of `c`'s current run unless someone already did. Does nothing
/// while the container has not exited. Returns true when this call wrote it.
pub fn claim_die(root: &Root, project: &str, c: &berth_runtime::Container) -> bool {
    let code = match c.status() {
        Ok(berth_runtime::Status::Exited(x)) => x.code,
        Ok(berth_runtime::Status::Dead) => 137,
        _ => return false,
    };
    let marker = c.state_dir().join("berth-die-event");
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(_) => {
            emit(root, project, c, "die", &[("exitCode", code.to_string())]);
            true
        }
        Err(_) => false,
    }
}

/// One pass over the project's containers: claim the `die` of every exited one.
pub fn scan_dies(root: &Root, runtime: &berth_runtime::Runtime, project: &str) {
    let Ok(Some(record)) = state::read_json::<ProjectRecord>(&root.project_state(project)) else {
        return;
    };
    for rec in &record.containers {
        if let Ok(c) = runtime.get(&rec.id) {
            claim_die(root, project, &c);
        }
    }
}

/// The supervisor's watcher: notice containers that exit on their own.
pub async fn watch_dies(root: Root, project: String) {
    let runtime = berth_runtime::Runtime::new(root.containers_dir());
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (r, rt, p) = (root.clone(), runtime.clone(), project.clone());
        let _ = tokio::task::spawn_blocking(move || scan_dies(&r, &rt, &p)).await;
    }
}

/// Events appended to the log after byte `offset`: the complete lines and the new offset.
/// A log that shrank (the project was taken down and brought up again) is read from the
/// start.
pub fn read_from(path: &Path, offset: u64) -> (Vec<ContainerEvent>, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), 0);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if len < offset { 0 } else { offset };
    if f.seek(std::io::SeekFrom::Start(start)).is_err() {
        return (Vec::new(), start);
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return (Vec::new(), start);
    }
    // Only complete lines; a line being written is read next time.
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let events = buf[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    (events, start + complete as u64)
}

/// Current size of the log (where a tailer that only wants new events starts).
pub fn end_offset(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.project_dir("p")).unwrap();
        let log = root.events_log("p");
        emit_for(&root, "p", "p-web-1", "web", "busybox", "start", &[]);
        let (evs, off) = read_from(&log, 0);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].action, "start");
        assert_eq!(evs[0].kind, "container");
        assert_eq!(evs[0].attributes["name"], "p-web-1");
        emit_for(
            &root,
            "p",
            "p-web-1",
            "web",
            "busybox",
            "die",
            &[("exitCode", "3".into())],
        );
        let (evs, off2) = read_from(&log, off);
        assert_eq!(evs.len(), 1, "only the new event");
        assert_eq!(evs[0].attributes["exitCode"], "3");
        assert!(off2 > off);
        let json = serde_json::to_value(&evs[0]).unwrap();
        for k in ["time", "type", "action", "id", "service", "attributes"] {
            assert!(json.get(k).is_some(), "field {k}");
        }
        assert!(evs[0].text().contains(" container die p-web-1 (exitCode=3"));
        // A removed project dir is not recreated by a late event.
        std::fs::remove_dir_all(root.project_dir("p")).unwrap();
        emit_for(&root, "p", "p-web-1", "web", "", "destroy", &[]);
        assert!(!root.project_dir("p").exists());
    }
}
