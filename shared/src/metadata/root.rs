//! The root role: the keys, and for each role which of them sign and how many must.

use serde::{Deserialize, Serialize};

use super::error::MetadataError;
use super::key::{Bytes32, KeyId, PublicKey};
use super::role::{Role, RoleKeys, RoleType, check_common};
use super::time::UnixTime;

/// The one key scheme: Ed25519 (signatures with COSE algorithm EdDSA, -8).
pub const KEY_SCHEME: &str = "ed25519";

/// A root payload. Build one with [`Root::new`]; decoded ones have passed [`Role::check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    #[serde(rename = "type")]
    role: RoleType,
    spec_version: u64,
    version: u64,
    issued: UnixTime,
    expires: UnixTime,
    keys: Vec<KeyEntry>,
    roles: Roles,
}

/// The key sets of the three roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    /// Who signs new roots.
    pub root: RoleKeys,
    /// Who signs targets.
    pub targets: RoleKeys,
    /// Who signs timestamps.
    pub timestamp: RoleKeys,
}

/// A key as the root lists it: `{"scheme": "ed25519", "public": h'<32 bytes>'}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    scheme: String,
    public: Bytes32,
}

// === impl Root ===

impl Root {
    /// A root payload at the current spec version.
    pub fn new(
        version: u64,
        issued: UnixTime,
        expires: UnixTime,
        keys: &[PublicKey],
        roles: Roles,
    ) -> Self {
        Root {
            role: RoleType::Root,
            spec_version: super::role::SPEC_VERSION,
            version,
            issued,
            expires,
            keys: keys
                .iter()
                .map(|k| KeyEntry {
                    scheme: KEY_SCHEME.to_owned(),
                    public: Bytes32(*k.as_bytes()),
                })
                .collect(),
            roles,
        }
    }

    /// The key sets.
    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// The keys and threshold of one role.
    pub fn role_keys(&self, role: RoleType) -> &RoleKeys {
        match role {
            RoleType::Root => &self.roles.root,
            RoleType::Targets => &self.roles.targets,
            RoleType::Timestamp => &self.roles.timestamp,
        }
    }

    /// The listed public keys (for a checked root, all valid).
    pub fn keys(&self) -> Vec<PublicKey> {
        self.keys
            .iter()
            .filter_map(|k| PublicKey::from_bytes(&k.public.0).ok())
            .collect()
    }

    /// The public key with this id, if the root lists it.
    pub fn key(&self, id: &KeyId) -> Option<PublicKey> {
        self.keys
            .iter()
            .find(|k| KeyId::of(&k.public.0) == *id)
            .and_then(|k| PublicKey::from_bytes(&k.public.0).ok())
    }
}

impl Role for Root {
    const TYPE: RoleType = RoleType::Root;

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
        let invalid = |reason: String| MetadataError::Invalid {
            file: file.to_owned(),
            role: RoleType::Root,
            reason,
        };
        let mut ids = Vec::with_capacity(self.keys.len());
        for key in &self.keys {
            if key.scheme != KEY_SCHEME {
                return Err(invalid(format!(
                    "key scheme {:?} is not {KEY_SCHEME:?}",
                    key.scheme
                )));
            }
            let public = PublicKey::from_bytes(&key.public.0)
                .map_err(|e| invalid(format!("unusable key: {e}")))?;
            if ids.contains(&public.id()) {
                return Err(invalid(format!("key {} is listed twice", public.id())));
            }
            ids.push(public.id());
        }
        for role in [RoleType::Root, RoleType::Targets, RoleType::Timestamp] {
            let keys = self.role_keys(role);
            if keys.threshold() == 0 {
                return Err(invalid(format!("the {role} threshold is 0")));
            }
            if usize::try_from(keys.threshold()).unwrap_or(usize::MAX) > keys.keyids().len() {
                return Err(invalid(format!(
                    "the {role} threshold {} is more than its {} key(s)",
                    keys.threshold(),
                    keys.keyids().len()
                )));
            }
            for (i, id) in keys.keyids().iter().enumerate() {
                if !ids.contains(id) {
                    return Err(invalid(format!("the {role} role names unlisted key {id}")));
                }
                if keys.keyids().iter().skip(i + 1).any(|other| other == id) {
                    return Err(invalid(format!("the {role} role names key {id} twice")));
                }
            }
        }
        Ok(())
    }
}
