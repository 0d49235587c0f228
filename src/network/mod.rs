//! Per-project networks: bridges, veths, IPAM, nftables, embedded DNS.
//!
//! Takes network specs from the engine (built from the compose model) and container netns
//! paths; gives kernel objects (bridge, veth pairs, one nft table per project), address
//! leases, published host ports and a DNS server per network. Everything created is
//! recorded under `<root>/networks/` (see `store`), so teardown is driven by state and
//! works after a supervisor crash. Neighbours: `engine` calls it; the runtime joins the
//! pinned netns by path; `cli::network` shows and edits the records.
//!
//! # API the engine calls
//!
//! ```text
//! NetworkManager::new(state_root) -> Result<NetworkManager>        // inside tokio; binds to the caller's netns
//! mgr.netns_path(container_id) -> PathBuf                          // <root>/netns/<container_id>
//! netns::create_netns(&path).await / netns::remove_netns(&path)    // pin before the container starts
//! mgr.ensure_network(&NetworkSpec{..}).await -> NetworkInfo        // idempotent: adopts existing state
//! mgr.network(name) -> Option<NetworkInfo>                         // `external: true` lookups
//! mgr.attach(&info, &netns, container_id, ifindex, ipv4, mac).await -> Attachment
//!                                                                  // ifindex 0 → eth0; first non-internal → default route
//! mgr.detach(network, container_id).await
//! mgr.publish(project, &[PortBinding]).await -> Vec<PublishedPort> // actual host ports (random ones resolved)
//! mgr.unpublish(project, container_id).await / mgr.ports(project)  // `berth port`
//! mgr.with_port_backend(PortBackend::Userland)                     // proxy instead of nft DNAT
//! mgr.remove_network(name).await                                   // refuses while containers are attached
//! mgr.teardown_project(project).await -> Result<(), Vec<NetworkError>>
//! dns::Registry::new(project); registry.add(network, container, ip, names) / remove(..)
//! registry.set_links(network, container, [(alias, LinkTarget)]) / set_subnet(network, net)
//! dns::DnsServer::spawn(SocketAddr(gateway, 53), network, registry, Upstream).await -> DnsServer
//! container_files::{resolv_conf, hosts, hostname}(..) -> String
//! mode::NetworkMode::parse("host" | "none" | "bridge" | "service:x" | "container:x")
//! ```
//!
//! Submodules: `ipam` (pure address plans), `store` (records + lock), `netns` (pins,
//! in-netns work), `link` (rtnetlink), `firewall` (nft table per project, iptables
//! FORWARD DROP workaround, conntrack), `proxy` (userland fallback), `dns` (registry,
//! hickory listener, upstream forwarding), `container_files`, `mode`.
//!
//! Order on `up`: `ensure_network` for each network → `DnsServer::spawn` on each gateway
//! (needs the bridge address) → per container: `create_netns` → `attach` per network
//! (first non-internal one gives the default route) → register DNS names → write
//! resolv.conf/hosts/hostname → `publish` → start the container joined to the netns.
//! On `down` (also after a crash): stop containers, drop the DNS servers, then
//! `teardown_project` (nft table, iptables accepts, conntrack, veths, pins, bridges).

pub mod container_files;
pub mod dns;
pub mod firewall;
pub mod ipam;
pub mod link;
pub mod mode;
pub mod netns;
pub mod proxy;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::{debug, info_span, Instrument};

use self::firewall::{FirewallError, FwNetwork};
use self::ipam::{IpamError, Pool};
use self::link::{HostLinks, LinkError};
use self::netns::NetnsError;
use self::store::{Lease, NetworkRecord, PortRecord, Store, StoreError};

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Failures of the network layer. Every variant names what failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("invalid network name {name:?}: use letters, digits, '_', '-', '.' (max 64)")]
    InvalidName { name: String },
    #[error("invalid bridge name {name:?}: at most 15 bytes of letters, digits, '_', '-', '.'")]
    InvalidBridgeName { name: String },
    #[error("network {name}: IPv6 (enable_ipv6) is not supported yet")]
    Ipv6Unsupported { name: String },
    #[error("network {name} not found")]
    NotFound { name: String },
    #[error("network {name} already exists with subnet {have}, not {want}")]
    SubnetMismatch {
        name: String,
        have: Ipv4Net,
        want: Ipv4Net,
    },
    #[error("network {name} exists with a different {field} setting: remove it first (`berth down` or `berth network rm`)")]
    ConfigMismatch { name: String, field: &'static str },
    #[error("network {name} has active endpoints: {containers}")]
    InUse { name: String, containers: String },
    #[error("container {container} is not attached to network {name}")]
    NotAttached { name: String, container: String },
    #[error("host port {host_ip}:{port}/{protocol} is already in use")]
    PortInUse {
        host_ip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
    },
    #[error("host port {host_ip}:{port}/{protocol} is already published by project {project}")]
    PortPublished {
        host_ip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
        project: String,
    },
    #[error("cannot bind host address {host_ip} for port {port}/{protocol}")]
    HostAddress {
        host_ip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid port binding for container port {container_port}: {reason}")]
    InvalidPorts { container_port: u16, reason: String },
}

/// A network to create or adopt (from the compose model's `networks:`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    pub project: String,
    /// Full name, e.g. `<project>_default`.
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    /// No egress (compose `internal: true`).
    pub internal: bool,
    /// `driver_opts: com.docker.network.bridge.name`.
    pub bridge_name: Option<String>,
    /// `driver_opts: com.docker.network.driver.mtu`.
    pub mtu: Option<u32>,
    pub labels: BTreeMap<String, String>,
    /// Compose `enable_ipv6`; refused for now.
    pub enable_ipv6: bool,
}

/// A network as it exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInfo {
    pub name: String,
    pub project: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    pub mtu: Option<u32>,
}

impl From<&NetworkRecord> for NetworkInfo {
    fn from(r: &NetworkRecord) -> Self {
        NetworkInfo {
            name: r.name.clone(),
            project: r.project.clone(),
            bridge: r.bridge.clone(),
            subnet: r.subnet,
            gateway: r.gateway,
            internal: r.internal,
            mtu: r.mtu,
        }
    }
}

/// One container's attachment to one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub network: String,
    pub container: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    /// Interface inside the container (`eth0`, …).
    pub ifname: String,
    /// Host end of the veth.
    pub host_veth: String,
}

/// An inclusive port range; a single port is `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(p: u16) -> Self {
        PortRange { start: p, end: p }
    }
    fn len(self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }
}

/// A port to publish (compose `ports:` resolved to a container address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortBinding {
    pub container: String,
    /// `None`: all host addresses.
    pub host_ip: Option<Ipv4Addr>,
    /// `None`: a free ephemeral port per container port.
    pub host_port: Option<PortRange>,
    pub container_ip: Ipv4Addr,
    pub container_port: PortRange,
    pub protocol: Protocol,
}

/// A port as published (what `berth port` reports).
pub type PublishedPort = PortRecord;

/// The network layer's entry point; one per process, bound to the network namespace of
/// the thread that called `new` (the host's, or a test's).
pub struct NetworkManager {
    root: PathBuf,
    store: Store,
    links: HostLinks,
    backend: PortBackend,
    /// Userland proxies by (protocol, host port); empty with the nftables backend.
    proxies: std::sync::Mutex<BTreeMap<(Protocol, u16), proxy::Proxy>>,
}

/// How published ports and the firewall are implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortBackend {
    /// Kernel DNAT and isolation in one nft table per project (default).
    Nftables,
    /// No nftables on this host: ports are relayed by `proxy` tasks in this process, and
    /// there is no isolation or egress masquerade.
    Userland,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
}

/// Whether an executable `name` is on `PATH`.
fn in_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p).any(|d| {
                std::fs::metadata(d.join(name))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
        .unwrap_or(false)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn incarnation() -> u128 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    t ^ (u128::from(std::process::id()) << 96)
}

impl NetworkManager {
    /// Opens the host netlink socket. Call inside a tokio runtime.
    /// The port backend is nftables when the `nft` binary runs, else the userland proxy.
    pub fn new(root: &Path) -> Result<Self, NetworkError> {
        // A PATH lookup, not `nft --version`: every CLI command makes a manager, and a
        // spawn costs 5-10 ms.
        let nft = in_path("nft");
        if !nft {
            tracing::warn!("nft not found: published ports use the userland proxy, and projects are not isolated");
        }
        Ok(NetworkManager {
            root: root.to_owned(),
            store: Store::new(root),
            links: HostLinks::connect()?,
            backend: if nft {
                PortBackend::Nftables
            } else {
                PortBackend::Userland
            },
            proxies: Default::default(),
        })
    }

    /// Forces a port backend (rootless mode, users who refuse route_localnet, tests).
    pub fn with_port_backend(mut self, backend: PortBackend) -> Self {
        self.backend = backend;
        self
    }

    pub fn port_backend(&self) -> PortBackend {
        self.backend
    }

    /// Where a container's netns pin lives. Pins under the state root are removed by
    /// teardown.
    pub fn netns_path(&self, container: &str) -> PathBuf {
        self.root.join("netns").join(container)
    }

    /// Host-side netlink access (for tests and `network inspect`).
    pub fn links(&self) -> &HostLinks {
        &self.links
    }

    /// All network records.
    pub fn list(&self) -> Result<Vec<NetworkRecord>, NetworkError> {
        let l = self.store.lock()?;
        Ok(self.store.list(&l)?)
    }

    /// Full record of one network.
    pub fn record(&self, name: &str) -> Result<Option<NetworkRecord>, NetworkError> {
        let l = self.store.lock()?;
        Ok(self.store.load(&l, name)?)
    }

    /// One network, if it exists.
    pub fn network(&self, name: &str) -> Result<Option<NetworkInfo>, NetworkError> {
        Ok(self.record(name)?.as_ref().map(NetworkInfo::from))
    }

    /// Published ports of a project.
    pub fn ports(&self, project: &str) -> Result<Vec<PublishedPort>, NetworkError> {
        let l = self.store.lock()?;
        Ok(self.store.load_ports(&l, project)?.ports)
    }

    /// Creates the network (record, bridge, sysctls, firewall) or adopts the existing one
    /// of that name, re-creating whatever is missing. Validates everything first.
    pub async fn ensure_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo, NetworkError> {
        let span = info_span!("ensure_network", project = %spec.project, network = %spec.name);
        async {
            if !valid_name(&spec.name) {
                return Err(NetworkError::InvalidName {
                    name: spec.name.clone(),
                });
            }
            if !valid_name(&spec.project) {
                return Err(NetworkError::InvalidName {
                    name: spec.project.clone(),
                });
            }
            if spec.enable_ipv6 {
                return Err(NetworkError::Ipv6Unsupported {
                    name: spec.name.clone(),
                });
            }
            if let Some(b) = &spec.bridge_name {
                if b.len() > 15 || !valid_name(b) {
                    return Err(NetworkError::InvalidBridgeName { name: b.clone() });
                }
            }
            // A bridge with our derived name but no record is left from a crash between
            // "record removed" and "bridge deleted": remove it, or its stale address and
            // route would survive next to the new ones. (A user-chosen bridge name may be
            // someone else's bridge: that one is adopted, as Docker does.)
            let derived = link::bridge_name(&spec.name);
            if spec.bridge_name.is_none()
                && self.record(&spec.name)?.is_none()
                && self.links.delete(&derived).await?
            {
                debug!(bridge = %derived, "removed stale bridge without a record");
            }
            let routes = self.links.routed_subnets().await?;
            let rec = {
                let l = self.store.lock()?;
                match self.store.load(&l, &spec.name)? {
                    Some(rec) => {
                        if rec.internal != spec.internal {
                            return Err(NetworkError::ConfigMismatch {
                                name: spec.name.clone(),
                                field: "internal",
                            });
                        }
                        if let Some(want) = spec.subnet {
                            if want.trunc() != rec.subnet {
                                return Err(NetworkError::SubnetMismatch {
                                    name: spec.name.clone(),
                                    have: rec.subnet,
                                    want,
                                });
                            }
                        }
                        rec
                    }
                    None => {
                        let others = self.store.list(&l)?;
                        let bridge = spec.bridge_name.clone().unwrap_or(derived);
                        // Routes of our own bridges are covered by the records; a stale
                        // bridge of the same name (crash) must not block its own subnet.
                        let mut in_use: Vec<Ipv4Net> = routes.clone();
                        in_use.extend(others.iter().map(|o| o.subnet));
                        let subnet = match spec.subnet {
                            Some(s) => {
                                ipam::check_subnet_free(&s.trunc(), &in_use)?;
                                s
                            }
                            None => ipam::choose_subnet(&in_use)?,
                        };
                        let pool = Pool::new(subnet, spec.gateway, spec.ip_range)?;
                        let rec = NetworkRecord {
                            name: spec.name.clone(),
                            project: spec.project.clone(),
                            bridge,
                            subnet: pool.subnet,
                            gateway: pool.gateway,
                            ip_range: spec.ip_range.map(|r| r.trunc()),
                            internal: spec.internal,
                            mtu: spec.mtu,
                            labels: spec.labels.clone(),
                            created: now_rfc3339(),
                            leases: BTreeMap::new(),
                            last_allocated: None,
                        };
                        // Recorded before anything exists, so teardown finds it after a
                        // crash in the middle.
                        self.store.save(&l, &rec)?;
                        rec
                    }
                }
            };
            self.links
                .ensure_bridge(
                    &rec.bridge,
                    rec.gateway,
                    rec.subnet.prefix_len(),
                    rec.mtu,
                    link::link_group(&rec.project),
                )
                .await?;
            firewall::bridge_sysctls(&rec.bridge)?;
            self.sync_firewall(&rec.project).await?;
            debug!(bridge = %rec.bridge, subnet = %rec.subnet, "network ready");
            Ok(NetworkInfo::from(&rec))
        }
        .instrument(span)
        .await
    }

    /// Attaches a container's netns to a network: leases an address (or `ipv4`), creates
    /// the veth pair with `eth<ifindex>` inside the netns, sets address and MTU; the first
    /// non-internal network attached gives the default route via its gateway.
    pub async fn attach(
        &self,
        net: &NetworkInfo,
        netns_path: &Path,
        container: &str,
        ifindex: u32,
        ipv4: Option<Ipv4Addr>,
        mac: Option<[u8; 6]>,
    ) -> Result<Attachment, NetworkError> {
        let span = info_span!("attach", network = %net.name, container);
        async {
            let ifname = format!("eth{ifindex}");
            let host_veth = link::host_veth_name(container, &ifname, incarnation());
            let (rec, ip, mac) = {
                let l = self.store.lock()?;
                let mut rec =
                    self.store
                        .load(&l, &net.name)?
                        .ok_or_else(|| NetworkError::NotFound {
                            name: net.name.clone(),
                        })?;
                let pool = Pool::new(rec.subnet, Some(rec.gateway), rec.ip_range)?;
                let leased: BTreeSet<Ipv4Addr> = rec.leases.keys().copied().collect();
                let ip = pool.allocate(&leased, ipv4, rec.last_allocated)?;
                let mac = mac.unwrap_or_else(|| link::mac_for(ip));
                rec.leases.insert(
                    ip,
                    Lease {
                        container: container.to_owned(),
                        ifname: ifname.clone(),
                        host_veth: Some(host_veth.clone()),
                        netns: Some(netns_path.to_owned()),
                        mac: link::format_mac(&mac),
                    },
                );
                if ipv4.is_none() {
                    rec.last_allocated = Some(ip);
                }
                self.store.save(&l, &rec)?;
                (rec, ip, mac)
            };
            let res = async {
                // One lookup on the fast path; re-create the bridge only if it vanished.
                let bridge_idx = match self.links.index_of(&rec.bridge).await? {
                    Some(i) => i,
                    None => {
                        self.links
                            .ensure_bridge(
                                &rec.bridge,
                                rec.gateway,
                                rec.subnet.prefix_len(),
                                rec.mtu,
                                link::link_group(&rec.project),
                            )
                            .await?
                    }
                };
                // The first non-internal network attached gives the default route; later
                // ones find it present (EEXIST, ignored), as Docker does.
                let gw = (!rec.internal).then_some(rec.gateway);
                let addr =
                    Ipv4Net::new(ip, rec.subnet.prefix_len()).expect("prefix from a valid subnet");
                self.links
                    .attach_veth(
                        bridge_idx,
                        &host_veth,
                        netns_path,
                        &ifname,
                        addr,
                        gw,
                        mac,
                        rec.mtu,
                        link::link_group(&rec.project),
                    )
                    .await
            }
            .await;
            if let Err(e) = res {
                // Roll back: no veth, no lease.
                let _ = self.links.delete(&host_veth).await;
                if let Ok(l) = self.store.lock() {
                    if let Ok(Some(mut r)) = self.store.load(&l, &net.name) {
                        r.leases.remove(&ip);
                        let _ = self.store.save(&l, &r);
                    }
                }
                return Err(e.into());
            }
            Ok(Attachment {
                network: rec.name.clone(),
                container: container.to_owned(),
                ip,
                prefix_len: rec.subnet.prefix_len(),
                gateway: rec.gateway,
                mac: link::format_mac(&mac),
                ifname,
                host_veth,
            })
        }
        .instrument(span)
        .await
    }

    /// Removes a container's leases on a network and deletes its host veths (a veth that
    /// is already gone is fine).
    pub async fn detach(&self, network: &str, container: &str) -> Result<(), NetworkError> {
        let removed: Vec<Lease> = {
            let l = self.store.lock()?;
            let mut rec = self
                .store
                .load(&l, network)?
                .ok_or_else(|| NetworkError::NotFound {
                    name: network.to_owned(),
                })?;
            let ips: Vec<Ipv4Addr> = rec
                .leases
                .iter()
                .filter(|(_, le)| le.container == container)
                .map(|(ip, _)| *ip)
                .collect();
            if ips.is_empty() {
                return Err(NetworkError::NotAttached {
                    name: network.to_owned(),
                    container: container.to_owned(),
                });
            }
            let out = ips.iter().filter_map(|ip| rec.leases.remove(ip)).collect();
            self.store.save(&l, &rec)?;
            out
        };
        for le in removed {
            if let Some(v) = le.host_veth {
                self.links.delete(&v).await?;
            }
        }
        Ok(())
    }

    /// Publishes ports for a project: validates and resolves every binding (random host
    /// ports, host port availability), records them and rebuilds the project's table in
    /// one transaction. On any error nothing is changed.
    pub async fn publish(
        &self,
        project: &str,
        bindings: &[PortBinding],
    ) -> Result<Vec<PublishedPort>, NetworkError> {
        let span = info_span!("publish", project);
        async {
            let mut new: Vec<PortRecord> = Vec::new();
            let old = {
                let l = self.store.lock()?;
                let all = self.store.all_ports(&l)?;
                let mine = self.store.load_ports(&l, project)?;
                // Sockets held until the records are saved, so a random port cannot be
                // handed out twice by two concurrent publishes in this process.
                let mut held: Vec<HeldPort> = Vec::new();
                for b in bindings {
                    for (host_port, container_port) in expand(b)? {
                        let host_ip = b.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
                        let rec_same = |r: &PortRecord| {
                            r.protocol == b.protocol
                                && r.container_ip == b.container_ip
                                && r.container_port == container_port
                                && r.host_ip == b.host_ip
                        };
                        // Already published exactly like this (idempotent `up`).
                        if let Some(r) = mine
                            .ports
                            .iter()
                            .find(|r| rec_same(r) && host_port.is_none_or(|h| h == r.host_port))
                        {
                            new.push(r.clone());
                            continue;
                        }
                        let port = match host_port {
                            Some(p) => {
                                if let Some((proj, _)) = all.iter().find(|(_, r)| {
                                    r.protocol == b.protocol
                                        && r.host_port == p
                                        && (r.host_ip.is_none()
                                            || b.host_ip.is_none()
                                            || r.host_ip == b.host_ip)
                                }) {
                                    return Err(NetworkError::PortPublished {
                                        host_ip,
                                        port: p,
                                        protocol: b.protocol,
                                        project: proj.clone(),
                                    });
                                }
                                held.push(probe_port(host_ip, p, b.protocol)?);
                                p
                            }
                            None => loop {
                                let (sock, p) = random_port(host_ip, b.protocol)?;
                                if !all
                                    .iter()
                                    .any(|(_, r)| r.host_port == p && r.protocol == b.protocol)
                                    && !new
                                        .iter()
                                        .any(|r| r.host_port == p && r.protocol == b.protocol)
                                {
                                    held.push(sock);
                                    break p;
                                }
                            },
                        };
                        new.push(PortRecord {
                            container: b.container.clone(),
                            host_ip: b.host_ip,
                            host_port: port,
                            container_ip: b.container_ip,
                            container_port,
                            protocol: b.protocol,
                        });
                    }
                }
                let mut merged = mine.clone();
                for r in &new {
                    if !merged.ports.contains(r) {
                        merged.ports.push(r.clone());
                    }
                }
                self.store.save_ports(&l, project, &merged)?;
                drop(held);
                mine
            };
            let applied = match self.backend {
                PortBackend::Nftables => self.sync_firewall(project).await,
                PortBackend::Userland => self.start_proxies(&new).await,
            };
            if let Err(e) = applied {
                let l = self.store.lock()?;
                self.store.save_ports(&l, project, &old)?;
                return Err(e);
            }
            let udp: Vec<(Protocol, u16)> = new
                .iter()
                .filter(|r| r.protocol == Protocol::Udp)
                .map(|r| (r.protocol, r.host_port))
                .collect();
            if !udp.is_empty() {
                firewall::flush_conntrack(&[], &udp).await;
            }
            debug!(count = new.len(), "published ports");
            Ok(new)
        }
        .instrument(span)
        .await
    }

    /// Removes a container's published ports and flushes their conntrack entries.
    pub async fn unpublish(&self, project: &str, container: &str) -> Result<(), NetworkError> {
        let gone: Vec<PortRecord> = {
            let l = self.store.lock()?;
            let mut p = self.store.load_ports(&l, project)?;
            let (gone, keep): (Vec<_>, Vec<_>) =
                p.ports.into_iter().partition(|r| r.container == container);
            p.ports = keep;
            self.store.save_ports(&l, project, &p)?;
            gone
        };
        self.stop_proxies(&gone).await;
        self.sync_firewall(project).await?;
        let ports: Vec<_> = gone.iter().map(|r| (r.protocol, r.host_port)).collect();
        firewall::flush_conntrack(&[], &ports).await;
        Ok(())
    }

    /// Removes one network (bridge, record, its part of the firewall). Refuses while
    /// containers are attached, like Docker.
    pub async fn remove_network(&self, name: &str) -> Result<(), NetworkError> {
        let rec = {
            let l = self.store.lock()?;
            let rec = self
                .store
                .load(&l, name)?
                .ok_or_else(|| NetworkError::NotFound {
                    name: name.to_owned(),
                })?;
            if !rec.leases.is_empty() {
                let containers: BTreeSet<&str> =
                    rec.leases.values().map(|l| l.container.as_str()).collect();
                return Err(NetworkError::InUse {
                    name: name.to_owned(),
                    containers: containers.into_iter().collect::<Vec<_>>().join(", "),
                });
            }
            self.store.remove(&l, name)?;
            rec
        };
        // Firewall first, then the bridge (netavark's order): no window where rules point
        // at a bridge name that a new network could reuse.
        self.sync_firewall(&rec.project).await?;
        self.links.delete(&rec.bridge).await?;
        firewall::flush_conntrack(&[rec.subnet], &[]).await;
        Ok(())
    }

    /// Removes everything the project's networks created: nft table, iptables accepts,
    /// conntrack entries, host veths, netns pins under the state root, bridges, records.
    /// Goes on after an error and returns all of them; already-gone parts are success.
    pub async fn teardown_project(&self, project: &str) -> Result<(), Vec<NetworkError>> {
        let span = info_span!("teardown", project);
        async {
            let mut errs: Vec<NetworkError> = Vec::new();
            let (recs, ports) = match self.store.lock() {
                Ok(l) => {
                    let recs = match self.store.list(&l) {
                        Ok(r) => r.into_iter().filter(|r| r.project == project).collect(),
                        Err(e) => {
                            errs.push(e.into());
                            Vec::new()
                        }
                    };
                    let ports = self
                        .store
                        .load_ports(&l, project)
                        .map(|p| p.ports)
                        .unwrap_or_else(|e| {
                            errs.push(e.into());
                            Vec::new()
                        });
                    (recs, ports)
                }
                Err(e) => return Err(vec![e.into()]),
            };
            let recs: Vec<NetworkRecord> = recs;
            self.stop_proxies(&ports).await;
            let subnets: Vec<Ipv4Net> = recs.iter().map(|r| r.subnet).collect();
            let pports: Vec<(Protocol, u16)> =
                ports.iter().map(|r| (r.protocol, r.host_port)).collect();
            let netns_dir = self.root.join("netns");
            // Independent parts run at once (each costs a process spawn or an RCU grace
            // period): the nft table, the iptables accepts, conntrack and the links.
            let firewall = async {
                let mut errs: Vec<NetworkError> = Vec::new();
                if self.backend == PortBackend::Nftables {
                    if let Err(e) = firewall::delete(&firewall::table_name(project)).await {
                        errs.push(e.into());
                    }
                }
                errs
            };
            let accepts = async {
                firewall::remove_accepts(project)
                    .await
                    .err()
                    .map(NetworkError::from)
            };
            let conntrack = firewall::flush_conntrack(&subnets, &pports);
            let links = async {
                let mut errs: Vec<NetworkError> = Vec::new();
                // One group delete for all host veths of the project; the per-veth
                // deletes then only find stragglers (e.g. veths made before a rename).
                if let Err(e) = self.links.delete_group(link::link_group(project)).await {
                    errs.push(e.into());
                }
                let veths = recs
                    .iter()
                    .flat_map(|r| r.leases.values())
                    .filter_map(|le| le.host_veth.as_deref());
                let deleted = futures::future::join_all(veths.map(|v| self.links.delete(v))).await;
                errs.extend(deleted.into_iter().filter_map(|r| r.err().map(Into::into)));
                for le in recs.iter().flat_map(|r| r.leases.values()) {
                    if let Some(p) = &le.netns {
                        if p.starts_with(&netns_dir) {
                            if let Err(e) = netns::remove_netns(p) {
                                errs.push(e.into());
                            }
                        }
                    }
                }
                errs
            };
            // The project's link group holds its veths and the bridges berth made: one
            // delete (one RCU wait); per-name deletes then only find stragglers (links
            // made before a rename, adopted bridges). It runs alongside the table delete:
            // waiting for the table first (netavark's order) cost ~20 ms per `down`, and
            // bought nothing here: a bridge name is derived from its network's name, so
            // only this project's own concurrent `up` could reuse it, and that race is
            // the same either way (the table is per project, too).
            let ((fw_errs, link_errs), accept_err, ()) = futures::join!(
                async { futures::join!(firewall, links) },
                accepts,
                conntrack
            );
            errs.extend(fw_errs);
            errs.extend(accept_err);
            errs.extend(link_errs);
            let bridges =
                futures::future::join_all(recs.iter().map(|r| self.links.delete(&r.bridge))).await;
            errs.extend(bridges.into_iter().filter_map(|r| r.err().map(Into::into)));
            match self.store.lock() {
                Ok(l) => {
                    for rec in &recs {
                        if let Err(e) = self.store.remove(&l, &rec.name) {
                            errs.push(e.into());
                        }
                    }
                    if let Err(e) = self.store.save_ports(&l, project, &Default::default()) {
                        errs.push(e.into());
                    }
                }
                Err(e) => errs.push(e.into()),
            }
            debug!(networks = recs.len(), errors = errs.len(), "teardown done");
            if errs.is_empty() {
                Ok(())
            } else {
                Err(errs)
            }
        }
        .instrument(span)
        .await
    }

    /// Starts userland proxies for new records; on failure stops the ones it started.
    async fn start_proxies(&self, recs: &[PortRecord]) -> Result<(), NetworkError> {
        let mut started: Vec<((Protocol, u16), proxy::Proxy)> = Vec::new();
        for r in recs {
            let key = (r.protocol, r.host_port);
            if self
                .proxies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&key)
            {
                continue;
            }
            let host_ip = r.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
            match proxy::Proxy::spawn(
                SocketAddrV4::new(host_ip, r.host_port),
                SocketAddrV4::new(r.container_ip, r.container_port),
                r.protocol,
            )
            .await
            {
                Ok(p) => started.push((key, p)),
                Err(source) => {
                    return Err(if source.kind() == std::io::ErrorKind::AddrInUse {
                        NetworkError::PortInUse {
                            host_ip,
                            port: r.host_port,
                            protocol: r.protocol,
                        }
                    } else {
                        NetworkError::HostAddress {
                            host_ip,
                            port: r.host_port,
                            protocol: r.protocol,
                            source,
                        }
                    })
                }
            }
        }
        self.proxies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(started);
        Ok(())
    }

    /// Stops the proxies of these records; their host ports are free on return.
    async fn stop_proxies(&self, recs: &[PortRecord]) {
        let stopped: Vec<proxy::Proxy> = {
            let mut p = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
            recs.iter()
                .filter_map(|r| p.remove(&(r.protocol, r.host_port)))
                .collect()
        };
        futures::future::join_all(stopped.into_iter().map(proxy::Proxy::stop)).await;
    }

    /// Rebuilds the project's nft table from the records (or deletes it when the project
    /// has no networks left), and handles a FORWARD DROP policy left by another tool.
    async fn sync_firewall(&self, project: &str) -> Result<(), NetworkError> {
        let (nets, ports) = {
            let l = self.store.lock()?;
            let nets: Vec<FwNetwork> = self
                .store
                .list(&l)?
                .into_iter()
                .filter(|r| r.project == project)
                .map(|r| FwNetwork {
                    bridge: r.bridge,
                    subnet: r.subnet,
                    internal: r.internal,
                })
                .collect();
            (nets, self.store.load_ports(&l, project)?.ports)
        };
        if self.backend == PortBackend::Userland {
            return Ok(());
        }
        let table = firewall::table_name(project);
        if nets.is_empty() {
            firewall::delete(&table).await?;
            firewall::remove_accepts(project).await?;
            return Ok(());
        }
        firewall::apply(&table, &firewall::render(&table, &nets, &ports)).await?;
        let forward = firewall::policy_is_drop("FORWARD").await;
        let input = firewall::policy_is_drop("INPUT").await;
        if forward || input {
            let bridges: Vec<String> = nets.iter().map(|n| n.bridge.clone()).collect();
            firewall::allow_bridges(project, &bridges, forward, input).await?;
        }
        Ok(())
    }
}

/// Expands a binding into (host port or random, container port) pairs.
fn expand(b: &PortBinding) -> Result<Vec<(Option<u16>, u16)>, NetworkError> {
    let cp = b.container_port;
    let bad = |reason: &str| NetworkError::InvalidPorts {
        container_port: cp.start,
        reason: reason.to_owned(),
    };
    if cp.start == 0 || cp.end < cp.start {
        return Err(bad("container port range is empty or starts at 0"));
    }
    match b.host_port {
        None => Ok((cp.start..=cp.end).map(|c| (None, c)).collect()),
        Some(hp) => {
            if hp.start == 0 || hp.end < hp.start {
                return Err(bad("host port range is empty or starts at 0"));
            }
            if hp.len() != cp.len() {
                return Err(bad("host and container port ranges differ in length"));
            }
            Ok((hp.start..=hp.end)
                .zip(cp.start..=cp.end)
                .map(|(h, c)| (Some(h), c))
                .collect())
        }
    }
}

/// A bound host socket, kept until the port is recorded so nobody else takes it meanwhile.
#[allow(dead_code)] // held for its Drop only
enum HeldPort {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl HeldPort {
    fn bind(addr: SocketAddrV4, proto: Protocol) -> std::io::Result<(HeldPort, u16)> {
        match proto {
            Protocol::Tcp => {
                let s = TcpListener::bind(addr)?;
                let p = s.local_addr()?.port();
                Ok((HeldPort::Tcp(s), p))
            }
            Protocol::Udp => {
                let s = UdpSocket::bind(addr)?;
                let p = s.local_addr()?.port();
                Ok((HeldPort::Udp(s), p))
            }
        }
    }
}

/// Binds host_ip:port to prove it is free; returns the socket to hold.
fn probe_port(host_ip: Ipv4Addr, port: u16, proto: Protocol) -> Result<HeldPort, NetworkError> {
    HeldPort::bind(SocketAddrV4::new(host_ip, port), proto)
        .map(|(h, _)| h)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                NetworkError::PortInUse {
                    host_ip,
                    port,
                    protocol: proto,
                }
            } else {
                NetworkError::HostAddress {
                    host_ip,
                    port,
                    protocol: proto,
                    source,
                }
            }
        })
}

/// A free ephemeral port chosen by the kernel, with its socket still bound.
fn random_port(host_ip: Ipv4Addr, proto: Protocol) -> Result<(HeldPort, u16), NetworkError> {
    HeldPort::bind(SocketAddrV4::new(host_ip, 0), proto).map_err(|source| {
        NetworkError::HostAddress {
            host_ip,
            port: 0,
            protocol: proto,
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(host: Option<PortRange>, c: PortRange) -> PortBinding {
        PortBinding {
            container: "c".into(),
            host_ip: None,
            host_port: host,
            container_ip: "10.0.0.2".parse().unwrap(),
            container_port: c,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn expand_ranges() {
        let r = |s, e| PortRange { start: s, end: e };
        assert_eq!(
            expand(&b(Some(r(8000, 8002)), r(80, 82))).unwrap(),
            vec![(Some(8000), 80), (Some(8001), 81), (Some(8002), 82)]
        );
        assert_eq!(
            expand(&b(None, r(80, 81))).unwrap(),
            vec![(None, 80), (None, 81)]
        );
        assert!(expand(&b(Some(r(8000, 8001)), r(80, 82))).is_err());
        assert!(expand(&b(None, r(0, 0))).is_err());
    }

    #[test]
    fn names() {
        assert!(valid_name("proj_default"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(""));
        assert!(!valid_name(".hidden"));
    }
}
