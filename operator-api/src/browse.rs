//! The seam between the operator API and the registries: listing tags and resolving a tag
//! to the digest it points at now. The facade's registry client implements it; tests can run
//! it against the real distribution registry.

use std::fmt;

use futures_util::future::BoxFuture;
use meshanics_shared::{Digest, Reference};

use crate::wire::TagList;

/// A manifest a tag resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The manifest's digest (verified: the bytes hash to it).
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
}

/// Why browsing or resolving failed.
///
/// Exhaustive on purpose: the admin server maps each variant to a status and an import
/// [`Outcome`](crate::Outcome), so a new one must be handled there.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    /// The registry is not connected.
    #[error("registry {0} is not connected (meshctl registry add)")]
    NotConnected(String),
    /// The repository or tag does not exist.
    #[error("{0} was not found")]
    NotFound(String),
    /// The registry refused the connection's credentials.
    #[error("the registry refused the credentials of {0}")]
    Unauthorized(String),
    /// The registry rate-limited us.
    #[error("the registry rate-limited the request for {what}")]
    RateLimited {
        /// What was asked.
        what: String,
        /// Seconds to wait, if the registry said.
        retry_after: Option<u64>,
    },
    /// The registry did not answer in time.
    #[error("the registry did not answer in time for {0}")]
    Timeout(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// Lists tags and resolves tags to digests.
pub trait Browser: Send + Sync + fmt::Debug {
    /// Up to `limit` tags of `repository`, following the registry's pagination; the list
    /// says when it was clipped.
    fn tags<'a>(
        &'a self,
        repository: &'a Reference,
        limit: usize,
    ) -> BoxFuture<'a, Result<TagList, BrowseError>>;

    /// The manifest `reference` (with a tag) points at now.
    fn resolve<'a>(
        &'a self,
        reference: &'a Reference,
    ) -> BoxFuture<'a, Result<Resolved, BrowseError>>;
}
