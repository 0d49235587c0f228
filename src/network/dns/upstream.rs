//! Forwarding of names that are not the project's.
//!
//! Takes the raw query bytes from `server`; gives the raw answer of the first upstream
//! that replies. Upstreams come from the host's /etc/resolv.conf (re-read when its mtime
//! changes), from berth's configuration, or there are none (tests, CI: no query ever
//! leaves the box). The supervisor runs in the host netns, so a loopback stub such as
//! 127.0.0.53 works as an upstream even though containers could not reach it themselves.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::debug;

/// Where non-project names go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Answer SERVFAIL for everything that is not a project name.
    None,
    /// Fixed servers (berth's configuration, or a test's stub resolver).
    Servers(Vec<SocketAddr>),
    /// The `nameserver` lines of this resolv.conf, re-read when it changes.
    ResolvConf(PathBuf),
}

/// `nameserver` entries of a resolv.conf text, port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.split('%').next()?.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

const TIMEOUT: Duration = Duration::from_secs(2);

/// Forwards queries for one `Upstream`.
#[derive(Debug)]
pub struct Forwarder {
    upstream: Upstream,
    cached: Mutex<(Option<SystemTime>, Vec<SocketAddr>)>,
}

impl Forwarder {
    pub fn new(upstream: Upstream) -> Self {
        Forwarder {
            upstream,
            cached: Mutex::new((None, Vec::new())),
        }
    }

    fn servers(&self) -> Vec<SocketAddr> {
        match &self.upstream {
            Upstream::None => Vec::new(),
            Upstream::Servers(s) => s.clone(),
            Upstream::ResolvConf(path) => {
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
                if c.0 != mtime || mtime.is_none() {
                    let text = std::fs::read_to_string(path).unwrap_or_default();
                    *c = (mtime, parse_resolv_conf(&text));
                    debug!(path = %path.display(), servers = ?c.1, "loaded upstream resolvers");
                }
                c.1.clone()
            }
        }
    }

    /// The raw answer of the first upstream that replies, or `None` (→ SERVFAIL).
    pub async fn forward(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        for server in self.servers() {
            let res = if tcp {
                tokio::time::timeout(TIMEOUT, forward_tcp(server, query)).await
            } else {
                tokio::time::timeout(TIMEOUT, forward_udp(server, query)).await
            };
            match res {
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(e)) => debug!(%server, error = %e, "upstream failed"),
                Err(_) => debug!(%server, "upstream timed out"),
            }
        }
        None
    }
}

async fn forward_udp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal");
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Same transaction id, or it is not our answer.
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(|_| std::io::Error::other("query too long"))?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(query).await?;
    let n = s.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let t = "# c\nsearch x\nnameserver 10.0.0.1\nnameserver  fe80::1%eth0\nnameserver bogus\noptions ndots:2\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec![
                "10.0.0.1:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
