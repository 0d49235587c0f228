//! Project-wide checks and profile selection on the decoded model.
//!
//! Takes the [`Project`] from `decode` and its mark side table; gives the project with
//! services switched off by profiles moved aside, or the first error: references to
//! undefined services/networks/volumes/secrets/configs, a service depending on a disabled
//! one, `depends_on` cycles (`a -> b -> a`), duplicate `container_name`, `container_name`
//! with several replicas. Errors carry file:line:col through [`Spans`].

use std::collections::{BTreeMap, BTreeSet};

use super::decode::Spans;
use super::error::{self, LoadError};
use super::model::{Condition, Dependency, MountType, Project};
use super::names::ServiceName;
use super::tree::Mark;

/// Enable services by profile: no profiles = always on; `*` = all; services named on the
/// command line are enabled and their profiles activated.
pub fn select_profiles(
    project: &mut Project,
    active: &[String],
    named: &[String],
) -> Result<(), LoadError> {
    let mut active: BTreeSet<String> = active.iter().filter(|p| !p.is_empty()).cloned().collect();
    for n in named {
        let Some(s) = project.services.get(n.as_str()) else {
            return Err(LoadError::NoSuchService { name: n.clone() });
        };
        active.extend(s.profiles.iter().cloned());
    }
    let all: BTreeSet<String> = project
        .services
        .values()
        .flat_map(|s| s.profiles.iter().cloned())
        .collect();
    project.all_profiles = all.into_iter().collect();
    let everything = active.contains("*");
    let names: Vec<ServiceName> = project.services.keys().cloned().collect();
    for name in names {
        let on = project.services.get(&name).is_some_and(|s| {
            s.profiles.is_empty()
                || everything
                || named.iter().any(|n| n == name.as_str())
                || s.profiles.iter().any(|p| active.contains(p))
        });
        if !on {
            if let Some(s) = project.services.remove(&name) {
                project.disabled_services.insert(name, s);
            }
        }
    }
    project.active_profiles = active.into_iter().collect();
    Ok(())
}

/// Cross-reference checks on the enabled services.
pub fn check(project: &mut Project, spans: &Spans, fallback: &Mark) -> Result<(), LoadError> {
    let at = |path: &str| spans.at(path, fallback);
    // Dependencies on disabled services: an error unless `required: false`, then dropped.
    let disabled: BTreeSet<ServiceName> = project.disabled_services.keys().cloned().collect();
    for (name, s) in project.services.iter_mut() {
        let mut drop = Vec::new();
        for (dep, d) in &s.depends_on {
            let path = error::child(
                &error::child(&format!("services.{name}"), "depends_on"),
                dep.as_str(),
            );
            if disabled.contains(dep) {
                if d.required {
                    return Err(LoadError::DisabledDependency {
                        at: at(&path),
                        service: name.to_string(),
                        dependency: dep.to_string(),
                    });
                }
                drop.push(dep.clone());
            }
        }
        for d in drop {
            s.depends_on.remove(&d);
        }
    }
    let known =
        |n: &str| project.services.contains_key(n) || project.disabled_services.contains_key(n);
    for (name, s) in &project.services {
        let base = format!("services.{name}");
        for dep in s.depends_on.keys() {
            if !known(dep.as_str()) {
                let path = error::child(&error::child(&base, "depends_on"), dep.as_str());
                return Err(LoadError::Undefined {
                    at: at(&path),
                    kind: "service",
                    name: dep.to_string(),
                });
            }
        }
        for (i, link) in s.links.iter().enumerate() {
            let target = link.split(':').next().unwrap_or(link);
            if !known(target) {
                let path = error::index(&error::child(&base, "links"), i);
                return Err(LoadError::Undefined {
                    at: at(&path),
                    kind: "service",
                    name: target.to_string(),
                });
            }
        }
        for (i, vf) in s.volumes_from.iter().enumerate() {
            if vf.starts_with("container:") {
                continue;
            }
            let target = vf.split(':').next().unwrap_or(vf);
            if !known(target) {
                let path = error::index(&error::child(&base, "volumes_from"), i);
                return Err(LoadError::Undefined {
                    at: at(&path),
                    kind: "service",
                    name: target.to_string(),
                });
            }
        }
        for (key, mode) in [
            ("network_mode", &s.network_mode),
            ("ipc", &s.ipc),
            ("pid", &s.pid),
        ] {
            if let Some(target) = mode.as_deref().and_then(|m| m.strip_prefix("service:")) {
                if !known(target) {
                    return Err(LoadError::Undefined {
                        at: at(&error::child(&base, key)),
                        kind: "service",
                        name: target.to_string(),
                    });
                }
            }
        }
        for n in s.networks.keys() {
            if !project.networks.contains_key(n) {
                let path = error::child(&error::child(&base, "networks"), n.as_str());
                return Err(LoadError::Undefined {
                    at: at(&path),
                    kind: "network",
                    name: n.to_string(),
                });
            }
        }
        for (i, m) in s.volumes.iter().enumerate() {
            if let (MountType::Volume, Some(src)) = (m.kind, &m.source) {
                if !project.volumes.contains_key(src.as_str()) {
                    let path = error::index(&error::child(&base, "volumes"), i);
                    return Err(LoadError::Undefined {
                        at: at(&path),
                        kind: "volume",
                        name: src.clone(),
                    });
                }
            }
        }
        for (i, r) in s.secrets.iter().enumerate() {
            if !project.secrets.contains_key(r.source.as_str()) {
                let path = error::index(&error::child(&base, "secrets"), i);
                return Err(LoadError::Undefined {
                    at: at(&path),
                    kind: "secret",
                    name: r.source.clone(),
                });
            }
        }
        for (i, r) in s.configs.iter().enumerate() {
            if !project.configs.contains_key(r.source.as_str()) {
                let path = error::index(&error::child(&base, "configs"), i);
                return Err(LoadError::Undefined {
                    at: at(&path),
                    kind: "config",
                    name: r.source.clone(),
                });
            }
        }
    }
    add_implicit_dependencies(project);
    check_cycles(project, &at)?;
    let mut names: BTreeMap<&str, &ServiceName> = BTreeMap::new();
    for (name, s) in &project.services {
        if let Some(cn) = &s.container_name {
            let path = format!("services.{name}.container_name");
            if let Some(other) = names.insert(cn.as_str(), name) {
                return Err(LoadError::DuplicateContainerName {
                    at: at(&path),
                    name: cn.clone(),
                    other: other.to_string(),
                });
            }
            if s.replicas() > 1 {
                return Err(LoadError::Conflict {
                    at: at(&path),
                    message: format!(
                        "`container_name` cannot be used with {} replicas (names must be unique)",
                        s.replicas()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Links, `service:` namespace modes and `volumes_from` imply a dependency (compose-go's
/// normalisation): started first; the namespace and link ones also restart the dependent.
fn add_implicit_dependencies(project: &mut Project) {
    for s in project.services.values_mut() {
        let mut implied: Vec<(String, bool)> = Vec::new();
        for link in &s.links {
            implied.push((link.split(':').next().unwrap_or(link).to_string(), true));
        }
        for mode in [&s.network_mode, &s.ipc, &s.pid].into_iter().flatten() {
            if let Some(target) = mode.strip_prefix("service:") {
                implied.push((target.to_string(), true));
            }
        }
        for vf in &s.volumes_from {
            if !vf.starts_with("container:") {
                implied.push((vf.split(':').next().unwrap_or(vf).to_string(), false));
            }
        }
        for (name, restart) in implied {
            if let Ok(name) = ServiceName::new(&name) {
                s.depends_on.entry(name).or_insert(Dependency {
                    condition: Condition::ServiceStarted,
                    restart,
                    required: true,
                });
            }
        }
    }
}

/// Depth-first search in name order; the first cycle found is reported from the service
/// where it closes, e.g. `a -> b -> a`.
fn check_cycles(project: &Project, at: &dyn Fn(&str) -> super::error::At) -> Result<(), LoadError> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        Active,
        Done,
    }
    let mut state: BTreeMap<&str, State> = project
        .services
        .keys()
        .map(|k| (k.as_str(), State::New))
        .collect();
    fn visit<'a>(
        n: &'a str,
        project: &'a Project,
        state: &mut BTreeMap<&'a str, State>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        state.insert(n, State::Active);
        stack.push(n);
        if let Some(s) = project.services.get(n) {
            for dep in s.depends_on.keys() {
                match state.get(dep.as_str()).copied() {
                    Some(State::Active) => {
                        let start = stack.iter().position(|x| *x == dep.as_str()).unwrap_or(0);
                        let mut cycle: Vec<&str> = stack[start..].to_vec();
                        cycle.push(dep.as_str());
                        return Some(cycle);
                    }
                    Some(State::New) => {
                        if let Some(c) = visit(dep.as_str(), project, state, stack) {
                            return Some(c);
                        }
                    }
                    _ => {}
                }
            }
        }
        stack.pop();
        state.insert(n, State::Done);
        None
    }
    let names: Vec<&str> = project.services.keys().map(ServiceName::as_str).collect();
    for n in names {
        if state.get(n) == Some(&State::New) {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(n, project, &mut state, &mut stack) {
                let path = format!("services.{}.depends_on.{}", cycle[0], cycle[1]);
                return Err(LoadError::DependencyCycle {
                    at: at(&path),
                    cycle: cycle.join(" -> "),
                });
            }
        }
    }
    Ok(())
}
