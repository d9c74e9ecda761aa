//! The targets role: the artifacts a device may run, each pinned by manifest digest and
//! exact size, with optional selectors that say which devices it is for.
//!
//! A [`TargetEntry`] is also the element of the pins file that `meshctl import` writes and
//! `meshctl release --pins` reads (the same fields, in JSON): see docs/metadata.md.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::MetadataError;
use super::role::{Role, RoleType, check_common};
use super::rollout::{Rollout, RolloutError};
use super::time::UnixTime;
use crate::digest::Digest;
use crate::manifest::MAX_MANIFEST_SIZE;
use crate::media_type::manifest_kind;
use crate::platform::Platform;
use crate::reference::{Reference, ReferenceError, Registry, Repository};
use crate::verify::Verifier;

/// The longest target name and hardware class.
pub const NAME_MAX: usize = 128;

/// A targets payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(rename = "type")]
    role: RoleType,
    spec_version: u64,
    version: u64,
    issued: UnixTime,
    expires: UnixTime,
    targets: Vec<TargetEntry>,
}

/// One artifact a device may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetEntry {
    /// Unique within the targets file.
    pub name: TargetName,
    /// Where the content comes from: `ghcr.io/org/app`.
    pub repository: UpstreamRepository,
    /// The manifest (or index) digest.
    pub digest: Digest,
    /// The manifest's exact size in bytes.
    pub size: u64,
    /// The manifest's media type (one of the four manifest and index types).
    pub media_type: String,
    /// Which devices it is for; absent means every device.
    #[serde(default, skip_serializing_if = "Selectors::is_empty")]
    pub selectors: Selectors,
    /// Free-form text fields for the apply hook; the verifier does not interpret them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom: BTreeMap<String, String>,
    /// When each device may apply it ([`Rollout`]); absent means every device at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// How devices apply it; absent means as the artifact says (an image is laid out, a
    /// model or file artifact becomes files). Absent from every file written before it
    /// existed, which therefore still decode and verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<ApplyMode>,
}

/// How a device applies a target, when the signed entry overrides what the artifact says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyMode {
    /// As an OCI image layout (what an image gets).
    Layout,
    /// As files in a folder (what a model or file artifact gets).
    Files,
}

/// Which devices a target is for. Every selector present must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selectors {
    /// The device's hardware class, compared exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_class: Option<String>,
    /// The device's platform, compared after normalization; written as text
    /// (`linux/arm64`, `linux/arm/v7`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "platform_text"
    )]
    pub platform: Option<Platform>,
}

/// A target name: 1 to 128 of `[A-Za-z0-9._-]`, starting with a letter or digit. Names are
/// used as file and directory names on devices, so nothing else (no `/`, no `..`) passes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetName(String);

/// The upstream repository of a target in its normalized form, `registry/repository`
/// (`ghcr.io/org/app`, `docker.io/library/nginx`), with no tag or digest.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UpstreamRepository {
    registry: Registry,
    repository: Repository,
}

/// Why a target entry, a target name or an upstream repository was refused. Each variant
/// carries the input it refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// A target name that is not 1 to [`NAME_MAX`] of `[A-Za-z0-9._-]` starting with a
    /// letter or digit.
    #[error(
        "target name {name:?} must be 1 to {NAME_MAX} of [A-Za-z0-9._-] starting with a letter or digit"
    )]
    Name {
        /// The name (shortened if long).
        name: String,
    },
    /// A repository that is not a reference at all.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A repository with a tag or digest.
    #[error("repository {input:?} must not carry a tag or digest")]
    RepositoryPinned {
        /// The repository as written (shortened if long).
        input: String,
    },
    /// A repository in a short or otherwise unnormalized form (`nginx`).
    #[error("repository {input:?} is not in normalized form; write {normalized:?}")]
    RepositoryNotNormalized {
        /// The repository as written (shortened if long).
        input: String,
        /// How it must be written.
        normalized: String,
    },
    /// A media type that is not one of the four manifest and index types.
    #[error("media type {media_type:?} is not a manifest or index type")]
    MediaType {
        /// The media type.
        media_type: String,
    },
    /// A manifest size of zero or over [`MAX_MANIFEST_SIZE`].
    #[error("size {size} is not between 1 and {max} bytes")]
    Size {
        /// The size.
        size: u64,
        /// The largest size allowed.
        max: u64,
    },
    /// A hardware class selector with the wrong characters or length.
    #[error(
        "hardware class {class:?} must be 1 to {NAME_MAX} of [A-Za-z0-9._-] starting with a letter or digit"
    )]
    HardwareClass {
        /// The hardware class.
        class: String,
    },
    /// More custom fields than allowed.
    #[error("more than {max} custom fields")]
    CustomFields {
        /// How many there are.
        count: usize,
        /// The most allowed.
        max: usize,
    },
    /// A rollout that breaks a rule of its own (no waves, shares or delays not increasing,
    /// the last wave short of the whole fleet).
    #[error(transparent)]
    Rollout(#[from] RolloutError),
}

/// The most custom fields a target entry may have.
pub const CUSTOM_FIELDS_MAX: usize = 64;

// === impl Targets ===

impl Targets {
    /// A targets payload at the current spec version.
    pub fn new(
        version: u64,
        issued: UnixTime,
        expires: UnixTime,
        entries: Vec<TargetEntry>,
    ) -> Self {
        Targets {
            role: RoleType::Targets,
            spec_version: super::role::SPEC_VERSION,
            version,
            issued,
            expires,
            targets: entries,
        }
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[TargetEntry] {
        &self.targets
    }

    /// The entry with this name.
    pub fn entry(&self, name: &str) -> Option<&TargetEntry> {
        self.targets.iter().find(|e| e.name.as_str() == name)
    }

    /// The entries meant for a device of this hardware class and platform.
    pub fn matching<'a>(
        &'a self,
        hardware_class: &'a str,
        platform: &'a Platform,
    ) -> impl Iterator<Item = &'a TargetEntry> + 'a {
        self.targets
            .iter()
            .filter(move |e| e.selectors.matches(hardware_class, platform))
    }
}

impl Role for Targets {
    const TYPE: RoleType = RoleType::Targets;

    fn declared_type(&self) -> RoleType {
        self.role
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn issued(&self) -> UnixTime {
        self.issued
    }
    fn expires(&self) -> UnixTime {
        self.expires
    }
    fn spec_version(&self) -> u64 {
        self.spec_version
    }

    fn check(&self, file: &str) -> Result<(), MetadataError> {
        check_common(self, file)?;
        let mut names = std::collections::HashSet::with_capacity(self.targets.len());
        for entry in &self.targets {
            entry
                .check()
                .map_err(|source| MetadataError::InvalidTarget {
                    file: file.to_owned(),
                    name: entry.name.to_string(),
                    source: Box::new(source),
                })?;
            if !names.insert(entry.name.as_str()) {
                return Err(MetadataError::Invalid {
                    file: file.to_owned(),
                    role: RoleType::Targets,
                    reason: format!("target name {} is used twice", entry.name),
                });
            }
        }
        Ok(())
    }
}

// === impl TargetEntry ===

impl TargetEntry {
    /// The rules decoding alone does not enforce.
    pub fn check(&self) -> Result<(), TargetError> {
        if manifest_kind(&self.media_type).is_none() {
            return Err(TargetError::MediaType {
                media_type: self.media_type.clone(),
            });
        }
        if self.size == 0 || self.size > MAX_MANIFEST_SIZE {
            return Err(TargetError::Size {
                size: self.size,
                max: MAX_MANIFEST_SIZE,
            });
        }
        if let Some(class) = &self.selectors.hardware_class
            && !is_name(class)
        {
            return Err(TargetError::HardwareClass {
                class: class.clone(),
            });
        }
        if self.custom.len() > CUSTOM_FIELDS_MAX {
            return Err(TargetError::CustomFields {
                count: self.custom.len(),
                max: CUSTOM_FIELDS_MAX,
            });
        }
        if let Some(rollout) = &self.rollout {
            rollout.check()?;
        }
        Ok(())
    }

    /// The reference to fetch: the repository pinned to the digest.
    pub fn reference(&self) -> Reference {
        Reference::from_parts(
            self.repository.registry.clone(),
            self.repository.repository.clone(),
            None,
            Some(self.digest.clone()),
        )
    }

    /// A streaming verifier for the manifest: fails past `size` bytes or on a wrong digest.
    pub fn verifier(&self) -> Verifier {
        Verifier::new(self.digest.clone(), self.size)
    }
}

// === impl ApplyMode ===

impl ApplyMode {
    /// `layout` or `files`, as written in the metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyMode::Layout => "layout",
            ApplyMode::Files => "files",
        }
    }
}

impl std::str::FromStr for ApplyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "layout" => Ok(ApplyMode::Layout),
            "files" => Ok(ApplyMode::Files),
            other => Err(format!("{other:?} is not `layout` or `files`")),
        }
    }
}

// === impl Selectors ===

impl Selectors {
    /// Whether no selector is set (the target is for every device).
    pub fn is_empty(&self) -> bool {
        self.hardware_class.is_none() && self.platform.is_none()
    }

    /// Whether a device of this class and platform is selected.
    pub fn matches(&self, hardware_class: &str, platform: &Platform) -> bool {
        self.hardware_class
            .as_deref()
            .is_none_or(|c| c == hardware_class)
            && self.platform.as_ref().is_none_or(|p| p == platform)
    }
}

// === impl TargetName ===

impl TargetName {
    /// Parses a target name.
    pub fn parse(input: &str) -> Result<Self, TargetError> {
        if is_name(input) {
            Ok(TargetName(input.to_owned()))
        } else {
            Err(TargetError::Name {
                name: crate::digest::echo(input),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TargetName {
    type Error = TargetError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        TargetName::parse(&value)
    }
}

impl From<TargetName> for String {
    fn from(value: TargetName) -> Self {
        value.0
    }
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

fn is_name(input: &str) -> bool {
    input.len() <= NAME_MAX
        && input
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && input
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

// === impl UpstreamRepository ===

impl UpstreamRepository {
    /// Parses `registry/repository` in normalized form: `ghcr.io/org/app`. Short forms
    /// (`nginx`), tags and digests are refused, so one repository has one spelling.
    pub fn parse(input: &str) -> Result<Self, TargetError> {
        let reference = Reference::parse(input)?;
        if reference.tag().is_some() || reference.digest().is_some() {
            return Err(TargetError::RepositoryPinned {
                input: crate::digest::echo(input),
            });
        }
        if reference.name() != input {
            return Err(TargetError::RepositoryNotNormalized {
                input: crate::digest::echo(input),
                normalized: reference.name(),
            });
        }
        Ok(UpstreamRepository {
            registry: reference.registry().clone(),
            repository: reference.repository().clone(),
        })
    }

    /// The registry host (`ghcr.io`, `docker.io`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The repository path (`org/app`).
    pub fn repository(&self) -> &Repository {
        &self.repository
    }
}

impl TryFrom<String> for UpstreamRepository {
    type Error = TargetError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        UpstreamRepository::parse(&value)
    }
}

impl From<UpstreamRepository> for String {
    fn from(value: UpstreamRepository) -> Self {
        value.to_string()
    }
}

impl fmt::Display for UpstreamRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

impl fmt::Debug for UpstreamRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A platform as the text `os/arch[/variant]` (the OCI JSON object form is for manifests).
mod platform_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::platform::Platform;

    pub(super) fn serialize<S: Serializer>(
        platform: &Option<Platform>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match platform {
            Some(p) => serializer.serialize_str(&p.to_string()),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Platform>, D::Error> {
        let text = String::deserialize(deserializer)?;
        Platform::parse(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}
