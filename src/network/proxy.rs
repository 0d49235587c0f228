//! Userland port proxy: the fallback for published ports where nftables is unavailable.
//!
//! Takes a published port (`store::PortRecord`); gives a tokio task in the supervisor that
//! listens on the host port and relays to the container address (TCP: one relay per
//! connection; UDP: one upstream socket per client address, dropped when idle). Kernel
//! DNAT (`firewall`) is the default: the proxy costs ~2× latency and ~6× throughput
//! (network-eval §2) and dies with the supervisor. Dropping a `Proxy` stops it and every
//! relay it started.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use super::Protocol;

/// UDP "connections" without traffic for this long are forgotten.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// A running proxy for one host port.
#[derive(Debug)]
pub struct Proxy {
    listen: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Binds `listen` and relays to `target`. Fails (EADDRINUSE…) before anything runs.
    pub async fn spawn(
        listen: SocketAddrV4,
        target: SocketAddrV4,
        proto: Protocol,
    ) -> std::io::Result<Proxy> {
        let (listen, task) = match proto {
            Protocol::Tcp => {
                let l = TcpListener::bind(listen).await?;
                (l.local_addr()?, tokio::spawn(tcp_loop(l, target)))
            }
            Protocol::Udp => {
                let s = UdpSocket::bind(listen).await?;
                (s.local_addr()?, tokio::spawn(udp_loop(Arc::new(s), target)))
            }
        };
        debug!(%listen, %target, %proto, "userland proxy started");
        Ok(Proxy {
            listen,
            task: Some(task),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Stops the proxy and waits until its task is gone, so the host port is free when
    /// this returns (a plain drop only asks the runtime to cancel the task).
    pub async fn stop(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
            debug!(listen = %self.listen, "userland proxy stopped");
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the loop drops its JoinSet, which aborts every relay.
        if let Some(t) = self.task.take() {
            t.abort();
            debug!(listen = %self.listen, "userland proxy stopped");
        }
    }
}

async fn tcp_loop(l: TcpListener, target: SocketAddrV4) {
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            acc = l.accept() => {
                let Ok((mut inbound, _)) = acc else { continue };
                relays.spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut up).await;
                    }
                });
            }
            // Reap finished relays so the set does not grow without bound.
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

async fn udp_loop(s: Arc<UdpSocket>, target: SocketAddrV4) {
    let mut relays = JoinSet::new();
    let mut peers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let (gone_tx, mut gone_rx) = tokio::sync::mpsc::unbounded_channel::<SocketAddr>();
    let mut buf = vec![0u8; 65535];
    loop {
        tokio::select! {
            r = s.recv_from(&mut buf) => {
                let Ok((n, client)) = r else { continue };
                let up = match peers.get(&client) {
                    Some(u) => u.clone(),
                    None => {
                        let Ok(u) = UdpSocket::bind("0.0.0.0:0").await else { continue };
                        if u.connect(target).await.is_err() {
                            continue;
                        }
                        let u = Arc::new(u);
                        peers.insert(client, u.clone());
                        relays.spawn(udp_back(u.clone(), s.clone(), client, gone_tx.clone()));
                        u
                    }
                };
                let _ = up.send(&buf[..n]).await;
            }
            Some(client) = gone_rx.recv() => {
                peers.remove(&client);
            }
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

/// Replies from the container back to one client, until idle.
async fn udp_back(
    up: Arc<UdpSocket>,
    down: Arc<UdpSocket>,
    client: SocketAddr,
    gone: tokio::sync::mpsc::UnboundedSender<SocketAddr>,
) {
    let mut buf = vec![0u8; 65535];
    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, up.recv(&mut buf)).await {
        let _ = down.send_to(&buf[..n], client).await;
    }
    let _ = gone.send(client);
}
