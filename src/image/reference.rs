//! Image references, parsed and normalised exactly as Docker does.
//!
//! Takes the strings users write (`busybox`, `mysql:5.7`, `127.0.0.1:5000/app@sha256:…`),
//! gives an [`ImageRef`] newtype that can only hold a valid, fully qualified reference
//! (`docker.io/library/busybox:latest`). The grammar is distribution's
//! `reference/regexp.go`; normalisation is `reference/normalize.go` (`ParseNormalizedNamed`
//! and `TagNameOnly`). Used by the store's tag index (`store`), the registry client
//! (`registry`) and the CLI.

use std::fmt;
use std::str::FromStr;

/// Docker Hub's canonical registry name and its legacy aliases.
pub const DEFAULT_REGISTRY: &str = "docker.io";
const LEGACY_REGISTRY: &str = "index.docker.io";
/// The host `docker.io` really serves the registry API from.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
/// distribution's `NameTotalLengthMax`.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Why a reference string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format: empty reference")]
    Empty,
    #[error("invalid reference format: repository name must be lowercase: {input:?}")]
    NotLowercase { input: String },
    #[error("invalid reference format: repository name must be canonical, {input:?} looks like an image id; use the id directly or a name")]
    LooksLikeId { input: String },
    #[error("invalid reference format: {input:?}: {reason}")]
    Invalid { input: String, reason: String },
    #[error("invalid reference format: repository name {input:?} is longer than 255 characters")]
    NameTooLong { input: String },
}

/// A valid, normalised image reference: registry, repository path, and a tag and/or digest.
///
/// Invariants (enforced by [`ImageRef::parse`]): `registry` is a valid host[:port],
/// `repository` is lowercase path components, at least one of `tag`/`digest` is set
/// (a bare name gets `latest`, like `docker pull`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses and normalises a user-written reference.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let invalid = |reason: &str| ReferenceError::Invalid {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        // A bare 64-hex string is an image id, not a name (normalize.go: anchoredIdentifierRegexp).
        if input.len() == 64
            && input
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(ReferenceError::LooksLikeId {
                input: input.to_string(),
            });
        }
        let (rest, digest) = match input.split_once('@') {
            Some((name, digest)) => {
                validate_digest(digest).map_err(|r| invalid(&r))?;
                (name, Some(digest.to_string()))
            }
            None => (input, None),
        };
        // The tag is after the last ':' that comes after the last '/'
        // (a ':' before a '/' is a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|r| invalid(&r))?;
        }
        if name.is_empty() {
            return Err(invalid("empty repository name"));
        }
        let (registry, repository) = split_registry(name);
        if let Some(registry) = &registry {
            validate_domain(registry).map_err(|r| invalid(&r))?;
        }
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::NotLowercase {
                input: input.to_string(),
            });
        }
        validate_path(repository).map_err(|r| invalid(&r))?;
        let mut registry = registry.unwrap_or_else(|| DEFAULT_REGISTRY.to_string());
        if registry == LEGACY_REGISTRY {
            registry = DEFAULT_REGISTRY.to_string();
        }
        let mut repository = repository.to_string();
        if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            repository = format!("{OFFICIAL_REPO_PREFIX}{repository}");
        }
        if registry.len() + 1 + repository.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::NameTooLong {
                input: input.to_string(),
            });
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Host to talk the registry API to (`docker.io` is served by `registry-1.docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// Repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository with another tag (digest dropped).
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        validate_tag(tag).map_err(|reason| ReferenceError::Invalid {
            input: tag.to_string(),
            reason,
        })?;
        Ok(Self {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }

    /// The same repository pinned to a digest (tag dropped).
    pub fn with_digest(&self, digest: &str) -> Result<Self, ReferenceError> {
        validate_digest(digest).map_err(|reason| ReferenceError::Invalid {
            input: digest.to_string(),
            reason,
        })?;
        Ok(Self {
            tag: None,
            digest: Some(digest.to_string()),
            ..self.clone()
        })
    }

    /// Docker's short form for display (`busybox:latest`, `bitnami/jenkins:2`), as
    /// `docker images` prints (normalize.go `FamiliarString`).
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_name();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// Short repository name without tag (`busybox`, `127.0.0.1:5000/app`).
    pub fn familiar_name(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix(OFFICIAL_REPO_PREFIX)
                .filter(|r| !r.contains('/'))
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// normalize.go `splitDockerDomain`: the first component is a registry only if it looks
/// like a host (has `.` or `:`, or is `localhost`) or has uppercase letters.
fn split_registry(name: &str) -> (Option<String>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first.to_string()), rest)
        }
        _ => (None, name),
    }
}

/// `domainAndPort`: host labels `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?` joined by `.`, or a
/// bracketed IPv6 address, then an optional `:port`.
fn validate_domain(domain: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry {domain:?} has an unclosed '['"))?;
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(format!("registry {domain:?} is not a valid IPv6 address"));
        }
        match after {
            "" => (None, None),
            p => (
                None,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("registry {domain:?} has junk after ']'"))?,
                ),
            ),
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        for label in host.split('.') {
            let b = label.as_bytes();
            let ok = !b.is_empty()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-';
            if !ok {
                return Err(format!("registry host {host:?} is not a valid host name"));
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("registry port {port:?} is not a number"));
        }
    }
    Ok(())
}

/// `path-component ::= [a-z0-9]+ (separator [a-z0-9]+)*`, `separator ::= [_.] | __ | -+`.
fn validate_path(path: &str) -> Result<(), String> {
    for comp in path.split('/') {
        let b = comp.as_bytes();
        if b.is_empty() {
            return Err("repository name has an empty path component".into());
        }
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return Err(format!(
                "repository path component {comp:?} must start and end with a lowercase letter or digit"
            ));
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &comp[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
            if !ok {
                return Err(format!(
                    "repository path component {comp:?} has an invalid separator {sep:?}"
                ));
            }
        }
    }
    Ok(())
}

/// `tag ::= [\w][\w.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    if b.is_empty()
        || b.len() > 128
        || !word(b[0])
        || !b.iter().all(|c| word(*c) || *c == b'.' || *c == b'-')
    {
        return Err(format!(
            "tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
        ));
    }
    Ok(())
}

/// `digest ::= algorithm ':' hex`; sha256 must be exactly 64 lowercase hex characters
/// (go-digest's `Validate`), other algorithms at least 32 hex characters.
pub(crate) fn validate_digest(digest: &str) -> Result<(), String> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| format!("digest {digest:?} has no algorithm prefix"))?;
    let alg_ok = !alg.is_empty()
        && alg.as_bytes()[0].is_ascii_alphabetic()
        && alg
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'.'));
    if !alg_ok {
        return Err(format!("digest algorithm {alg:?} is invalid"));
    }
    let hex_ok = match alg {
        "sha256" => {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        }
        "sha512" => {
            hex.len() == 128
                && hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        }
        _ => hex.len() >= 32 && hex.bytes().all(|c| c.is_ascii_hexdigit()),
    };
    if !hex_ok {
        return Err(format!(
            "digest {digest:?} has an invalid hex part for {alg}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn norm(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("mysql:5.7"), "docker.io/library/mysql:5.7");
        assert_eq!(
            norm("wordpress:latest"),
            "docker.io/library/wordpress:latest"
        );
        assert_eq!(
            norm("docker.io/bitnami/jenkins:2-debian-10"),
            "docker.io/bitnami/jenkins:2-debian-10"
        );
        assert_eq!(norm("bitnami/jenkins"), "docker.io/bitnami/jenkins:latest");
        assert_eq!(
            norm("127.0.0.1:5000/busybox"),
            "127.0.0.1:5000/busybox:latest"
        );
        assert_eq!(norm("localhost/app:v1"), "localhost/app:v1");
        assert_eq!(
            norm("index.docker.io/library/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(norm("docker.io/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("ghcr.io/a/b/c:1.0"), "ghcr.io/a/b/c:1.0");
        assert_eq!(norm("[::1]:5000/x"), "[::1]:5000/x:latest");
        assert_eq!(norm("Example.com/app"), "Example.com/app:latest");
        assert_eq!(
            norm("a__b-c---d/e.f_g"),
            "docker.io/a__b-c---d/e.f_g:latest"
        );
        assert!(
            ImageRef::parse("a__b.c/x").is_err(),
            "a first component with a dot is a host"
        );
    }

    #[test]
    fn digests_and_ports() {
        let r = ImageRef::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(D));
        let r = ImageRef::parse(&format!("localhost:5000/a/b:v1@{D}")).unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.digest(), Some(D));
        // A port without tag: the ':' before '/' is not a tag separator.
        let r = ImageRef::parse("myreg:443/app").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("myreg:443", "app", Some("latest"))
        );
    }

    #[test]
    fn familiar_forms() {
        assert_eq!(
            ImageRef::parse("busybox").unwrap().familiar(),
            "busybox:latest"
        );
        assert_eq!(
            ImageRef::parse("bitnami/jenkins:2").unwrap().familiar(),
            "bitnami/jenkins:2"
        );
        assert_eq!(
            ImageRef::parse("127.0.0.1:5000/x:y").unwrap().familiar(),
            "127.0.0.1:5000/x:y"
        );
        assert_eq!(
            ImageRef::parse("busybox").unwrap().api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            "",
            "Busybox",
            "docker.io/Library/busybox",
            "busybox:",
            "busybox:-bad",
            "busybox@sha256:abc",
            "busybox@sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "busybox@md5",
            "/busybox",
            "busybox/",
            "a//b",
            "-busybox",
            "busy..box",
            "busy box",
            "reg:port/x",
            "-reg.io/x",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "a:b:c",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("example.com/{}", "a".repeat(250));
        assert!(matches!(
            ImageRef::parse(&long),
            Err(ReferenceError::NameTooLong { .. })
        ));
        let tag129 = format!("busybox:{}", "t".repeat(129));
        assert!(ImageRef::parse(&tag129).is_err());
    }

    #[test]
    fn errors_are_clear() {
        let e = ImageRef::parse("Busybox").unwrap_err().to_string();
        assert!(e.contains("must be lowercase"), "{e}");
        let e = ImageRef::parse("busybox:-x").unwrap_err().to_string();
        assert!(e.contains("tag"), "{e}");
    }

    #[test]
    fn with_tag_and_serde() {
        let r = ImageRef::parse("busybox")
            .unwrap()
            .with_tag("1.36")
            .unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:1.36");
        let j = serde_json::to_string(&r).unwrap();
        let back: ImageRef = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
    }
}
