//! The check a publish must pass: a device that trusts the metadata published now would
//! accept the new set. It is run as a device would run its update (the shared
//! [`TrustedSet`] transitions, not a second implementation of them), starting from what is
//! published instead of from a device's store:
//!
//! - what is published is loaded like a device's stored state ([`TrustedSet::from_stored`]:
//!   the published roots walked from `1.root.cose`, the published timestamp and the targets
//!   it names), without expiry checks, so that an expired published timestamp (or targets)
//!   does not block the refresh that replaces it;
//! - the new roots must continue that chain (`N+1.root.cose`, signed by a threshold of the
//!   old root's root keys and of its own); nothing published: the set starts at
//!   `1.root.cose`, self-signed;
//! - the final root, the new timestamp and the targets it names must verify against the
//!   newest root and not be expired now;
//! - no version goes back: a timestamp or targets version below the published one is
//!   refused (as a device refuses it), unless a new root changed that role's keys, which
//!   makes devices drop the old file too (TUF's fast-forward recovery); a file name already
//!   published with other bytes is refused, and so is the same timestamp version with other
//!   bytes.

use std::collections::BTreeMap;

use meshanics_shared::metadata::store::StoredFiles;
use meshanics_shared::metadata::{
    Limits, MetadataError, Role as _, TIMESTAMP_FILE, TimestampUpdate, TrustedSet, UnixTime,
    root_file, targets_file,
};

use super::PublishError;
use crate::routes::MetaName;

/// The most files one publish may carry (a root chain this long is years of rotations).
pub const MAX_FILES: usize = 64;

/// What a publish stores, and what is served once it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The files to store, in the order a device must never see them out of: roots
    /// (oldest first), then targets, then the timestamp.
    pub(crate) writes: Vec<(String, Vec<u8>)>,
    /// The newest root version.
    pub(crate) root_version: u64,
    /// The targets version the timestamp names.
    pub(crate) targets_version: u64,
    /// The timestamp version.
    pub(crate) timestamp_version: u64,
    /// When the timestamp expires.
    pub(crate) timestamp_expires: UnixTime,
}

/// Checks `upload` against `current` (what is published, by file name) at `now`;
/// `max_file_bytes` is the facade's `max_meta_bytes`.
pub(crate) fn check(
    current: &BTreeMap<String, Vec<u8>>,
    upload: &BTreeMap<String, Vec<u8>>,
    now: UnixTime,
    max_file_bytes: u64,
) -> Result<Plan, PublishError> {
    check_names_and_sizes(upload, max_file_bytes)?;
    for (name, bytes) in upload {
        if name != TIMESTAMP_FILE && current.get(name).is_some_and(|old| old != bytes) {
            return Err(conflict(
                name,
                "is already published with other bytes (a published file never changes: sign the next version)",
            ));
        }
    }
    let uploaded_roots = versions(upload, root_file);
    let mut set = match published_set(current)? {
        Some(set) => set,
        None => {
            let file = root_file(1);
            let Some(bytes) = upload.get(&file) else {
                return Err(refused(
                    &file,
                    "is needed: nothing is published yet, so the set must start the chain at root version 1",
                ));
            };
            TrustedSet::from_anchor(bytes).map_err(|e| metadata(&file, &e))?
        }
    };
    for (version, bytes) in uploaded_roots.range(set.root().version() + 1..) {
        let file = root_file(*version);
        if *version != set.root().version() + 1 {
            return Err(refused(
                &file,
                &format!(
                    "does not continue the chain: {} is missing",
                    root_file(set.root().version() + 1)
                ),
            ));
        }
        set.update_root(&file, bytes)
            .map_err(|e| metadata(&file, &e))?;
    }
    let root_version = set.root().version();
    set.check_root_expiry(now)
        .map_err(|e| metadata(&root_file(root_version), &e))?;

    let Some(timestamp) = upload.get(TIMESTAMP_FILE) else {
        return Err(refused(
            TIMESTAMP_FILE,
            "is missing: every publish carries the timestamp (and the targets it names)",
        ));
    };
    let update = set
        .update_timestamp(TIMESTAMP_FILE, timestamp, now)
        .map_err(|e| metadata(TIMESTAMP_FILE, &e))?;
    if update == TimestampUpdate::Unchanged && current.get(TIMESTAMP_FILE) != Some(timestamp) {
        return Err(conflict(
            TIMESTAMP_FILE,
            "has the version published now with other bytes (sign the next version: meshctl timestamp refresh)",
        ));
    }
    let Some(meta) = set.timestamp().map(|t| t.targets().clone()) else {
        return Err(refused(TIMESTAMP_FILE, "was not accepted"));
    };
    let targets_name = targets_file(meta.version());
    if set.targets_wanted().is_some() {
        let Some(bytes) = upload
            .get(&targets_name)
            .or_else(|| current.get(&targets_name))
        else {
            return Err(refused(
                &targets_name,
                "is named by timestamp.cose but neither uploaded nor published",
            ));
        };
        set.update_targets(&targets_name, bytes, now)
            .map_err(|e| metadata(&targets_name, &e))?;
    } else {
        set.check_targets_expiry(now)
            .map_err(|e| metadata(&targets_name, &e))?;
    }
    if let Some(other) = versions(upload, targets_file)
        .keys()
        .map(|v| targets_file(*v))
        .find(|name| *name != targets_name)
    {
        return Err(refused(
            &other,
            &format!("is not the targets file timestamp.cose names ({targets_name})"),
        ));
    }

    let mut writes: Vec<(String, Vec<u8>)> = uploaded_roots
        .iter()
        .map(|(v, bytes)| (root_file(*v), (*bytes).clone()))
        .chain(
            upload
                .get(&targets_name)
                .map(|bytes| (targets_name.clone(), bytes.clone())),
        )
        .filter(|(name, _)| !current.contains_key(name))
        .collect();
    if current.get(TIMESTAMP_FILE) != Some(timestamp) {
        writes.push((TIMESTAMP_FILE.to_owned(), timestamp.clone()));
    }
    let (timestamp_version, timestamp_expires) = set
        .timestamp()
        .map(|t| (t.version(), t.expires()))
        .unwrap_or((0, UnixTime::from_secs(0)));
    Ok(Plan {
        writes,
        root_version,
        targets_version: meta.version(),
        timestamp_version,
        timestamp_expires,
    })
}

/// Every name must be one `/meta/` serves; every file within its cap (a device's own caps
/// for roots and the timestamp, `max_meta_bytes` for everything).
fn check_names_and_sizes(
    upload: &BTreeMap<String, Vec<u8>>,
    max_file_bytes: u64,
) -> Result<(), PublishError> {
    if upload.is_empty() {
        return Err(refused(TIMESTAMP_FILE, "is missing: nothing was uploaded"));
    }
    if upload.len() > MAX_FILES {
        return Err(PublishError::TooManyFiles {
            count: upload.len(),
            limit: MAX_FILES,
        });
    }
    let device = Limits::default();
    for (name, bytes) in upload {
        if MetaName::parse(name).is_none() {
            return Err(refused(
                name,
                "is not a metadata file name (N.root.cose, N.targets.cose, timestamp.cose)",
            ));
        }
        let limit = if name == TIMESTAMP_FILE {
            device.timestamp_max_size
        } else if name.ends_with(".root.cose") {
            device.root_max_size
        } else {
            max_file_bytes
        }
        .min(max_file_bytes);
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if size > limit {
            return Err(PublishError::TooLarge {
                file: name.clone(),
                size,
                limit,
            });
        }
    }
    Ok(())
}

/// What a device trusting the published files holds: `None` when no root is published.
fn published_set(current: &BTreeMap<String, Vec<u8>>) -> Result<Option<TrustedSet>, PublishError> {
    let Some(anchor) = current.get(&root_file(1)) else {
        return Ok(None);
    };
    let mut stored = StoredFiles {
        roots: versions(current, root_file)
            .into_iter()
            .filter(|(v, _)| *v > 1)
            .map(|(v, bytes)| (v, bytes.clone()))
            .collect(),
        timestamp: current.get(TIMESTAMP_FILE).cloned(),
        ..StoredFiles::default()
    };
    // The published targets are the ones the published timestamp names: read it first.
    let published = |stored: &StoredFiles| {
        TrustedSet::from_stored(anchor, stored).map_err(|e| PublishError::Published {
            reason: e.to_string(),
        })
    };
    let set = published(&stored)?;
    if let Some(name) = set.timestamp().map(|t| targets_file(t.targets().version())) {
        stored.targets = current.get(&name).cloned();
        return published(&stored).map(Some);
    }
    Ok(Some(set))
}

/// The files of `files` named `name_of(version)`, by version.
fn versions(
    files: &BTreeMap<String, Vec<u8>>,
    name_of: fn(u64) -> String,
) -> BTreeMap<u64, &Vec<u8>> {
    files
        .iter()
        .filter_map(|(name, bytes)| {
            let version = name.split_once('.')?.0.parse::<u64>().ok()?;
            (name_of(version) == *name).then_some((version, bytes))
        })
        .collect()
}

/// A verification failure of `file`: a rollback conflicts with what is published; anything
/// else makes the file unacceptable.
fn metadata(file: &str, error: &MetadataError) -> PublishError {
    // The error names the file itself; the refusal names it once.
    let text = error.to_string();
    let reason = text.strip_prefix(&format!("{file}: ")).unwrap_or(&text);
    match error {
        MetadataError::Rollback { .. } | MetadataError::TargetsRollback { .. } => {
            conflict(file, reason)
        }
        _ => refused(file, reason),
    }
}

fn refused(file: &str, reason: &str) -> PublishError {
    PublishError::Refused {
        file: file.to_owned(),
        reason: reason.to_owned(),
    }
}

fn conflict(file: &str, reason: &str) -> PublishError {
    PublishError::Conflict {
        file: file.to_owned(),
        reason: reason.to_owned(),
    }
}
