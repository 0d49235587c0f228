//! A pseudo-terminal for driving `berth` as a user's terminal would: `berth` runs as a
//! session leader with the pty's slave as its controlling terminal and stdio; the test
//! types into the master, reads the screen from it, resizes it (TIOCSWINSZ on the master:
//! the kernel sends SIGWINCH to berth's foreground process group) and checks the slave's
//! modes (raw while attached, restored after).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct PtySession {
    /// The terminal's modes before berth started.
    pub initial: Modes,
    master: OwnedFd,
    slave: OwnedFd,
    child: Child,
    screen: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// The modes a raw-mode switch changes, comparable.
pub type Modes = (libc::tcflag_t, libc::tcflag_t, libc::tcflag_t);

impl PtySession {
    /// Starts `cmd` on a new pty of `rows` x `cols`.
    pub fn spawn(cmd: Command, rows: u16, cols: u16) -> Self {
        Self::spawn_with_stdout(cmd, rows, cols, None)
    }

    /// [`PtySession::spawn`], with stdout redirected to `stdout` when given (`cmd > file`
    /// typed on a terminal).
    pub fn spawn_with_stdout(
        mut cmd: Command,
        rows: u16,
        cols: u16,
        stdout: Option<Stdio>,
    ) -> Self {
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
        let (master, slave) = (pty.master, pty.slave);
        let initial = modes_of(&slave);
        let fd = |f: &OwnedFd| Stdio::from(f.try_clone().expect("dup slave"));
        cmd.stdin(fd(&slave))
            .stdout(stdout.unwrap_or_else(|| fd(&slave)))
            .stderr(fd(&slave));
        // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the slave by now.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn under a pty");
        let screen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (screen, stop) = (screen.clone(), stop.clone());
            let m = master.try_clone().expect("dup master");
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let mut p = libc::pollfd {
                        fd: m.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    if unsafe { libc::poll(&mut p, 1, 50) } <= 0 {
                        continue;
                    }
                    match nix::unistd::read(&m, &mut buf) {
                        Ok(n) if n > 0 => screen.lock().unwrap().extend_from_slice(&buf[..n]),
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Self {
            initial,
            master,
            slave,
            child,
            screen,
            stop,
            reader: Some(reader),
        }
    }

    /// Everything berth wrote so far.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits until the screen contains `needle`; panics with the screen after `timeout`.
    pub fn expect(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.screen().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not on the terminal within {timeout:?}; screen: {:?}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `text`.
    pub fn type_text(&self, text: &str) {
        nix::unistd::write(&self.master, text.as_bytes()).expect("write to the pty");
    }

    /// Resizes the terminal, as a terminal emulator does when its window changes.
    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize.
        assert_eq!(
            unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
            0
        );
    }

    /// The terminal's current input, output and local modes.
    pub fn modes(&self) -> Modes {
        modes_of(&self.slave)
    }

    /// Sends `sig` to berth.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal berth");
    }

    /// Waits for berth to exit (killing it after `timeout`); its exit code (-1 on a signal).
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "berth did not exit within {timeout:?}; screen: {:?}",
                    self.screen()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn modes_of(slave: &OwnedFd) -> Modes {
    let t = nix::sys::termios::tcgetattr(slave).expect("tcgetattr");
    (
        t.input_flags.bits(),
        t.output_flags.bits(),
        t.local_flags.bits(),
    )
}

/// Runs `cmd` with `input` on a pipe as its stdin (closed after), killing it after
/// `timeout`; (exit code, stdout, stderr).
pub fn run_with_input(mut cmd: Command, input: &str, timeout: Duration) -> (i32, String, String) {
    use std::io::{Read, Write};
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_string();
    std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s.code().unwrap_or(-1);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, o.join().unwrap(), e.join().unwrap())
}

impl Drop for PtySession {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
