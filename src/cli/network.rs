//! `berth network ls|inspect|create|rm|prune`, with Docker's habits.
//!
//! Takes parsed arguments and the global options (`--root` locates the network records);
//! gives Docker-style tables, JSON and messages on stdout and an exit code. The work is in
//! `crate::network` (`NetworkManager`); this file only parses, dispatches and formats.
//! A network made by `create` is its own firewall scope (its "project" is its name), so
//! compose projects can use it as `external: true` and `down` never removes it.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::ExitCode;

use anyhow::{bail, Context};
use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use super::GlobalOpts;
use crate::network::store::NetworkRecord;
use crate::network::{NetworkManager, NetworkSpec};

#[derive(Debug, clap::Subcommand)]
pub enum NetworkCommand {
    /// List networks
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks
    Inspect(InspectArgs),
    /// Create a network
    Create(CreateArgs),
    /// Remove one or more networks
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Remove all unused networks
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only display network names
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format: table or json
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Network names
    #[arg(required = true)]
    pub networks: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Network name
    pub name: String,
    /// Driver (only `bridge`)
    #[arg(short, long, default_value = "bridge")]
    pub driver: String,
    /// Subnet in CIDR format
    #[arg(long)]
    pub subnet: Option<Ipv4Net>,
    /// Gateway for the subnet
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
    /// Allocate container addresses from a sub-range
    #[arg(long = "ip-range")]
    pub ip_range: Option<Ipv4Net>,
    /// Restrict external access to the network
    #[arg(long)]
    pub internal: bool,
    /// Enable IPv6 (not supported yet)
    #[arg(long)]
    pub ipv6: bool,
    /// Metadata (key=value, repeatable)
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Driver options (com.docker.network.bridge.name, com.docker.network.driver.mtu)
    #[arg(short = 'o', long = "opt")]
    pub opts: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Network names
    #[arg(required = true)]
    pub networks: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation
    #[arg(short, long)]
    pub force: bool,
}

pub async fn run(g: &GlobalOpts, cmd: NetworkCommand) -> anyhow::Result<ExitCode> {
    let mgr = NetworkManager::new(&g.root).context("cannot open the network layer")?;
    let mut out = std::io::stdout().lock();
    match cmd {
        NetworkCommand::Ls(a) => {
            let recs = mgr.list().context("cannot list networks")?;
            if a.quiet {
                for r in &recs {
                    writeln!(out, "{}", r.name)?;
                }
            } else if a.format == "json" {
                for r in &recs {
                    writeln!(out, "{}", serde_json::to_string(&summary(r))?)?;
                }
            } else if a.format == "table" {
                write!(out, "{}", table(&recs))?;
            } else {
                bail!("unknown --format {:?}: use table or json", a.format);
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Inspect(a) => {
            let mut found = Vec::new();
            let mut missing = false;
            for n in &a.networks {
                match mgr
                    .record(n)
                    .with_context(|| format!("cannot read network {n}"))?
                {
                    Some(r) => found.push(inspect(&r)),
                    None => {
                        eprintln!("Error: No such network: {n}");
                        missing = true;
                    }
                }
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&found)?)?;
            Ok(if missing {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        NetworkCommand::Create(a) => {
            if a.driver != "bridge" {
                bail!(
                    "network driver {:?} is not supported: only bridge",
                    a.driver
                );
            }
            if mgr.record(&a.name)?.is_some() {
                bail!("network with name {} already exists", a.name);
            }
            let spec = create_spec(&a)?;
            let info = mgr
                .ensure_network(&spec)
                .await
                .with_context(|| format!("cannot create network {}", a.name))?;
            writeln!(out, "{}", id(&info.name))?;
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Rm(a) => {
            let mut failed = false;
            for n in &a.networks {
                match remove(&mgr, n).await {
                    Ok(()) => writeln!(out, "{n}")?,
                    Err(e) => {
                        super::render::error(&e);
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        NetworkCommand::Prune(a) => {
            if !a.force {
                eprintln!(
                    "WARNING! This will remove all networks not used by at least one container."
                );
            }
            let unused: Vec<String> = mgr
                .list()?
                .into_iter()
                .filter(|r| r.leases.is_empty())
                .map(|r| r.name)
                .collect();
            let mut deleted = Vec::new();
            for n in unused {
                match remove(&mgr, &n).await {
                    Ok(()) => deleted.push(n),
                    Err(e) => super::render::error(&e),
                }
            }
            if !deleted.is_empty() {
                writeln!(out, "Deleted Networks:")?;
                for n in deleted {
                    writeln!(out, "{n}")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Removes a network; when it was the last one of its firewall scope, the scope's table
/// and rules go too (`remove_network` already rebuilt or deleted the table).
async fn remove(mgr: &NetworkManager, name: &str) -> anyhow::Result<()> {
    mgr.remove_network(name)
        .await
        .with_context(|| format!("cannot remove network {name}"))
}

fn create_spec(a: &CreateArgs) -> anyhow::Result<NetworkSpec> {
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        labels.insert(k.to_owned(), v.to_owned());
    }
    let mut bridge_name = None;
    let mut mtu = None;
    for o in &a.opts {
        match o.split_once('=') {
            Some(("com.docker.network.bridge.name", v)) => bridge_name = Some(v.to_owned()),
            Some(("com.docker.network.driver.mtu", v)) => {
                mtu = Some(v.parse::<u32>().with_context(|| format!("invalid mtu {v:?}"))?)
            }
            _ => bail!("unsupported driver option {o:?}: use com.docker.network.bridge.name or com.docker.network.driver.mtu"),
        }
    }
    if a.gateway.is_some() && a.subnet.is_none() {
        bail!("--gateway needs --subnet");
    }
    Ok(NetworkSpec {
        project: a.name.clone(),
        name: a.name.clone(),
        subnet: a.subnet,
        gateway: a.gateway,
        ip_range: a.ip_range,
        internal: a.internal,
        bridge_name,
        mtu,
        labels,
        enable_ipv6: a.ipv6,
    })
}

/// A stable Docker-like id: 64 hex digits of the name's hash (ls shows 12).
fn id(name: &str) -> String {
    hex::encode(Sha256::digest(name.as_bytes()))
}

fn table(recs: &[NetworkRecord]) -> String {
    let w = recs.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    let mut s = format!(
        "{:<12}   {:<w$}   {:<6}   {}\n",
        "NETWORK ID", "NAME", "DRIVER", "SCOPE"
    );
    for r in recs {
        s.push_str(&format!(
            "{:<12}   {:<w$}   {:<6}   {}\n",
            &id(&r.name)[..12],
            r.name,
            "bridge",
            "local"
        ));
    }
    s
}

fn summary(r: &NetworkRecord) -> serde_json::Value {
    serde_json::json!({
        "ID": &id(&r.name)[..12],
        "Name": r.name,
        "Driver": "bridge",
        "Scope": "local",
        "Internal": r.internal,
        "CreatedAt": r.created,
        "Labels": r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
    })
}

fn inspect(r: &NetworkRecord) -> serde_json::Value {
    let containers: serde_json::Map<String, serde_json::Value> = r
        .leases
        .iter()
        .map(|(ip, l)| {
            (
                l.container.clone(),
                serde_json::json!({
                    "Name": l.container,
                    "MacAddress": l.mac,
                    "IPv4Address": format!("{ip}/{}", r.subnet.prefix_len()),
                    "IPv6Address": "",
                    "Interface": l.ifname,
                    "HostInterface": l.host_veth,
                }),
            )
        })
        .collect();
    let mut options = serde_json::Map::new();
    options.insert(
        "com.docker.network.bridge.name".into(),
        r.bridge.clone().into(),
    );
    if let Some(m) = r.mtu {
        options.insert("com.docker.network.driver.mtu".into(), m.to_string().into());
    }
    serde_json::json!({
        "Name": r.name,
        "Id": id(&r.name),
        "Created": r.created,
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Config": [{
                "Subnet": r.subnet.to_string(),
                "Gateway": r.gateway.to_string(),
                "IPRange": r.ip_range.map(|x| x.to_string()),
            }],
        },
        "Internal": r.internal,
        "Containers": containers,
        "Options": options,
        "Labels": r.labels,
        "Project": r.project,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct T {
        #[command(subcommand)]
        cmd: NetworkCommand,
    }

    #[test]
    fn create_options_map_to_spec() {
        let t = T::try_parse_from([
            "t",
            "create",
            "mynet",
            "--subnet",
            "10.5.0.0/24",
            "--gateway",
            "10.5.0.254",
            "--internal",
            "--label",
            "a=b",
            "-o",
            "com.docker.network.bridge.name=br-my",
            "-o",
            "com.docker.network.driver.mtu=1400",
        ])
        .unwrap();
        let NetworkCommand::Create(a) = t.cmd else {
            panic!("not create")
        };
        let s = create_spec(&a).unwrap();
        assert_eq!(s.project, "mynet");
        assert_eq!(s.subnet, Some("10.5.0.0/24".parse().unwrap()));
        assert_eq!(s.gateway, Some("10.5.0.254".parse().unwrap()));
        assert!(s.internal);
        assert_eq!(s.bridge_name.as_deref(), Some("br-my"));
        assert_eq!(s.mtu, Some(1400));
        assert_eq!(s.labels.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn bad_driver_option_is_refused() {
        let t = T::try_parse_from(["t", "create", "n", "-o", "foo=bar"]).unwrap();
        let NetworkCommand::Create(a) = t.cmd else {
            panic!("not create")
        };
        assert!(create_spec(&a)
            .unwrap_err()
            .to_string()
            .contains("unsupported driver option"));
    }
}
