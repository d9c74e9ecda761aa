//! Why a metadata file, key file or trusted state was refused. Every variant names the file
//! (or path) it is about, so an operator reading a device log knows what to look at.

use std::path::PathBuf;

use super::fetch::FetchError;
use super::role::RoleType;
use super::targets::TargetError;
use super::time::UnixTime;
use crate::fs::FsError;

/// Any error from signing, decoding, verifying, fetching or storing update metadata.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The file is not a well-formed tagged COSE_Sign as docs/metadata.md describes.
    #[error("{file}: not a valid COSE_Sign envelope: {reason}")]
    Envelope {
        /// The file.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A signature uses another algorithm than the one pinned (EdDSA, -8).
    #[error("{file}: signature algorithm {found} is not the pinned EdDSA (-8)")]
    Algorithm {
        /// The file.
        file: String,
        /// The algorithm it named (or "none").
        found: String,
    },
    /// The signed payload is not the CBOR the role requires.
    #[error("{file}: malformed {role} payload: {reason}")]
    Payload {
        /// The file.
        file: String,
        /// The role it was read as.
        role: RoleType,
        /// What is wrong with it.
        reason: String,
    },
    /// The payload names another role than the one expected (a targets file served as the
    /// timestamp).
    #[error("{file}: expected a {expected} file, found a {found} file")]
    WrongRole {
        /// The file.
        file: String,
        /// The role asked for.
        expected: RoleType,
        /// The role the payload says it is.
        found: String,
    },
    /// The payload has a spec version this code does not implement.
    #[error("{file}: unsupported spec version {found} (this verifier implements {supported})")]
    SpecVersion {
        /// The file.
        file: String,
        /// The version found.
        found: u64,
        /// The version implemented.
        supported: u64,
    },
    /// The payload decodes but breaks a rule of the format (zero threshold, a duplicate key,
    /// a duplicate target name, ...).
    #[error("{file}: invalid {role} metadata: {reason}")]
    Invalid {
        /// The file.
        file: String,
        /// The role.
        role: RoleType,
        /// The rule broken.
        reason: String,
    },
    /// A target entry breaks a rule of the format (its media type, size, selectors).
    #[error("{file}: invalid targets metadata: target {name}: {source}")]
    InvalidTarget {
        /// The targets file.
        file: String,
        /// The target's name.
        name: String,
        /// The rule broken (boxed: it is large, and rare).
        #[source]
        source: Box<TargetError>,
    },
    /// Fewer distinct authorized keys signed the file than the role's threshold.
    #[error(
        "{file}: {valid} valid signature(s) by {role} keys of root version {root_version}, below the threshold of {threshold}"
    )]
    BelowThreshold {
        /// The file.
        file: String,
        /// The role whose keys were counted.
        role: RoleType,
        /// The root version that defines those keys.
        root_version: u64,
        /// Distinct authorized keys with a valid signature.
        valid: usize,
        /// How many are needed.
        threshold: u32,
    },
    /// A new root whose version is not exactly the trusted version plus one.
    #[error("{file}: root version {found} where version {expected} was required")]
    RootVersion {
        /// The file.
        file: String,
        /// The version required.
        expected: u64,
        /// The version found.
        found: u64,
    },
    /// A role's version went backwards.
    #[error(
        "{file}: {role} version {found} is lower than the trusted version {trusted} (rollback)"
    )]
    Rollback {
        /// The file.
        file: String,
        /// The role.
        role: RoleType,
        /// The version trusted now.
        trusted: u64,
        /// The version offered.
        found: u64,
    },
    /// The timestamp names a targets version lower than the one a trusted timestamp named.
    #[error(
        "{file}: names targets version {found}, lower than the trusted timestamp's {trusted} (rollback)"
    )]
    TargetsRollback {
        /// The timestamp file.
        file: String,
        /// The targets version named by the trusted timestamp.
        trusted: u64,
        /// The targets version named by the new timestamp.
        found: u64,
    },
    /// Metadata past its expiry on the effective clock.
    #[error("{file}: {role} metadata expired at {expires} (effective time {now})")]
    Expired {
        /// The file.
        file: String,
        /// The role.
        role: RoleType,
        /// When it expired.
        expires: UnixTime,
        /// The effective clock.
        now: UnixTime,
    },
    /// The targets file is not the one the timestamp names (mix-and-match).
    #[error("{file}: does not match the timestamp: {reason}")]
    TimestampMismatch {
        /// The targets file.
        file: String,
        /// Which property differs.
        reason: String,
    },
    /// A file (metadata or target) larger than its cap (endless data).
    #[error("{file}: larger than its limit of {limit} bytes")]
    TooLarge {
        /// The file.
        file: String,
        /// The cap.
        limit: u64,
    },
    /// A target's content failed its digest or size check (arbitrary software).
    #[error("target {name}: {source}")]
    Target {
        /// The target name.
        name: String,
        /// The check that failed.
        #[source]
        source: crate::verify::VerifyError,
    },
    /// Fetching a file failed.
    #[error("fetching {file}: {source}")]
    Fetch {
        /// The file.
        file: String,
        /// Why.
        #[source]
        source: FetchError,
    },
    /// Reading or writing the trusted state on disk failed.
    #[error("{operation} {path}: {source}")]
    Store {
        /// What was being done ("writing", "reading", ...).
        operation: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key file or key that cannot be used.
    #[error("key {what}: {reason}")]
    Key {
        /// The key file or key id.
        what: String,
        /// Why.
        reason: String,
    },
    /// Encoding metadata failed (signing side only).
    #[error("encoding {role} metadata: {reason}")]
    Encode {
        /// The role.
        role: RoleType,
        /// Why.
        reason: String,
    },
}

// === impl MetadataError ===

/// A failed durable write of the trusted state: the step is the operation.
impl From<FsError> for MetadataError {
    fn from(err: FsError) -> Self {
        MetadataError::Store {
            operation: err.step.as_str(),
            path: err.path,
            source: err.source,
        }
    }
}
