//! The sled index: a summary of the cache that is fast to query and can always be rebuilt.
//!
//! Trees: `blobs` (digest -> size and last use) and `artifacts` (layout id -> which target
//! it is, which blobs it references, its state). Records are JSON: small, readable in a
//! post-mortem, and tolerant of added fields.

use std::path::Path;

use meshanics_shared::Digest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The index database.
#[derive(Debug, Clone)]
pub struct Index {
    db: sled::Db,
    blobs: sled::Tree,
    artifacts: sled::Tree,
}

/// What the index knows about a committed blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    /// Its size in bytes.
    pub size: u64,
    /// When it was last committed or found in the cache (Unix seconds).
    pub last_use: u64,
}

/// The state of a pulled artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactState {
    /// Pulled and laid out, not applied.
    Pulled,
    /// Applied: its slot's `current` points at it (and its health check passed).
    Current,
    /// Applied before the current one: its slot's `previous` points at it.
    Previous,
    /// The apply hook failed on it; its slot was rolled back.
    HookFailed,
    /// Its health check failed (or timed out); its slot was rolled back and its digest is
    /// held back until the signed metadata changes.
    HealthFailed,
    /// Neither current nor previous; `gc` removes it.
    Retired,
}

/// An artifact: one target pulled for this device's platform and laid out on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// The layout's folder name under `artifacts/`.
    pub id: String,
    /// The target's name.
    pub name: String,
    /// The repository it came from (facade path form).
    pub repository: String,
    /// The digest the target names (an index or a manifest).
    pub target_digest: Digest,
    /// The image manifest for this device.
    pub manifest_digest: Digest,
    /// Every blob the layout holds (manifests, config, layers).
    pub blobs: Vec<Digest>,
    /// Its state.
    pub state: ArtifactState,
    /// When the record last changed (Unix seconds).
    pub updated: u64,
}

// === impl Index ===

impl Index {
    /// Opens (creating) the index at `dir` with a cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Index> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(Error::index("opening"))?;
        let tree = |name: &str| db.open_tree(name).map_err(Error::index("opening"));
        Ok(Index {
            blobs: tree("blobs")?,
            artifacts: tree("artifacts")?,
            db,
        })
    }

    /// Whether it holds no blob and no artifact.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty() && self.artifacts.is_empty()
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(Error::index("flushing"))
    }

    /// Removes every record.
    pub fn clear(&self) -> Result<()> {
        for tree in [&self.blobs, &self.artifacts] {
            tree.clear().map_err(Error::index("clearing"))?;
        }
        Ok(())
    }

    /// Records a committed blob, used now.
    pub fn put_blob(&self, digest: &Digest, size: u64) -> Result<()> {
        put(
            &self.blobs,
            digest.as_str(),
            &BlobRecord {
                size,
                last_use: now(),
            },
        )
    }

    /// Marks a blob as used now (adding it if the index missed it).
    pub fn touch_blob(&self, digest: &Digest, size: u64) -> Result<()> {
        self.put_blob(digest, size)
    }

    /// A blob's record.
    pub fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        get(&self.blobs, digest.as_str())
    }

    /// Every blob record.
    pub fn blobs(&self) -> Result<Vec<(Digest, BlobRecord)>> {
        let mut out = Vec::new();
        for (key, record) in all::<BlobRecord>(&self.blobs)? {
            match Digest::parse(&key) {
                Ok(digest) => out.push((digest, record)),
                Err(_) => tracing::warn!(key, "ignoring an index record with a bad digest"),
            }
        }
        Ok(out)
    }

    /// Forgets a blob.
    pub fn remove_blob(&self, digest: &Digest) -> Result<()> {
        self.blobs
            .remove(digest.as_str())
            .map(|_| ())
            .map_err(Error::index("removing from"))
    }

    /// Records an artifact.
    pub fn put_artifact(&self, record: &ArtifactRecord) -> Result<()> {
        put(&self.artifacts, &record.id, record)
    }

    /// An artifact's record.
    pub fn artifact(&self, id: &str) -> Result<Option<ArtifactRecord>> {
        get(&self.artifacts, id)
    }

    /// Every artifact record.
    pub fn artifacts(&self) -> Result<Vec<ArtifactRecord>> {
        Ok(all(&self.artifacts)?.into_iter().map(|(_, r)| r).collect())
    }

    /// Forgets an artifact.
    pub fn remove_artifact(&self, id: &str) -> Result<()> {
        self.artifacts
            .remove(id)
            .map(|_| ())
            .map_err(Error::index("removing from"))
    }
}

fn put<T: Serialize>(tree: &sled::Tree, key: &str, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|source| Error::IndexRecord {
        key: key.to_owned(),
        source,
    })?;
    tree.insert(key, bytes)
        .map(|_| ())
        .map_err(Error::index("writing to"))
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>> {
    match tree.get(key).map_err(Error::index("reading"))? {
        Some(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::IndexRecord {
                    key: key.to_owned(),
                    source,
                })
        }
        None => Ok(None),
    }
}

fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<(String, T)>> {
    let mut out = Vec::new();
    for item in tree.iter() {
        let (key, value) = item.map_err(Error::index("reading"))?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let record = serde_json::from_slice(&value).map_err(|source| Error::IndexRecord {
            key: key.clone(),
            source,
        })?;
        out.push((key, record));
    }
    Ok(out)
}

/// Now, in Unix seconds (0 on a clock before 1970: only used for ordering and display).
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
