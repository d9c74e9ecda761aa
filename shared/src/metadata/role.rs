//! The three roles, what every role payload carries (type, spec version, version, issue
//! time, expiry), and the [`Role`] trait the envelope and the workflow use to treat them
//! alike.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::MetadataError;
use super::key::KeyId;
use super::time::UnixTime;

/// The spec version this code writes and verifies. A payload with any other is refused.
pub const SPEC_VERSION: u64 = 1;

/// Which role a metadata file plays. On the wire: the text `"root"`, `"targets"` or
/// `"timestamp"` under the payload key `"type"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleType {
    /// The root of trust: keys and, per role, key ids and threshold.
    Root,
    /// The artifacts a device may run.
    Targets,
    /// Freshness: the current targets version, length and sha256.
    Timestamp,
}

/// A role's authorized keys and how many of them must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    keyids: Vec<KeyId>,
    threshold: u32,
}

/// A role payload: what the envelope and the workflow need to know about any of them.
pub trait Role: Serialize + DeserializeOwned {
    /// The role's type, which the payload must name.
    const TYPE: RoleType;

    /// The role the payload says it is (its `type`).
    fn declared_type(&self) -> RoleType;
    /// The payload's version number (starts at 1).
    fn version(&self) -> u64;
    /// When it was signed. Trusted metadata's `issued` keeps the verifier's clock from going
    /// back: see the clock rules of [`super::TrustedSet`].
    fn issued(&self) -> UnixTime;
    /// When it stops being valid.
    fn expires(&self) -> UnixTime;
    /// The spec version it was written for.
    fn spec_version(&self) -> u64;
    /// The format rules beyond what decoding checks (thresholds, duplicates, ...).
    fn check(&self, file: &str) -> Result<(), MetadataError>;

    /// Whether it is expired at `now` (valid while `now < expires`).
    fn is_expired(&self, now: UnixTime) -> bool {
        now >= self.expires()
    }
}

/// Reads only the `type` of a payload, to say "wrong role" before anything else.
#[derive(Deserialize)]
pub(crate) struct Peek {
    #[serde(rename = "type")]
    pub(crate) role: ciborium::Value,
}

// === impl RoleType ===

impl RoleType {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RoleType::Root => "root",
            RoleType::Targets => "targets",
            RoleType::Timestamp => "timestamp",
        }
    }
}

impl fmt::Display for RoleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl RoleKeys ===

impl RoleKeys {
    /// A role's keys and threshold (checked when the root is checked).
    pub fn new(keyids: Vec<KeyId>, threshold: u32) -> Self {
        RoleKeys { keyids, threshold }
    }

    /// The authorized key ids.
    pub fn keyids(&self) -> &[KeyId] {
        &self.keyids
    }

    /// How many distinct authorized keys must sign.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Whether `id` is one of the authorized keys.
    pub fn authorizes(&self, id: &KeyId) -> bool {
        self.keyids.contains(id)
    }

    /// Whether both name the same set of keys (order and threshold aside).
    pub fn same_keys(&self, other: &RoleKeys) -> bool {
        self.keyids.iter().all(|k| other.keyids.contains(k))
            && other.keyids.iter().all(|k| self.keyids.contains(k))
    }
}

/// Checks the fields every role shares.
pub(crate) fn check_common<R: Role>(role: &R, file: &str) -> Result<(), MetadataError> {
    if role.spec_version() != SPEC_VERSION {
        return Err(MetadataError::SpecVersion {
            file: file.to_owned(),
            found: role.spec_version(),
            supported: SPEC_VERSION,
        });
    }
    let invalid = |reason: &str| MetadataError::Invalid {
        file: file.to_owned(),
        role: R::TYPE,
        reason: reason.to_owned(),
    };
    if role.version() == 0 {
        return Err(invalid("version must be at least 1"));
    }
    if role.expires() <= role.issued() {
        return Err(invalid("expires must be after issued"));
    }
    Ok(())
}
