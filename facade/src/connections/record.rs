//! The connection record as stored, as opened, and as shown.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cloud::ecr::EcrRole;

/// How the facade obtains credentials for a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// A stored username and token, sent as Basic or exchanged in the token flow.
    Static,
    /// No credentials: a public registry.
    Anonymous,
    /// A Google service-account key, exchanged for short-lived access tokens.
    Gcp,
    /// An AWS role, assumed and exchanged for short-lived ECR authorization tokens.
    Ecr,
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Static => "static",
            ProviderKind::Anonymous => "anonymous",
            ProviderKind::Gcp => "gcp",
            ProviderKind::Ecr => "ecr",
        })
    }
}

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
    /// Who connects it (the operator's name).
    pub connected_by: String,
}

/// What lists and shows reveal about a connection: never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionView {
    /// The registry host.
    pub host: String,
    /// The provider kind.
    pub provider: ProviderKind,
    /// The username (static), service-account email (gcp) or role ARN (ecr), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Who connected it.
    pub connected_by: String,
    /// When, in seconds since the Unix epoch.
    pub connected_at: u64,
    /// Whether the facade proxies it.
    pub approved: bool,
    /// Plain HTTP upstream.
    pub plain_http: bool,
    /// Whether it carries its own CA bundle.
    pub private_ca: bool,
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
        }
    }
}
