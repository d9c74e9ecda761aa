//! The connection record as stored and as opened (as shown, it is the operator API's
//! [`ConnectionView`]).

use std::fmt;

use meshanics_operator_api::{ConnectionView, ProviderKind};
use serde::{Deserialize, Serialize};

use crate::cloud::ecr::EcrRole;

/// The credentials of a connection, opened (in memory only).
#[derive(Clone, PartialEq, Eq)]
pub enum ConnectionCredentials {
    /// None.
    Anonymous,
    /// A username and token.
    Static {
        /// The username.
        username: String,
        /// The token or password.
        token: String,
    },
    /// A Google service-account key (its JSON).
    Gcp {
        /// The key file's JSON.
        key_json: String,
    },
    /// An AWS role.
    Ecr(EcrRole),
}

/// Secrets never reach logs through `Debug`.
impl fmt::Debug for ConnectionCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionCredentials::Anonymous => f.write_str("Anonymous"),
            ConnectionCredentials::Static { username, .. } => {
                write!(f, "Static {{ username: {username:?}, token: <sealed> }}")
            }
            ConnectionCredentials::Gcp { .. } => f.write_str("Gcp { key_json: <sealed> }"),
            ConnectionCredentials::Ecr(role) => write!(f, "Ecr({role:?})"),
        }
    }
}

impl ConnectionCredentials {
    /// The provider kind.
    pub fn kind(&self) -> ProviderKind {
        match self {
            ConnectionCredentials::Anonymous => ProviderKind::Anonymous,
            ConnectionCredentials::Static { .. } => ProviderKind::Static,
            ConnectionCredentials::Gcp { .. } => ProviderKind::Gcp,
            ConnectionCredentials::Ecr(_) => ProviderKind::Ecr,
        }
    }
}

/// What an operator asks for when connecting a registry.
#[derive(Debug, Clone)]
pub struct NewConnection {
    /// The registry as typed or pasted (a host, a URL, an image reference).
    pub registry: String,
    /// The credentials.
    pub credentials: ConnectionCredentials,
    /// Talk plain HTTP to it (labs and tests only).
    pub plain_http: bool,
    /// A CA bundle (PEM) for registries with a private CA.
    pub ca_pem: Option<String>,
    /// Hosts its redirects may lead to even on a private address (`HOST` or `HOST:PORT`).
    pub storage_hosts: Vec<String>,
    /// Who connects it (the operator's name).
    pub connected_by: String,
}

/// The record on disk: public fields in the clear, the secret sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredRecord {
    pub(crate) host: String,
    pub(crate) provider: ProviderKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) username: Option<String>,
    /// The sealed secret: the token (static), the key JSON (gcp), the role JSON (ecr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sealed: Option<String>,
    pub(crate) plain_http: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_pem: Option<String>,
    /// Where redirects may lead even on a private address (checked `StorageHost`s, as
    /// written by their `Display`). Like `plain_http` and `ca_pem`, it widens where the
    /// facade connects: whatever authenticates the record's fields must cover it too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) storage_hosts: Vec<String>,
    pub(crate) connected_by: String,
    pub(crate) connected_at: u64,
    pub(crate) approved: bool,
}

impl StoredRecord {
    pub(crate) fn view(&self) -> ConnectionView {
        ConnectionView {
            host: self.host.clone(),
            provider: self.provider,
            username: self.username.clone(),
            connected_by: self.connected_by.clone(),
            connected_at: self.connected_at,
            approved: self.approved,
            plain_http: self.plain_http,
            private_ca: self.ca_pem.is_some(),
            storage_hosts: self.storage_hosts.clone(),
        }
    }
}
