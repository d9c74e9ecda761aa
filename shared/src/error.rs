//! The crate's error type: one enum over every module's error, for callers that handle them
//! alike. Each module's own error names the input it refused.

use crate::digest::DigestError;
use crate::manifest::ManifestError;
use crate::metadata::MetadataError;
use crate::platform::PlatformError;
use crate::reference::ReferenceError;
use crate::tls::TlsError;
use crate::verify::VerifyError;

/// Any error from this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A malformed digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A malformed reference, registry, repository or tag.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A malformed platform.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// An unacceptable manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Content that failed verification.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Update metadata that failed to decode, verify, fetch or persist.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// TLS material that could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}
