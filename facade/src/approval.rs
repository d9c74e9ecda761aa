//! Which upstreams the facade may proxy: the approval seam.
//!
//! The proxy asks one question, [`ApprovedUpstreams::approved`]: "is this registry approved,
//! and if so, how do I reach and authenticate to it?" The answer is an [`Upstream`] (a
//! registry client with its credential provider). Two sets implement it: the config file's
//! ([`ConfiguredUpstreams`]) and the connection store's
//! ([`crate::connections::StoreUpstreams`]: sealed records, operator approval, cloud
//! providers), which falls back to the config file's for registries it does not know.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use meshanics_shared::Registry;

use crate::config::{UpstreamConfig, UpstreamTimeouts};
use crate::providers::{Anonymous, CredentialProvider, StaticCredentials};
use crate::registry_client::{Endpoint, RedirectRules, Upstream, UpstreamError};

/// The set of upstreams an operator approved.
pub trait ApprovedUpstreams: Send + Sync + fmt::Debug + 'static {
    /// The upstream for `registry` if it is approved; `None` for unknown and unapproved
    /// hosts alike (devices must not learn which hosts exist).
    fn approved(&self, registry: &Registry) -> Option<Arc<Upstream>>;
}

/// Upstreams approved in the config file.
#[derive(Debug, Default)]
pub struct ConfiguredUpstreams {
    by_registry: HashMap<Registry, Arc<Upstream>>,
}

// === impl ConfiguredUpstreams ===

impl ConfiguredUpstreams {
    /// Builds a client per configured upstream; none follows a redirect to `own_listeners`
    /// (the facade's, [`crate::Config::own_listeners`]).
    pub fn new(
        configs: &[UpstreamConfig],
        timeouts: UpstreamTimeouts,
        own_listeners: &[SocketAddr],
    ) -> Result<Self, UpstreamError> {
        let mut by_registry = HashMap::new();
        for config in configs {
            let credentials: Arc<dyn CredentialProvider> = match &config.credentials {
                Some(credentials) => Arc::new(StaticCredentials::new(credentials.clone())),
                None => Arc::new(Anonymous),
            };
            let endpoint = Endpoint {
                plain_http: config.plain_http,
                ca: config.ca.clone(),
                redirects: RedirectRules::new(config.storage_hosts.clone(), own_listeners.to_vec()),
            };
            let upstream = Upstream::new(config.registry.clone(), endpoint, credentials, timeouts)?;
            by_registry.insert(config.registry.clone(), Arc::new(upstream));
        }
        Ok(ConfiguredUpstreams { by_registry })
    }
}

impl ApprovedUpstreams for ConfiguredUpstreams {
    fn approved(&self, registry: &Registry) -> Option<Arc<Upstream>> {
        self.by_registry.get(registry).cloned()
    }
}
