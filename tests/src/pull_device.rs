//! A device for pull tests that run the agent's own pull code in-process: a cache in a temp
//! folder and a client for one facade URL or several replicas. (End-to-end tests that run
//! the agent's configuration and update cycle use [`crate::agent_device`] instead.)

use std::path::Path;

use meshanics_agent::client::{Client, ClientOptions};
use meshanics_agent::progress::Silent;
use meshanics_agent::pull::{PullTarget, Pulled, Puller};
use meshanics_agent::store::{Store, StoreOptions};
use meshanics_shared::Platform;

use crate::{FixtureError, io_err};

/// A device's cache and client; its folder is removed on drop.
#[derive(Debug)]
pub struct PullDevice {
    _dir: tempfile::TempDir,
    /// The content-addressed cache.
    pub store: Store,
    /// The client, for the facade URLs it was made with.
    pub client: Client,
    /// The platform it pulls for.
    pub platform: Platform,
}

// === impl PullDevice ===

impl PullDevice {
    /// A `linux/amd64` device with a fresh cache whose client tries `urls` in order (see the
    /// agent's facade replicas) with `tls` and `options`.
    pub fn new(
        urls: &[http::Uri],
        tls: rustls::ClientConfig,
        options: ClientOptions,
    ) -> Result<Self, FixtureError> {
        let dir = tempfile::tempdir().map_err(io_err("creating a temp dir", Path::new("/tmp")))?;
        let (store, _) = Store::open(dir.path(), StoreOptions::default())
            .map_err(|e| FixtureError::Invalid(e.to_string()))?;
        let client = Client::with_replicas(urls, tls, options)
            .map_err(|e| FixtureError::Invalid(e.to_string()))?;
        let platform =
            Platform::parse("linux/amd64").map_err(|e| FixtureError::Invalid(e.to_string()))?;
        Ok(PullDevice {
            _dir: dir,
            store,
            client,
            platform,
        })
    }

    /// Pulls `target` into the cache, `concurrency` blobs at once, as the agent does.
    pub async fn pull(
        &self,
        target: &PullTarget,
        concurrency: usize,
    ) -> Result<Pulled, meshanics_agent::Error> {
        Puller {
            client: &self.client,
            store: &self.store,
            platform: &self.platform,
            concurrency,
            progress: &Silent,
        }
        .pull(target)
        .await
    }
}
