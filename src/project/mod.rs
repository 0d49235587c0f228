//! The compose project loader: compose files in, a validated canonical [`Project`] out.
//!
//! Takes [`LoadOptions`] (files, directories, names, profiles and the process environment
//! as a map, so tests are hermetic); gives [`Project`] or a [`LoadError`] naming
//! file:line:col and the YAML path. Pure: the only I/O is reading compose and env files.
//! Neighbours: `cli::config` prints the model, `plan` reconciles it, [`hash`] feeds
//! convergence.
//!
//! The phases, in order (as in compose-go), each in its own module:
//!
//! 1. `discover`: which files, the project directory, the project name;
//! 2. `dotenv`: `.env` / `--env-file` into the interpolation environment (shell env wins);
//! 3. `tree`: YAML → raw tree with marks, anchors/aliases/merge keys, `!reset`/`!override`;
//! 4. `interpolate`: `${…}` in every string value of every file;
//! 5. `extends` (per file), then `merge` (files left to right), then `include`;
//! 6. `decode`: keys and types checked, short syntax → long syntax, paths made absolute,
//!    defaults filled, typed [`model`] built (unsupported schema keys are refused);
//! 7. `validate`: profiles applied, references, cycles, duplicate container names.

pub mod decode;
pub mod discover;
pub mod dotenv;
pub mod error;
pub mod extends;
pub mod hash;
pub mod interpolate;
pub mod merge;
pub mod model;
pub mod names;
pub mod tree;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use error::LoadError;
pub use model::*;
pub use names::{ConfigName, NetworkName, ProjectName, SecretName, ServiceName, VolumeName};

use error::At;
use interpolate::Interpolator;
use tree::{Node, Value};

/// Everything that steers loading. Build it with [`LoadOptions::from_process`] in the CLI,
/// or literally in tests.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where relative `-f` paths and discovery start (the process's current directory).
    pub working_dir: PathBuf,
    /// `-f` files in order; empty = `COMPOSE_FILE` or discovery. `-` = [`stdin`](Self::stdin).
    pub files: Vec<PathBuf>,
    /// `--project-directory`.
    pub project_directory: Option<PathBuf>,
    /// `-p`.
    pub project_name: Option<String>,
    /// `--env-file` (repeatable); empty = `COMPOSE_ENV_FILES` or `<project dir>/.env`.
    pub env_files: Vec<PathBuf>,
    /// `--profile` (repeatable); empty = `COMPOSE_PROFILES`.
    pub profiles: Vec<String>,
    /// The process environment (shell env), which wins over env files.
    pub environment: BTreeMap<String, String>,
    /// `false` for `--no-interpolate`.
    pub interpolate: bool,
    /// Services named on the command line: enabled whatever their profiles.
    pub services_named: Vec<String>,
    /// The content of standard input, for a `-` file.
    pub stdin: Option<String>,
}

impl LoadOptions {
    /// Options with the real process environment and current directory.
    pub fn from_process() -> std::io::Result<Self> {
        Ok(LoadOptions {
            working_dir: std::env::current_dir()?,
            environment: std::env::vars().collect(),
            interpolate: true,
            ..LoadOptions::default()
        })
    }
}

/// Load, merge, canonicalise and validate a compose project.
pub fn load(opts: &LoadOptions) -> Result<Project, LoadError> {
    let _span = tracing::debug_span!("load", working_dir = %opts.working_dir.display()).entered();
    let shell = &opts.environment;
    let mut env = shell.clone();

    // `.env` is read before discovery (it may set COMPOSE_FILE, COMPOSE_PROFILES…) from
    // --project-directory, else the first -f file's directory, else the working dir.
    let pre_dir = discover::project_dir(
        &opts.working_dir,
        opts.project_directory.as_deref(),
        &absolute_files(opts),
    );
    let explicit_env_files = explicit_env_files(opts, shell);
    let default_env_enabled = !shell
        .get("COMPOSE_DISABLE_ENV_FILE")
        .is_some_and(|v| v == "true" || v == "1");
    match &explicit_env_files {
        Some(list) => apply_env_files(&mut env, shell, list, true)?,
        None if default_env_enabled => {
            apply_env_files(&mut env, shell, &[pre_dir.join(".env")], false)?
        }
        None => {}
    }

    // Without -f, files are discovered from --project-directory when it is given (as
    // `docker compose --project-directory DIR up` does), else from the working dir.
    let discovery_dir = if opts.files.is_empty() {
        pre_dir.clone()
    } else {
        opts.working_dir.clone()
    };
    let files = discover::compose_files(&discovery_dir, &opts.files, &env)?;
    let dir = discover::project_dir(&opts.working_dir, opts.project_directory.as_deref(), &files);
    if explicit_env_files.is_none() && default_env_enabled && dir != pre_dir {
        // Second pass from the final project directory; keys already set stay.
        let mut extra = BTreeMap::new();
        apply_env_files(&mut extra, shell, &[dir.join(".env")], false)?;
        for (k, v) in extra {
            env.entry(k).or_insert(v);
        }
    }
    tracing::debug!(files = ?files, dir = %dir.display(), "compose files");

    // Parse everything first: the project name (from `name:`) must be known before
    // interpolation, which exposes it as COMPOSE_PROJECT_NAME.
    let mut raw: Vec<(PathBuf, Vec<Node>)> = Vec::new();
    for f in &files {
        raw.push((f.clone(), read_raw(f, opts.stdin.as_deref())?));
    }
    let name_from_files = name_in_files(&raw, &env, opts.interpolate)?;
    let name = discover::project_name(
        opts.project_name.as_deref(),
        &env,
        name_from_files.as_deref(),
        &dir,
    )?;
    env.insert("COMPOSE_PROJECT_NAME".into(), name.to_string());
    env.entry("PWD".into())
        .or_insert_with(|| opts.working_dir.to_string_lossy().into_owned());

    let fallback = tree::Mark::synthetic(&std::sync::Arc::new(
        files.first().cloned().unwrap_or_default(),
    ));
    let mut reader = Reader {
        interp: Interpolator::new(&env),
        interpolate: opts.interpolate,
        stdin: opts.stdin.as_deref(),
    };
    let mut merged: Option<Node> = None;
    for (path, docs) in raw {
        let mut doc = reader.finish(docs)?;
        extends::resolve(&mut doc, &path, &mut reader)?;
        let base = path.parent().unwrap_or(&dir).to_path_buf();
        resolve_includes(&mut doc, &base, &env, opts, &mut vec![path.clone()])?;
        merged = Some(match merged {
            None => doc,
            Some(m) => merge::merge_documents(m, doc),
        });
    }
    let mut root = merged.unwrap_or_else(|| Node::empty_map(fallback.clone()));
    merge::strip_tags(&mut root);
    if root.is_null() {
        root = Node::empty_map(root.mark.clone());
    }

    let cx = decode::Context {
        project: &name,
        dir: &dir,
        env: &env,
    };
    let mut spans = decode::Spans::default();
    let mut project = decode::project(&root, &cx, &mut spans)?;
    project.compose_files = files;

    let profiles: Vec<String> = if opts.profiles.is_empty() {
        env.get("COMPOSE_PROFILES")
            .map(|p| p.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    } else {
        opts.profiles.clone()
    };
    validate::select_profiles(&mut project, &profiles, &opts.services_named)?;
    validate::check(&mut project, &spans, &fallback)?;
    Ok(project)
}

fn absolute_files(opts: &LoadOptions) -> Vec<PathBuf> {
    opts.files
        .iter()
        .map(|p| {
            if p.as_os_str() == discover::STDIN || p.is_absolute() {
                p.clone()
            } else {
                opts.working_dir.join(p)
            }
        })
        .collect()
}

fn explicit_env_files(
    opts: &LoadOptions,
    shell: &BTreeMap<String, String>,
) -> Option<Vec<PathBuf>> {
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            opts.working_dir.join(p)
        }
    };
    if !opts.env_files.is_empty() {
        return Some(opts.env_files.iter().map(|p| abs(p)).collect());
    }
    shell
        .get("COMPOSE_ENV_FILES")
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(|p| abs(Path::new(p.trim()))).collect())
}

/// Read env files into `env` (later files win) without overriding the shell environment.
fn apply_env_files(
    env: &mut BTreeMap<String, String>,
    shell: &BTreeMap<String, String>,
    files: &[PathBuf],
    required: bool,
) -> Result<(), LoadError> {
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if !required && (e.kind() == std::io::ErrorKind::NotFound || path.is_dir()) => {
                continue
            }
            Err(source) => {
                return Err(LoadError::Read {
                    path: path.clone(),
                    source,
                })
            }
        };
        let snapshot = env.clone();
        let lookup = |k: &str| snapshot.get(k).cloned();
        for (k, v) in dotenv::parse(&text, path, &lookup)? {
            if !shell.contains_key(&k) {
                env.insert(k, v);
            }
        }
    }
    Ok(())
}

fn read_raw(path: &Path, stdin: Option<&str>) -> Result<Vec<Node>, LoadError> {
    tracing::debug!(file = %path.display(), "reading compose file");
    let text = if path.as_os_str() == discover::STDIN {
        stdin.map(str::to_string).ok_or_else(|| LoadError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no standard input was given",
            ),
        })?
    } else {
        std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?
    };
    tree::parse(&text, path)
}

/// The last top-level `name:` of the files, interpolated.
fn name_in_files(
    raw: &[(PathBuf, Vec<Node>)],
    env: &BTreeMap<String, String>,
    interpolate: bool,
) -> Result<Option<String>, LoadError> {
    let mut found = None;
    for (_, docs) in raw {
        for d in docs {
            if let Some(n) = d.get("name").filter(|n| !n.is_null()) {
                let text = n
                    .scalar_text()
                    .ok_or_else(|| LoadError::wrong_type(&n.mark, "name", "a string", n.kind()))?;
                found = Some(if interpolate {
                    Interpolator::new(env).string(&text, &n.mark, "name")?
                } else {
                    text
                });
            }
        }
    }
    Ok(found)
}

/// Reads, merges (multi-document files) and interpolates compose files.
struct Reader<'a> {
    interp: Interpolator<'a>,
    interpolate: bool,
    stdin: Option<&'a str>,
}

impl Reader<'_> {
    fn finish(&mut self, docs: Vec<Node>) -> Result<Node, LoadError> {
        let mut out: Option<Node> = None;
        for mut d in docs {
            if d.is_null() {
                d = Node::empty_map(d.mark.clone());
            }
            if !matches!(d.value, Value::Map(_)) {
                return Err(LoadError::wrong_type(
                    &d.mark,
                    "",
                    "a mapping at the top level",
                    d.kind(),
                ));
            }
            if self.interpolate {
                self.interp.tree(&mut d, "")?;
            }
            out = Some(match out {
                None => d,
                Some(prev) => merge::merge_documents(prev, d),
            });
        }
        Ok(out.unwrap_or_else(|| {
            Node::empty_map(tree::Mark::synthetic(&std::sync::Arc::new(PathBuf::new())))
        }))
    }
}

impl extends::Source for Reader<'_> {
    fn document(&mut self, path: &Path) -> Result<Node, LoadError> {
        let docs = read_raw(path, self.stdin)?;
        self.finish(docs)
    }
}

/// Resolve the top-level `include` of `doc` (read from a file in `base`): each entry is
/// loaded as its own project (own directory and `.env`, the parent's env winning) and its
/// resources are imported; the including file's definitions win on a name clash.
fn resolve_includes(
    doc: &mut Node,
    base: &Path,
    parent_env: &BTreeMap<String, String>,
    opts: &LoadOptions,
    stack: &mut Vec<PathBuf>,
) -> Result<(), LoadError> {
    let Some(inc) = doc.remove("include") else {
        return Ok(());
    };
    if inc.is_null() {
        return Ok(());
    }
    let Value::Seq(items) = &inc.value else {
        return Err(LoadError::wrong_type(
            &inc.mark,
            "include",
            "a list",
            inc.kind(),
        ));
    };
    for (i, item) in items.iter().enumerate() {
        let path = error::index("include", i);
        let abs = |p: &str| {
            if Path::new(p).is_absolute() {
                PathBuf::from(p)
            } else {
                base.join(p)
            }
        };
        let (paths, project_dir, env_files): (Vec<PathBuf>, Option<PathBuf>, Vec<PathBuf>) =
            match &item.value {
                Value::Str(s) => (vec![abs(s)], None, Vec::new()),
                Value::Map(entries) => {
                    let mut paths = Vec::new();
                    let mut pdir = None;
                    let mut envs = Vec::new();
                    for (k, v) in entries {
                        let kp = error::child(&path, &k.name);
                        let list = || -> Result<Vec<String>, LoadError> {
                            match &v.value {
                                Value::Str(s) => Ok(vec![s.clone()]),
                                Value::Seq(xs) => xs
                                    .iter()
                                    .map(|x| {
                                        x.as_str().map(str::to_string).ok_or_else(|| {
                                            LoadError::wrong_type(
                                                &x.mark,
                                                &kp,
                                                "a string",
                                                x.kind(),
                                            )
                                        })
                                    })
                                    .collect(),
                                _ => Err(LoadError::wrong_type(
                                    &v.mark,
                                    &kp,
                                    "a string or a list",
                                    v.kind(),
                                )),
                            }
                        };
                        match k.name.as_str() {
                            "path" => paths = list()?.iter().map(|p| abs(p)).collect(),
                            "env_file" => envs = list()?.iter().map(|p| abs(p)).collect(),
                            "project_directory" => {
                                pdir = Some(abs(v.as_str().ok_or_else(|| {
                                    LoadError::wrong_type(&v.mark, &kp, "a string", v.kind())
                                })?))
                            }
                            other => {
                                let suggestion = ["path", "env_file", "project_directory"]
                                    .iter()
                                    .find(|c| strsim::levenshtein(other, c) <= 2)
                                    .map(|c| c.to_string());
                                return Err(LoadError::UnknownKey {
                                    at: At::new(&k.mark, kp),
                                    key: other.to_string(),
                                    suggestion,
                                });
                            }
                        }
                    }
                    if paths.is_empty() {
                        return Err(LoadError::invalid(
                            &item.mark,
                            &path,
                            "include",
                            "",
                            "`path` is required",
                        ));
                    }
                    (paths, pdir, envs)
                }
                _ => {
                    return Err(LoadError::wrong_type(
                        &item.mark,
                        &path,
                        "a string or a mapping",
                        item.kind(),
                    ))
                }
            };
        for p in &paths {
            if stack.contains(p) {
                let mut chain: Vec<String> =
                    stack.iter().map(|s| s.display().to_string()).collect();
                chain.push(p.display().to_string());
                return Err(LoadError::IncludeCycle {
                    at: At::new(&item.mark, path.clone()),
                    cycle: chain.join(" -> "),
                });
            }
        }
        let inc_dir = project_dir.unwrap_or_else(|| {
            paths[0]
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| base.to_path_buf())
        });
        // The included project's own env files give defaults; the parent's env wins.
        let mut inc_env = BTreeMap::new();
        if env_files.is_empty() {
            apply_env_files(
                &mut inc_env,
                &BTreeMap::new(),
                &[inc_dir.join(".env")],
                false,
            )?;
        } else {
            apply_env_files(&mut inc_env, &BTreeMap::new(), &env_files, true)?;
        }
        inc_env.extend(parent_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut reader = Reader {
            interp: Interpolator::new(&inc_env),
            interpolate: opts.interpolate,
            stdin: None,
        };
        let mut imported: Option<Node> = None;
        for p in &paths {
            let mut d = reader.finish(read_raw(p, None)?)?;
            extends::resolve(&mut d, p, &mut reader)?;
            stack.push(p.clone());
            resolve_includes(&mut d, p.parent().unwrap_or(base), &inc_env, opts, stack)?;
            stack.pop();
            imported = Some(match imported {
                None => d,
                Some(m) => merge::merge_documents(m, d),
            });
        }
        let Some(mut imported) = imported else {
            continue;
        };
        if let Some(Value::Map(services)) = imported.get_mut("services").map(|s| &mut s.value) {
            for (_, svc) in services.iter_mut() {
                extends::rebase_service(svc, &inc_dir);
            }
        }
        extends::rebase_resources(&mut imported, &inc_dir);
        if let Value::Map(entries) = &mut imported.value {
            entries.retain(|(k, _)| {
                matches!(
                    k.name.as_str(),
                    "services" | "networks" | "volumes" | "secrets" | "configs"
                )
            });
        }
        let local = std::mem::replace(doc, Node::new(Value::Null, inc.mark.clone()));
        *doc = merge::merge_documents(imported, local);
    }
    Ok(())
}
