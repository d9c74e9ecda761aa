//! The operator API's request and response bodies (shared by the facade's admin server and
//! `meshctl`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize as _;

use crate::connection::ProviderKind;

/// `POST /v1/registries`: connect a registry. Its `Debug` never shows the token, the key or
/// the external id, and they are wiped from memory when it is dropped.
#[derive(Clone, Serialize, Deserialize)]
pub struct AddRegistry {
    /// The registry as typed or pasted (host, URL or image reference).
    pub registry: String,
    /// `static`, `anonymous`, `gcp` or `ecr`.
    pub provider: ProviderKind,
    /// Static: the username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Static: the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// GCP: the service-account key file's JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp_key_json: Option<String>,
    /// ECR: the role ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// ECR: the external id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// ECR: the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Talk plain HTTP upstream (labs and tests).
    #[serde(default)]
    pub plain_http: bool,
    /// A CA bundle (PEM) for a registry with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Hosts (`HOST` or `HOST:PORT`) the registry's redirects may lead to even on a private
    /// address: its blob storage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage_hosts: Vec<String>,
    /// Who connects it.
    pub connected_by: String,
}

impl fmt::Debug for AddRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("AddRegistry")
            .field("registry", &self.registry)
            .field("provider", &self.provider)
            .field("username", &self.username)
            .field("token", &redacted(&self.token))
            .field("gcp_key_json", &redacted(&self.gcp_key_json))
            .field("role_arn", &self.role_arn)
            .field("external_id", &redacted(&self.external_id))
            .field("region", &self.region)
            .field("plain_http", &self.plain_http)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<PEM>"))
            .field("storage_hosts", &self.storage_hosts)
            .field("connected_by", &self.connected_by)
            .finish()
    }
}

impl Drop for AddRegistry {
    fn drop(&mut self) {
        self.token.zeroize();
        self.gcp_key_json.zeroize();
        self.external_id.zeroize();
    }
}

/// `GET /v1/tags`: a repository's tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagList {
    /// The repository, normalized (`docker.io/library/nginx`).
    pub repository: String,
    /// The tags, newest-likely-first (see `meshctl tags --help` for the heuristic).
    pub tags: Vec<String>,
    /// Whether the walk stopped before the registry's last page (`clip_reason` says why).
    pub clipped: bool,
    /// Why the walk stopped early, when `clipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_reason: Option<ClipReason>,
    /// How many valid tags the registry returned before the walk stopped.
    pub seen: usize,
    /// How many tags the registry returned that break the tag grammar
    /// (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`): dropped, never listed.
    #[serde(default)]
    pub dropped: usize,
}

/// Why a tag walk stopped before the registry's last page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipReason {
    /// The caller's limit was reached and the registry had more.
    Limit,
    /// The next-page `Link` pointed at a page already fetched.
    LinkLoop,
    /// The pages together passed the facade's cap on bytes read for one listing.
    TotalBytes,
    /// One page passed the facade's cap on the size of a page.
    PageBytes,
    /// The registry's pages went on past the facade's cap on pages for one listing.
    Pages,
}

impl fmt::Display for ClipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClipReason::Limit => "the repository has more, raise --limit",
            ClipReason::LinkLoop => {
                "the registry's next-page link points back at a page already read"
            }
            ClipReason::TotalBytes => {
                "the registry's pages passed the facade's cap on bytes per listing"
            }
            ClipReason::PageBytes => {
                "a page of the registry's list passed the facade's cap on page size"
            }
            ClipReason::Pages => "the registry's list passed the facade's cap on pages per listing",
        })
    }
}

/// `POST /v1/import`: tags to resolve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRequest {
    /// References with tags (`ghcr.io/org/app:1.2`).
    pub references: Vec<String>,
}

/// The outcome of one reference of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportResult {
    /// The reference as given.
    pub reference: String,
    /// The normalized repository (`ghcr.io/org/app`), when the reference parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The tag, when the reference parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// What happened.
    pub outcome: Outcome,
    /// When imported: the manifest's digest, size and media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// When the registry rate-limited us: seconds to wait, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// When not imported: why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ImportResult {
    /// A failed outcome for `reference` with nothing else known yet: the start of every
    /// result, filled in as the import goes.
    pub fn failed(reference: String) -> Self {
        ImportResult {
            reference,
            repository: None,
            tag: None,
            outcome: Outcome::Failed,
            digest: None,
            size: None,
            media_type: None,
            retry_after: None,
            message: None,
        }
    }
}

/// What happened to one reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Resolved to a digest.
    Imported,
    /// The repository or tag does not exist.
    NotFound,
    /// The registry refused our credentials.
    Unauthorized,
    /// The registry asked us to slow down.
    RateLimited,
    /// The registry did not answer in time.
    Timeout,
    /// The reference names a registry that is not connected.
    NotConnected,
    /// The reference is malformed or has no tag.
    Invalid,
    /// Anything else (the message says what).
    Failed,
}

/// `POST /v1/import`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportResponse {
    /// One result per requested reference, in order.
    pub results: Vec<ImportResult>,
}

/// An error body: `{"errors":[{"code","message"}]}`, the same OCI-style body every server of
/// the project writes.
pub use meshanics_shared::oci_error::{ErrorBody, ErrorEntry};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_add_request_never_shows_its_secrets_in_debug_output() {
        let request = AddRegistry {
            registry: "ghcr.io".into(),
            provider: ProviderKind::Static,
            username: Some("robot".into()),
            token: Some("ghp_tok3n".into()),
            gcp_key_json: Some(r#"{"private_key":"-----BEGIN PRIVATE KEY-----"}"#.into()),
            role_arn: Some("arn:aws:iam::123456789012:role/pull".into()),
            external_id: Some("ext-s3cret".into()),
            region: Some("eu-west-1".into()),
            plain_http: false,
            ca_pem: None,
            storage_hosts: vec!["blobs.example:9000".into()],
            connected_by: "alice".into(),
        };
        let shown = format!("{request:?}");
        for secret in ["ghp_tok3n", "PRIVATE KEY", "ext-s3cret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("robot") && shown.contains("ghcr.io"),
            "{shown}"
        );
    }
}

/// One entry of the operator audit log (`GET /v1/audit`): who connected, approved or removed
/// which registry, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// Who: the name given when connecting, and the Unix peer credentials of the operator
    /// socket's client (`uid 1000 pid 4242`).
    pub operator: String,
    /// What: `connect`, `approve` or `remove`.
    pub action: String,
    /// On what: the registry host.
    pub subject: String,
}

/// `POST /v1/metadata`: publish signed update metadata files (`meshctl publish`). The facade
/// checks that a device trusting what is published now would accept the new set, then
/// stores all of it or none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// The files by name: every `N.root.cose` of the chain (those already published are
    /// compared, not written again), the `N.targets.cose` the timestamp names, and
    /// `timestamp.cose`.
    pub files: BTreeMap<String, FileBytes>,
}

/// A file's bytes, as standard padded base64 in JSON. Its `Debug` shows the length only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FileBytes(pub Vec<u8>);

/// What the facade serves under `/meta/` after a publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    /// The newest root version published.
    pub root_version: u64,
    /// The targets version the timestamp names.
    pub targets_version: u64,
    /// The timestamp version.
    pub timestamp_version: u64,
    /// When the timestamp expires, in seconds since the Unix epoch.
    pub timestamp_expires: u64,
    /// The files this publish stored, in the order they were stored (roots, targets,
    /// timestamp); empty when exactly this set was already published.
    pub written: Vec<String>,
}

// === impl FileBytes ===

impl fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileBytes({} bytes)", self.0.len())
    }
}

impl Serialize for FileBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for FileBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(FileBytes)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod publish_tests {
    use super::*;

    #[test]
    fn file_bytes_travel_as_base64_and_debug_shows_only_their_length() {
        let request = PublishRequest {
            files: BTreeMap::from([("timestamp.cose".to_owned(), FileBytes(vec![0, 1, 2, 255]))]),
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(json, r#"{"files":{"timestamp.cose":"AAEC/w=="}}"#);
        assert_eq!(
            serde_json::from_str::<PublishRequest>(&json).unwrap(),
            request
        );
        assert_eq!(format!("{:?}", FileBytes(vec![7; 3])), "FileBytes(3 bytes)");
        assert!(
            serde_json::from_str::<PublishRequest>(r#"{"files":{"a":"not base64!"}}"#).is_err()
        );
    }
}
