//! The manifest and index structures the agent and facade read, with a size cap.
//!
//! Only what pulling needs is modelled: descriptors (media type, digest, size, platform),
//! image manifests (config and layers) and indexes (per-platform manifests). Unknown fields
//! are ignored. A manifest is never re-serialized for hashing: digests are always computed
//! over the bytes as they came, and these structures are only read from them.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, echo};
use crate::media_type::{self, ManifestKind};
use crate::platform::Platform;

/// The largest manifest accepted: 4 MiB, as the distribution registry enforces.
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// A content descriptor: what a blob is, where it is (its digest) and how big.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// The digest of the referenced content.
    pub digest: Digest,
    /// The exact size of the referenced content in bytes.
    pub size: u64,
    /// The platform, on index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The artifact type, on artifact manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

/// A single-platform image: a config and layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's media type, when the body states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact type, for non-image artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to (signatures, SBOMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A multi-platform index (OCI index or Docker manifest list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// The index's media type, when the body states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The per-platform manifests.
    pub manifests: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A parsed manifest of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A single-platform image.
    Image(Box<ImageManifest>),
    /// A multi-platform index.
    Index(ImageIndex),
}

/// Why bytes are not an acceptable manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Over [`MAX_MANIFEST_SIZE`].
    #[error("manifest is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// The size found.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Not a manifest media type.
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// The `Content-Type` and the body's `mediaType` disagree.
    #[error("manifest served as {declared:?} says it is {body:?}")]
    MediaTypeMismatch {
        /// The declared type (header or descriptor).
        declared: String,
        /// The type the body states.
        body: String,
    },
    /// Neither the declared type nor the body says what kind of manifest this is.
    #[error(
        "cannot tell an image manifest from an index: no media type and no layers or manifests"
    )]
    UnknownKind,
    /// `schemaVersion` is not 2.
    #[error("unsupported manifest schemaVersion {0} (expected 2)")]
    SchemaVersion(u32),
    /// The JSON is malformed or misses required fields.
    #[error("malformed manifest JSON: {0}")]
    Json(String),
}

/// Just enough of a manifest to tell which kind it is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<IgnoredAny>,
    #[serde(default)]
    config: Option<IgnoredAny>,
}

// === impl ImageIndex ===

impl ImageIndex {
    /// The manifest a device of `platform` runs: the one whose platform comes earliest in
    /// [`Platform::compatible`] (its own platform, then what its CPU also runs); among equals,
    /// the first listed. Entries with no platform or another OS (attestation manifests say
    /// `unknown/unknown`) never match.
    pub fn manifest_for(&self, platform: &Platform) -> Option<&Descriptor> {
        let compatible = platform.compatible();
        self.manifests
            .iter()
            .filter_map(|d| {
                let p = d.platform.as_ref()?;
                compatible.iter().position(|c| c == p).map(|rank| (rank, d))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, d)| d)
    }
}

// === impl Manifest ===

impl Manifest {
    /// Parses manifest bytes. `declared` is the media type the bytes were served or described
    /// as (a `Content-Type` header or a descriptor's `mediaType`), if any; when both it and
    /// the body name a type they must agree.
    pub fn parse(bytes: &[u8], declared: Option<&str>) -> Result<Self, ManifestError> {
        let size = bytes.len() as u64;
        if size > MAX_MANIFEST_SIZE {
            return Err(ManifestError::TooLarge {
                size,
                limit: MAX_MANIFEST_SIZE,
            });
        }
        let json = |e: serde_json::Error| ManifestError::Json(echo(&e.to_string()));
        let probe: Probe = serde_json::from_slice(bytes).map_err(json)?;
        let declared_kind = match declared {
            Some(t) => Some(
                media_type::manifest_kind(t)
                    .ok_or_else(|| ManifestError::UnsupportedMediaType(echo(t)))?,
            ),
            None => None,
        };
        let body_kind = match &probe.media_type {
            Some(t) => Some(
                media_type::manifest_kind(t)
                    .ok_or_else(|| ManifestError::UnsupportedMediaType(echo(t)))?,
            ),
            None => None,
        };
        if let (Some(d), Some(b)) = (declared, &probe.media_type) {
            let essence = |t: &str| {
                t.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            };
            if essence(d) != essence(b) {
                return Err(ManifestError::MediaTypeMismatch {
                    declared: echo(d),
                    body: echo(b),
                });
            }
        }
        let kind = match (declared_kind.or(body_kind), &probe) {
            (Some(kind), _) => kind,
            (
                None,
                Probe {
                    manifests: Some(_),
                    config: None,
                    ..
                },
            ) => ManifestKind::Index,
            (
                None,
                Probe {
                    config: Some(_),
                    manifests: None,
                    ..
                },
            ) => ManifestKind::Image,
            (None, _) => return Err(ManifestError::UnknownKind),
        };
        let manifest = match kind {
            ManifestKind::Image => {
                Manifest::Image(Box::new(serde_json::from_slice(bytes).map_err(json)?))
            }
            ManifestKind::Index => Manifest::Index(serde_json::from_slice(bytes).map_err(json)?),
        };
        let version = match &manifest {
            Manifest::Image(m) => m.schema_version,
            Manifest::Index(i) => i.schema_version,
        };
        if version != 2 {
            return Err(ManifestError::SchemaVersion(version));
        }
        Ok(manifest)
    }

    /// Whether this is a multi-platform index.
    pub fn is_index(&self) -> bool {
        matches!(self, Manifest::Index(_))
    }

    /// The blobs an image manifest references (config first, then layers); none for an index.
    pub fn blobs(&self) -> Vec<&Descriptor> {
        match self {
            Manifest::Image(m) => std::iter::once(&m.config).chain(&m.layers).collect(),
            Manifest::Index(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
