//! Which upstreams the facade may proxy: the approval seam.
//!
//! The proxy asks one question, [`Upstreams::approved`]: "is this registry approved, and if so,
//! how do I reach and authenticate to it?" The answer is an [`Upstream`] (a registry client
//! with its credential provider). Today the approved set comes from the config file
//! ([`ConfiguredUpstreams`]); the connection store of the connections issue implements the
//! same trait (sealed records, operator approval, cloud providers) and replaces it without
//! the proxy changing.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use meshanics_shared::Registry;

use crate::config::{UpstreamConfig, UpstreamTimeouts};
use crate::providers::{Anonymous, CredentialProvider, StaticCredentials};
use crate::registry_client::{Endpoint, Upstream, UpstreamError};

/// The set of upstreams an operator approved.
pub trait Upstreams: Send + Sync + fmt::Debug + 'static {
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
    /// Builds a client per configured upstream.
    pub fn new(
        configs: &[UpstreamConfig],
        timeouts: UpstreamTimeouts,
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
            };
            let upstream = Upstream::new(config.registry.clone(), endpoint, credentials, timeouts)?;
            by_registry.insert(config.registry.clone(), Arc::new(upstream));
        }
        Ok(ConfiguredUpstreams { by_registry })
    }
}

impl Upstreams for ConfiguredUpstreams {
    fn approved(&self, registry: &Registry) -> Option<Arc<Upstream>> {
        self.by_registry.get(registry).cloned()
    }
}
