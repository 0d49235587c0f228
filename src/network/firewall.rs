//! Firewall with nftables: one `inet` table per project, replaced atomically.
//!
//! Takes the project's networks and published ports (from `store`); gives the kernel
//! rules for isolation, egress masquerade, published ports (DNAT, incl. 127.0.0.1), and
//! the raw rule that keeps containers off host services bound to 127.0.0.1. `render` is
//! pure and unit-tested; `apply`/`delete` feed it to `nft -f -` in one transaction
//! (`table X; delete table X; table X {…}`, because nft 1.0.6 has no `destroy`).
//!
//! Isolation is ingress-based (network-eval §4): traffic *into* one of our bridges is
//! accepted only from the same bridge, as a reply, or as a DNATed published port; so no
//! table needs to know about other projects. Drops win across tables, which is why a
//! FORWARD DROP policy left by Docker must be handled in iptables itself
//! (`allow_bridges`), scoped to our bridges and removed on teardown (`remove_accepts`).

use std::fmt::Write as _;
use std::process::Stdio;

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use super::store::PortRecord;
use super::Protocol;

/// Firewall failures.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("nft rejected the ruleset of table {table}: {stderr}")]
    Nft { table: String, stderr: String },
    #[error("iptables failed on chain {chain}: {stderr}")]
    Iptables { chain: String, stderr: String },
    #[error("cannot set sysctl {path}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One network as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwNetwork {
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub internal: bool,
}

/// nft table name for a project. Project names are `[a-z0-9_-]`; nft identifiers do not
/// take `-`, so it becomes `_`, plus a short hash when that changed the name (so `a-b`
/// and `a_b` do not collide).
pub fn table_name(project: &str) -> String {
    let clean: String = project
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == project {
        format!("berth_{clean}")
    } else {
        use sha2::{Digest, Sha256};
        let h = hex::encode(Sha256::digest(project.as_bytes()));
        format!("berth_{clean}_{}", &h[..6])
    }
}

fn chain_for(bridge: &str) -> String {
    format!("in_{}", bridge.replace('-', "_"))
}

/// The complete transaction that replaces the project's table.
pub fn render(table: &str, networks: &[FwNetwork], ports: &[PortRecord]) -> String {
    let mut s = String::new();
    // Creating then deleting makes the delete idempotent; the new table follows in the
    // same transaction, so there is no window without rules.
    let _ = writeln!(
        s,
        "table inet {table}\ndelete table inet {table}\ntable inet {table} {{"
    );
    let bridges: Vec<&str> = networks.iter().map(|n| n.bridge.as_str()).collect();
    let set = |v: &[&str]| {
        format!(
            "{{ {} }}",
            v.iter()
                .map(|b| format!("\"{b}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };

    // route_localnet=1 on our bridges (needed for 127.0.0.1 publishes) would let a
    // container reach host services bound to 127.0.0.1: drop those packets before routing
    // (network-eval P4, same class as CVE-2020-8558).
    s.push_str(
        "  chain raw_prerouting {\n    type filter hook prerouting priority -300; policy accept;\n",
    );
    if !bridges.is_empty() {
        let _ = writeln!(s, "    iifname {} ip daddr 127.0.0.0/8 drop", set(&bridges));
    }
    s.push_str("  }\n");

    // Published ports: only for packets addressed to this host.
    s.push_str("  chain nat_prerouting {\n    type nat hook prerouting priority -100; policy accept;\n    fib daddr type local jump published\n  }\n");
    // nft 1.0.6 rejects `priority dstnat` on an inet output hook (network-eval P7).
    s.push_str("  chain nat_output {\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump published\n  }\n");
    s.push_str("  chain published {\n");
    for p in ports {
        let proto = p.protocol.as_str();
        let daddr = match p.host_ip {
            Some(ip) => format!("ip daddr {ip} "),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "    {daddr}{proto} dport {} dnat ip to {}:{}",
            p.host_port, p.container_ip, p.container_port
        );
    }
    s.push_str("  }\n");

    s.push_str(
        "  chain nat_postrouting {\n    type nat hook postrouting priority 100; policy accept;\n",
    );
    for n in networks {
        // 127.0.0.1 publishes: otherwise the container answers to its own loopback.
        let _ = writeln!(
            s,
            "    ip saddr 127.0.0.0/8 oifname \"{}\" ct status dnat masquerade",
            n.bridge
        );
        // Hairpin: a container reaching a published port of its own network.
        let _ = writeln!(
            s,
            "    ip saddr {} oifname \"{}\" ct status dnat masquerade",
            n.subnet, n.bridge
        );
        if !n.internal {
            let _ = writeln!(
                s,
                "    ip saddr {} oifname != \"{}\" masquerade",
                n.subnet, n.bridge
            );
        }
    }
    s.push_str("  }\n");

    s.push_str("  chain forward {\n    type filter hook forward priority 0; policy accept;\n");
    for n in networks {
        let _ = writeln!(
            s,
            "    oifname \"{}\" jump {}",
            n.bridge,
            chain_for(&n.bridge)
        );
        if n.internal {
            let _ = writeln!(s, "    iifname \"{0}\" oifname != \"{0}\" drop", n.bridge);
        }
    }
    s.push_str("  }\n");
    for n in networks {
        let _ = writeln!(s, "  chain {} {{", chain_for(&n.bridge));
        s.push_str("    ct state established,related accept\n");
        let _ = writeln!(s, "    iifname \"{}\" accept", n.bridge);
        if !n.internal {
            s.push_str("    ct status dnat accept\n");
        }
        s.push_str("    counter drop\n  }\n");
    }
    s.push_str("}\n");
    s
}

/// Replaces the project's table in one nft transaction.
pub async fn apply(table: &str, script: &str) -> Result<(), FirewallError> {
    nft(table, script).await?;
    debug!(table, "applied nft table");
    Ok(())
}

/// Deletes the project's table; a missing table is success.
pub async fn delete(table: &str) -> Result<(), FirewallError> {
    nft(
        table,
        &format!("table inet {table}\ndelete table inet {table}\n"),
    )
    .await?;
    debug!(table, "deleted nft table");
    Ok(())
}

/// Whether the table exists (for leak checks and `network inspect`).
pub async fn table_exists(table: &str) -> Result<bool, FirewallError> {
    let out = tokio::process::Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map_err(|source| FirewallError::Spawn {
            program: "nft",
            source,
        })?;
    Ok(out.success())
}

async fn nft(table: &str, script: &str) -> Result<(), FirewallError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn {
            program: "nft",
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|source| FirewallError::Spawn {
                program: "nft",
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| FirewallError::Spawn {
            program: "nft",
            source,
        })?;
    if !out.status.success() {
        return Err(FirewallError::Nft {
            table: table.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Writes a sysctl under /proc/sys (per network namespace of the calling thread).
pub fn sysctl(path: &str, value: &str) -> Result<(), FirewallError> {
    let full = format!("/proc/sys/{path}");
    let cur = std::fs::read_to_string(&full).unwrap_or_default();
    if cur.trim() == value {
        return Ok(());
    }
    std::fs::write(&full, value).map_err(|source| FirewallError::Sysctl {
        path: full.clone(),
        source,
    })?;
    debug!(sysctl = path, value, "set sysctl");
    Ok(())
}

/// Per-bridge sysctls: route_localnet so DNAT from 127.0.0.1 is not dropped as martian,
/// and global ip_forward for egress and published ports reached from outside. Never
/// touches FORWARD policies that belong to others.
pub fn bridge_sysctls(bridge: &str) -> Result<(), FirewallError> {
    sysctl("net/ipv4/ip_forward", "1")?;
    sysctl(&format!("net/ipv4/conf/{bridge}/route_localnet"), "1")
}

/// Deletes conntrack entries so a remapped or removed port does not keep sending to an
/// old target (stale UDP flows, network-eval P5). "0 entries deleted" is success.
pub async fn flush_conntrack(subnets: &[Ipv4Net], ports: &[(Protocol, u16)]) {
    let mut jobs: Vec<Vec<String>> = Vec::new();
    // Spawning `conntrack` costs ~10-20 ms per job; when the kernel's table can be read
    // and holds no matching entry (the usual `down` of a project nobody talked to through
    // the host), there is nothing to delete.
    let table = tokio::fs::read_to_string("/proc/net/nf_conntrack")
        .await
        .ok();
    for s in subnets {
        if table.as_deref().is_none_or(|t| conntrack_has_subnet(t, s)) {
            jobs.push(vec!["-D".into(), "-s".into(), s.to_string()]);
        }
    }
    for (proto, port) in ports {
        if table
            .as_deref()
            .is_none_or(|t| conntrack_has_port(t, *proto, *port))
        {
            jobs.push(vec![
                "-D".into(),
                "-p".into(),
                proto.as_str().into(),
                "--orig-port-dst".into(),
                port.to_string(),
            ]);
        }
    }
    // Independent deletions: run them at once.
    futures::future::join_all(jobs.into_iter().map(|args| async move {
        match tokio::process::Command::new("conntrack")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
        {
            Ok(_) => debug!(?args, "flushed conntrack"),
            Err(e) => warn!(?args, error = %e, "cannot run conntrack; stale flows may remain"),
        }
    }))
    .await;
}

/// Whether a `/proc/net/nf_conntrack` text has an entry with an address of `subnet` (any
/// `src=`: a superset of what `conntrack -D -s` deletes).
fn conntrack_has_subnet(table: &str, subnet: &Ipv4Net) -> bool {
    table.lines().any(|l| {
        // The bridge's own IGMP reports (src=<gateway> dst=224.0.0.22) are not flows of
        // the project: a multicast destination does not count.
        let multicast = l
            .split_whitespace()
            .find_map(|w| w.strip_prefix("dst="))
            .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
            .is_some_and(|a| a.is_multicast());
        !multicast
            && l.split_whitespace()
                .filter_map(|w| w.strip_prefix("src="))
                .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
                .any(|a| subnet.contains(&a))
    })
}

/// Whether a `/proc/net/nf_conntrack` text has a `proto` entry with destination port
/// `port` (any `dport=`: a superset of `conntrack -D --orig-port-dst`).
fn conntrack_has_port(table: &str, proto: Protocol, port: u16) -> bool {
    let dport = format!("dport={port}");
    table.lines().any(|l| {
        let mut w = l.split_whitespace();
        // "ipv4 2 tcp 6 ..."
        w.nth(2) == Some(proto.as_str()) && l.split_whitespace().any(|x| x == dport)
    })
}

const COMMENT_PREFIX: &str = "berth:";

/// Whether an iptables (nft backend) built-in chain has policy DROP, as Docker leaves
/// FORWARD and firewalls such as ufw leave INPUT. A missing `iptables` binary means there
/// is no such policy to work around.
pub async fn policy_is_drop(chain: &str) -> bool {
    match tokio::process::Command::new("iptables")
        .args(["-w", "-S", chain])
        .stderr(Stdio::null())
        .output()
        .await
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == format!("-P {chain} DROP")),
        Err(_) => false,
    }
}

async fn iptables(args: &[&str]) -> Result<std::process::Output, FirewallError> {
    tokio::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(|source| FirewallError::Spawn {
            program: "iptables",
            source,
        })
}

/// Inserts accepts scoped to our bridges, tagged with a `berth:<project>` comment, after
/// removing old ones: with `forward`, traffic in and out of the bridges into DOCKER-USER
/// when it exists, else at the top of FORWARD; with `input`, DNS (udp/tcp 53) from the
/// bridges to the embedded server into INPUT. Drops win across tables, so these cannot
/// live in our own nft table.
pub async fn allow_bridges(
    project: &str,
    bridges: &[String],
    forward: bool,
    input: bool,
) -> Result<(), FirewallError> {
    remove_accepts(project).await?;
    let comment = format!("{COMMENT_PREFIX}{project}");
    let mut rules: Vec<(&str, Vec<String>)> = Vec::new();
    if forward {
        let chain = if iptables(&["-S", "DOCKER-USER"]).await?.status.success() {
            "DOCKER-USER"
        } else {
            "FORWARD"
        };
        for br in bridges {
            for dir in ["-i", "-o"] {
                rules.push((chain, vec![dir.into(), br.clone()]));
            }
        }
    }
    if input {
        for br in bridges {
            for proto in ["udp", "tcp"] {
                rules.push((
                    "INPUT",
                    vec![
                        "-i".into(),
                        br.clone(),
                        "-p".into(),
                        proto.into(),
                        "--dport".into(),
                        "53".into(),
                    ],
                ));
            }
        }
    }
    for (chain, matchers) in rules {
        let mut args: Vec<&str> = vec!["-I", chain];
        args.extend(matchers.iter().map(String::as_str));
        args.extend(["-m", "comment", "--comment", &comment, "-j", "ACCEPT"]);
        let out = iptables(&args).await?;
        if !out.status.success() {
            return Err(FirewallError::Iptables {
                chain: chain.into(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        debug!(chain, rule = ?matchers, "inserted iptables accept for a DROP policy");
    }
    Ok(())
}

/// Removes every accept tagged for this project from DOCKER-USER, FORWARD and INPUT.
/// One `iptables -S` lists every chain of the filter table (one spawn, not three).
pub async fn remove_accepts(project: &str) -> Result<(), FirewallError> {
    let tag = format!("\"{COMMENT_PREFIX}{project}\"");
    let tag_bare = format!("{COMMENT_PREFIX}{project} ");
    let Ok(out) = iptables(&["-S"]).await else {
        return Ok(()); // no iptables at all
    };
    if !out.status.success() {
        return Ok(());
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let l = format!("{line} ");
        if !(l.contains(&tag) || l.contains(&tag_bare)) {
            continue;
        }
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rest.split_whitespace().next().unwrap_or_default();
        if !matches!(chain, "DOCKER-USER" | "FORWARD" | "INPUT") {
            continue;
        }
        let args: Vec<String> = shell_split(rest);
        let mut full = vec!["-D".to_owned()];
        full.extend(args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let del = iptables(&refs).await?;
        if !del.status.success() {
            return Err(FirewallError::Iptables {
                chain: chain.into(),
                stderr: String::from_utf8_lossy(&del.stderr).trim().to_owned(),
            });
        }
        debug!(chain, rule = line, "removed iptables accept");
    }
    Ok(())
}

/// Splits an `iptables -S` line, honouring double quotes (comments).
fn shell_split(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert_eq!(table_name("web"), "berth_web");
        let t = table_name("my-app");
        assert!(t.starts_with("berth_my_app_") && t.len() == "berth_my_app_".len() + 6);
        assert_ne!(t, table_name("my_app"));
    }

    #[test]
    fn render_golden() {
        let nets = [
            FwNetwork {
                bridge: "bt-aaaa".into(),
                subnet: "10.1.0.0/24".parse().unwrap(),
                internal: false,
            },
            FwNetwork {
                bridge: "bt-bbbb".into(),
                subnet: "10.2.0.0/24".parse().unwrap(),
                internal: true,
            },
        ];
        let ports = [
            PortRecord {
                container: "c1".into(),
                host_ip: Some("127.0.0.1".parse().unwrap()),
                host_port: 18080,
                container_ip: "10.1.0.2".parse().unwrap(),
                container_port: 8080,
                protocol: Protocol::Tcp,
            },
            PortRecord {
                container: "c1".into(),
                host_ip: None,
                host_port: 5353,
                container_ip: "10.1.0.2".parse().unwrap(),
                container_port: 53,
                protocol: Protocol::Udp,
            },
        ];
        let want = r#"table inet berth_p
delete table inet berth_p
table inet berth_p {
  chain raw_prerouting {
    type filter hook prerouting priority -300; policy accept;
    iifname { "bt-aaaa", "bt-bbbb" } ip daddr 127.0.0.0/8 drop
  }
  chain nat_prerouting {
    type nat hook prerouting priority -100; policy accept;
    fib daddr type local jump published
  }
  chain nat_output {
    type nat hook output priority -100; policy accept;
    fib daddr type local jump published
  }
  chain published {
    ip daddr 127.0.0.1 tcp dport 18080 dnat ip to 10.1.0.2:8080
    udp dport 5353 dnat ip to 10.1.0.2:53
  }
  chain nat_postrouting {
    type nat hook postrouting priority 100; policy accept;
    ip saddr 127.0.0.0/8 oifname "bt-aaaa" ct status dnat masquerade
    ip saddr 10.1.0.0/24 oifname "bt-aaaa" ct status dnat masquerade
    ip saddr 10.1.0.0/24 oifname != "bt-aaaa" masquerade
    ip saddr 127.0.0.0/8 oifname "bt-bbbb" ct status dnat masquerade
    ip saddr 10.2.0.0/24 oifname "bt-bbbb" ct status dnat masquerade
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    oifname "bt-aaaa" jump in_bt_aaaa
    oifname "bt-bbbb" jump in_bt_bbbb
    iifname "bt-bbbb" oifname != "bt-bbbb" drop
  }
  chain in_bt_aaaa {
    ct state established,related accept
    iifname "bt-aaaa" accept
    ct status dnat accept
    counter drop
  }
  chain in_bt_bbbb {
    ct state established,related accept
    iifname "bt-bbbb" accept
    counter drop
  }
}
"#;
        assert_eq!(render("berth_p", &nets, &ports), want);
    }

    #[test]
    fn split_iptables_line() {
        assert_eq!(
            shell_split(r#"FORWARD -i bt-1 -m comment --comment "berth:p" -j ACCEPT"#),
            [
                "FORWARD",
                "-i",
                "bt-1",
                "-m",
                "comment",
                "--comment",
                "berth:p",
                "-j",
                "ACCEPT"
            ]
        );
    }

    #[test]
    fn conntrack_table_matching() {
        let t = "ipv4     2 tcp      6 431999 ESTABLISHED src=172.18.0.2 dst=10.0.0.1 sport=40000 dport=80 src=10.0.0.1 dst=172.18.0.2 sport=80 dport=40000 [ASSURED] mark=0 zone=0 use=2\n\
ipv4     2 udp      17 29 src=127.0.0.1 dst=127.0.0.1 sport=5000 dport=18053 src=172.19.0.3 dst=172.19.0.1 sport=53 dport=5000 mark=0 zone=0 use=2\n";
        assert!(conntrack_has_subnet(t, &"172.18.0.0/16".parse().unwrap()));
        assert!(conntrack_has_subnet(t, &"172.19.0.0/16".parse().unwrap()));
        assert!(!conntrack_has_subnet(t, &"172.20.0.0/16".parse().unwrap()));
        assert!(conntrack_has_port(t, Protocol::Udp, 18053));
        assert!(!conntrack_has_port(t, Protocol::Tcp, 18053));
        assert!(!conntrack_has_port(t, Protocol::Udp, 1805));
        assert!(!conntrack_has_subnet("", &"172.18.0.0/16".parse().unwrap()));
        let igmp = "ipv4     2 unknown  2 599 src=172.17.0.1 dst=224.0.0.22 [UNREPLIED] src=224.0.0.22 dst=172.17.0.1 mark=0 zone=0 use=2\n";
        assert!(!conntrack_has_subnet(
            igmp,
            &"172.17.0.0/16".parse().unwrap()
        ));
    }
}
