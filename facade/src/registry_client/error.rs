//! Why an upstream request failed.

use meshanics_shared::{Digest, Registry};
use reqwest::Url;

use super::redacted;
use crate::providers::ProviderError;

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The HTTP client for an upstream could not be built.
    #[error("building the HTTP client for upstream {host}: {reason}")]
    Client {
        /// The upstream.
        host: Registry,
        /// Why.
        reason: String,
    },
    /// A request could not be sent or its response headers not read.
    #[error("requesting {url}: {source}")]
    Request {
        /// The URL (without query).
        url: String,
        /// Why (without the URL, whose query can hold a presigned URL's signature).
        #[source]
        source: reqwest::Error,
    },
    /// No response headers within the response timeout.
    #[error("requesting {url}: no response within {seconds} s")]
    Timeout {
        /// The URL (without query).
        url: String,
        /// The timeout.
        seconds: u64,
    },
    /// The credential provider failed.
    #[error(transparent)]
    Credentials(#[from] ProviderError),
    /// A redirect could not be followed.
    #[error("following a redirect from {url}: {reason}")]
    Redirect {
        /// Where the redirect came from (without query).
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// A redirect led off the upstream's origin to where the facade does not go (see
    /// [`super::RedirectRules`]); nothing was sent there.
    #[error("refusing a redirect to {url}: {reason}")]
    RedirectRefused {
        /// Where the redirect led (without query).
        url: String,
        /// Why (the address refused, or why the host did not resolve).
        reason: String,
    },
    /// The token endpoint failed or answered nonsense.
    #[error("getting a token for {host} from {realm}: {reason}")]
    Token {
        /// The upstream.
        host: Registry,
        /// The token endpoint (without query).
        realm: String,
        /// Why.
        reason: String,
    },
    /// A `206` that is not the range asked for (another slice, a length that does not match
    /// it, or no total): passing it on would hand the device bytes it did not ask for.
    #[error(
        "{registry} answered Content-Range {answered:?} ({length} bytes) to Range {asked:?} for {digest}"
    )]
    WrongRange {
        /// The upstream.
        registry: Registry,
        /// The blob.
        digest: Digest,
        /// The device's `Range`.
        asked: String,
        /// The upstream's `Content-Range`.
        answered: String,
        /// The upstream's `Content-Length`.
        length: u64,
    },
    /// A body was larger than allowed.
    #[error("reading {url}: the body is over {limit} bytes")]
    TooLarge {
        /// The URL (without query).
        url: String,
        /// The limit.
        limit: usize,
    },
}

// === impl UpstreamError ===

impl UpstreamError {
    /// A failed request to `url`. reqwest's error names the whole URL in its message, query
    /// included, where blob storage keeps a presigned URL's signature (`X-Amz-Signature`):
    /// the URL is kept here without its query, and dropped from the source.
    pub(crate) fn request(url: &Url, source: reqwest::Error) -> Self {
        UpstreamError::Request {
            url: redacted(url),
            source: source.without_url(),
        }
    }
}
