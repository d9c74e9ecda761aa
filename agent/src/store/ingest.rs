//! Writing one blob into the cache: through an ingest file, verified as it is written,
//! committed only when size and digest match.
//!
//! An ingest file outlives the process: after a crash, a SIGTERM or a dropped connection, the
//! next [`Ingest::open`] re-hashes what is there and the download goes on from its end with
//! `Range`. Nothing is trusted without re-hashing: a torn write at the end of the file is
//! caught by the final digest check, which then sends the download back to zero.
//!
//! File writes here are plain blocking writes of one network chunk at a time: local disk
//! writes of a few KiB are shorter than the bookkeeping of handing them to a blocking pool.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use meshanics_shared::fs::sync_dir;
use meshanics_shared::{Digest, Verifier, VerifyError};
use tracing::debug;

use super::Store;
use crate::error::{Error, Result};
use crate::failpoint;

/// A blob being written to the cache.
#[derive(Debug)]
pub struct Ingest<'s> {
    store: &'s Store,
    path: PathBuf,
    file: fs_err::File,
    verifier: Verifier,
}

// === impl Ingest ===

impl<'s> Ingest<'s> {
    /// Opens the ingest file for `digest`, creating it or re-hashing what it already holds.
    /// A partial file longer than `size` is emptied.
    pub(super) fn open(store: &'s Store, digest: Digest, size: u64) -> Result<Ingest<'s>> {
        let path = store.ingest_path(&digest);
        // A commit makes the file read-only just before renaming it into the cache; a power
        // cut that loses the rename (the folder was not fsynced yet) leaves it read-only
        // under its ingest name, where an unprivileged agent could never open it again.
        if fs_err::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o200 == 0) {
            fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                .map_err(Error::io("making writable", &path))?;
        }
        let mut file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(Error::io("opening", &path))?;
        let verifier = match rehash(&mut file, &digest, size) {
            Ok(verifier) => verifier,
            Err(RehashError::Io(e)) => return Err(Error::io("re-hashing", &path)(e)),
            Err(RehashError::TooLong) => {
                debug!(%digest, "partial download is longer than the blob; starting over");
                file.set_len(0).map_err(Error::io("truncating", &path))?;
                Verifier::new(digest, size)
            }
        };
        file.seek(std::io::SeekFrom::End(0))
            .map_err(Error::io("seeking", &path))?;
        if verifier.received() > 0 {
            debug!(digest = %verifier.expected(), offset = verifier.received(), "resuming a partial download");
        }
        Ok(Ingest {
            store,
            path,
            file,
            verifier,
        })
    }

    /// The digest being written.
    pub fn digest(&self) -> &Digest {
        self.verifier.expected()
    }

    /// The expected size.
    pub fn size(&self) -> u64 {
        self.verifier.expected_size()
    }

    /// How many bytes are written (and hashed) so far: where a resumed download starts.
    pub fn offset(&self) -> u64 {
        self.verifier.received()
    }

    /// Appends bytes. Refuses, writing nothing, bytes that would pass the expected size.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.verifier
            .check_room(bytes.len())
            .map_err(|source| self.refused(source))?;
        let allowed = crate::failpoint::write_allowance(bytes.len());
        if let Some(torn) = bytes.get(..allowed).filter(|_| allowed < bytes.len()) {
            let _ = self.file.write_all(torn);
            crate::failpoint::torn_write(&self.path.display());
        }
        self.file
            .write_all(bytes)
            .map_err(Error::io("writing", &self.path))?;
        self.verifier
            .update(bytes)
            .map_err(|source| self.refused(source))
    }

    /// Empties the file and starts the blob from zero (after a 416, or a server that ignored
    /// `Range`, or content that failed verification).
    pub fn restart(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(std::io::SeekFrom::Start(0)).map(|_| ()))
            .map_err(Error::io("truncating", &self.path))?;
        self.verifier = Verifier::new(self.verifier.expected().clone(), self.size());
        Ok(())
    }

    /// Checks size and digest and moves the blob into the cache durably. On a mismatch the
    /// ingest file is deleted (its bytes are wrong, resuming from them cannot succeed) and
    /// nothing enters the cache.
    pub fn commit(self) -> Result<()> {
        let digest = self.verifier.expected().clone();
        let size = self.size();
        if let Err(source) = self.verifier.clone().finish() {
            if !matches!(source, VerifyError::TooShort { .. }) {
                let _ = fs_err::remove_file(&self.path);
            }
            return Err(Error::Verify { digest, source });
        }
        let target = self.store.blob_path(&digest);
        failpoint::hit("ingest.before-fsync", &self.path.display());
        self.file
            .sync_all()
            .map_err(Error::io("syncing", &self.path))?;
        self.file
            .set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(Error::io("making read-only", &self.path))?;
        failpoint::hit("ingest.before-rename", &self.path.display());
        fs_err::rename(&self.path, &target).map_err(Error::io("committing", &target))?;
        failpoint::hit("ingest.before-dir-fsync", &target.display());
        if let Some(dir) = target.parent() {
            sync_dir(dir)?;
        }
        failpoint::hit("ingest.before-index", &target.display());
        self.store.index().put_blob(&digest, size)?;
        self.store.index().flush()?;
        debug!(%digest, size, "committed a blob");
        Ok(())
    }

    fn refused(&self, source: VerifyError) -> Error {
        Error::Verify {
            digest: self.verifier.expected().clone(),
            source,
        }
    }
}

enum RehashError {
    Io(std::io::Error),
    TooLong,
}

fn rehash(file: &mut fs_err::File, digest: &Digest, size: u64) -> Result<Verifier, RehashError> {
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(RehashError::Io)?;
    let mut verifier =
        Verifier::resume(digest.clone(), size, &[]).map_err(|_| RehashError::TooLong)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(RehashError::Io)?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            return Ok(verifier);
        };
        verifier.update(chunk).map_err(|_| RehashError::TooLong)?;
    }
}
