//! Attaching a terminal or a stdin stream to a running container (`run -it`, `run -i`).
//!
//! The shim serves a unix socket, `attach.sock` in the container's state dir, when the
//! container has a tty or `open_stdin`. A client connects and gets one tagged message
//! (`tty::send_tagged`, SCM_RIGHTS):
//!
//! - `T` + a pty master: the client writes its input and sets window sizes (TIOCSWINSZ) on
//!   it directly; the shim, still the only reader of the master, logs the output and copies
//!   it to every client's socket. With `spec.attach`, output from before the first client
//!   (up to [`REPLAY_MAX`]) is kept and sent to it first.
//! - `I` + the write end of the container's stdin pipe (no tty, `open_stdin`): handed to
//!   the first client only; the shim closes its copy, so the container reads EOF when the
//!   client closes it. Output is read from the log as usual.
//! - `-`: nothing to attach (the stdin pipe was taken already).
//!
//! The socket closes when the container's output ends. The shim stays the container's parent:
//! a client that dies only drops its connection. Neighbours: `shim` (serves), `tty`.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use crate::container::{Container, RuntimeError};

/// The socket's name in the container's state dir.
pub(crate) const SOCKET: &str = "attach.sock";
/// Output kept for the first client, and the most a slow client may lag behind (older
/// output is dropped for it: the shim never waits for a client).
pub(crate) const REPLAY_MAX: usize = 1 << 20;

/// `/proc/self/fd/N/<name>` for the directory open as `dir`: unix socket paths are limited
/// to 108 bytes, state dirs are not.
fn short_path(dir: &std::fs::File, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

struct Client {
    sock: UnixStream,
    pending: VecDeque<u8>,
    /// Bytes of [`SKIPPED`] still at the front of `pending`.
    marker: usize,
}

/// How far past a cut [`Client::realign`] looks for the start of a line.
const REALIGN_MAX: usize = 4096;

/// Put in place of the output dropped for a client that fell [`REPLAY_MAX`] behind.
const SKIPPED: &[u8] = b"\r\n[berth: output skipped]\r\n";

impl Client {
    fn new(sock: UnixStream, pending: Vec<u8>) -> Self {
        Self {
            sock,
            pending: pending.into(),
            marker: 0,
        }
    }

    /// Queues `data`; beyond [`REPLAY_MAX`] the oldest output is dropped (once marked).
    fn push(&mut self, data: &[u8]) {
        self.pending.extend(data);
        let excess = self.pending.len().saturating_sub(REPLAY_MAX + self.marker);
        if excess == 0 {
            return;
        }
        if self.marker > 0 {
            self.pending.drain(self.marker..self.marker + excess);
        } else {
            self.pending.drain(..excess);
            for b in SKIPPED.iter().rev() {
                self.pending.push_front(*b);
            }
            self.marker = SKIPPED.len();
        }
        self.realign();
    }

    /// After a cut, what follows the marker starts a line (so no UTF-8 character or
    /// escape sequence is split), or, with no newline in the next [`REALIGN_MAX`] bytes, at
    /// a UTF-8 character boundary.
    fn realign(&mut self) {
        let after = self.pending.range(self.marker..);
        let drop = match after.clone().take(REALIGN_MAX).position(|b| *b == b'\n') {
            Some(nl) => nl + 1,
            None => after.take(3).take_while(|b| **b & 0xC0 == 0x80).count(),
        };
        self.pending.drain(self.marker..self.marker + drop);
    }

    /// Sends what it can without blocking; false when the client is gone.
    fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            match nix::sys::socket::send(
                self.sock.as_raw_fd(),
                self.pending.as_slices().0,
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => {
                    self.pending.drain(..n);
                    self.marker = self.marker.saturating_sub(n);
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => break,
                Err(_) => return false,
            }
        }
        true
    }
}

/// The shim's side.
pub(crate) struct Server {
    listener: UnixListener,
    path: PathBuf,
    master: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    replay: Option<Vec<u8>>,
    clients: Vec<Client>,
    /// A client is expected (`spec.attach`) and none has come yet.
    awaited: bool,
    /// The listener is not polled until then (accept failed: it would stay readable).
    paused_until: Option<std::time::Instant>,
    /// An accept failure was logged already.
    accept_failed: bool,
}

/// How long the listener rests after an accept error other than EAGAIN (EMFILE, ENOBUFS...).
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);

impl Server {
    /// Binds `attach.sock` in `state_dir` (replacing a stale one). `expected`: a client
    /// will come (see [`Server::finish`]); with `tty`, output is kept for it until then.
    pub(crate) fn bind(state_dir: &Path, expected: bool, tty: bool) -> std::io::Result<Self> {
        let dir = std::fs::File::open(state_dir)?;
        let short = short_path(&dir, SOCKET);
        match std::fs::remove_file(&short) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // Whoever connects gets the container's terminal or stdin: root only, from the start
        // (the shim is single-threaded, so the umask is ours alone for the bind).
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&short);
        nix::sys::stat::umask(old);
        let listener = bound?;
        std::fs::set_permissions(&short, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: state_dir.join(SOCKET),
            master: None,
            stdin: None,
            replay: (expected && tty).then(Vec::new),
            clients: Vec::new(),
            awaited: expected,
            paused_until: None,
            accept_failed: false,
        })
    }

    /// The pty master (a dup; the shim keeps reading its own).
    pub(crate) fn set_master(&mut self, master: OwnedFd) {
        self.master = Some(master);
    }

    /// The write end of the container's stdin pipe, for the first client.
    pub(crate) fn set_stdin(&mut self, w: OwnedFd) {
        self.stdin = Some(w);
    }

    /// What to poll: the listener, then each client (in [`Server::handle`]'s order).
    pub(crate) fn pollfds(&self) -> Vec<libc::pollfd> {
        let paused = self
            .paused_until
            .is_some_and(|t| t > std::time::Instant::now());
        let mut v = vec![libc::pollfd {
            fd: if paused {
                -1
            } else {
                self.listener.as_raw_fd()
            },
            events: libc::POLLIN,
            revents: 0,
        }];
        v.extend(self.clients.iter().map(|c| libc::pollfd {
            fd: c.sock.as_raw_fd(),
            events: libc::POLLIN
                | if c.pending.is_empty() {
                    0
                } else {
                    libc::POLLOUT
                },
            revents: 0,
        }));
        v
    }

    /// The poll timeout (ms) the listener needs: until its back-off ends, else -1 (none).
    pub(crate) fn poll_timeout(&self) -> i32 {
        let now = std::time::Instant::now();
        match self.paused_until {
            Some(t) if t > now => (t - now).as_millis().clamp(1, i32::MAX as u128) as i32,
            _ => -1,
        }
    }

    /// Acts on the poll results for the fds of [`Server::pollfds`].
    pub(crate) fn handle(&mut self, pfds: &[libc::pollfd]) {
        let mut gone = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            let Some(p) = pfds.get(i + 1) else { break };
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                // Clients send nothing: readable means closed.
                let mut b = [0u8; 64];
                match (&c.sock).read(&mut b) {
                    Ok(0) => gone.push(i),
                    Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => gone.push(i),
                    _ => {}
                }
            } else if p.revents & libc::POLLOUT != 0 && !c.flush() {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            debug!("attach client left");
            self.clients.remove(i);
        }
        if pfds.first().is_some_and(|p| p.revents != 0) {
            self.accept();
        }
    }

    fn accept(&mut self) {
        if self
            .paused_until
            .is_some_and(|t| t > std::time::Instant::now())
        {
            return;
        }
        self.paused_until = None;
        loop {
            let sock = match self.listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !self.accept_failed {
                        warn!(error = %e, "attach socket: accept failed; backing off");
                        self.accept_failed = true;
                    }
                    self.paused_until = Some(std::time::Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            };
            if !peer_allowed(&sock) {
                warn!("attach socket: a connection from another user refused");
                continue;
            }
            self.awaited = false;
            let stdin = self.stdin.take();
            let (tag, fd) = match (&self.master, &stdin) {
                (Some(m), _) => (b'T', Some(m.as_fd())),
                (None, Some(w)) => (b'I', Some(w.as_fd())),
                (None, None) => (b'-', None),
            };
            if let Err(e) = crate::tty::send_tagged(sock.as_raw_fd(), tag, fd) {
                warn!(error = %e, "cannot greet an attach client");
                continue;
            }
            drop(stdin); // the client's copy is now the only one
            if self.master.is_none() {
                continue; // nothing more to send: output comes from the log
            }
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            let mut c = Client::new(sock, self.replay.take().unwrap_or_default());
            if c.flush() {
                debug!("attach client joined");
                self.clients.push(c);
            }
        }
    }

    /// Output read from the pty master.
    pub(crate) fn output(&mut self, data: &[u8]) {
        if let Some(r) = &mut self.replay {
            let room = REPLAY_MAX.saturating_sub(r.len());
            r.extend_from_slice(&data[..data.len().min(room)]);
        }
        self.clients.retain_mut(|c| {
            c.push(data);
            c.flush()
        });
    }
}

/// Only root or the shim's own user may attach (on top of the socket's 0600 mode).
fn peer_allowed(sock: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(sock, PeerCredentials) {
        Ok(cred) => cred.uid() == 0 || cred.uid() == nix::unistd::geteuid().as_raw(),
        Err(_) => false,
    }
}

impl Server {
    /// Once the output has ended (and exit.json is written): waits, up to `timeout`, for
    /// the expected client if it has not come yet (a one-off can exit before its `run`
    /// connects) and for every client to receive what is pending, then returns.
    pub(crate) fn finish(&mut self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if !self.awaited && self.clients.iter().all(|c| c.pending.is_empty()) {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let mut pfds = self.pollfds();
            // SAFETY: valid array of pollfd.
            let n = unsafe {
                libc::poll(
                    pfds.as_mut_ptr(),
                    pfds.len() as libc::nfds_t,
                    match self.poll_timeout() {
                        -1 => left.as_millis().min(i32::MAX as u128) as i32,
                        t => t.min(left.as_millis().min(i32::MAX as u128) as i32),
                    },
                )
            };
            if n < 0 && nix::Error::last() != nix::Error::EINTR {
                return;
            }
            self.handle(&pfds);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a client got from the shim.
#[derive(Debug)]
enum Handle {
    Tty(OwnedFd),
    Stdin(OwnedFd),
    Nothing,
}

/// A connection to a container's attach socket ([`Container::attach`]).
#[derive(Debug)]
pub struct Attach {
    sock: UnixStream,
    handle: Handle,
}

/// How an attached terminal session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachEnd {
    /// The container's output ended (it exited, or every process closed the pty).
    Closed,
    /// This process got this signal (SIGTERM, SIGHUP, SIGINT) while relaying; the terminal
    /// is restored. The container keeps running. `tty::reraise` ends the process with it.
    Signal(i32),
}

impl Container {
    /// Connects to the container's attach socket (it has a tty or `open_stdin`).
    pub fn attach(&self) -> Result<Attach, RuntimeError> {
        let path = self.state_dir().join(SOCKET);
        let err = |source: std::io::Error| RuntimeError::State {
            id: self.id().to_string(),
            path: path.clone(),
            source,
        };
        let dir = std::fs::File::open(self.state_dir()).map_err(err)?;
        let sock = UnixStream::connect(short_path(&dir, SOCKET)).map_err(err)?;
        let handle = match crate::tty::recv_tagged(sock.as_raw_fd()) {
            Ok((Some(b'T'), Some(fd))) => Handle::Tty(fd),
            Ok((Some(b'I'), Some(fd))) => Handle::Stdin(fd),
            Ok((Some(b'-'), None)) => Handle::Nothing,
            Ok(_) => {
                return Err(err(std::io::Error::other(
                    "unexpected greeting from the shim",
                )))
            }
            Err(e) => return Err(err(e.into())),
        };
        Ok(Attach { sock, handle })
    }
}

impl Attach {
    /// The container has a tty (relay it with [`Attach::relay_tty`]).
    pub fn is_tty(&self) -> bool {
        matches!(self.handle, Handle::Tty(_))
    }

    /// The write end of the container's stdin (no tty): closing it is the container's EOF.
    /// `None` with a tty, or when another client took it first.
    pub fn into_stdin(self) -> Option<std::fs::File> {
        match self.handle {
            Handle::Stdin(fd) => Some(fd.into()),
            _ => None,
        }
    }

    /// Relays the container's tty to this process's stdout and (with `input`) stdin to it,
    /// with this process's terminal in raw mode when `input` and stdin is one, and its window
    /// size following (now and on every SIGWINCH), until the container's output ends.
    /// The terminal is restored on every return. Without a tty: returns at once.
    pub fn relay_tty(self, input: bool) -> AttachEnd {
        let Handle::Tty(master) = &self.handle else {
            return AttachEnd::Closed;
        };
        let raw = if input {
            crate::tty::RawMode::enter(0)
        } else {
            None
        };
        let end = crate::tty::relay(
            master.as_raw_fd(),
            self.sock.as_raw_fd(),
            input,
            crate::tty::terminal_fd(),
        );
        drop(raw);
        match end {
            crate::tty::RelayEnd::Closed => AttachEnd::Closed,
            crate::tty::RelayEnd::Signal(s) => AttachEnd::Signal(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(dir: &Path) -> UnixStream {
        let d = std::fs::File::open(dir).unwrap();
        UnixStream::connect(short_path(&d, SOCKET)).unwrap()
    }

    fn serve_once(server: &mut Server) {
        let mut pfds = server.pollfds();
        // SAFETY: valid array of pollfd.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
        server.handle(&pfds);
    }

    /// A client that reads nothing while more than [`REPLAY_MAX`] is output stays
    /// connected; the oldest output is dropped for it (marked once), the newest arrives, and
    /// `output` never blocks.
    #[test]
    fn output_after_the_skip_marker_starts_a_line_or_a_character() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Client::new(a, Vec::new());
        // Lines of "é" (two bytes each): a cut lands anywhere in them.
        let line = format!("{}\n", "é".repeat(1000));
        while c.marker == 0 {
            c.push(line.as_bytes());
        }
        for _ in 0..3 {
            c.push(line.as_bytes());
            let after: Vec<u8> = c.pending.range(c.marker..).copied().collect();
            assert!(after.starts_with("é".as_bytes()), "{:?}", &after[..4]);
            assert!(std::str::from_utf8(&after).is_ok());
        }
        // No newline in reach: the cut still lands on a character boundary.
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Client::new(a, Vec::new());
        let blob = "€".repeat(REPLAY_MAX / 3 + 7);
        c.push(blob.as_bytes());
        c.push(b"x");
        c.push("€".repeat(5).as_bytes());
        let after: Vec<u8> = c.pending.range(c.marker..).copied().collect();
        assert!(c.marker > 0);
        assert!(std::str::from_utf8(&after).is_ok(), "split character");
    }

    #[test]
    fn a_slow_client_loses_old_output_not_its_connection() {
        let tmp = tempfile::tempdir().unwrap();
        let mut server = Server::bind(tmp.path(), true, true).unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        server.set_master(r); // stands in for the pty master: only passed on
        let client = connect(tmp.path());
        serve_once(&mut server);
        let (tag, _fd) = crate::tty::recv_tagged(client.as_raw_fd()).unwrap();
        assert_eq!(tag, Some(b'T'));
        assert_eq!(server.clients.len(), 1);
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..64 {
            server.output(&chunk); // 4 MiB, nothing read meanwhile
        }
        server.output(b"THE-END");
        assert_eq!(server.clients.len(), 1, "still connected");
        let pending = server.clients[0].pending.len();
        assert!(pending <= REPLAY_MAX + SKIPPED.len(), "{pending}");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            (&client).read_to_end(&mut got).unwrap();
            got
        });
        server.finish(std::time::Duration::from_secs(10));
        drop(server);
        let got = reader.join().unwrap();
        assert!(got.ends_with(b"aaaTHE-END"), "newest output arrives");
        let text = String::from_utf8_lossy(&got);
        assert_eq!(
            text.matches("[berth: output skipped]").count(),
            1,
            "marked once"
        );
        assert!(got.len() < 3 << 20, "old output dropped: {}", got.len());
    }

    /// A state dir longer than a unix socket path may be; the stdin pipe goes to the first
    /// client only, and EOF reaches the reader once that client closes it.
    #[test]
    fn stdin_pipe_goes_to_the_first_client_under_a_long_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d".repeat(120));
        std::fs::create_dir(&dir).unwrap();
        let mut server = Server::bind(&dir, true, false).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        server.set_stdin(w);
        let first = connect(&dir);
        serve_once(&mut server);
        let (tag, fd) = crate::tty::recv_tagged(first.as_raw_fd()).unwrap();
        assert_eq!(tag, Some(b'I'));
        let second = connect(&dir);
        serve_once(&mut server);
        let (tag, fd2) = crate::tty::recv_tagged(second.as_raw_fd()).unwrap();
        assert_eq!((tag, fd2.is_none()), (Some(b'-'), true), "only once");
        let mut w: std::fs::File = fd.expect("the write end").into();
        std::io::Write::write_all(&mut w, b"hi").unwrap();
        drop(w);
        let mut got = String::new();
        std::fs::File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(
            got, "hi",
            "EOF once the client closed it: the server kept no copy"
        );
        assert!(!server.awaited, "the expected client came");
        drop(server);
        assert!(!dir.join(SOCKET).exists(), "socket removed");
    }
}
