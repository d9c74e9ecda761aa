//! A signing operator for end-to-end tests: one key per role, and the signed metadata files
//! (`1.root.cose`, `N.targets.cose`, `timestamp.cose`) written into a folder the facade
//! serves, with the same library functions `meshctl` signs with. Tests choose issue and
//! expiry times, so a stale timestamp is one call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshanics_shared::Descriptor;
use meshanics_shared::fs::write_atomic;
use meshanics_shared::metadata::{
    RoleKeys, Roles, Root, Selectors, SigningKey, TIMESTAMP_FILE, TargetEntry, TargetName, Targets,
    TargetsMeta, Timestamp, UnixTime, UpstreamRepository, root_file, sign, targets_file,
};

use crate::FixtureError;

const DAY: Duration = Duration::from_secs(86_400);

/// An operator's keys and the repository folder they sign into.
#[derive(Debug)]
pub struct Release {
    dir: PathBuf,
    targets_key: SigningKey,
    timestamp_key: SigningKey,
    anchor: Vec<u8>,
    targets_version: u64,
    timestamp_version: u64,
    targets_bytes: Vec<u8>,
}

// === impl Release ===

impl Release {
    /// Generates the keys and writes root version 1 (valid a year) into `dir`.
    pub fn init(dir: &Path) -> Result<Self, FixtureError> {
        let invalid = |e: &dyn std::fmt::Display| FixtureError::Invalid(e.to_string());
        let root_key = SigningKey::generate().map_err(|e| invalid(&e))?;
        let targets_key = SigningKey::generate().map_err(|e| invalid(&e))?;
        let timestamp_key = SigningKey::generate().map_err(|e| invalid(&e))?;
        let now = UnixTime::now();
        let one = |key: &SigningKey| RoleKeys::new(vec![key.id()], 1);
        let root = Root::new(
            1,
            now,
            now.saturating_add(365 * DAY),
            &[
                root_key.public(),
                targets_key.public(),
                timestamp_key.public(),
            ],
            Roles {
                root: one(&root_key),
                targets: one(&targets_key),
                timestamp: one(&timestamp_key),
            },
        );
        let anchor = sign(&root, &[&root_key]).map_err(|e| invalid(&e))?;
        let release = Release {
            dir: dir.to_owned(),
            targets_key,
            timestamp_key,
            anchor,
            targets_version: 0,
            timestamp_version: 0,
            targets_bytes: Vec::new(),
        };
        release.write(&root_file(1), &release.anchor)?;
        Ok(release)
    }

    /// The signed root version 1: a device's trust anchor.
    pub fn anchor(&self) -> &[u8] {
        &self.anchor
    }

    /// The repository folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Signs the next targets version with `entries` (valid a week) and a timestamp naming
    /// it (valid a day).
    pub fn publish(&mut self, entries: Vec<TargetEntry>) -> Result<(), FixtureError> {
        let invalid = |e: &dyn std::fmt::Display| FixtureError::Invalid(e.to_string());
        let now = UnixTime::now();
        self.targets_version += 1;
        let targets = Targets::new(
            self.targets_version,
            now,
            now.saturating_add(7 * DAY),
            entries,
        );
        self.targets_bytes = sign(&targets, &[&self.targets_key]).map_err(|e| invalid(&e))?;
        self.write(&targets_file(self.targets_version), &self.targets_bytes)?;
        self.timestamp(now, now.saturating_add(DAY))
    }

    /// Signs the next timestamp version for the current targets, issued and expiring when
    /// the test says (an expiry in the past makes a stale timestamp).
    pub fn timestamp(&mut self, issued: UnixTime, expires: UnixTime) -> Result<(), FixtureError> {
        let invalid = |e: &dyn std::fmt::Display| FixtureError::Invalid(e.to_string());
        self.timestamp_version += 1;
        let timestamp = Timestamp::new(
            self.timestamp_version,
            issued,
            expires,
            TargetsMeta::new(self.targets_version, &self.targets_bytes),
        );
        let bytes = sign(&timestamp, &[&self.timestamp_key]).map_err(|e| invalid(&e))?;
        self.write(TIMESTAMP_FILE, &bytes)
    }

    /// Signs a stale timestamp for the current targets: issued two days ago, expired yesterday.
    pub fn stale_timestamp(&mut self) -> Result<(), FixtureError> {
        let now = UnixTime::now().as_secs();
        let days_ago = |days: u64| UnixTime::from_secs(now.saturating_sub(days * DAY.as_secs()));
        self.timestamp(days_ago(2), days_ago(1))
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), FixtureError> {
        // Renamed into place so the facade never serves half a file.
        write_atomic(&self.dir.join(name), bytes).map_err(|e| FixtureError::Io {
            action: e.step.as_str(),
            path: e.path,
            source: e.source,
        })
    }
}

/// A target entry for `descriptor` (a manifest or index) in `upstream` (`host:port/team/app`),
/// with optional hardware-class and platform selectors.
pub fn entry(
    name: &str,
    upstream: &str,
    descriptor: &Descriptor,
    hardware_class: Option<&str>,
) -> Result<TargetEntry, FixtureError> {
    Ok(TargetEntry {
        name: TargetName::parse(name).map_err(|e| FixtureError::Invalid(e.to_string()))?,
        repository: UpstreamRepository::parse(upstream)
            .map_err(|e| FixtureError::Invalid(e.to_string()))?,
        digest: descriptor.digest.clone(),
        size: descriptor.size,
        media_type: descriptor.media_type.clone(),
        selectors: Selectors {
            hardware_class: hardware_class.map(str::to_owned),
            platform: None,
        },
        custom: BTreeMap::new(),
        rollout: None,
        apply: None,
    })
}
