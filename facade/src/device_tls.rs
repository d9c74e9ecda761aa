//! The device listener's TLS configuration, reloadable while the facade runs.
//!
//! On SIGHUP, and when one of the `[tls]` files changes (looked at every
//! [`CHANGE_CHECK`]), every `[tls]` file is read again and a new rustls `ServerConfig` is
//! built; each handshake takes the configuration current when it starts, so a device a new
//! CRL revokes is refused from its next connection on, without a restart. Connections already
//! open keep the configuration they were made with. A reload that fails (a file missing or
//! half written, a CRL that does not parse, a key that does not match its certificate)
//! changes nothing: the previous configuration stays in force, and the error is logged with
//! the config key and the file.
//!
//! A whole new `ServerConfig` rather than a new client-certificate verifier inside the old
//! one: it comes with an empty session cache, so a device revoked by the new CRL cannot
//! resume a session verified under the old one (rustls does not verify a client certificate
//! again on resumption).
//!
//! Each CRL file's `nextUpdate` is read when it is loaded. A CRL past it is still enforced
//! (what it revokes stays revoked; refusing every device because the CRL's publisher is late
//! would take the whole fleet offline), but it is logged as a warning at start, at each
//! reload and when it expires while loaded, and shown by the metric `facade_crl_expired`.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use meshanics_shared::tls::{self, ServerFiles, TlsError};
use rustls::ServerConfig;
use tokio::signal::unix::Signal;
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::FromDer as _;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::config::ConfigError;
use crate::metrics::Metrics;

/// How often the `[tls]` files are looked at for a change.
pub const CHANGE_CHECK: Duration = Duration::from_secs(30);

/// The device-facing TLS configuration in force, and the files it is read from. Clones share
/// it: a reload through one is seen by all.
#[derive(Clone)]
pub struct DeviceTls {
    files: Arc<ServerFiles>,
    current: Arc<RwLock<Loaded>>,
}

/// One loaded configuration.
#[derive(Clone)]
struct Loaded {
    config: Arc<ServerConfig>,
    crls: Vec<CrlFile>,
    /// What the files looked like just before they were read.
    stamps: Vec<Option<Stamp>>,
}

/// A CRL file as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlFile {
    /// The file (as `tls.crls` names it).
    pub path: PathBuf,
    /// The earliest `nextUpdate` of the lists in it: when it is due to be replaced. `None`
    /// when none of them carries one.
    pub next_update: Option<SystemTime>,
}

/// What a file looked like when it was read: a change to any of these is a change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

// === impl DeviceTls ===

impl DeviceTls {
    /// Reads the `[tls]` files and builds the configuration. Each file is loaded on its own
    /// first, so that the error names the key of the bad one.
    pub fn load(files: ServerFiles) -> Result<DeviceTls, ConfigError> {
        let loaded = build(&files)?;
        Ok(DeviceTls {
            files: Arc::new(files),
            current: Arc::new(RwLock::new(loaded)),
        })
    }

    /// The files the configuration is read from.
    pub fn files(&self) -> &ServerFiles {
        &self.files
    }

    /// The configuration in force: what a handshake starting now uses.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.loaded().config
    }

    /// An acceptor for one connection, with the configuration in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config())
    }

    /// The CRL files in force, with their `nextUpdate`.
    pub fn crls(&self) -> Vec<CrlFile> {
        self.loaded().crls
    }

    /// Reads every file again and, if all of it loads, puts the new configuration in force
    /// and returns its CRL files. On an error nothing changes.
    pub fn reload(&self) -> Result<Vec<CrlFile>, ConfigError> {
        let loaded = build(&self.files)?;
        let crls = loaded.crls.clone();
        match self.current.write() {
            Ok(mut current) => *current = loaded,
            // A writer never panics while holding the lock (it only assigns); were it
            // poisoned all the same, the value inside is whole, so it is replaced.
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        Ok(crls)
    }

    /// Reloads on `hangup` (SIGHUP) and when a `[tls]` file changes (looked at every
    /// `check_every`), until `stop` completes. Each outcome is logged and counted in
    /// `metrics`, which also get the CRL files in force; an expired CRL is warned about at
    /// each reload, and once when it expires while loaded.
    pub async fn watch(
        self,
        metrics: Arc<Metrics>,
        mut hangup: Option<Signal>,
        check_every: Duration,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        // From the files as they were loaded: a change made before this task first runs is
        // a change too.
        let mut seen = self.loaded().stamps;
        let mut warned = warn_expired(&self.crls(), &BTreeSet::new());
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + check_every, check_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hung_up = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let reason = tokio::select! {
                () = &mut stop => return,
                _ = hung_up => "SIGHUP",
                _ = ticks.tick() => {
                    if stamps(&self.files) == seen {
                        warned = warn_expired(&self.crls(), &warned);
                        continue;
                    }
                    "a [tls] file changed"
                }
            };
            // What the files looked like before they are read: a write during the reload is
            // a change the next look sees, and a reload that failed is tried again on the
            // next change (or SIGHUP), not at every look.
            seen = stamps(&self.files);
            match self.reload() {
                Ok(crls) => {
                    metrics.tls_reload(true);
                    metrics.set_crls(&crls);
                    tracing::info!(reason, crls = crls.len(), "reloaded the device TLS files");
                    warned = warn_expired(&crls, &BTreeSet::new());
                }
                Err(error) => {
                    metrics.tls_reload(false);
                    tracing::error!(
                        reason,
                        %error,
                        "reloading the device TLS files failed; the previous configuration stays in force"
                    );
                }
            }
        }
    }

    fn loaded(&self) -> Loaded {
        match self.current.read() {
            Ok(loaded) => loaded.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl fmt::Debug for DeviceTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTls")
            .field("files", &self.files)
            .field("crls", &self.crls())
            .finish_non_exhaustive()
    }
}

// === impl CrlFile ===

impl CrlFile {
    /// Whether the file is past its `nextUpdate` at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.next_update.is_some_and(|next| next <= now)
    }
}

/// Loads each file on its own, then the combination (a key that does not match its
/// certificate, a CRL that no device CA issued).
fn build(files: &ServerFiles) -> Result<Loaded, ConfigError> {
    let stamps = stamps(files);
    let at = |key| move |source| ConfigError::Tls { key, source };
    let chain = tls::load_certificates(&files.certificate).map_err(at("tls.certificate"))?;
    let key = tls::load_private_key(&files.private_key).map_err(at("tls.private_key"))?;
    let roots = tls::load_ca_bundle(&files.client_ca).map_err(at("tls.device_ca"))?;
    let mut crls = Vec::new();
    let mut crl_files = Vec::new();
    for path in &files.crls {
        let loaded = tls::load_crl_file(path).map_err(at("tls.crls"))?;
        crl_files.push(CrlFile {
            path: path.clone(),
            next_update: loaded.iter().filter_map(|crl| next_update(crl)).min(),
        });
        crls.extend(loaded);
    }
    let crl_given = !files.crls.is_empty();
    let config = tls::server_config_from(chain, key, roots, crls).map_err(|source| {
        let key = match &source {
            TlsError::Verifier(_) if crl_given => "tls.crls",
            TlsError::Verifier(_) => "tls.device_ca",
            _ => "tls.private_key",
        };
        ConfigError::Tls { key, source }
    })?;
    Ok(Loaded {
        config: Arc::new(config),
        crls: crl_files,
        stamps,
    })
}

/// A CRL's `nextUpdate`; `None` when it has none (or, never for one the loader accepted,
/// when x509-parser cannot read it).
fn next_update(der: &[u8]) -> Option<SystemTime> {
    let (_, crl) = CertificateRevocationList::from_der(der).ok()?;
    let seconds = crl.next_update()?.timestamp();
    match u64::try_from(seconds) {
        Ok(after) => SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(after)),
        // Before 1970: long expired.
        Err(_) => Some(SystemTime::UNIX_EPOCH),
    }
}

/// Logs a warning for each expired CRL file not in `already`; returns the expired ones.
fn warn_expired(crls: &[CrlFile], already: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    let now = SystemTime::now();
    let mut expired = BTreeSet::new();
    for crl in crls.iter().filter(|crl| crl.is_expired(now)) {
        if !already.contains(&crl.path) {
            let next_update = crl
                .next_update
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            tracing::warn!(
                file = %crl.path.display(),
                next_update,
                "a device CRL is past its nextUpdate; it is still enforced, but devices revoked since it was published are let in until a newer one is loaded (replace the file, or send SIGHUP)"
            );
        }
        expired.insert(crl.path.clone());
    }
    expired
}

/// The stamp of every `[tls]` file (`None` for one that cannot be read).
fn stamps(files: &ServerFiles) -> Vec<Option<Stamp>> {
    [&files.certificate, &files.private_key, &files.client_ca]
        .into_iter()
        .chain(&files.crls)
        .map(|path| stamp(path))
        .collect()
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = fs_err::metadata(path).ok()?;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
    })
}
