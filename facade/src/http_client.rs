//! The facade's one outbound HTTP client set-up: reqwest on the workspace's one TLS provider
//! (ring), trusting the given roots, speaking HTTP/2 or HTTP/1.1. The registry client and the
//! cloud token client both start from [`builder`]; each adds its own timeouts and policies.

use std::time::Duration;

use meshanics_shared::tls;
use rustls::RootCertStore;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpClientError {
    /// The TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// reqwest refused the configuration.
    #[error("building the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// The public web's roots (Mozilla's, from `webpki-roots`): what an upstream without a
/// private CA, and a cloud token endpoint, is trusted by.
pub fn web_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// A client builder trusting `roots`, with ALPN for HTTP/2 and HTTP/1.1. Proxies come from
/// `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, which reqwest reads by default.
pub fn builder(roots: RootCertStore) -> Result<reqwest::ClientBuilder, HttpClientError> {
    let mut config = tls::client_config_from(roots, None)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder().use_preconfigured_tls(config))
}

/// A client for token endpoints trusting `roots`, with connect and overall timeouts. It
/// follows no redirect: a token request carries a signed assertion or a signature meant for
/// its endpoint alone, which a redirect would re-send elsewhere (and over plain HTTP).
pub fn client(
    roots: RootCertStore,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<reqwest::Client, HttpClientError> {
    builder(roots)?
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .build()
        .map_err(HttpClientError::Build)
}
