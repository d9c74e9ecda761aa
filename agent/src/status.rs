//! What `status` reports, read from the state directory's files alone: the trusted metadata
//! files (verified from the trust anchor), the links, the layouts, the blob folder and the
//! last-result file. It takes no lock and opens no index,
//! so it works while the service is running.

use std::path::{Path, PathBuf};

use meshanics_shared::Digest;
use meshanics_shared::metadata::{Role, TrustedSet, TrustedStore, UnixTime};
use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::rollout::WaveView;
use crate::store::artifacts::scan_layout_in;
use crate::store::{ArtifactState, LastResult, Pointers, last_result};

/// The device's state.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The platform manifests are chosen for.
    pub platform: String,
    /// The hardware class.
    pub device_class: String,
    /// The trusted signed metadata (`None` when it could not be read; see
    /// `metadata_problem`).
    pub metadata: Option<MetadataView>,
    /// Why the trusted metadata could not be read.
    pub metadata_problem: Option<String>,
    /// The applied artifact.
    pub current: Option<ArtifactView>,
    /// The one before it (what a rollback returns to).
    pub previous: Option<ArtifactView>,
    /// The cache.
    pub cache: CacheView,
    /// The last cycle's result.
    pub last_result: Option<LastResult>,
}

/// The trusted metadata: what the device would verify the next update against.
#[derive(Debug, Clone, Serialize)]
pub struct MetadataView {
    /// The trusted root (the anchor until a newer root was accepted).
    pub root: RoleView,
    /// The trusted timestamp, if one was accepted.
    pub timestamp: Option<RoleView>,
    /// The trusted targets, if accepted.
    pub targets: Option<RoleView>,
    /// The device's time now: the system clock, never below the offline-known nor the
    /// online-known time (RFC 3339). The root and targets expire against it; the timestamp
    /// against the system clock and the offline-known time alone (docs/metadata.md).
    pub effective_time: String,
    /// This device's rollout wave in each target for it that has one.
    pub rollouts: Vec<WaveView>,
}

/// One trusted role file.
#[derive(Debug, Clone, Serialize)]
pub struct RoleView {
    /// Its version.
    pub version: u64,
    /// When it expires (RFC 3339).
    pub expires: String,
    /// The same, in Unix seconds.
    pub expires_unix: u64,
    /// Whether it has expired against the clock the workflow checks it against (a device
    /// refuses to apply anything until fresh metadata arrives).
    pub expired: bool,
}

/// An applied artifact.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactView {
    /// Its layout's id.
    pub id: String,
    /// The target's name.
    pub name: String,
    /// The repository it came from.
    pub repository: String,
    /// The digest the target names.
    pub target_digest: Option<Digest>,
    /// The image manifest applied.
    pub manifest_digest: Option<Digest>,
    /// The OCI layout's folder.
    pub layout: PathBuf,
}

/// The cache's size.
#[derive(Debug, Clone, Serialize)]
pub struct CacheView {
    /// Committed blobs.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Partial downloads waiting to be resumed.
    pub partial_downloads: usize,
    /// Their bytes.
    pub partial_bytes: u64,
}

/// Reads the status of the device configured by `config`.
pub fn read(config: &Config) -> Result<Status> {
    let root = &config.state_dir;
    let pointers = Pointers::read_in(root)?;
    let (mut blobs, mut bytes) = (0, 0);
    for algorithm in meshanics_shared::Algorithm::ALL {
        let (count, size) = folder_totals(&root.join("cache/blobs").join(algorithm.name()))?;
        blobs += count;
        bytes += size;
    }
    let (partial_downloads, partial_bytes) = folder_totals(&root.join("cache/ingest"))?;
    let (metadata, metadata_problem) = match read_metadata(config, UnixTime::now()) {
        Ok(view) => (Some(view), None),
        Err(err) => (None, Some(err.to_string())),
    };
    Ok(Status {
        metadata,
        metadata_problem,
        platform: config.device.platform.to_string(),
        device_class: config.device.class.clone(),
        current: view(root, pointers.current.as_deref()),
        previous: view(root, pointers.previous.as_deref()),
        cache: CacheView {
            blobs,
            bytes,
            partial_downloads,
            partial_bytes,
        },
        last_result: last_result::read(root)?,
    })
}

/// The trusted metadata files in the state directory, verified from the trust anchor as
/// the next update would load them, with expiry judged at `system_now`.
pub fn read_metadata(config: &Config, system_now: UnixTime) -> Result<MetadataView> {
    let anchor = fs_err::read(&config.trust_anchor)
        .map_err(Error::io("reading the trust anchor", &config.trust_anchor))?;
    let metadata = |action| move |source| Error::Metadata { action, source };
    let dir = crate::metadata::metadata_dir(&config.state_dir);
    // A store that was never written is the anchor alone; do not create its folder here.
    let stored = if dir.exists() {
        TrustedStore::open(&dir)
            .and_then(|store| store.load())
            .map_err(metadata("reading the trusted metadata"))?
    } else {
        Default::default()
    };
    let trusted = TrustedSet::from_stored(&anchor, &stored)
        .map_err(metadata("verifying the trusted metadata"))?;
    let now = trusted.effective_time(system_now);
    let rollouts = match trusted.targets() {
        Some(targets) => crate::rollout::waves(config, targets, now)?,
        None => Vec::new(),
    };
    Ok(MetadataView {
        root: role_view(trusted.root(), now),
        timestamp: trusted
            .timestamp()
            .map(|t| role_view(t, trusted.timestamp_time(system_now))),
        targets: trusted.targets().map(|t| role_view(t, now)),
        effective_time: now.to_string(),
        rollouts,
    })
}

fn role_view<R: Role>(role: &R, now: UnixTime) -> RoleView {
    RoleView {
        version: role.version(),
        expires: role.expires().to_string(),
        expires_unix: role.expires().as_secs(),
        expired: role.is_expired(now),
    }
}

fn view(root: &Path, id: Option<&str>) -> Option<ArtifactView> {
    let id = id?;
    let artifacts = root.join("artifacts");
    let record = scan_layout_in(&artifacts, id, ArtifactState::Current).ok();
    Some(ArtifactView {
        id: id.to_owned(),
        name: record.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
        repository: record
            .as_ref()
            .map(|r| r.repository.clone())
            .unwrap_or_default(),
        target_digest: record.as_ref().map(|r| r.target_digest.clone()),
        manifest_digest: record.map(|r| r.manifest_digest),
        layout: artifacts.join(id),
    })
}

/// The number of files in a folder and their total size (a missing folder is empty).
fn folder_totals(dir: &Path) -> Result<(usize, u64)> {
    let entries = match fs_err::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(Error::io("listing", dir)(e)),
    };
    let mut count = 0;
    let mut bytes = 0;
    for entry in entries {
        let entry = entry.map_err(Error::io("listing", dir))?;
        let meta = entry
            .metadata()
            .map_err(Error::io("reading", entry.path()))?;
        if meta.is_file() {
            count += 1;
            bytes += meta.len();
        }
    }
    Ok((count, bytes))
}
