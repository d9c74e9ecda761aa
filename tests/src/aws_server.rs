//! AWS STS and ECR for tests: `AssumeRole` and `GetAuthorizationToken`, each checking a
//! SigV4 signature recomputed here, independently of the `aws-sigv4` crate the facade signs
//! with (canonical request, string to sign, HMAC key chain; see the AWS SigV4 reference).
//!
//! STS checks the base credentials, the role ARN and the external id, and issues session
//! credentials with a configurable lifetime. ECR checks a session's signature and token and
//! refuses an expired session with `ExpiredTokenException`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use sha2::{Digest as _, Sha256};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::http_server::{TestRequest, TestResponse, TestServer, form_pairs, respond};
use crate::{FixtureError, io_err};

/// What the test AWS account accepts.
#[derive(Debug, Clone)]
pub struct AwsAccount {
    /// The region both services are in.
    pub region: String,
    /// The facade's base access key id.
    pub access_key_id: String,
    /// The facade's base secret.
    pub secret_access_key: String,
    /// The role the facade may assume.
    pub role_arn: String,
    /// The external id the role's trust policy requires.
    pub external_id: Option<String>,
}

#[derive(Debug)]
struct Session {
    secret: String,
    token: String,
    expires: SystemTime,
}

#[derive(Debug)]
struct State {
    account: AwsAccount,
    sessions: Mutex<HashMap<String, Session>>,
    session_lifetime: Mutex<Duration>,
    token_lifetime: Mutex<Duration>,
    fixed_password: Mutex<Option<String>>,
    assume_calls: AtomicU64,
    token_calls: AtomicU64,
    refusals: Mutex<Vec<String>>,
}

/// The running STS + ECR endpoints.
#[derive(Debug)]
pub struct AwsServer {
    server: TestServer,
    state: Arc<State>,
}

impl AwsServer {
    /// Starts both services for `account`.
    pub async fn start(account: AwsAccount) -> Result<Self, FixtureError> {
        let state = Arc::new(State {
            account,
            sessions: Mutex::new(HashMap::new()),
            session_lifetime: Mutex::new(Duration::from_secs(3600)),
            token_lifetime: Mutex::new(Duration::from_secs(12 * 3600)),
            fixed_password: Mutex::new(None),
            assume_calls: AtomicU64::new(0),
            token_calls: AtomicU64::new(0),
            refusals: Mutex::new(Vec::new()),
        });
        let handler_state = state.clone();
        let server = TestServer::start(move |req| handle(&handler_state, &req))
            .await
            .map_err(io_err(
                "starting the AWS test server on",
                Path::new("127.0.0.1:0"),
            ))?;
        Ok(AwsServer { server, state })
    }

    /// The STS endpoint URL.
    pub fn sts_url(&self) -> String {
        format!("{}/sts/", self.server.base_url())
    }

    /// The ECR endpoint URL.
    pub fn ecr_url(&self) -> String {
        format!("{}/ecr/", self.server.base_url())
    }

    /// Sets the lifetime of sessions issued from now on (zero: already expired).
    pub fn set_session_lifetime(&self, lifetime: Duration) {
        if let Ok(mut l) = self.state.session_lifetime.lock() {
            *l = lifetime;
        }
    }

    /// Sets the lifetime of ECR tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        if let Ok(mut l) = self.state.token_lifetime.lock() {
            *l = lifetime;
        }
    }

    /// Issues ECR tokens with this password (so a registry's htpasswd can hold it).
    pub fn set_fixed_password(&self, password: Option<&str>) {
        if let Ok(mut fixed) = self.state.fixed_password.lock() {
            *fixed = password.map(str::to_owned);
        }
    }

    /// `AssumeRole` calls that arrived.
    pub fn assume_calls(&self) -> u64 {
        self.state.assume_calls.load(Ordering::SeqCst)
    }

    /// `GetAuthorizationToken` calls that arrived.
    pub fn token_calls(&self) -> u64 {
        self.state.token_calls.load(Ordering::SeqCst)
    }

    /// Why requests were refused, in order.
    pub fn refusals(&self) -> Vec<String> {
        self.state
            .refusals
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

fn handle(state: &State, req: &TestRequest) -> TestResponse {
    let result = match req.uri().path() {
        "/sts/" => {
            state.assume_calls.fetch_add(1, Ordering::SeqCst);
            assume_role(state, req)
        }
        "/ecr/" => {
            state.token_calls.fetch_add(1, Ordering::SeqCst);
            authorization_token(state, req)
        }
        _ => Err((404, "UnknownOperation".into())),
    };
    match result {
        Ok(response) => response,
        Err((status, why)) => {
            if let Ok(mut r) = state.refusals.lock() {
                r.push(why.clone());
            }
            respond(status, "text/plain", why)
        }
    }
}

type Refusal = (u16, String);

fn assume_role(state: &State, req: &TestRequest) -> Result<TestResponse, Refusal> {
    let account = &state.account;
    verify_sigv4(req, "sts", &account.region, |akid| {
        (akid == account.access_key_id).then(|| account.secret_access_key.clone())
    })?;
    let form = form_pairs(req.body());
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    if get("Action").as_deref() != Some("AssumeRole")
        || get("Version").as_deref() != Some("2011-06-15")
    {
        return Err((400, "InvalidAction".into()));
    }
    if get("RoleArn").as_deref() != Some(account.role_arn.as_str())
        || get("RoleSessionName").is_none()
    {
        return Err((403, "AccessDenied: wrong role".into()));
    }
    if get("ExternalId") != account.external_id {
        return Err((403, "AccessDenied: external id mismatch".into()));
    }
    let n = state.assume_calls.load(Ordering::SeqCst);
    let akid = format!("ASIATEST{n:012}");
    let secret = format!("session-secret-{n}-{}", random_hex());
    let token = format!("session-token-{n}-{}", random_hex());
    let lifetime = state
        .session_lifetime
        .lock()
        .map(|l| *l)
        .unwrap_or_default();
    let expires = SystemTime::now() + lifetime;
    let xml = format!(
        "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>\
         <Credentials><AccessKeyId>{akid}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
         <SessionToken>{token}</SessionToken><Expiration>{}</Expiration></Credentials>\
         <AssumedRoleUser><Arn>{}/meshanics-facade</Arn></AssumedRoleUser></AssumeRoleResult>\
         </AssumeRoleResponse>",
        iso8601(expires),
        account.role_arn
    );
    if let Ok(mut sessions) = state.sessions.lock() {
        sessions.insert(
            akid,
            Session {
                secret,
                token,
                expires,
            },
        );
    }
    Ok(respond(200, "text/xml", xml))
}

fn authorization_token(state: &State, req: &TestRequest) -> Result<TestResponse, Refusal> {
    let akid = verify_sigv4(req, "ecr", &state.account.region, |akid| {
        state
            .sessions
            .lock()
            .ok()?
            .get(akid)
            .map(|s| s.secret.clone())
    })?;
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if header("x-amz-target").as_deref()
        != Some("AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken")
    {
        return Err((400, "UnknownOperationException".into()));
    }
    let sessions = state
        .sessions
        .lock()
        .map_err(|_| (500, "poisoned".to_string()))?;
    let session = sessions
        .get(&akid)
        .ok_or((403, "UnrecognizedClientException".to_string()))?;
    if header("x-amz-security-token").as_deref() != Some(session.token.as_str()) {
        return Err((
            403,
            "UnrecognizedClientException: bad security token".into(),
        ));
    }
    if SystemTime::now() >= session.expires {
        return Err((
            403,
            "ExpiredTokenException: the security token included in the request is expired".into(),
        ));
    }
    let n = state.token_calls.load(Ordering::SeqCst);
    let lifetime = state.token_lifetime.lock().map(|l| *l).unwrap_or_default();
    let expires_at = (SystemTime::now() + lifetime)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let fixed = state.fixed_password.lock().ok().and_then(|p| p.clone());
    let password = fixed.unwrap_or_else(|| format!("ecr-password-{n}-{}", random_hex()));
    let token = STANDARD.encode(format!("AWS:{password}"));
    let body = serde_json::json!({"authorizationData": [{
        "authorizationToken": token,
        "expiresAt": expires_at,
        "proxyEndpoint": "https://123456789012.dkr.ecr.test.amazonaws.com",
    }]});
    Ok(respond(200, "application/x-amz-json-1.1", body.to_string()))
}

/// Recomputes the request's SigV4 signature; returns the access key id on success.
fn verify_sigv4(
    req: &TestRequest,
    service: &str,
    region: &str,
    secret_for: impl Fn(&str) -> Option<String>,
) -> Result<String, Refusal> {
    let deny = |why: &str| (403, format!("SignatureDoesNotMatch: {why}"));
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let authorization = header("authorization").ok_or_else(|| deny("no Authorization"))?;
    let rest = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| deny("not AWS4-HMAC-SHA256"))?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(deny("incomplete Authorization"));
    };
    let scope_parts: Vec<&str> = credential.split('/').collect();
    let [akid, date, scope_region, scope_service, "aws4_request"] = scope_parts.as_slice() else {
        return Err(deny("malformed credential scope"));
    };
    if *scope_region != region || *scope_service != service {
        return Err(deny("wrong region or service in scope"));
    }
    let amz_date = header("x-amz-date").ok_or_else(|| deny("no x-amz-date"))?;
    if !amz_date.starts_with(date) {
        return Err(deny("x-amz-date does not match the scope date"));
    }
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| deny("bad x-amz-date"))?;
    let skew = match SystemTime::now().duration_since(signed_at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > Duration::from_secs(15 * 60) {
        return Err(deny("request time too skewed"));
    }
    let secret = secret_for(akid).ok_or((403, "InvalidClientTokenId".to_string()))?;

    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            return Err(deny("a signed header is missing"));
        }
        let value = values
            .iter()
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(",");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method().as_str(),
        req.uri().path(),
        canonical_query(req.uri().query().unwrap_or("")),
        canonical_headers,
        signed_headers,
        hex::encode(Sha256::digest(req.body()))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mac = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = mac(format!("AWS4{secret}").as_bytes(), date);
    let k_region = mac(k_date.as_ref(), region);
    let k_service = mac(k_region.as_ref(), service);
    let k_signing = mac(k_service.as_ref(), "aws4_request");
    let expected = hex::encode(mac(k_signing.as_ref(), &string_to_sign).as_ref());
    if expected != signature {
        return Err(deny("signature differs"));
    }
    Ok((*akid).to_owned())
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs.join("&")
}

/// `x-amz-date`: `YYYYMMDDTHHMMSSZ`.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let format = format_description!("[year][month][day]T[hour][minute][second]Z");
    PrimitiveDateTime::parse(text, &format)
        .ok()
        .map(|time| time.assume_utc().into())
}

/// `YYYY-MM-DDTHH:MM:SSZ`, as STS writes `<Expiration>`.
pub fn iso8601(time: SystemTime) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    OffsetDateTime::from(time)
        .format(&format)
        .unwrap_or_default()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    hex::encode(bytes)
}
