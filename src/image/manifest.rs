//! Image documents: manifests, indexes (manifest lists), image configs, and platform
//! selection.
//!
//! Takes the exact JSON bytes of a manifest, index or config (OCI image-spec or Docker
//! schema2); gives typed, tolerant views of the fields berth uses. The bytes themselves are
//! kept unchanged by `store` so digests stay stable; these types are for reading and for
//! writing new documents (`archive` import). Neighbours: `registry` (fetches), `store`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Media types we accept when asking a registry for a manifest.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot parse {what} {digest}")]
    Parse {
        what: &'static str,
        digest: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported media type {media_type:?} for {digest}")]
    MediaType { media_type: String, digest: String },
    #[error("no manifest for platform {wanted} in index {digest} (available: {available})")]
    NoPlatform {
        wanted: String,
        digest: String,
        available: String,
    },
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    LayerMediaType { media_type: String, digest: String },
}

/// A content descriptor (image-spec descriptor.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, Go-style names (`amd64`, `arm64/v8`).
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Self {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: variant.map(Into::into),
            os_version: None,
        }
    }

    /// Parses `os/arch[/variant]` (docker's `--platform`).
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('/');
        let os = it.next().filter(|x| !x.is_empty())?;
        let architecture = it.next().filter(|x| !x.is_empty())?;
        let variant = it.next().map(str::to_string);
        if it.next().is_some() {
            return None;
        }
        Some(Self {
            os: os.into(),
            architecture: architecture.into(),
            variant,
            os_version: None,
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (OCI or Docker schema2: same shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index / Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Either kind of top-level document.
#[derive(Debug, Clone)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

impl Document {
    /// Parses manifest bytes; the kind comes from `media_type` when known, else from the
    /// JSON (`manifests` → index, `layers` → manifest), as registries may omit it.
    pub fn parse(
        bytes: &[u8],
        media_type: Option<&str>,
        digest: &str,
    ) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let perr = |what, source| ManifestError::Parse {
            what,
            digest: digest.to_string(),
            source,
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| perr("manifest", e))?;
        let mt = media_type
            .filter(|m| !m.is_empty() && *m != "application/json")
            .map(str::to_string)
            .or(probe.media_type);
        let is_index = match mt.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            None => probe.manifests.is_some(),
            Some(other) => {
                return Err(ManifestError::MediaType {
                    media_type: other.to_string(),
                    digest: digest.to_string(),
                })
            }
        };
        if is_index {
            Ok(Self::Index(
                serde_json::from_slice(bytes).map_err(|e| perr("index", e))?,
            ))
        } else {
            Ok(Self::Manifest(
                serde_json::from_slice(bytes).map_err(|e| perr("manifest", e))?,
            ))
        }
    }
}

/// Picks the manifest for `want` from an index: os and architecture must match; an exact
/// variant wins, then an entry without variant, then (arm64 only, where `v8` is the
/// default) any. Attestation and other non-image entries (`unknown/unknown`, buildx's
/// `vnd.docker.reference.type` annotation) are never picked, whatever their order.
pub fn select_platform<'a>(
    index: &'a Index,
    want: &Platform,
    digest: &str,
) -> Result<&'a Descriptor, ManifestError> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""))
        .filter(|d| {
            d.annotations
                .as_ref()
                .is_none_or(|a| !a.contains_key("vnd.docker.reference.type"))
        })
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
        })
        .collect();
    let variant_of = |d: &Descriptor| d.platform.as_ref().and_then(|p| p.variant.clone());
    let pick = candidates
        .iter()
        .find(|d| variant_of(d) == want.variant)
        .or_else(|| candidates.iter().find(|d| variant_of(d).is_none()))
        .or_else(|| {
            if want.variant.is_none() || want.architecture == "arm64" {
                candidates.first()
            } else {
                None
            }
        });
    pick.copied().ok_or_else(|| ManifestError::NoPlatform {
        wanted: want.to_string(),
        digest: digest.to_string(),
        available: index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Whether a layer media type is one we can unpack (compression is detected from bytes).
pub fn is_layer_media_type(mt: &str) -> bool {
    matches!(
        mt,
        OCI_LAYER_GZIP | OCI_LAYER_ZSTD | OCI_LAYER_TAR | DOCKER_LAYER_GZIP | DOCKER_LAYER_FOREIGN
    ) || mt.starts_with("application/vnd.oci.image.layer.nondistributable.v1.tar")
}

/// The image config document (image-spec config.md + Docker's extensions such as
/// `Healthcheck`). Unknown fields are kept in `extra` so a re-serialised config loses
/// nothing, but the store always keeps the original bytes anyway.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The defaults a container takes from its image (`config` in the image config).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

/// Docker's `Healthcheck` (durations in nanoseconds, as Docker writes them).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl ImageConfig {
    pub fn parse(bytes: &[u8], digest: &str) -> Result<Self, ManifestError> {
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
            what: "image config",
            digest: digest.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(mt: &str, n: u8, p: Option<(&str, &str, Option<&str>)>) -> Descriptor {
        Descriptor {
            media_type: mt.into(),
            digest: Digest::of(&[n]),
            size: 1,
            platform: p.map(|(os, a, v)| Platform {
                os: os.into(),
                architecture: a.into(),
                variant: v.map(Into::into),
                os_version: None,
            }),
            annotations: None,
        }
    }

    fn index(m: Vec<Descriptor>) -> Index {
        Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: m,
            annotations: None,
        }
    }

    #[test]
    fn picks_platform_not_first_and_skips_attestations() {
        let mut att = desc(OCI_MANIFEST, 2, Some(("unknown", "unknown", None)));
        att.annotations = Some(
            [(
                "vnd.docker.reference.type".to_string(),
                "attestation-manifest".to_string(),
            )]
            .into(),
        );
        let idx = index(vec![
            desc(OCI_MANIFEST, 1, Some(("linux", "arm64", Some("v8")))),
            att,
            desc(OCI_MANIFEST, 3, Some(("linux", "amd64", None))),
        ]);
        let amd = Platform::parse("linux/amd64").unwrap();
        assert_eq!(
            select_platform(&idx, &amd, "x").unwrap().digest,
            Digest::of(&[3])
        );
        let arm = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(
            select_platform(&idx, &arm, "x").unwrap().digest,
            Digest::of(&[1])
        );
        let arm_nov = Platform::parse("linux/arm64").unwrap();
        assert_eq!(
            select_platform(&idx, &arm_nov, "x").unwrap().digest,
            Digest::of(&[1])
        );
        let e = select_platform(&idx, &Platform::parse("linux/s390x").unwrap(), "x").unwrap_err();
        assert!(e.to_string().contains("linux/s390x"), "{e}");
    }

    #[test]
    fn variant_preferred() {
        let idx = index(vec![
            desc(DOCKER_MANIFEST, 1, Some(("linux", "arm", Some("v6")))),
            desc(DOCKER_MANIFEST, 2, Some(("linux", "arm", Some("v7")))),
        ]);
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(
            select_platform(&idx, &v7, "x").unwrap().digest,
            Digest::of(&[2])
        );
        assert!(select_platform(&idx, &Platform::parse("linux/arm/v5").unwrap(), "x").is_err());
    }

    #[test]
    fn document_kind_from_json() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{}","size":1}},"layers":[]}}"#,
            Digest::of(b"c")
        );
        assert!(matches!(
            Document::parse(m.as_bytes(), None, "d").unwrap(),
            Document::Manifest(_)
        ));
        let i = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            Document::parse(i.as_bytes(), None, "d").unwrap(),
            Document::Index(_)
        ));
        assert!(Document::parse(b"{}", Some("text/plain"), "d").is_err());
    }

    #[test]
    fn config_fields() {
        let c = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Cmd":["sh"],
            "WorkingDir":"/w","User":"1:2","ExposedPorts":{"80/tcp":{}},"Volumes":{"/data":{}},
            "StopSignal":"SIGQUIT","Labels":{"k":"v"},"Healthcheck":{"Test":["CMD","true"],"Interval":1000000000}},
            "rootfs":{"type":"layers","diff_ids":[]},"unknown":1}"#;
        let c = ImageConfig::parse(c, "d").unwrap();
        assert_eq!(c.config.cmd.as_deref(), Some(&["sh".to_string()][..]));
        assert_eq!(c.config.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.config.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(c.config.healthcheck.unwrap().interval, Some(1_000_000_000));
        assert!(c.extra.contains_key("unknown"));
    }
}
