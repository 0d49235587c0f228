//! The leak checker: what berth-owned kernel objects exist now, and which appeared since.
//!
//! A snapshot lists, for the calling thread's view of the system: network links (bridges,
//! veths), nftables tables, network-namespace pins (`/run/netns`), mounts, cgroup
//! directories (v1 controllers and the v2 hierarchy) and processes. "berth-owned" means
//! the object carries berth's name (`berth`, or the `bt`/`bv` link prefixes) or, for
//! processes, runs in a berth cgroup. Links and nft tables live per network namespace: when
//! the thread is in another namespace than at snapshot time (a test that entered a fresh
//! one), every berth-owned link and table in the current one counts as new.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Link name prefixes berth uses (bridges `bt…`/`berth…`, host veth ends `bv…`).
const LINK_PREFIXES: &[&str] = &["berth", "bt", "bv"];

/// Berth-owned objects at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    netns_inode: u64,
    links: BTreeSet<String>,
    nft_tables: BTreeSet<String>,
    nft_rules: BTreeSet<String>,
    netns_pins: BTreeSet<String>,
    mounts: BTreeSet<String>,
    cgroups: BTreeSet<String>,
    processes: BTreeSet<String>,
}

impl Snapshot {
    /// Record every berth-owned object visible now.
    pub fn take() -> Snapshot {
        Snapshot {
            netns_inode: netns_inode(),
            links: links(),
            nft_tables: nft_tables(),
            nft_rules: nft_rules(),
            netns_pins: netns_pins(),
            mounts: mounts(),
            cgroups: cgroups(),
            processes: processes(),
        }
    }

    /// Human-readable descriptions of every berth-owned object that exists now and did not
    /// exist at snapshot time. Empty means no leak.
    pub fn leaks_since(&self) -> Vec<String> {
        let now = Snapshot::take();
        let same_ns = now.netns_inode == self.netns_inode;
        let empty = BTreeSet::new();
        let mut out = Vec::new();
        let mut diff = |kind: &str, before: &BTreeSet<String>, after: &BTreeSet<String>| {
            for x in after.difference(before) {
                out.push(format!("{kind}: {x}"));
            }
        };
        diff(
            "link",
            if same_ns { &self.links } else { &empty },
            &now.links,
        );
        diff(
            "nft table",
            if same_ns { &self.nft_tables } else { &empty },
            &now.nft_tables,
        );
        diff(
            "nft rule",
            if same_ns { &self.nft_rules } else { &empty },
            &now.nft_rules,
        );
        diff("netns pin", &self.netns_pins, &now.netns_pins);
        diff("mount", &self.mounts, &now.mounts);
        diff("cgroup", &self.cgroups, &now.cgroups);
        // A process is the same one while its pid and start time are (its command line
        // changes when it execs); processes can take a moment to be reaped after their
        // cgroup is killed.
        let key = |p: &String| {
            p.split_once("): ")
                .map_or(p.clone(), |(k, _)| k.to_string())
        };
        let keys = |set: &BTreeSet<String>| set.iter().map(key).collect::<BTreeSet<_>>();
        let before = keys(&self.processes);
        let mut procs: BTreeSet<String> = now
            .processes
            .iter()
            .filter(|p| !before.contains(&key(p)))
            .cloned()
            .collect();
        for _ in 0..50 {
            if procs.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            let again = keys(&processes());
            procs.retain(|p| again.contains(&key(p)));
        }
        for p in procs {
            out.push(format!("process: {p}"));
        }
        out
    }
}

fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

fn is_berth_link(name: &str) -> bool {
    LINK_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Link names in the calling thread's network namespace (a spawned `ip` inherits it).
fn links() -> BTreeSet<String> {
    let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() else {
        return BTreeSet::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).trim().to_string())
        .filter(|n| is_berth_link(n))
        .collect()
}

fn nft_tables() -> BTreeSet<String> {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
        return BTreeSet::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("berth"))
        .map(str::to_string)
        .collect()
}

/// Rules berth tagged in tables it does not own (e.g. the scoped accepts in iptables'
/// FORWARD/DOCKER-USER chains when Docker left a DROP policy), by their `berth:` comment.
fn nft_rules() -> BTreeSet<String> {
    let Ok(out) = Command::new("nft").args(["list", "ruleset"]).output() else {
        return BTreeSet::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("comment \"berth:"))
        .map(str::to_string)
        .collect()
}

fn netns_pins() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("berth") || n.starts_with("bt"))
                .collect()
        })
        .unwrap_or_default()
}

/// Mount points (and sources) that name berth, from the process's mount table.
fn mounts() -> BTreeSet<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let mountpoint = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(sep + 1)?;
            let source = fields.get(sep + 2)?;
            (mountpoint.contains("berth") || source.contains("berth"))
                .then(|| format!("{mountpoint} ({fstype} from {source})"))
        })
        .collect()
}

/// Cgroup directories with berth in their name, up to four levels deep in every hierarchy.
fn cgroups() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let root = Path::new("/sys/fs/cgroup");
    // cgroup v2 (unified): one hierarchy at the root. v1/hybrid: one per controller dir.
    let tops: Vec<std::path::PathBuf> = if root.join("cgroup.controllers").exists() {
        vec![root.to_path_buf()]
    } else {
        std::fs::read_dir(root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    fn walk(dir: &Path, depth: u32, out: &mut BTreeSet<String>) {
        if depth == 0 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let p = e.path();
            // `<hierarchy>/berth` is the parent every container cgroup lives under (like
            // Docker's `docker`): shared by all projects, not a leak. Everything below it
            // and every other berth-named dir is.
            let shared_parent = e.file_name() == "berth" && depth == 4;
            if e.file_name().to_string_lossy().contains("berth") && !shared_parent {
                out.insert(p.display().to_string());
            }
            walk(&p, depth - 1, out);
        }
    }
    for t in tops {
        walk(&t, 4, &mut out);
    }
    out
}

/// Processes that are berth's (a `berth` command line other than this test binary) or that
/// run in a berth cgroup, keyed by pid and start time so a reused pid is a new entry.
fn processes() -> BTreeSet<String> {
    let me = std::process::id();
    let mut out = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let base = e.path();
        let cmdline = std::fs::read(base.join("cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let cgroup = std::fs::read_to_string(base.join("cgroup")).unwrap_or_default();
        let exe_is_berth = cmdline
            .split(' ')
            .next()
            .map(|a0| a0.rsplit('/').next().unwrap_or(a0).starts_with("berth"))
            .unwrap_or(false);
        if !(exe_is_berth || cgroup.contains("berth")) {
            continue;
        }
        let stat = std::fs::read_to_string(base.join("stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        // A zombie holds nothing but its pid; one reparented to a PID 1 that never reaps
        // (some sandboxes) is not ours to fix.
        if rest.split_whitespace().next() == Some("Z") {
            continue;
        }
        let start = rest
            .split_whitespace()
            .nth(19)
            .map(str::to_string)
            .unwrap_or_default();
        out.insert(format!("pid {pid} (start {start}): {cmdline}"));
    }
    out
}
