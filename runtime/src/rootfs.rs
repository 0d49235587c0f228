//! The container's filesystem view, built inside its new mount namespace.
//!
//! Takes the spec's rootfs, mounts and the [`CgroupView`], gives a pivoted root with Docker's
//! default mounts: overlayfs (or a bind of a dir) as `/`, `/proc`, a tmpfs `/dev` with the
//! standard nodes and links, devpts, shm, mqueue, read-only `/sys` and a read-only cgroupfs,
//! the user's binds and tmpfs, then (in [`finish`]) Docker's masked and read-only paths and
//! the read-only root. Runs in the container init (`init`) only.
//!
//! Every target inside the rootfs is opened with `openat2(RESOLVE_IN_ROOT)` and mounted through
//! its `/proc/self/fd/N` link, so a symlink in the image cannot redirect a mount to the host
//! (the CVE-2025-31133 / CVE-2024-21626 class).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tracing::debug;

use crate::cgroups::CgroupView;
use crate::spec::{ContainerSpec, Mount, Rootfs};

/// Docker's masked paths (moby `oci/defaults.go`): files get /dev/null, dirs an empty ro tmpfs.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Device nodes in /dev: (name, major, minor).
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const DEV_LINKS: [(&str, &str); 6] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
];

/// Errors while building the filesystem view; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot mount {what} on {target}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot resolve {path} inside the rootfs")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {path} inside the rootfs")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mount target {path} leaves the container (contains '..')")]
    Escape { path: PathBuf },
    #[error("layer path {path} contains ':' or ',' and cannot be given to overlayfs")]
    BadLayerPath { path: PathBuf },
    #[error("cannot stat mount source {path}")]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pivot_root into {root} failed")]
    Pivot {
        root: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("/dev/null inside the container is not the null device")]
    FakeDevNull,
}

fn do_mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    shown: &Path,
) -> Result<(), RootfsError> {
    debug!(src, target = %shown.display(), fstype, ?flags, data, "mount");
    mount(src, target, fstype, flags, data).map_err(|source| RootfsError::Mount {
        what: fstype.or(src).unwrap_or("bind").to_string(),
        target: shown.to_path_buf(),
        source,
    })
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn cstr(p: &Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// `openat2(root, path, O_PATH, RESOLVE_IN_ROOT)`: `..` and absolute symlinks stay inside.
fn open_in_root(root: &OwnedFd, rel: &Path) -> std::io::Result<OwnedFd> {
    let c = cstr(rel);
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid C string and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens `path` (absolute, inside the container) under `root`, creating missing directories
/// (and the last component as a file when `dir` is false), without ever leaving `root`.
pub(crate) fn ensure_in_root(
    root: &OwnedFd,
    path: &Path,
    dir: bool,
) -> Result<OwnedFd, RootfsError> {
    ensure_in_root_depth(root, path, dir, 0)
}

/// Symlinks followed while creating a path, as the kernel's own limit (`path_resolution(7)`).
const MAX_LINKS: u32 = 40;

fn ensure_in_root_depth(
    root: &OwnedFd,
    path: &Path,
    dir: bool,
    depth: u32,
) -> Result<OwnedFd, RootfsError> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::ParentDir => {
                return Err(RootfsError::Escape {
                    path: path.to_path_buf(),
                })
            }
            _ => {}
        }
    }
    let mut rel = PathBuf::new();
    let mut cur = open_in_root(root, Path::new(".")).map_err(|source| RootfsError::Resolve {
        path: path.to_path_buf(),
        source,
    })?;
    for (i, name) in parts.iter().enumerate() {
        rel.push(name);
        match open_in_root(root, &rel) {
            Ok(fd) => cur = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let last = i + 1 == parts.len();
                let cname = cstr(Path::new(name));
                // SAFETY: `cur` is an O_PATH dir fd, usable as dirfd for *at calls.
                let rc = unsafe {
                    if last && !dir {
                        let fd = libc::openat(
                            cur.as_raw_fd(),
                            cname.as_ptr(),
                            libc::O_CREAT
                                | libc::O_EXCL
                                | libc::O_WRONLY
                                | libc::O_NOFOLLOW
                                | libc::O_CLOEXEC,
                            0o644,
                        );
                        if fd >= 0 {
                            libc::close(fd);
                        }
                        fd.min(0)
                    } else {
                        libc::mkdirat(cur.as_raw_fd(), cname.as_ptr(), 0o755)
                    }
                };
                if rc < 0 {
                    let err = std::io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EEXIST) {
                        return Err(RootfsError::Create {
                            path: rel.clone(),
                            source: err,
                        });
                    }
                    // A dangling symlink: create its target instead, read as a path inside the
                    // root (absolute targets are relative to the root), then go on from there.
                    if let Ok(target) = nix::fcntl::readlinkat(&cur, Path::new(name)) {
                        if depth >= MAX_LINKS {
                            return Err(RootfsError::Create {
                                path: rel.clone(),
                                source: std::io::Error::from_raw_os_error(libc::ELOOP),
                            });
                        }
                        let target = PathBuf::from(target);
                        let mut next = if target.is_absolute() {
                            target
                        } else {
                            rel.parent()
                                .map(Path::to_path_buf)
                                .unwrap_or_default()
                                .join(target)
                        };
                        for rest in &parts[i + 1..] {
                            next.push(rest);
                        }
                        let next = Path::new("/").join(lexical_clean(&next));
                        return ensure_in_root_depth(root, &next, dir, depth + 1);
                    }
                }
                cur = open_in_root(root, &rel).map_err(|source| RootfsError::Resolve {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(RootfsError::Resolve {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(cur)
}

/// Removes `.` and resolves `..` lexically, never above the root (as RESOLVE_IN_ROOT does).
fn lexical_clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// The overlay mount options, lowerdir top first. Returns the options and the dir to chdir
/// into when the absolute form would pass the one-page limit on mount data (`mount(2)`).
fn overlay_options(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<(String, Option<PathBuf>), RootfsError> {
    for p in lower.iter().map(PathBuf::as_path).chain([upper, work]) {
        let s = p.to_string_lossy();
        if s.contains(':') || s.contains(',') {
            return Err(RootfsError::BadLayerPath {
                path: p.to_path_buf(),
            });
        }
    }
    let render = |base: Option<&Path>| -> String {
        let show = |p: &Path| -> String {
            match base {
                Some(b) => p
                    .strip_prefix(b)
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned(),
                None => p.to_string_lossy().into_owned(),
            }
        };
        let lowers: Vec<String> = lower.iter().rev().map(|p| show(p)).collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            show(upper),
            show(work)
        )
    };
    let abs = render(None);
    if abs.len() < 4000 {
        return Ok((abs, None));
    }
    // Common ancestor of every dir; the relative form is resolved from the cwd at mount time.
    let mut base = lower[0].parent().map(Path::to_path_buf).unwrap_or_default();
    for p in lower.iter().map(PathBuf::as_path).chain([upper, work]) {
        while !p.starts_with(&base) {
            base = base
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/"));
        }
    }
    Ok((render(Some(&base)), Some(base)))
}

/// A detached overlayfs (fsopen/fsconfig/fsmount): `options` are string options in order,
/// each with whether it must be accepted (an optional one the kernel refuses is skipped);
/// `attrs` are `MOUNT_ATTR_*` flags. Gives the mount fd, attached nowhere. Shared by the
/// rootfs and the helper seal (`sealed_exe`).
pub(crate) fn overlay_detached(
    options: &[(&std::ffi::CStr, &std::ffi::CStr, bool)],
    attrs: libc::c_uint,
) -> std::io::Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    let last = std::io::Error::last_os_error;
    // SAFETY: raw syscalls with valid C strings; returned fds are wrapped at once.
    unsafe {
        let fs = libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC);
        if fs < 0 {
            return Err(last());
        }
        let fs = OwnedFd::from_raw_fd(fs as RawFd);
        for (key, value, required) in options {
            let rc = libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            );
            if rc < 0 && *required {
                return Err(last());
            }
        }
        let null: *const libc::c_char = std::ptr::null();
        if libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            null,
            null,
            0,
        ) < 0
        {
            return Err(last());
        }
        let m = libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs);
        if m < 0 {
            return Err(last());
        }
        Ok(OwnedFd::from_raw_fd(m as RawFd))
    }
}

/// Mounts overlayfs at `target` through fsopen/fsconfig/fsmount/move_mount, one `lowerdir+`
/// per layer (top first), so the layer count is not bounded by the page-size limit on
/// `mount(2)` data.
fn mount_overlay_fsconfig(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let lowers: Vec<CString> = lower.iter().rev().map(|l| cstr(l)).collect();
    let (upper, work) = (cstr(upper), cstr(work));
    let mut options: Vec<(&std::ffi::CStr, &std::ffi::CStr, bool)> = lowers
        .iter()
        .map(|l| (c"lowerdir+", l.as_c_str(), true))
        .collect();
    options.push((c"upperdir", &upper, true));
    options.push((c"workdir", &work, true));
    let m = overlay_detached(&options, 0)?;
    let t = cstr(target);
    // SAFETY: move_mount with a mount fd we own and a valid C string.
    if unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            m.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    debug!(layers = lower.len(), target = %target.display(), "overlay mounted with fsconfig");
    Ok(())
}

/// Mounts the root filesystem and everything under it, then pivots into it. `mountpoint` is
/// the state dir's `rootfs` dir (used for overlay).
pub(crate) fn prepare(
    spec: &ContainerSpec,
    mountpoint: &Path,
    cgroup: &CgroupView,
) -> Result<(), RootfsError> {
    // Nothing we mount may propagate back to the host (`mount_namespaces(7)`).
    do_mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
        Path::new("/"),
    )?;

    let root_path: PathBuf = match &spec.rootfs {
        Rootfs::Overlay { lower, upper, work } => {
            let (opts, base) = overlay_options(lower, upper, work)?;
            // Too long for one page of mount data: add the layers one by one with the new
            // mount API (`lowerdir+`, Linux ≥ 6.8); older kernels get relative paths below.
            if base.is_some() {
                match mount_overlay_fsconfig(lower, upper, work, mountpoint) {
                    Ok(()) => return finish_prepare(spec, mountpoint.to_path_buf(), cgroup),
                    Err(e) => {
                        debug!(error = %e, "fsconfig lowerdir+ unavailable, using relative paths")
                    }
                }
            }
            if let Some(b) = &base {
                nix::unistd::chdir(b.as_path()).map_err(|source| RootfsError::Mount {
                    what: "overlay (chdir to layer base)".into(),
                    target: b.clone(),
                    source,
                })?;
            }
            do_mount(
                Some("overlay"),
                mountpoint,
                Some("overlay"),
                MsFlags::empty(),
                Some(&opts),
                mountpoint,
            )?;
            let _ = nix::unistd::chdir("/");
            mountpoint.to_path_buf()
        }
        Rootfs::Dir(dir) => {
            do_mount(
                Some(&dir.to_string_lossy()),
                dir,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
                dir,
            )?;
            dir.clone()
        }
    };
    finish_prepare(spec, root_path, cgroup)
}

/// Everything after the root mount: the mounts inside it and pivot_root.
fn finish_prepare(
    spec: &ContainerSpec,
    root_path: PathBuf,
    cgroup: &CgroupView,
) -> Result<(), RootfsError> {
    let root: OwnedFd = nix::fcntl::open(
        root_path.as_path(),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| RootfsError::Resolve {
        path: root_path.clone(),
        source: e.into(),
    })?;

    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let t = ensure_in_root(&root, Path::new("/proc"), true)?;
    do_mount(
        Some("proc"),
        &fd_path(&t),
        Some("proc"),
        nse,
        None,
        Path::new("/proc"),
    )?;

    let t = ensure_in_root(&root, Path::new("/dev"), true)?;
    do_mount(
        Some("tmpfs"),
        &fd_path(&t),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
        Path::new("/dev"),
    )?;
    populate_dev(&root)?;

    let mut sys_flags = nse;
    if !spec.privileged {
        sys_flags |= MsFlags::MS_RDONLY;
    }
    let t = ensure_in_root(&root, Path::new("/sys"), true)?;
    do_mount(
        Some("sysfs"),
        &fd_path(&t),
        Some("sysfs"),
        sys_flags,
        None,
        Path::new("/sys"),
    )?;
    mount_cgroupfs(&root, cgroup, !spec.privileged)?;

    let mut mounts: Vec<&Mount> = spec.mounts.iter().collect();
    // Parents before children, as Docker sorts them.
    mounts.sort_by_key(|m| m.target().components().count());
    for m in mounts {
        user_mount(&root, m)?;
    }

    // pivot_root(".", ".") stacks the old root on the new one; a lazy unmount then drops it
    // without needing a scratch dir (`pivot_root(2)`, NOTES).
    nix::unistd::fchdir(&root).map_err(|source| RootfsError::Pivot {
        root: root_path.clone(),
        source,
    })?;
    nix::unistd::pivot_root(".", ".").map_err(|source| RootfsError::Pivot {
        root: root_path.clone(),
        source,
    })?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|source| RootfsError::Pivot {
        root: root_path.clone(),
        source,
    })?;
    nix::unistd::chdir("/").map_err(|source| RootfsError::Pivot {
        root: root_path.clone(),
        source,
    })?;
    debug!(root = %root_path.display(), "pivoted into rootfs");
    Ok(())
}

fn populate_dev(root: &OwnedFd) -> Result<(), RootfsError> {
    let dev = open_in_root(root, Path::new("dev")).map_err(|source| RootfsError::Resolve {
        path: "/dev".into(),
        source,
    })?;
    let base = fd_path(&dev);
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0) };
    let res = (|| {
        for (name, major, minor) in DEVICES {
            let p = base.join(name);
            nix::sys::stat::mknod(
                p.as_path(),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(major, minor),
            )
            .map_err(|e| RootfsError::Create {
                path: PathBuf::from("/dev").join(name),
                source: e.into(),
            })?;
        }
        for (name, target) in DEV_LINKS {
            std::os::unix::fs::symlink(target, base.join(name)).map_err(|source| {
                RootfsError::Create {
                    path: PathBuf::from("/dev").join(name),
                    source,
                }
            })?;
        }
        for d in ["pts", "shm", "mqueue"] {
            std::fs::create_dir(base.join(d)).map_err(|source| RootfsError::Create {
                path: PathBuf::from("/dev").join(d),
                source,
            })?;
        }
        Ok(())
    })();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    res?;
    do_mount(
        Some("devpts"),
        &base.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        Path::new("/dev/pts"),
    )?;
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    do_mount(
        Some("shm"),
        &base.join("shm"),
        Some("tmpfs"),
        nse,
        Some("mode=1777,size=65536k"),
        Path::new("/dev/shm"),
    )?;
    do_mount(
        Some("mqueue"),
        &base.join("mqueue"),
        Some("mqueue"),
        nse,
        None,
        Path::new("/dev/mqueue"),
    )?;
    Ok(())
}

fn mount_cgroupfs(root: &OwnedFd, view: &CgroupView, read_only: bool) -> Result<(), RootfsError> {
    let shown = Path::new("/sys/fs/cgroup");
    let t =
        open_in_root(root, Path::new("sys/fs/cgroup")).map_err(|source| RootfsError::Resolve {
            path: shown.to_path_buf(),
            source,
        })?;
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let ro = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    match view {
        CgroupView::V2 => {
            do_mount(
                Some("cgroup2"),
                &fd_path(&t),
                Some("cgroup2"),
                nse | ro,
                None,
                shown,
            )?;
        }
        CgroupView::V1 { binds, links } => {
            do_mount(
                Some("tmpfs"),
                &fd_path(&t),
                Some("tmpfs"),
                nse,
                Some("mode=755"),
                shown,
            )?;
            let t = open_in_root(root, Path::new("sys/fs/cgroup")).map_err(|source| {
                RootfsError::Resolve {
                    path: shown.to_path_buf(),
                    source,
                }
            })?;
            let base = fd_path(&t);
            for (name, host_dir) in binds {
                let target = base.join(name);
                std::fs::create_dir(&target).map_err(|source| RootfsError::Create {
                    path: shown.join(name),
                    source,
                })?;
                do_mount(
                    Some(&host_dir.to_string_lossy()),
                    &target,
                    None,
                    MsFlags::MS_BIND,
                    None,
                    &shown.join(name),
                )?;
                if read_only {
                    // A bind mount ignores MS_RDONLY on creation; only a remount makes it
                    // read-only. youki skipped this and left limits writable (runtime-eval 1.6).
                    do_mount(
                        None,
                        &target,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | nse | ro,
                        None,
                        &shown.join(name),
                    )?;
                }
            }
            for (link, target) in links {
                std::os::unix::fs::symlink(target, base.join(link)).map_err(|source| {
                    RootfsError::Create {
                        path: shown.join(link),
                        source,
                    }
                })?;
            }
            if read_only {
                do_mount(
                    None,
                    &base,
                    None,
                    MsFlags::MS_REMOUNT | nse | ro,
                    Some("mode=755"),
                    shown,
                )?;
            }
        }
    }
    Ok(())
}

fn user_mount(root: &OwnedFd, m: &Mount) -> Result<(), RootfsError> {
    match m {
        Mount::Bind {
            source,
            target,
            read_only,
        } => {
            let meta = std::fs::metadata(source).map_err(|e| RootfsError::Source {
                path: source.clone(),
                source: e,
            })?;
            let t = ensure_in_root(root, target, meta.is_dir())?;
            do_mount(
                Some(&source.to_string_lossy()),
                &fd_path(&t),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
                target,
            )?;
            if *read_only {
                // Re-open: the old fd still names the covered dir, not the new mount.
                let t = ensure_in_root(root, target, meta.is_dir())?;
                remount_ro(&fd_path(&t), target)?;
            }
        }
        Mount::Tmpfs { target, size, mode } => {
            let t = ensure_in_root(root, target, true)?;
            let mut data = format!("mode={:o}", mode.unwrap_or(0o1777));
            if let Some(s) = size {
                data.push_str(&format!(",size={s}"));
            }
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            do_mount(
                Some("tmpfs"),
                &fd_path(&t),
                Some("tmpfs"),
                flags,
                Some(&data),
                target,
            )?;
        }
    }
    Ok(())
}

/// Remounts a bind mount read-only, keeping its nosuid/nodev/noexec flags (a bind remount
/// clears every flag not passed again).
fn remount_ro(path: &Path, shown: &Path) -> Result<(), RootfsError> {
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Ok(st) = nix::sys::statvfs::statvfs(path) {
        use nix::sys::statvfs::FsFlags;
        let f = st.flags();
        for (a, b) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if f.contains(a) {
                flags |= b;
            }
        }
    }
    do_mount(None, path, None, flags, None, shown)
}

/// After pivot_root and sysctls: masked paths, read-only paths, read-only root.
pub(crate) fn finish(spec: &ContainerSpec) -> Result<(), RootfsError> {
    if !spec.privileged {
        let null = std::fs::File::open("/dev/null").map_err(|source| RootfsError::Resolve {
            path: "/dev/null".into(),
            source,
        })?;
        // The source of every file mask must really be the null device, or a crafted /dev/null
        // would unmask the path (CVE-2025-31133).
        {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            let md = null.metadata().map_err(|source| RootfsError::Resolve {
                path: "/dev/null".into(),
                source,
            })?;
            if !md.file_type().is_char_device() || md.rdev() != nix::sys::stat::makedev(1, 3) {
                return Err(RootfsError::FakeDevNull);
            }
        }
        let null_path = PathBuf::from(format!("/proc/self/fd/{}", null.as_raw_fd()));
        for p in MASKED_PATHS {
            let path = Path::new(p);
            let Ok(md) = std::fs::symlink_metadata(path) else {
                continue;
            };
            if md.is_dir() {
                do_mount(
                    Some("tmpfs"),
                    path,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                    path,
                )?;
            } else {
                do_mount(
                    Some(&null_path.to_string_lossy()),
                    path,
                    None,
                    MsFlags::MS_BIND,
                    None,
                    path,
                )?;
            }
        }
        for p in READONLY_PATHS {
            let path = Path::new(p);
            if std::fs::symlink_metadata(path).is_err() {
                continue;
            }
            do_mount(
                Some(p),
                path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
                path,
            )?;
            remount_ro(path, path)?;
        }
    }
    if spec.read_only_rootfs {
        remount_ro(Path::new("/"), Path::new("/"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_lowerdir_is_top_first() {
        let lower = vec![PathBuf::from("/l/1"), PathBuf::from("/l/2")];
        let (o, base) = overlay_options(&lower, Path::new("/c/up"), Path::new("/c/work")).unwrap();
        assert_eq!(o, "lowerdir=/l/2:/l/1,upperdir=/c/up,workdir=/c/work");
        assert!(base.is_none());
    }

    #[test]
    fn long_lowerdir_lists_become_relative() {
        let lower: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("/var/lib/berth/image/layers/sha256-{i:064}/fs")))
            .collect();
        let (o, base) = overlay_options(
            &lower,
            Path::new("/var/lib/berth/c/x/up"),
            Path::new("/var/lib/berth/c/x/work"),
        )
        .unwrap();
        assert_eq!(base, Some(PathBuf::from("/var/lib/berth")));
        assert!(o.starts_with("lowerdir=image/layers/sha256-"));
        assert!(o.ends_with(",upperdir=c/x/up,workdir=c/x/work"));
    }

    #[test]
    fn layer_paths_with_separators_are_refused() {
        let lower = vec![PathBuf::from("/l/a:b")];
        assert!(overlay_options(&lower, Path::new("/u"), Path::new("/w")).is_err());
    }
}
