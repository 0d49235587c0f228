//! berth's on-disk state: the only module that knows paths and file formats under the
//! state root (`--root`, `BERTH_ROOT`, default `/var/lib/berth`).
//!
//! Takes a root path; gives typed paths for the image store, the runtime's container
//! dirs, network and volume state, and per-project files (supervisor socket, lock, log,
//! DNS records), plus atomic JSON read/write. Neighbours: `image::store`, `network`,
//! `engine` (supervisor, executor) and `berth_runtime` (handed `containers_dir`).

use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Errors reading or writing state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The state root and every path under it.
#[derive(Debug, Clone)]
pub struct Root {
    path: PathBuf,
}

impl Root {
    /// A state root at `path` (created on first write, not here).
    pub fn new(path: impl Into<PathBuf>) -> Root {
        Root { path: path.into() }
    }

    /// The root itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image store (blobs, manifests, tags, unpacked layers).
    pub fn image_dir(&self) -> PathBuf {
        self.path.join("image")
    }

    /// The runtime's container state dirs (one per container).
    pub fn containers_dir(&self) -> PathBuf {
        self.path.join("containers")
    }

    /// Network state: IPAM leases, created links.
    pub fn networks_dir(&self) -> PathBuf {
        self.path.join("networks")
    }

    /// Pinned network namespaces, one file per container.
    pub fn netns_dir(&self) -> PathBuf {
        self.path.join("netns")
    }

    /// Named volumes.
    pub fn volumes_dir(&self) -> PathBuf {
        self.path.join("volumes")
    }

    /// Per-project files.
    pub fn project_dir(&self, project: &str) -> PathBuf {
        self.path.join("projects").join(project)
    }

    /// The lock a container's restart (by policy) and its removal take, so they never
    /// interleave: `<root>/locks/<container>`.
    pub fn container_lock(&self, container: &str) -> PathBuf {
        self.path.join("locks").join(container)
    }

    /// Files the engine generates for one container (hosts, resolv.conf, hostname).
    pub fn container_files_dir(&self, project: &str, container: &str) -> PathBuf {
        self.project_dir(project).join("files").join(container)
    }

    /// The supervisor's control socket.
    pub fn supervisor_socket(&self, project: &str) -> PathBuf {
        self.project_dir(project).join("supervisor.sock")
    }

    /// The supervisor's lock (held by exactly one live supervisor).
    pub fn supervisor_lock(&self, project: &str) -> PathBuf {
        self.project_dir(project).join("supervisor.lock")
    }

    /// The supervisor's own log.
    pub fn supervisor_log(&self, project: &str) -> PathBuf {
        self.project_dir(project).join("supervisor.log")
    }

    /// The project's append-only container events (JSON lines), tailed by `berth events`.
    pub fn events_log(&self, project: &str) -> PathBuf {
        self.project_dir(project).join("events.jsonl")
    }

    /// The project's persisted record of what `up` created (networks, containers, DNS).
    pub fn project_state(&self, project: &str) -> PathBuf {
        self.project_dir(project).join("project.json")
    }

    /// Names of projects with state on disk.
    pub fn projects(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.path.join("projects"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

/// Read a JSON state file; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Corrupt {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write a JSON state file atomically (temp file in the same dir, fsync, rename), so a
/// crash leaves either the old or the new content, never half of one.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    use std::io::Write;
    let io_err = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| StateError::Io {
            action,
            path: p,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(&bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.json");
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), None);
        write_json(&p, &vec![1u32, 2]).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), Some(vec![1, 2]));
        std::fs::write(&p, b"{").unwrap();
        let err = read_json::<Vec<u32>>(&p).unwrap_err().to_string();
        assert!(err.contains("is corrupt"), "{err}");
    }

    #[test]
    fn paths_are_under_root() {
        let r = Root::new("/x");
        assert_eq!(
            r.supervisor_socket("p"),
            PathBuf::from("/x/projects/p/supervisor.sock")
        );
        assert_eq!(r.containers_dir(), PathBuf::from("/x/containers"));
    }
}

/// What `up` created for a project, persisted so that `down`, `ps` and a restarted
/// supervisor work from state alone (even after the CLI or the supervisor was killed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ProjectRecord {
    pub project: String,
    /// Directory the project was loaded from (compose's working_dir label).
    #[serde(default)]
    pub working_dir: PathBuf,
    /// Compose files it was loaded from.
    #[serde(default)]
    pub config_files: Vec<PathBuf>,
    pub networks: Vec<NetworkRecord>,
    pub containers: Vec<ContainerRecord>,
}

/// A network of the project as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NetworkRecord {
    /// Compose key, e.g. `default`.
    pub key: String,
    /// Full name, e.g. `<project>_default`.
    pub name: String,
    pub bridge: String,
    pub subnet: String,
    pub gateway: std::net::Ipv4Addr,
    pub internal: bool,
    /// True when the network existed before (`external: true`): never removed by `down`.
    #[serde(default)]
    pub external: bool,
}

/// A container of the project as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ContainerRecord {
    /// Runtime id (also the container name, `<project>-<service>-<n>` or `container_name`).
    pub id: String,
    pub service: String,
    pub number: u32,
    /// Hash of the resolved service config, for convergence.
    pub config_hash: String,
    /// Pinned network namespace, when the container has its own.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    pub attachments: Vec<AttachmentRecord>,
    /// Compose restart policy (`no`, `always`, `on-failure[:N]`, `unless-stopped`), applied
    /// by the supervisor.
    #[serde(default)]
    pub restart: String,
    /// Stopped on purpose (`berth stop`): no restart policy brings it back.
    #[serde(default)]
    pub stopped: bool,
    /// Its healthcheck (the service's or the image's), run by the supervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::engine::health::Check>,
    /// A `run` one-off, not one of the service's replicas.
    #[serde(default)]
    pub oneoff: bool,
    /// A `run -d --rm` one-off: the supervisor removes it once it has exited.
    #[serde(default)]
    pub auto_remove: bool,
}

/// One network attachment of a container, with the names DNS answers for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AttachmentRecord {
    /// Network full name.
    pub network: String,
    pub ip: std::net::Ipv4Addr,
    pub ifname: String,
    #[serde(default)]
    pub host_veth: String,
    /// Names resolvable on this network: service, container name, aliases.
    pub dns_names: Vec<String>,
    /// Legacy `links:` / `external_links:` aliases only this container resolves here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_aliases: Vec<LinkAliasRecord>,
}

/// A link alias: `alias` answers the addresses of service `service` on the network, or
/// the fixed `ip` (an `external_links` container outside the project).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LinkAliasRecord {
    pub alias: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
}
