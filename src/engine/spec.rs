//! `Service` + image + network attachment → `berth_runtime::ContainerSpec`.
//!
//! The one place where compose semantics meet the runtime's vocabulary: entrypoint/command
//! merging with the image's, environment layering, users, limits, capabilities, mounts,
//! labels like compose's. Pure: every path it needs (rw layer, generated files, volume
//! data dirs, netns) is decided by the caller and passed in. Neighbours: `engine::lifecycle`
//! (caller), `project::model` (input), `image::store::Image` (input), `berth_runtime::spec`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use berth_runtime::{
    ContainerId, ContainerSpec, Limits, LogConfig, Mount, Network, Rlimit, Rootfs,
};

use crate::image::store::Image;
use crate::project::model::{CommandLine, Service};

/// Compose's label keys, so tools that read them keep working.
pub mod labels {
    pub const PROJECT: &str = "com.docker.compose.project";
    pub const SERVICE: &str = "com.docker.compose.service";
    pub const NUMBER: &str = "com.docker.compose.container-number";
    pub const ONEOFF: &str = "com.docker.compose.oneoff";
    pub const CONFIG_HASH: &str = "com.docker.compose.config-hash";
    pub const WORKING_DIR: &str = "com.docker.compose.project.working_dir";
    pub const CONFIG_FILES: &str = "com.docker.compose.project.config_files";
    pub const IMAGE: &str = "com.docker.compose.image";
    /// compose's `service:condition:restart,…` list of what the service depends on
    /// (`down` stops dependents before what they depend on).
    pub const DEPENDS_ON: &str = "com.docker.compose.depends_on";
}

/// Spec-building errors (bad input the loader could not see: it needs the image).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("service {service}: no command: neither the service nor image {image} sets an entrypoint or command")]
    NoCommand { service: String, image: String },
    #[error("service {service}: invalid container name {name:?}")]
    BadName { service: String, name: String },
    #[error("service {service}: invalid ulimit {name}: {detail}")]
    BadUlimit {
        service: String,
        name: String,
        detail: String,
    },
}

/// Everything about one container that is not in the service definition.
#[derive(Debug, Clone)]
pub struct Placement {
    pub project: String,
    pub container: String,
    pub number: u32,
    pub config_hash: String,
    pub working_dir: PathBuf,
    pub config_files: Vec<PathBuf>,
    /// The container's writable layer: `upper` and `work` are created by the caller.
    pub rw_dir: PathBuf,
    /// A `run` one-off (label `com.docker.compose.oneoff=True`).
    pub oneoff: bool,
    /// A client attaches right after the start (`run` in the foreground): the shim waits
    /// for it, and a tty starts at the size of berth's terminal.
    pub attach: bool,
    /// The JSON-lines log file, outside the runtime's state dir so that it outlives a
    /// restart (stop + start) like Docker's; `None`: the runtime's default.
    pub log_path: Option<PathBuf>,
    /// Pinned network namespace to join; `None` = the runtime makes an empty one.
    pub netns: Option<PathBuf>,
    /// Generated `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname` to bind in.
    pub etc_files: Vec<(PathBuf, &'static str)>,
    /// Resolved volume, bind and tmpfs mounts.
    pub mounts: Vec<Mount>,
}

fn argv(c: &CommandLine) -> Vec<String> {
    c.argv()
}

/// Docker's rule for the process to run: a service `entrypoint` replaces the image's
/// entrypoint *and* drops the image's `Cmd`; a service `command` replaces `Cmd`.
pub fn process_args(service: &Service, image: &Image) -> Vec<String> {
    let cfg = &image.config.config;
    match &service.entrypoint {
        Some(ep) => {
            let mut a = argv(ep);
            if let Some(c) = &service.command {
                a.extend(argv(c));
            }
            a
        }
        None => {
            let mut a = cfg.entrypoint.clone().unwrap_or_default();
            match &service.command {
                Some(c) => a.extend(argv(c)),
                None => a.extend(cfg.cmd.clone().unwrap_or_default()),
            }
            a
        }
    }
}

/// The image's environment overlaid with the service's (service wins, order kept).
pub fn environment(service: &Service, image: &Image) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        if let Some(e) = env.iter_mut().find(|(ek, _)| ek == k) {
            e.1 = v.to_string();
        } else {
            env.push((k.to_string(), v.to_string()));
        }
    };
    for kv in image.config.config.env.iter().flatten() {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k, v);
    }
    for (k, v) in &service.environment {
        if let Some(v) = v {
            set(k, v);
        }
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// compose's value of the `depends_on` label: `db:service_healthy:false,…`.
pub fn depends_on_label(service: &Service) -> String {
    use crate::project::model::Condition as C;
    service
        .depends_on
        .iter()
        .map(|(name, d)| {
            let cond = match d.condition {
                C::ServiceStarted => "service_started",
                C::ServiceHealthy => "service_healthy",
                C::ServiceCompletedSuccessfully => "service_completed_successfully",
            };
            format!("{}:{cond}:{}", name.as_str(), d.restart)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The services named by a `depends_on` label.
pub fn depends_on_services(label: &str) -> Vec<String> {
    label
        .split(',')
        .filter_map(|e| e.split(':').next())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Build the runtime spec of one container.
pub fn container_spec(
    service: &Service,
    image: &Image,
    p: &Placement,
) -> Result<ContainerSpec, SpecError> {
    let id = ContainerId::new(p.container.clone()).map_err(|_| SpecError::BadName {
        service: service.name.clone(),
        name: p.container.clone(),
    })?;
    let args = process_args(service, image);
    if args.is_empty() {
        return Err(SpecError::NoCommand {
            service: service.name.clone(),
            image: service.image.clone().unwrap_or_default(),
        });
    }
    let cfg = &image.config.config;

    let mut labels: BTreeMap<String, String> = cfg.labels.clone().unwrap_or_default();
    labels.extend(service.labels.clone());
    labels.insert(labels::PROJECT.into(), p.project.clone());
    labels.insert(labels::SERVICE.into(), service.name.clone());
    labels.insert(labels::NUMBER.into(), p.number.to_string());
    labels.insert(
        labels::ONEOFF.into(),
        if p.oneoff { "True" } else { "False" }.into(),
    );
    labels.insert(labels::CONFIG_HASH.into(), p.config_hash.clone());
    labels.insert(
        labels::WORKING_DIR.into(),
        p.working_dir.display().to_string(),
    );
    labels.insert(
        labels::CONFIG_FILES.into(),
        p.config_files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    labels.insert(
        labels::IMAGE.into(),
        service.image.clone().unwrap_or_default(),
    );
    labels.insert(labels::DEPENDS_ON.into(), depends_on_label(service));

    let mut mounts: Vec<Mount> = p
        .etc_files
        .iter()
        .map(|(src, target)| Mount::Bind {
            source: src.clone(),
            target: PathBuf::from(target),
            read_only: false,
        })
        .collect();
    mounts.extend(p.mounts.iter().cloned());
    for t in &service.tmpfs {
        // `tmpfs: /run` or `/run:size=64m`: the options part is not modelled yet.
        let target = t.split(':').next().unwrap_or(t);
        mounts.push(Mount::Tmpfs {
            target: PathBuf::from(target),
            size: None,
            mode: None,
        });
    }

    let mut rlimits = Vec::new();
    for (name, u) in &service.ulimits {
        let (soft, hard) = (u.soft, u.hard);
        if soft < 0 || hard < 0 || soft > hard {
            return Err(SpecError::BadUlimit {
                service: service.name.clone(),
                name: name.clone(),
                detail: format!("soft {soft} / hard {hard}"),
            });
        }
        rlimits.push(Rlimit {
            name: name.clone(),
            soft: soft as u64,
            hard: hard as u64,
        });
    }

    let limits = Limits {
        memory: service.mem_limit,
        memory_reservation: service.mem_reservation,
        memory_swap: service.memswap_limit,
        cpus: service.cpus,
        cpu_shares: service.cpu_shares.and_then(|s| u64::try_from(s).ok()),
        pids: service.pids_limit,
    };

    let no_new_privileges = service.security_opt.iter().any(|o| {
        o == "no-new-privileges" || o == "no-new-privileges:true" || o == "no-new-privileges=true"
    });
    let seccomp_unconfined = service
        .security_opt
        .iter()
        .any(|o| o == "seccomp=unconfined" || o == "seccomp:unconfined");

    Ok(ContainerSpec {
        id,
        rootfs: Rootfs::Overlay {
            lower: image.layers.clone(),
            upper: p.rw_dir.join("upper"),
            work: p.rw_dir.join("work"),
        },
        mounts,
        args,
        env: environment(service, image),
        user: service
            .user
            .clone()
            .or_else(|| cfg.user.clone().filter(|u| !u.is_empty())),
        working_dir: service
            .working_dir
            .clone()
            .or_else(|| cfg.working_dir.clone().filter(|w| !w.is_empty())),
        hostname: Some(
            service
                .hostname
                .clone()
                .unwrap_or_else(|| p.container.clone()),
        ),
        domainname: service.domainname.clone(),
        network: match &p.netns {
            Some(path) => Network::Join(path.clone()),
            None => Network::None,
        },
        limits,
        cap_add: service.cap_add.clone(),
        cap_drop: service.cap_drop.clone(),
        privileged: service.privileged,
        seccomp: if seccomp_unconfined || service.privileged {
            berth_runtime::Seccomp::Unconfined
        } else {
            berth_runtime::Seccomp::DockerDefault
        },
        no_new_privileges,
        rlimits,
        sysctls: service.sysctls.clone(),
        read_only_rootfs: service.read_only,
        tty: service.tty,
        open_stdin: service.stdin_open,
        // Only a `run` in the foreground attaches right after the start (`run -d` of a
        // `stdin_open` service keeps stdin open, but nobody is waited for); its tty starts
        // at the size of berth's terminal.
        attach: p.attach && (service.stdin_open || service.tty),
        console_size: if p.attach && service.tty {
            berth_runtime::terminal_size()
        } else {
            None
        },
        stop_signal: service
            .stop_signal
            .clone()
            .or_else(|| cfg.stop_signal.clone()),
        init: service.init.unwrap_or(false),
        oom_score_adj: service.oom_score_adj.and_then(|v| i32::try_from(v).ok()),
        log: LogConfig {
            path: p.log_path.clone(),
            max_size: Some(10 * 1024 * 1024),
            max_files: Some(3),
        },
        labels,
        owned_dirs: Vec::new(),
        auto_remove: false,
    })
}
