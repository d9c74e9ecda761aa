//! TLS material and configuration, shared by the facade (server) and the agent (client).
//!
//! Everything runs on one crypto provider, `ring` (see the workspace `Cargo.toml` for why).
//! PEM goes through `rustls-pki-types`. Loading errors name the file and what was missing,
//! because the operator who reads them has a config file open and needs to know which line.
//!
//! The server configuration requires a client certificate chained to the device CA: there is
//! no way to build one that accepts anonymous clients, so a facade fails closed. Revocation
//! lists, when given, are checked for the device (end-entity) certificate; a device whose
//! issuer has no CRL loaded is refused too (unknown revocation status is not accepted). A
//! CRL past its `nextUpdate` is still enforced (what it revokes stays revoked): noticing
//! that it is late, and reloading a new one, is the server's job (the facade's
//! `device_tls`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// ALPN protocols the facade offers, best first.
pub const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why TLS material could not be loaded or a configuration built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("reading {what} from {path}: {source}")]
    ReadPem {
        /// What was being read (`certificate chain`, `private key`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The PEM or I/O error.
        #[source]
        source: pem::Error,
    },
    /// A PEM file held none of what was asked for.
    #[error("{path} contains no {what} (expected a PEM `{marker}` section)")]
    Missing {
        /// What was being read.
        what: &'static str,
        /// The PEM marker looked for.
        marker: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A CA certificate could not be used as a trust anchor.
    #[error("CA certificate #{index} in {path} is not a usable trust anchor: {source}")]
    BadCaCertificate {
        /// The file.
        path: PathBuf,
        /// Its position in the file, from 1.
        index: usize,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// A CRL file could not be read.
    #[error("reading CRL {path}: {source}")]
    ReadCrl {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A CRL in a file is not a well-formed certificate revocation list.
    #[error("CRL #{index} in {path} is not a usable revocation list: {source}")]
    BadCrl {
        /// The file.
        path: PathBuf,
        /// Its position in the file, from 1.
        index: usize,
        /// Why.
        #[source]
        source: webpki::Error,
    },
    /// The client-certificate verifier could not be built (a bad CRL, no trust anchors).
    #[error("building the device certificate verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// rustls refused the configuration (a key that does not match its certificate, ...).
    #[error("building the {side} TLS configuration: {source}")]
    Config {
        /// `server` or `client`.
        side: &'static str,
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

/// The one crypto provider of the workspace.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads every certificate in a PEM file (a chain: leaf first).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let what = "certificates";
    let read = |source| TlsError::ReadPem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            what,
            marker: "CERTIFICATE",
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::Missing {
            what: "private key",
            marker: "PRIVATE KEY",
            path: path.to_owned(),
        },
        source => TlsError::ReadPem {
            what: "private key",
            path: path.to_owned(),
            source,
        },
    })
}

/// Loads a CA bundle as trust anchors; every certificate in it must be usable.
pub fn load_ca_bundle(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certificates(path)?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|source| TlsError::BadCaCertificate {
                path: path.to_owned(),
                index: i + 1,
                source,
            })?;
    }
    Ok(roots)
}

/// Loads certificate revocation lists, each file PEM (`X509 CRL` sections) or DER.
pub fn load_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut crls = Vec::new();
    for path in paths {
        crls.extend(load_crl_file(path)?);
    }
    Ok(crls)
}

/// Loads the revocation lists of one file, PEM (`X509 CRL` sections) or DER. Each is parsed
/// here, so that a malformed one is refused naming its file (the verifier built from them
/// later would not say which file it came from).
pub fn load_crl_file(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = fs_err::read(path).map_err(|source| TlsError::ReadCrl {
        path: path.to_owned(),
        source,
    })?;
    let crls = if bytes.starts_with(b"-----BEGIN") {
        let read = |source| TlsError::ReadPem {
            what: "CRL",
            path: path.to_owned(),
            source,
        };
        let found = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(read)?;
        if found.is_empty() {
            return Err(TlsError::Missing {
                what: "CRL",
                marker: "X509 CRL",
                path: path.to_owned(),
            });
        }
        found
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    for (i, crl) in crls.iter().enumerate() {
        webpki::OwnedCertRevocationList::from_der(crl).map_err(|source| TlsError::BadCrl {
            path: path.to_owned(),
            index: i + 1,
            source,
        })?;
    }
    Ok(crls)
}

/// The files a mutual-TLS server needs.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    /// The server's certificate chain (PEM, leaf first).
    pub certificate: PathBuf,
    /// The server's private key (PEM).
    pub private_key: PathBuf,
    /// The CA bundle that client (device) certificates must chain to.
    pub client_ca: PathBuf,
    /// Revocation lists for client certificates.
    pub crls: Vec<PathBuf>,
}

/// Builds a server configuration that requires and verifies client certificates, from files.
pub fn server_config(files: &ServerFiles) -> Result<ServerConfig, TlsError> {
    server_config_from(
        load_certificates(&files.certificate)?,
        load_private_key(&files.private_key)?,
        load_ca_bundle(&files.client_ca)?,
        load_crls(&files.crls)?,
    )
}

/// Builds a server configuration that requires and verifies client certificates, from
/// loaded material. ALPN offers HTTP/2 and HTTP/1.1.
pub fn server_config_from(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: RootCertStore,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider.clone());
    if !crls.is_empty() {
        // rustls' default expiration policy: a CRL past its `nextUpdate` still revokes what
        // it lists (refusing every device because its publisher is late would be an outage).
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = verifier.build().map_err(TlsError::Verifier)?;
    let config_err = |source| TlsError::Config {
        side: "server",
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(config_err)?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Builds a client configuration that trusts `roots` and, when given, presents a client
/// certificate. ALPN is left empty for the caller to set.
pub fn client_config_from(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    let config_err = |source| TlsError::Config {
        side: "client",
        source,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_root_certificates(roots);
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(config_err),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Builds a client configuration from files: the CA bundle to trust and, optionally, the
/// client's certificate chain and key.
pub fn client_config(
    ca_bundle: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let roots = load_ca_bundle(ca_bundle)?;
    let identity = match identity {
        Some((cert, key)) => Some((load_certificates(cert)?, load_private_key(key)?)),
        None => None,
    };
    client_config_from(roots, identity)
}

#[cfg(test)]
mod tests;
