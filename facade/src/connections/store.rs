//! The connection store: one JSON file per connection in `<state>/connections/`.
//!
//! Every record is opened when the store opens (a wrong master key, or a record altered
//! without it, stops the facade at start instead of failing device requests one by one), and
//! its opened credentials are kept in memory for as long as the connection exists: a device
//! request never unseals anything. Records of the first format are migrated then, once
//! ([`load`]).

mod load;
mod published;
mod sync;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use meshanics_operator_api::{AuditRecord, ConnectionView, ProviderKind};
use meshanics_shared::fs::{FsError, sync_dir, write_atomic_with_mode};
use meshanics_shared::reference::{ReferenceError, Registry};

use super::pasted;
use super::postgres::{Actor, AuditEntry, Database, Write};
use super::record::{ConnectionCredentials, NewConnection, StoredRecord};
use crate::cloud::ecr::EcrRole;
use crate::cloud::gcp::ServiceAccountKey;
use crate::registry_client::{InvalidStorageHost, StorageHost};
use crate::seal::{MasterKey, SealError};

/// The connections folder inside the facade's state dir.
pub(super) const CONNECTIONS_DIR: &str = "connections";

/// The files backend's audit log, in the state dir.
pub const AUDIT_LOG: &str = "audit.log";

/// What the store calls when a connection is removed (to drop clients and cached tokens).
type RemovalHook = Box<dyn Fn(&Registry) + Send + Sync>;

/// The connection store.
pub struct Store {
    /// The files backend's folder (`<state>/connections`); with PostgreSQL, where the files
    /// backend would keep it (unused).
    dir: PathBuf,
    /// The PostgreSQL backend, when configured: the records' home, the files unused.
    database: Option<Database>,
    key: MasterKey,
    records: RwLock<BTreeMap<Registry, Entry>>,
    next_generation: AtomicU64,
    on_remove: RwLock<Vec<RemovalHook>>,
    /// The PostgreSQL backend's published metadata, by file name (empty for files).
    published: RwLock<BTreeMap<String, published::PublishedFile>>,
}

/// A record and its credentials, opened once.
#[derive(Debug)]
struct Entry {
    record: StoredRecord,
    credentials: Arc<ConnectionCredentials>,
    generation: u64,
}

/// A connection opened for use by the facade (credentials in memory).
#[derive(Debug, Clone)]
pub struct Connection {
    /// The registry.
    pub registry: Registry,
    /// Which connection this is: every add (and every start of the facade) gives a new
    /// generation, an approval keeps it. Clients and cloud tokens are kept per generation,
    /// so a registry removed and connected again with other credentials never gets the old
    /// connection's.
    pub generation: u64,
    /// Its credentials, opened once when the store loaded or added the connection.
    pub credentials: Arc<ConnectionCredentials>,
    /// Plain HTTP upstream.
    pub plain_http: bool,
    /// Its own CA bundle (PEM), if any.
    pub ca_pem: Option<String>,
    /// Hosts its redirects may lead to even on a private address.
    pub storage_hosts: Vec<StorageHost>,
    /// Whether it is approved for device traffic.
    pub approved: bool,
}

/// Why a connection operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The registry given is not a registry host or URL.
    #[error(transparent)]
    InvalidRegistry(#[from] ReferenceError),
    /// No connection for this registry.
    #[error("no connection for registry {host}")]
    NotFound {
        /// The registry.
        host: String,
    },
    /// The registry is already connected.
    #[error("registry {host} is already connected (remove it first to change its credentials)")]
    Exists {
        /// The registry.
        host: String,
    },
    /// The credentials given are incomplete or malformed.
    #[error("invalid credentials for {host}: {reason}")]
    InvalidCredentials {
        /// The registry.
        host: String,
        /// What is wrong.
        reason: String,
    },
    /// A storage host given (or stored) is not `HOST` or `HOST:PORT`.
    #[error(transparent)]
    InvalidStorageHost(#[from] InvalidStorageHost),
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
    /// A stored record is unreadable.
    #[error("connection record {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Sealing or opening a secret failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// A stored record does not open under this master key: it was altered (a field changed
    /// without the key), moved from another host, or sealed under another master key.
    #[error("connection record {path}: {source}")]
    Unopenable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SealError,
    },
    /// The state database failed or could not be reached: an operator write did not happen.
    #[error("{action} the state database ({database}): {reason}")]
    Database {
        /// What was being done.
        action: &'static str,
        /// Which database (its URL, without a password).
        database: String,
        /// Why.
        reason: String,
    },
    /// A record in the old format appeared after the store was migrated to the current one:
    /// it was restored or planted, and is not trusted.
    #[error(
        "connection record {path} is in the old format, which this store no longer accepts (it was migrated): remove it and connect {host} again"
    )]
    Legacy {
        /// The file.
        path: PathBuf,
        /// The host it names.
        host: String,
    },
}

// === impl Store ===

impl Store {
    /// Opens (creating if needed) the store under `state_dir` and every record in it,
    /// migrating records of the first format unless the store was already migrated.
    pub fn open(state_dir: &Path, key: MasterKey) -> Result<Self, ConnectionError> {
        let dir = state_dir.join(CONNECTIONS_DIR);
        create_private_dir(&dir)?;
        let store = Store {
            dir,
            database: None,
            key,
            records: RwLock::new(BTreeMap::new()),
            next_generation: AtomicU64::new(1),
            on_remove: RwLock::new(Vec::new()),
            published: RwLock::new(BTreeMap::new()),
        };
        let records = store.load()?;
        *store.records.write().unwrap_or_else(|p| p.into_inner()) = records;
        Ok(store)
    }

    /// Opens the store in the PostgreSQL database `settings` name: migrates its schema, opens
    /// every record in it under `key`, and follows the changes other replicas make (see
    /// [`super::postgres`]). `state_dir` is where the files-backend audit log would be (unused).
    pub fn open_postgres(
        state_dir: &Path,
        settings: &crate::config::PostgresConfig,
        key: MasterKey,
    ) -> Result<Arc<Self>, ConnectionError> {
        let (database, rows) = Database::open(settings)?;
        let store = Store {
            dir: state_dir.join(CONNECTIONS_DIR),
            database: Some(database),
            key,
            records: RwLock::new(BTreeMap::new()),
            next_generation: AtomicU64::new(1),
            on_remove: RwLock::new(Vec::new()),
            published: RwLock::new(BTreeMap::new()),
        };
        let mut records = BTreeMap::new();
        for (host, json) in rows {
            let (registry, entry) = store.open_row(&host, &json)?;
            records.insert(registry, entry);
        }
        *store.records.write().unwrap_or_else(|p| p.into_inner()) = records;
        if let Some(database) = &store.database {
            store.apply_published(database.load_published(BTreeMap::new())?);
        }
        let store = Arc::new(store);
        if let Some(database) = &store.database {
            database.follow(settings, &store)?;
        }
        Ok(store)
    }

    /// Whether the records in memory may be behind the state database: its last reload
    /// failed (always false for the files backend).
    pub fn stale(&self) -> bool {
        self.database.as_ref().is_some_and(Database::stale)
    }

    /// Calls `hook` with the registry whenever a connection is removed.
    pub fn on_remove(&self, hook: impl Fn(&Registry) + Send + Sync + 'static) {
        let mut hooks = self.on_remove.write().unwrap_or_else(|p| p.into_inner());
        hooks.push(Box::new(hook));
    }

    /// Connects a registry. Anonymous connections start unapproved; others are approved.
    pub fn add(
        &self,
        new: NewConnection,
        now: SystemTime,
    ) -> Result<ConnectionView, ConnectionError> {
        self.add_by(new, now, &Actor::default())
    }

    /// [`Store::add`], audited as done by `actor`.
    pub fn add_by(
        &self,
        new: NewConnection,
        now: SystemTime,
        actor: &Actor,
    ) -> Result<ConnectionView, ConnectionError> {
        let registry = pasted::registry(&new.registry)?;
        let host = registry.as_str().to_owned();
        let invalid = |reason: &str| ConnectionError::InvalidCredentials {
            host: host.clone(),
            reason: reason.to_owned(),
        };
        let username = match &new.credentials {
            ConnectionCredentials::Anonymous => None,
            ConnectionCredentials::Static { username, token } => {
                if username.is_empty() || token.is_empty() {
                    return Err(invalid("a static connection needs a username and a token"));
                }
                Some(username.clone())
            }
            ConnectionCredentials::Gcp { key_json } => {
                let key =
                    ServiceAccountKey::parse(key_json).map_err(|e| invalid(&e.to_string()))?;
                Some(key.client_email().to_owned())
            }
            ConnectionCredentials::Ecr(role) => {
                validate_role(role).map_err(&invalid)?;
                Some(role.role_arn.clone())
            }
        };
        let storage_hosts = new
            .storage_hosts
            .iter()
            .map(|text| text.parse::<StorageHost>().map(|host| host.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let kind = new.credentials.kind();
        let credentials = Arc::new(new.credentials);
        let mut record = StoredRecord {
            host: host.clone(),
            provider: kind,
            username,
            sealed: None,
            plain_http: new.plain_http,
            ca_pem: new.ca_pem,
            storage_hosts,
            connected_by: new.connected_by,
            connected_at: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            approved: kind != ProviderKind::Anonymous,
        };
        self.seal(&mut record, &credentials)?;
        let audit = AuditEntry {
            operator: format!("{} ({actor})", record.connected_by),
            action: "connect",
            subject: host.clone(),
        };
        if let Some(database) = &self.database {
            // The database decides who connected a registry first; the lock is not held
            // while waiting for it.
            if !database.write(
                Write::Insert {
                    host: host.clone(),
                    record: record_json(&record)?,
                },
                audit.clone(),
            )? {
                return Err(ConnectionError::Exists { host });
            }
        }
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        if self.database.is_none() {
            if records.contains_key(&registry) {
                return Err(ConnectionError::Exists { host });
            }
            self.write(&registry, &record)?;
            self.audit_file(&audit)?;
        }
        let view = record.view();
        records.insert(
            registry,
            Entry {
                record,
                credentials,
                generation: self.next_generation(),
            },
        );
        Ok(view)
    }

    /// Every connection, sorted by host.
    pub fn list(&self) -> Vec<ConnectionView> {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        records.values().map(|entry| entry.record.view()).collect()
    }

    /// One connection, by host or URL.
    pub fn show(&self, registry: &str) -> Result<ConnectionView, ConnectionError> {
        let registry = pasted::registry(registry)?;
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        records
            .get(&registry)
            .map(|entry| entry.record.view())
            .ok_or_else(|| not_found(&registry))
    }

    /// Approves a connection for device traffic.
    pub fn approve(&self, registry: &str) -> Result<ConnectionView, ConnectionError> {
        self.approve_by(registry, &Actor::default())
    }

    /// [`Store::approve`], audited as done by `actor`.
    pub fn approve_by(
        &self,
        registry: &str,
        actor: &Actor,
    ) -> Result<ConnectionView, ConnectionError> {
        self.set_approval(registry, true, actor)
    }

    /// Withdraws a connection's approval: the facade refuses its device traffic at once,
    /// cached content included (every replica on the same database within a second), while
    /// its record and credentials stay for the operator to browse or approve again.
    pub fn unapprove(&self, registry: &str) -> Result<ConnectionView, ConnectionError> {
        self.unapprove_by(registry, &Actor::default())
    }

    /// [`Store::unapprove`], audited as done by `actor`.
    pub fn unapprove_by(
        &self,
        registry: &str,
        actor: &Actor,
    ) -> Result<ConnectionView, ConnectionError> {
        self.set_approval(registry, false, actor)
    }

    /// Sets a connection's approval (re-sealing its record, whose approval is authenticated),
    /// audited as `approve` or `unapprove` by `actor`.
    fn set_approval(
        &self,
        registry: &str,
        approved: bool,
        actor: &Actor,
    ) -> Result<ConnectionView, ConnectionError> {
        let registry = pasted::registry(registry)?;
        let audit = AuditEntry {
            operator: actor.to_string(),
            action: if approved { "approve" } else { "unapprove" },
            subject: registry.as_str().to_owned(),
        };
        if let Some(database) = &self.database {
            let (old, credentials) = {
                let records = self.records.read().unwrap_or_else(|p| p.into_inner());
                let entry = records.get(&registry).ok_or_else(|| not_found(&registry))?;
                (entry.record.clone(), entry.credentials.clone())
            };
            let mut updated = old.clone();
            updated.approved = approved;
            self.seal(&mut updated, &credentials)?;
            let change = Write::Approval {
                host: registry.as_str().to_owned(),
                old: record_json(&old)?,
                record: record_json(&updated)?,
                approved,
            };
            if !database.write(change, audit)? {
                return Err(not_found(&registry));
            }
            let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = records.get_mut(&registry)
                && entry.record == old
            {
                entry.record = updated.clone();
            }
            return Ok(updated.view());
        }
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        let entry = records
            .get_mut(&registry)
            .ok_or_else(|| not_found(&registry))?;
        let mut updated = entry.record.clone();
        updated.approved = approved;
        self.seal(&mut updated, &entry.credentials)?;
        self.write(&registry, &updated)?;
        self.audit_file(&audit)?;
        entry.record = updated;
        Ok(entry.record.view())
    }

    /// Removes a connection; the facade stops proxying it at once (and every replica
    /// on the same database within a second).
    pub fn remove(&self, registry: &str) -> Result<ConnectionView, ConnectionError> {
        self.remove_by(registry, &Actor::default())
    }

    /// [`Store::remove`], audited as done by `actor`.
    pub fn remove_by(
        &self,
        registry: &str,
        actor: &Actor,
    ) -> Result<ConnectionView, ConnectionError> {
        let registry = pasted::registry(registry)?;
        let audit = AuditEntry {
            operator: actor.to_string(),
            action: "remove",
            subject: registry.as_str().to_owned(),
        };
        let view = if let Some(database) = &self.database {
            let view = self.show(registry.as_str())?;
            let change = Write::Delete {
                host: registry.as_str().to_owned(),
            };
            if !database.write(change, audit)? {
                return Err(not_found(&registry));
            }
            let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
            records.remove(&registry);
            view
        } else {
            let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
            let entry = records.get(&registry).ok_or_else(|| not_found(&registry))?;
            let path = self.path_for(&registry);
            std::fs::remove_file(&path).map_err(io("removing", &path))?;
            sync_dir(&self.dir).map_err(fs_error)?;
            self.audit_file(&audit)?;
            let view = entry.record.view();
            records.remove(&registry);
            view
        };
        let hooks = self.on_remove.read().unwrap_or_else(|p| p.into_inner());
        for hook in hooks.iter() {
            hook(&registry);
        }
        Ok(view)
    }

    /// The connection for `registry` with its credentials opened, approved or not (for the
    /// operator's tag browsing and import), or `None`.
    pub fn connection(&self, registry: &Registry) -> Result<Option<Connection>, ConnectionError> {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = records.get(registry) else {
            return Ok(None);
        };
        let storage_hosts = entry
            .record
            .storage_hosts
            .iter()
            .map(|text| text.parse())
            .collect::<Result<_, _>>()?;
        Ok(Some(Connection {
            registry: registry.clone(),
            generation: entry.generation,
            credentials: entry.credentials.clone(),
            plain_http: entry.record.plain_http,
            ca_pem: entry.record.ca_pem.clone(),
            storage_hosts,
            approved: entry.record.approved,
        }))
    }

    /// The connection for `registry` if the facade may proxy it for devices (connected and
    /// approved), with its credentials opened.
    pub fn approved(&self, registry: &Registry) -> Result<Option<Connection>, ConnectionError> {
        Ok(self.connection(registry)?.filter(|c| c.approved))
    }

    /// Seals `credentials` into `record`, with all its public fields as associated data.
    fn seal(
        &self,
        record: &mut StoredRecord,
        credentials: &ConnectionCredentials,
    ) -> Result<(), ConnectionError> {
        let secret = credentials
            .secret()
            .map_err(|e| ConnectionError::InvalidCredentials {
                host: record.host.clone(),
                reason: e.to_string(),
            })?;
        let sealed = self.key.seal(&record.associated_data(), &secret)?;
        record.sealed = Some(sealed);
        Ok(())
    }

    fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// How many times a record's secret was opened.
    #[cfg(test)]
    pub(super) fn unseals(&self) -> u64 {
        self.key.opens()
    }

    fn path_for(&self, registry: &Registry) -> PathBuf {
        let name = registry.path_form().unwrap_or_else(|| {
            registry
                .as_str()
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect()
        });
        self.dir.join(format!("{name}.json"))
    }

    /// Writes a record atomically: a private temp file, fsync, rename, fsync the folder.
    fn write(&self, registry: &Registry, record: &StoredRecord) -> Result<(), ConnectionError> {
        self.write_to(&self.path_for(registry), record)
    }

    /// The newest `limit` entries of the operator audit log, oldest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, ConnectionError> {
        if let Some(database) = &self.database {
            return database.audit(limit);
        }
        let Some(state_dir) = self.dir.parent() else {
            return Ok(Vec::new());
        };
        let path = state_dir.join(AUDIT_LOG);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let entries = text
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_str(line).map_err(|e| ConnectionError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<AuditRecord>, _>>()?;
        let skip = entries.len().saturating_sub(limit);
        Ok(entries.into_iter().skip(skip).collect())
    }

    /// Appends `entry` to the files backend's audit log, `<state>/audit.log` (one JSON
    /// object a line, written through before the change is reported done).
    pub(crate) fn audit_file(&self, entry: &AuditEntry) -> Result<(), ConnectionError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let Some(state_dir) = self.dir.parent() else {
            return Ok(());
        };
        let path = state_dir.join(AUDIT_LOG);
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut line = serde_json::json!({
            "at": at,
            "operator": entry.operator,
            "action": entry.action,
            "subject": entry.subject,
        })
        .to_string();
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("opening", &path))?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(io("appending to", &path))
    }

    /// Writes a record to `path` atomically.
    fn write_to(&self, path: &Path, record: &StoredRecord) -> Result<(), ConnectionError> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| ConnectionError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        write_atomic_with_mode(path, &bytes, 0o600).map_err(fs_error)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("connections", &records.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn validate_role(role: &EcrRole) -> Result<(), &'static str> {
    if !role.role_arn.starts_with("arn:aws") || role.role_arn.split(':').count() < 6 {
        return Err("the role ARN must look like arn:aws:iam::<account>:role/<name>");
    }
    if role.region.is_empty()
        || !role
            .region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("the region must be an AWS region name such as eu-west-1");
    }
    Ok(())
}

/// A record as the files backend writes it (and the database stores it).
fn record_json(record: &StoredRecord) -> Result<String, ConnectionError> {
    serde_json::to_string_pretty(record).map_err(|e| ConnectionError::Corrupt {
        path: PathBuf::from(&record.host),
        reason: e.to_string(),
    })
}

fn not_found(registry: &Registry) -> ConnectionError {
    ConnectionError::NotFound {
        host: registry.as_str().to_owned(),
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ConnectionError {
    let path = path.to_owned();
    move |source| ConnectionError::Io {
        action,
        path,
        source,
    }
}

fn create_private_dir(dir: &Path) -> Result<(), ConnectionError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating", dir))
}

fn fs_error(err: FsError) -> ConnectionError {
    ConnectionError::Io {
        action: err.step.as_str(),
        path: err.path,
        source: err.source,
    }
}
