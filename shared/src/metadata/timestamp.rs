//! The timestamp role: short-lived, re-signed often, and naming exactly one targets file
//! (version, length, sha256) so a device sees fresh metadata and never a mix of files.

use serde::{Deserialize, Serialize};

use super::error::MetadataError;
use super::key::Bytes32;
use super::role::{Role, RoleType, check_common};
use super::time::UnixTime;

/// A timestamp payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timestamp {
    #[serde(rename = "type")]
    role: RoleType,
    spec_version: u64,
    version: u64,
    issued: UnixTime,
    expires: UnixTime,
    targets: TargetsMeta,
}

/// What the timestamp says about the current targets file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsMeta {
    version: u64,
    length: u64,
    sha256: Bytes32,
}

// === impl Timestamp ===

impl Timestamp {
    /// A timestamp payload at the current spec version naming `targets`.
    pub fn new(version: u64, issued: UnixTime, expires: UnixTime, targets: TargetsMeta) -> Self {
        Timestamp {
            role: RoleType::Timestamp,
            spec_version: super::role::SPEC_VERSION,
            version,
            issued,
            expires,
            targets,
        }
    }

    /// The targets file it names.
    pub fn targets(&self) -> &TargetsMeta {
        &self.targets
    }
}

impl Role for Timestamp {
    const TYPE: RoleType = RoleType::Timestamp;

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
        if self.targets.version == 0 || self.targets.length == 0 {
            return Err(MetadataError::Invalid {
                file: file.to_owned(),
                role: RoleType::Timestamp,
                reason: "the targets version and length must be at least 1".to_owned(),
            });
        }
        Ok(())
    }
}

// === impl TargetsMeta ===

impl TargetsMeta {
    /// Describes a signed targets file: its version and its exact bytes.
    pub fn new(version: u64, signed_targets: &[u8]) -> Self {
        use sha2::Digest as _;
        TargetsMeta {
            version,
            length: u64::try_from(signed_targets.len()).unwrap_or(u64::MAX),
            sha256: Bytes32(sha2::Sha256::digest(signed_targets).into()),
        }
    }

    /// From its parts (for tests and tools that build odd timestamps on purpose).
    pub fn from_parts(version: u64, length: u64, sha256: [u8; 32]) -> Self {
        TargetsMeta {
            version,
            length,
            sha256: Bytes32(sha256),
        }
    }

    /// The targets version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The exact length of the signed targets file, in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The sha256 of the signed targets file.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256.0
    }
}
