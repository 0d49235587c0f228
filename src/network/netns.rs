//! Network namespaces pinned by a bind mount, and work done inside them.
//!
//! Takes a path under berth's state root; gives a network namespace that outlives any
//! process (`create_netns`), its removal (`remove_netns`), and `run_in_netns`, which runs
//! an rtnetlink job inside a namespace. The runtime joins a pinned namespace by its path
//! (its `ContainerSpec` network mode is "join this path"), so `link` can wire the
//! container's interfaces before the container process exists.
//!
//! Why a short-lived std thread: the network namespace is a per-thread attribute, and
//! `setns(2)`/`unshare(2)` on a tokio worker would silently move every later task on that
//! worker into the container (network-eval P12). The thread enters the namespace, opens a
//! netlink socket there (a socket stays bound to the namespace it was created in), does
//! its job on a current-thread runtime and exits. Nothing forks, so this is safe inside
//! the multithreaded supervisor (rtnetlink's `NetworkNamespace::add` forks: avoided).

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::{Handle, LinkUnspec};
use tracing::debug;

/// Failures around network namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot create netns pin file {path}")]
    PinFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot unshare a new network namespace for {path}")]
    Unshare {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot bind-mount the new network namespace onto {path}")]
    BindMount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot unmount netns pin {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot remove netns pin {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open a netlink socket inside network namespace {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink request inside network namespace {path} failed")]
    Netlink {
        path: PathBuf,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("the helper thread for network namespace {path} died")]
    Thread { path: PathBuf },
}

/// How the helper thread gets into its namespace.
enum Enter {
    /// `unshare(CLONE_NEWNET)` and pin the result at the path.
    Fresh,
    /// `setns` into the namespace pinned (or exposed, e.g. `/proc/<pid>/ns/net`) at the path.
    Join,
}

/// Creates a new network namespace pinned at `path` (an empty file is created, the parent
/// directory too) with `lo` up. Fails if `path` already pins a namespace.
pub async fn create_netns(path: &Path) -> Result<(), NetnsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| NetnsError::PinFile {
            path: path.to_owned(),
            source,
        })?;
    }
    // `create_new` so two containers can never share a pin by accident.
    File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| NetnsError::PinFile {
            path: path.to_owned(),
            source,
        })?;
    let res = on_ns_thread(path, Enter::Fresh, |handle, p| async move {
        lo_up(&handle).await.map_err(|source| NetnsError::Netlink {
            path: p,
            source: Box::new(source),
        })
    })
    .await;
    let res = res.and_then(|r| r);
    if res.is_err() {
        let _ = remove_netns(path);
    }
    debug!(path = %path.display(), "created pinned network namespace");
    res
}

/// Unmounts and unlinks a netns pin. Idempotent: a missing or already unmounted pin is
/// success. The namespace itself dies when its last process and fd are gone, and with it
/// the container ends of its veths (the kernel reaps the pair).
pub fn remove_netns(path: &Path) -> Result<(), NetnsError> {
    // MNT_DETACH: a process still holding the mount busy must not make teardown fail.
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) => debug!(path = %path.display(), "unmounted netns pin"),
        // EINVAL: not a mount point (already unmounted); ENOENT: gone.
        Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
        Err(source) => {
            return Err(NetnsError::Unmount {
                path: path.to_owned(),
                source,
            })
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Runs `job` with an rtnetlink handle bound to the network namespace at `path`, on a
/// dedicated thread (see the module doc for why). `job` gets the handle and the path.
pub async fn run_in_netns<F, Fut, T>(path: &Path, job: F) -> Result<T, NetnsError>
where
    F: FnOnce(Handle, PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    on_ns_thread(path, Enter::Join, job).await
}

async fn on_ns_thread<F, Fut, T>(path: &Path, how: Enter, job: F) -> Result<T, NetnsError>
where
    F: FnOnce(Handle, PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = path.to_owned();
    let spawned = std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || {
            let _ = tx.send(ns_thread_body(p, how, job));
        });
    if spawned.is_err() {
        return Err(NetnsError::Thread {
            path: path.to_owned(),
        });
    }
    rx.await.map_err(|_| NetnsError::Thread {
        path: path.to_owned(),
    })?
}

fn ns_thread_body<F, Fut, T>(path: PathBuf, how: Enter, job: F) -> Result<T, NetnsError>
where
    F: FnOnce(Handle, PathBuf) -> Fut,
    Fut: Future<Output = T>,
{
    match how {
        Enter::Fresh => {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Unshare {
                path: path.clone(),
                source,
            })?;
            // /proc/thread-self, not /proc/self: only this thread is in the new namespace.
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| NetnsError::BindMount {
                path: path.clone(),
                source,
            })?;
        }
        Enter::Join => {
            let f = File::open(&path).map_err(|source| NetnsError::Open {
                path: path.clone(),
                source,
            })?;
            setns(&f, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                path: path.clone(),
                source,
            })?;
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| NetnsError::Socket {
            path: path.clone(),
            source,
        })?;
    rt.block_on(async move {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetnsError::Socket {
                path: path.clone(),
                source,
            })?;
        let conn = tokio::spawn(conn);
        let out = job(handle, path).await;
        conn.abort();
        Ok(out)
    })
}

/// Brings the loopback up. In a fresh namespace `lo` is always ifindex 1.
pub(crate) async fn lo_up(handle: &Handle) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .change(LinkUnspec::new_with_index(1).up().build())
        .execute()
        .await
}
