//! IPv4 address management: which subnet a network gets and which address a container gets.
//!
//! Pure decisions, no I/O: takes the subnets already in use (host routes, other berth
//! networks) and the current leases of a network (from `store`), gives a subnet or an
//! address. `NetworkManager` in `mod.rs` reads the inputs and persists the results under
//! the store's file lock, so two berth processes never hand out the same address.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Address management failures, each naming the subnet or address concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("no free subnet left in the default address pools (172.17-31.0.0/16, 192.168.0.0/16 in /20s)")]
    PoolsExhausted,
    #[error("subnet {subnet} overlaps {other}, which is already in use")]
    SubnetOverlap { subnet: Ipv4Net, other: Ipv4Net },
    #[error("subnet {subnet} is too small for a network (needs at least a /30)")]
    SubnetTooSmall { subnet: Ipv4Net },
    #[error("gateway {gateway} is not a host address of subnet {subnet}")]
    GatewayOutsideSubnet { gateway: Ipv4Addr, subnet: Ipv4Net },
    #[error("ip_range {range} is not inside subnet {subnet}")]
    RangeOutsideSubnet { range: Ipv4Net, subnet: Ipv4Net },
    #[error("address {ip} is not a usable host address of subnet {subnet}")]
    AddressOutsideSubnet { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {ip} is the gateway of subnet {subnet}")]
    AddressIsGateway { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {ip} is already in use")]
    AddressInUse { ip: Ipv4Addr },
    #[error("no free address left in {range}")]
    RangeExhausted { range: Ipv4Net },
}

/// Docker's default address pools: 172.17.0.0/16 … 172.31.0.0/16, then 192.168.0.0/16
/// cut into /20s. In this order.
pub fn default_pools() -> Vec<Ipv4Net> {
    let mut out: Vec<Ipv4Net> = (17..=31)
        .map(|b| Ipv4Net::new(Ipv4Addr::new(172, b, 0, 0), 16).expect("valid prefix"))
        .collect();
    let big = Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 0), 16).expect("valid prefix");
    out.extend(big.subnets(20).expect("20 >= 16"));
    out
}

/// Whether two subnets share any address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first default pool that overlaps nothing in `in_use` (host routes except the
/// default route, and other berth networks).
pub fn choose_subnet(in_use: &[Ipv4Net]) -> Result<Ipv4Net, IpamError> {
    default_pools()
        .into_iter()
        .find(|cand| {
            !in_use
                .iter()
                .filter(|u| u.prefix_len() > 0)
                .any(|u| overlaps(cand, u))
        })
        .ok_or(IpamError::PoolsExhausted)
}

/// Checks an explicit subnet against the ones in use.
pub fn check_subnet_free(subnet: &Ipv4Net, in_use: &[Ipv4Net]) -> Result<(), IpamError> {
    match in_use
        .iter()
        .filter(|u| u.prefix_len() > 0)
        .find(|u| overlaps(subnet, u))
    {
        Some(other) => Err(IpamError::SubnetOverlap {
            subnet: *subnet,
            other: *other,
        }),
        None => Ok(()),
    }
}

/// A network's address plan: subnet, gateway, and the range containers draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Where dynamic addresses come from; the whole subnet when not set.
    pub range: Ipv4Net,
}

impl Pool {
    /// Validates an address plan. `subnet` is normalised to its network address; the
    /// gateway defaults to the first host address.
    pub fn new(
        subnet: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        ip_range: Option<Ipv4Net>,
    ) -> Result<Self, IpamError> {
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(IpamError::SubnetTooSmall { subnet });
        }
        let first = u32::from(subnet.network()) + 1;
        let gateway = gateway.unwrap_or(Ipv4Addr::from(first));
        if !is_host(&subnet, gateway) {
            return Err(IpamError::GatewayOutsideSubnet { gateway, subnet });
        }
        let range = ip_range.map(|r| r.trunc()).unwrap_or(subnet);
        if !subnet.contains(&range) {
            return Err(IpamError::RangeOutsideSubnet { range, subnet });
        }
        Ok(Pool {
            subnet,
            gateway,
            range,
        })
    }

    /// Picks an address. A `requested` one (compose `ipv4_address`) must be a free host
    /// address of the subnet (it may lie outside `ip_range`, as in Docker). Otherwise the
    /// first free address of the range after `last` (round robin, so a just-released
    /// address is not reused at once while stale ARP and conntrack entries still point
    /// at it), wrapping around.
    pub fn allocate(
        &self,
        leased: &BTreeSet<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        last: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = requested {
            if !is_host(&self.subnet, ip) {
                return Err(IpamError::AddressOutsideSubnet {
                    ip,
                    subnet: self.subnet,
                });
            }
            if ip == self.gateway {
                return Err(IpamError::AddressIsGateway {
                    ip,
                    subnet: self.subnet,
                });
            }
            if leased.contains(&ip) {
                return Err(IpamError::AddressInUse { ip });
            }
            return Ok(ip);
        }
        let lo = u32::from(self.range.network());
        let hi = u32::from(self.range.broadcast());
        let start = match last {
            Some(l) if self.range.contains(&l) && u32::from(l) < hi => u32::from(l) + 1,
            _ => lo,
        };
        // Two passes: from `start` to the end, then from the beginning to `start`.
        (start..=hi)
            .chain(lo..start)
            .map(Ipv4Addr::from)
            .find(|ip| is_host(&self.subnet, *ip) && *ip != self.gateway && !leased.contains(ip))
            .ok_or(IpamError::RangeExhausted { range: self.range })
    }
}

/// A usable host address: inside the subnet, not its network or broadcast address.
fn is_host(subnet: &Ipv4Net, ip: Ipv4Addr) -> bool {
    subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn pools_follow_docker_defaults() {
        let p = default_pools();
        assert_eq!(p.len(), 15 + 16);
        assert_eq!(p[0], net("172.17.0.0/16"));
        assert_eq!(p[14], net("172.31.0.0/16"));
        assert_eq!(p[15], net("192.168.0.0/20"));
        assert_eq!(p[30], net("192.168.240.0/20"));
    }

    #[test]
    fn choose_skips_routed_and_used_subnets() {
        let in_use = [
            net("0.0.0.0/0"), // the default route must not block everything
            net("172.17.0.0/16"),
            net("172.18.5.0/24"),
            net("10.0.0.0/8"),
        ];
        assert_eq!(choose_subnet(&in_use).unwrap(), net("172.19.0.0/16"));
        // a supernet covering 172.16/12 pushes us to 192.168
        assert_eq!(
            choose_subnet(&[net("172.16.0.0/12"), net("192.168.0.0/24")]).unwrap(),
            net("192.168.16.0/20")
        );
    }

    #[test]
    fn choose_reports_exhaustion() {
        assert_eq!(
            choose_subnet(&[net("172.16.0.0/12"), net("192.168.0.0/16")]),
            Err(IpamError::PoolsExhausted)
        );
    }

    #[test]
    fn explicit_subnet_conflict_names_both() {
        let e = check_subnet_free(&net("10.1.0.0/16"), &[net("10.1.2.0/24")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet 10.1.0.0/16 overlaps 10.1.2.0/24, which is already in use"
        );
    }

    #[test]
    fn pool_validation() {
        let p = Pool::new(net("10.9.0.5/24"), None, None).unwrap();
        assert_eq!(p.subnet, net("10.9.0.0/24"));
        assert_eq!(p.gateway, ip("10.9.0.1"));
        assert!(matches!(
            Pool::new(net("10.9.0.0/24"), Some(ip("10.9.1.1")), None),
            Err(IpamError::GatewayOutsideSubnet { .. })
        ));
        assert!(matches!(
            Pool::new(net("10.9.0.0/24"), Some(ip("10.9.0.255")), None),
            Err(IpamError::GatewayOutsideSubnet { .. })
        ));
        assert!(matches!(
            Pool::new(net("10.9.0.0/24"), None, Some(net("10.9.1.0/28"))),
            Err(IpamError::RangeOutsideSubnet { .. })
        ));
        assert!(matches!(
            Pool::new(net("10.9.0.0/31"), None, None),
            Err(IpamError::SubnetTooSmall { .. })
        ));
    }

    #[test]
    fn allocate_skips_gateway_and_leases_and_rotates() {
        let p = Pool::new(net("10.9.0.0/29"), None, None).unwrap();
        let mut leased = BTreeSet::new();
        let a = p.allocate(&leased, None, None).unwrap();
        assert_eq!(a, ip("10.9.0.2"));
        leased.insert(a);
        let b = p.allocate(&leased, None, Some(a)).unwrap();
        assert_eq!(b, ip("10.9.0.3"));
        // release a; the next one continues after b instead of reusing a
        leased.remove(&a);
        leased.insert(b);
        assert_eq!(p.allocate(&leased, None, Some(b)).unwrap(), ip("10.9.0.4"));
        // wrap around at the end of the range
        assert_eq!(
            p.allocate(&leased, None, Some(ip("10.9.0.6"))).unwrap(),
            ip("10.9.0.2")
        );
    }

    #[test]
    fn allocate_exhaustion() {
        let p = Pool::new(net("10.9.0.0/30"), None, None).unwrap();
        let leased: BTreeSet<_> = [ip("10.9.0.2")].into();
        assert_eq!(
            p.allocate(&leased, None, None),
            Err(IpamError::RangeExhausted {
                range: net("10.9.0.0/30")
            })
        );
    }

    #[test]
    fn allocate_honours_ip_range() {
        let p = Pool::new(net("10.9.0.0/24"), None, Some(net("10.9.0.128/25"))).unwrap();
        assert_eq!(
            p.allocate(&BTreeSet::new(), None, None).unwrap(),
            ip("10.9.0.128")
        );
    }

    #[test]
    fn requested_address_checks() {
        let p = Pool::new(net("10.9.0.0/24"), None, Some(net("10.9.0.128/25"))).unwrap();
        let leased: BTreeSet<_> = [ip("10.9.0.7")].into();
        assert_eq!(
            p.allocate(&leased, Some(ip("10.9.0.8")), None).unwrap(),
            ip("10.9.0.8")
        );
        assert_eq!(
            p.allocate(&leased, Some(ip("10.9.0.7")), None),
            Err(IpamError::AddressInUse { ip: ip("10.9.0.7") })
        );
        assert!(matches!(
            p.allocate(&leased, Some(ip("10.9.0.1")), None),
            Err(IpamError::AddressIsGateway { .. })
        ));
        assert!(matches!(
            p.allocate(&leased, Some(ip("10.9.1.1")), None),
            Err(IpamError::AddressOutsideSubnet { .. })
        ));
        assert!(matches!(
            p.allocate(&leased, Some(ip("10.9.0.0")), None),
            Err(IpamError::AddressOutsideSubnet { .. })
        ));
    }
}
