//! Which compose files to load, the project directory and the project name.
//!
//! Takes [`LoadOptions`](super::LoadOptions) and the interpolation environment; gives the
//! ordered file list, the project directory and the validated [`ProjectName`]. Rules (compose-go
//! `cli` package): `-f` files, else `COMPOSE_FILE` split on `COMPOSE_PATH_SEPARATOR`, else the
//! first of `compose.yaml`, `compose.yml`, `docker-compose.yml`, `docker-compose.yaml` in the
//! working directory or its parents plus the first matching `*.override.*` beside it. The name
//! comes from `-p`, `COMPOSE_PROJECT_NAME`, the last top-level `name:`, else the directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::LoadError;
use super::names::{normalize_project_name, ProjectName};

pub const DEFAULT_FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];
pub const OVERRIDE_FILES: &[&str] = &[
    "compose.override.yml",
    "compose.override.yaml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
];

/// The path used for a file read from standard input.
pub const STDIN: &str = "-";

/// Resolve the compose files to load (absolute paths; `-` is kept as is).
pub fn compose_files(
    working_dir: &Path,
    files: &[PathBuf],
    env: &BTreeMap<String, String>,
) -> Result<Vec<PathBuf>, LoadError> {
    let absolutize = |p: &Path| {
        if p.as_os_str() == STDIN || p.is_absolute() {
            p.to_path_buf()
        } else {
            working_dir.join(p)
        }
    };
    if !files.is_empty() {
        return Ok(files.iter().map(|p| absolutize(p)).collect());
    }
    if let Some(list) = env.get("COMPOSE_FILE").filter(|s| !s.is_empty()) {
        let sep = env
            .get("COMPOSE_PATH_SEPARATOR")
            .filter(|s| !s.is_empty())
            .map(String::as_str)
            .unwrap_or(":");
        return Ok(list
            .split(sep)
            .filter(|s| !s.is_empty())
            .map(|p| absolutize(Path::new(p)))
            .collect());
    }
    let mut dir = Some(working_dir);
    while let Some(d) = dir {
        let found: Vec<PathBuf> = DEFAULT_FILES
            .iter()
            .map(|f| d.join(f))
            .filter(|p| p.is_file())
            .collect();
        if let Some(first) = found.first() {
            if found.len() > 1 {
                tracing::warn!(using = %first.display(), "found multiple config files with supported names; using the first");
            }
            let mut out = vec![first.clone()];
            if let Some(o) = OVERRIDE_FILES
                .iter()
                .map(|f| d.join(f))
                .find(|p| p.is_file())
            {
                out.push(o);
            }
            return Ok(out);
        }
        dir = d.parent();
    }
    Err(LoadError::NoComposeFile {
        dir: working_dir.to_path_buf(),
    })
}

/// The project directory: `--project-directory`, else the first file's directory, else the
/// working directory (stdin).
pub fn project_dir(working_dir: &Path, explicit: Option<&Path>, files: &[PathBuf]) -> PathBuf {
    if let Some(d) = explicit {
        return if d.is_absolute() {
            d.to_path_buf()
        } else {
            working_dir.join(d)
        };
    }
    match files.first() {
        Some(f) if f.as_os_str() != STDIN => f
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| working_dir.to_path_buf()),
        _ => working_dir.to_path_buf(),
    }
}

/// Choose and validate the project name.
pub fn project_name(
    explicit: Option<&str>,
    env: &BTreeMap<String, String>,
    from_files: Option<&str>,
    dir: &Path,
) -> Result<ProjectName, LoadError> {
    let strict = |name: &str, origin: &'static str| {
        ProjectName::new(name).map_err(|reason| LoadError::ProjectName {
            name: name.to_string(),
            origin,
            reason,
        })
    };
    if let Some(n) = explicit.filter(|n| !n.is_empty()) {
        return strict(n, "--project-name");
    }
    if let Some(n) = env.get("COMPOSE_PROJECT_NAME").filter(|n| !n.is_empty()) {
        return strict(n, "COMPOSE_PROJECT_NAME");
    }
    let (raw, origin) = match from_files.filter(|n| !n.is_empty()) {
        Some(n) => (n.to_string(), "the top-level `name`"),
        None => (
            dir.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            "the project directory name",
        ),
    };
    let normalized = normalize_project_name(&raw);
    if normalized.is_empty() {
        return Err(LoadError::ProjectName {
            name: raw,
            origin,
            reason: "nothing is left after normalisation; set one with -p",
        });
    }
    strict(&normalized, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_precedence_and_normalisation() {
        let mut env = BTreeMap::new();
        let dir = Path::new("/x/My.App");
        assert_eq!(
            project_name(None, &env, None, dir).unwrap().as_str(),
            "myapp"
        );
        assert_eq!(
            project_name(None, &env, Some("Shop"), dir)
                .unwrap()
                .as_str(),
            "shop"
        );
        env.insert("COMPOSE_PROJECT_NAME".into(), "fromenv".into());
        assert_eq!(
            project_name(None, &env, Some("shop"), dir)
                .unwrap()
                .as_str(),
            "fromenv"
        );
        assert_eq!(
            project_name(Some("cli"), &env, Some("shop"), dir)
                .unwrap()
                .as_str(),
            "cli"
        );
        let e = project_name(Some("Bad Name"), &env, None, dir).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid project name `Bad Name` (from --project-name): must contain only lower-case letters, digits, `-` and `_`, and start with a letter or digit"
        );
        assert!(project_name(None, &BTreeMap::new(), Some("..."), dir).is_err());
    }

    #[test]
    fn compose_file_env_is_split() {
        let mut env = BTreeMap::new();
        env.insert("COMPOSE_FILE".into(), "a.yml;b.yml".into());
        env.insert("COMPOSE_PATH_SEPARATOR".into(), ";".into());
        let files = compose_files(Path::new("/w"), &[], &env).unwrap();
        assert_eq!(
            files,
            vec![PathBuf::from("/w/a.yml"), PathBuf::from("/w/b.yml")]
        );
    }
}
