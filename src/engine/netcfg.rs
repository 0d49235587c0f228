//! Per-attachment network settings of a service that `lifecycle::create` needs: the MAC
//! address (`mac_address`, service-level or per network) and the legacy link aliases
//! (`links:`, `external_links:`), which the supervisor's DNS answers only to the linking
//! container. Pure apart from reading network records (external links).

use crate::network::{link, NetworkManager};
use crate::project::model::{Service, ServiceNetwork};
use crate::state::{LinkAliasRecord, NetworkRecord};

/// The MAC for the attachment at `index` (0 is the first network): the network's own
/// `mac_address`, else the service-level one on the first network, else none (derived
/// from the address). An invalid MAC is an error naming the service and the key.
pub fn mac_address(
    svc: &Service,
    index: usize,
    opts: Option<&ServiceNetwork>,
) -> Result<Option<[u8; 6]>, String> {
    let (key, value) = match opts.and_then(|o| o.mac_address.as_deref()) {
        Some(m) => ("networks.*.mac_address", m),
        None => match (&svc.mac_address, index) {
            (Some(m), 0) => ("mac_address", m.as_str()),
            _ => return Ok(None),
        },
    };
    let mac = link::parse_mac(value)
        .ok_or_else(|| format!("service {}: {key}: invalid MAC address {value:?}", svc.name))?;
    if mac[0] & 1 != 0 {
        return Err(format!(
            "service {}: {key}: {value} is a multicast MAC address",
            svc.name
        ));
    }
    Ok(Some(mac))
}

/// Link aliases the service's containers see (on each of their networks): `links:
/// [svc[:alias]]` point at a service of the project (resolved at query time);
/// `external_links: [name[:alias]]` at a container outside the project that holds an
/// address on one of the service's networks (`networks`, the project's network records;
/// looked up now). A target on no shared network gives no alias, as with Docker's
/// user-defined networks.
pub fn link_aliases(
    svc: &Service,
    networks: &[NetworkRecord],
    mgr: &NetworkManager,
) -> Vec<LinkAliasRecord> {
    let split = |l: &str| -> (String, String) {
        match l.split_once(':') {
            Some((t, a)) => (t.to_string(), a.to_string()),
            None => (l.to_string(), l.to_string()),
        }
    };
    let mut out: Vec<LinkAliasRecord> = svc
        .links
        .iter()
        .map(|l| {
            let (target, alias) = split(l);
            LinkAliasRecord {
                alias,
                service: Some(target),
                ip: None,
            }
        })
        .collect();
    if svc.external_links.is_empty() {
        return out;
    }
    let leases: Vec<_> = networks
        .iter()
        .filter(|n| svc.networks.keys().any(|k| k.as_str() == n.key))
        .filter_map(|n| mgr.record(&n.name).ok().flatten())
        .flat_map(|r| r.leases.into_iter())
        .collect();
    for l in &svc.external_links {
        let (target, alias) = split(l);
        match leases.iter().find(|(_, le)| le.container == target) {
            Some((ip, _)) => out.push(LinkAliasRecord {
                alias,
                service: None,
                ip: Some(*ip),
            }),
            None => tracing::warn!(
                service = %svc.name,
                container = %target,
                "external_links: the container is on none of the service's networks; no alias"
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_per_network_wins_and_service_level_is_first_network_only() {
        let mut svc = Service {
            name: "web".into(),
            mac_address: Some("02:42:ac:11:00:99".into()),
            ..Default::default()
        };
        let per = ServiceNetwork {
            mac_address: Some("02:00:00:00:00:01".into()),
            ..Default::default()
        };
        assert_eq!(
            mac_address(&svc, 0, None).unwrap(),
            Some([0x02, 0x42, 0xac, 0x11, 0, 0x99])
        );
        assert_eq!(mac_address(&svc, 1, None).unwrap(), None);
        assert_eq!(
            mac_address(&svc, 1, Some(&per)).unwrap(),
            Some([2, 0, 0, 0, 0, 1])
        );
        svc.mac_address = Some("zz".into());
        let e = mac_address(&svc, 0, None).unwrap_err();
        assert!(
            e.contains("service web") && e.contains("mac_address"),
            "{e}"
        );
        svc.mac_address = Some("01:00:5e:00:00:01".into());
        assert!(mac_address(&svc, 0, None).is_err());
    }
}
