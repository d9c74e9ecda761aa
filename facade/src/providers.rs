//! Credential providers: how the facade gets the credentials it presents to an upstream.
//!
//! Each provider is a [`CredentialProvider`] that answers "what do I present now?" with
//! [`PresentedCredentials`], caching and refreshing its own short-lived token where it has
//! one; the registry client ([`crate::registry_client`]) never knows which kind it talks to.
//! Here: [`Anonymous`] and [`StaticCredentials`] (username and token). The cloud ones are
//! [`crate::cloud::CloudCredentials`]: a Google service account exchanges its key for an
//! OAuth2 access token (user `oauth2accesstoken`), an AWS role becomes an ECR authorization
//! token (user `AWS`, sent as Basic right away).

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use zeroize::Zeroizing;

/// A secret string (a token, a password). Its `Debug` and `Display` never show it; clones
/// share one copy, wiped from memory when the last one is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<Zeroizing<String>>);

/// What the facade presents to an upstream: a user name and a secret, used for HTTP Basic
/// and for the Basic-authenticated token request of the bearer flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedCredentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: Secret,
    /// Send Basic on the first request instead of waiting for a challenge (ECR wants this).
    pub preemptive_basic: bool,
}

/// Why a provider could not produce credentials (a token endpoint down, a refused role).
#[derive(Debug, thiserror::Error)]
#[error("{provider} credentials for {host}: {reason}")]
pub struct ProviderError {
    /// The provider kind (`google`, `aws`, ...).
    pub provider: &'static str,
    /// The upstream host.
    pub host: String,
    /// Why (never an upstream's response text).
    pub reason: String,
    /// When to try again, if the provider knows (a refresh that failed moments ago).
    pub retry_after: Option<std::time::Duration>,
}

/// A source of upstream credentials. Implementations cache what they fetch and refresh it
/// shortly before it expires, one refresh at a time.
pub trait CredentialProvider: Send + Sync + fmt::Debug {
    /// The credentials to present now; `None` for anonymous access.
    fn credentials(&self) -> BoxFuture<'_, Result<Option<PresentedCredentials>, ProviderError>>;

    /// The upstream answered 401 to `presented` (or its token endpoint refused them): a
    /// provider with a short-lived token drops it, so the next request gets a new one. Fixed
    /// credentials have nothing to drop.
    fn rejected<'a>(&'a self, presented: &'a PresentedCredentials) -> BoxFuture<'a, ()> {
        let _ = presented;
        Box::pin(async {})
    }
}

/// No credentials: a public registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anonymous;

/// A fixed username and token (GHCR, Quay, Harbor, Docker Hub, any standard registry).
#[derive(Debug, Clone)]
pub struct StaticCredentials(PresentedCredentials);

// === impl Secret ===

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: String) -> Self {
        Secret(Arc::new(Zeroizing::new(secret)))
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

// === impl Credentials ===

impl PresentedCredentials {
    /// Basic credentials, sent when the upstream asks for them.
    pub fn basic(username: String, password: Secret) -> Self {
        PresentedCredentials {
            username,
            password,
            preemptive_basic: false,
        }
    }
}

// === impl Anonymous ===

impl CredentialProvider for Anonymous {
    fn credentials(&self) -> BoxFuture<'_, Result<Option<PresentedCredentials>, ProviderError>> {
        Box::pin(async { Ok(None) })
    }
}

// === impl StaticCredentials ===

impl StaticCredentials {
    /// Always presents `credentials`.
    pub fn new(credentials: PresentedCredentials) -> Self {
        StaticCredentials(credentials)
    }
}

impl CredentialProvider for StaticCredentials {
    fn credentials(&self) -> BoxFuture<'_, Result<Option<PresentedCredentials>, ProviderError>> {
        let credentials = self.0.clone();
        Box::pin(async move { Ok(Some(credentials)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let credentials = PresentedCredentials::basic("bot".into(), Secret::new("hunter2".into()));
        let shown = format!("{credentials:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("bot"), "{shown}");
    }
}
