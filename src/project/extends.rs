//! `extends`: a service inherits another service's definition (same file or another file).
//!
//! Takes one file's interpolated document and a [`Source`] to read other files; gives the
//! document with every `extends` replaced by the merged definition (base first, local over
//! it, with `merge`'s rules, `!reset`/`!override` included). Cycles are an error naming the
//! chain. Relative paths of a base from another directory are made absolute against that
//! file's directory ([`rebase_service`], also used by `include`) so they keep pointing at
//! the same place once merged into the project.

use std::path::{Path, PathBuf};

use super::error::{self, At, LoadError};
use super::merge;
use super::tree::{Node, Value};

/// Reads and interpolates other compose files for `extends` and `include`.
pub trait Source {
    fn document(&mut self, path: &Path) -> Result<Node, LoadError>;
}

/// Resolve `extends` for every service of `doc`, which was read from `file`.
pub fn resolve(doc: &mut Node, file: &Path, source: &mut dyn Source) -> Result<(), LoadError> {
    let names: Vec<String> = match doc.get("services").map(|s| &s.value) {
        Some(Value::Map(entries)) => entries
            .iter()
            .filter(|(_, v)| v.get("extends").is_some_and(|e| !e.is_null()))
            .map(|(k, _)| k.name.clone())
            .collect(),
        _ => return Ok(()),
    };
    for name in names {
        let mut stack = Vec::new();
        let resolved = resolve_service(doc, file, &name, source, &mut stack)?;
        if let Some(services) = doc.get_mut("services") {
            services.set(&name, resolved);
        }
    }
    Ok(())
}

fn resolve_service(
    doc: &Node,
    file: &Path,
    name: &str,
    source: &mut dyn Source,
    stack: &mut Vec<(PathBuf, String)>,
) -> Result<Node, LoadError> {
    let path = error::child("services", name);
    let Some(service) = doc.get("services").and_then(|s| s.get(name)).cloned() else {
        // Reported by the caller, which knows where the reference was written.
        return Err(LoadError::NoSuchService {
            name: name.to_string(),
        });
    };
    let Some(ext) = service.get("extends").filter(|e| !e.is_null()).cloned() else {
        return Ok(service);
    };
    let ext_path = error::child(&path, "extends");
    let (target_file, target_service) = match &ext.value {
        Value::Str(s) => (None, s.clone()),
        Value::Map(_) => {
            for (k, v) in match &ext.value {
                Value::Map(e) => e.as_slice(),
                _ => &[],
            } {
                if k.name != "service" && k.name != "file" {
                    return Err(LoadError::UnknownKey {
                        at: At::new(&k.mark, error::child(&ext_path, &k.name)),
                        key: k.name.clone(),
                        suggestion: None,
                    });
                }
                if v.as_str().is_none() {
                    return Err(LoadError::wrong_type(
                        &v.mark,
                        &error::child(&ext_path, &k.name),
                        "a string",
                        v.kind(),
                    ));
                }
            }
            let svc = ext.get("service").and_then(Node::as_str).ok_or_else(|| {
                LoadError::invalid(&ext.mark, &ext_path, "extends", "", "`service` is required")
            })?;
            (
                ext.get("file").and_then(Node::as_str).map(PathBuf::from),
                svc.to_string(),
            )
        }
        _ => {
            return Err(LoadError::wrong_type(
                &ext.mark,
                &ext_path,
                "a string or a mapping",
                ext.kind(),
            ))
        }
    };
    let base_dir = file.parent().unwrap_or(Path::new("/"));
    let base_file = match &target_file {
        Some(f) if f.is_absolute() => f.clone(),
        Some(f) => base_dir.join(f),
        None => file.to_path_buf(),
    };
    let key = (base_file.clone(), target_service.clone());
    stack.push((file.to_path_buf(), name.to_string()));
    if stack.contains(&key) {
        let mut chain: Vec<String> = stack.iter().map(|(_, s)| s.clone()).collect();
        chain.push(target_service.clone());
        return Err(LoadError::ExtendsCycle {
            at: At::new(&ext.mark, ext_path),
            cycle: chain.join(" -> "),
        });
    }
    let base_doc = if target_file.is_some() {
        source.document(&base_file)?
    } else {
        doc.clone()
    };
    let mut base = match resolve_service(&base_doc, &base_file, &target_service, source, stack) {
        Err(LoadError::NoSuchService { name: missing }) if missing == target_service => {
            return Err(LoadError::ExtendsTarget {
                at: At::new(&ext.mark, ext_path),
                service: target_service,
                file: base_file,
            });
        }
        other => other?,
    };
    stack.pop();
    let from_dir = base_file.parent().unwrap_or(Path::new("/"));
    if from_dir != base_dir {
        rebase_service(&mut base, from_dir);
    }
    let mut local = service;
    local.remove("extends");
    Ok(merge::merge_services(base, local))
}

fn is_relative_host_path(s: &str) -> bool {
    !(s.starts_with('/') || s.starts_with('~') || s.contains("://") || s.starts_with("git@"))
}

fn rebase_str(node: &mut Node, dir: &Path) {
    if let Value::Str(s) = &mut node.value {
        if is_relative_host_path(s) {
            *s = dir.join(&*s).to_string_lossy().into_owned();
        }
    }
}

/// Make the relative host paths of a service (build context, env_file, bind sources)
/// absolute against `dir`.
pub fn rebase_service(service: &mut Node, dir: &Path) {
    if let Some(b) = service.get_mut("build") {
        match &b.value {
            Value::Str(_) => rebase_str(b, dir),
            Value::Map(_) => {
                if let Some(c) = b.get_mut("context") {
                    rebase_str(c, dir);
                }
            }
            _ => {}
        }
    }
    if let Some(e) = service.get_mut("env_file") {
        match &mut e.value {
            Value::Str(_) => rebase_str(e, dir),
            Value::Seq(items) => {
                for item in items {
                    match &item.value {
                        Value::Str(_) => rebase_str(item, dir),
                        _ => {
                            if let Some(p) = item.get_mut("path") {
                                rebase_str(p, dir);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(Value::Seq(items)) = service.get_mut("volumes").map(|v| &mut v.value) {
        for item in items {
            match &mut item.value {
                Value::Str(s) if s.starts_with('.') => {
                    if let Some((src, rest)) = s.split_once(':') {
                        *s = format!("{}:{rest}", dir.join(src).to_string_lossy());
                    }
                }
                Value::Map(_) => {
                    let is_bind = item.get("type").and_then(Node::as_str) == Some("bind");
                    if is_bind {
                        if let Some(src) = item.get_mut("source") {
                            rebase_str(src, dir);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Make the `file` of top-level secrets/configs absolute against `dir`.
pub fn rebase_resources(doc: &mut Node, dir: &Path) {
    for section in ["secrets", "configs"] {
        if let Some(Value::Map(entries)) = doc.get_mut(section).map(|s| &mut s.value) {
            for (_, v) in entries {
                if let Some(f) = v.get_mut("file") {
                    rebase_str(f, dir);
                }
            }
        }
    }
}
