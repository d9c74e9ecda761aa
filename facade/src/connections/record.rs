//! The connection record as stored and as opened (as shown, it is the operator API's
//! [`ConnectionView`]).
//!
//! On disk a record keeps its public fields in the clear and its secret sealed; the seal's
//! associated data is every public field in one canonical, versioned encoding
//! ([`StoredRecord::associated_data`]), so none of them can be changed without the master
//! key. An anonymous record seals an empty secret, which authenticates its fields all the
//! same.

use std::fmt;

use meshanics_operator_api::{ConnectionView, ProviderKind};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize as _, Zeroizing};

use crate::cloud::ecr::EcrRole;

/// Opens the associated data of the current record format; a new format gets a new tag.
const ASSOCIATED_DATA_TAG: &[u8] = b"meshanics connection record v2\0";

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

/// Opened secrets are wiped from memory when the last holder drops them.
impl Drop for ConnectionCredentials {
    fn drop(&mut self) {
        match self {
            ConnectionCredentials::Anonymous | ConnectionCredentials::Ecr(_) => {}
            ConnectionCredentials::Static { token, .. } => token.zeroize(),
            ConnectionCredentials::Gcp { key_json } => key_json.zeroize(),
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

    /// What is sealed: the token (static), the key JSON (gcp), the role JSON (ecr), nothing
    /// (anonymous).
    pub(crate) fn secret(&self) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
        Ok(Zeroizing::new(match self {
            ConnectionCredentials::Anonymous => Vec::new(),
            ConnectionCredentials::Static { token, .. } => token.as_bytes().to_vec(),
            ConnectionCredentials::Gcp { key_json } => key_json.as_bytes().to_vec(),
            ConnectionCredentials::Ecr(role) => serde_json::to_vec(role)?,
        }))
    }

    /// The credentials of a `provider` record with `username` whose sealed secret opened to
    /// `secret`; the reason when they do not fit together.
    pub(crate) fn from_secret(
        provider: ProviderKind,
        username: Option<&str>,
        secret: &[u8],
    ) -> Result<Self, String> {
        let text = || {
            std::str::from_utf8(secret)
                .map(str::to_owned)
                .map_err(|_| "the sealed secret is not text".to_owned())
        };
        Ok(match provider {
            ProviderKind::Anonymous if secret.is_empty() => ConnectionCredentials::Anonymous,
            ProviderKind::Anonymous => return Err("an anonymous record holds a secret".into()),
            ProviderKind::Static => ConnectionCredentials::Static {
                username: username.unwrap_or_default().to_owned(),
                token: text()?,
            },
            ProviderKind::Gcp => ConnectionCredentials::Gcp { key_json: text()? },
            ProviderKind::Ecr => ConnectionCredentials::Ecr(
                serde_json::from_slice(secret).map_err(|e| e.to_string())?,
            ),
        })
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

/// The record on disk: public fields in the clear, the secret sealed with all of them as
/// associated data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredRecord {
    pub(crate) host: String,
    pub(crate) provider: ProviderKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) username: Option<String>,
    /// The sealed secret: the token (static), the key JSON (gcp), the role JSON (ecr), an
    /// empty one (anonymous). The first format left it out for anonymous records.
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
    /// Every public field in one canonical encoding, the associated data of the seal: the
    /// format's tag, then each field in this order, text as a big-endian u64 length and its
    /// bytes, an absent value as `0` and a present one as `1` and the value, booleans as one
    /// byte, the time as a big-endian u64.
    pub(crate) fn associated_data(&self) -> Vec<u8> {
        // Destructured without `..`: a field added to the record does not compile here until
        // it is authenticated too (a change of this encoding is a new format, migrated).
        let StoredRecord {
            host,
            provider,
            username,
            sealed: _,
            plain_http,
            ca_pem,
            storage_hosts,
            connected_by,
            connected_at,
            approved,
        } = self;
        let mut out = ASSOCIATED_DATA_TAG.to_vec();
        put_text(&mut out, host);
        put_text(&mut out, &provider.to_string());
        put_optional(&mut out, username.as_deref());
        out.push(u8::from(*plain_http));
        put_optional(&mut out, ca_pem.as_deref());
        // Storage hosts widen where the facade connects, as plain_http and ca_pem do.
        out.extend_from_slice(
            &u64::try_from(storage_hosts.len())
                .unwrap_or(u64::MAX)
                .to_be_bytes(),
        );
        for host in storage_hosts {
            put_text(&mut out, host);
        }
        put_text(&mut out, connected_by);
        out.extend_from_slice(&connected_at.to_be_bytes());
        out.push(u8::from(*approved));
        out
    }

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

fn put_text(out: &mut Vec<u8>, text: &str) {
    let len = u64::try_from(text.len()).unwrap_or(u64::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            put_text(out, text);
        }
    }
}
