//! The content-addressed cache: manifests and blobs kept under a folder by digest, and one
//! upstream fetch per digest however many devices ask for it at once.
//!
//! On disk (`[cache] dir`):
//!
//! - `<algorithm>/<hex>`: committed content, exactly the bytes whose size and digest were
//!   verified; beside it `<algorithm>/<hex>.json`, what a hit needs to answer (size, manifest
//!   or blob, the media type) and the (registry, repository) pairs it was fetched or confirmed
//!   under.
//! - `ingest/<algorithm>-<hex>`: a fill in progress. Content is committed only after its size
//!   and digest verified: file fsync'ed, description written beside it (temporary file, fsync,
//!   rename), content renamed into place, folders fsync'ed. An ingest file is never served as
//!   complete; those left by a stopped facade are removed at start.
//!
//! At start the index is rebuilt from these files (a content file without a description, or
//! whose size is not the one described, is removed); least recently used first is the order
//! of the files' modification times, which a hit does not update (so after a restart, the
//! order is the order of filling). The total is kept under `max_bytes` by evicting the least
//! recently used entries before a fill reserves its size; an evicted file is unlinked, which
//! never breaks a device reading it (an open file stays readable).
//!
//! A miss starts a [`Fill`]: a task of its own (not tied to the device that asked first) that
//! reads the upstream as fast as it comes, writes the ingest file, and publishes how far it
//! got. Every request for the digest meanwhile (the first included) reads the growing file at
//! its own pace with one fixed-size buffer ([`reader`]), so a slow device never slows the fill
//! or a fast device, and nothing grows with the number of readers. The last byte of the whole
//! content is released only once the whole is verified; a failed fill ends every reader with
//! an error (a reset, never a clean end) and leaves no entry.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use meshanics_shared::digest::Algorithm;
use meshanics_shared::{Digest, Registry, Repository, Verifier};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::registry_client::ContentKind;

mod fill;
pub mod reader;

pub(crate) use fill::media_type_of;
pub use fill::{Fill, FillFailure, Filler, Head, Progress, SharedError};

/// The size of the one buffer each device reader uses, and of the fill's writes at most
/// (a fill coalesces what the upstream has ready up to [`WRITE_CHUNK`]).
pub const READ_CHUNK: usize = 64 * 1024;
/// The most a fill gathers from the upstream before one write.
pub const WRITE_CHUNK: usize = 256 * 1024;

/// A (registry, repository) pair content was fetched or confirmed under.
pub type Pair = (Registry, Repository);

/// Why the cache could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A file or folder operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The content-addressed cache; see the module docs.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    /// Names temporary description files apart.
    writes: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    entries: lru::LruCache<Digest, Entry>,
    /// Bytes of committed entries.
    bytes: u64,
    /// Bytes reserved by fills in progress.
    reserved: u64,
    fills: HashMap<Digest, Arc<Fill>>,
    /// What failed fills left in their ingest files after a read error: (written, size).
    partial: HashMap<Digest, (u64, u64)>,
}

/// A committed entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its size in bytes.
    pub size: u64,
    /// Manifest or blob.
    pub kind: ContentKind,
    /// The media type it was served with (manifests), if known.
    pub media_type: Option<String>,
    /// The (registry, repository) pairs it was fetched or confirmed under.
    pairs: BTreeSet<Pair>,
}

/// What [`Cache::lookup`] found.
#[derive(Debug)]
pub enum Lookup {
    /// Committed content.
    Hit(Hit),
    /// A fill in progress, which the request joins.
    Join(Arc<Fill>),
    /// Nothing: a fill was registered for the caller to run (and join).
    Start(Filler),
    /// Nothing, and no fill was started (`start` was false).
    Miss,
}

/// A committed entry found by [`Cache::lookup`].
#[derive(Debug)]
pub struct Hit {
    /// The entry.
    pub entry: Entry,
    /// Whether the pair asked under is one it was fetched or confirmed under.
    pub pair_known: bool,
    /// Its file.
    pub path: PathBuf,
}

/// The description kept beside committed content.
#[derive(Debug, Serialize, Deserialize)]
struct Description {
    size: u64,
    manifest: bool,
    media_type: Option<String>,
    pairs: Vec<(String, String)>,
}

// === impl Cache ===

impl Cache {
    /// Opens the cache in `dir` (made if missing), removing ingest leftovers and rebuilding
    /// the index from the committed files, evicting down to `max_bytes` if it shrank.
    pub fn open(dir: &Path, max_bytes: u64, metrics: Arc<Metrics>) -> Result<Cache, CacheError> {
        let ingest = dir.join("ingest");
        if ingest.exists() {
            std::fs::remove_dir_all(&ingest)
                .map_err(io_err("removing the ingest leftovers in", &ingest))?;
        }
        std::fs::create_dir_all(&ingest).map_err(io_err("creating", &ingest))?;
        // Only the algorithms' folders are read: nothing else in `dir` is touched.
        let mut found = Vec::new();
        for algorithm in Algorithm::ALL {
            let folder = dir.join(algorithm.name());
            if folder.is_dir() {
                scan(&folder, algorithm.name(), &mut found)?;
            }
        }
        found.sort_by_key(|(modified, _, _)| *modified);
        let mut inner = Inner {
            entries: lru::LruCache::unbounded(),
            bytes: 0,
            reserved: 0,
            fills: HashMap::new(),
            partial: HashMap::new(),
        };
        for (_, digest, entry) in found {
            inner.bytes += entry.size;
            inner.entries.put(digest, entry);
        }
        let cache = Cache {
            dir: dir.to_owned(),
            max_bytes,
            metrics,
            inner: Mutex::new(inner),
            writes: AtomicU64::new(0),
        };
        let victims = {
            let mut inner = cache.lock();
            let victims = cache.evict(&mut inner, 0);
            cache.publish_gauges(&inner);
            victims
        };
        cache.unlink(victims);
        let inner = cache.lock();
        tracing::info!(dir = %dir.display(), entries = inner.entries.len(), bytes = inner.bytes,
            max_bytes, "cache opened");
        drop(inner);
        Ok(cache)
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size cap.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The committed entries' total size.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Whether `digest` is committed.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().entries.contains(digest)
    }

    /// Looks `digest` up as asked under `pair`: committed content (marked most recently
    /// used), a fill to join, or a miss. On a miss with `start`, a fill is registered under
    /// the same lock (so two requests never both start one) and returned for the caller to
    /// run.
    pub fn lookup(
        self: &Arc<Self>,
        digest: &Digest,
        kind: ContentKind,
        pair: &Pair,
        start: bool,
    ) -> Lookup {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get(digest) {
            return Lookup::Hit(Hit {
                pair_known: entry.pairs.contains(pair),
                entry: entry.clone(),
                path: self.content_path(digest),
            });
        }
        if let Some(fill) = inner.fills.get(digest) {
            return Lookup::Join(fill.clone());
        }
        if !start {
            return Lookup::Miss;
        }
        let fill = Arc::new(Fill::new(digest.clone(), kind, pair.clone()));
        inner.fills.insert(digest.clone(), fill.clone());
        Lookup::Start(Filler::new(self.clone(), fill))
    }

    /// Records that `digest` was confirmed under `pair` (an upstream HEAD said so): at once
    /// in the index, and soon after in its description (the task returned writes it, when
    /// there was something to write and a runtime to write it on).
    pub fn confirm(&self, digest: &Digest, pair: &Pair) -> Option<tokio::task::JoinHandle<()>> {
        let description = {
            let mut inner = self.lock();
            let entry = inner.entries.peek_mut(digest)?;
            if !entry.pairs.insert(pair.clone()) {
                return None;
            }
            Description::of(entry)
        };
        let path = self.description_path(digest);
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        let tmp = self.ingest_path(digest).with_extension(format!("{n}.json"));
        let digest = digest.clone();
        // Best effort: a pair not remembered across a restart is confirmed again. The file is
        // written and synced off the runtime's threads.
        let write = move || {
            if let Err(error) = write_description(&tmp, &path, &description) {
                tracing::warn!(%digest, %error, "cache: could not record a confirmed repository");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => Some(runtime.spawn_blocking(write)),
            Err(_) => {
                write();
                None
            }
        }
    }

    /// Removes a committed entry (content found unreadable). Its file is unlinked.
    pub fn remove(&self, digest: &Digest) {
        let removed = {
            let mut inner = self.lock();
            let removed = inner.entries.pop(digest);
            if let Some(entry) = &removed {
                inner.bytes -= entry.size;
            }
            self.publish_gauges(&inner);
            removed
        };
        if removed.is_some() {
            self.unlink(vec![digest.clone()]);
        }
    }

    /// Reserves `size` bytes for a fill, evicting least recently used entries as needed.
    /// `false` when it cannot fit (bigger than the cap, or other fills hold the room): the
    /// content then streams through uncached.
    pub(crate) fn reserve(&self, size: u64) -> bool {
        let victims = {
            let mut inner = self.lock();
            if size > self.max_bytes || inner.reserved + size > self.max_bytes {
                return false;
            }
            let victims = self.evict(&mut inner, size);
            if inner.bytes + inner.reserved + size > self.max_bytes {
                // Cannot happen once every entry is gone; kept for safety.
                return false;
            }
            inner.reserved += size;
            self.publish_gauges(&inner);
            victims
        };
        self.unlink(victims);
        true
    }

    /// Evicts least recently used entries until `extra` more bytes fit; returns their digests
    /// for [`Cache::unlink`] outside the lock.
    fn evict(&self, inner: &mut Inner, extra: u64) -> Vec<Digest> {
        let mut victims = Vec::new();
        while inner.bytes + inner.reserved + extra > self.max_bytes {
            let Some((digest, entry)) = inner.entries.pop_lru() else {
                break;
            };
            inner.bytes -= entry.size;
            self.metrics.cache_eviction();
            tracing::info!(%digest, size = entry.size, "cache: evicted");
            victims.push(digest);
        }
        victims
    }

    fn unlink(&self, digests: Vec<Digest>) {
        for digest in digests {
            for path in [self.content_path(&digest), self.description_path(&digest)] {
                if let Err(error) = std::fs::remove_file(&path)
                    && error.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), %error, "cache: could not remove");
                }
            }
        }
    }

    /// Commits a verified fill: description and content renamed into place, folders synced,
    /// the entry indexed and the fill unregistered (one lock, so no request finds neither).
    pub(crate) fn commit(
        &self,
        fill: &Fill,
        file: &File,
        size: u64,
        media_type: Option<String>,
    ) -> Result<(), CacheError> {
        let digest = fill.digest();
        let ingest = self.ingest_path(digest);
        file.sync_all().map_err(io_err("syncing", &ingest))?;
        let entry = Entry {
            size,
            kind: fill.kind(),
            media_type,
            pairs: fill.pairs(),
        };
        let content = self.content_path(digest);
        let folder = content.parent().unwrap_or(&self.dir).to_owned();
        std::fs::create_dir_all(&folder).map_err(io_err("creating", &folder))?;
        write_description(
            &ingest.with_extension("json"),
            &self.description_path(digest),
            &Description::of(&entry),
        )?;
        std::fs::rename(&ingest, &content).map_err(io_err("renaming into place", &content))?;
        sync_dir(&folder)?;
        sync_dir(&self.dir.join("ingest"))?;
        let victims = {
            let mut inner = self.lock();
            inner.reserved = inner.reserved.saturating_sub(size);
            inner.bytes += size;
            inner.entries.put(digest.clone(), entry);
            inner.fills.remove(digest);
            // Another fill's reservation may have been counted while this one held its own.
            let victims = self.evict(&mut inner, 0);
            self.publish_gauges(&inner);
            victims
        };
        self.unlink(victims);
        Ok(())
    }

    /// Unregisters a fill that did not commit, releasing `reserved` bytes.
    pub(crate) fn release(&self, fill: &Fill, reserved: u64) {
        let mut inner = self.lock();
        inner.reserved = inner.reserved.saturating_sub(reserved);
        if inner
            .fills
            .get(fill.digest())
            .is_some_and(|current| std::ptr::eq(Arc::as_ptr(current), fill))
        {
            inner.fills.remove(fill.digest());
        }
        self.publish_gauges(&inner);
    }

    /// Where a fill of `digest` writes.
    pub fn ingest_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("ingest")
            .join(format!("{}-{}", digest.algorithm(), digest.hex()))
    }

    /// Where committed content of `digest` lives.
    pub fn content_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.algorithm().name()).join(digest.hex())
    }

    fn description_path(&self, digest: &Digest) -> PathBuf {
        self.content_path(digest).with_extension("json")
    }

    /// The bytes a previous fill of `digest` left after a read error, hashed again: the
    /// verifier to go on with, or `None` (nothing left, or not a prefix of `size` bytes).
    pub(crate) fn resume_point(&self, digest: &Digest, size: u64) -> Option<(File, Verifier)> {
        let path = self.ingest_path(digest);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .ok()?;
        let mut verifier = Verifier::new(digest.clone(), size);
        let mut buffer = vec![0; WRITE_CHUNK];
        loop {
            let read = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            };
            verifier.update(buffer.get(..read)?).ok()?;
        }
        (verifier.received() > 0 && verifier.remaining() > 0).then_some((file, verifier))
    }

    fn partial(&self, digest: &Digest) -> Option<(u64, u64)> {
        self.lock().partial.get(digest).copied()
    }

    fn keep_partial(&self, digest: &Digest, written: u64, size: u64) {
        self.lock().partial.insert(digest.clone(), (written, size));
    }

    fn forget_partial(&self, digest: &Digest) {
        self.lock().partial.remove(digest);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent counts (no step panics midway).
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish_gauges(&self, inner: &Inner) {
        self.metrics
            .cache_size(inner.bytes, inner.entries.len() as u64);
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// Reads the committed entries of one algorithm's folder, removing what is not one.
fn scan(
    folder: &Path,
    algorithm: &str,
    found: &mut Vec<(SystemTime, Digest, Entry)>,
) -> Result<(), CacheError> {
    let mut names = BTreeSet::new();
    for file in std::fs::read_dir(folder).map_err(io_err("reading", folder))? {
        names.insert(file.map_err(io_err("reading", folder))?.file_name());
    }
    for name in &names {
        let path = folder.join(name);
        let text = name.to_string_lossy();
        let (hex, is_description) = match text.strip_suffix(".json") {
            Some(hex) => (hex, true),
            None => (text.as_ref(), false),
        };
        let digest = Digest::parse(&format!("{algorithm}:{hex}")).ok();
        let entry = match (&digest, is_description) {
            // A description is read with its content, below.
            (Some(_), true) if names.contains(std::ffi::OsStr::new(hex)) => continue,
            (Some(_), false) => read_entry(&path),
            _ => None,
        };
        match (digest, entry) {
            (Some(digest), Some((modified, entry))) => found.push((modified, digest, entry)),
            _ => {
                tracing::warn!(path = %path.display(), "cache: removing a file that is no entry");
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(path.with_extension("json"));
            }
        }
    }
    Ok(())
}

/// A content file's entry from its description, if both are there and agree on the size.
fn read_entry(content: &Path) -> Option<(SystemTime, Entry)> {
    let text = std::fs::read(content.with_extension("json")).ok()?;
    let description: Description = serde_json::from_slice(&text).ok()?;
    let meta = std::fs::metadata(content).ok()?;
    if !meta.is_file() || meta.len() != description.size {
        return None;
    }
    let pairs = description
        .pairs
        .iter()
        .filter_map(|(registry, repository)| {
            Some((
                Registry::parse(registry).ok()?,
                Repository::parse(repository).ok()?,
            ))
        })
        .collect();
    let entry = Entry {
        size: description.size,
        kind: if description.manifest {
            ContentKind::Manifest
        } else {
            ContentKind::Blob
        },
        media_type: description.media_type,
        pairs,
    };
    Some((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), entry))
}

fn write_description(tmp: &Path, path: &Path, description: &Description) -> Result<(), CacheError> {
    let text = serde_json::to_vec(description).unwrap_or_default();
    let file = File::create(tmp).map_err(io_err("creating", tmp))?;
    file.write_all_at(&text, 0)
        .map_err(io_err("writing", tmp))?;
    file.sync_all().map_err(io_err("syncing", tmp))?;
    std::fs::rename(tmp, path).map_err(io_err("renaming into place", path))
}

fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir)
        .and_then(|folder| folder.sync_all())
        .map_err(io_err("syncing the folder", dir))
}

/// Turns an I/O error of `operation` on `path` into a [`CacheError`].
fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.to_owned();
    move |source| CacheError::Io {
        operation,
        path,
        source,
    }
}

// === impl Description ===

impl Description {
    fn of(entry: &Entry) -> Description {
        Description {
            size: entry.size,
            manifest: entry.kind == ContentKind::Manifest,
            media_type: entry.media_type.clone(),
            pairs: entry
                .pairs
                .iter()
                .map(|(registry, repository)| (registry.to_string(), repository.to_string()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
