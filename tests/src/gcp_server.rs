//! A Google OAuth2 token endpoint for tests: it takes the JWT bearer grant (RFC 7523) and
//! checks what Google checks, with its own code: the RS256 signature against the service
//! account's public key (made by `openssl`, not by the code under test), and the claims (`iss`
//! the account, `aud` this endpoint, `scope` cloud-platform, `exp - iat` at most an hour,
//! `iat` not in the future).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

use crate::http_server::{TestServer, form_pairs, respond};
use crate::{FixtureError, io_err};

/// A service account made for a test: its key file JSON and its public key.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    /// The account's email.
    pub client_email: String,
    /// The private key, PKCS#8 PEM.
    pub private_key_pem: String,
    /// The public key, PKCS#1 DER (what the token server verifies with).
    pub public_key_pkcs1: Vec<u8>,
}

impl ServiceAccount {
    /// A new 2048-bit RSA service account, keys made by `openssl` in `dir`.
    pub fn generate(dir: &Path, client_email: &str) -> Result<Self, FixtureError> {
        let key = dir.join(format!("{client_email}.pem"));
        let public = dir.join(format!("{client_email}.pub.der"));
        run_openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ],
            &key,
        )?;
        let status = Command::new("openssl")
            .args(["rsa", "-in"])
            .arg(&key)
            .args(["-RSAPublicKey_out", "-outform", "DER", "-out"])
            .arg(&public)
            .output()
            .map_err(io_err("running openssl for", &public))?;
        if !status.status.success() {
            return Err(FixtureError::Program {
                program: "openssl rsa".into(),
                detail: String::from_utf8_lossy(&status.stderr).into_owned(),
            });
        }
        Ok(ServiceAccount {
            client_email: client_email.to_owned(),
            private_key_pem: std::fs::read_to_string(&key).map_err(io_err("reading", &key))?,
            public_key_pkcs1: std::fs::read(&public).map_err(io_err("reading", &public))?,
        })
    }

    /// The key file JSON, as Google's console downloads it, naming `token_uri`.
    pub fn key_json(&self, token_uri: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "meshanics-test",
            "private_key_id": "0123456789abcdef",
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": "1",
            "auth_uri": "https://accounts.example/o/oauth2/auth",
            "token_uri": token_uri,
        })
        .to_string()
    }
}

fn run_openssl(args: &[&str], out: &Path) -> Result<(), FixtureError> {
    let output = Command::new("openssl")
        .args(args)
        .arg(out)
        .output()
        .map_err(io_err("running openssl for", out))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(FixtureError::Program {
            program: format!("openssl {}", args.join(" ")),
            detail: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

#[derive(Debug)]
struct State {
    account: ServiceAccount,
    token_uri: OnceLock<String>,
    lifetime_secs: AtomicU64,
    fixed_token: std::sync::Mutex<Option<String>>,
    requests: AtomicU64,
    rejected: AtomicU64,
}

/// The running token endpoint.
#[derive(Debug)]
pub struct GcpTokenServer {
    server: TestServer,
    state: Arc<State>,
}

impl GcpTokenServer {
    /// Starts an endpoint that accepts assertions from `account`.
    pub async fn start(account: ServiceAccount) -> Result<Self, FixtureError> {
        let state = Arc::new(State {
            account,
            token_uri: OnceLock::new(),
            lifetime_secs: AtomicU64::new(3600),
            fixed_token: std::sync::Mutex::new(None),
            requests: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        });
        let handler_state = state.clone();
        let server = TestServer::start(move |req| {
            handler_state.requests.fetch_add(1, Ordering::SeqCst);
            match check(&handler_state, &req) {
                Ok(()) => {
                    let n = handler_state.requests.load(Ordering::SeqCst);
                    let fixed = handler_state.fixed_token.lock().ok().and_then(|t| t.clone());
                    let body = serde_json::json!({
                        "access_token": fixed.unwrap_or_else(|| format!("ya29.test-access-token-{n}")),
                        "expires_in": handler_state.lifetime_secs.load(Ordering::SeqCst),
                        "token_type": "Bearer",
                    });
                    respond(200, "application/json", body.to_string())
                }
                Err(why) => {
                    handler_state.rejected.fetch_add(1, Ordering::SeqCst);
                    let body =
                        serde_json::json!({"error": "invalid_grant", "error_description": why});
                    respond(400, "application/json", body.to_string())
                }
            }
        })
        .await
        .map_err(io_err(
            "starting the GCP token server on",
            Path::new("127.0.0.1:0"),
        ))?;
        let _ = state.token_uri.set(format!("{}/token", server.base_url()));
        Ok(GcpTokenServer { server, state })
    }

    /// The endpoint URL, for the key file's `token_uri`.
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.server.base_url())
    }

    /// Sets the lifetime (`expires_in`) of tokens issued from now on.
    pub fn set_token_lifetime(&self, secs: u64) {
        self.state.lifetime_secs.store(secs, Ordering::SeqCst);
    }

    /// Issues `token` on every grant (so a registry's htpasswd can hold it), or numbered
    /// tokens again with `None`.
    pub fn set_fixed_token(&self, token: Option<&str>) {
        if let Ok(mut fixed) = self.state.fixed_token.lock() {
            *fixed = token.map(str::to_owned);
        }
    }

    /// How many token requests arrived.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// How many were refused.
    pub fn rejected(&self) -> u64 {
        self.state.rejected.load(Ordering::SeqCst)
    }
}

fn check(state: &State, req: &crate::http_server::TestRequest) -> Result<(), String> {
    if req.method() != hyper::Method::POST || req.uri().path() != "/token" {
        return Err("not POST /token".into());
    }
    let form = form_pairs(req.body());
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    if get("grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return Err("wrong grant_type".into());
    }
    let jwt = get("assertion").ok_or("no assertion")?;
    let mut parts = jwt.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a three-part JWT".into());
    };
    let decode = |p: &str| {
        URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| "bad base64url".to_string())
    };
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|e| e.to_string())?;
    if field(&header, "alg") != "RS256" {
        return Err("alg is not RS256".into());
    }
    let signing_input = format!(
        "{}.{}",
        jwt.split('.').next().unwrap_or(""),
        jwt.split('.').nth(1).unwrap_or("")
    );
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &state.account.public_key_pkcs1)
        .verify(signing_input.as_bytes(), &decode(signature)?)
        .map_err(|_| "bad RS256 signature".to_string())?;
    let claims: serde_json::Value =
        serde_json::from_slice(&decode(claims)?).map_err(|e| e.to_string())?;
    if field(&claims, "iss") != state.account.client_email.as_str() {
        return Err("wrong iss".into());
    }
    if Some(field(&claims, "aud").as_str().unwrap_or(""))
        != state.token_uri.get().map(String::as_str)
    {
        return Err("wrong aud".into());
    }
    if !field(&claims, "scope")
        .as_str()
        .unwrap_or("")
        .split(' ')
        .any(|s| s == "https://www.googleapis.com/auth/cloud-platform")
    {
        return Err("scope lacks cloud-platform".into());
    }
    let iat = field(&claims, "iat").as_u64().ok_or("no iat")?;
    let exp = field(&claims, "exp").as_u64().ok_or("no exp")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if exp <= iat || exp - iat > 3600 {
        return Err("exp - iat must be within an hour".into());
    }
    if iat > now + 60 || exp < now {
        return Err("assertion not valid now".into());
    }
    Ok(())
}

fn field<'a>(value: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    value.get(key).unwrap_or(&serde_json::Value::Null)
}
