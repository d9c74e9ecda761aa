//! The trusted metadata a device keeps between updates: plain files in a folder, each
//! replaced atomically with [`crate::fs::write_atomic`] (write a temporary file, fsync it,
//! rename it over the old one, fsync the folder), so a power cut leaves either the old or the
//! new file and never half of one. Rollback protection rests on these files alone, not on any
//! database.
//!
//! Every root accepted since the anchor is kept, under its repository name `N.root.cose`:
//! the store holds the chain, not a root to start from. Loading walks that chain from the
//! pinned anchor again ([`super::TrustedSet::from_stored`]), so that whoever can write this
//! folder, but holds no root key, cannot replace what the device trusts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::MetadataError;
use super::time::UnixTime;
use crate::fs::{sync_dir, write_atomic};

/// The single root file of stores written before the chain was kept (the last root
/// accepted). It is never trusted on its own: loading offers it as the next link of the
/// chain (so a store that took one rotation before the change keeps it), and the next root
/// accepted removes it.
pub const ROOT_FILE: &str = "root.cose";
/// The suffix of the stored chain's files, `N.root.cose` (the names of the repository's
/// roots, [`super::root_file`]).
const ROOT_CHAIN_SUFFIX: &str = ".root.cose";
/// The trusted timestamp file in the store.
pub const TIMESTAMP_FILE: &str = "timestamp.cose";
/// The trusted targets file in the store.
pub const TARGETS_FILE: &str = "targets.cose";
/// The offline-known time (decimal seconds since the epoch and a newline) in the store: the
/// newest `issued` of metadata signed by offline keys (the anchor, roots, targets).
pub const OFFLINE_KNOWN_TIME_FILE: &str = "offline-known-time";
/// The online-known time (decimal seconds since the epoch and a newline) in the store: the
/// newest `issued` of accepted timestamps, capped (see [`super::TrustedSet`]).
pub const ONLINE_KNOWN_TIME_FILE: &str = "online-known-time";
/// The single clock file stores written before the offline/online split (same format). It
/// is read as the online-known time when [`ONLINE_KNOWN_TIME_FILE`] is missing, and removed
/// once the two new files are written.
pub const LATEST_KNOWN_TIME_FILE: &str = "latest-known-time";

/// A folder of trusted metadata.
#[derive(Debug, Clone)]
pub struct TrustedStore {
    dir: PathBuf,
}

/// What a store held when it was read.
#[derive(Debug, Default, Clone)]
pub struct StoredFiles {
    /// The chain of roots accepted since the anchor (`N.root.cose`), by version. Only what
    /// chains from the anchor is trusted.
    pub roots: BTreeMap<u64, Vec<u8>>,
    /// The single root file of an older store ([`ROOT_FILE`]), if there is one.
    pub root: Option<Vec<u8>>,
    /// The trusted timestamp, if one was stored.
    pub timestamp: Option<Vec<u8>>,
    /// The trusted targets, if one was stored.
    pub targets: Option<Vec<u8>>,
    /// The offline-known time, if one was stored.
    pub offline_known: Option<UnixTime>,
    /// The online-known time, if one was stored.
    pub online_known: Option<UnixTime>,
    /// The single latest-known time of the old layout, if that file is still there.
    pub legacy_latest_known: Option<UnixTime>,
}

// === impl TrustedStore ===

impl TrustedStore {
    /// A store in `dir`, created (mode 0700 on Unix) when missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, MetadataError> {
        let dir = dir.into();
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&dir)
            .map_err(|source| MetadataError::Store {
                operation: "creating",
                path: dir.clone(),
                source,
            })?;
        Ok(TrustedStore { dir })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every stored file.
    pub fn load(&self) -> Result<StoredFiles, MetadataError> {
        Ok(StoredFiles {
            roots: self.read_root_chain()?,
            root: self.read(ROOT_FILE)?,
            timestamp: self.read(TIMESTAMP_FILE)?,
            targets: self.read(TARGETS_FILE)?,
            offline_known: self.read_time(OFFLINE_KNOWN_TIME_FILE)?,
            online_known: self.read_time(ONLINE_KNOWN_TIME_FILE)?,
            legacy_latest_known: self.read_time(LATEST_KNOWN_TIME_FILE)?,
        })
    }

    /// Reads every `N.root.cose` of the folder, by version. Other names are left alone.
    fn read_root_chain(&self) -> Result<BTreeMap<u64, Vec<u8>>, MetadataError> {
        let listing = |source| MetadataError::Store {
            operation: "listing",
            path: self.dir.clone(),
            source,
        };
        let mut roots = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(listing)? {
            let name = entry.map_err(listing)?.file_name();
            let Some(version) = name
                .to_str()
                .and_then(|name| name.strip_suffix(ROOT_CHAIN_SUFFIX))
                .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|digits| digits.parse::<u64>().ok())
            else {
                continue;
            };
            // The name came from the listing; a file removed since is simply not there.
            if let Some(bytes) = self.read(&super::root_file(version))? {
                roots.insert(version, bytes);
            }
        }
        Ok(roots)
    }

    /// Reads a time file (decimal seconds, surrounding white space ignored); `None` when it
    /// does not exist.
    fn read_time(&self, name: &str) -> Result<Option<UnixTime>, MetadataError> {
        let Some(bytes) = self.read(name)? else {
            return Ok(None);
        };
        let invalid = |error: Box<dyn std::error::Error + Send + Sync>| MetadataError::Store {
            operation: "reading",
            path: self.dir.join(name),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
        };
        let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
        let secs = text
            .trim()
            .parse::<u64>()
            .map_err(|e| invalid(Box::new(e)))?;
        Ok(Some(UnixTime::from_secs(secs)))
    }

    /// Reads one file of the store; `None` when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, MetadataError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(MetadataError::Store {
                operation: "reading",
                path,
                source,
            }),
        }
    }

    /// Replaces one file atomically and durably.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), MetadataError> {
        Ok(write_atomic(&self.dir.join(name), bytes)?)
    }

    /// Removes one file (and makes the removal durable); a missing file is not an error.
    pub fn remove(&self, name: &str) -> Result<(), MetadataError> {
        let path = self.dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(sync_dir(&self.dir)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(MetadataError::Store {
                operation: "removing",
                path,
                source,
            }),
        }
    }

    /// Records the offline-known and the online-known time (each file replaced atomically),
    /// then removes the old layout's single [`LATEST_KNOWN_TIME_FILE`] if it is there.
    pub fn write_known_times(
        &self,
        offline: UnixTime,
        online: UnixTime,
    ) -> Result<(), MetadataError> {
        self.write(
            OFFLINE_KNOWN_TIME_FILE,
            format!("{}\n", offline.as_secs()).as_bytes(),
        )?;
        self.write(
            ONLINE_KNOWN_TIME_FILE,
            format!("{}\n", online.as_secs()).as_bytes(),
        )?;
        self.remove(LATEST_KNOWN_TIME_FILE)
    }
}
