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

/// Copies the window size of terminal `from` (when it is one) to `to`. Setting a new size
/// on a master sends SIGWINCH to the foreground process group of its slave.
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

/// Sets the size `[rows, cols]` of terminal `fd`.
pub(crate) fn set_winsize(fd: RawFd, [rows, cols]: [u16; 2]) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize pointer.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// The first of stdin, stdout, stderr that is a terminal (the user's, for window sizes).
pub(crate) fn terminal_fd() -> Option<RawFd> {
    // SAFETY: isatty on the standard fds.
    (0..3).find(|fd| unsafe { libc::isatty(*fd) } == 1)
}

/// The size `[rows, cols]` of this process's terminal (see [`terminal_fd`]), for a tty
/// container's `console_size`; `None` without a terminal or when it reports 0x0.
pub fn terminal_size() -> Option<[u16; 2]> {
    let fd = terminal_fd()?;
    // SAFETY: zeroed plain struct; TIOCGWINSZ with a valid pointer.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } != 0 || ws.ws_row == 0 {
        return None;
    }
    Some([ws.ws_row, ws.ws_col])
}

/// Sends `fd` over the unix socket `sock`.
pub(crate) fn send_fd(sock: &OwnedFd, fd: BorrowedFd<'_>) -> nix::Result<()> {
    send_tagged(sock.as_raw_fd(), b't', Some(fd))
}

/// Sends the byte `tag` and, when given, `fd` over the unix socket `sock` (never SIGPIPE).
pub(crate) fn send_tagged(sock: RawFd, tag: u8, fd: Option<BorrowedFd<'_>>) -> nix::Result<()> {
    let fds = fd.map(|f| [f.as_raw_fd()]);
    let cmsg: Vec<ControlMessage<'_>> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
    let iov = [IoSlice::new(std::slice::from_ref(&tag))];
    sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one fd from the unix socket `sock`; `None` when the peer closed without one.
pub(crate) fn recv_fd(sock: &OwnedFd) -> nix::Result<Option<OwnedFd>> {
    Ok(recv_tagged(sock.as_raw_fd())?.1)
}

/// Receives a tag byte and at most one fd; `(None, None)` at EOF.
pub(crate) fn recv_tagged(sock: RawFd) -> nix::Result<(Option<u8>, Option<OwnedFd>)> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = loop {
        match recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::Error::EINTR) => continue,
            other => break other?,
        }
    };
    let tag = (msg.bytes == 1).then_some(());
    let mut got = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for &fd in &fds {
                // SAFETY: the kernel installed these fds for us; extra ones are closed.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    Ok((tag.map(|()| byte[0]), got))
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

/// How a [`relay`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayEnd {
    /// The output side closed (EIO on a master once no slave is left, EOF on a socket).
    Closed,
    /// SIGTERM, SIGHUP or SIGINT reached this process: the caller restores the terminal
    /// and re-raises it.
    Signal(i32),
}

/// Relays `output` (a pty master, or an attach socket carrying its output) to stdout and,
/// when `input`, stdin to `master`, until `output` closes. With `term` (the user's terminal),
/// its window size is copied to `master` at once and on every SIGWINCH, which makes the
/// kernel signal the container's foreground process group.
pub(crate) fn relay(master: RawFd, output: RawFd, input: bool, term: Option<RawFd>) -> RelayEnd {
    let signals = Signals::install(&[libc::SIGWINCH, libc::SIGTERM, libc::SIGHUP, libc::SIGINT]);
    if let Some(t) = term {
        copy_winsize(t, master);
    }
    let sig_fd = signals.as_ref().map_or(-1, |s| s.fd());
    let mut stdin_open = input;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut pfds = [
            libc::pollfd {
                fd: output,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sig_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: valid array of pollfd.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 3, -1) };
        if n < 0 {
            if nix::Error::last() == nix::Error::EINTR {
                continue;
            }
            return RelayEnd::Closed;
        }
        if pfds[2].revents != 0 {
            if let Some(s) = &signals {
                for sig in s.drain() {
                    if sig == libc::SIGWINCH {
                        if let Some(t) = term {
                            copy_winsize(t, master);
                        }
                    } else {
                        return RelayEnd::Signal(sig);
                    }
                }
            }
        }
        if pfds[0].revents != 0 {
            // SAFETY: valid buffer.
            let n = unsafe { libc::read(output, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                if n < 0 && nix::Error::last() == nix::Error::EINTR {
                    continue;
                }
                return RelayEnd::Closed; // EIO: no slave left; EOF: the shim is done
            }
            if !write_all(1, &buf[..n as usize]) {
                return RelayEnd::Closed;
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
            } else if !write_all(master, &buf[..n as usize]) {
                stdin_open = false;
            }
        }
    }
}

/// The write end of the [`Signals`] pipe, for the handler; -1 when none is installed.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) and errno access are async-signal-safe; errno is preserved.
        unsafe {
            let errno = *libc::__errno_location();
            let b = sig as u8;
            libc::write(fd, std::ptr::addr_of!(b).cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// A self-pipe: while alive, the given signals are caught and show up as bytes on
/// [`Signals::fd`]; the previous dispositions come back on drop. One at a time per process.
pub(crate) struct Signals {
    r: OwnedFd,
    _w: OwnedFd,
    saved: Vec<(libc::c_int, libc::sigaction)>,
}

impl Signals {
    pub(crate) fn install(sigs: &[libc::c_int]) -> Option<Self> {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .ok()?;
        if SIGNAL_PIPE
            .compare_exchange(
                -1,
                w.as_raw_fd(),
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            )
            .is_err()
        {
            return None;
        }
        let mut saved = Vec::new();
        for &sig in sigs {
            // SAFETY: a zeroed sigaction is valid; the handler only writes to a pipe.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                act.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut act.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &act, &mut old) == 0 {
                    saved.push((sig, old));
                }
            }
        }
        Some(Self { r, _w: w, saved })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.r.as_raw_fd()
    }

    /// The signals caught since the last call, in order.
    pub(crate) fn drain(&self) -> Vec<i32> {
        let mut buf = [0u8; 64];
        let mut out = Vec::new();
        loop {
            // SAFETY: valid buffer; the pipe is non-blocking.
            let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            out.extend(buf[..n as usize].iter().map(|b| *b as i32));
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for (sig, old) in &self.saved {
            // SAFETY: restores the disposition saved in `install`.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
        SIGNAL_PIPE.store(-1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Signals caught for a foreground client that passes them on to its container, as
/// `docker run` does without a terminal (its sig-proxy): while alive, the given signals no
/// longer end this process but queue up for [`CaughtSignals::pending`]; the old
/// dispositions come back on drop. `None` if another catcher is active in this process.
pub struct CaughtSignals(Signals);

impl CaughtSignals {
    /// A signal this process ignores stays ignored (as `nohup` or a shell's background job
    /// set it up): it is neither caught nor passed on.
    pub fn install(sigs: &[nix::sys::signal::Signal]) -> Option<Self> {
        let ignored = |sig: libc::c_int| {
            // SAFETY: only reads the current action into a zeroed struct.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction == libc::SIG_IGN
            }
        };
        let raw: Vec<libc::c_int> = sigs
            .iter()
            .map(|s| *s as libc::c_int)
            .filter(|s| !ignored(*s))
            .collect();
        Signals::install(&raw).map(Self)
    }

    /// The signals caught since the last call, in order.
    pub fn pending(&self) -> Vec<nix::sys::signal::Signal> {
        self.0
            .drain()
            .into_iter()
            .filter_map(|s| nix::sys::signal::Signal::try_from(s).ok())
            .collect()
    }
}

/// Ends this process with `sig` as if it had not been caught (after a [`RelayEnd::Signal`],
/// once the terminal is restored).
pub fn reraise(sig: i32) {
    // SAFETY: resets the disposition to the default and raises the signal.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
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
