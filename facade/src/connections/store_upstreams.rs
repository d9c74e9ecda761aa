//! The connection store as the proxy's approval seam: [`StoreUpstreams`] answers the proxy's
//! one question ("is this registry approved, and how do I reach it?") from the operators'
//! connections, building one registry client per connection with the right credential
//! provider (static, anonymous, or a cloud token provider).
//!
//! Clients are reused while a connection stays the same, and rebuilt when an operator removes
//! and re-adds it (the connection's generation tells); a removal drops its client at once.
//! The proxy asks on every request, so a removed connection stops being proxied at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use meshanics_shared::Registry;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::{Connection, ConnectionCredentials, ConnectionError, Store};
use crate::approval::ApprovedUpstreams;
use crate::cloud::ecr::{AwsCredentials, EcrProvider, Endpoints};
use crate::cloud::gcp::ServiceAccountKey;
use crate::cloud::token_cache::{CloudTokenCache, TokenKey};
use crate::cloud::{CloudCredentials, CloudSource};
use crate::config::UpstreamTimeouts;
use crate::providers::{
    Anonymous, CredentialProvider, PresentedCredentials, Secret, StaticCredentials,
};
use crate::registry_client::{Endpoint, RedirectRules, Upstream};

/// What cloud connections need beyond their record.
#[derive(Debug, Clone)]
pub struct CloudSettings {
    /// The client for token endpoints.
    pub client: reqwest::Client,
    /// The token cache shared by all cloud connections (keyed by connection).
    pub cache: Arc<CloudTokenCache>,
    /// The facade's base AWS credentials (read once from the environment at start).
    pub aws: Option<AwsCredentials>,
    /// STS and ECR endpoints, when not AWS's regional ones (tests, private endpoints).
    pub ecr_endpoints: Option<Endpoints>,
}

/// A built client and the generation of the connection it was built for.
type CachedClient = (u64, Arc<Upstream>);

/// Upstreams from the connection store, falling back to another set (the config file's).
#[derive(Debug)]
pub struct StoreUpstreams {
    store: Arc<Store>,
    fallback: Option<Arc<dyn ApprovedUpstreams>>,
    timeouts: UpstreamTimeouts,
    cloud: CloudSettings,
    own_listeners: Vec<SocketAddr>,
    clients: Arc<Mutex<HashMap<Registry, CachedClient>>>,
}

/// Why a connection's client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ConnectionError),
    /// The connection's configuration cannot be used.
    #[error("connection {host}: {reason}")]
    Unusable {
        /// The registry.
        host: String,
        /// Why.
        reason: String,
    },
}

// === impl StoreUpstreams ===

impl StoreUpstreams {
    /// Upstreams from `store`; registries it does not know are asked of `fallback`. No
    /// client follows a redirect to `own_listeners` (the facade's).
    pub fn new(
        store: Arc<Store>,
        fallback: Option<Arc<dyn ApprovedUpstreams>>,
        timeouts: UpstreamTimeouts,
        cloud: CloudSettings,
        own_listeners: Vec<SocketAddr>,
    ) -> Self {
        let clients: Arc<Mutex<HashMap<Registry, CachedClient>>> = Arc::default();
        let (dropped, tokens) = (clients.clone(), cloud.cache.clone());
        store.on_remove(move |registry| {
            let mut clients = dropped.lock().unwrap_or_else(|p| p.into_inner());
            clients.remove(registry);
            tokens.forget_host(registry.as_str());
        });
        StoreUpstreams {
            store,
            fallback,
            timeouts,
            cloud,
            own_listeners,
            clients,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The client for `registry` if it is connected (approved or not: the operator may browse
    /// a connection before approving it), or `None`.
    pub fn connected(&self, registry: &Registry) -> Result<Option<Arc<Upstream>>, BuildError> {
        match self.store.connection(registry)? {
            Some(connection) => self.client_for(&connection).map(Some),
            None => Ok(None),
        }
    }

    fn client_for(&self, connection: &Connection) -> Result<Arc<Upstream>, BuildError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((generation, client)) = clients.get(&connection.registry)
            && *generation == connection.generation
        {
            return Ok(client.clone());
        }
        let client = Arc::new(self.build(connection)?);
        clients.insert(
            connection.registry.clone(),
            (connection.generation, client.clone()),
        );
        Ok(client)
    }

    fn build(&self, connection: &Connection) -> Result<Upstream, BuildError> {
        let host = connection.registry.as_str().to_owned();
        let token_key = TokenKey {
            host: host.clone(),
            connection: connection.generation,
        };
        let unusable = |reason: String| BuildError::Unusable {
            host: host.clone(),
            reason,
        };
        let credentials: Arc<dyn CredentialProvider> = match &*connection.credentials {
            ConnectionCredentials::Anonymous => Arc::new(Anonymous),
            ConnectionCredentials::Static { username, token } => Arc::new(StaticCredentials::new(
                PresentedCredentials::basic(username.clone(), Secret::new(token.clone())),
            )),
            ConnectionCredentials::Gcp { key_json } => {
                let key =
                    ServiceAccountKey::parse(key_json).map_err(|e| unusable(e.to_string()))?;
                Arc::new(CloudCredentials::new(
                    token_key,
                    CloudSource::Gcp(Arc::new(key)),
                    self.cloud.client.clone(),
                    self.cloud.cache.clone(),
                ))
            }
            ConnectionCredentials::Ecr(role) => {
                let base = self.cloud.aws.clone().ok_or_else(|| {
                    unusable("no AWS base credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the facade".into())
                })?;
                let endpoints = self
                    .cloud
                    .ecr_endpoints
                    .clone()
                    .unwrap_or_else(|| Endpoints::for_region(&role.region));
                Arc::new(CloudCredentials::new(
                    token_key,
                    CloudSource::Ecr(Arc::new(EcrProvider::new(role.clone(), base, endpoints))),
                    self.cloud.client.clone(),
                    self.cloud.cache.clone(),
                ))
            }
        };
        let ca = match &connection.ca_pem {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|e| unusable(format!("its CA bundle: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| unusable(format!("its CA bundle: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(unusable("its CA bundle holds no certificate".into()));
                }
                Some(roots)
            }
            None => None,
        };
        let endpoint = Endpoint {
            plain_http: connection.plain_http,
            ca,
            redirects: RedirectRules::new(
                connection.storage_hosts.clone(),
                self.own_listeners.clone(),
            ),
        };
        Upstream::new(
            connection.registry.clone(),
            endpoint,
            credentials,
            self.timeouts,
        )
        .map_err(|e| unusable(e.to_string()))
    }
}

impl ApprovedUpstreams for StoreUpstreams {
    fn approved(&self, registry: &Registry) -> Option<Arc<Upstream>> {
        // A connection the store holds decides, approved or not: an operator's unapprove
        // is not undone by the same host in the config file. Only hosts the store does not
        // know fall back to the config's `[[upstreams]]`.
        match self.store.connection(registry) {
            Ok(Some(connection)) if connection.approved => match self.client_for(&connection) {
                Ok(client) => Some(client),
                Err(error) => {
                    tracing::error!(%registry, %error, "approved connection cannot be used");
                    None
                }
            },
            Ok(Some(_)) => None,
            Ok(None) => self.fallback.as_ref().and_then(|f| f.approved(registry)),
            Err(error) => {
                tracing::error!(%registry, %error, "connection store failed");
                None
            }
        }
    }
}
