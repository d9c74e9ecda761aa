//! A Docker token server (the `auth.token` realm of the distribution registry) on
//! 127.0.0.1:0: it checks HTTP Basic credentials and answers with an ES256 JWT that the real
//! registry verifies against the certificate written by [`TokenServer::root_cert_bundle`].
//!
//! The token carries the signing certificate in its `x5c` header, and the claims the
//! registry checks (`iss`, `aud` = service, `exp`/`nbf`/`iat`, and `access` per requested
//! scope). Every request is recorded, so tests can count how often a client came for a token.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;
use time::OffsetDateTime;
use time::macros::format_description;
use tokio::net::TcpListener;

use crate::http_server::form_pairs;
use crate::{FixtureError, io_err};

/// The service name the registry and the tokens agree on.
pub const SERVICE: &str = "meshanics-test-registry";
/// The issuer name the registry and the tokens agree on.
pub const ISSUER: &str = "meshanics-test-token-issuer";

/// One token request, as received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Its `User-Agent`.
    pub user_agent: String,
    /// Its `scope` parameters.
    pub scopes: Vec<String>,
    /// Whether it carried the right credentials.
    pub authenticated: bool,
}

/// A running token server; stopped on drop.
#[derive(Debug)]
pub struct TokenServer {
    port: u16,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Issuer {
    key: EcdsaKeyPair,
    cert_der_b64: String,
    username: String,
    password: String,
    lifetime: u64,
    serial: AtomicU64,
    rng: SystemRandom,
}

// === impl TokenServer ===

impl TokenServer {
    /// Starts a token server that gives tokens valid for `lifetime` seconds to
    /// `username`/`password` only.
    pub fn start(username: &str, password: &str, lifetime: u64) -> Result<Self, FixtureError> {
        let invalid = |e: &dyn std::fmt::Display| FixtureError::Invalid(e.to_string());
        let key_pair = rcgen::KeyPair::generate().map_err(|e| invalid(&e))?;
        let params = rcgen::CertificateParams::new(vec!["token-issuer".to_owned()])
            .map_err(|e| invalid(&e))?;
        let cert = params.self_signed(&key_pair).map_err(|e| invalid(&e))?;
        let dir = tempfile::tempdir().map_err(io_err("creating a temp dir", Path::new("/tmp")))?;
        let bundle = dir.path().join("token-signer.crt");
        std::fs::write(&bundle, cert.pem()).map_err(io_err("writing", &bundle))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &rng,
        )
        .map_err(|e| invalid(&e))?;
        let issuer = Arc::new(Issuer {
            key,
            cert_der_b64: STANDARD.encode(cert.der()),
            username: username.to_owned(),
            password: password.to_owned(),
            lifetime,
            serial: AtomicU64::new(1),
            rng,
        });

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(io_err("starting a runtime for", Path::new("token server")))?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .map_err(io_err("binding", Path::new("127.0.0.1:0")))?;
        let port = listener
            .local_addr()
            .map_err(io_err("reading the address of", Path::new("listener")))?
            .port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let issuer = issuer.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let response = issuer.answer(&request, &recorded);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(TokenServer {
            port,
            requests,
            dir,
            runtime: Some(runtime),
        })
    }

    /// The realm URL to configure in the registry.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The PEM file holding the signing certificate (the registry's `rootcertbundle`).
    pub fn root_cert_bundle(&self) -> PathBuf {
        self.dir.path().join("token-signer.crt")
    }

    /// Every token request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

// === impl Issuer ===

impl Issuer {
    fn answer<B>(
        &self,
        request: &Request<B>,
        recorded: &Mutex<Vec<TokenRequest>>,
    ) -> Response<Full<Bytes>> {
        let query = request.uri().query().unwrap_or_default();
        let scopes: Vec<String> = form_pairs(query.as_bytes())
            .into_iter()
            .filter(|(key, _)| key == "scope")
            .map(|(_, value)| value)
            .collect();
        let authenticated = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b64| STANDARD.decode(b64).ok())
            .is_some_and(|pair| {
                pair == format!("{}:{}", self.username, self.password).into_bytes()
            });
        let user_agent = request
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if let Ok(mut all) = recorded.lock() {
            all.push(TokenRequest {
                user_agent,
                scopes: scopes.clone(),
                authenticated,
            });
        }
        if !authenticated {
            return respond(
                StatusCode::UNAUTHORIZED,
                &json!({"details": "bad credentials"}),
            );
        }
        match self.token(&scopes) {
            Some(token) => respond(
                StatusCode::OK,
                &json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": self.lifetime,
                    "issued_at": now_rfc3339(),
                }),
            ),
            None => respond(StatusCode::INTERNAL_SERVER_ERROR, &json!({})),
        }
    }

    fn token(&self, scopes: &[String]) -> Option<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        let access: Vec<_> = scopes
            .iter()
            .filter_map(|scope| {
                let (kind, rest) = scope.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.cert_der_b64]});
        let claims = json!({
            "iss": ISSUER,
            "sub": self.username,
            "aud": SERVICE,
            "exp": now + self.lifetime,
            "nbf": now - 60,
            "iat": now,
            "jti": self.serial.fetch_add(1, Ordering::Relaxed).to_string(),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key.sign(&self.rng, signing_input.as_bytes()).ok()?;
        Some(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

fn respond(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Now, as a token endpoint writes `issued_at`: `YYYY-MM-DDTHH:MM:SSZ`.
fn now_rfc3339() -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}
