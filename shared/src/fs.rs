//! Durable file writes: the one atomic write every store uses (trusted metadata, the agent's
//! last result, the facade's connections, `meshctl`'s metadata folder), the folder fsync
//! that makes a rename or an unlink survive a power cut, and the no-clobber write of a new
//! key file.
//!
//! [`write_atomic`] writes a temporary file beside the target (`.<name>.<pid>.tmp`: hidden,
//! and one per process so two writers never share one), fsyncs it, renames it over the
//! target and fsyncs the folder. After a power cut the target holds its old content or all of
//! the new, never part of either. Every error names the step and the path it failed on.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The mode a file gets when the caller does not choose one (the umask still applies), as
/// `File::create` gives.
const DEFAULT_MODE: u32 = 0o666;

/// A durable write that failed: which step, on which path.
#[derive(Debug, thiserror::Error)]
#[error("{step} {path}: {source}")]
#[non_exhaustive]
pub struct FsError {
    /// The step that failed.
    pub step: Step,
    /// The file or folder it failed on (the temporary file for the steps before the rename).
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: std::io::Error,
}

/// A step of a durable write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Creating the (temporary) file.
    Create,
    /// Writing the bytes.
    Write,
    /// fsyncing the file.
    Sync,
    /// Renaming the temporary file over the target.
    Rename,
    /// fsyncing the folder, which makes a rename or unlink in it durable.
    SyncDir,
}

// === impl Step ===

impl Step {
    /// What the step is doing, as error messages say it (`renaming into place`).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Create => "creating",
            Step::Write => "writing",
            Step::Sync => "syncing",
            Step::Rename => "renaming into place",
            Step::SyncDir => "syncing folder",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Replaces `path` with `bytes` atomically and durably (see the module documentation). The
/// file is created with the default mode (0666 less the umask).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    write_atomic_with_mode(path, bytes, DEFAULT_MODE)
}

/// [`write_atomic`] with the file created with `mode` (less the umask; 0600 for secrets).
/// The mode is ignored where files have none (not Unix).
pub fn write_atomic_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    let dir = parent(path);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    // A file of that name is what a crash of a process with this pid left: never the target.
    let _ = std::fs::remove_file(&tmp);
    create_synced(&tmp, bytes, mode)?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        FsError {
            step: Step::Rename,
            path: path.to_owned(),
            source,
        }
    })?;
    sync_dir(dir)
}

/// Creates `path` with `bytes` durably (the file, then its folder, fsynced), refusing to
/// replace a file that exists: a key file is never overwritten. The mode is ignored where
/// files have none (not Unix).
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    create_synced(path, bytes, mode)?;
    sync_dir(parent(path))
}

/// Creates `path` (which must not exist) with `bytes` and fsyncs it.
fn create_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    let error = |step| {
        move |source| FsError {
            step,
            path: path.to_owned(),
            source,
        }
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(error(Step::Create))?;
    file.write_all(bytes).map_err(error(Step::Write))?;
    file.sync_all().map_err(error(Step::Sync))
}

/// fsyncs a folder, so that a rename or an unlink in it survives a power cut. On systems
/// other than Unix a folder cannot be opened as a file, and there is nothing to do.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| FsError {
            step: Step::SyncDir,
            path: dir.to_owned(),
            source,
        })?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The folder a file is in (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests;
