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

/// How much of one upstream HTTP/2 stream may arrive ahead of the device reading it (hyper's
/// client default is 2 MiB). What arrives waits in memory until the device takes it, so this
/// bounds what a slow device costs; it also bounds one stream's throughput to about this
/// much per round trip (512 KiB at 20 ms is 26 MB/s), which the upstream's own pacing rarely
/// beats for one device.
pub const UPSTREAM_STREAM_WINDOW: u32 = 512 * 1024;
/// The same for all streams of one upstream HTTP/2 connection together (hyper: 5 MiB): 16
/// stalled streams' worth, so a few stalled devices do not stop the others sharing it.
pub const UPSTREAM_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// A client builder trusting `roots`, with ALPN for HTTP/2 and HTTP/1.1 and the receive
/// windows above. Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, which reqwest
/// reads by default. (reqwest sets no HTTP/1.1 read buffer size; hyper's reads are driven by
/// the device reading, up to its ~400 KiB default.)
pub fn builder(roots: RootCertStore) -> Result<reqwest::ClientBuilder, HttpClientError> {
    let mut config = tls::client_config_from(roots, None)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .http2_initial_stream_window_size(UPSTREAM_STREAM_WINDOW)
        .http2_initial_connection_window_size(UPSTREAM_CONNECTION_WINDOW))
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
