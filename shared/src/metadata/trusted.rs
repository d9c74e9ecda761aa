//! The trusted set: the root, timestamp and targets a device currently trusts, and the
//! transitions of the TUF 5.x client workflow between them. Each `update_*` method either
//! moves the set forward or leaves it exactly as it was and says why.
//!
//! Nothing here fetches or writes files: [`super::Updater`] drives the order (root chain,
//! root expiry, timestamp, targets) and persists what was accepted.
//!
//! # Clocks
//!
//! Devices without a real-time clock boot in 1970, so expiry is never checked against the
//! system clock alone but also against times learned from trusted metadata. Two are kept,
//! because the keys behind them are not equally protected:
//!
//! - the *offline-known time*: the newest `issued` of metadata signed by offline keys (the
//!   anchor, every accepted root, the trusted targets). Only those advance it.
//! - the *online-known time*: the newest `issued` of accepted timestamps, signed by the
//!   online key. It never exceeds the earliest `expires` of the trusted root and trusted
//!   targets (the validity window the offline keys signed), and it is reset to the
//!   offline-known time when a new root changes the timestamp keys, so rotating a
//!   compromised timestamp key undoes what that key did to the clock.
//!
//! A timestamp is checked against max(system clock, offline-known time)
//! ([`TrustedSet::timestamp_time`]); the final root and the targets against the max of all
//! three ([`TrustedSet::effective_time`]). A timestamp therefore still tells a clock-less
//! device that its targets (or root) have expired, but no timestamp can move any clock past
//! what the offline keys signed, nor refuse the next timestamp as expired.

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
    offline_known: UnixTime,
    online_known: UnixTime,
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
        let mut set = TrustedSet {
            offline_known: root.issued(),
            online_known: root.issued(),
            root: Signed {
                payload: root,
                bytes: anchor.to_vec(),
            },
            timestamp: None,
            targets: None,
        };
        set.cap_online_known();
        Ok(set)
    }

    /// Restores what a store held, starting from the anchor. The stored roots are walked
    /// from the anchor as the chain they were accepted as ([`TrustedSet::update_root`]:
    /// version N+1, a threshold of the old and of the new root keys), up to the first that
    /// is missing or does not chain; the single root file of an older store is offered as
    /// the next link after them. A stored root that does not chain is ignored, so write
    /// access to the store alone cannot replace the trust anchor; the next update walks
    /// the rest of the chain from the repository, which is as safe as the first time. A
    /// stored timestamp or targets file that does not verify under the root reached is
    /// dropped (its keys were rotated, or it was planted). Expiry is not checked here:
    /// expired files still protect against rollback.
    ///
    /// The offline-known time is the largest of the stored one and the `issued` of the
    /// anchor and the roots and targets kept; the online-known time the largest of the
    /// stored one (or, when only the old single latest-known time is stored, that one) and
    /// the kept timestamp's `issued`, capped as always.
    pub fn from_stored(anchor: &[u8], stored: &StoredFiles) -> Result<Self, MetadataError> {
        let mut set = TrustedSet::from_anchor(anchor)?;
        // The version check of `update_root` ends the walk at the last version there is.
        while let Some(next) = set.root().version().checked_add(1) {
            let (file, bytes) = match stored.roots.get(&next) {
                Some(bytes) => (super::update::root_file(next), bytes),
                None => match &stored.root {
                    Some(bytes) => (super::store::ROOT_FILE.to_owned(), bytes),
                    None => break,
                },
            };
            if set.update_root(&file, bytes).is_err() {
                break;
            }
        }
        if let Some(bytes) = &stored.timestamp
            && let Ok(ts) = open::<Timestamp>(super::store::TIMESTAMP_FILE, bytes, set.root())
        {
            set.online_known = set.online_known.max(ts.issued());
            set.timestamp = Some(Signed {
                payload: ts,
                bytes: bytes.clone(),
            });
        }
        if let Some(bytes) = &stored.targets
            && let Ok(targets) = open::<Targets>(super::store::TARGETS_FILE, bytes, set.root())
        {
            set.offline_known = set.offline_known.max(targets.issued());
            set.targets = Some(Signed {
                payload: targets,
                bytes: bytes.clone(),
            });
        }
        if let Some(known) = stored.offline_known {
            set.offline_known = set.offline_known.max(known);
        }
        // A store from before the split keeps one time, which timestamps could push: taken
        // as the online-known time it is capped, and a timestamp key rotation resets it.
        if let Some(known) = stored.online_known.or(stored.legacy_latest_known) {
            set.online_known = set.online_known.max(known);
        }
        set.cap_online_known();
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

    /// The offline-known time: the newest `issued` of the anchor, the roots accepted and
    /// the trusted targets.
    pub fn offline_known(&self) -> UnixTime {
        self.offline_known
    }

    /// The online-known time: the newest `issued` of the timestamps accepted since the
    /// timestamp keys last changed, never past the earliest `expires` of the trusted root
    /// and targets.
    pub fn online_known(&self) -> UnixTime {
        self.online_known
    }

    /// The clock a timestamp's expiry is checked against: the system clock, never below the
    /// offline-known time. The online-known time is left out, so that no timestamp can
    /// make the next one look expired.
    pub fn timestamp_time(&self, system: UnixTime) -> UnixTime {
        UnixTime::effective(system, self.offline_known)
    }

    /// The clock the final root and the targets are checked against, and what callers take
    /// as the time: the system clock, never below the offline-known nor the online-known
    /// time.
    pub fn effective_time(&self, system: UnixTime) -> UnixTime {
        UnixTime::effective(system, self.offline_known.max(self.online_known))
    }

    /// Holds the online-known time within the validity window the offline keys signed:
    /// at most the trusted root's `expires` and, with trusted targets, theirs.
    fn cap_online_known(&mut self) {
        let mut cap = self.root.payload.expires();
        if let Some(targets) = self.targets() {
            cap = cap.min(targets.expires());
        }
        self.online_known = self.online_known.min(cap);
    }

    /// Offers the next root of the chain (`file` is `N+1.root.cose`). It must be signed by a
    /// threshold of the trusted root's root keys and of its own, and carry version N+1.
    /// Intermediate roots may be expired; the final one is checked by
    /// [`TrustedSet::check_root_expiry`]. When the timestamp or targets keys change, the
    /// trusted file of that role is discarded, so a device whose timestamp or targets
    /// version was fast-forwarded by a compromised key recovers once the key is rotated;
    /// when the timestamp keys change, the online-known time is also reset to the
    /// offline-known time, which undoes a clock pushed forward by the old key.
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
        self.offline_known = self.offline_known.max(new.issued());
        if timestamp_keys_changed {
            self.online_known = self.offline_known;
        }
        self.root = Signed {
            payload: new,
            bytes: bytes.to_vec(),
        };
        self.cap_online_known();
        Ok(rotation)
    }

    /// Refuses an expired final root (freeze attack), at [`TrustedSet::effective_time`] of
    /// the system clock `system`.
    pub fn check_root_expiry(&self, system: UnixTime) -> Result<(), MetadataError> {
        check_expiry(self.root(), "root", self.effective_time(system))
    }

    /// Offers a timestamp: a threshold of the root's timestamp keys, a version never lower
    /// than the trusted one (equal means nothing new), a targets version never lower than
    /// the trusted timestamp named, and not expired at [`TrustedSet::timestamp_time`] of the
    /// system clock `system`. A new one raises the online-known time to its `issued`
    /// (capped).
    pub fn update_timestamp(
        &mut self,
        file: &str,
        bytes: &[u8],
        system: UnixTime,
    ) -> Result<TimestampUpdate, MetadataError> {
        let now = self.timestamp_time(system);
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
        self.online_known = self.online_known.max(new.issued());
        self.timestamp = Some(Signed {
            payload: new,
            bytes: bytes.to_vec(),
        });
        self.cap_online_known();
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
    /// lower than the trusted one, and not expired at [`TrustedSet::effective_time`] of the
    /// system clock `system`. They raise the offline-known time to their `issued`.
    pub fn update_targets(
        &mut self,
        file: &str,
        bytes: &[u8],
        system: UnixTime,
    ) -> Result<(), MetadataError> {
        let now = self.effective_time(system);
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
        self.offline_known = self.offline_known.max(new.issued());
        self.targets = Some(Signed {
            payload: new,
            bytes: bytes.to_vec(),
        });
        self.cap_online_known();
        Ok(())
    }

    /// Refuses trusted targets that have expired at [`TrustedSet::effective_time`] of the
    /// system clock `system` (or are missing) when nothing new came.
    pub fn check_targets_expiry(&self, system: UnixTime) -> Result<(), MetadataError> {
        match self.targets() {
            Some(targets) => check_expiry(targets, "targets", self.effective_time(system)),
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
