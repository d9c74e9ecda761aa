//! The update cycle a device runs: fetch and verify in TUF 5.x client order, persisting
//! each file as soon as it is trusted, then fetch target manifests by digest.

use super::error::MetadataError;
use super::fetch::{Fetch, FetchError};
use super::role::Role;
use super::store::{self, TrustedStore};
use super::targets::TargetEntry;
use super::time::UnixTime;
use super::trusted::{TimestampUpdate, TrustedSet};

/// The file name of root version `version` in a repository.
pub fn root_file(version: u64) -> String {
    format!("{version}.root.cose")
}

/// The file name of targets version `version` in a repository.
pub fn targets_file(version: u64) -> String {
    format!("{version}.targets.cose")
}

/// The file name of the timestamp in a repository.
pub const TIMESTAMP_FILE: &str = "timestamp.cose";

/// Size caps and the rotation bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most new roots accepted in one update; the rest wait for the next update.
    pub max_root_rotations: u32,
    /// Cap on a root file.
    pub root_max_size: u64,
    /// Cap on the timestamp file.
    pub timestamp_max_size: u64,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateReport {
    /// The clock the targets were checked against: [`TrustedSet::effective_time`] of the
    /// system clock once the timestamp was taken.
    pub effective_time: UnixTime,
    /// The root version trusted now.
    pub root_version: u64,
    /// How many new roots were accepted.
    pub root_rotations: u32,
    /// Whether the walk stopped at [`Limits::max_root_rotations`] (more may be waiting).
    pub rotation_limit_reached: bool,
    /// The timestamp version trusted now.
    pub timestamp_version: u64,
    /// Whether a new timestamp was accepted.
    pub timestamp_changed: bool,
    /// The targets version trusted now.
    pub targets_version: u64,
    /// Whether new targets were accepted.
    pub targets_changed: bool,
}

/// Drives updates of a [`TrustedSet`] and persists it to an optional [`TrustedStore`].
#[derive(Debug)]
pub struct Updater {
    trusted: TrustedSet,
    store: Option<TrustedStore>,
    limits: Limits,
    /// The (offline-known, online-known) times the store holds in the current layout, when
    /// known; the times are written whenever the trusted set's differ.
    stored_times: Option<(UnixTime, UnixTime)>,
}

// === impl Limits ===

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_root_rotations: 32,
            root_max_size: 512 * 1024,
            timestamp_max_size: 16 * 1024,
        }
    }
}

// === impl Updater ===

impl Updater {
    /// An updater over a trusted set, persisting nothing (`meshctl verify`, tests).
    pub fn new(trusted: TrustedSet) -> Self {
        Updater {
            trusted,
            store: None,
            limits: Limits::default(),
            stored_times: None,
        }
    }

    /// An updater that restores its trusted set from `store` (walking its root chain from
    /// the pinned `anchor` root, see [`TrustedSet::from_stored`]) and persists every file it
    /// accepts there.
    pub fn with_store(anchor: &[u8], store: TrustedStore) -> Result<Self, MetadataError> {
        let stored = store.load()?;
        let trusted = TrustedSet::from_stored(anchor, &stored)?;
        // An older store's single root file that chained from the anchor becomes a link of
        // the stored chain, under its own name.
        let version = trusted.root().version();
        if stored.root.as_deref() == Some(trusted.root_bytes())
            && trusted.root_bytes() != anchor
            && !stored.roots.contains_key(&version)
        {
            store.write(&root_file(version), trusted.root_bytes())?;
            store.remove(store::ROOT_FILE)?;
        }
        let stored_times = match stored.legacy_latest_known {
            // The old layout's file is still there: write the new ones (which removes it).
            Some(_) => None,
            None => stored.offline_known.zip(stored.online_known),
        };
        Ok(Updater {
            trusted,
            store: Some(store),
            limits: Limits::default(),
            stored_times,
        })
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// What is trusted now.
    pub fn trusted(&self) -> &TrustedSet {
        &self.trusted
    }

    /// Runs one update: the root chain (at most [`Limits::max_root_rotations`] new roots),
    /// the final root's expiry, the timestamp, and the targets when the timestamp names new
    /// ones. `system_now` is the system clock; expiry is checked against the clocks of
    /// [`TrustedSet`], which never go below the times learned from trusted metadata. On
    /// error, what was accepted before the error stays trusted (and persisted, with the
    /// known times); nothing after it is.
    pub async fn update<F: Fetch>(
        &mut self,
        fetch: &mut F,
        system_now: UnixTime,
    ) -> Result<UpdateReport, MetadataError> {
        let mut rotations = 0;
        let mut rotation_limit_reached = false;
        loop {
            if rotations >= self.limits.max_root_rotations {
                rotation_limit_reached = true;
                break;
            }
            let file = root_file(self.trusted.root().version().saturating_add(1));
            let bytes = match fetch_capped(fetch, &file, self.limits.root_max_size).await {
                Err(MetadataError::Fetch {
                    source: FetchError::NotFound,
                    ..
                }) => break,
                other => other?,
            };
            let rotation = self.trusted.update_root(&file, &bytes)?;
            // The times first: a reset of the online-known time (new timestamp keys) must
            // be on disk no later than the root that caused it.
            self.persist_times()?;
            // Kept under its own name, as the next link of the stored chain that loading
            // walks from the anchor; an older store's single root file goes once the chain
            // holds a root.
            self.persist(&file, self.trusted.root_bytes())?;
            self.remove(store::ROOT_FILE)?;
            if rotation.dropped_timestamp {
                self.remove(store::TIMESTAMP_FILE)?;
            }
            if rotation.dropped_targets {
                self.remove(store::TARGETS_FILE)?;
            }
            rotations += 1;
        }
        self.trusted.check_root_expiry(system_now)?;

        let bytes = fetch_capped(fetch, TIMESTAMP_FILE, self.limits.timestamp_max_size).await?;
        let timestamp = self
            .trusted
            .update_timestamp(TIMESTAMP_FILE, &bytes, system_now)?;
        if timestamp == TimestampUpdate::New {
            self.persist(store::TIMESTAMP_FILE, &bytes)?;
            self.persist_times()?;
        }

        let now = self.trusted.effective_time(system_now);

        let mut targets_changed = false;
        if let Some(meta) = self.trusted.targets_wanted().cloned() {
            let file = targets_file(meta.version());
            let bytes = fetch_capped(fetch, &file, meta.length()).await?;
            self.trusted.update_targets(&file, &bytes, system_now)?;
            self.persist(store::TARGETS_FILE, &bytes)?;
            targets_changed = true;
        } else {
            self.trusted.check_targets_expiry(system_now)?;
        }
        self.persist_times()?;

        Ok(UpdateReport {
            effective_time: now,
            root_version: self.trusted.root().version(),
            root_rotations: rotations,
            rotation_limit_reached,
            timestamp_version: self.trusted.timestamp().map_or(0, |t| t.version()),
            timestamp_changed: timestamp == TimestampUpdate::New,
            targets_version: self.trusted.targets().map_or(0, |t| t.version()),
            targets_changed,
        })
    }

    /// Fetches the manifest a trusted target pins, reading no more than its size, and
    /// returns it only if its size and digest are the ones the target names.
    pub async fn fetch_target<F: Fetch>(
        &self,
        fetch: &mut F,
        entry: &TargetEntry,
    ) -> Result<Vec<u8>, MetadataError> {
        let name = entry.name.to_string();
        let bytes = match fetch.fetch_target(entry, entry.size).await {
            Ok(bytes) => bytes,
            Err(FetchError::TooLarge { limit }) => {
                return Err(MetadataError::TooLarge { file: name, limit });
            }
            Err(source) => return Err(MetadataError::Fetch { file: name, source }),
        };
        let mut verifier = entry.verifier();
        verifier
            .update(&bytes)
            .and_then(|()| verifier.finish())
            .map_err(|source| match source {
                crate::verify::VerifyError::TooLong { .. } => MetadataError::TooLarge {
                    file: name.clone(),
                    limit: entry.size,
                },
                source => MetadataError::Target {
                    name: name.clone(),
                    source,
                },
            })?;
        Ok(bytes)
    }

    fn persist(&self, name: &str, bytes: &[u8]) -> Result<(), MetadataError> {
        match &self.store {
            Some(store) => store.write(name, bytes),
            None => Ok(()),
        }
    }

    /// Writes the offline-known and online-known times when the store does not hold them
    /// yet (each file atomically).
    fn persist_times(&mut self) -> Result<(), MetadataError> {
        let times = (self.trusted.offline_known(), self.trusted.online_known());
        if let Some(store) = &self.store
            && self.stored_times != Some(times)
        {
            store.write_known_times(times.0, times.1)?;
            self.stored_times = Some(times);
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), MetadataError> {
        match &self.store {
            Some(store) => store.remove(name),
            None => Ok(()),
        }
    }
}

/// Fetches a metadata file, refusing more than `limit` bytes even from a source that
/// ignores the limit.
async fn fetch_capped<F: Fetch>(
    fetch: &mut F,
    file: &str,
    limit: u64,
) -> Result<Vec<u8>, MetadataError> {
    let too_large = || MetadataError::TooLarge {
        file: file.to_owned(),
        limit,
    };
    match fetch.fetch_metadata(file, limit).await {
        Ok(bytes) if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit => Err(too_large()),
        Ok(bytes) => Ok(bytes),
        Err(FetchError::TooLarge { .. }) => Err(too_large()),
        Err(source) => Err(MetadataError::Fetch {
            file: file.to_owned(),
            source,
        }),
    }
}
