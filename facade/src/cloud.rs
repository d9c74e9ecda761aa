//! Cloud credential providers: exchange a stored configuration for a short-lived registry
//! credential, and cache it per connection until shortly before it expires.
//!
//! - [`gcp`]: a Google service-account key signs an RS256 JWT (RFC 7523) that the key's token
//!   endpoint exchanges for an OAuth2 access token; the registry takes it as Basic
//!   `oauth2accesstoken:<token>`.
//! - [`ecr`]: AWS STS `AssumeRole` (optionally with an external id), then ECR
//!   `GetAuthorizationToken` with the session credentials, both SigV4-signed; the token is
//!   base64 `AWS:<password>`, sent as Basic.
//! - [`token_cache`]: the per-connection cache with a refresh margin and single-flight
//!   refresh; a token the registry refuses (401) is dropped, and a removed connection's.
//!
//! The long-lived secret never leaves the facade: devices only ever see the facade. Token
//! requests follow no redirect (a signed assertion or request is for its endpoint only) and
//! an answer is read up to [`MAX_TOKEN_ANSWER`] bytes.

mod credentials;
pub mod ecr;
pub mod gcp;
pub mod token_cache;

pub use credentials::{CloudCredentials, CloudSource};

use std::fmt;
use std::time::{Duration, SystemTime};

use zeroize::Zeroize as _;

use crate::registry_client::{UpstreamError, read_capped};

/// The largest token endpoint answer read (STS's XML, ECR's and Google's JSON are a few KiB).
pub const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// A short-lived registry credential, sent upstream as HTTP Basic.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryToken {
    /// The Basic username (`oauth2accesstoken`, `AWS`).
    pub username: String,
    /// The Basic password: the short-lived token.
    pub password: String,
    /// When it stops being valid.
    pub expires_at: SystemTime,
    /// How long it was valid for when issued.
    pub lifetime: Duration,
}

/// The token is wiped from memory when dropped.
impl Drop for RegistryToken {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

impl fmt::Debug for RegistryToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryToken")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a provider could not produce a credential. Upstream response bodies are never
/// included (they may echo secrets); the status and the endpoint are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloudError {
    /// The stored key or role configuration is unusable.
    #[error("the {provider} configuration is invalid: {reason}")]
    Config {
        /// `gcp` or `ecr`.
        provider: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The request could not be sent or its answer not read.
    #[error("requesting a token from {endpoint}: {reason}")]
    Request {
        /// The endpoint URL.
        endpoint: String,
        /// Why (transport-level).
        reason: String,
    },
    /// The endpoint refused.
    #[error("{endpoint} refused the token request with HTTP {status}")]
    Refused {
        /// The endpoint URL.
        endpoint: String,
        /// The HTTP status.
        status: u16,
    },
    /// A refresh failed moments ago; the next attempt waits out a short back-off.
    #[error("the token refresh for {host} failed moments ago; retry after {retry_after:?}")]
    RecentlyFailed {
        /// The registry host.
        host: String,
        /// How long until the next attempt.
        retry_after: Duration,
    },
    /// The endpoint answered a redirect: token requests never follow one (the request
    /// carries a signed assertion or a signature, for this endpoint only).
    #[error(
        "{endpoint} answered a redirect (HTTP {status}); token requests do not follow redirects"
    )]
    Redirected {
        /// The endpoint URL.
        endpoint: String,
        /// The HTTP status.
        status: u16,
    },
    /// The endpoint's answer is larger than any token answer.
    #[error("{endpoint} answered more than {limit} bytes; a token answer is smaller")]
    TooLarge {
        /// The endpoint URL.
        endpoint: String,
        /// The limit.
        limit: usize,
    },
    /// The endpoint answered something we cannot read.
    #[error("{endpoint} answered an unreadable token response: {reason}")]
    Response {
        /// The endpoint URL.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
}

/// The body of a token endpoint's successful answer, up to [`MAX_TOKEN_ANSWER`] bytes; a
/// redirect or another status is refused without reading the body.
pub(crate) async fn read_token_answer(
    response: reqwest::Response,
    endpoint: &str,
) -> Result<Vec<u8>, CloudError> {
    let status = response.status();
    if status.is_redirection() {
        return Err(CloudError::Redirected {
            endpoint: endpoint.to_owned(),
            status: status.as_u16(),
        });
    }
    if !status.is_success() {
        return Err(CloudError::Refused {
            endpoint: endpoint.to_owned(),
            status: status.as_u16(),
        });
    }
    read_capped(response, MAX_TOKEN_ANSWER)
        .await
        .map_err(|error| match error {
            UpstreamError::TooLarge { limit, .. } => CloudError::TooLarge {
                endpoint: endpoint.to_owned(),
                limit,
            },
            other => CloudError::Request {
                endpoint: endpoint.to_owned(),
                reason: other.to_string(),
            },
        })
}

#[cfg(test)]
mod tests;
