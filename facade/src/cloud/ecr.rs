//! AWS ECR: assume the operator's role with STS, then ask ECR for an authorization token.
//!
//! Both calls are SigV4-signed with the `aws-sigv4` crate: `AssumeRole` (STS query API,
//! form-encoded POST; `RoleArn`, `RoleSessionName`, `ExternalId` when the connection has one)
//! with the facade's base credentials, read the way the AWS SDKs read them
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`); then
//! `GetAuthorizationToken` (ECR JSON 1.1 API) with the session credentials. The token is
//! base64 of `AWS:<password>` and is sent to the registry as Basic, until its `expiresAt`
//! (12 hours).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials as SdkCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::{Zeroize as _, Zeroizing};

use super::gcp::form_encode;
use super::{CloudError, RegistryToken, read_token_answer};

/// The session name the facade's assumed-role sessions carry (visible in CloudTrail).
pub const SESSION_NAME: &str = "meshanics-facade";
/// The `X-Amz-Target` of ECR's `GetAuthorizationToken`.
pub const GET_AUTHORIZATION_TOKEN: &str =
    "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
const STS_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
const ECR_CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// An AWS role the facade assumes for an ECR registry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcrRole {
    /// The role's ARN.
    pub role_arn: String,
    /// The external id the role's trust policy requires, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The AWS region of the registry.
    pub region: String,
}

/// The external id is wiped from memory when the role is dropped.
impl Drop for EcrRole {
    fn drop(&mut self) {
        self.external_id.zeroize();
    }
}

impl fmt::Debug for EcrRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcrRole")
            .field("role_arn", &self.role_arn)
            .field(
                "external_id",
                &self.external_id.as_ref().map(|_| "<sealed>"),
            )
            .field("region", &self.region)
            .finish()
    }
}

/// AWS credentials: the facade's base ones, or an assumed role's session.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token, for temporary credentials.
    pub session_token: Option<String>,
    /// When temporary credentials expire.
    pub expires_at: Option<SystemTime>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl AwsCredentials {
    /// Reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` through
    /// `var` (the caller passes `std::env::var` once at start-up, or a config's values).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        Some(AwsCredentials {
            access_key_id: var("AWS_ACCESS_KEY_ID").filter(|v| !v.is_empty())?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY").filter(|v| !v.is_empty())?,
            session_token: var("AWS_SESSION_TOKEN").filter(|v| !v.is_empty()),
            expires_at: None,
        })
    }
}

/// Where the STS and ECR APIs are (configurable so tests can run local servers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The STS endpoint URL.
    pub sts: String,
    /// The ECR API endpoint URL.
    pub ecr: String,
}

impl Endpoints {
    /// AWS's regional endpoints for `region`.
    pub fn for_region(region: &str) -> Self {
        Endpoints {
            sts: format!("https://sts.{region}.amazonaws.com/"),
            ecr: format!("https://api.ecr.{region}.amazonaws.com/"),
        }
    }
}

/// Exchanges an ECR role for registry tokens.
#[derive(Debug, Clone)]
pub struct EcrProvider {
    role: EcrRole,
    base: AwsCredentials,
    endpoints: Endpoints,
}

// === impl EcrProvider ===

impl EcrProvider {
    /// A provider for `role`, assuming it with `base` credentials at `endpoints`.
    pub fn new(role: EcrRole, base: AwsCredentials, endpoints: Endpoints) -> Self {
        EcrProvider {
            role,
            base,
            endpoints,
        }
    }

    /// Assumes the role, then fetches an ECR authorization token.
    pub async fn fetch(
        &self,
        client: &reqwest::Client,
        now: SystemTime,
    ) -> Result<RegistryToken, CloudError> {
        let session = self.assume_role(client, now).await?;
        self.authorization_token(client, &session, now).await
    }

    /// STS `AssumeRole`.
    pub async fn assume_role(
        &self,
        client: &reqwest::Client,
        now: SystemTime,
    ) -> Result<AwsCredentials, CloudError> {
        let mut body = format!(
            "Action=AssumeRole&Version=2011-06-15&RoleArn={}&RoleSessionName={}&DurationSeconds=3600",
            form_encode(&self.role.role_arn),
            SESSION_NAME
        );
        if let Some(external_id) = &self.role.external_id {
            body.push_str(&format!("&ExternalId={}", form_encode(external_id)));
        }
        let endpoint = &self.endpoints.sts;
        let response = signed_post(
            client,
            endpoint,
            "sts",
            &self.role.region,
            &self.base,
            &[("content-type", STS_CONTENT_TYPE)],
            body.into_bytes(),
            now,
        )?
        .send()
        .await
        .map_err(|e| request_err(endpoint, &e))?;
        let body = read_token_answer(response, endpoint).await?;
        parse_assume_role_response(&body, endpoint)
    }

    /// ECR `GetAuthorizationToken` with session credentials.
    pub async fn authorization_token(
        &self,
        client: &reqwest::Client,
        session: &AwsCredentials,
        now: SystemTime,
    ) -> Result<RegistryToken, CloudError> {
        let endpoint = &self.endpoints.ecr;
        let response = signed_post(
            client,
            endpoint,
            "ecr",
            &self.role.region,
            session,
            &[
                ("content-type", ECR_CONTENT_TYPE),
                ("x-amz-target", GET_AUTHORIZATION_TOKEN),
            ],
            b"{}".to_vec(),
            now,
        )?
        .send()
        .await
        .map_err(|e| request_err(endpoint, &e))?;
        let body = read_token_answer(response, endpoint).await?;
        parse_authorization_response(&body, endpoint, now)
    }
}

/// A POST request to `url`, SigV4-signed for `service` in `region` at time `now`.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site per API; a struct would only rename them"
)]
fn signed_post(
    client: &reqwest::Client,
    url: &str,
    service: &str,
    region: &str,
    credentials: &AwsCredentials,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    now: SystemTime,
) -> Result<reqwest::RequestBuilder, CloudError> {
    let config = |reason: String| CloudError::Config {
        provider: "ecr",
        reason,
    };
    let identity = SdkCredentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        None,
        "meshanics",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| config(format!("SigV4 parameters: {e}")))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.iter().copied(),
        SignableBody::Bytes(&body),
    )
    .map_err(|e| config(format!("SigV4 request for {url}: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| config(format!("SigV4 signing for {url}: {e}")))?
        .into_parts();
    let mut request = client.post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    for (name, value) in instructions.headers() {
        request = request.header(name, value);
    }
    Ok(request)
}

fn request_err(endpoint: &str, e: &reqwest::Error) -> CloudError {
    CloudError::Request {
        endpoint: endpoint.to_owned(),
        reason: e.to_string(),
    }
}

/// Reads STS's `AssumeRoleResponse` XML: the session's `AccessKeyId`, `SecretAccessKey`,
/// `SessionToken` and `Expiration`.
pub fn parse_assume_role_response(
    body: &[u8],
    endpoint: &str,
) -> Result<AwsCredentials, CloudError> {
    let unreadable = |reason: &str| CloudError::Response {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let text = std::str::from_utf8(body).map_err(|_| unreadable("not UTF-8"))?;
    let credentials =
        xml_element(text, "Credentials").ok_or_else(|| unreadable("no <Credentials>"))?;
    let field = |name: &str| {
        xml_element(credentials, name)
            .map(|v| xml_unescape(v.trim()))
            .filter(|v| !v.is_empty())
            .ok_or_else(|| unreadable(&format!("no <{name}> in <Credentials>")))
    };
    let expiration = field("Expiration")?;
    Ok(AwsCredentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: Some(field("SessionToken")?),
        expires_at: Some(parse_iso8601(&expiration).ok_or_else(|| unreadable("bad <Expiration>"))?),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationResponse {
    authorization_data: Vec<AuthorizationData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationData {
    authorization_token: String,
    expires_at: f64,
}

/// Reads ECR's `GetAuthorizationToken` JSON: base64 `AWS:<password>` and `expiresAt` (epoch
/// seconds).
pub fn parse_authorization_response(
    body: &[u8],
    endpoint: &str,
    now: SystemTime,
) -> Result<RegistryToken, CloudError> {
    let unreadable = |reason: &str| CloudError::Response {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let response: AuthorizationResponse =
        serde_json::from_slice(body).map_err(|e| unreadable(&e.to_string()))?;
    let data = response
        .authorization_data
        .into_iter()
        .next()
        .ok_or_else(|| unreadable("empty authorizationData"))?;
    let decoded = STANDARD
        .decode(data.authorization_token.trim())
        .map_err(|_| unreadable("authorizationToken is not base64"))?;
    let decoded = Zeroizing::new(
        String::from_utf8(decoded).map_err(|_| unreadable("authorizationToken is not text"))?,
    );
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| unreadable("authorizationToken is not user:password"))?;
    // Negative, NaN, infinite, or past what a SystemTime holds: unreadable, never a panic.
    let expires_at = Duration::try_from_secs_f64(data.expires_at)
        .ok()
        .and_then(|since_epoch| UNIX_EPOCH.checked_add(since_epoch))
        .ok_or_else(|| unreadable("bad expiresAt"))?;
    Ok(RegistryToken {
        username: username.to_owned(),
        password: password.to_owned(),
        expires_at,
        lifetime: expires_at.duration_since(now).unwrap_or_default(),
    })
}

/// The text inside the first `<name>...</name>`.
fn xml_element<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let end = start + text.get(start..)?.find(&close)?;
    text.get(start..end)
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` as STS writes it: an RFC 3339 time in UTC (`Z`, no other
/// offset), to the whole second. `None` for anything else, and for times before 1970.
pub fn parse_iso8601(text: &str) -> Option<SystemTime> {
    if !text.ends_with('Z') {
        return None;
    }
    let time = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let seconds = u64::try_from(time.unix_timestamp()).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: &str = "https://api.ecr.example/";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn reads_session_credentials_from_assume_role_xml() {
        let xml = br#"<AssumeRoleResponse><AssumeRoleResult><Credentials>
            <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
            <SecretAccessKey>s3cr&amp;t</SecretAccessKey>
            <SessionToken>token</SessionToken>
            <Expiration>2023-11-14T22:13:20Z</Expiration>
        </Credentials></AssumeRoleResult></AssumeRoleResponse>"#;
        let session = parse_assume_role_response(xml, ENDPOINT).unwrap();
        assert_eq!(session.access_key_id, "ASIAEXAMPLE");
        assert_eq!(session.secret_access_key, "s3cr&t");
        assert_eq!(session.session_token.as_deref(), Some("token"));
        assert_eq!(session.expires_at, Some(at(1_700_000_000)));
        assert!(parse_assume_role_response(b"<Credentials></Credentials>", ENDPOINT).is_err());
    }

    #[test]
    fn reads_the_authorization_token_and_its_expiry() {
        let body = br#"{"authorizationData":[{"authorizationToken":"QVdTOnBhc3M=","expiresAt":1700003600.5}]}"#;
        let token = parse_authorization_response(body, ENDPOINT, at(1_700_000_000)).unwrap();
        assert_eq!(
            (token.username.as_str(), token.password.as_str()),
            ("AWS", "pass")
        );
        assert_eq!(
            token.expires_at,
            at(1_700_003_600) + Duration::from_millis(500)
        );
        assert_eq!(token.lifetime, Duration::from_millis(3_600_500));
    }

    #[test]
    fn refuses_an_expires_at_past_the_end_of_time_instead_of_panicking() {
        for expires_at in ["1e300", "-1", "18446744073709551616"] {
            let body = format!(
                r#"{{"authorizationData":[{{"authorizationToken":"QVdTOnBhc3M=","expiresAt":{expires_at}}}]}}"#
            );
            let err = parse_authorization_response(body.as_bytes(), ENDPOINT, at(0)).unwrap_err();
            assert!(
                err.to_string().contains("bad expiresAt"),
                "{expires_at}: {err}"
            );
        }
    }

    #[test]
    fn reads_sts_timestamps_and_refuses_out_of_range_ones_instead_of_overflowing() {
        assert_eq!(
            parse_iso8601("2023-11-14T22:13:20Z"),
            Some(at(1_700_000_000))
        );
        assert_eq!(
            parse_iso8601("2023-11-14T22:13:20.999Z"),
            Some(at(1_700_000_000))
        );
        assert_eq!(parse_iso8601("1970-01-01T00:00:00Z"), Some(at(0)));
        for bad in [
            "9223372036854775807-01-01T00:00:00Z",
            "-9223372036854775807-01-01T00:00:00Z",
            "10000-01-01T00:00:00Z",
            "2023-11-14T-1:13:20Z",
            "2023-11-14T22:13:20",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }

    #[test]
    fn refuses_sts_timestamps_off_the_calendar_or_outside_utc() {
        for bad in [
            "2023-02-30T00:00:00Z",
            "2023-11-31T00:00:00Z",
            "2023-11-14T22:13:20+00:00",
            "2023-11-14T22:13:20z",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }
}
