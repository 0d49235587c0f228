//! Decode the merged raw tree into the typed model, checking keys and types and writing
//! the canonical (long) form as it goes.
//!
//! Takes the merged, interpolated `tree` of the whole project plus the project name,
//! directory and environment; gives the [`Project`] model (before profile selection and
//! cross-reference checks, which `validate` does) and a side table of marks so later checks
//! can still name file:line:col. Every object is read through `Fields`, which refuses keys
//! the schema knows but berth does not model ("`x` is not supported yet"), rejects unknown
//! keys with a "did you mean" suggestion, and ignores `x-` extensions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::error::{self, At, LoadError};
use super::model::*;
use super::names::{ConfigName, NetworkName, ProjectName, SecretName, ServiceName, VolumeName};
use super::tree::{Key, Mark, Node, Value};

type Result<T> = std::result::Result<T, LoadError>;

/// What decoding needs besides the tree.
pub struct Context<'a> {
    pub project: &'a ProjectName,
    pub dir: &'a Path,
    pub env: &'a BTreeMap<String, String>,
}

/// YAML path → mark, for errors found after decoding (references, cycles, names).
#[derive(Debug, Default)]
pub struct Spans(HashMap<String, Mark>);

impl Spans {
    fn record(&mut self, path: &str, mark: &Mark) {
        self.0.insert(path.to_string(), mark.clone());
    }

    /// An [`At`] for `path`, falling back to its closest recorded parent.
    pub fn at(&self, path: &str, fallback: &Mark) -> At {
        let mut p = path;
        loop {
            if let Some(m) = self.0.get(p) {
                return At::new(m, path);
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return At::new(fallback, path),
            }
        }
    }
}

// ---- the keys each object models or refuses -------------------------------------------

pub const TOP_KEYS: &[&str] = &[
    "version", "name", "include", "services", "networks", "volumes", "secrets", "configs",
];
pub const TOP_REFUSED: &[&str] = &["models"];

pub const SERVICE_KEYS: &[&str] = &[
    "build",
    "cap_add",
    "cap_drop",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_shares",
    "cpus",
    "depends_on",
    "deploy",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "memswap_limit",
    "network_mode",
    "networks",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "volumes",
    "volumes_from",
    "working_dir",
];
pub const SERVICE_REFUSED: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cgroup",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "devices",
    "gpus",
    "isolation",
    "label_file",
    "mem_swappiness",
    "models",
    "oom_kill_disable",
    "post_start",
    "pre_start",
    "pre_stop",
    "provider",
    "pull_refresh_after",
    "runtime",
    "storage_opt",
    "use_api_socket",
    "userns_mode",
    "uts",
];
pub const BUILD_KEYS: &[&str] = &[
    "context",
    "dockerfile",
    "dockerfile_inline",
    "args",
    "target",
    "labels",
    "tags",
    "network",
    "no_cache",
    "pull",
];
pub const BUILD_REFUSED: &[&str] = &[
    "ssh",
    "cache_from",
    "cache_to",
    "additional_contexts",
    "extra_hosts",
    "isolation",
    "privileged",
    "secrets",
    "shm_size",
    "ulimits",
    "platforms",
    "entitlements",
    "provenance",
    "sbom",
    "no_cache_filter",
];
pub const PORT_KEYS: &[&str] = &[
    "name",
    "mode",
    "host_ip",
    "target",
    "published",
    "protocol",
    "app_protocol",
];
pub const MOUNT_KEYS: &[&str] = &[
    "type",
    "source",
    "target",
    "read_only",
    "bind",
    "volume",
    "tmpfs",
];
pub const MOUNT_REFUSED: &[&str] = &["consistency", "image"];
pub const BIND_KEYS: &[&str] = &["propagation", "create_host_path", "selinux"];
pub const BIND_REFUSED: &[&str] = &["recursive"];
pub const VOLUME_OPT_KEYS: &[&str] = &["nocopy", "subpath"];
pub const VOLUME_OPT_REFUSED: &[&str] = &["labels"];
pub const TMPFS_KEYS: &[&str] = &["size", "mode"];
pub const DEPENDS_KEYS: &[&str] = &["condition", "required", "restart"];
pub const SERVICE_NETWORK_KEYS: &[&str] = &[
    "aliases",
    "ipv4_address",
    "ipv6_address",
    "mac_address",
    "interface_name",
    "priority",
    "gw_priority",
];
pub const SERVICE_NETWORK_REFUSED: &[&str] = &["link_local_ips", "driver_opts"];
pub const HEALTHCHECK_KEYS: &[&str] = &[
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "start_interval",
    "disable",
];
pub const DEPLOY_KEYS: &[&str] = &["replicas", "resources", "restart_policy", "labels"];
pub const DEPLOY_REFUSED: &[&str] = &[
    "mode",
    "endpoint_mode",
    "placement",
    "update_config",
    "rollback_config",
];
pub const RESOURCES_KEYS: &[&str] = &["limits", "reservations"];
pub const LIMITS_KEYS: &[&str] = &["cpus", "memory", "pids"];
pub const RESERVATIONS_KEYS: &[&str] = &["cpus", "memory"];
pub const RESERVATIONS_REFUSED: &[&str] = &["generic_resources", "devices"];
pub const RESTART_POLICY_KEYS: &[&str] = &["condition", "delay", "max_attempts", "window"];
pub const LOGGING_KEYS: &[&str] = &["driver", "options"];
pub const ULIMIT_KEYS: &[&str] = &["soft", "hard"];
pub const FILE_REF_KEYS: &[&str] = &["source", "target", "uid", "gid", "mode"];
pub const ENV_FILE_KEYS: &[&str] = &["path", "required", "format"];
pub const NETWORK_KEYS: &[&str] = &[
    "name",
    "driver",
    "driver_opts",
    "external",
    "internal",
    "attachable",
    "enable_ipv6",
    "enable_ipv4",
    "ipam",
    "labels",
];
pub const IPAM_KEYS: &[&str] = &["driver", "config", "options"];
pub const IPAM_POOL_KEYS: &[&str] = &["subnet", "ip_range", "gateway", "aux_addresses"];
pub const VOLUME_KEYS: &[&str] = &["name", "driver", "driver_opts", "external", "labels"];
pub const SECRET_KEYS: &[&str] = &["name", "file", "environment", "external", "labels"];
pub const SECRET_REFUSED: &[&str] = &["driver", "driver_opts", "template_driver"];
pub const CONFIG_KEYS: &[&str] = &[
    "name",
    "file",
    "environment",
    "content",
    "external",
    "labels",
];
pub const CONFIG_REFUSED: &[&str] = &["template_driver"];

/// Reads one mapping, tracking which keys were consumed.
struct Fields<'a> {
    entries: &'a [(Key, Node)],
    used: Vec<bool>,
    path: String,
    known: &'static [&'static str],
}

impl<'a> Fields<'a> {
    fn open(
        node: &'a Node,
        path: &str,
        known: &'static [&'static str],
        refused: &'static [&'static str],
    ) -> Result<Self> {
        static EMPTY: &[(Key, Node)] = &[];
        let entries: &'a [(Key, Node)] = match &node.value {
            Value::Map(e) => e,
            Value::Null => EMPTY,
            _ => {
                return Err(LoadError::wrong_type(
                    &node.mark,
                    path,
                    "a mapping",
                    node.kind(),
                ))
            }
        };
        for (k, _) in entries {
            if refused.contains(&k.name.as_str()) {
                return Err(LoadError::Unsupported {
                    at: At::new(&k.mark, error::child(path, &k.name)),
                    key: k.name.clone(),
                });
            }
        }
        Ok(Fields {
            entries,
            used: vec![false; entries.len()],
            path: path.to_string(),
            known,
        })
    }

    /// The value of `key`, `None` when absent or null.
    fn take(&mut self, key: &str) -> Option<&'a Node> {
        let i = self.entries.iter().position(|(k, _)| k.name == key)?;
        self.used[i] = true;
        let n = &self.entries[i].1;
        (!n.is_null()).then_some(n)
    }

    fn path(&self, key: &str) -> String {
        error::child(&self.path, key)
    }

    fn finish(self) -> Result<()> {
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if self.used[i] || k.name.starts_with("x-") {
                continue;
            }
            let suggestion = self
                .known
                .iter()
                .map(|c| (strsim::levenshtein(&k.name, c), *c))
                .filter(|(d, _)| *d <= 2.max(k.name.len() / 3))
                .min()
                .map(|(_, c)| c.to_string());
            return Err(LoadError::UnknownKey {
                at: At::new(&k.mark, self.path(&k.name)),
                key: k.name.clone(),
                suggestion,
            });
        }
        Ok(())
    }

    fn string(&mut self, key: &str) -> Result<Option<String>> {
        let path = self.path(key);
        self.take(key).map(|n| string(n, &path)).transpose()
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>> {
        let path = self.path(key);
        self.take(key).map(|n| boolean(n, &path)).transpose()
    }

    fn int(&mut self, key: &str) -> Result<Option<i64>> {
        let path = self.path(key);
        self.take(key).map(|n| int(n, &path)).transpose()
    }

    fn duration(&mut self, key: &str) -> Result<Option<Duration>> {
        let path = self.path(key);
        self.take(key).map(|n| duration(n, &path)).transpose()
    }

    fn bytes(&mut self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key);
        self.take(key).map(|n| bytes(n, &path)).transpose()
    }

    fn list(&mut self, key: &str) -> Result<Vec<String>> {
        let path = self.path(key);
        self.take(key)
            .map(|n| string_list(n, &path, false))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    fn string_or_list(&mut self, key: &str) -> Result<Vec<String>> {
        let path = self.path(key);
        self.take(key)
            .map(|n| string_list(n, &path, true))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    fn dict(&mut self, key: &str) -> Result<BTreeMap<String, String>> {
        let path = self.path(key);
        let Some(n) = self.take(key) else {
            return Ok(BTreeMap::new());
        };
        Ok(list_or_dict(n, &path)?
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect())
    }
}

// ---- scalar decoders --------------------------------------------------------------------

fn string(n: &Node, path: &str) -> Result<String> {
    match &n.value {
        Value::Str(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        Value::Float(x) => Ok(x.to_string()),
        _ => Err(LoadError::wrong_type(&n.mark, path, "a string", n.kind())),
    }
}

fn boolean(n: &Node, path: &str) -> Result<bool> {
    match &n.value {
        Value::Bool(b) => Ok(*b),
        // Interpolated values arrive as strings; compose-go casts them like this.
        Value::Str(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" | "1" => Ok(true),
            "false" | "no" | "n" | "off" | "0" => Ok(false),
            _ => Err(LoadError::invalid(
                &n.mark,
                path,
                "boolean",
                s,
                "expected true or false",
            )),
        },
        _ => Err(LoadError::wrong_type(&n.mark, path, "a boolean", n.kind())),
    }
}

fn int(n: &Node, path: &str) -> Result<i64> {
    match &n.value {
        Value::Int(i) => Ok(*i),
        Value::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| LoadError::invalid(&n.mark, path, "integer", s, "not a whole number")),
        _ => Err(LoadError::wrong_type(&n.mark, path, "an integer", n.kind())),
    }
}

fn unsigned<T: TryFrom<i64>>(n: &Node, path: &str) -> Result<T> {
    let i = int(n, path)?;
    T::try_from(i)
        .map_err(|_| LoadError::invalid(&n.mark, path, "number", i.to_string(), "out of range"))
}

fn float(n: &Node, path: &str) -> Result<f64> {
    match &n.value {
        Value::Int(i) => Ok(*i as f64),
        Value::Float(x) if x.is_finite() => Ok(*x),
        Value::Str(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| LoadError::invalid(&n.mark, path, "number", s, "not a number")),
        _ => Err(LoadError::wrong_type(&n.mark, path, "a number", n.kind())),
    }
}

/// Go duration syntax (`1m30s`, `500ms`, `1.5h`), units ns/us/µs/ms/s/m/h.
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, &'static str> {
    let s = s.trim();
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration");
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if num_len == 0 {
            return Err("expected a number followed by a unit (ns, us, ms, s, m, h)");
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| "bad number")?;
        rest = &rest[num_len..];
        let unit_len = rest
            .bytes()
            .take_while(|b| !(b.is_ascii_digit() || *b == b'.'))
            .count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err("missing unit (ns, us, ms, s, m, h)"),
            _ => return Err("unknown unit (use ns, us, ms, s, m, h)"),
        };
        total += value * nanos;
    }
    if total > u64::MAX as f64 {
        return Err("too large");
    }
    Ok(std::time::Duration::from_nanos(total.round() as u64))
}

fn duration(n: &Node, path: &str) -> Result<Duration> {
    let text = match &n.value {
        Value::Str(s) => s.clone(),
        _ => {
            return Err(LoadError::wrong_type(
                &n.mark,
                path,
                "a duration string",
                n.kind(),
            ))
        }
    };
    parse_duration(&text)
        .map(Duration)
        .map_err(|reason| LoadError::invalid(&n.mark, path, "duration", text, reason))
}

/// Byte sizes: a plain number of bytes or `<n>[b|k|kb|m|mb|g|gb|t|tb]` (case-insensitive,
/// base 1024 like docker's `RAMInBytes`).
pub fn parse_bytes(s: &str) -> std::result::Result<u64, &'static str> {
    let s = s.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| "expected a number with an optional unit (b, k, m, g, t)")?;
    let mult: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err("unknown unit (use b, k, m, g, t)"),
    };
    let bytes = value * mult;
    if !(0.0..=u64::MAX as f64).contains(&bytes) {
        return Err("out of range");
    }
    Ok(bytes as u64)
}

fn bytes(n: &Node, path: &str) -> Result<u64> {
    match &n.value {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        Value::Str(s) => {
            parse_bytes(s).map_err(|reason| LoadError::invalid(&n.mark, path, "size", s, reason))
        }
        Value::Int(i) => Err(LoadError::invalid(
            &n.mark,
            path,
            "size",
            i.to_string(),
            "must not be negative",
        )),
        _ => Err(LoadError::wrong_type(&n.mark, path, "a size", n.kind())),
    }
}

fn string_list(n: &Node, path: &str, allow_single: bool) -> Result<Vec<String>> {
    match &n.value {
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| string(item, &error::index(path, i)))
            .collect(),
        Value::Str(s) if allow_single => Ok(vec![s.clone()]),
        _ => Err(LoadError::wrong_type(
            &n.mark,
            path,
            if allow_single {
                "a string or a list"
            } else {
                "a list"
            },
            n.kind(),
        )),
    }
}

/// `environment`-like attributes: a map, or a list of `KEY=VALUE` / `KEY`.
fn list_or_dict(n: &Node, path: &str) -> Result<BTreeMap<String, Option<String>>> {
    let mut out = BTreeMap::new();
    match &n.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                let p = error::child(path, &k.name);
                let value = match &v.value {
                    Value::Null => None,
                    Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                        v.scalar_text()
                    }
                    _ => {
                        return Err(LoadError::wrong_type(
                            &v.mark,
                            &p,
                            "a string, number, boolean or null",
                            v.kind(),
                        ))
                    }
                };
                out.insert(k.name.clone(), value);
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let text = string(item, &error::index(path, i))?;
                match text.split_once('=') {
                    Some((k, v)) => out.insert(k.to_string(), Some(v.to_string())),
                    None => out.insert(text, None),
                };
            }
        }
        _ => {
            return Err(LoadError::wrong_type(
                &n.mark,
                path,
                "a mapping or a list",
                n.kind(),
            ))
        }
    }
    Ok(out)
}

fn command(n: &Node, path: &str) -> Result<CommandLine> {
    match &n.value {
        Value::Str(s) => {
            shell_words::split(s)
                .map_err(|e| LoadError::invalid(&n.mark, path, "command", s, e.to_string()))?;
            Ok(CommandLine::Shell(s.clone()))
        }
        Value::Seq(_) => Ok(CommandLine::Exec(string_list(n, path, false)?)),
        _ => Err(LoadError::wrong_type(
            &n.mark,
            path,
            "a string or a list",
            n.kind(),
        )),
    }
}

/// Make a host path absolute against the project directory (`~` → HOME from the env).
fn absolute(dir: &Path, env: &BTreeMap<String, String>, p: &str) -> String {
    let expanded: PathBuf = if p == "~" || p.starts_with("~/") {
        let home = env.get("HOME").map(String::as_str).unwrap_or("/root");
        Path::new(home).join(p.trim_start_matches('~').trim_start_matches('/'))
    } else {
        dir.join(p)
    };
    clean(&expanded).to_string_lossy().into_owned()
}

/// Lexical clean of `.` and `..` components (no symlink resolution: pure code).
fn clean(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

// ---- the project ------------------------------------------------------------------------

/// Decode the merged top-level document (with `include`/`extends` already resolved).
pub fn project(root: &Node, cx: &Context<'_>, spans: &mut Spans) -> Result<Project> {
    let mut f = Fields::open(root, "", TOP_KEYS, TOP_REFUSED)?;
    // `version` is obsolete: accepted and ignored, as docker compose does.
    if f.take("version").is_some() {
        tracing::warn!("the top-level `version` attribute is obsolete, it will be ignored");
    }
    f.take("name"); // already used to pick the project name
    f.take("include"); // already resolved by `include`
    let mut project = Project {
        name: cx.project.clone(),
        working_dir: cx.dir.to_path_buf(),
        compose_files: Vec::new(),
        services: BTreeMap::new(),
        disabled_services: BTreeMap::new(),
        networks: BTreeMap::new(),
        volumes: BTreeMap::new(),
        secrets: BTreeMap::new(),
        configs: BTreeMap::new(),
        environment: cx.env.clone(),
        all_profiles: Vec::new(),
        active_profiles: Vec::new(),
    };
    if let Some(n) = f.take("services") {
        for (k, v) in entries(n, "services")? {
            let path = error::child("services", &k.name);
            let name = ServiceName::new(&k.name)
                .map_err(|r| LoadError::invalid(&k.mark, &path, "service name", &k.name, r))?;
            spans.record(&path, &k.mark);
            let service = service(v, &path, &k.name, cx, spans)?;
            project.services.insert(name, service);
        }
    }
    if let Some(n) = f.take("networks") {
        for (k, v) in entries(n, "networks")? {
            let path = error::child("networks", &k.name);
            let name = NetworkName::new(&k.name)
                .map_err(|r| LoadError::invalid(&k.mark, &path, "network name", &k.name, r))?;
            project
                .networks
                .insert(name, network(v, &path, &k.name, cx)?);
        }
    }
    if let Some(n) = f.take("volumes") {
        for (k, v) in entries(n, "volumes")? {
            let path = error::child("volumes", &k.name);
            let name = VolumeName::new(&k.name)
                .map_err(|r| LoadError::invalid(&k.mark, &path, "volume name", &k.name, r))?;
            project.volumes.insert(name, volume(v, &path, &k.name, cx)?);
        }
    }
    if let Some(n) = f.take("secrets") {
        for (k, v) in entries(n, "secrets")? {
            let path = error::child("secrets", &k.name);
            let name = SecretName::new(&k.name)
                .map_err(|r| LoadError::invalid(&k.mark, &path, "secret name", &k.name, r))?;
            project.secrets.insert(name, secret(v, &path, &k.name, cx)?);
        }
    }
    if let Some(n) = f.take("configs") {
        for (k, v) in entries(n, "configs")? {
            let path = error::child("configs", &k.name);
            let name = ConfigName::new(&k.name)
                .map_err(|r| LoadError::invalid(&k.mark, &path, "config name", &k.name, r))?;
            project.configs.insert(name, config(v, &path, &k.name, cx)?);
        }
    }
    f.finish()?;
    add_default_network(&mut project, cx);
    Ok(project)
}

fn entries<'a>(n: &'a Node, path: &str) -> Result<&'a [(Key, Node)]> {
    match &n.value {
        Value::Map(e) => Ok(e),
        _ => Err(LoadError::wrong_type(&n.mark, path, "a mapping", n.kind())),
    }
}

/// Services with neither `networks` nor `network_mode` join `default`, which exists as
/// `<project>_default` unless declared.
fn add_default_network(project: &mut Project, cx: &Context<'_>) {
    let mut needed = false;
    for s in project.services.values_mut() {
        if s.networks.is_empty() && s.network_mode.is_none() {
            if let Ok(n) = NetworkName::new("default") {
                s.networks.insert(n, None);
            }
            needed = true;
        }
    }
    if needed {
        if let Ok(n) = NetworkName::new("default") {
            project.networks.entry(n).or_insert_with(|| Network {
                name: format!("{}_default", cx.project),
                driver: None,
                driver_opts: BTreeMap::new(),
                external: false,
                internal: false,
                attachable: false,
                enable_ipv6: None,
                enable_ipv4: None,
                ipam: None,
                labels: BTreeMap::new(),
            });
        }
    }
}

fn service(
    n: &Node,
    path: &str,
    name: &str,
    cx: &Context<'_>,
    spans: &mut Spans,
) -> Result<Service> {
    let mut f = Fields::open(n, path, SERVICE_KEYS, SERVICE_REFUSED)?;
    let mut s = Service {
        name: name.to_string(),
        ..Service::default()
    };
    f.take("extends"); // resolved by `extends` before decoding
    s.image = f.string("image")?;
    if let Some(b) = f.take("build") {
        s.build = Some(build(b, &f.path("build"), cx)?);
    }
    s.cap_add = f.list("cap_add")?;
    s.cap_drop = f.list("cap_drop")?;
    s.cgroup_parent = f.string("cgroup_parent")?;
    if let Some(c) = f.take("command") {
        s.command = Some(command(c, &f.path("command"))?);
    }
    if let Some(c) = f.take("entrypoint") {
        s.entrypoint = Some(command(c, &f.path("entrypoint"))?);
    }
    s.container_name = f.string("container_name")?;
    if let Some(c) = f.take("container_name") {
        spans.record(&f.path("container_name"), &c.mark);
        if let Some(cn) = &s.container_name {
            // The engine's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
            let valid = cn.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && cn
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !valid {
                return Err(LoadError::invalid(
                    &c.mark,
                    &f.path("container_name"),
                    "container name",
                    cn,
                    "must start with a letter or digit and contain only letters, digits, `_`, `.` and `-`",
                ));
            }
        }
    }
    s.cpu_shares = f.int("cpu_shares")?;
    if let Some(c) = f.take("cpus") {
        s.cpus = Some(float(c, &f.path("cpus"))?);
    }
    s.dns = f.string_or_list("dns")?;
    s.dns_opt = f.list("dns_opt")?;
    s.dns_search = f.string_or_list("dns_search")?;
    s.domainname = f.string("domainname")?;
    s.expose = f.list("expose")?;
    s.external_links = f.list("external_links")?;
    s.group_add = f.list("group_add")?;
    s.hostname = f.string("hostname")?;
    s.init = f.bool("init")?;
    s.ipc = f.string("ipc")?;
    s.labels = f.dict("labels")?;
    s.mac_address = f.string("mac_address")?;
    if let Some(reserved) = s
        .labels
        .keys()
        .find(|k| k.starts_with("com.docker.compose."))
    {
        let mark = f
            .take("labels")
            .map(|l| l.mark.clone())
            .unwrap_or_else(|| n.mark.clone());
        return Err(LoadError::invalid(
            &mark,
            &f.path("labels"),
            "label",
            reserved,
            "the `com.docker.compose.` prefix is reserved",
        ));
    }
    s.links = f.list("links")?;
    for (i, item) in f
        .take("links")
        .map(seq_items)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        spans.record(&error::index(&f.path("links"), i), &item.mark);
    }
    s.mem_limit = f.bytes("mem_limit")?;
    s.mem_reservation = f.bytes("mem_reservation")?;
    if let Some(m) = f.take("memswap_limit") {
        let p = f.path("memswap_limit");
        s.memswap_limit = Some(match int(m, &p) {
            Ok(-1) => -1,
            _ => i64::try_from(bytes(m, &p)?).unwrap_or(i64::MAX),
        });
    }
    s.network_mode = f.string("network_mode")?;
    if let Some(m) = f.take("network_mode") {
        spans.record(&f.path("network_mode"), &m.mark);
    }
    s.oom_score_adj = f.int("oom_score_adj")?;
    s.pid = f.string("pid")?;
    s.pids_limit = f.int("pids_limit")?;
    s.platform = f.string("platform")?;
    s.privileged = f.bool("privileged")?.unwrap_or(false);
    s.profiles = f.list("profiles")?;
    s.pull_policy = match f.take("pull_policy") {
        Some(p) => Some(pull_policy(p, &f.path("pull_policy"))?),
        None => None,
    };
    s.read_only = f.bool("read_only")?.unwrap_or(false);
    if let Some(r) = f.take("restart") {
        s.restart = restart(r, &f.path("restart"))?;
    }
    if let Some(sc) = f.take("scale") {
        s.scale = Some(unsigned(sc, &f.path("scale"))?);
    }
    s.security_opt = f.list("security_opt")?;
    s.shm_size = f.bytes("shm_size")?;
    s.stdin_open = f.bool("stdin_open")?.unwrap_or(false);
    s.stop_grace_period = f.duration("stop_grace_period")?;
    s.stop_signal = f.string("stop_signal")?;
    s.sysctls = f.dict("sysctls")?;
    s.tmpfs = f.string_or_list("tmpfs")?;
    s.tty = f.bool("tty")?.unwrap_or(false);
    s.user = f.string("user")?;
    s.volumes_from = f.list("volumes_from")?;
    for (i, item) in f
        .take("volumes_from")
        .map(seq_items)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        spans.record(&error::index(&f.path("volumes_from"), i), &item.mark);
    }
    s.working_dir = f.string("working_dir")?;

    // Environment: env_file values first, `environment` wins; value-less keys are taken
    // from the interpolation environment (compose-go's "resolve environment").
    if let Some(e) = f.take("env_file") {
        s.env_file = env_files(e, &f.path("env_file"), cx)?;
    }
    let mut environment: BTreeMap<String, Option<String>> = BTreeMap::new();
    for ef in &s.env_file {
        fold_env_file(
            ef,
            &mut environment,
            cx,
            f.take("env_file"),
            &f.path("env_file"),
        )?;
    }
    if let Some(e) = f.take("environment") {
        for (k, v) in list_or_dict(e, &f.path("environment"))? {
            environment.insert(k, v);
        }
    }
    for (k, v) in environment.iter_mut() {
        if v.is_none() {
            *v = cx.env.get(k).cloned();
        }
    }
    s.environment = environment;

    if let Some(h) = f.take("extra_hosts") {
        s.extra_hosts = extra_hosts(h, &f.path("extra_hosts"))?;
    }
    if let Some(h) = f.take("healthcheck") {
        s.healthcheck = Some(healthcheck(h, &f.path("healthcheck"))?);
    }
    if let Some(l) = f.take("logging") {
        let p = f.path("logging");
        let mut lf = Fields::open(l, &p, LOGGING_KEYS, &[])?;
        let driver = lf.string("driver")?;
        let options = lf.dict("options")?;
        lf.finish()?;
        s.logging = Some(Logging { driver, options });
    }
    if let Some(u) = f.take("ulimits") {
        s.ulimits = ulimits(u, &f.path("ulimits"))?;
    }
    if let Some(d) = f.take("deploy") {
        s.deploy = Some(deploy(d, &f.path("deploy"))?);
    }
    if let Some(p) = f.take("ports") {
        s.ports = ports(p, &f.path("ports"))?;
    }
    if let Some(v) = f.take("volumes") {
        let p = f.path("volumes");
        let items = match &v.value {
            Value::Seq(items) => items,
            _ => return Err(LoadError::wrong_type(&v.mark, &p, "a list", v.kind())),
        };
        for (i, item) in items.iter().enumerate() {
            let ip = error::index(&p, i);
            spans.record(&ip, &item.mark);
            s.volumes.push(mount(item, &ip, cx)?);
        }
    }
    if let Some(d) = f.take("depends_on") {
        s.depends_on = depends_on(d, &f.path("depends_on"), spans)?;
    }
    if let Some(nw) = f.take("networks") {
        s.networks = service_networks(nw, &f.path("networks"), spans)?;
    }
    if let Some(sec) = f.take("secrets") {
        s.secrets = file_refs(sec, &f.path("secrets"), spans, |src| {
            format!("/run/secrets/{src}")
        })?;
    }
    if let Some(c) = f.take("configs") {
        s.configs = file_refs(c, &f.path("configs"), spans, |src| format!("/{src}"))?;
    }
    f.finish()?;
    if s.image.is_none() && s.build.is_none() {
        return Err(LoadError::Conflict {
            at: At::new(&n.mark, path),
            message: format!("service `{name}` has neither an image nor a build context specified"),
        });
    }
    if s.network_mode.is_some() && !s.networks.is_empty() {
        return Err(LoadError::Conflict {
            at: spans.at(&error::child(path, "network_mode"), &n.mark),
            message: "`network_mode` and `networks` cannot be combined".into(),
        });
    }
    Ok(s)
}

fn seq_items(n: &Node) -> Vec<Node> {
    match &n.value {
        Value::Seq(items) => items.clone(),
        _ => Vec::new(),
    }
}

fn restart(n: &Node, path: &str) -> Result<Restart> {
    let s = string(n, path)?;
    let bad = || {
        LoadError::invalid(
            &n.mark,
            path,
            "restart policy",
            &s,
            "expected no, always, on-failure[:max-retries] or unless-stopped",
        )
    };
    match s.as_str() {
        "no" | "" => Ok(Restart::No),
        "always" => Ok(Restart::Always),
        "unless-stopped" => Ok(Restart::UnlessStopped),
        "on-failure" => Ok(Restart::OnFailure(None)),
        other => match other.strip_prefix("on-failure:") {
            Some(num) => num
                .parse()
                .map(|n| Restart::OnFailure(Some(n)))
                .map_err(|_| bad()),
            None => Err(bad()),
        },
    }
}

fn pull_policy(n: &Node, path: &str) -> Result<String> {
    let s = string(n, path)?;
    let ok = matches!(
        s.as_str(),
        "always"
            | "never"
            | "missing"
            | "if_not_present"
            | "build"
            | "daily"
            | "weekly"
            | "refresh"
    ) || s
        .strip_prefix("every_")
        .is_some_and(|d| parse_duration(d).is_ok());
    if !ok {
        return Err(LoadError::invalid(
            &n.mark,
            path,
            "pull policy",
            &s,
            "expected always, never, missing, build, daily, weekly, every_<duration> or refresh",
        ));
    }
    Ok(if s == "if_not_present" {
        "missing".to_string()
    } else {
        s
    })
}

fn build(n: &Node, path: &str, cx: &Context<'_>) -> Result<Build> {
    let resolve_context = |c: &str| {
        if c.contains("://") || c.starts_with("git@") {
            c.to_string()
        } else {
            absolute(cx.dir, cx.env, c)
        }
    };
    if let Value::Str(s) = &n.value {
        return Ok(Build {
            context: resolve_context(s),
            dockerfile: "Dockerfile".into(),
            dockerfile_inline: None,
            args: BTreeMap::new(),
            target: None,
            labels: BTreeMap::new(),
            tags: Vec::new(),
            network: None,
            no_cache: false,
            pull: false,
        });
    }
    let mut f = Fields::open(n, path, BUILD_KEYS, BUILD_REFUSED)?;
    let context = resolve_context(&f.string("context")?.unwrap_or_else(|| ".".into()));
    let b = Build {
        context,
        dockerfile: f
            .string("dockerfile")?
            .unwrap_or_else(|| "Dockerfile".into()),
        dockerfile_inline: f.string("dockerfile_inline")?,
        // Value-less build args come from the interpolation environment, like `environment`.
        args: match f.take("args") {
            Some(a) => list_or_dict(a, &f.path("args"))?
                .into_iter()
                .map(|(k, v)| {
                    let v = v.or_else(|| cx.env.get(&k).cloned());
                    (k, v)
                })
                .collect(),
            None => BTreeMap::new(),
        },
        target: f.string("target")?,
        labels: f.dict("labels")?,
        tags: f.list("tags")?,
        network: f.string("network")?,
        no_cache: f.bool("no_cache")?.unwrap_or(false),
        pull: f.bool("pull")?.unwrap_or(false),
    };
    f.finish()?;
    Ok(b)
}

fn env_files(n: &Node, path: &str, cx: &Context<'_>) -> Result<Vec<EnvFile>> {
    let items: Vec<&Node> = match &n.value {
        Value::Str(_) => vec![n],
        Value::Seq(items) => items.iter().collect(),
        _ => {
            return Err(LoadError::wrong_type(
                &n.mark,
                path,
                "a string or a list",
                n.kind(),
            ))
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = if matches!(n.value, Value::Seq(_)) {
            error::index(path, i)
        } else {
            path.to_string()
        };
        let ef = match &item.value {
            Value::Map(_) => {
                let mut f = Fields::open(item, &p, ENV_FILE_KEYS, &[])?;
                let file = f.string("path")?.ok_or_else(|| {
                    LoadError::invalid(&item.mark, &p, "env_file entry", "", "`path` is required")
                })?;
                let required = f.bool("required")?.unwrap_or(true);
                let format = f.string("format")?;
                if let Some(fmt) = &format {
                    if fmt != "raw" {
                        return Err(LoadError::invalid(
                            &item.mark,
                            &error::child(&p, "format"),
                            "env_file format",
                            fmt,
                            "only `raw` is known",
                        ));
                    }
                }
                f.finish()?;
                EnvFile {
                    path: PathBuf::from(absolute(cx.dir, cx.env, &file)),
                    required,
                    format,
                }
            }
            _ => EnvFile {
                path: PathBuf::from(absolute(cx.dir, cx.env, &string(item, &p)?)),
                required: true,
                format: None,
            },
        };
        out.push(ef);
    }
    Ok(out)
}

fn fold_env_file(
    ef: &EnvFile,
    environment: &mut BTreeMap<String, Option<String>>,
    cx: &Context<'_>,
    node: Option<&Node>,
    path: &str,
) -> Result<()> {
    let text = match std::fs::read_to_string(&ef.path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !ef.required => return Ok(()),
        Err(e) => {
            let mark = node
                .map(|n| n.mark.clone())
                .unwrap_or_else(|| Mark::synthetic(&std::sync::Arc::new(ef.path.clone())));
            return Err(LoadError::invalid(
                &mark,
                path,
                "env_file",
                ef.path.display().to_string(),
                e.to_string(),
            ));
        }
    };
    let env = cx.env;
    let lookup = |k: &str| env.get(k).cloned();
    let pairs = super::dotenv::parse_with(&text, &ef.path, &lookup, ef.format.is_none())?;
    for (k, v) in pairs {
        environment.insert(k, Some(v));
    }
    Ok(())
}

fn extra_hosts(n: &Node, path: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    match &n.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                let p = error::child(path, &k.name);
                let ips = match &v.value {
                    Value::Seq(_) => string_list(v, &p, false)?,
                    _ => vec![string(v, &p)?],
                };
                for ip in ips {
                    out.push(format!("{}={}", k.name, ip));
                }
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let p = error::index(path, i);
                let s = string(item, &p)?;
                let (host, ip) = match s.split_once('=') {
                    Some(pair) => pair,
                    None => s.split_once(':').ok_or_else(|| {
                        LoadError::invalid(
                            &item.mark,
                            &p,
                            "extra host",
                            &s,
                            "expected host=ip or host:ip",
                        )
                    })?,
                };
                out.push(format!("{host}={ip}"));
            }
        }
        _ => {
            return Err(LoadError::wrong_type(
                &n.mark,
                path,
                "a mapping or a list",
                n.kind(),
            ))
        }
    }
    Ok(out)
}

fn healthcheck(n: &Node, path: &str) -> Result<Healthcheck> {
    let mut f = Fields::open(n, path, HEALTHCHECK_KEYS, &[])?;
    let test = match f.take("test") {
        None => Vec::new(),
        Some(t) => {
            let p = f.path("test");
            match &t.value {
                Value::Str(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                Value::Seq(_) => {
                    let v = string_list(t, &p, false)?;
                    match v.first().map(String::as_str) {
                        Some("CMD" | "CMD-SHELL" | "NONE") => v,
                        other => {
                            return Err(LoadError::invalid(
                                &t.mark,
                                &p,
                                "healthcheck test",
                                other.unwrap_or(""),
                                "the list must start with CMD, CMD-SHELL or NONE",
                            ))
                        }
                    }
                }
                _ => {
                    return Err(LoadError::wrong_type(
                        &t.mark,
                        &p,
                        "a string or a list",
                        t.kind(),
                    ))
                }
            }
        }
    };
    let h = Healthcheck {
        test,
        interval: f.duration("interval")?,
        timeout: f.duration("timeout")?,
        retries: match f.take("retries") {
            Some(r) => Some(unsigned(r, &f.path("retries"))?),
            None => None,
        },
        start_period: f.duration("start_period")?,
        start_interval: f.duration("start_interval")?,
        disable: f.bool("disable")?.unwrap_or(false),
    };
    f.finish()?;
    Ok(h)
}

fn ulimits(n: &Node, path: &str) -> Result<BTreeMap<String, Ulimit>> {
    let mut out = BTreeMap::new();
    for (k, v) in entries(n, path)? {
        let p = error::child(path, &k.name);
        let limit = match &v.value {
            Value::Map(_) => {
                let mut f = Fields::open(v, &p, ULIMIT_KEYS, &[])?;
                let soft = f.int("soft")?;
                let hard = f.int("hard")?;
                f.finish()?;
                match (soft, hard) {
                    (Some(soft), Some(hard)) => {
                        if soft > hard {
                            return Err(LoadError::invalid(
                                &v.mark,
                                &p,
                                "ulimit",
                                format!("{soft}:{hard}"),
                                "soft limit exceeds hard limit",
                            ));
                        }
                        Ulimit { soft, hard }
                    }
                    _ => {
                        return Err(LoadError::invalid(
                            &v.mark,
                            &p,
                            "ulimit",
                            "",
                            "both `soft` and `hard` are required",
                        ))
                    }
                }
            }
            _ => {
                let i = int(v, &p)?;
                Ulimit { soft: i, hard: i }
            }
        };
        out.insert(k.name.clone(), limit);
    }
    Ok(out)
}

fn deploy(n: &Node, path: &str) -> Result<Deploy> {
    let mut f = Fields::open(n, path, DEPLOY_KEYS, DEPLOY_REFUSED)?;
    let mut d = Deploy {
        replicas: match f.take("replicas") {
            Some(r) => Some(unsigned(r, &f.path("replicas"))?),
            None => None,
        },
        labels: f.dict("labels")?,
        ..Deploy::default()
    };
    if let Some(r) = f.take("resources") {
        let p = f.path("resources");
        let mut rf = Fields::open(r, &p, RESOURCES_KEYS, &[])?;
        let limits = match rf.take("limits") {
            Some(l) => Some(resource(l, &rf.path("limits"), LIMITS_KEYS, &[])?),
            None => None,
        };
        let reservations = match rf.take("reservations") {
            Some(l) => Some(resource(
                l,
                &rf.path("reservations"),
                RESERVATIONS_KEYS,
                RESERVATIONS_REFUSED,
            )?),
            None => None,
        };
        rf.finish()?;
        d.resources = Some(Resources {
            limits,
            reservations,
        });
    }
    if let Some(r) = f.take("restart_policy") {
        let p = f.path("restart_policy");
        let mut rf = Fields::open(r, &p, RESTART_POLICY_KEYS, &[])?;
        let condition = rf.string("condition")?;
        if let Some(c) = &condition {
            if !matches!(c.as_str(), "none" | "on-failure" | "any") {
                return Err(LoadError::invalid(
                    &r.mark,
                    &rf.path("condition"),
                    "restart condition",
                    c,
                    "expected none, on-failure or any",
                ));
            }
        }
        d.restart_policy = Some(RestartPolicy {
            condition,
            delay: rf.duration("delay")?,
            max_attempts: match rf.take("max_attempts") {
                Some(m) => Some(unsigned(m, &rf.path("max_attempts"))?),
                None => None,
            },
            window: rf.duration("window")?,
        });
        rf.finish()?;
    }
    f.finish()?;
    Ok(d)
}

fn resource(
    n: &Node,
    path: &str,
    keys: &'static [&'static str],
    refused: &'static [&'static str],
) -> Result<ResourceLimit> {
    let mut f = Fields::open(n, path, keys, refused)?;
    let r = ResourceLimit {
        cpus: match f.take("cpus") {
            Some(c) => Some(float(c, &f.path("cpus"))?),
            None => None,
        },
        memory: f.bytes("memory")?,
        pids: if keys.contains(&"pids") {
            f.int("pids")?
        } else {
            None
        },
    };
    f.finish()?;
    Ok(r)
}

// ---- ports ------------------------------------------------------------------------------

fn ports(n: &Node, path: &str) -> Result<Vec<Port>> {
    let items = match &n.value {
        Value::Seq(items) => items,
        _ => return Err(LoadError::wrong_type(&n.mark, path, "a list", n.kind())),
    };
    let mut out: Vec<Port> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = error::index(path, i);
        let parsed = match &item.value {
            Value::Int(_) | Value::Str(_) => {
                let text = string(item, &p)?;
                parse_port(&text)
                    .map_err(|reason| LoadError::invalid(&item.mark, &p, "port", &text, reason))?
            }
            Value::Map(_) => vec![long_port(item, &p)?],
            _ => {
                return Err(LoadError::wrong_type(
                    &item.mark,
                    &p,
                    "a string, a number or a mapping",
                    item.kind(),
                ))
            }
        };
        for port in parsed {
            if !out.contains(&port) {
                out.push(port);
            }
        }
    }
    Ok(out)
}

fn long_port(n: &Node, path: &str) -> Result<Port> {
    let mut f = Fields::open(n, path, PORT_KEYS, &[])?;
    let target_node = f
        .take("target")
        .ok_or_else(|| LoadError::invalid(&n.mark, path, "port", "", "`target` is required"))?;
    let tp = f.path("target");
    let target_text = string(target_node, &tp)?;
    let target = port_number(&target_text)
        .map_err(|r| LoadError::invalid(&target_node.mark, &tp, "port", &target_text, r))?;
    let published = match f.take("published") {
        Some(pn) => {
            let pp = f.path("published");
            let text = string(pn, &pp)?;
            port_range(&text).map_err(|r| LoadError::invalid(&pn.mark, &pp, "port", &text, r))?;
            Some(text)
        }
        None => None,
    };
    let host_ip = f.string("host_ip")?;
    if let Some(ip) = &host_ip {
        ip.parse::<std::net::IpAddr>().map_err(|_| {
            LoadError::invalid(
                &n.mark,
                &f.path("host_ip"),
                "host ip",
                ip,
                "not an IP address",
            )
        })?;
    }
    let protocol = f.string("protocol")?.unwrap_or_else(|| "tcp".into());
    check_protocol(&protocol)
        .map_err(|r| LoadError::invalid(&n.mark, &f.path("protocol"), "protocol", &protocol, r))?;
    let mode = f.string("mode")?.unwrap_or_else(|| "ingress".into());
    if mode != "ingress" && mode != "host" {
        return Err(LoadError::invalid(
            &n.mark,
            &f.path("mode"),
            "port mode",
            &mode,
            "expected ingress or host",
        ));
    }
    let port = Port {
        name: f.string("name")?,
        mode,
        host_ip,
        target,
        published,
        protocol,
        app_protocol: f.string("app_protocol")?,
    };
    f.finish()?;
    Ok(port)
}

fn check_protocol(p: &str) -> std::result::Result<(), &'static str> {
    match p {
        "tcp" | "udp" | "sctp" => Ok(()),
        _ => Err("expected tcp, udp or sctp"),
    }
}

fn port_number(s: &str) -> std::result::Result<u16, &'static str> {
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(_) => Err("port numbers go from 1 to 65535"),
        Err(_) => Err("not a port number"),
    }
}

fn port_range(s: &str) -> std::result::Result<(u16, u16), &'static str> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port_number(a)?, port_number(b)?);
            if a > b {
                return Err("the range ends before it starts");
            }
            Ok((a, b))
        }
        None => {
            let p = port_number(s)?;
            Ok((p, p))
        }
    }
}

/// Short syntax: `[[IP:]HOST:]CONTAINER[/PROTO]` with ranges, IPv6 in brackets.
pub fn parse_port(spec: &str) -> std::result::Result<Vec<Port>, &'static str> {
    let (body, protocol) = match spec.rsplit_once('/') {
        Some((b, p)) => {
            check_protocol(p)?;
            (b, p.to_string())
        }
        None => (spec, "tcp".to_string()),
    };
    let (host_ip, rest) = if let Some(after) = body.strip_prefix('[') {
        let (ip, rest) = after
            .split_once(']')
            .ok_or("unclosed `[` around the IPv6 address")?;
        let rest = rest
            .strip_prefix(':')
            .ok_or("expected `:` after the IPv6 address")?;
        (Some(ip.to_string()), rest)
    } else {
        let parts: Vec<&str> = body.rsplitn(3, ':').collect();
        match parts.len() {
            3 => (Some(parts[2].to_string()), &body[parts[2].len() + 1..]),
            _ => (None, body),
        }
    };
    if let Some(ip) = &host_ip {
        ip.parse::<std::net::IpAddr>()
            .map_err(|_| "the host IP is not an IP address")?;
    }
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (if h.is_empty() { None } else { Some(h) }, c),
        None => (None, rest),
    };
    if container.is_empty() {
        return Err("the container port is missing");
    }
    let (c_start, c_end) = port_range(container)?;
    let host_range = host.map(port_range).transpose()?;
    let make = |target: u16, published: Option<String>| Port {
        name: None,
        mode: "ingress".into(),
        host_ip: host_ip.clone(),
        target,
        published,
        protocol: protocol.clone(),
        app_protocol: None,
    };
    let count = c_end - c_start;
    match host_range {
        None => Ok((c_start..=c_end).map(|t| make(t, None)).collect()),
        Some((h_start, h_end)) if count == 0 => {
            let published = if h_start == h_end {
                h_start.to_string()
            } else {
                format!("{h_start}-{h_end}")
            };
            Ok(vec![make(c_start, Some(published))])
        }
        Some((h_start, h_end)) if h_end - h_start == count => Ok((0..=count)
            .map(|i| make(c_start + i, Some((h_start + i).to_string())))
            .collect()),
        Some(_) => Err("the host and container port ranges have different lengths"),
    }
}

// ---- volumes ----------------------------------------------------------------------------

const MOUNT_MODES: &[&str] = &[
    "ro",
    "rw",
    "z",
    "Z",
    "nocopy",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "consistent",
    "cached",
    "delegated",
];

fn mount(n: &Node, path: &str, cx: &Context<'_>) -> Result<Mount> {
    match &n.value {
        Value::Str(s) => short_mount(s, cx)
            .map_err(|reason| LoadError::invalid(&n.mark, path, "volume", s, reason)),
        Value::Map(_) => long_mount(n, path, cx),
        _ => Err(LoadError::wrong_type(
            &n.mark,
            path,
            "a string or a mapping",
            n.kind(),
        )),
    }
}

fn is_host_path(s: &str) -> bool {
    s.starts_with('.') || s.starts_with('/') || s.starts_with('~')
}

/// A `-v SOURCE:TARGET[:MODE]` flag (`berth run -v`), with relative host paths resolved
/// against `dir`; the same rules as the `volumes:` short syntax.
pub fn parse_short_mount(
    spec: &str,
    project: &ProjectName,
    dir: &Path,
    env: &BTreeMap<String, String>,
) -> std::result::Result<Mount, String> {
    short_mount(spec, &Context { project, dir, env })
}

fn short_mount(spec: &str, cx: &Context<'_>) -> std::result::Result<Mount, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, modes) = match parts.as_slice() {
        [t] => (None, *t, ""),
        [s, t] => (Some(*s), *t, ""),
        [s, t, m] => (Some(*s), *t, *m),
        _ => return Err("expected [SOURCE:]TARGET[:MODE]".into()),
    };
    if !target.starts_with('/') {
        return Err(format!("the container path `{target}` is not absolute"));
    }
    let mut read_only = false;
    let mut propagation = None;
    let mut selinux = None;
    let mut nocopy = false;
    for m in modes.split(',').filter(|m| !m.is_empty()) {
        if !MOUNT_MODES.contains(&m) {
            return Err(format!(
                "unknown mode `{m}` (expected ro, rw, z, Z, nocopy or a propagation)"
            ));
        }
        match m {
            "ro" => read_only = true,
            "z" | "Z" => selinux = Some(m.to_string()),
            "nocopy" => nocopy = true,
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                propagation = Some(m.to_string())
            }
            _ => {}
        }
    }
    let target = clean(Path::new(target)).to_string_lossy().into_owned();
    Ok(match source {
        Some("") => return Err("the source is empty".into()),
        Some(src) if is_host_path(src) => Mount {
            kind: MountType::Bind,
            source: Some(absolute(cx.dir, cx.env, src)),
            target,
            read_only,
            bind: Some(BindOptions {
                propagation,
                create_host_path: true,
                selinux,
            }),
            volume: None,
            tmpfs: None,
        },
        Some(src) => {
            VolumeName::new(src).map_err(|r| format!("volume name `{src}` {r}"))?;
            Mount {
                kind: MountType::Volume,
                source: Some(src.to_string()),
                target,
                read_only,
                bind: None,
                volume: Some(VolumeOptions {
                    nocopy,
                    subpath: None,
                }),
                tmpfs: None,
            }
        }
        None => Mount {
            kind: MountType::Volume,
            source: None,
            target,
            read_only,
            bind: None,
            volume: Some(VolumeOptions::default()),
            tmpfs: None,
        },
    })
}

fn long_mount(n: &Node, path: &str, cx: &Context<'_>) -> Result<Mount> {
    let mut f = Fields::open(n, path, MOUNT_KEYS, MOUNT_REFUSED)?;
    let tp = f.path("type");
    let type_node = f
        .take("type")
        .ok_or_else(|| LoadError::invalid(&n.mark, path, "volume", "", "`type` is required"))?;
    let kind = match string(type_node, &tp)?.as_str() {
        "bind" => MountType::Bind,
        "volume" => MountType::Volume,
        "tmpfs" => MountType::Tmpfs,
        t @ ("image" | "npipe" | "cluster") => {
            return Err(LoadError::Unsupported {
                at: At::new(&type_node.mark, tp),
                key: format!("type: {t}"),
            })
        }
        other => {
            return Err(LoadError::invalid(
                &type_node.mark,
                &tp,
                "volume type",
                other,
                "expected bind, volume or tmpfs",
            ))
        }
    };
    let source = f.string("source")?;
    let target_path = f.path("target");
    let target_node = f
        .take("target")
        .ok_or_else(|| LoadError::invalid(&n.mark, path, "volume", "", "`target` is required"))?;
    let target = string(target_node, &target_path)?;
    if !target.starts_with('/') {
        return Err(LoadError::invalid(
            &target_node.mark,
            &target_path,
            "container path",
            &target,
            "not absolute",
        ));
    }
    let target = clean(Path::new(&target)).to_string_lossy().into_owned();
    let read_only = f.bool("read_only")?.unwrap_or(false);
    let mut m = Mount {
        kind,
        source: None,
        target,
        read_only,
        bind: None,
        volume: None,
        tmpfs: None,
    };
    match kind {
        MountType::Bind => {
            let src = source.ok_or_else(|| {
                LoadError::invalid(&n.mark, path, "bind mount", "", "`source` is required")
            })?;
            m.source = Some(absolute(cx.dir, cx.env, &src));
            let mut opts = BindOptions {
                propagation: None,
                create_host_path: false,
                selinux: None,
            };
            if let Some(b) = f.take("bind") {
                let mut bf = Fields::open(b, &f.path("bind"), BIND_KEYS, BIND_REFUSED)?;
                opts.propagation = bf.string("propagation")?;
                opts.create_host_path = bf.bool("create_host_path")?.unwrap_or(false);
                opts.selinux = bf.string("selinux")?;
                bf.finish()?;
            }
            m.bind = Some(opts);
        }
        MountType::Volume => {
            if let Some(src) = &source {
                VolumeName::new(src).map_err(|r| {
                    LoadError::invalid(&n.mark, &f.path("source"), "volume name", src, r)
                })?;
            }
            m.source = source;
            let mut opts = VolumeOptions::default();
            if let Some(v) = f.take("volume") {
                let mut vf =
                    Fields::open(v, &f.path("volume"), VOLUME_OPT_KEYS, VOLUME_OPT_REFUSED)?;
                opts.nocopy = vf.bool("nocopy")?.unwrap_or(false);
                opts.subpath = vf.string("subpath")?;
                vf.finish()?;
            }
            m.volume = Some(opts);
        }
        MountType::Tmpfs => {
            if source.is_some() {
                return Err(LoadError::invalid(
                    &n.mark,
                    &f.path("source"),
                    "tmpfs mount",
                    "",
                    "a tmpfs mount takes no source",
                ));
            }
            let mut opts = TmpfsOptions::default();
            if let Some(t) = f.take("tmpfs") {
                let mut tf = Fields::open(t, &f.path("tmpfs"), TMPFS_KEYS, &[])?;
                opts.size = tf.bytes("size")?;
                opts.mode = match tf.take("mode") {
                    Some(mn) => Some(file_mode(mn, &tf.path("mode"))?),
                    None => None,
                };
                tf.finish()?;
            }
            m.tmpfs = Some(opts);
        }
    }
    for (key, ok) in [
        ("bind", kind == MountType::Bind),
        ("volume", kind == MountType::Volume),
        ("tmpfs", kind == MountType::Tmpfs),
    ] {
        if let Some(other) = f.take(key) {
            if !ok {
                return Err(LoadError::invalid(
                    &other.mark,
                    &f.path(key),
                    "volume",
                    key,
                    "these options do not match the mount type",
                ));
            }
        }
    }
    f.finish()?;
    Ok(m)
}

// ---- references -------------------------------------------------------------------------

fn depends_on(
    n: &Node,
    path: &str,
    spans: &mut Spans,
) -> Result<BTreeMap<ServiceName, Dependency>> {
    let mut out = BTreeMap::new();
    let mut add = |name: &str, mark: &Mark, dep: Dependency, spans: &mut Spans| -> Result<()> {
        let p = error::child(path, name);
        let sn = ServiceName::new(name)
            .map_err(|r| LoadError::invalid(mark, &p, "service name", name, r))?;
        spans.record(&p, mark);
        out.insert(sn, dep);
        Ok(())
    };
    let started = || Dependency {
        condition: Condition::ServiceStarted,
        restart: false,
        required: true,
    };
    match &n.value {
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let name = string(item, &error::index(path, i))?;
                add(&name, &item.mark, started(), spans)?;
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries {
                let p = error::child(path, &k.name);
                let mut f = Fields::open(v, &p, DEPENDS_KEYS, &[])?;
                let condition = match f.string("condition")?.as_deref() {
                    None | Some("service_started") => Condition::ServiceStarted,
                    Some("service_healthy") => Condition::ServiceHealthy,
                    Some("service_completed_successfully") => Condition::ServiceCompletedSuccessfully,
                    Some(other) => {
                        return Err(LoadError::invalid(&v.mark, &f.path("condition"), "condition", other, "expected service_started, service_healthy or service_completed_successfully"))
                    }
                };
                let dep = Dependency {
                    condition,
                    restart: f.bool("restart")?.unwrap_or(false),
                    required: f.bool("required")?.unwrap_or(true),
                };
                f.finish()?;
                add(&k.name, &k.mark, dep, spans)?;
            }
        }
        _ => {
            return Err(LoadError::wrong_type(
                &n.mark,
                path,
                "a list or a mapping",
                n.kind(),
            ))
        }
    }
    Ok(out)
}

fn service_networks(
    n: &Node,
    path: &str,
    spans: &mut Spans,
) -> Result<BTreeMap<NetworkName, Option<ServiceNetwork>>> {
    let mut out = BTreeMap::new();
    let named = |name: &str, mark: &Mark, p: &str| {
        NetworkName::new(name).map_err(|r| LoadError::invalid(mark, p, "network name", name, r))
    };
    match &n.value {
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let name = string(item, &error::index(path, i))?;
                let p = error::child(path, &name);
                spans.record(&p, &item.mark);
                out.insert(named(&name, &item.mark, &p)?, None);
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries {
                let p = error::child(path, &k.name);
                spans.record(&p, &k.mark);
                let cfg = if v.is_null() {
                    None
                } else {
                    let mut f = Fields::open(v, &p, SERVICE_NETWORK_KEYS, SERVICE_NETWORK_REFUSED)?;
                    let sn = ServiceNetwork {
                        aliases: f.list("aliases")?,
                        ipv4_address: f.string("ipv4_address")?,
                        ipv6_address: f.string("ipv6_address")?,
                        mac_address: f.string("mac_address")?,
                        interface_name: f.string("interface_name")?,
                        priority: f.int("priority")?,
                        gw_priority: f.int("gw_priority")?,
                    };
                    if let Some(ip) = &sn.ipv4_address {
                        ip.parse::<std::net::Ipv4Addr>().map_err(|_| {
                            LoadError::invalid(
                                &v.mark,
                                &error::child(&p, "ipv4_address"),
                                "ipv4 address",
                                ip,
                                "not an IPv4 address",
                            )
                        })?;
                    }
                    f.finish()?;
                    (sn != ServiceNetwork::default()).then_some(sn)
                };
                out.insert(named(&k.name, &k.mark, &p)?, cfg);
            }
        }
        _ => {
            return Err(LoadError::wrong_type(
                &n.mark,
                path,
                "a list or a mapping",
                n.kind(),
            ))
        }
    }
    Ok(out)
}

fn file_refs(
    n: &Node,
    path: &str,
    spans: &mut Spans,
    default_target: fn(&str) -> String,
) -> Result<Vec<FileReference>> {
    let items = match &n.value {
        Value::Seq(items) => items,
        _ => return Err(LoadError::wrong_type(&n.mark, path, "a list", n.kind())),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = error::index(path, i);
        spans.record(&p, &item.mark);
        let r = match &item.value {
            Value::Str(s) => FileReference {
                source: s.clone(),
                target: default_target(s),
                uid: None,
                gid: None,
                mode: None,
            },
            Value::Map(_) => {
                let mut f = Fields::open(item, &p, FILE_REF_KEYS, &[])?;
                let source = f.string("source")?.ok_or_else(|| {
                    LoadError::invalid(&item.mark, &p, "reference", "", "`source` is required")
                })?;
                let target = match f.string("target")? {
                    Some(t) if t.starts_with('/') => t,
                    // A relative secret target lives under /run/secrets/ (compose spec).
                    Some(t) => default_target(&t),
                    None => default_target(&source),
                };
                let mode = match f.take("mode") {
                    Some(m) => Some(file_mode(m, &f.path("mode"))?),
                    None => None,
                };
                let r = FileReference {
                    source,
                    target,
                    uid: f.string("uid")?,
                    gid: f.string("gid")?,
                    mode,
                };
                f.finish()?;
                r
            }
            _ => {
                return Err(LoadError::wrong_type(
                    &item.mark,
                    &p,
                    "a string or a mapping",
                    item.kind(),
                ))
            }
        };
        out.push(r);
    }
    Ok(out)
}

/// A file mode: YAML integers are taken as written in octal when they look octal-ish
/// (`0440` parses as decimal 440 in YAML 1.2), strings are parsed as octal.
fn file_mode(n: &Node, path: &str) -> Result<u32> {
    let text = match &n.value {
        Value::Int(i) => i.to_string(),
        Value::Str(s) => s.trim_start_matches("0o").to_string(),
        _ => {
            return Err(LoadError::wrong_type(
                &n.mark,
                path,
                "a file mode",
                n.kind(),
            ))
        }
    };
    u32::from_str_radix(&text, 8)
        .map_err(|_| LoadError::invalid(&n.mark, path, "file mode", text, "expected octal digits"))
}

// ---- top-level resources ----------------------------------------------------------------

fn resource_name(explicit: Option<String>, external: bool, key: &str, cx: &Context<'_>) -> String {
    match explicit {
        Some(n) => n,
        None if external => key.to_string(),
        None => format!("{}_{key}", cx.project),
    }
}

fn check_external_alone(
    f: &Fields<'_>,
    node: &Node,
    path: &str,
    external: bool,
    allowed: &[&str],
) -> Result<()> {
    if !external {
        return Ok(());
    }
    for (k, v) in f.entries {
        if !allowed.contains(&k.name.as_str()) && !k.name.starts_with("x-") && !v.is_null() {
            return Err(LoadError::Conflict {
                at: At::new(&k.mark, error::child(path, &k.name)),
                message: format!("`{}` cannot be set on an external resource", k.name),
            });
        }
    }
    let _ = node;
    Ok(())
}

fn network(n: &Node, path: &str, key: &str, cx: &Context<'_>) -> Result<Network> {
    let mut f = Fields::open(n, path, NETWORK_KEYS, &[])?;
    let external = f.bool("external")?.unwrap_or(false);
    check_external_alone(&f, n, path, external, &["external", "name"])?;
    let name = resource_name(f.string("name")?, external, key, cx);
    let ipam = match f.take("ipam") {
        None => None,
        Some(i) => {
            let p = f.path("ipam");
            let mut inf = Fields::open(i, &p, IPAM_KEYS, &[])?;
            let driver = inf.string("driver")?;
            let mut config = Vec::new();
            if let Some(c) = inf.take("config") {
                let cp = inf.path("config");
                let items = match &c.value {
                    Value::Seq(items) => items,
                    _ => return Err(LoadError::wrong_type(&c.mark, &cp, "a list", c.kind())),
                };
                for (idx, item) in items.iter().enumerate() {
                    let ip = error::index(&cp, idx);
                    let mut pf = Fields::open(item, &ip, IPAM_POOL_KEYS, &[])?;
                    let pool = IpamPool {
                        subnet: pf.string("subnet")?,
                        ip_range: pf.string("ip_range")?,
                        gateway: pf.string("gateway")?,
                        aux_addresses: pf.dict("aux_addresses")?,
                    };
                    if let Some(s) = &pool.subnet {
                        check_cidr(s).map_err(|r| {
                            LoadError::invalid(
                                &item.mark,
                                &error::child(&ip, "subnet"),
                                "subnet",
                                s,
                                r,
                            )
                        })?;
                    }
                    pf.finish()?;
                    config.push(pool);
                }
            }
            let options = inf.dict("options")?;
            inf.finish()?;
            Some(Ipam {
                driver,
                config,
                options,
            })
        }
    };
    let net = Network {
        name,
        driver: f.string("driver")?,
        driver_opts: f.dict("driver_opts")?,
        external,
        internal: f.bool("internal")?.unwrap_or(false),
        attachable: f.bool("attachable")?.unwrap_or(false),
        enable_ipv6: f.bool("enable_ipv6")?,
        enable_ipv4: f.bool("enable_ipv4")?,
        ipam,
        labels: f.dict("labels")?,
    };
    f.finish()?;
    Ok(net)
}

fn check_cidr(s: &str) -> std::result::Result<(), &'static str> {
    let (addr, len) = s.split_once('/').ok_or("expected ADDRESS/PREFIX")?;
    let addr: std::net::IpAddr = addr.parse().map_err(|_| "not an IP address")?;
    let len: u8 = len.parse().map_err(|_| "bad prefix length")?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err("prefix length too long");
    }
    Ok(())
}

fn volume(n: &Node, path: &str, key: &str, cx: &Context<'_>) -> Result<Volume> {
    let mut f = Fields::open(n, path, VOLUME_KEYS, &[])?;
    let external = f.bool("external")?.unwrap_or(false);
    check_external_alone(&f, n, path, external, &["external", "name"])?;
    let v = Volume {
        name: resource_name(f.string("name")?, external, key, cx),
        driver: f.string("driver")?,
        driver_opts: f.dict("driver_opts")?,
        external,
        labels: f.dict("labels")?,
    };
    f.finish()?;
    Ok(v)
}

fn secret(n: &Node, path: &str, key: &str, cx: &Context<'_>) -> Result<Secret> {
    let mut f = Fields::open(n, path, SECRET_KEYS, SECRET_REFUSED)?;
    let external = f.bool("external")?.unwrap_or(false);
    let file = f.string("file")?.map(|p| absolute(cx.dir, cx.env, &p));
    let environment = f.string("environment")?;
    let sources =
        usize::from(file.is_some()) + usize::from(environment.is_some()) + usize::from(external);
    if sources != 1 {
        return Err(LoadError::Conflict {
            at: At::new(&n.mark, path),
            message: format!(
                "secret `{key}` needs exactly one of `file`, `environment` or `external`"
            ),
        });
    }
    let s = Secret {
        name: resource_name(f.string("name")?, external, key, cx),
        file,
        environment,
        external,
        labels: f.dict("labels")?,
    };
    f.finish()?;
    Ok(s)
}

fn config(n: &Node, path: &str, key: &str, cx: &Context<'_>) -> Result<Config> {
    let mut f = Fields::open(n, path, CONFIG_KEYS, CONFIG_REFUSED)?;
    let external = f.bool("external")?.unwrap_or(false);
    let file = f.string("file")?.map(|p| absolute(cx.dir, cx.env, &p));
    let environment = f.string("environment")?;
    let content = f.string("content")?;
    let sources = usize::from(file.is_some())
        + usize::from(environment.is_some())
        + usize::from(content.is_some())
        + usize::from(external);
    if sources != 1 {
        return Err(LoadError::Conflict {
            at: At::new(&n.mark, path),
            message: format!("config `{key}` needs exactly one of `file`, `environment`, `content` or `external`"),
        });
    }
    let c = Config {
        name: resource_name(f.string("name")?, external, key, cx),
        file,
        environment,
        content,
        external,
        labels: f.dict("labels")?,
    };
    f.finish()?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ports() {
        let p = parse_port("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (
                p[0].host_ip.as_deref(),
                p[0].published.as_deref(),
                p[0].target,
                p[0].protocol.as_str()
            ),
            (Some("127.0.0.1"), Some("8080"), 80, "udp")
        );
        let p = parse_port("9000-9002:8000-8002").unwrap();
        assert_eq!(
            p.iter()
                .map(|p| (p.target, p.published.clone().unwrap()))
                .collect::<Vec<_>>(),
            vec![
                (8000, "9000".into()),
                (8001, "9001".into()),
                (8002, "9002".into())
            ]
        );
        let p = parse_port("[::1]:80:8080").unwrap();
        assert_eq!((p[0].host_ip.as_deref(), p[0].target), (Some("::1"), 8080));
        let p = parse_port("127.0.0.1::80").unwrap();
        assert_eq!(p[0].published, None);
        assert_eq!(parse_port("3000-3001").unwrap().len(), 2);
        assert_eq!(
            parse_port("9000-9010:80").unwrap()[0].published.as_deref(),
            Some("9000-9010")
        );
        assert!(parse_port("80:80/xyz").is_err());
        assert!(parse_port("70000").is_err());
        assert!(parse_port("1-3:1-2").is_err());
        assert!(parse_port("a:b").is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            parse_duration("1m30s").unwrap(),
            std::time::Duration::from_secs(90)
        );
        assert_eq!(
            parse_duration("1.5s").unwrap(),
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(
            parse_duration("100ms").unwrap(),
            std::time::Duration::from_millis(100)
        );
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5x").is_err());
        assert_eq!(parse_bytes("512m").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("12q").is_err());
    }
}
