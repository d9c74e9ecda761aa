//! `fsck` (re-hash every blob) and `gc` (remove what no kept artifact references).

use std::collections::BTreeSet;
use std::io::Read;

use meshanics_shared::fs::sync_dir;
use meshanics_shared::{Algorithm, Digest};
use serde::Serialize;
use tracing::{info, warn};

use super::artifacts::{BUILDING_PREFIX, Pointers};
use super::{ArtifactState, Store};
use crate::error::{Error, Result};

/// What `fsck` found (and, with repair, fixed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FsckReport {
    /// Blob files checked.
    pub checked: usize,
    /// Blobs whose content does not hash to their name.
    pub corrupt: Vec<Digest>,
    /// Blob files the index did not know.
    pub unindexed: Vec<Digest>,
    /// Index records with no blob file.
    pub dangling: Vec<Digest>,
    /// Artifacts that reference a corrupt or missing blob: they need pulling again.
    pub damaged_artifacts: Vec<String>,
    /// Whether the problems were repaired.
    pub repaired: bool,
}

/// What `gc` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Blobs removed.
    pub removed_blobs: Vec<Digest>,
    /// Bytes freed by them.
    pub freed_bytes: u64,
    /// Artifact layouts removed.
    pub removed_artifacts: Vec<String>,
    /// The artifacts kept (every slot's current and previous).
    pub kept_artifacts: Vec<String>,
}

// === impl FsckReport ===

impl FsckReport {
    /// Whether everything was in order.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
            && self.unindexed.is_empty()
            && self.dangling.is_empty()
            && self.damaged_artifacts.is_empty()
    }
}

// === impl Store ===

impl Store {
    /// Re-hashes every committed blob and compares the index with the files. With `repair`,
    /// corrupt blobs are deleted (from the cache and from the layouts that link them, so the
    /// next update fetches them again) and the index is made to match the files.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        let mut report = FsckReport {
            repaired: repair,
            ..FsckReport::default()
        };
        let files = self.blob_files()?;
        for digest in &files {
            report.checked += 1;
            let path = self.blob_path(digest);
            if !hashes_to(&path, digest)? {
                warn!(%digest, path = %path.display(), "corrupt blob");
                report.corrupt.push(digest.clone());
            }
            if self.index().blob(digest)?.is_none() {
                report.unindexed.push(digest.clone());
            }
        }
        for (digest, _) in self.index().blobs()? {
            if !files.contains(&digest) {
                report.dangling.push(digest);
            }
        }
        let bad: BTreeSet<&Digest> = report.corrupt.iter().collect();
        let artifacts = self.index().artifacts()?;
        for artifact in &artifacts {
            if artifact
                .blobs
                .iter()
                .any(|d| bad.contains(d) || !files.contains(d))
            {
                report.damaged_artifacts.push(artifact.id.clone());
            }
        }
        if repair {
            for digest in &report.corrupt {
                let path = self.blob_path(digest);
                fs_err::remove_file(&path).map_err(Error::io("removing", &path))?;
                self.index().remove_blob(digest)?;
                for artifact in artifacts.iter().filter(|a| a.blobs.contains(digest)) {
                    let link = self.layout_blob_path(&artifact.id, digest);
                    match fs_err::remove_file(&link) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io("removing", link)(e)),
                    }
                }
                info!(%digest, "removed a corrupt blob");
            }
            self.sync_blob_dirs()?;
            for digest in &report.unindexed {
                if !report.corrupt.contains(digest) {
                    let path = self.blob_path(digest);
                    let size = fs_err::metadata(&path)
                        .map_err(Error::io("reading", &path))?
                        .len();
                    self.index().put_blob(digest, size)?;
                }
            }
            for digest in &report.dangling {
                self.index().remove_blob(digest)?;
            }
            self.index().flush()?;
        }
        Ok(report)
    }

    /// Removes every blob and artifact layout that no slot's `current`, `previous` or
    /// pending apply references (a retired slot's layouts go with it). Partial downloads
    /// are kept: they are what the next cycle resumes.
    pub fn gc(&self) -> Result<GcReport> {
        let mut kept: BTreeSet<String> = Pointers::read(self)?.ids().map(str::to_owned).collect();
        for slot in self.slot_names()? {
            kept.extend(self.slot_pointers(&slot)?.ids().map(str::to_owned));
            if let Some(pending) = self.slot_state(&slot)?.pending {
                kept.insert(pending.id);
                kept.extend(pending.restore.ids().map(str::to_owned));
            }
        }
        let mut keep_blobs = BTreeSet::new();
        for id in &kept {
            let record = match self.index().artifact(id)? {
                Some(record) => record,
                None => self.scan_layout(id, ArtifactState::Current)?,
            };
            keep_blobs.extend(record.blobs);
        }
        let mut report = GcReport {
            kept_artifacts: kept.iter().cloned().collect(),
            ..GcReport::default()
        };
        for id in self.layout_ids()? {
            if !kept.contains(&id) {
                let dir = self.layout_dir(&id);
                fs_err::remove_dir_all(&dir).map_err(Error::io("removing", &dir))?;
                report.removed_artifacts.push(id);
            }
        }
        // Layouts a crash left half-built (they are built under `.tmp-<id>` and renamed).
        let artifacts_dir = self.artifacts_dir();
        for entry in
            fs_err::read_dir(&artifacts_dir).map_err(Error::io("listing", &artifacts_dir))?
        {
            let entry = entry.map_err(Error::io("listing", &artifacts_dir))?;
            if let Some(name) = entry.file_name().to_str()
                && name.starts_with(BUILDING_PREFIX)
            {
                let dir = entry.path();
                fs_err::remove_dir_all(&dir).map_err(Error::io("removing", &dir))?;
                report.removed_artifacts.push(name.to_owned());
            }
        }
        for record in self.index().artifacts()? {
            if !kept.contains(&record.id) {
                self.index().remove_artifact(&record.id)?;
            }
        }
        for digest in self.blob_files()? {
            if keep_blobs.contains(&digest) {
                continue;
            }
            let path = self.blob_path(&digest);
            let size = fs_err::metadata(&path)
                .map_err(Error::io("reading", &path))?
                .len();
            fs_err::remove_file(&path).map_err(Error::io("removing", &path))?;
            self.index().remove_blob(&digest)?;
            report.freed_bytes += size;
            report.removed_blobs.push(digest);
        }
        self.sync_blob_dirs()?;
        sync_dir(&self.artifacts_dir())?;
        self.index().flush()?;
        info!(
            removed_blobs = report.removed_blobs.len(),
            freed_bytes = report.freed_bytes,
            removed_artifacts = report.removed_artifacts.len(),
            "garbage collected the cache"
        );
        Ok(report)
    }
}

impl Store {
    /// Makes the removals in every blob folder durable.
    fn sync_blob_dirs(&self) -> Result<()> {
        for algorithm in Algorithm::ALL {
            sync_dir(&self.blobs_dir(algorithm))?;
        }
        Ok(())
    }
}

/// Whether the file at `path` hashes to `digest`, read in chunks.
fn hashes_to(path: &std::path::Path, digest: &Digest) -> Result<bool> {
    let mut file = fs_err::File::open(path).map_err(Error::io("opening", path))?;
    let mut hasher = digest.hasher();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(Error::io("reading", path))?;
        match buf.get(..n) {
            Some(chunk) if !chunk.is_empty() => hasher.update(chunk),
            _ => break,
        }
    }
    Ok(&hasher.finish() == digest)
}
