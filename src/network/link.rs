//! Links through rtnetlink: project bridges and one veth per container attachment.
//!
//! Takes names and addresses decided by `mod.rs`/`ipam`; gives kernel objects. The host
//! side goes through one netlink `Handle` bound to the caller's network namespace (the
//! "host" netns); the container side goes through `netns::run_in_netns`. One RTM_NEWLINK
//! creates the veth pair with the host end enslaved and up and the peer created directly
//! inside the container netns as `ethN`, so it can never clash with a host interface.
//! Names are berth-owned (`bt-…` bridges, `bv…` veths, ≤ IFNAMSIZ-1 = 15 bytes) so leak
//! checks and cleanup can find them.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use sha2::{Digest, Sha256};
use tracing::debug;

use super::netns::{self, NetnsError};

/// Link failures, naming the interface or namespace.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("cannot create bridge {bridge}")]
    CreateBridge {
        bridge: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("cannot configure bridge {bridge}")]
    ConfigureBridge {
        bridge: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("cannot create veth {host_veth} into {netns}")]
    CreateVeth {
        host_veth: String,
        netns: PathBuf,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("cannot configure {ifname} inside {netns}")]
    ConfigureContainer {
        ifname: String,
        netns: PathBuf,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("cannot delete link {name}")]
    Delete {
        name: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("cannot list {what}")]
    Dump {
        what: &'static str,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("cannot open network namespace {netns}")]
    OpenNetns {
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// The errno inside a netlink error, if any (positive, like `libc::ENODEV`).
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// `bt-` + 8 hex digits of the network's full name: 11 bytes, stable across restarts.
pub fn bridge_name(network: &str) -> String {
    format!(
        "bt-{}",
        &hex::encode(Sha256::digest(network.as_bytes()))[..8]
    )
}

/// `bv` + 10 hex digits of (container, interface, incarnation). Unique per incarnation:
/// the kernel reaps a dead netns's veths asynchronously, so a quick restart must not
/// reuse the previous name (EEXIST).
pub fn host_veth_name(container: &str, ifname: &str, incarnation: u128) -> String {
    let mut h = Sha256::new();
    h.update(container.as_bytes());
    h.update([0]);
    h.update(ifname.as_bytes());
    h.update(incarnation.to_le_bytes());
    format!("bv{}", &hex::encode(h.finalize())[..10])
}

/// The link group (IFLA_GROUP) of a project's host veths: one RTM_DELLINK removes them
/// all, where single deletes cost ~30 ms each in RCU grace periods (network-eval P6).
/// Never 0 (the default group of every link).
pub fn link_group(project: &str) -> u32 {
    let d = Sha256::digest(project.as_bytes());
    u32::from_le_bytes([d[0], d[1], d[2], d[3]]).max(1)
}

/// A locally administered MAC derived from the address, as Docker does (02:42:a.b.c.d).
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2))
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// Netlink access to the host network namespace (the one the creating thread is in).
#[derive(Clone)]
pub struct HostLinks {
    handle: Handle,
}

impl HostLinks {
    /// Opens the socket and spawns its connection task: call inside a tokio runtime.
    pub fn connect() -> Result<Self, LinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
        tokio::spawn(conn);
        Ok(HostLinks { handle })
    }

    /// Index of the link with this name, `None` if there is none.
    pub async fn index_of(&self, name: &str) -> Result<Option<u32>, LinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(LinkError::Dump {
                what: "links",
                source: Box::new(source),
            }),
        }
    }

    /// Every link name on the host, for leak checks and `network ls`.
    pub async fn link_names(&self) -> Result<Vec<String>, LinkError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::Dump {
                what: "links",
                source: Box::new(source),
            })?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
            })
            .collect())
    }

    /// IPv4 destinations routed on the host (main and local tables), so IPAM can skip them.
    pub async fn routed_subnets(&self) -> Result<Vec<Ipv4Net>, LinkError> {
        let msgs: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::Dump {
                what: "routes",
                source: Box::new(source),
            })?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let dst = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                })?;
                Ipv4Net::new(dst, m.header.destination_prefix_length).ok()
            })
            // 127/8 and friends are fine to reuse only if nothing routes them; keep all.
            .collect())
    }

    /// Creates the bridge (or adopts an existing one of that name), gives it the gateway
    /// address and a fixed MAC, and brings it up. Returns its index. A bridge it creates
    /// joins link group `group` (the project's, like its veths): teardown then removes
    /// bridge and veths in one request, paying the kernel's RCU wait once, not twice.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix: u8,
        mtu: Option<u32>,
        group: u32,
    ) -> Result<u32, LinkError> {
        let idx = match self.index_of(name).await? {
            Some(i) => i,
            None => {
                // A fixed MAC: otherwise the bridge takes the lowest port MAC and changes
                // as containers come and go, leaving stale ARP entries (network-eval P10).
                let mut b = LinkBridge::new(name)
                    .address(mac_for(gateway).to_vec())
                    .link_group(group);
                if let Some(m) = mtu {
                    b = b.mtu(m);
                }
                match self.handle.link().add(b.build()).execute().await {
                    Ok(()) => debug!(bridge = name, "created bridge"),
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(source) => {
                        return Err(LinkError::CreateBridge {
                            bridge: name.to_owned(),
                            source: Box::new(source),
                        })
                    }
                }
                self.index_of(name)
                    .await?
                    .ok_or_else(|| LinkError::CreateBridge {
                        bridge: name.to_owned(),
                        source: Box::new(rtnetlink::Error::RequestFailed),
                    })?
            }
        };
        let cfg = |source: rtnetlink::Error| LinkError::ConfigureBridge {
            bridge: name.to_owned(),
            source: Box::new(source),
        };
        match self
            .handle
            .address()
            .add(idx, IpAddr::V4(gateway), prefix)
            .execute()
            .await
        {
            Ok(()) => debug!(bridge = name, %gateway, prefix, "bridge address set"),
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(cfg(e)),
        }
        self.handle
            .link()
            .change(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(cfg)?;
        Ok(idx)
    }

    /// Deletes a link by name; a missing link is success.
    pub async fn delete(&self, name: &str) -> Result<bool, LinkError> {
        let Some(idx) = self.index_of(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(idx).execute().await {
            Ok(()) => {
                debug!(link = name, "deleted link");
                Ok(true)
            }
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(source) => Err(LinkError::Delete {
                name: name.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    /// Deletes every link of a link group in one request; an empty group is success.
    pub async fn delete_group(&self, group: u32) -> Result<(), LinkError> {
        let msg = LinkUnspec::new_with_index(0).link_group(group).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => {
                debug!(group, "deleted link group");
                Ok(())
            }
            Err(e) if matches!(errno(&e), Some(libc::ENODEV | libc::ENOENT)) => Ok(()),
            Err(source) => Err(LinkError::Delete {
                name: format!("group {group}"),
                source: Box::new(source),
            }),
        }
    }

    /// Creates the veth pair: host end `host_veth` enslaved to `bridge_idx` and up, peer
    /// `ifname` created inside the netns at `netns` (not up: the kernel refuses IFF_UP on
    /// a peer with ENOTCONN, network-eval P1), then configures the container side.
    #[allow(clippy::too_many_arguments)]
    pub async fn attach_veth(
        &self,
        bridge_idx: u32,
        host_veth: &str,
        netns_path: &Path,
        ifname: &str,
        addr: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        mac: [u8; 6],
        mtu: Option<u32>,
        group: u32,
    ) -> Result<(), LinkError> {
        let nsf = File::open(netns_path).map_err(|source| LinkError::OpenNetns {
            netns: netns_path.to_owned(),
            source,
        })?;
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(ifname.to_owned())
            .address(mac.to_vec())
            .setns_by_fd(nsf.as_raw_fd());
        let mut host = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_veth.to_owned())
            .controller(bridge_idx)
            .link_group(group)
            .up();
        if let Some(m) = mtu {
            peer = peer.mtu(m);
            host = host.mtu(m);
        }
        let msg = host
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|source| LinkError::CreateVeth {
                host_veth: host_veth.to_owned(),
                netns: netns_path.to_owned(),
                source: Box::new(source),
            })?;
        drop(nsf);
        debug!(host_veth, ifname, netns = %netns_path.display(), "created veth pair");

        let ifn = ifname.to_owned();
        let res = netns::run_in_netns(netns_path, move |h, _p| async move {
            configure_container_side(&h, &ifn, addr, gateway).await
        })
        .await?;
        res.map_err(|source| LinkError::ConfigureContainer {
            ifname: ifname.to_owned(),
            netns: netns_path.to_owned(),
            source: Box::new(source),
        })?;
        debug!(ifname, %addr, ?gateway, "configured container interface");
        Ok(())
    }
}

/// Inside the container netns: lo up, address, link up, then the default route (which
/// needs the link up first).
async fn configure_container_side(
    h: &Handle,
    ifname: &str,
    addr: Ipv4Net,
    gateway: Option<Ipv4Addr>,
) -> Result<(), rtnetlink::Error> {
    netns::lo_up(h).await?;
    let idx = h
        .link()
        .get()
        .match_name(ifname.to_owned())
        .execute()
        .try_next()
        .await?
        .map(|m| m.header.index)
        .ok_or(rtnetlink::Error::RequestFailed)?;
    match h
        .address()
        .add(idx, IpAddr::V4(addr.addr()), addr.prefix_len())
        .execute()
        .await
    {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    h.link()
        .change(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await?;
    if let Some(gw) = gateway {
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build();
        match h.route().add(route).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_are_stable() {
        let b = bridge_name("myproject_default");
        assert!(b.starts_with("bt-") && b.len() == 11);
        assert_eq!(b, bridge_name("myproject_default"));
        assert_ne!(b, bridge_name("other_default"));
        let v = host_veth_name("c1", "eth0", 7);
        assert!(v.starts_with("bv") && v.len() == 12);
        assert_ne!(v, host_veth_name("c1", "eth0", 8));
    }

    #[test]
    fn mac_round_trip() {
        let m = mac_for("172.17.0.2".parse().unwrap());
        assert_eq!(format_mac(&m), "02:42:ac:11:00:02");
        assert_eq!(parse_mac("02:42:ac:11:00:02"), Some(m));
        assert_eq!(parse_mac("02:42:ac:11:00"), None);
        assert_eq!(parse_mac("02:42:ac:11:00:0g"), None);
    }
}
