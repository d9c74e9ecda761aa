//! Cloud credentials as the registry client sees them: a [`CredentialProvider`] that answers
//! with the connection's cached short-lived token, refreshing it through the provider when
//! stale, and dropping it when the registry refuses it.

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::CloudError;
use super::ecr::EcrProvider;
use super::gcp::ServiceAccountKey;
use super::token_cache::{CloudTokenCache, TokenKey};
use crate::providers::{CredentialProvider, PresentedCredentials, ProviderError, Secret};

/// Where a connection's short-lived tokens come from.
#[derive(Debug, Clone)]
pub enum CloudSource {
    /// A Google service-account key.
    Gcp(Arc<ServiceAccountKey>),
    /// An AWS role for ECR.
    Ecr(Arc<EcrProvider>),
}

/// The credential provider of one cloud connection.
#[derive(Clone)]
pub struct CloudCredentials {
    key: TokenKey,
    source: CloudSource,
    client: reqwest::Client,
    cache: Arc<CloudTokenCache>,
}

// === impl CloudCredentials ===

impl CloudCredentials {
    /// Tokens for the connection `key` from `source`, fetched with `client`, cached in
    /// `cache` (one cache for the whole facade, keyed by connection).
    pub fn new(
        key: TokenKey,
        source: CloudSource,
        client: reqwest::Client,
        cache: Arc<CloudTokenCache>,
    ) -> Self {
        CloudCredentials {
            key,
            source,
            client,
            cache,
        }
    }

    fn kind(&self) -> &'static str {
        match self.source {
            CloudSource::Gcp(_) => "gcp",
            CloudSource::Ecr(_) => "ecr",
        }
    }
}

impl CredentialProvider for CloudCredentials {
    fn credentials(&self) -> BoxFuture<'_, Result<Option<PresentedCredentials>, ProviderError>> {
        Box::pin(async move {
            let mut token = self
                .cache
                .get(&self.key, |now| async move {
                    match &self.source {
                        CloudSource::Gcp(key) => key.fetch(&self.client, now).await,
                        CloudSource::Ecr(role) => role.fetch(&self.client, now).await,
                    }
                })
                .await
                .map_err(|error| {
                    tracing::warn!(host = %self.key.host, provider = self.kind(), %error, "token refresh failed");
                    ProviderError {
                        provider: self.kind(),
                        host: self.key.host.clone(),
                        reason: error.to_string(),
                        retry_after: match error {
                            CloudError::RecentlyFailed { retry_after, .. } => Some(retry_after),
                            _ => None,
                        },
                    }
                })?;
            Ok(Some(PresentedCredentials {
                username: std::mem::take(&mut token.username),
                password: Secret::new(std::mem::take(&mut token.password)),
                // ECR wants Basic at once; Google's registries answer the challenge flow.
                preemptive_basic: matches!(self.source, CloudSource::Ecr(_)),
            }))
        })
    }

    fn rejected<'a>(&'a self, presented: &'a PresentedCredentials) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            tracing::info!(host = %self.key.host, provider = self.kind(), "the registry refused the token: it is dropped");
            self.cache
                .reject(&self.key, presented.password.expose())
                .await;
        })
    }
}

impl fmt::Debug for CloudCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudCredentials")
            .field("host", &self.key.host)
            .field("connection", &self.key.connection)
            .field("provider", &self.kind())
            .finish_non_exhaustive()
    }
}
