//! What the network layer created, persisted so teardown is driven by state.
//!
//! Takes berth's state root; gives one JSON record per network under
//! `<root>/networks/<name>.json` (subnet, bridge, leases with their host veth and netns
//! pin), one record per project's published ports under `<root>/networks/ports/`, and an
//! exclusive `flock(2)` on `<root>/networks/.lock` that every read-modify-write holds, so
//! concurrent berth processes never double-assign a subnet, address or host port.
//! Writes go to a temp file and are renamed into place, so a crash never leaves half a
//! record. The `state` module will own these paths once it exists; the format is private
//! to `network`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Failures reading or writing network state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot access network state {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock network state {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("corrupt network state {path}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One address lease: which container holds which address, and what was created for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub container: String,
    /// Interface name inside the container (`eth0`, …).
    pub ifname: String,
    /// Host end of the veth, once created.
    pub host_veth: Option<String>,
    /// The container's netns pin, if berth created it (removed on teardown).
    pub netns: Option<PathBuf>,
    pub mac: String,
}

/// One network as created on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Full name, e.g. `myproj_default`.
    pub name: String,
    pub project: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub mtu: Option<u32>,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 creation time.
    pub created: String,
    pub leases: BTreeMap<Ipv4Addr, Lease>,
    /// Last address handed out, for round-robin allocation.
    pub last_allocated: Option<Ipv4Addr>,
}

/// A published port as recorded (and as rendered into the project's nft table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRecord {
    pub container: String,
    /// `None`: all host addresses.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
    pub protocol: super::Protocol,
}

/// Published ports of one project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectPorts {
    pub ports: Vec<PortRecord>,
}

/// The on-disk store.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Held while reading and writing records; released on drop.
pub struct StoreLock {
    _lock: Flock<File>,
}

impl Store {
    pub fn new(root: &Path) -> Self {
        Store {
            dir: root.join("networks"),
        }
    }

    /// Directory holding the records.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the exclusive lock. It blocks, but every holder keeps it for a few file
    /// operations only (never across netlink or nft calls).
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.dir.join(".lock");
        std::fs::create_dir_all(self.dir.join("ports")).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, source)| StoreError::Lock { path, source })?;
        Ok(StoreLock { _lock: lock })
    }

    fn network_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn ports_path(&self, project: &str) -> PathBuf {
        self.dir.join("ports").join(format!("{project}.json"))
    }

    pub fn load(&self, _l: &StoreLock, name: &str) -> Result<Option<NetworkRecord>, StoreError> {
        read_json(&self.network_path(name))
    }

    pub fn save(&self, _l: &StoreLock, rec: &NetworkRecord) -> Result<(), StoreError> {
        write_json(&self.network_path(&rec.name), rec)
    }

    pub fn remove(&self, _l: &StoreLock, name: &str) -> Result<(), StoreError> {
        remove_file(&self.network_path(name))
    }

    /// Every network record, sorted by name.
    pub fn list(&self, _l: &StoreLock) -> Result<Vec<NetworkRecord>, StoreError> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        for ent in rd {
            let ent = ent.map_err(|source| StoreError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let p = ent.path();
            if p.extension().is_some_and(|e| e == "json") {
                if let Some(rec) = read_json::<NetworkRecord>(&p)? {
                    out.push(rec);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn load_ports(&self, _l: &StoreLock, project: &str) -> Result<ProjectPorts, StoreError> {
        Ok(read_json(&self.ports_path(project))?.unwrap_or_default())
    }

    /// Published ports of every project, for host-port conflict checks.
    pub fn all_ports(&self, _l: &StoreLock) -> Result<Vec<(String, PortRecord)>, StoreError> {
        let dir = self.dir.join("ports");
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        for ent in rd.flatten() {
            let p = ent.path();
            let Some(project) = p.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            if let Some(pp) = read_json::<ProjectPorts>(&p)? {
                out.extend(pp.ports.into_iter().map(|r| (project.clone(), r)));
            }
        }
        Ok(out)
    }

    pub fn save_ports(
        &self,
        _l: &StoreLock,
        project: &str,
        p: &ProjectPorts,
    ) -> Result<(), StoreError> {
        if p.ports.is_empty() {
            return remove_file(&self.ports_path(project));
        }
        write_json(&self.ports_path(project), p)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StoreError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                path: path.to_owned(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(v).map_err(|source| StoreError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    // No fsync: it costs milliseconds per attach, and the records describe kernel objects
    // that do not survive a reboot either. The rename still makes every write atomic
    // for concurrent readers and after a process crash.
    std::fs::rename(&tmp, path).map_err(io)
}

fn remove_file(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}
