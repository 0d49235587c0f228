//! Load errors: every variant names what failed, and where (file:line:col and YAML path).
//!
//! Takes marks from `tree` and paths built by each phase; gives [`LoadError`], the one error
//! type `project::load` returns. Messages are lower-case with no final period.

use std::fmt;
use std::path::PathBuf;

use super::tree::Mark;

/// A position in a compose file plus the YAML path of the offending node
/// (`services.web.ports[1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub mark: Mark,
    pub path: String,
}

impl At {
    pub fn new(mark: &Mark, path: impl Into<String>) -> Self {
        At {
            mark: mark.clone(),
            path: path.into(),
        }
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.mark)
        } else {
            write!(f, "{}: {}", self.mark, self.path)
        }
    }
}

fn did_you_mean(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{col}: invalid yaml: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{}:{line}:{col}: duplicate key `{key}`", file.display())]
    DuplicateKey {
        file: PathBuf,
        line: usize,
        col: usize,
        key: String,
    },
    #[error("no compose file found in {} or its parents (looked for compose.yaml, compose.yml, docker-compose.yml, docker-compose.yaml)", dir.display())]
    NoComposeFile { dir: PathBuf },
    #[error("invalid project name `{name}` (from {origin}): {reason}")]
    ProjectName {
        name: String,
        origin: &'static str,
        reason: &'static str,
    },
    #[error("{}:{line}: {message}", path.display())]
    EnvFile {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{at}: unknown key `{key}`{}", did_you_mean(.suggestion))]
    UnknownKey {
        at: At,
        key: String,
        suggestion: Option<String>,
    },
    #[error("{at}: `{key}` is not supported yet")]
    Unsupported { at: At, key: String },
    #[error("{at}: expected {expected}, found {found}")]
    WrongType {
        at: At,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{at}: invalid {what} \"{value}\": {reason}")]
    InvalidValue {
        at: At,
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("{at}: {kind} `{name}` is not defined")]
    Undefined {
        at: At,
        kind: &'static str,
        name: String,
    },
    #[error("{at}: dependency cycle: {cycle}")]
    DependencyCycle { at: At, cycle: String },
    #[error("{at}: container name `{name}` is already used by service `{other}`")]
    DuplicateContainerName { at: At, name: String, other: String },
    #[error("{at}: required variable `{var}` is missing a value: {message}")]
    RequiredVariable {
        at: At,
        var: String,
        message: String,
    },
    #[error("{at}: invalid interpolation template \"{template}\"")]
    InvalidTemplate { at: At, template: String },
    #[error("{at}: {message}")]
    Conflict { at: At, message: String },
    #[error("{at}: extends cycle: {cycle}")]
    ExtendsCycle { at: At, cycle: String },
    #[error("{at}: include cycle: {cycle}")]
    IncludeCycle { at: At, cycle: String },
    #[error("{at}: service `{service}` is not defined in {}", file.display())]
    ExtendsTarget {
        at: At,
        service: String,
        file: PathBuf,
    },
    #[error("no such service: {name}")]
    NoSuchService { name: String },
    #[error(
        "{at}: service `{service}` depends on `{dependency}`, which is disabled by its profiles"
    )]
    DisabledDependency {
        at: At,
        service: String,
        dependency: String,
    },
}

impl LoadError {
    pub(crate) fn wrong_type(
        mark: &Mark,
        path: &str,
        expected: &'static str,
        found: &'static str,
    ) -> Self {
        LoadError::WrongType {
            at: At::new(mark, path),
            expected,
            found,
        }
    }

    pub(crate) fn invalid(
        mark: &Mark,
        path: &str,
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        LoadError::InvalidValue {
            at: At::new(mark, path),
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// Join a mapping key onto a YAML path.
pub fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Join a sequence index onto a YAML path.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}
