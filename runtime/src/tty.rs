//! Pseudo-terminals for `tty: true` containers and `exec -t`.
//!
//! Takes the current mount namespace's `/dev/ptmx` (the container's own devpts instance, so
//! `tty` inside prints `/dev/pts/N` of the container), gives a master/slave pair. The init
//! makes the slave its controlling terminal and stdio and passes the master to the shim over
//! a unix socket (`send_fd`/`recv_fd`, SCM_RIGHTS), as runc's console socket does; the shim
//! reads the master into the log. The exec helper keeps the master itself and relays it to
//! its own stdin/stdout ([`relay`]). Neighbours: `init`, `shim`, `exec`.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Opens a new pty in the current root's `/dev/ptmx`; both ends CLOEXEC.
pub(crate) fn open_pty() -> nix::Result<(OwnedFd, OwnedFd)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: constant path and flags.
    let raw = unsafe { libc::open(c"/dev/ptmx".as_ptr(), flags) };
    if raw < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: fresh fd, owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(raw) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to an int.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(nix::Error::last());
    }
    // TIOCGPTPEER opens the slave through the master's own devpts mount: no path lookup that
    // a container could redirect.
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let raw = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if raw < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: fresh fd, owned by nobody else.
    let slave = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok((master, slave))
}

/// Makes `slave` the controlling terminal of a new session and stdin/stdout/stderr.
pub(crate) fn become_controlling(slave: OwnedFd) -> nix::Result<()> {
    nix::unistd::setsid()?;
    // SAFETY: TIOCSCTTY with an integer argument.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(nix::Error::last());
    }
    for target in 0..3 {
        // SAFETY: dup2 onto the standard fds.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(nix::Error::last());
        }
    }
    Ok(())
}

/// Copies the window size of terminal `from` (when it is one) to `to`.
pub(crate) fn copy_winsize(from: RawFd, to: RawFd) {
    // SAFETY: zeroed plain struct.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a valid winsize pointer.
    unsafe {
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Sends `fd` over the unix socket `sock`.
pub(crate) fn send_fd(sock: &OwnedFd, fd: BorrowedFd<'_>) -> nix::Result<()> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(b"t")];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one fd from the unix socket `sock`; `None` when the peer closed without one.
pub(crate) fn recv_fd(sock: &OwnedFd) -> nix::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel installed this fd for us.
                return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    Ok(None)
}

/// Puts terminal `fd` in raw mode while alive; restores it on drop.
pub(crate) struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// `None` when `fd` is not a terminal.
    pub(crate) fn enter(fd: RawFd) -> Option<Self> {
        // SAFETY: isatty/tcgetattr/tcsetattr with a valid termios pointer.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
            Some(Self { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

fn write_all(fd: RawFd, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: valid buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            if nix::Error::last() == nix::Error::EINTR {
                continue;
            }
            return false;
        }
        data = &data[n as usize..];
    }
    true
}

/// Relays the pty `master` to stdout and (when `input`) stdin to `master`, until the slave
/// side is closed by every process (read on the master gives EIO).
pub(crate) fn relay(master: &OwnedFd, input: bool) {
    let m = master.as_raw_fd();
    let mut stdin_open = input;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut pfds = [
            libc::pollfd {
                fd: m,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: valid array of pollfd.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if nix::Error::last() == nix::Error::EINTR {
                continue;
            }
            return;
        }
        if pfds[0].revents != 0 {
            // SAFETY: valid buffer.
            let n = unsafe { libc::read(m, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                if n < 0 && nix::Error::last() == nix::Error::EINTR {
                    continue;
                }
                return; // EIO: no slave left
            }
            if !write_all(1, &buf[..n as usize]) {
                return;
            }
        }
        if stdin_open && pfds[1].revents != 0 {
            // SAFETY: valid buffer.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                if n < 0 && nix::Error::last() == nix::Error::EINTR {
                    continue;
                }
                stdin_open = false;
            } else if !write_all(m, &buf[..n as usize]) {
                stdin_open = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_pair_and_fd_passing() {
        let Ok((master, slave)) = open_pty() else {
            eprintln!("SKIPPED: no /dev/ptmx");
            return;
        };
        // SAFETY: isatty on an fd we own.
        assert_eq!(unsafe { libc::isatty(slave.as_raw_fd()) }, 1);
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        send_fd(&a, std::os::fd::AsFd::as_fd(&master)).unwrap();
        let got = recv_fd(&b).unwrap().expect("an fd");
        nix::unistd::write(&slave, b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = nix::unistd::read(&got, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi\r\n", "ONLCR on the slave");
        drop(a);
        assert!(recv_fd(&b).unwrap().is_none(), "EOF gives no fd");
    }
}
