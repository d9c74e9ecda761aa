//! The last cycle's result, as a small JSON file in the state directory.
//!
//! It is a file rather than an index record so that `status` can read it while the service
//! holds the state directory (sled admits one process), and it is written like trusted
//! state, with [`meshanics_shared::fs::write_atomic`].

use std::path::{Path, PathBuf};

use meshanics_shared::fs::write_atomic;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file's name in the state directory.
pub const FILE: &str = "last-result.json";

/// The result of the last cycle, pull or apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastResult {
    /// When (Unix seconds).
    pub time: u64,
    /// The target's name, if the result concerned one.
    pub target: Option<String>,
    /// Whether it succeeded.
    pub ok: bool,
    /// What happened.
    pub message: String,
}

/// Writes `result` atomically into `state_dir`.
pub fn write(state_dir: &Path, result: &LastResult) -> Result<()> {
    let path = state_dir.join(FILE);
    let bytes = serde_json::to_vec_pretty(result).map_err(|source| Error::IndexRecord {
        key: path.display().to_string(),
        source,
    })?;
    Ok(write_atomic(&path, &bytes)?)
}

/// Reads the last result from `state_dir`, if one was recorded.
pub fn read(state_dir: &Path) -> Result<Option<LastResult>> {
    let path: PathBuf = state_dir.join(FILE);
    match fs_err::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::IndexRecord {
                    key: path.display().to_string(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", path)(e)),
    }
}
