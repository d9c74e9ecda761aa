//! The connection store: one JSON file per connection in `<state>/connections/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use meshanics_operator_api::{ConnectionView, ProviderKind};
use meshanics_shared::fs::{FsError, sync_dir, write_atomic_with_mode};
use meshanics_shared::reference::{ReferenceError, Registry};

use super::pasted;
use super::record::{ConnectionCredentials, NewConnection, StoredRecord};
use crate::cloud::ecr::EcrRole;
use crate::cloud::gcp::ServiceAccountKey;
use crate::registry_client::{InvalidStorageHost, StorageHost};
use crate::seal::{MasterKey, SealError};

/// The connections folder inside the facade's state dir.
pub(super) const CONNECTIONS_DIR: &str = "connections";

/// The connection store.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    key: MasterKey,
    records: RwLock<BTreeMap<Registry, StoredRecord>>,
}

/// A connection opened for use by the facade (credentials in memory).
#[derive(Debug, Clone)]
pub struct Connection {
    /// The registry.
    pub registry: Registry,
    /// Its credentials.
    pub credentials: ConnectionCredentials,
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
}

// === impl Store ===

impl Store {
    /// Opens (creating if needed) the store under `state_dir`, loading every record.
    pub fn open(state_dir: &Path, key: MasterKey) -> Result<Self, ConnectionError> {
        let dir = state_dir.join(CONNECTIONS_DIR);
        create_private_dir(&dir)?;
        let mut records = BTreeMap::new();
        let entries = std::fs::read_dir(&dir).map_err(io("listing", &dir))?;
        for entry in entries {
            let path = entry.map_err(io("listing", &dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io("reading", &path))?;
            let record: StoredRecord =
                serde_json::from_slice(&bytes).map_err(|e| ConnectionError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let registry = Registry::parse(&record.host).map_err(|e| ConnectionError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            records.insert(registry, record);
        }
        Ok(Store {
            dir,
            key,
            records: RwLock::new(records),
        })
    }

    /// Connects a registry. Anonymous connections start unapproved; others are approved.
    pub fn add(
        &self,
        new: NewConnection,
        now: SystemTime,
    ) -> Result<ConnectionView, ConnectionError> {
        let registry = pasted::registry(&new.registry)?;
        let host = registry.as_str().to_owned();
        let invalid = |reason: &str| ConnectionError::InvalidCredentials {
            host: host.clone(),
            reason: reason.to_owned(),
        };
        let (username, secret) = match &new.credentials {
            ConnectionCredentials::Anonymous => (None, None),
            ConnectionCredentials::Static { username, token } => {
                if username.is_empty() || token.is_empty() {
                    return Err(invalid("a static connection needs a username and a token"));
                }
                (Some(username.clone()), Some(token.clone().into_bytes()))
            }
            ConnectionCredentials::Gcp { key_json } => {
                let key =
                    ServiceAccountKey::parse(key_json).map_err(|e| invalid(&e.to_string()))?;
                (
                    Some(key.client_email().to_owned()),
                    Some(key_json.clone().into_bytes()),
                )
            }
            ConnectionCredentials::Ecr(role) => {
                validate_role(role).map_err(&invalid)?;
                let json = serde_json::to_vec(role).map_err(|e| invalid(&e.to_string()))?;
                (Some(role.role_arn.clone()), Some(json))
            }
        };
        let storage_hosts = new
            .storage_hosts
            .iter()
            .map(|text| text.parse::<StorageHost>().map(|host| host.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let sealed = match secret {
            Some(secret) => Some(self.key.seal(&host, &secret)?),
            None => None,
        };
        let record = StoredRecord {
            host: host.clone(),
            provider: new.credentials.kind(),
            username,
            sealed,
            plain_http: new.plain_http,
            ca_pem: new.ca_pem,
            storage_hosts,
            connected_by: new.connected_by,
            connected_at: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            approved: new.credentials.kind() != ProviderKind::Anonymous,
        };
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        if records.contains_key(&registry) {
            return Err(ConnectionError::Exists { host });
        }
        self.write(&registry, &record)?;
        let view = record.view();
        records.insert(registry, record);
        Ok(view)
    }

    /// Every connection, sorted by host.
    pub fn list(&self) -> Vec<ConnectionView> {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        records.values().map(StoredRecord::view).collect()
    }

    /// One connection, by host or URL.
    pub fn show(&self, registry: &str) -> Result<ConnectionView, ConnectionError> {
        let registry = pasted::registry(registry)?;
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        records
            .get(&registry)
            .map(StoredRecord::view)
            .ok_or_else(|| not_found(&registry))
    }

    /// Approves a connection for device traffic.
    pub fn approve(&self, registry: &str) -> Result<ConnectionView, ConnectionError> {
        let registry = pasted::registry(registry)?;
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        let record = records
            .get_mut(&registry)
            .ok_or_else(|| not_found(&registry))?;
        let mut updated = record.clone();
        updated.approved = true;
        self.write(&registry, &updated)?;
        *record = updated;
        Ok(record.view())
    }

    /// Removes a connection; the facade stops proxying it at once.
    pub fn remove(&self, registry: &str) -> Result<ConnectionView, ConnectionError> {
        let registry = pasted::registry(registry)?;
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        let record = records.get(&registry).ok_or_else(|| not_found(&registry))?;
        let path = self.path_for(&registry);
        std::fs::remove_file(&path).map_err(io("removing", &path))?;
        sync_dir(&self.dir).map_err(fs_error)?;
        let view = record.view();
        records.remove(&registry);
        Ok(view)
    }

    /// The connection for `registry` with its credentials opened, approved or not (for the
    /// operator's tag browsing and import), or `None`.
    pub fn connection(&self, registry: &Registry) -> Result<Option<Connection>, ConnectionError> {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        let Some(record) = records.get(registry) else {
            return Ok(None);
        };
        let credentials = self.credentials(record)?;
        let storage_hosts = record
            .storage_hosts
            .iter()
            .map(|text| text.parse())
            .collect::<Result<_, _>>()?;
        Ok(Some(Connection {
            registry: registry.clone(),
            credentials,
            plain_http: record.plain_http,
            ca_pem: record.ca_pem.clone(),
            storage_hosts,
            approved: record.approved,
        }))
    }

    /// The connection for `registry` if the facade may proxy it for devices (connected and
    /// approved), with its credentials opened.
    pub fn approved(&self, registry: &Registry) -> Result<Option<Connection>, ConnectionError> {
        Ok(self.connection(registry)?.filter(|c| c.approved))
    }

    fn credentials(&self, record: &StoredRecord) -> Result<ConnectionCredentials, ConnectionError> {
        let host = &record.host;
        let secret = match &record.sealed {
            Some(sealed) => Some(self.key.open(host, sealed)?),
            None => None,
        };
        let corrupt = |reason: &str| ConnectionError::InvalidCredentials {
            host: host.clone(),
            reason: reason.to_owned(),
        };
        let text = || {
            secret
                .clone()
                .and_then(|s| String::from_utf8(s).ok())
                .ok_or_else(|| corrupt("the sealed secret is missing or not text"))
        };
        Ok(match record.provider {
            ProviderKind::Anonymous => ConnectionCredentials::Anonymous,
            ProviderKind::Static => ConnectionCredentials::Static {
                username: record.username.clone().unwrap_or_default(),
                token: text()?,
            },
            ProviderKind::Gcp => ConnectionCredentials::Gcp { key_json: text()? },
            ProviderKind::Ecr => ConnectionCredentials::Ecr(
                serde_json::from_str(&text()?).map_err(|e| corrupt(&e.to_string()))?,
            ),
        })
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
        let path = self.path_for(registry);
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| ConnectionError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic_with_mode(&path, &bytes, 0o600).map_err(fs_error)
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
