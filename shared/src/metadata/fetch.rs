//! Where metadata and target manifests come from. The workflow is written against the
//! [`Fetch`] trait, so the same code runs against a folder ([`DirectoryFetch`], what
//! `meshctl verify` uses), the facade over HTTPS (the agent), or a test's repository
//! simulator.

use std::future::Future;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::targets::TargetEntry;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The file does not exist (for `N.root.cose`, the end of the root chain).
    #[error("not found")]
    NotFound,
    /// The source has more bytes than the limit allowed.
    #[error("more than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source's own error (an HTTP status, a TLS failure, a refused name), kept whole so
    /// its chain of causes survives.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// A source of metadata files and target manifests.
///
/// Implementations should stop reading once `limit` bytes are passed and answer
/// [`FetchError::TooLarge`]; the workflow checks the length again, so a source that does
/// not is still safe, only wasteful.
pub trait Fetch {
    /// Fetches a metadata file by name (`1.root.cose`, `timestamp.cose`, `7.targets.cose`).
    fn fetch_metadata(
        &mut self,
        file: &str,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;

    /// Fetches the manifest a target pins, by its digest, reading at most `limit` bytes.
    fn fetch_target(
        &mut self,
        entry: &TargetEntry,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;
}

/// Metadata files in a folder (targets are not served from a folder: `fetch_target` always
/// answers not found).
#[derive(Debug, Clone)]
pub struct DirectoryFetch {
    dir: PathBuf,
}

// === impl DirectoryFetch ===

impl DirectoryFetch {
    /// Serves the files of `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirectoryFetch { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Fetch for DirectoryFetch {
    fn fetch_metadata(
        &mut self,
        file: &str,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send {
        let result = read_capped(&self.dir.join(file), limit);
        async move { result }
    }

    async fn fetch_target(
        &mut self,
        _entry: &TargetEntry,
        _limit: u64,
    ) -> Result<Vec<u8>, FetchError> {
        Err(FetchError::NotFound)
    }
}

/// Reads a file, failing as soon as it proves longer than `limit`.
pub fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, FetchError> {
    let file = match fs_err::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FetchError::NotFound),
        Err(source) => {
            return Err(FetchError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| FetchError::Io {
            path: path.to_owned(),
            source,
        })?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit {
        return Err(FetchError::TooLarge { limit });
    }
    Ok(bytes)
}
