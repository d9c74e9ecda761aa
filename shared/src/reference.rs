//! OCI image references, normalized exactly as the docker CLI normalizes them.
//!
//! The rules follow `distribution/reference` (`normalize.go` and `regexp.go`), which is what
//! `docker pull` uses:
//!
//! - A name without a registry is on Docker Hub: `nginx` is `docker.io/library/nginx`,
//!   `bitnami/redis` is `docker.io/bitnami/redis`.
//! - The first path component is a registry host when it contains `.` or `:`, is
//!   `localhost`, or has an uppercase letter; otherwise it is a Docker Hub namespace.
//! - `index.docker.io` is `docker.io`. We go one step further than the CLI and also fold
//!   `registry-1.docker.io` and `hub.docker.com` into `docker.io`, because operators paste all
//!   four and they are one registry, whose API host is `registry-1.docker.io`.
//! - The repository path is lowercase `[a-z0-9]` runs joined by `.`, `_`, `__` or dashes; a
//!   tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; the whole name (registry, `/`, path) is at
//!   most 255 characters; a bare 64-hex string is refused (it looks like an image id).
//!
//! What an operator pastes from a browser (`https://hub.docker.com/_/nginx`, a Quay or GitHub
//! package page) is the facade's to reduce (`meshanics_facade::connections::pasted`): only
//! references are read here.
//!
//! A registry with a port is written `host_port` where it must fit into a repository path
//! (the facade's `/v2/<upstream>/<repository>` routes): see [`Registry::path_form`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::{Digest, DigestError, echo};

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's distribution API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// Every name under which operators know Docker Hub.
pub const DOCKER_HUB_ALIASES: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "hub.docker.com",
];
/// The longest name (registry, `/`, repository path) a reference may have.
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// The longest tag.
pub const TAG_LENGTH_MAX: usize = 128;

const OFFICIAL_REPO_PREFIX: &str = "library/";

/// A registry host as a connection is keyed by: `ghcr.io`, `registry.example.com:5000`,
/// `[::1]:5000`, or `docker.io` for Docker Hub (whatever alias it was given as).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Registry {
    host: String,
}

/// A repository path within a registry: `library/nginx`, `org/team/app`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Repository(String);

/// A tag: `latest`, `v1.2.3`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

/// A normalized image reference: registry, repository, and optionally a tag and a digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: Registry,
    repository: Repository,
    tag: Option<Tag>,
    digest: Option<Digest>,
}

/// Why a string is not a reference, registry, repository or tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference {input:?}: {kind}")]
pub struct ReferenceError {
    /// The offending input (shortened if long; URL credentials removed).
    pub input: String,
    /// The rule it broke.
    pub kind: ReferenceErrorKind,
}

/// The specific rule a reference broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceErrorKind {
    /// The input was empty.
    #[error("it is empty")]
    Empty,
    /// A bare 64-character hex string, which docker reads as an image id.
    #[error("a 64-character hexadecimal string is an image id, not a repository name")]
    HexIdentifier,
    /// The repository path has uppercase letters.
    #[error("repository name {0:?} must be lowercase")]
    Uppercase(String),
    /// The registry host is malformed.
    #[error("registry host {0:?} is not a host name, IPv4 or [IPv6] address with an optional port")]
    InvalidRegistry(String),
    /// A repository path component is malformed.
    #[error(
        "repository path {0:?} must be lowercase letters and digits separated by '.', '_', '__' or '-', in components joined by '/'"
    )]
    InvalidRepository(String),
    /// The name is over 255 characters.
    #[error("the name is {0} characters long, over the limit of 255")]
    NameTooLong(usize),
    /// The tag is malformed.
    #[error("tag {0:?} must be 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    InvalidTag(String),
    /// The digest is malformed.
    #[error("{0}")]
    InvalidDigest(DigestError),
    /// A pasted URL that names no repository where one is required.
    #[error("it names a registry but no repository")]
    MissingRepository,
    /// A pasted URL that cannot be reduced (unsupported scheme, or a page that names no
    /// image).
    #[error("cannot read a registry and repository from this URL: {0}")]
    UnsupportedUrl(&'static str),
}

impl ReferenceError {
    /// An error about `input`, which is shortened if long and loses any URL credentials
    /// (`user:password@`) so that no message repeats them.
    pub fn new(input: &str, kind: ReferenceErrorKind) -> Self {
        ReferenceError {
            input: echo(&strip_credentials(input)),
            kind,
        }
    }
}

// === impl Registry ===

impl Registry {
    /// Docker Hub.
    pub fn docker_hub() -> Self {
        Registry {
            host: DOCKER_HUB.to_owned(),
        }
    }

    /// Parses a registry host with an optional port (`host`, `host:port`, `[v6]:port`),
    /// folding Docker Hub's aliases into `docker.io`. Case is kept, as docker keeps it.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::new(input, ReferenceErrorKind::Empty));
        }
        if !is_domain_and_port(input) {
            return Err(ReferenceError::new(
                input,
                ReferenceErrorKind::InvalidRegistry(echo(input)),
            ));
        }
        if DOCKER_HUB_ALIASES.contains(&input) {
            return Ok(Registry::docker_hub());
        }
        Ok(Registry {
            host: input.to_owned(),
        })
    }

    /// The registry name: `docker.io`, `ghcr.io`, `localhost:5000`.
    pub fn as_str(&self) -> &str {
        &self.host
    }

    /// Whether this is Docker Hub.
    pub fn is_docker_hub(&self) -> bool {
        self.host == DOCKER_HUB
    }

    /// The `host[:port]` that serves this registry's distribution API
    /// (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.is_docker_hub() {
            DOCKER_HUB_API_HOST
        } else {
            &self.host
        }
    }

    /// The registry written as one repository path component: `host_port` for a host with a
    /// port (`:` is not allowed in an OCI repository name), the host itself otherwise. An IPv6
    /// address has no path form.
    pub fn path_form(&self) -> Option<String> {
        if self.host.starts_with('[') {
            return None;
        }
        Some(self.host.replacen(':', "_", 1))
    }

    /// The inverse of [`Registry::path_form`]: `localhost_5000` is `localhost:5000`. Host names
    /// cannot contain `_`, so the form is unambiguous.
    pub fn from_path_form(input: &str) -> Result<Self, ReferenceError> {
        let host = match input.rsplit_once('_') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                format!("{host}:{port}")
            }
            Some(_) => {
                return Err(ReferenceError::new(
                    input,
                    ReferenceErrorKind::InvalidRegistry(echo(input)),
                ));
            }
            None => input.to_owned(),
        };
        Registry::parse(&host)
    }

    /// The host without the port.
    pub fn hostname(&self) -> &str {
        split_port(&self.host).0
    }

    /// The port, if one was given.
    pub fn port(&self) -> Option<u16> {
        split_port(&self.host).1.and_then(|p| p.parse().ok())
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Registry({})", self.host)
    }
}

impl FromStr for Registry {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Registry::parse(s)
    }
}

// === impl Repository ===

impl Repository {
    /// Parses a repository path (`library/nginx`): lowercase components joined by `/`.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::new(input, ReferenceErrorKind::Empty));
        }
        if input.to_ascii_lowercase() != input && is_remote_name(&input.to_ascii_lowercase()) {
            return Err(ReferenceError::new(
                input,
                ReferenceErrorKind::Uppercase(echo(input)),
            ));
        }
        if !is_remote_name(input) {
            return Err(ReferenceError::new(
                input,
                ReferenceErrorKind::InvalidRepository(echo(input)),
            ));
        }
        if input.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::new(
                input,
                ReferenceErrorKind::NameTooLong(input.len()),
            ));
        }
        Ok(Repository(input.to_owned()))
    }

    /// The path: `library/nginx`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Repository({})", self.0)
    }
}

// === impl Tag ===

impl Tag {
    /// Parses a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if is_tag(input) {
            Ok(Tag(input.to_owned()))
        } else {
            Err(ReferenceError::new(
                input,
                ReferenceErrorKind::InvalidTag(echo(input)),
            ))
        }
    }

    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

// === impl Reference ===

impl Reference {
    /// Parses and normalizes a reference as `docker pull` does (`ParseNormalizedNamed`).
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err = |kind| ReferenceError::new(input, kind);
        if input.is_empty() {
            return Err(err(ReferenceErrorKind::Empty));
        }
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(err(ReferenceErrorKind::HexIdentifier));
        }
        let (domain, remainder) = split_docker_domain(input);

        // Split `remote[:tag][@digest]`. The remote path cannot contain ':' or '@'.
        let (name_and_tag, digest) = match remainder.split_once('@') {
            Some((before, digest)) => (before, Some(digest)),
            None => (remainder.as_str(), None),
        };
        let (remote, tag) = match name_and_tag.split_once(':') {
            Some((remote, tag)) => (remote, Some(tag)),
            None => (name_and_tag, None),
        };
        if remote.to_ascii_lowercase() != remote {
            return Err(err(ReferenceErrorKind::Uppercase(echo(remote))));
        }
        let registry = Registry::parse(domain)
            .map_err(|_| err(ReferenceErrorKind::InvalidRegistry(echo(domain))))?;
        if !is_remote_name(remote) {
            return Err(err(ReferenceErrorKind::InvalidRepository(echo(remote))));
        }
        // docker measures the normalized name: `docker.io/library/nginx`.
        let name_len = domain.len() + 1 + remote.len();
        if name_len > NAME_TOTAL_LENGTH_MAX {
            return Err(err(ReferenceErrorKind::NameTooLong(name_len)));
        }
        let tag = match tag {
            Some(tag) if is_tag(tag) => Some(Tag(tag.to_owned())),
            Some(tag) => return Err(err(ReferenceErrorKind::InvalidTag(echo(tag)))),
            None => None,
        };
        let digest = match digest {
            Some(digest) => {
                Some(Digest::parse(digest).map_err(|e| err(ReferenceErrorKind::InvalidDigest(e)))?)
            }
            None => None,
        };
        Ok(Reference {
            registry,
            repository: Repository(remote.to_owned()),
            tag,
            digest,
        })
    }

    /// Builds a reference from parts that are already valid.
    pub fn from_parts(
        registry: Registry,
        repository: Repository,
        tag: Option<Tag>,
        digest: Option<Digest>,
    ) -> Self {
        Reference {
            registry,
            repository,
            tag,
            digest,
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The repository path.
    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// The tag, if one was given (no `latest` is implied).
    pub fn tag(&self) -> Option<&Tag> {
        self.tag.as_ref()
    }

    /// The digest, if one was given.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The name without tag and digest: `docker.io/library/nginx`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same reference pinned to `digest`, without the tag: what is shipped.
    pub fn pinned(&self, digest: Digest) -> Self {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Reference::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Registry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.host)
    }
}

impl<'de> Deserialize<'de> for Registry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Registry::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Repository {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Repository {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Repository::parse(&text).map_err(serde::de::Error::custom)
    }
}

// === normalization (distribution/reference normalize.go) ===

/// Splits the registry off a reference, applying Docker Hub's defaults. Returns the domain
/// and the rest (`remote[:tag][@digest]`).
fn split_docker_domain(name: &str) -> (&str, String) {
    let Some((maybe_domain, maybe_remote)) = name.split_once('/') else {
        // A single element ("nginx", "nginx:1.25") is an official image on Docker Hub.
        return (DOCKER_HUB, format!("{OFFICIAL_REPO_PREFIX}{name}"));
    };
    let (domain, remote) = if maybe_domain == "localhost" {
        (maybe_domain, maybe_remote)
    } else if DOCKER_HUB_ALIASES.contains(&maybe_domain) {
        (DOCKER_HUB, maybe_remote)
    } else if maybe_domain.contains(['.', ':']) {
        (maybe_domain, maybe_remote)
    } else if maybe_domain.bytes().any(|b| b.is_ascii_uppercase()) {
        // Uppercase namespaces are not allowed on Docker Hub: docker reads it as a host.
        (maybe_domain, maybe_remote)
    } else {
        (DOCKER_HUB, name)
    };
    // "docker.io/ubuntu" is "docker.io/library/ubuntu", on Docker Hub only. The check looks
    // at the path before any tag or digest.
    let path_end = remote.find(['@', ':']).unwrap_or(remote.len());
    let path = remote.get(..path_end).unwrap_or(remote);
    if domain == DOCKER_HUB && !path.contains('/') {
        return (domain, format!("{OFFICIAL_REPO_PREFIX}{remote}"));
    }
    (domain, remote.to_owned())
}

// === grammar (distribution/reference regexp.go) ===

/// `domainNameComponent`: `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_domain_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// `domainAndPort`: (`domainName` | `[ipv6]`) optionally followed by `:digits`.
fn is_domain_and_port(input: &str) -> bool {
    let (host, port) = split_port(input);
    if let Some(port) = port
        && (port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err())
    {
        return false;
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(addr) = inner.strip_suffix(']') else {
            return false;
        };
        return !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
    }
    host.split('.').all(is_domain_component)
}

/// Splits `host:port` (or `[v6]:port`) into host and port text.
fn split_port(input: &str) -> (&str, Option<&str>) {
    if input.starts_with('[') {
        return match input.find(']') {
            Some(end) => {
                let (host, rest) = input.split_at(end + 1);
                match rest.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if rest.is_empty() => (host, None),
                    None => (input, Some(rest)),
                }
            }
            None => (input, None),
        };
    }
    match input.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (input, None),
    }
}

/// `pathComponent`: `[a-z0-9]+` runs separated by `.`, `_`, `__` or one or more `-`.
fn is_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let Some(b) = bytes.get(i) else { break };
        if alnum(b) {
            i += 1;
            continue;
        }
        let start = i;
        while bytes.get(i).is_some_and(|b| !alnum(b)) {
            i += 1;
        }
        let sep = bytes.get(start..i).unwrap_or_default();
        let ok = matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|b| *b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `remoteName`: path components joined by `/`.
fn is_remote_name(path: &str) -> bool {
    path.split('/').all(is_path_component)
}

/// `tag`: `[\w][\w.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = tag.as_bytes();
    bytes.len() <= TAG_LENGTH_MAX
        && bytes.first().is_some_and(word)
        && bytes.iter().all(|b| word(b) || *b == b'.' || *b == b'-')
}

/// Removes `user:password@` from a URL so that no error message ever repeats it.
fn strip_credentials(input: &str) -> String {
    let Some((scheme, rest)) = input.split_once("://") else {
        return input.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{tail}"),
        None => input.to_owned(),
    }
}

#[cfg(test)]
mod tests;
