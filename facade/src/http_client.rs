//! The facade's outbound HTTP client (token endpoints, and later upstream registries):
//! reqwest on the workspace's one TLS provider (ring), trusting the given roots.

use std::time::Duration;

use meshanics_shared::tls;
use rustls::RootCertStore;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// reqwest refused the configuration.
    #[error("building the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// A client trusting `roots`, with connect and overall timeouts.
pub fn client(
    roots: RootCertStore,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<reqwest::Client, ClientError> {
    let mut config = tls::client_config_from(roots, None)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .build()
        .map_err(ClientError::Build)
}
