//! The signed metadata workflow on a device: where trust comes from.
//!
//! [`FacadeFetch`] is the shared workflow's [`Fetch`] over the agent's [`Client`]: metadata
//! files from `GET /meta/<file>` with the size caps the workflow passes, target manifests by
//! digest. [`MetadataSource`] is the [`TargetSource`] the service runs: each cycle it runs
//! [`Updater::update`] against the facade, starting from the pinned trust anchor and the
//! trusted files persisted in `<state dir>/metadata` (each replaced atomically by the
//! [`TrustedStore`]), then turns the trusted target entries that match this device's class
//! and platform into [`PullTarget`]s, each with its signed rollout placed for this device
//! ([`crate::rollout::Gate`]). Nothing else decides what a device runs.

use std::path::{Path, PathBuf};

use meshanics_shared::metadata::{
    Fetch, FetchError, MetadataError, TargetEntry, TrustedStore, UnixTime, UpdateReport, Updater,
};
use meshanics_shared::{Platform, Repository};
use tracing::info;

use crate::client::Client;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pull::PullTarget;
use crate::rollout::{self, Gate};
use crate::service::TargetSource;

/// The folder of the state directory that holds the trusted metadata files.
pub const METADATA_DIR: &str = "metadata";

/// The workflow's [`Fetch`] over the facade client.
#[derive(Debug)]
pub struct FacadeFetch<'a> {
    client: &'a Client,
}

/// The [`TargetSource`] backed by signed metadata from the facade.
#[derive(Debug)]
pub struct MetadataSource {
    anchor: Vec<u8>,
    store_dir: PathBuf,
    class: String,
    platform: Platform,
    /// The device certificate's SubjectPublicKeyInfo: its place in rollout waves.
    spki: Vec<u8>,
    download_ahead: bool,
    last_report: Option<UpdateReport>,
}

// === impl FacadeFetch ===

impl<'a> FacadeFetch<'a> {
    /// Fetches through `client`.
    pub fn new(client: &'a Client) -> Self {
        FacadeFetch { client }
    }
}

impl Fetch for FacadeFetch<'_> {
    async fn fetch_metadata(&mut self, file: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        match self.client.fetch_meta(file, limit).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(FetchError::NotFound),
            Err(Error::TooLarge { limit, .. }) => Err(FetchError::TooLarge { limit }),
            Err(err) => Err(FetchError::Other(Box::new(err))),
        }
    }

    async fn fetch_target(
        &mut self,
        entry: &TargetEntry,
        limit: u64,
    ) -> Result<Vec<u8>, FetchError> {
        if entry.size > limit {
            return Err(FetchError::TooLarge { limit });
        }
        let repository =
            facade_repository(entry).map_err(|err| FetchError::Other(Box::new(err)))?;
        match self
            .client
            .fetch_manifest(&repository, &entry.digest, entry.size)
            .await
        {
            Ok((bytes, _)) => Ok(bytes),
            Err(Error::Status { status: 404, .. }) => Err(FetchError::NotFound),
            Err(Error::TooLarge { limit, .. }) => Err(FetchError::TooLarge { limit }),
            Err(err) => Err(FetchError::Other(Box::new(err))),
        }
    }
}

// === impl MetadataSource ===

impl MetadataSource {
    /// A source for the device `config` describes: the trust anchor is read now, the
    /// trusted files live in `<state dir>/metadata`.
    pub fn from_config(config: &Config) -> Result<Self> {
        let anchor = fs_err::read(&config.trust_anchor)
            .map_err(Error::io("reading the trust anchor", &config.trust_anchor))?;
        Ok(MetadataSource {
            anchor,
            store_dir: metadata_dir(&config.state_dir),
            class: config.device.class.clone(),
            platform: config.device.platform.clone(),
            spki: crate::rollout::device_spki(&config.device.certificate)?,
            download_ahead: config.rollout.download_ahead,
            last_report: None,
        })
    }

    /// What the last successful update did.
    pub fn last_report(&self) -> Option<&UpdateReport> {
        self.last_report.as_ref()
    }

    /// Runs the workflow once and returns the matching trusted entries as pull targets.
    pub async fn update(&mut self, client: &Client) -> Result<Vec<PullTarget>> {
        let store = TrustedStore::open(&self.store_dir).map_err(metadata("opening"))?;
        // The trusted set is restored from the files every cycle: they are the only state
        // rollback protection rests on, and another process (an operator's `status`) may
        // read them in between.
        let mut updater = Updater::with_store(&self.anchor, store)
            .map_err(metadata("loading the trusted metadata"))?;
        let system_now = UnixTime::now();
        let report = updater
            // The workflow never lets the effective clock go below the latest known time,
            // so a device that booted in 1970 still refuses expired metadata.
            .update(&mut FacadeFetch::new(client), system_now)
            .await
            .map_err(metadata("updating the signed metadata from the facade"))?;
        info!(
            root = report.root_version,
            timestamp = report.timestamp_version,
            targets = report.targets_version,
            new_targets = report.targets_changed,
            "signed metadata is current"
        );
        self.last_report = Some(report);
        let trusted = updater.trusted();
        let Some(targets) = trusted.targets() else {
            return Ok(Vec::new());
        };
        // Rollout waves open by the same clock the targets' expiry was just checked at.
        let now = trusted.effective_time(system_now);
        targets
            .matching(&self.class, &self.platform)
            .map(|entry| {
                let mut target = pull_target(entry)?;
                target.rollout = entry.rollout.as_ref().map(|rollout| Gate {
                    rollout: rollout.clone(),
                    position: rollout::position(&self.spki, &entry.name),
                    now,
                    download_ahead: self.download_ahead,
                });
                Ok(target)
            })
            .collect()
    }
}

impl TargetSource for MetadataSource {
    async fn targets(&mut self, client: &Client) -> Result<Vec<PullTarget>> {
        self.update(client).await
    }

    fn targets_version(&self) -> Option<u64> {
        self.last_report.as_ref().map(|r| r.targets_version)
    }
}

/// `<state dir>/metadata`.
pub fn metadata_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(METADATA_DIR)
}

/// The pull target for a trusted entry, without its rollout (which needs the device's
/// identity and clock: [`MetadataSource`] adds it).
pub fn pull_target(entry: &TargetEntry) -> Result<PullTarget> {
    Ok(PullTarget {
        name: entry.name.to_string(),
        repository: facade_repository(entry)?,
        digest: entry.digest.clone(),
        size: entry.size,
        media_type: entry.media_type.clone(),
        rollout: None,
        apply: entry.apply,
    })
}

/// The repository on the facade for an entry's upstream repository:
/// `<registry path form>/<repository>` (`ghcr.io/org/app`, `127.0.0.1_5000/team/app`).
pub fn facade_repository(entry: &TargetEntry) -> Result<Repository> {
    let upstream = &entry.repository;
    let invalid = |reason: String| Error::InvalidName {
        what: "target repository",
        name: String::from(upstream.clone()),
        reason,
    };
    let registry = upstream
        .registry()
        .path_form()
        .ok_or_else(|| invalid("the facade cannot name an IPv6 registry".into()))?;
    Repository::parse(&format!("{registry}/{}", upstream.repository()))
        .map_err(|e| invalid(e.to_string()))
}

fn metadata(action: &'static str) -> impl FnOnce(MetadataError) -> Error {
    move |source| Error::Metadata { action, source }
}

#[cfg(test)]
mod tests;
