//! The content-addressed cache, and the state directory it lives in.
//!
//! ```text
//! <state_dir>/
//!   lock                      held (flock) by the one agent process using this directory
//!   cache/blobs/<alg>/<hex>   committed blobs: verified, fsynced, read-only (<alg> is
//!                             sha256 or sha512, every algorithm a digest may name)
//!   cache/ingest/<alg>-<hex>  partial downloads, resumed with Range after an interruption
//!   cache/index/              the sled index (sizes, last use, artifacts, last result)
//!   artifacts/<id>/           OCI image layouts of pulled artifacts (see [`artifacts`])
//!   slots/<target>/           one per target: its `current` and `previous` links and its
//!                             state (see [`slots`])
//!   current, previous         symlinks to the primary slot's `current` and `previous`
//!   last-result.json          the last cycle's outcome, for `status`
//! ```
//!
//! A blob reaches `blobs/` only through [`Ingest::commit`]: written to its ingest file, its
//! size and digest checked, fsynced, renamed into place, and its folder fsynced, so that after
//! a power cut a blob file is either absent or complete and correct. The files are the truth;
//! the sled index is a rebuildable summary of them and of the artifact layouts (see
//! [`index`]), so losing it loses nothing.

pub mod artifacts;
mod fsck;
pub(crate) mod index;
mod ingest;
pub mod last_result;
pub mod slots;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use meshanics_shared::{Algorithm, Digest};
use tracing::{info, warn};

use crate::error::{Error, Result};

pub use artifacts::Pointers;
pub use fsck::{FsckReport, GcReport};
pub use index::{ArtifactRecord, ArtifactState, BlobRecord, Index};
pub use ingest::Ingest;
pub use last_result::LastResult;
pub use slots::{BadRelease, Pending, SlotState};

/// sled's cache: small, because the index is small and devices are (sled's default is 1 GiB).
const INDEX_CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// Free space kept on top of a download, so the index and metadata can still be written.
pub const DEFAULT_RESERVE: u64 = 8 * 1024 * 1024;

/// How the free disk space is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeSpace {
    /// Ask the file system (`statvfs`: blocks available to unprivileged users).
    Statvfs,
    /// A fixed figure, for tests and for operators who cap the cache below the disk size.
    Fixed(u64),
}

/// Options for [`Store::open`].
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// How free space is measured.
    pub free_space: FreeSpace,
    /// Bytes that must remain free after a download.
    pub reserve: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            free_space: FreeSpace::Statvfs,
            reserve: DEFAULT_RESERVE,
        }
    }
}

/// The state directory: cache, index and artifact layouts, held by this process.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    index: Index,
    options: StoreOptions,
    /// Held for the store's lifetime; the lock is released when the file is closed.
    _lock: fs_err::File,
}

/// What [`Store::open`] had to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The index could not be opened and was moved here, then rebuilt.
    pub index_moved_to: Option<PathBuf>,
    /// The index was rebuilt from the blob files and layouts.
    pub rebuilt: bool,
    /// Committed blob files the index did not record (a crash between a blob's rename and
    /// its index record), now recorded.
    pub adopted: usize,
    /// A state directory from before slots had its `current` and `previous` moved into
    /// this slot.
    pub migrated_to_slot: Option<String>,
}

// === impl Store ===

impl Store {
    /// Opens (creating if needed) the state directory `root`: takes its lock, creates the
    /// folders, and opens the index. If sled cannot open the index, the index folder is moved
    /// aside (kept for a post-mortem) and rebuilt from the blob files; an empty index beside
    /// existing blobs is rebuilt too.
    pub fn open(root: &Path, options: StoreOptions) -> Result<(Store, OpenReport)> {
        let blob_dirs = Algorithm::ALL.map(|algorithm| blobs_dir_in(root, algorithm));
        for dir in [
            root.to_owned(),
            root.join("cache/ingest"),
            root.join("artifacts"),
            root.join(slots::SLOTS_DIR),
        ]
        .into_iter()
        .chain(blob_dirs)
        {
            fs_err::create_dir_all(&dir).map_err(Error::io("creating", dir))?;
        }
        let lock = lock(&root.join("lock"))?;
        let mut report = OpenReport::default();
        let index_dir = root.join("cache/index");
        let index = match Index::open(&index_dir, INDEX_CACHE_BYTES) {
            Ok(index) => index,
            Err(err) => {
                let aside = aside_name(&index_dir);
                warn!(error = %err, moved_to = %aside.display(), "the cache index cannot be opened; moving it aside and rebuilding it from the blob files");
                fs_err::rename(&index_dir, &aside)
                    .map_err(Error::io("moving aside", &index_dir))?;
                report.index_moved_to = Some(aside);
                Index::open(&index_dir, INDEX_CACHE_BYTES)?
            }
        };
        let store = Store {
            root: root.to_owned(),
            index,
            options,
            _lock: lock,
        };
        store.finish_slot_removals()?;
        report.migrated_to_slot = store.migrate_to_slots()?.map(String::from);
        if report.index_moved_to.is_some() || (store.index.is_empty() && store.has_any_blob()?) {
            store.rebuild_index()?;
            report.rebuilt = true;
            info!("rebuilt the cache index from the blob files");
        } else {
            report.adopted = store.adopt_unindexed_blobs()?;
        }
        Ok((store, report))
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Records the last cycle's result (see [`last_result`]).
    pub fn set_last_result(&self, result: &LastResult) -> Result<()> {
        last_result::write(&self.root, result)
    }

    /// The last cycle's result.
    pub fn last_result(&self) -> Result<Option<LastResult>> {
        last_result::read(&self.root)
    }

    /// The folder of committed blobs whose digests use `algorithm`.
    pub fn blobs_dir(&self, algorithm: Algorithm) -> PathBuf {
        blobs_dir_in(&self.root, algorithm)
    }

    /// The folder of artifact layouts.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// Where a committed blob lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir(digest.algorithm()).join(digest.hex())
    }

    /// Where a blob's partial download lives.
    pub fn ingest_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("cache/ingest").join(format!(
            "{}-{}",
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    /// Whether a blob is committed with the expected size; records its use.
    pub fn has(&self, digest: &Digest, size: u64) -> Result<bool> {
        match fs_err::metadata(self.blob_path(digest)) {
            Ok(meta) if meta.len() == size => {
                self.index.touch_blob(digest, size)?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("reading", self.blob_path(digest))(e)),
        }
    }

    /// Reads a committed blob whole (manifests and configs: small, capped by the caller).
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        match fs_err::read(&path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::MissingBlob {
                digest: digest.clone(),
            }),
            Err(e) => Err(Error::io("reading", path)(e)),
        }
    }

    /// Starts or resumes writing a blob (see [`Ingest`]).
    pub fn ingest(&self, digest: &Digest, size: u64) -> Result<Ingest<'_>> {
        Ingest::open(self, digest.clone(), size)
    }

    /// Commits bytes that are already in memory (a manifest): verified like any download.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let mut ingest = self.ingest(digest, bytes.len() as u64)?;
        if ingest.offset() > 0 {
            ingest.restart()?;
        }
        ingest.write(bytes)?;
        ingest.commit()
    }

    /// Bytes of partial downloads already on disk for `digest`, if any.
    pub fn partial_len(&self, digest: &Digest) -> u64 {
        fs_err::metadata(self.ingest_path(digest))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Checks that `needed` more bytes fit on the disk with the reserve left over.
    pub fn ensure_space(&self, needed: u64) -> Result<()> {
        let available = match self.options.free_space {
            FreeSpace::Fixed(n) => n,
            FreeSpace::Statvfs => {
                let dir = self.root.join("cache");
                let stat = rustix::fs::statvfs(&dir)
                    .map_err(|e| Error::io("measuring free space in", &dir)(e.into()))?;
                stat.f_bavail.saturating_mul(stat.f_frsize)
            }
        };
        if needed.saturating_add(self.options.reserve) > available {
            return Err(Error::NoSpace {
                path: self.root.join("cache"),
                needed,
                reserve: self.options.reserve,
                available,
            });
        }
        Ok(())
    }

    /// The digests of every committed blob file, by listing the folder of each algorithm.
    pub fn blob_files(&self) -> Result<BTreeSet<Digest>> {
        let mut out = BTreeSet::new();
        for algorithm in Algorithm::ALL {
            let dir = self.blobs_dir(algorithm);
            for digest in digests_in(&dir, algorithm)? {
                out.insert(digest);
            }
        }
        Ok(out)
    }

    /// The total size of committed blobs, in bytes.
    pub fn cache_size(&self) -> Result<u64> {
        let mut total = 0u64;
        for digest in self.blob_files()? {
            let path = self.blob_path(&digest);
            total += fs_err::metadata(&path)
                .map_err(Error::io("reading", &path))?
                .len();
        }
        Ok(total)
    }

    /// Records blob files the index lacks. A commit renames the blob into place before it
    /// writes the index record, so a crash between the two leaves a verified, durable blob
    /// the index does not know; the files are the truth, so it is adopted (by name and size:
    /// the rename happened only after its digest matched).
    fn adopt_unindexed_blobs(&self) -> Result<usize> {
        let mut adopted = 0;
        for digest in self.blob_files()? {
            if self.index.blob(&digest)?.is_some() {
                continue;
            }
            let path = self.blob_path(&digest);
            let size = fs_err::metadata(&path)
                .map_err(Error::io("reading", &path))?
                .len();
            self.index.put_blob(&digest, size)?;
            adopted += 1;
        }
        if adopted > 0 {
            self.index.flush()?;
            info!(
                adopted,
                "recorded committed blobs the index did not know (an interrupted commit)"
            );
        }
        Ok(adopted)
    }

    fn has_any_blob(&self) -> Result<bool> {
        for algorithm in Algorithm::ALL {
            let dir = self.blobs_dir(algorithm);
            if fs_err::read_dir(&dir)
                .map_err(Error::io("listing", &dir))?
                .next()
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Rebuilds the index from the blob files (sizes) and the artifact layouts (which blobs
    /// each references). Blob contents are not re-hashed here: that is `fsck`'s job.
    pub fn rebuild_index(&self) -> Result<()> {
        self.index.clear()?;
        for digest in self.blob_files()? {
            let path = self.blob_path(&digest);
            let size = fs_err::metadata(&path)
                .map_err(Error::io("reading", &path))?
                .len();
            self.index.put_blob(&digest, size)?;
        }
        for record in self.scan_layouts()? {
            self.index.put_artifact(&record)?;
        }
        self.index.flush()
    }
}

/// `cache/blobs/<algorithm>` under the state directory `root`.
fn blobs_dir_in(root: &Path, algorithm: Algorithm) -> PathBuf {
    root.join("cache/blobs").join(algorithm.name())
}

/// The digests named by the files of `dir`, a folder of `algorithm` blobs named by their hex
/// (the cache's, or a layout's `blobs/<algorithm>`). Stray files are logged and skipped.
pub(crate) fn digests_in(dir: &Path, algorithm: Algorithm) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    for entry in fs_err::read_dir(dir).map_err(Error::io("listing", dir))? {
        let entry = entry.map_err(Error::io("listing", dir))?;
        match entry
            .file_name()
            .to_str()
            .and_then(|hex| Digest::parse(&format!("{algorithm}:{hex}")).ok())
        {
            Some(digest) => out.push(digest),
            None => {
                warn!(path = %entry.path().display(), "ignoring a stray file in a blob folder");
            }
        }
    }
    Ok(out)
}

/// Takes the state directory's lock without waiting: a second agent on the same directory
/// would corrupt downloads the first is making.
fn lock(path: &Path) -> Result<fs_err::File> {
    let file = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(Error::io("opening", path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Locked {
            path: path.to_owned(),
        }),
        Err(e) => Err(Error::io("locking", path)(e.into())),
    }
}

/// `index.broken-<unix seconds>` (with a counter if that exists).
fn aside_name(index_dir: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut n = 0u32;
    loop {
        let candidate = index_dir.with_file_name(if n == 0 {
            format!("index.broken-{secs}")
        } else {
            format!("index.broken-{secs}.{n}")
        });
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests;
