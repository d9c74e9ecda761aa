//! Authentication to an upstream: what to send before any challenge, how to answer a
//! `Basic` or `Bearer` challenge, and the token request of the Docker token flow.

use std::sync::atomic::Ordering;
use std::time::Instant;

use base64::Engine as _;
use http::{HeaderValue, StatusCode};
use reqwest::Url;

use super::{
    BearerToken, Challenge, TokenResponse, Upstream, UpstreamError, read_capped, redacted,
};
use crate::providers::{PresentedCredentials, Secret};

/// The largest token endpoint response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// An `Authorization` header's content.
#[derive(Debug, Clone)]
pub(super) enum Authorization {
    Basic(PresentedCredentials),
    Bearer(Secret),
}

// === impl Authorization ===

impl Authorization {
    pub(super) fn header_value(&self) -> HeaderValue {
        let text = match self {
            Authorization::Basic(credentials) => {
                let pair = format!("{}:{}", credentials.username, credentials.password.expose());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            Authorization::Bearer(token) => format!("Bearer {}", token.expose()),
        };
        // Token endpoints and operators can hand us anything; a value that is not a valid
        // header is sent as nothing rather than panicking.
        let mut value =
            HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        value
    }
}

// === impl Upstream ===

impl Upstream {
    /// What to send before any challenge: a cached token, or Basic for hosts known to want it.
    pub(super) async fn first_authorization(
        &self,
        scope: &str,
        credentials: Option<&PresentedCredentials>,
    ) -> Option<Authorization> {
        if let Some(token) = self.tokens.cached(scope).await {
            return Some(Authorization::Bearer(token));
        }
        let credentials = credentials?;
        if credentials.preemptive_basic || self.wants_basic.load(Ordering::Relaxed) {
            return Some(Authorization::Basic(credentials.clone()));
        }
        None
    }

    /// The authorization that answers `challenge`, or `None` when there is nothing to answer
    /// with (Basic asked, no credentials).
    pub(super) async fn answer(
        &self,
        challenge: &Challenge,
        scope: &str,
        credentials: Option<&PresentedCredentials>,
        rejected: Option<&Authorization>,
    ) -> Result<Option<Authorization>, UpstreamError> {
        match challenge {
            Challenge::Basic => {
                let Some(credentials) = credentials else {
                    return Ok(None);
                };
                if matches!(rejected, Some(Authorization::Basic(_))) {
                    return Ok(None);
                }
                self.wants_basic.store(true, Ordering::Relaxed);
                Ok(Some(Authorization::Basic(credentials.clone())))
            }
            Challenge::Bearer {
                realm,
                service,
                scope: asked,
            } => {
                let rejected = match rejected {
                    Some(Authorization::Bearer(token)) => Some(token),
                    _ => None,
                };
                let token_scope = asked.as_deref().unwrap_or(scope);
                let token = self
                    .tokens
                    .get_or_fetch(scope, rejected, || {
                        self.fetch_token(realm, service.as_deref(), token_scope, credentials)
                    })
                    .await?;
                Ok(Some(Authorization::Bearer(token)))
            }
        }
    }

    /// Tells the credential provider that the upstream's own origin answered 401 to the
    /// Basic credentials it supplied (a cloud provider then drops its short-lived token).
    pub(super) async fn refused(&self, response: &reqwest::Response, sent: Option<&Authorization>) {
        if response.status() == StatusCode::UNAUTHORIZED
            && self.is_own(response.url())
            && let Some(Authorization::Basic(presented)) = sent
        {
            self.credentials.rejected(presented).await;
        }
    }

    /// Asks the token endpoint for a token (Docker token spec), with Basic credentials when
    /// there are any.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credentials: Option<&PresentedCredentials>,
    ) -> Result<BearerToken, UpstreamError> {
        let token_err = |reason: String| UpstreamError::Token {
            host: self.registry.clone(),
            realm: redacted_str(realm),
            reason,
        };
        let mut url = Url::parse(realm).map_err(|e| token_err(format!("bad realm: {e}")))?;
        match url.scheme() {
            "https" => {}
            // Credentials go to the realm: plain HTTP only where the upstream itself is.
            "http" if self.plain_http => {}
            _ => return Err(token_err("the realm is not an https URL".into())),
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut builder = self.client.get(url.clone());
        if let Some(credentials) = credentials {
            builder =
                builder.basic_auth(&credentials.username, Some(credentials.password.expose()));
        }
        let response = self.timed(&url, builder.send()).await?;
        let status = response.status();
        if let (StatusCode::UNAUTHORIZED, Some(presented)) = (status, credentials) {
            self.credentials.rejected(presented).await;
        }
        if !status.is_success() {
            return Err(token_err(format!("answered {status}")));
        }
        let received = Instant::now();
        let body = read_capped(response, MAX_TOKEN_RESPONSE).await?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| token_err(format!("bad JSON: {e}")))?;
        parsed
            .into_token(received)
            .ok_or_else(|| token_err("the response holds no token".into()))
    }
}

fn redacted_str(url: &str) -> String {
    Url::parse(url)
        .map(|u| redacted(&u))
        .unwrap_or_else(|_| "(unparsable URL)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_bearer_headers_are_sensitive_and_well_formed() {
        let basic = Authorization::Basic(PresentedCredentials::basic(
            "bot".into(),
            Secret::new("s3cret".into()),
        ))
        .header_value();
        assert_eq!(basic, "Basic Ym90OnMzY3JldA==");
        assert!(basic.is_sensitive());
        let bearer = Authorization::Bearer(Secret::new("abc.def".into())).header_value();
        assert_eq!(bearer, "Bearer abc.def");
    }

    #[test]
    fn realms_in_errors_lose_their_query() {
        assert_eq!(
            redacted_str("https://auth.example/token?account=x&secret=y"),
            "https://auth.example/token"
        );
    }
}
