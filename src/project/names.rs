//! Validated names: a [`ProjectName`] or [`ServiceName`]… can only be built valid.
//!
//! Takes user strings; gives newtypes the rest of berth can trust (they become DNS labels,
//! container names and kernel object names). Neighbours: `discover` normalises project
//! names; `decode` builds the other names from mapping keys.

use std::fmt;

use serde::Serialize;

/// Why a name was refused (the caller adds where it came from).
pub type NameError = &'static str;

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: &str) -> Result<Self, NameError> {
                $check(s)?;
                Ok($name(s.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A compose project name: `[a-z0-9][a-z0-9_-]*`.
    ProjectName,
    check_project
);
name_type!(
    /// A service key (`^[a-zA-Z0-9._-]+$` in the compose schema).
    ServiceName,
    check_resource
);
name_type!(
    /// A top-level network key.
    NetworkName,
    check_resource
);
name_type!(
    /// A top-level volume key.
    VolumeName,
    check_resource
);
name_type!(
    /// A top-level secret key.
    SecretName,
    check_resource
);
name_type!(
    /// A top-level config key.
    ConfigName,
    check_resource
);

fn check_project(s: &str) -> Result<(), NameError> {
    const REASON: NameError =
        "must contain only lower-case letters, digits, `-` and `_`, and start with a letter or digit";
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit() => {}
        _ => return Err(REASON),
    }
    if bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        Ok(())
    } else {
        Err(REASON)
    }
}

fn check_resource(s: &str) -> Result<(), NameError> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(())
    } else {
        Err("must be made of letters, digits, `.`, `_` and `-`")
    }
}

/// Normalise a name taken from `name:` or a directory: lower-case, drop every character
/// outside `[a-z0-9_-]`, strip leading `_`/`-` (compose-go's `NormalizeProjectName`).
pub fn normalize_project_name(s: &str) -> String {
    let lowered: String = s
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    lowered.trim_start_matches(['_', '-']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        assert!(ProjectName::new("my_app-1").is_ok());
        assert!(ProjectName::new("My").is_err());
        assert!(ProjectName::new("-a").is_err());
        assert!(ProjectName::new("").is_err());
        assert_eq!(normalize_project_name("My.App"), "myapp");
        assert_eq!(normalize_project_name("__Foo Bar-"), "foobar-");
    }

    #[test]
    fn resource_names() {
        assert!(ServiceName::new("web.1_a-b").is_ok());
        assert!(ServiceName::new("a b").is_err());
        assert!(NetworkName::new("").is_err());
    }
}
