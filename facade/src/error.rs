//! The facade's error type: everything a device request can end in besides content.
//! [`crate::respond`] is the one place these become HTTP statuses and OCI error JSON.

use std::sync::Arc;

use http::{HeaderValue, Method, StatusCode};
use meshanics_shared::{Digest, Registry, VerifyError};

use crate::registry_client::{ContentKind, UpstreamError};

/// Why a device request was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No route for this path.
    #[error("no route for {path}")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// A route that exists, with a method it does not take.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method.
        method: Method,
        /// The path.
        path: String,
    },
    /// A manifest reference that is not a digest: a tag, or neither tag nor digest.
    #[error("digest references only: {reference:?} is not a digest")]
    DigestOnly {
        /// The reference given.
        reference: String,
    },
    /// A malformed blob digest.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest {
        /// What was given.
        input: String,
        /// Why it is not a digest.
        reason: String,
    },
    /// A malformed upstream or repository name.
    #[error("invalid name {input:?}: {reason}")]
    InvalidName {
        /// What was given.
        input: String,
        /// Why.
        reason: String,
    },
    /// An upstream that is unknown or not approved (the two are not told apart to devices).
    #[error("upstream {registry} is not approved")]
    UnknownUpstream {
        /// The upstream asked for.
        registry: Registry,
    },
    /// The upstream does not have the content.
    #[error("{registry} has no {kind:?} {digest}")]
    ContentUnknown {
        /// The upstream.
        registry: Registry,
        /// Manifest or blob.
        kind: ContentKind,
        /// The digest.
        digest: Digest,
    },
    /// The upstream refused the requested range.
    #[error("{registry} refused the range asked for {digest}")]
    RangeNotSatisfiable {
        /// The upstream.
        registry: Registry,
        /// The blob.
        digest: Digest,
        /// The upstream's `Content-Range` (`bytes */SIZE`), passed on.
        content_range: Option<HeaderValue>,
    },
    /// The upstream refused the facade's credentials.
    #[error("{registry} refused the facade's credentials ({status})")]
    UpstreamDenied {
        /// The upstream.
        registry: Registry,
        /// Its status.
        status: StatusCode,
    },
    /// The upstream rate-limits the facade.
    #[error("{registry} is rate-limiting the facade")]
    UpstreamRateLimited {
        /// The upstream.
        registry: Registry,
        /// The upstream's `Retry-After`, passed on to the device.
        retry_after: Option<HeaderValue>,
    },
    /// The upstream answered a status the facade cannot serve.
    #[error("{registry} answered {status} for {digest}")]
    UpstreamStatus {
        /// The upstream.
        registry: Registry,
        /// The digest.
        digest: Digest,
        /// Its status.
        status: StatusCode,
        /// The upstream's `Retry-After` (with a 503), passed on to the device.
        retry_after: Option<HeaderValue>,
    },
    /// The upstream could not be reached, timed out, or its token flow failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream's `Docker-Content-Digest` names other content.
    #[error("{registry} announced {announced} for {expected}")]
    DigestHeaderMismatch {
        /// The upstream.
        registry: Registry,
        /// The digest asked for.
        expected: Digest,
        /// What the upstream announced.
        announced: String,
    },
    /// A manifest over the size cap.
    #[error("{registry} serves {digest} with {size} bytes, over the manifest cap of {limit}")]
    ManifestTooLarge {
        /// The upstream.
        registry: Registry,
        /// The digest.
        digest: Digest,
        /// The announced or received size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// The upstream did not say how large the content is where the facade must know.
    #[error("{registry} sent no usable Content-Length for {digest}")]
    MissingLength {
        /// The upstream.
        registry: Registry,
        /// The digest.
        digest: Digest,
    },
    /// Buffered content (a manifest) failed verification before anything was sent.
    #[error("{registry} served bad content: {source}")]
    Verification {
        /// The upstream.
        registry: Registry,
        /// What failed.
        #[source]
        source: VerifyError,
    },
    /// A cache fill failed while streaming (reading the upstream, or writing the cache).
    #[error("fetching {digest} from {registry} into the cache failed: {reason}")]
    FillFailed {
        /// The upstream.
        registry: Registry,
        /// The digest.
        digest: Digest,
        /// Why.
        reason: String,
    },
    /// The failure of a cache fill, shared by every request that waited on it.
    #[error(transparent)]
    Shared(Arc<Error>),
    /// Content not in the cache, and its upstream is unreachable, failing or rate-limiting
    /// (a 5xx, a 429, a timeout, no connection): the device should retry later.
    #[error("{digest} is not cached and its upstream is unavailable: {source}")]
    Unavailable {
        /// The digest.
        digest: Digest,
        /// The upstream's `Retry-After`, if it gave one.
        retry_after: Option<HeaderValue>,
        /// Why.
        #[source]
        source: Arc<Error>,
    },
    /// No such metadata file (or not a regular file, or no metadata folder).
    #[error("no metadata file {name:?}")]
    MetaNotFound {
        /// The name asked for.
        name: String,
    },
    /// A metadata file over the size cap.
    #[error("metadata file {path} is {size} bytes, over the cap of {limit}")]
    MetaTooLarge {
        /// The file.
        path: std::path::PathBuf,
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// A metadata file could not be read.
    #[error("reading metadata file {path}: {source}")]
    MetaIo {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

// === impl Error ===

impl Error {
    /// The error itself, through any [`Error::Shared`].
    pub fn root(&self) -> &Error {
        match self {
            Error::Shared(inner) => inner.root(),
            other => other,
        }
    }

    /// For a miss: an upstream that is unreachable, timed out, failing (5xx) or
    /// rate-limiting (429) becomes [`Error::Unavailable`] (503 with `Retry-After`, the
    /// upstream's when it gave one); any other error is kept.
    pub fn on_miss(self, digest: &Digest) -> Error {
        let retry_after = match self.root() {
            Error::UpstreamStatus {
                status,
                retry_after,
                ..
            } if status.is_server_error() => retry_after.clone(),
            // The answer for a rate-limited miss: the device retries later whatever
            // the reason, after the upstream's `Retry-After`.
            Error::UpstreamRateLimited { retry_after, .. } => retry_after.clone(),
            Error::Upstream(UpstreamError::Timeout { .. }) => None,
            // Unreachable, or cut off; not a certificate the facade refused (a setting to
            // fix, not a moment to wait out).
            Error::Upstream(UpstreamError::Request { source, .. }) if !refused_tls(source) => None,
            Error::FillFailed { .. } => None,
            _ => return self,
        };
        let source = match self {
            Error::Shared(inner) => inner,
            other => Arc::new(other),
        };
        Error::Unavailable {
            digest: digest.clone(),
            retry_after,
            source,
        }
    }
}

/// Whether `error` comes from a TLS handshake the facade refused (or that failed): rustls's
/// error somewhere in its chain. An `io::Error` wrapping another is looked into (its
/// `source` skips the error it wraps).
fn refused_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    false
}
