//! Registry connections: which upstream registries operators connected, and the sealed
//! credentials the facade uses for them.
//!
//! A connection is keyed by its registry host, normalized with the shared reference rules (a
//! pasted URL is reduced to its host by [`pasted`], Docker Hub's names are one connection, a
//! port is kept).
//! Each connection is one JSON file in `<state>/connections/`, written atomically; its secret
//! (a token, a service-account key, a role configuration) is sealed under the master key with
//! every public field of the record as associated data (see [`crate::seal`]). Every record is opened when the facade starts: one that does not open stops
//! it (exit 64) instead of failing device requests. Nothing here returns a secret to a
//! caller outside the facade: a [`ConnectionView`](meshanics_operator_api::ConnectionView)
//! (the operator API's type) is what lists and shows are made of.
//!
//! An anonymous connection needs an operator's approval before the facade proxies it; static
//! and cloud connections are usable at once. Removing a connection stops proxying at once,
//! because the proxy asks the store on every request.

mod browser;
pub mod pasted;
pub mod postgres;
mod record;
mod store;
mod store_upstreams;

pub use browser::StoreBrowser;
pub use postgres::{Actor, state_stale};
pub use record::{ConnectionCredentials, NewConnection};
pub use store::{AUDIT_LOG, Connection, ConnectionError, Store};
pub use store_upstreams::{BuildError, CloudSettings, StoreUpstreams};

use std::sync::Arc;

use crate::approval::ApprovedUpstreams;
use crate::cloud::ecr::{AwsCredentials, Endpoints};
use crate::cloud::token_cache::{CloudTokenCache, MarginPolicy, SystemClock};
use crate::config::{Config, StateConfig};
use crate::seal::MasterKey;

/// The operator socket's file name in the facade's state dir.
pub const ADMIN_SOCKET: &str = "admin.sock";

/// Everything connections need at run time.
#[derive(Debug, Clone)]
pub struct Connections {
    /// The store.
    pub store: Arc<Store>,
    /// The proxy's approval seam over it.
    pub upstreams: Arc<StoreUpstreams>,
    /// The operator API's tags and import over it.
    pub browser: Arc<StoreBrowser>,
}

/// Why connections could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] ConnectionError),
    /// The token client could not be built.
    #[error(transparent)]
    Client(#[from] crate::http_client::HttpClientError),
}

// === impl SetupError ===

impl SetupError {
    /// Whether the operator has to act before the facade can start: a record does not open
    /// under the master key (the wrong key, or a record altered or restored without it). The
    /// binary exits 64 for these, as for a bad configuration.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            SetupError::Store(ConnectionError::Unopenable { .. } | ConnectionError::Legacy { .. })
        )
    }
}

impl Connections {
    /// Opens the store in `config.state_dir` under `key`; registries it does not know fall
    /// back to `fallback` (the config file's upstreams). `aws` are the facade's base AWS
    /// credentials, read once at start.
    pub fn open(
        config: &Config,
        key: MasterKey,
        aws: Option<AwsCredentials>,
        fallback: Option<Arc<dyn ApprovedUpstreams>>,
    ) -> Result<Self, SetupError> {
        let store = match &config.state {
            StateConfig::Files => Arc::new(Store::open(&config.state_dir, key)?),
            StateConfig::Postgres(settings) => {
                Store::open_postgres(&config.state_dir, settings, key)?
            }
        };
        let timeouts = config.limits.upstream();
        let client = crate::http_client::client(
            crate::http_client::web_roots(),
            timeouts.connect,
            timeouts.response,
        )?;
        let policy = MarginPolicy {
            max: config.cloud.token_margin,
            ..MarginPolicy::default()
        };
        let ecr_endpoints = match (
            &config.cloud.ecr_sts_endpoint,
            &config.cloud.ecr_api_endpoint,
        ) {
            (Some(sts), Some(ecr)) => Some(Endpoints {
                sts: sts.clone(),
                ecr: ecr.clone(),
            }),
            _ => None,
        };
        let cloud = CloudSettings {
            client,
            cache: Arc::new(CloudTokenCache::new(policy, Arc::new(SystemClock))),
            aws,
            ecr_endpoints,
        };
        let upstreams = Arc::new(StoreUpstreams::new(
            store.clone(),
            fallback,
            timeouts,
            cloud,
            config.own_listeners(),
        ));
        let browser = Arc::new(StoreBrowser::new(upstreams.clone()));
        Ok(Connections {
            store,
            upstreams,
            browser,
        })
    }
}

#[cfg(test)]
mod tests;
