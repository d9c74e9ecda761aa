//! The trusted set: the root, timestamp and targets a device currently trusts, and the
//! transitions of the TUF 5.x client workflow between them. Each `update_*` method either
//! moves the set forward or leaves it exactly as it was and says why.
//!
//! Nothing here fetches or writes files: [`super::Updater`] drives the order (root chain,
//! root expiry, timestamp, targets) and persists what was accepted.

use sha2::Digest as _;

use super::envelope::{open, open_root};
use super::error::MetadataError;
use super::role::{Role, RoleType};
use super::root::Root;
use super::store::StoredFiles;
use super::targets::Targets;
use super::time::UnixTime;
use super::timestamp::{TargetsMeta, Timestamp};

/// What a device trusts now.
#[derive(Debug, Clone)]
pub struct TrustedSet {
    root: Signed<Root>,
    timestamp: Option<Signed<Timestamp>>,
    targets: Option<Signed<Targets>>,
    latest_known: UnixTime,
}

/// A payload with the exact bytes it was verified from (what gets persisted).
#[derive(Debug, Clone)]
struct Signed<R> {
    payload: R,
    bytes: Vec<u8>,
}

/// The outcome of offering a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampUpdate {
    /// A newer timestamp was accepted.
    New,
    /// The same version as the trusted one: nothing new (the trusted one is kept).
    Unchanged,
}

/// What accepting a new root discarded (fast-forward attack recovery).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RootRotation {
    /// The timestamp keys changed, so the trusted timestamp was discarded.
    pub dropped_timestamp: bool,
    /// The targets keys changed, so the trusted targets were discarded.
    pub dropped_targets: bool,
}

/// The name the trust anchor goes by in errors.
pub const ANCHOR: &str = "trust anchor";

// === impl TrustedSet ===

impl TrustedSet {
    /// Starts from a pinned root (the trust anchor): it must be signed by a threshold of its
    /// own root keys. Its expiry is checked later, after the root chain, as TUF does: an
    /// old anchor may still lead to a current root.
    pub fn from_anchor(anchor: &[u8]) -> Result<Self, MetadataError> {
        let root = open_root(ANCHOR, anchor, None)?;
        Ok(TrustedSet {
            latest_known: root.issued(),
            root: Signed {
                payload: root,
                bytes: anchor.to_vec(),
            },
            timestamp: None,
            targets: None,
        })
    }

    /// Restores what a store held, starting from the anchor. A stored root replaces the
    /// anchor when it is self-signed and not older; otherwise (an anchor updated since, a
    /// damaged file) the anchor stays, and the next update walks the chain from it again,
    /// which is as safe as the first time. A stored timestamp or targets file that no longer
    /// verifies under the root is dropped (its keys were rotated). Expiry is not checked
    /// here: expired files still protect against rollback.
    pub fn from_stored(anchor: &[u8], stored: &StoredFiles) -> Result<Self, MetadataError> {
        let mut set = TrustedSet::from_anchor(anchor)?;
        if let Some(bytes) = &stored.root {
            let stored_root = open_root(super::store::ROOT_FILE, bytes, None).ok();
            if let Some(root) =
                stored_root.filter(|root| root.version() >= set.root.payload.version())
            {
                set.latest_known = set.latest_known.max(root.issued());
                set.root = Signed {
                    payload: root,
                    bytes: bytes.clone(),
                };
            }
        }
        if let Some(bytes) = &stored.timestamp
            && let Ok(ts) = open::<Timestamp>(super::store::TIMESTAMP_FILE, bytes, set.root())
        {
            set.latest_known = set.latest_known.max(ts.issued());
            set.timestamp = Some(Signed {
                payload: ts,
                bytes: bytes.clone(),
            });
        }
        if let Some(bytes) = &stored.targets
            && let Ok(targets) = open::<Targets>(super::store::TARGETS_FILE, bytes, set.root())
        {
            set.latest_known = set.latest_known.max(targets.issued());
            set.targets = Some(Signed {
                payload: targets,
                bytes: bytes.clone(),
            });
        }
        if let Some(known) = stored.latest_known {
            set.latest_known = set.latest_known.max(known);
        }
        Ok(set)
    }

    /// The trusted root.
    pub fn root(&self) -> &Root {
        &self.root.payload
    }

    /// The trusted root's bytes.
    pub fn root_bytes(&self) -> &[u8] {
        &self.root.bytes
    }

    /// The trusted timestamp, if any.
    pub fn timestamp(&self) -> Option<&Timestamp> {
        self.timestamp.as_ref().map(|s| &s.payload)
    }

    /// The trusted timestamp's bytes, if any.
    pub fn timestamp_bytes(&self) -> Option<&[u8]> {
        self.timestamp.as_ref().map(|s| s.bytes.as_slice())
    }

    /// The trusted targets, if any. After a successful update, these are what the device
    /// may run.
    pub fn targets(&self) -> Option<&Targets> {
        self.targets.as_ref().map(|s| &s.payload)
    }

    /// The trusted targets' bytes, if any.
    pub fn targets_bytes(&self) -> Option<&[u8]> {
        self.targets.as_ref().map(|s| s.bytes.as_slice())
    }

    /// The newest issue time of any metadata trusted so far.
    pub fn latest_known(&self) -> UnixTime {
        self.latest_known
    }

    /// The clock to check expiry against: the system clock, never below the latest known
    /// time.
    pub fn effective_time(&self, system: UnixTime) -> UnixTime {
        UnixTime::effective(system, self.latest_known)
    }

    /// Offers the next root of the chain (`file` is `N+1.root.cose`). It must be signed by a
    /// threshold of the trusted root's root keys and of its own, and carry version N+1.
    /// Intermediate roots may be expired; the final one is checked by
    /// [`TrustedSet::check_root_expiry`]. When the timestamp or targets keys change, the
    /// trusted file of that role is discarded, so a device whose timestamp or targets
    /// version was fast-forwarded by a compromised key recovers once the key is rotated.
    pub fn update_root(&mut self, file: &str, bytes: &[u8]) -> Result<RootRotation, MetadataError> {
        let new = open_root(file, bytes, Some(self.root()))?;
        let expected = self.root().version().saturating_add(1);
        if new.version() != expected {
            return Err(MetadataError::RootVersion {
                file: file.to_owned(),
                expected,
                found: new.version(),
            });
        }
        let mut rotation = RootRotation::default();
        let timestamp_keys_changed = !self
            .root()
            .roles()
            .timestamp
            .same_keys(&new.roles().timestamp);
        let targets_keys_changed = !self.root().roles().targets.same_keys(&new.roles().targets);
        if timestamp_keys_changed {
            rotation.dropped_timestamp = self.timestamp.is_some();
            self.timestamp = None;
        }
        if targets_keys_changed {
            rotation.dropped_targets = self.targets.is_some();
            self.targets = None;
        }
        self.latest_known = self.latest_known.max(new.issued());
        self.root = Signed {
            payload: new,
            bytes: bytes.to_vec(),
        };
        Ok(rotation)
    }

    /// Refuses an expired final root (freeze attack).
    pub fn check_root_expiry(&self, now: UnixTime) -> Result<(), MetadataError> {
        check_expiry(self.root(), "root", now)
    }

    /// Offers a timestamp: a threshold of the root's timestamp keys, a version never lower
    /// than the trusted one (equal means nothing new), a targets version never lower than
    /// the trusted timestamp named, and not expired.
    pub fn update_timestamp(
        &mut self,
        file: &str,
        bytes: &[u8],
        now: UnixTime,
    ) -> Result<TimestampUpdate, MetadataError> {
        let new: Timestamp = open(file, bytes, self.root())?;
        if let Some(trusted) = self.timestamp() {
            if new.version() < trusted.version() {
                return Err(MetadataError::Rollback {
                    file: file.to_owned(),
                    role: RoleType::Timestamp,
                    trusted: trusted.version(),
                    found: new.version(),
                });
            }
            if new.targets().version() < trusted.targets().version() {
                return Err(MetadataError::TargetsRollback {
                    file: file.to_owned(),
                    trusted: trusted.targets().version(),
                    found: new.targets().version(),
                });
            }
            if new.version() == trusted.version() {
                check_expiry(trusted, file, now)?;
                return Ok(TimestampUpdate::Unchanged);
            }
        }
        check_expiry(&new, file, now)?;
        self.latest_known = self.latest_known.max(new.issued());
        self.timestamp = Some(Signed {
            payload: new,
            bytes: bytes.to_vec(),
        });
        Ok(TimestampUpdate::New)
    }

    /// The targets file the trusted timestamp names, when the trusted targets are not
    /// already exactly that file.
    pub fn targets_wanted(&self) -> Option<&TargetsMeta> {
        let meta = self.timestamp()?.targets();
        match &self.targets {
            Some(trusted) if matches_meta(&trusted.bytes, meta) => None,
            _ => Some(meta),
        }
    }

    /// Offers the targets file: exactly the length and sha256 the trusted timestamp names,
    /// a threshold of the root's targets keys, the version the timestamp names and never
    /// lower than the trusted one, and not expired.
    pub fn update_targets(
        &mut self,
        file: &str,
        bytes: &[u8],
        now: UnixTime,
    ) -> Result<(), MetadataError> {
        let Some(meta) = self.timestamp().map(|t| t.targets().clone()) else {
            return Err(MetadataError::TimestampMismatch {
                file: file.to_owned(),
                reason: "there is no trusted timestamp to check it against".to_owned(),
            });
        };
        let length = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if length > meta.length() {
            return Err(MetadataError::TooLarge {
                file: file.to_owned(),
                limit: meta.length(),
            });
        }
        if !matches_meta(bytes, &meta) {
            return Err(MetadataError::TimestampMismatch {
                file: file.to_owned(),
                reason: format!(
                    "its length {length} and sha256 {} are not the timestamp's {} and {}",
                    hex::encode(sha2::Sha256::digest(bytes)),
                    meta.length(),
                    hex::encode(meta.sha256())
                ),
            });
        }
        let new: Targets = open(file, bytes, self.root())?;
        if new.version() != meta.version() {
            return Err(MetadataError::TimestampMismatch {
                file: file.to_owned(),
                reason: format!(
                    "its version {} is not the version {} the timestamp names",
                    new.version(),
                    meta.version()
                ),
            });
        }
        if let Some(trusted) = self.targets()
            && new.version() < trusted.version()
        {
            return Err(MetadataError::Rollback {
                file: file.to_owned(),
                role: RoleType::Targets,
                trusted: trusted.version(),
                found: new.version(),
            });
        }
        check_expiry(&new, file, now)?;
        self.latest_known = self.latest_known.max(new.issued());
        self.targets = Some(Signed {
            payload: new,
            bytes: bytes.to_vec(),
        });
        Ok(())
    }

    /// Refuses trusted targets that have expired (or are missing) when nothing new came.
    pub fn check_targets_expiry(&self, now: UnixTime) -> Result<(), MetadataError> {
        match self.targets() {
            Some(targets) => check_expiry(targets, "targets", now),
            None => Err(MetadataError::TimestampMismatch {
                file: "targets".to_owned(),
                reason: "no trusted targets".to_owned(),
            }),
        }
    }
}

fn check_expiry<R: Role>(role: &R, file: &str, now: UnixTime) -> Result<(), MetadataError> {
    if role.is_expired(now) {
        return Err(MetadataError::Expired {
            file: file.to_owned(),
            role: R::TYPE,
            expires: role.expires(),
            now,
        });
    }
    Ok(())
}

fn matches_meta(bytes: &[u8], meta: &TargetsMeta) -> bool {
    u64::try_from(bytes.len()).ok() == Some(meta.length())
        && sha2::Sha256::digest(bytes).as_slice() == meta.sha256()
}
