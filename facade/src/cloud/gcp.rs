//! Google service accounts: the JWT bearer grant (RFC 7523) for Artifact Registry / GCR.
//!
//! The assertion is an RS256 JWT signed with the key's private key: `iss` = the service
//! account's email, `scope` = cloud-platform, `aud` = the key's `token_uri`, `iat` = now,
//! `exp` = now + 1 h (the most Google accepts). It is posted as
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>`; the answer's
//! `access_token` goes to the registry as Basic `oauth2accesstoken:<access_token>`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;
use zeroize::Zeroize as _;

use super::{CloudError, RegistryToken, read_token_answer};

/// The OAuth2 scope the assertion asks for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The grant type of RFC 7523.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The Basic username registries expect with a Google access token.
pub const REGISTRY_USERNAME: &str = "oauth2accesstoken";
/// The lifetime asked for in the assertion.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// A parsed service-account key.
pub struct ServiceAccountKey {
    client_email: String,
    private_key_id: Option<String>,
    token_uri: String,
    key: RsaKeyPair,
}

/// A key file as parsed; its private key is wiped from memory when dropped.
#[derive(Deserialize)]
struct RawKey {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    token_uri: String,
}

impl Drop for RawKey {
    fn drop(&mut self) {
        self.private_key.zeroize();
    }
}

/// Google's OAuth2 token endpoint answer.
#[derive(Deserialize)]
struct AccessTokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

// === impl ServiceAccountKey ===

impl ServiceAccountKey {
    /// Parses a service-account key file's JSON; the private key must be an RSA PKCS#8 PEM.
    pub fn parse(json: &str) -> Result<Self, CloudError> {
        let config = |reason: String| CloudError::Config {
            provider: "gcp",
            reason,
        };
        let mut raw: RawKey = serde_json::from_str(json)
            .map_err(|e| config(format!("not a service-account key file: {e}")))?;
        if raw.kind.as_deref().is_some_and(|k| k != "service_account") {
            return Err(config("the key file's type is not service_account".into()));
        }
        if !raw.token_uri.starts_with("https://") && !raw.token_uri.starts_with("http://") {
            return Err(config("token_uri is not an http(s) URL".into()));
        }
        let mut der = PrivateKeyDer::from_pem_slice(raw.private_key.as_bytes())
            .map_err(|e| config(format!("private_key is not a PEM private key: {e}")))?;
        let key = match &der {
            PrivateKeyDer::Pkcs8(pkcs8) => RsaKeyPair::from_pkcs8(pkcs8.secret_pkcs8_der())
                .map_err(|e| config(format!("private_key is not a usable RSA key: {e}"))),
            _ => Err(config(
                "private_key must be PKCS#8 (BEGIN PRIVATE KEY)".into(),
            )),
        };
        // The DER copy is wiped at once; ring keeps its own form of the key.
        der.zeroize();
        let key = key?;
        Ok(ServiceAccountKey {
            client_email: std::mem::take(&mut raw.client_email),
            private_key_id: raw.private_key_id.take(),
            token_uri: std::mem::take(&mut raw.token_uri),
            key,
        })
    }

    /// The service account's email.
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// The token endpoint.
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// The signed assertion for `now`.
    pub fn assertion(&self, now: SystemTime) -> Result<String, CloudError> {
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let (Some(kid), Some(obj)) = (&self.private_key_id, header.as_object_mut()) {
            obj.insert("kid".into(), kid.clone().into());
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| CloudError::Config {
                provider: "gcp",
                reason: "signing the assertion failed".into(),
            })?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// The form body of the token request for `now`.
    pub fn token_request_body(&self, now: SystemTime) -> Result<String, CloudError> {
        Ok(format!(
            "grant_type={}&assertion={}",
            form_encode(GRANT_TYPE),
            self.assertion(now)?
        ))
    }

    /// Exchanges the key for a registry credential at its token endpoint.
    pub async fn fetch(
        &self,
        client: &reqwest::Client,
        now: SystemTime,
    ) -> Result<RegistryToken, CloudError> {
        let endpoint = self.token_uri.clone();
        let request_err = |e: reqwest::Error| CloudError::Request {
            endpoint: endpoint.clone(),
            reason: e.without_url().to_string(),
        };
        let response = client
            .post(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(self.token_request_body(now)?)
            .send()
            .await
            .map_err(request_err)?;
        let body = read_token_answer(response, &endpoint).await?;
        parse_token_response(&body, &endpoint, now)
    }
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// Reads a token endpoint's JSON answer (`access_token`, `expires_in` in seconds, 3600 when
/// absent, as Google documents).
pub fn parse_token_response(
    body: &[u8],
    endpoint: &str,
    now: SystemTime,
) -> Result<RegistryToken, CloudError> {
    let response: AccessTokenResponse =
        serde_json::from_slice(body).map_err(|e| CloudError::Response {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?;
    if response.access_token.is_empty() {
        return Err(CloudError::Response {
            endpoint: endpoint.to_owned(),
            reason: "empty access_token".into(),
        });
    }
    let lifetime = Duration::from_secs(response.expires_in.unwrap_or(3600));
    // `expires_in` is the endpoint's number: one past the end of time is an unreadable answer,
    // not a reason to panic.
    let expires_at = now
        .checked_add(lifetime)
        .ok_or_else(|| CloudError::Response {
            endpoint: endpoint.to_owned(),
            reason: format!("expires_in {} is out of range", lifetime.as_secs()),
        })?;
    Ok(RegistryToken {
        username: REGISTRY_USERNAME.to_owned(),
        password: response.access_token,
        expires_at,
        lifetime,
    })
}

/// `application/x-www-form-urlencoded` for one value.
pub(crate) fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_access_token_with_its_lifetime() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = parse_token_response(
            br#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#,
            "https://oauth2.example/token",
            now,
        )
        .unwrap();
        assert_eq!(token.username, REGISTRY_USERNAME);
        assert_eq!(token.password, "ya29.x");
        assert_eq!(token.lifetime, Duration::from_secs(3599));
        assert_eq!(token.expires_at, now + Duration::from_secs(3599));
        let token = parse_token_response(br#"{"access_token":"a"}"#, "e", now).unwrap();
        assert_eq!(token.lifetime, Duration::from_secs(3600));
        assert!(parse_token_response(br#"{"access_token":""}"#, "e", now).is_err());
    }

    #[test]
    fn refuses_an_expires_in_past_the_end_of_time_instead_of_panicking() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let body = format!(r#"{{"access_token":"a","expires_in":{}}}"#, u64::MAX);
        let err =
            parse_token_response(body.as_bytes(), "https://oauth2.example/token", now).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}
