//! A sealed in-memory copy of the helper binary, to exec the shim and exec helpers from.
//!
//! Takes the helper path (normally berth itself), gives an fd of a `memfd` holding a copy
//! with write/grow/shrink seals, made once per path per process. Processes started from
//! `/proc/self/fd/N` have that memfd as `/proc/PID/exe`, so a container that reaches one of
//! them cannot overwrite the host binary through it (CVE-2019-5736, runc's fix).
//! Used by `container` when spawning helpers.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::debug;

fn cache() -> &'static Mutex<HashMap<PathBuf, Arc<OwnedFd>>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<OwnedFd>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The sealed copy of `path` (CLOEXEC; exec it through `/proc/self/fd/N`).
pub(crate) fn sealed_copy(path: &Path) -> std::io::Result<Arc<OwnedFd>> {
    let mut guard = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(fd) = guard.get(path) {
        return Ok(fd.clone());
    }
    let started = std::time::Instant::now();
    let name = c"berth-helper";
    // SAFETY: valid C string and flags.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut dst = std::fs::File::from(fd.try_clone()?);
    let mut src = std::fs::File::open(path)?;
    std::io::copy(&mut src, &mut dst)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    debug!(path = %path.display(), elapsed_ms = started.elapsed().as_millis() as u64, "sealed helper copy made");
    let fd = Arc::new(fd);
    guard.insert(path.to_path_buf(), fd.clone());
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_is_sealed_against_writes() {
        let fd = sealed_copy(Path::new("/bin/true")).unwrap();
        let again = sealed_copy(Path::new("/bin/true")).unwrap();
        assert_eq!(fd.as_raw_fd(), again.as_raw_fd(), "cached");
        let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
        // F_SEAL_WRITE: opening may succeed, writing must not.
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&p) {
            assert!(f.write_all(b"x").is_err());
        }
        // SAFETY: fcntl on an fd we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & libc::F_SEAL_WRITE, libc::F_SEAL_WRITE);
        let out = std::process::Command::new(&p).status().unwrap();
        assert!(out.success());
    }
}
