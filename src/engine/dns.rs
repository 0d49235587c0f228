//! The supervisor's DNS service: one embedded DNS listener per project network (on its
//! gateway, port 53) serving the names recorded in the project record.
//!
//! Takes `state::ProjectRecord`s (on start and on every `Reload`); gives listeners whose
//! answers change in memory, without a restart. Upstream forwarding for other names comes
//! from `BERTH_DNS_UPSTREAM`: `none` (answer everything locally; what tests and CI use),
//! `resolv.conf` (default: the host's `/etc/resolv.conf`, re-read when it changes) or a
//! comma-separated list of `ip[:port]`. Neighbours: `engine::supervisor`, `network::dns`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};

use tracing::{debug, warn};

use super::supervisor::Services;
use crate::network::dns::{DnsServer, LinkTarget, Registry, Upstream};
use crate::state::ProjectRecord;

/// Where names outside the project are forwarded, from `BERTH_DNS_UPSTREAM`.
pub fn upstream_from_env() -> Result<Upstream, String> {
    let v = std::env::var("BERTH_DNS_UPSTREAM").unwrap_or_else(|_| "resolv.conf".into());
    parse_upstream(&v)
}

/// Parse an upstream setting (see the module doc).
pub fn parse_upstream(v: &str) -> Result<Upstream, String> {
    match v.trim() {
        "" | "resolv.conf" => Ok(Upstream::ResolvConf("/etc/resolv.conf".into())),
        "none" | "off" => Ok(Upstream::None),
        list => list
            .split(',')
            .map(|s| {
                let s = s.trim();
                s.parse::<SocketAddr>()
                    .or_else(|_| {
                        s.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| format!("BERTH_DNS_UPSTREAM: {s:?} is not an ip[:port]"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Upstream::Servers),
    }
}

/// DNS listeners of one project.
pub struct DnsServices {
    registry: Registry,
    upstream: Upstream,
    servers: BTreeMap<String, DnsServer>,
    /// Containers whose names are registered, to drop the ones that left the record.
    registered: std::collections::BTreeSet<String>,
}

impl DnsServices {
    pub fn new(project: &str, upstream: Upstream) -> DnsServices {
        DnsServices {
            registry: Registry::new(project),
            upstream,
            servers: BTreeMap::new(),
            registered: Default::default(),
        }
    }
}

impl Services for DnsServices {
    async fn apply(&mut self, record: &ProjectRecord) -> Result<(), String> {
        let mut errors = Vec::new();
        // Listeners: one per network that exists in the record.
        let wanted: BTreeMap<&str, _> = record
            .networks
            .iter()
            .map(|n| (n.name.as_str(), (n.gateway, n.external)))
            .collect();
        let gone: Vec<String> = self
            .servers
            .keys()
            .filter(|k| !wanted.contains_key(k.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(s) = self.servers.remove(&name) {
                s.shutdown().await;
            }
        }
        for (name, (gw, external)) in wanted {
            if self.servers.contains_key(name) {
                continue;
            }
            let addr = SocketAddr::V4(SocketAddrV4::new(gw, 53));
            match DnsServer::spawn(addr, name, self.registry.clone(), self.upstream.clone()).await {
                Ok(s) => {
                    debug!(network = name, %addr, "dns listener up");
                    self.servers.insert(name.to_string(), s);
                }
                // An external network shared with another project: that project's
                // supervisor holds <gateway>:53. Not fatal; containers whose resolver is
                // this gateway get that project's view. (A per-container resolver, as
                // Docker's 127.0.0.11, would lift this.)
                Err(e) if external && is_addr_in_use(&e) => {
                    warn!(network = name, %addr, "dns: the gateway is served by another project's supervisor");
                }
                Err(e) => {
                    warn!(network = name, error = %e, "dns listener");
                    errors.push(format!("dns listener for network {name} on {addr}: {e}"));
                }
            }
        }
        // Records: replace everything with what the record says (containers come and go).
        let known: std::collections::BTreeSet<String> =
            record.containers.iter().map(|c| c.id.clone()).collect();
        for gone in self.registered.difference(&known) {
            self.registry.remove_container(gone);
        }
        for n in &record.networks {
            if let Ok(subnet) = n.subnet.parse() {
                self.registry.set_subnet(&n.name, subnet);
            }
        }
        for c in &record.containers {
            self.registry.remove_container(&c.id);
            for a in &c.attachments {
                self.registry.add(&a.network, &c.id, a.ip, &a.dns_names);
                if !a.link_aliases.is_empty() {
                    let links: Vec<(String, LinkTarget)> = a
                        .link_aliases
                        .iter()
                        .filter_map(|l| {
                            let target = match (&l.service, l.ip) {
                                (Some(s), _) => LinkTarget::Name(s.clone()),
                                (None, Some(ip)) => LinkTarget::Ip(ip),
                                (None, None) => return None,
                            };
                            Some((l.alias.clone(), target))
                        })
                        .collect();
                    self.registry.set_links(&a.network, &c.id, &links);
                }
            }
        }
        self.registered = known;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    async fn shutdown(&mut self) {
        for (_, s) in std::mem::take(&mut self.servers) {
            s.shutdown().await;
        }
    }
}

fn is_addr_in_use(e: &crate::network::dns::DnsError) -> bool {
    let crate::network::dns::DnsError::Bind { source, .. } = e;
    source.kind() == std::io::ErrorKind::AddrInUse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_settings() {
        assert!(matches!(parse_upstream("none"), Ok(Upstream::None)));
        assert!(matches!(
            parse_upstream("resolv.conf"),
            Ok(Upstream::ResolvConf(_))
        ));
        match parse_upstream("127.0.0.1:5353, 127.0.0.2") {
            Ok(Upstream::Servers(v)) => {
                assert_eq!(v[0], "127.0.0.1:5353".parse().unwrap());
                assert_eq!(v[1], "127.0.0.2:53".parse().unwrap());
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_upstream("nonsense").is_err());
    }
}
