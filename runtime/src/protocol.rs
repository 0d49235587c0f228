//! Messages between the three processes of a start: caller (`Runtime`), shim, container init.
//!
//! Each message is one JSON document written to a pipe and read to EOF. The init reports a
//! failure as an [`ErrorChain`] (every `source()` of the error, outermost first) on a CLOEXEC
//! pipe, so EOF without a message means `execve` succeeded. The shim forwards the outcome to
//! the caller as a [`ShimReport`]. Neighbours: `shim`, `init`, `container`.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

/// An error with its whole cause chain, as strings, outermost first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorChain(pub Vec<String>);

impl ErrorChain {
    pub fn from_error(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = vec![e.to_string()];
        let mut cur = e.source();
        while let Some(s) = cur {
            chain.push(s.to_string());
            cur = s.source();
        }
        Self(chain)
    }

    /// Puts `context` in front of the chain.
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.0.insert(0, context.into());
        self
    }
}

impl std::fmt::Display for ErrorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(": "))
    }
}

/// What the shim tells the caller once the container runs or failed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShimReport {
    /// The init execed the command (or berth's tiny init runs it); `pid` is the host pid.
    Started {
        pid: i32,
    },
    Failed {
        chain: ErrorChain,
    },
}

/// Writes one message and closes the pipe.
pub(crate) fn send<T: Serialize>(fd: OwnedFd, msg: &T) -> std::io::Result<()> {
    let mut f = std::fs::File::from(fd);
    let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    f.write_all(&bytes)
}

/// Reads to EOF; `None` when the writer closed without a message.
pub(crate) fn receive<T: for<'de> Deserialize<'de>>(fd: OwnedFd) -> std::io::Result<Option<T>> {
    let mut f = std::fs::File::from(fd);
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    if buf.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_keeps_every_cause() {
        let e = Outer(std::io::Error::other("inner"));
        let c = ErrorChain::from_error(&e).context("start web");
        assert_eq!(c.to_string(), "start web: outer: inner");
    }

    #[test]
    fn messages_cross_a_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        send(w, &ShimReport::Started { pid: 42 }).unwrap();
        assert_eq!(
            receive::<ShimReport>(r).unwrap(),
            Some(ShimReport::Started { pid: 42 })
        );
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(w);
        assert_eq!(receive::<ShimReport>(r).unwrap(), None);
    }
}
