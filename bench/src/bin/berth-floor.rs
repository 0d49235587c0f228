//! The floor for bench section 1: the least a container start can cost. Unshares the same
//! namespaces berth gives a container (pid, mount, uts, ipc, net), mounts the root (a bind
//! of the dir, like `berth container run --rootfs`, or an overlay with the dir as its only
//! lower layer), mounts /proc, pivot_root, execs `/bin/true` and waits for it. No cgroups,
//! capabilities, seccomp, /dev, masked paths, logs or state: everything berth adds on top.
//!
//! Usage (root): `berth-floor bind|overlay ROOTFS [ARG...]` (default command `/bin/true`);
//! exits with the command's code. Overlay upper/work dirs go in a temp dir beside nothing of
//! the host's and are removed afterwards.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, execv, fork, pivot_root, ForkResult};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 || !matches!(args[1].as_str(), "bind" | "overlay") {
        eprintln!("usage: berth-floor bind|overlay ROOTFS [CMD ARG...]");
        std::process::exit(2);
    }
    let overlay = args[1] == "overlay";
    let rootfs = PathBuf::from(&args[2]);
    let cmd: Vec<String> = if args.len() > 3 {
        args[3..].to_vec()
    } else {
        vec!["/bin/true".into()]
    };
    let tmp = if overlay {
        let t = std::env::temp_dir().join(format!("berth-floor-{}", std::process::id()));
        for d in ["upper", "work", "merged"] {
            std::fs::create_dir_all(t.join(d)).unwrap_or_else(|e| fail("mkdir", e));
        }
        Some(t)
    } else {
        None
    };
    unshare(CloneFlags::CLONE_NEWPID).unwrap_or_else(|e| fail("unshare(pid)", e));
    // SAFETY: single-threaded program.
    let code = match unsafe { fork() }.unwrap_or_else(|e| fail("fork", e)) {
        ForkResult::Child => child(&rootfs, tmp.as_deref(), &cmd),
        ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, c)) => c,
            Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
            _ => 255,
        },
    };
    if let Some(t) = tmp {
        let _ = std::fs::remove_dir_all(t);
    }
    std::process::exit(code);
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("berth-floor: {what}: {e}");
    // Nothing is buffered or registered at exit in this program, so this is fine in the
    // forked child too.
    std::process::exit(127)
}

fn child(rootfs: &Path, tmp: Option<&Path>, cmd: &[String]) -> i32 {
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;
    unshare(flags).unwrap_or_else(|e| fail("unshare", e));
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap_or_else(|e| fail("make / private", e));
    let root = match tmp {
        Some(t) => {
            let merged = t.join("merged");
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                rootfs.display(),
                t.join("upper").display(),
                t.join("work").display()
            );
            mount(
                Some("overlay"),
                &merged,
                Some("overlay"),
                MsFlags::empty(),
                Some(opts.as_str()),
            )
            .unwrap_or_else(|e| fail("mount overlay", e));
            merged
        }
        None => {
            mount(
                Some(rootfs),
                rootfs,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .unwrap_or_else(|e| fail("bind rootfs", e));
            rootfs.to_path_buf()
        }
    };
    chdir(&root).unwrap_or_else(|e| fail("chdir", e));
    mount(
        Some("proc"),
        "proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .unwrap_or_else(|e| fail("mount /proc", e));
    pivot_root(".", ".").unwrap_or_else(|e| fail("pivot_root", e));
    umount2(".", MntFlags::MNT_DETACH).unwrap_or_else(|e| fail("detach old root", e));
    chdir("/").unwrap_or_else(|e| fail("chdir /", e));
    let argv: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_str()).unwrap_or_default())
        .collect();
    let e = execv(&argv[0], &argv).unwrap_err();
    fail("exec", e)
}
