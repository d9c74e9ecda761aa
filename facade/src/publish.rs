//! The signed update metadata the facade serves under `/meta/<file>`, and publishing it
//! through the operator API (`POST /v1/metadata`, `meshctl publish DIR`).
//!
//! A publish is checked before anything is stored ([`check`]): a device that trusts what is
//! published now must accept the new set. Then it is stored, all of it or none from a
//! device's view:
//!
//! - files backend: into `metadata_dir`, roots first, then the targets, the timestamp last
//!   (each file atomically), so a device that reads the new timestamp finds what it names;
//!   an audit line in `<state>/audit.log`. Without `metadata_dir` in the config, a publish is
//!   refused naming the setting.
//! - PostgreSQL: rows of `meshanics_metadata`, written in one transaction with the audit row
//!   (action `publish`) and a notification; every replica holds the files in memory (loaded
//!   at start, refreshed within a second of a change and at each resync, fetching only the
//!   rows that changed) and serves `/meta/` from there. `metadata_dir` is not read with this
//!   backend (a warning at start says so): the database is the one place replicas share.
//!
//! Publishes on one replica run one at a time; replicas on one database are serialized by
//! an advisory lock held for the transaction, and each checks against the rows it read
//! under that lock, never against its memory.
//!
//! An expired published timestamp (or targets) does not block a publish: what is published
//! is loaded as a device's stored state is, without expiry checks, so the refresh that
//! replaces it goes through. What is uploaded must not be expired.

mod check;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use meshanics_operator_api::PublishResponse;
use meshanics_shared::fs::write_atomic_with_mode;
use meshanics_shared::metadata::{TIMESTAMP_FILE, UnixTime, root_file, targets_file};

pub use check::MAX_FILES;

use crate::config::Config;
use crate::connections::postgres::{Actor, AuditEntry};
use crate::connections::{ConnectionError, Store};
use crate::routes::MetaName;

/// The published metadata: where `/meta/` reads it, and how a publish stores it.
pub struct Metadata {
    /// The files backend's folder (`metadata_dir`), if configured.
    dir: Option<PathBuf>,
    /// The state store: the database backend keeps the files, the files backend the audit
    /// log. `None`: no master key, so no operator API; `/meta/` serves the folder.
    store: Option<Arc<Store>>,
    /// `max_meta_bytes`: the cap on one file, served or published.
    max_file_bytes: u64,
    /// One publish at a time on this replica.
    lock: Mutex<()>,
}

/// Why a publish was refused or failed. Nothing was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A file does not verify, or the set is incomplete (422).
    #[error("refused {file}: {reason}")]
    Refused {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// A file conflicts with what is published: a version going back, or a published name
    /// with other bytes (409).
    #[error("refused {file}: {reason}")]
    Conflict {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// A file is over its cap (413).
    #[error("refused {file}: {size} bytes, over the cap of {limit}")]
    TooLarge {
        /// The file.
        file: String,
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// Too many files in one publish (413).
    #[error("refused: {count} files in one publish, over the cap of {limit}")]
    TooManyFiles {
        /// How many.
        count: usize,
        /// The cap.
        limit: usize,
    },
    /// The files backend has nowhere to store.
    #[error(
        "publishing needs `metadata_dir` in the facade's config: the files backend stores the published metadata there"
    )]
    NoFolder,
    /// What is published now does not load (an anchor that does not verify, an unreadable
    /// file).
    #[error("the metadata published now does not load: {reason}")]
    Published {
        /// Why.
        reason: String,
    },
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state database (or the audit log) failed.
    #[error(transparent)]
    Store(#[from] ConnectionError),
}

// === impl Metadata ===

impl Metadata {
    /// The metadata as `config` and the state `store` (when the operator API runs) say.
    pub fn new(config: &Config, store: Option<Arc<Store>>) -> Self {
        if let (Some(dir), Some(store)) = (&config.metadata_dir, &store)
            && store.uses_database()
        {
            tracing::warn!(
                metadata_dir = %dir.display(),
                "config key `metadata_dir` is not read with the PostgreSQL state backend: \
                 /meta/ serves what `meshctl publish` stored in the database"
            );
        }
        Metadata::from_parts(
            config.metadata_dir.clone(),
            store,
            config.limits.max_meta_bytes,
        )
    }

    /// The metadata in `dir` (files backend) or `store`'s database, files capped at
    /// `max_file_bytes` (`max_meta_bytes`).
    pub fn from_parts(
        dir: Option<PathBuf>,
        store: Option<Arc<Store>>,
        max_file_bytes: u64,
    ) -> Self {
        Metadata {
            dir,
            store,
            max_file_bytes,
            lock: Mutex::new(()),
        }
    }

    /// The folder of `config` only, with no operator API (nothing can be published).
    pub fn folder(config: &Config) -> Self {
        Metadata::new(config, None)
    }

    /// The folder `/meta/` serves, when it serves one (the files backend).
    pub fn dir(&self) -> Option<&Path> {
        match self.database() {
            Some(_) => None,
            None => self.dir.as_deref(),
        }
    }

    /// A file held in memory for `/meta/` (the PostgreSQL backend): `Some(None)` when it is
    /// not published, `None` when this backend serves a folder instead.
    pub fn in_memory(&self, name: &MetaName) -> Option<Option<Bytes>> {
        self.database()
            .map(|store| store.published_file(name.as_str()))
    }

    /// The largest `POST /v1/metadata` body: every file at its cap, base64, and room for
    /// the JSON around them.
    pub fn max_request_bytes(&self) -> usize {
        let limits = meshanics_shared::metadata::Limits::default();
        let files = self
            .max_file_bytes
            .saturating_add(limits.timestamp_max_size)
            .saturating_add(
                limits
                    .root_max_size
                    .saturating_mul(u64::try_from(MAX_FILES).unwrap_or(u64::MAX)),
            );
        let encoded = files.saturating_mul(4) / 3;
        usize::try_from(encoded.saturating_add(64 * 1024)).unwrap_or(usize::MAX)
    }

    /// Checks `files` (by name) against what is published and stores them, audited as done
    /// by `actor`. Blocks (file writes, the database): run it off the async workers.
    pub fn publish(
        &self,
        files: BTreeMap<String, Vec<u8>>,
        actor: &Actor,
    ) -> Result<PublishResponse, PublishError> {
        let now = UnixTime::now();
        let max = self.max_file_bytes;
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let operator = actor.to_string();
        if let Some(store) = self.database() {
            let plan = store.publish_in_database(move |current| {
                let plan = check::check(current, &files, now, max)?;
                let audit = audit_entry(&plan, operator);
                let writes = plan.writes.clone();
                Ok::<_, PublishError>((plan, writes, audit))
            })??;
            let response = response(&plan);
            log(&response, actor);
            return Ok(response);
        }
        let dir = self.dir.as_deref().ok_or(PublishError::NoFolder)?;
        let current = read_folder(dir, max)?;
        let plan = check::check(&current, &files, now, max)?;
        for (name, bytes) in &plan.writes {
            let path = dir.join(name);
            // Public metadata, read by the facade and by whoever mirrors it.
            write_atomic_with_mode(&path, bytes, 0o644).map_err(|e| PublishError::Io {
                action: e.step.as_str(),
                path: e.path,
                source: e.source,
            })?;
        }
        if let (Some(store), Some(audit)) = (&self.store, audit_entry(&plan, operator)) {
            store.audit_file(&audit)?;
        }
        let response = response(&plan);
        log(&response, actor);
        Ok(response)
    }

    /// The store, when it keeps the metadata in the database.
    fn database(&self) -> Option<&Store> {
        self.store.as_deref().filter(|store| store.uses_database())
    }
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("dir", &self.dir)
            .field("database", &self.database().is_some())
            .finish_non_exhaustive()
    }
}

/// The published files of the folder `dir` (those `/meta/` would serve), by name.
fn read_folder(dir: &Path, max: u64) -> Result<BTreeMap<String, Vec<u8>>, PublishError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| PublishError::Io {
            action,
            path,
            source,
        }
    };
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io("listing", dir))? {
        let entry = entry.map_err(io("listing", dir))?;
        let Some(name) = entry.file_name().to_str().and_then(MetaName::parse) else {
            continue;
        };
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        if !meta.file_type().is_file() {
            continue;
        }
        if meta.len() > max {
            return Err(PublishError::Published {
                reason: format!(
                    "{} is {} bytes, over max_meta_bytes ({max})",
                    path.display(),
                    meta.len()
                ),
            });
        }
        let bytes = std::fs::read(&path).map_err(io("reading", &path))?;
        files.insert(name.as_str().to_owned(), bytes);
    }
    Ok(files)
}

/// The audit entry of a publish that stores something: `publish` of
/// `root 2, targets 7, timestamp 12` (the roots only when new ones came).
fn audit_entry(plan: &check::Plan, operator: String) -> Option<AuditEntry> {
    if plan.writes.is_empty() {
        return None;
    }
    let roots: Vec<&str> = plan
        .writes
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| name.ends_with(".root.cose"))
        .collect();
    let mut subject = match roots.as_slice() {
        [] => String::new(),
        [_] => format!("root {}, ", plan.root_version),
        [first, ..] => format!(
            "roots {}-{}, ",
            first.split('.').next().unwrap_or_default(),
            plan.root_version
        ),
    };
    subject.push_str(&format!(
        "targets {}, timestamp {}",
        plan.targets_version, plan.timestamp_version
    ));
    Some(AuditEntry {
        operator,
        action: "publish",
        subject,
    })
}

fn response(plan: &check::Plan) -> PublishResponse {
    PublishResponse {
        root_version: plan.root_version,
        targets_version: plan.targets_version,
        timestamp_version: plan.timestamp_version,
        timestamp_expires: plan.timestamp_expires.as_secs(),
        written: plan.writes.iter().map(|(name, _)| name.clone()).collect(),
    }
}

fn log(response: &PublishResponse, actor: &Actor) {
    tracing::info!(
        root = %root_file(response.root_version),
        targets = %targets_file(response.targets_version),
        timestamp = %TIMESTAMP_FILE,
        timestamp_version = response.timestamp_version,
        written = response.written.len(),
        %actor,
        "operator published metadata"
    );
}

#[cfg(test)]
mod tests;
