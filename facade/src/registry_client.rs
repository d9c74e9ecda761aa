//! The registry client: fetches a manifest or blob by digest from one approved upstream.
//!
//! It speaks the distribution API's read side and nothing else. Authentication follows the
//! upstream's challenge: anonymous first (or a cached token, or Basic right away once the
//! host has asked for it), then HTTP Basic or the Docker bearer-token flow (`token`), with the
//! credentials a [`CredentialProvider`] supplies. Redirects are followed here rather than by
//! `reqwest`, because `Authorization` must never leave the upstream's origin (scheme, host and
//! port: `reqwest` itself only compares host and port), a challenge is answered only when it
//! comes from that origin, and a hop off the origin goes only where [`RedirectRules`] allow,
//! to the very addresses they checked (a second client, whose resolver only hands out pinned
//! addresses).
//!
//! The response comes back with its body unread: the proxy streams and verifies it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use http::header::{ACCEPT, AUTHORIZATION, LOCATION, RANGE};
use http::{HeaderValue, Method, StatusCode};
use hyper_util::client::proxy::matcher::Matcher as ProxyMatcher;
use meshanics_shared::media_type::MANIFEST_ACCEPT;
use meshanics_shared::{Digest, Registry, Repository};
use reqwest::Url;
use rustls::RootCertStore;

use crate::config::UpstreamTimeouts;
use crate::http_client;
use crate::providers::CredentialProvider;

mod auth;
mod bearer_token;
mod challenge;
mod destination;
mod error;
mod pinned_resolver;
mod public_address;
mod redirect;

use auth::Authorization;
use pinned_resolver::PinnedResolver;

pub use bearer_token::{BearerToken, BearerTokenCache, TokenResponse};
pub use challenge::Challenge;
pub use destination::{InvalidStorageHost, RedirectRules, StorageHost};
pub use error::UpstreamError;
pub use redirect::{redacted, same_origin};

/// Redirects followed per request (registries send one, to blob storage).
const MAX_REDIRECTS: usize = 5;

/// How to reach an upstream.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// Plain HTTP (labs and tests); HTTPS otherwise.
    pub plain_http: bool,
    /// A private CA bundle for this upstream; the public web roots otherwise.
    pub ca: Option<RootCertStore>,
    /// Where redirects off the upstream's origin may lead.
    pub redirects: RedirectRules,
}

/// Manifest or blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentKind {
    /// `/manifests/<digest>`.
    Manifest,
    /// `/blobs/<digest>`.
    Blob,
}

/// One content request to an upstream.
#[derive(Debug, Clone)]
pub struct ContentRequest<'a> {
    /// `GET` or `HEAD`.
    pub method: Method,
    /// Manifest or blob.
    pub kind: ContentKind,
    /// The repository on the upstream.
    pub repository: &'a Repository,
    /// The digest.
    pub digest: &'a Digest,
    /// A `Range` header to pass on (blobs).
    pub range: Option<&'a HeaderValue>,
}

/// What one outgoing request asks for.
#[derive(Debug)]
struct Outgoing<'a> {
    method: Method,
    accept: &'a str,
    range: Option<&'a HeaderValue>,
}

/// An approved upstream registry and the client that talks to it.
pub struct Upstream {
    registry: Registry,
    base: Url,
    plain_http: bool,
    /// For the upstream's own origin.
    client: reqwest::Client,
    /// For hops off the origin: connects only to addresses pinned in `pins`.
    redirect_client: reqwest::Client,
    pins: Arc<PinnedResolver>,
    redirects: RedirectRules,
    /// The proxies reqwest reads from the environment, to let their hosts resolve.
    proxies: ProxyMatcher,
    credentials: Arc<dyn CredentialProvider>,
    tokens: BearerTokenCache,
    /// Set once the host answered a Basic challenge: later requests send Basic at once.
    wants_basic: AtomicBool,
    timeouts: UpstreamTimeouts,
}

// === impl Upstream ===

impl Upstream {
    /// An upstream for `registry`, reached as `endpoint` says, authenticating with
    /// `credentials`.
    pub fn new(
        registry: Registry,
        endpoint: Endpoint,
        credentials: Arc<dyn CredentialProvider>,
        timeouts: UpstreamTimeouts,
    ) -> Result<Self, UpstreamError> {
        let client_err = |reason: String| UpstreamError::Client {
            host: registry.clone(),
            reason,
        };
        let scheme = if endpoint.plain_http { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{}/", registry.api_host()))
            .map_err(|e| client_err(e.to_string()))?;
        let roots = endpoint.ca.unwrap_or_else(http_client::web_roots);
        let builder = || {
            http_client::builder(roots.clone())
                .map(|builder| {
                    builder
                        .redirect(reqwest::redirect::Policy::none())
                        .connect_timeout(timeouts.connect)
                        .read_timeout(timeouts.read)
                        .user_agent(concat!("meshanics-facade/", env!("CARGO_PKG_VERSION")))
                })
                .map_err(|e| client_err(e.to_string()))
        };
        let client = builder()?.build().map_err(|e| client_err(e.to_string()))?;
        let pins = Arc::new(PinnedResolver::default());
        let redirect_client = builder()?
            .dns_resolver(pins.clone())
            .build()
            .map_err(|e| client_err(e.to_string()))?;
        Ok(Upstream {
            registry,
            base,
            plain_http: endpoint.plain_http,
            client,
            redirect_client,
            pins,
            redirects: endpoint.redirects,
            proxies: ProxyMatcher::from_system(),
            credentials,
            tokens: BearerTokenCache::default(),
            wants_basic: AtomicBool::new(false),
            timeouts,
        })
    }

    /// The registry this upstream serves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sends `request`, answering at most one authentication challenge and following
    /// redirects. Any final status is returned as is (a second 401 included); the body is
    /// not read.
    pub async fn fetch(
        &self,
        request: &ContentRequest<'_>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let kind = match request.kind {
            ContentKind::Manifest => "manifests",
            ContentKind::Blob => "blobs",
        };
        let url = self.api_url(&format!("{}/{kind}/{}", request.repository, request.digest))?;
        let accept = match request.kind {
            ContentKind::Manifest => MANIFEST_ACCEPT,
            ContentKind::Blob => "*/*",
        };
        let outgoing = Outgoing {
            method: request.method.clone(),
            accept,
            range: request.range,
        };
        self.authorized(&outgoing, url, request.repository).await
    }

    /// The URL of a distribution API path below `/v2/` (`org/app/tags/list?n=100`).
    pub fn api_url(&self, path_and_query: &str) -> Result<Url, UpstreamError> {
        self.base
            .join(&format!("v2/{path_and_query}"))
            .map_err(|_| UpstreamError::Redirect {
                url: self.base.to_string(),
                reason: "the API URL is not valid",
            })
    }

    /// Whether `url` is on this upstream's origin (scheme, host, port): the only place its
    /// credentials may go.
    pub fn is_own(&self, url: &Url) -> bool {
        same_origin(url, &self.base)
    }

    /// `GET` or `HEAD` of any URL on the upstream's origin with the `pull` scope of
    /// `repository` (tag lists, manifests by tag for the operator's import), with the same
    /// authentication and redirect rules as [`Upstream::fetch`].
    pub async fn request(
        &self,
        method: Method,
        url: Url,
        repository: &Repository,
        accept: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        if !self.is_own(&url) {
            return Err(UpstreamError::Redirect {
                url: redacted(&url),
                reason: "it leaves the upstream's origin",
            });
        }
        let outgoing = Outgoing {
            method,
            accept,
            range: None,
        };
        self.authorized(&outgoing, url, repository).await
    }

    /// Sends a request, answering at most one authentication challenge.
    async fn authorized(
        &self,
        outgoing: &Outgoing<'_>,
        url: Url,
        repository: &Repository,
    ) -> Result<reqwest::Response, UpstreamError> {
        let scope = format!("repository:{repository}:pull");
        let credentials = self.credentials.credentials().await?;
        let mut authorization = self.first_authorization(&scope, credentials.as_ref()).await;
        let response = self
            .send(outgoing, url.clone(), authorization.as_ref())
            .await?;
        // A 401 from elsewhere (blob storage after a redirect) is not the upstream asking for
        // its credentials: answering it would send them to whatever realm it names.
        if response.status() != StatusCode::UNAUTHORIZED || !self.is_own(response.url()) {
            return Ok(response);
        }
        self.refused(&response, authorization.as_ref()).await;
        let Some(challenge) = Challenge::from_headers(response.headers()) else {
            return Ok(response);
        };
        let rejected = authorization.take();
        authorization = self
            .answer(&challenge, &scope, credentials.as_ref(), rejected.as_ref())
            .await?;
        if authorization.is_none() {
            return Ok(response);
        }
        let response = self.send(outgoing, url, authorization.as_ref()).await?;
        self.refused(&response, authorization.as_ref()).await;
        Ok(response)
    }

    /// Sends one request, following redirects; `Authorization` only within the upstream's
    /// origin, and hops off it only where the redirect rules allow.
    async fn send(
        &self,
        outgoing: &Outgoing<'_>,
        mut url: Url,
        authorization: Option<&Authorization>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut method = outgoing.method.clone();
        for _ in 0..=MAX_REDIRECTS {
            let own = same_origin(&url, &self.base);
            let client = if own {
                &self.client
            } else {
                self.pin(&url).await?;
                &self.redirect_client
            };
            let mut builder = client
                .request(method.clone(), url.clone())
                .header(ACCEPT, outgoing.accept);
            if let Some(range) = outgoing.range {
                builder = builder.header(RANGE, range.clone());
            }
            if let Some(authorization) = authorization
                && own
            {
                builder = builder.header(AUTHORIZATION, authorization.header_value());
            }
            let response = self.timed(&url, builder.send()).await?;
            let status = response.status();
            if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(response);
            }
            let next = redirect::location(&url, response.headers().get(LOCATION))?;
            if next.scheme() == "http" && !self.plain_http {
                return Err(UpstreamError::Redirect {
                    url: redacted(&url),
                    reason: "it downgrades HTTPS to plain HTTP",
                });
            }
            if status == StatusCode::SEE_OTHER && method != Method::HEAD {
                method = Method::GET;
            }
            url = next;
        }
        Err(UpstreamError::Redirect {
            url: redacted(&url),
            reason: "too many redirects",
        })
    }

    /// Checks where a hop off the origin to `url` would connect, and pins its host to the
    /// checked addresses (and lets the proxy it goes through, if any, resolve).
    async fn pin(&self, url: &Url) -> Result<(), UpstreamError> {
        let addresses = self.redirects.addresses(url, self.timeouts.connect).await?;
        if let Some(url::Host::Domain(name)) = url.host() {
            self.pins.pin(name, addresses);
        }
        let proxy = url
            .as_str()
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| self.proxies.intercept(&uri));
        if let Some(host) = proxy.as_ref().and_then(|p| p.uri().host()) {
            self.pins.allow_proxy(host);
        }
        Ok(())
    }

    async fn timed(
        &self,
        url: &Url,
        send: impl Future<Output = Result<reqwest::Response, reqwest::Error>>,
    ) -> Result<reqwest::Response, UpstreamError> {
        match tokio::time::timeout(self.timeouts.response, send).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(source)) => Err(UpstreamError::request(url, source)),
            Err(_) => Err(UpstreamError::Timeout {
                url: redacted(url),
                seconds: self.timeouts.response.as_secs(),
            }),
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("registry", &self.registry)
            .field("base", &self.base.as_str())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Reads a whole response body, refusing one over `limit` bytes as soon as it passes it.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, UpstreamError> {
    let url = redacted(response.url());
    let mut body = Vec::new();
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|source| UpstreamError::Request {
                url: url.clone(),
                source: source.without_url(),
            })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() + chunk.len() > limit {
            return Err(UpstreamError::TooLarge { url, limit });
        }
        body.extend_from_slice(&chunk);
    }
}
