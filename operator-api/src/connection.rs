//! A connection as the operator API shows it: its provider kind and public fields, never a
//! secret. The facade's connection store (`meshanics_facade::connections`) makes these.

use std::fmt;

use serde::{Deserialize, Serialize};

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
    /// Hosts its redirects may lead to even on a private address (its blob storage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage_hosts: Vec<String>,
}
