//! The device API's routes, parsed from method, path and query before anything else runs.
//!
//! A request that does not parse into a [`Route`] never reaches an upstream: the parsing
//! error is the response. The content routes are
//! `/v2/<upstream>/<repository>/{manifests,blobs}/<digest>`, with the upstream in path form
//! (`host_port` for a port, `docker.io` for Docker Hub), and containerd's mirror form
//! `/v2/<repository>/{manifests,blobs}/<digest>?ns=<host>`.

use http::Method;
use meshanics_shared::metadata::{TIMESTAMP_FILE, root_file, targets_file};
use meshanics_shared::{Digest, Registry, Repository};

use crate::error::Error;
use crate::registry_client::ContentKind;

/// A parsed device request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`: the client's API version check.
    Ping,
    /// A manifest or blob, by digest.
    Content(ContentTarget),
    /// `GET /meta/<file>`.
    Meta(MetaName),
}

/// A manifest or blob on an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentTarget {
    /// The upstream registry.
    pub upstream: Registry,
    /// The repository on it.
    pub repository: Repository,
    /// Manifest or blob.
    pub kind: ContentKind,
    /// The digest.
    pub digest: Digest,
}

/// The name of a published metadata file: `N.root.cose`, `N.targets.cose` (`N` a version,
/// from 1, in decimal without leading zeros) or `timestamp.cose`, the files the device
/// workflow fetches (docs/metadata.md section 1). Nothing else in the metadata folder (pins,
/// keys, temporary files) is ever served, and no such name can leave the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaName(String);

// === impl Route ===

impl Route {
    /// The route's name in metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Ping => "ping",
            Route::Content(target) => match target.kind {
                ContentKind::Manifest => "manifest",
                ContentKind::Blob => "blob",
            },
            Route::Meta(_) => "meta",
        }
    }
}

/// Parses a request into a route, or the error to answer with.
pub fn route(method: &Method, path: &str, query: Option<&str>) -> Result<Route, Error> {
    let read_only = || {
        if method == Method::GET || method == Method::HEAD {
            Ok(())
        } else {
            Err(Error::MethodNotAllowed {
                method: method.clone(),
                path: path.to_owned(),
            })
        }
    };
    if path == "/v2/" || path == "/v2" {
        read_only()?;
        return Ok(Route::Ping);
    }
    if let Some(name) = path.strip_prefix("/meta/") {
        let name = MetaName::parse(name).ok_or_else(|| Error::MetaNotFound {
            name: name.chars().take(256).collect(),
        })?;
        read_only()?;
        return Ok(Route::Meta(name));
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Err(not_found(path));
    };
    let mut parts = rest.rsplitn(3, '/');
    let (Some(reference), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(not_found(path));
    };
    let kind = match kind {
        "manifests" => ContentKind::Manifest,
        "blobs" => ContentKind::Blob,
        _ => return Err(not_found(path)),
    };
    read_only()?;
    let (upstream, repository) = split_name(name, namespace(query).as_deref())?;
    let digest = digest(kind, reference)?;
    Ok(Route::Content(ContentTarget {
        upstream,
        repository,
        kind,
        digest,
    }))
}

fn not_found(path: &str) -> Error {
    Error::NotFound {
        path: path.chars().take(256).collect(),
    }
}

/// containerd's `ns` query parameter: the registry the mirror request is for.
fn namespace(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == "ns")
        .map(|(_, value)| value.into_owned())
}

/// Splits `<upstream>/<repository>` (or takes the whole name as the repository of `ns`).
fn split_name(name: &str, ns: Option<&str>) -> Result<(Registry, Repository), Error> {
    let invalid = |reason: String| Error::InvalidName {
        input: name.chars().take(256).collect(),
        reason,
    };
    let (upstream, repository) = match ns {
        Some(ns) => {
            let registry = Registry::parse(&ns.to_ascii_lowercase())
                .map_err(|e| invalid(format!("ns: {e}")))?;
            (registry, name)
        }
        None => {
            let (first, repository) = name
                .split_once('/')
                .ok_or_else(|| invalid("expected <upstream>/<repository>".into()))?;
            // Host names are case-insensitive; approved upstreams are keyed lowercase.
            let registry = Registry::from_path_form(&first.to_ascii_lowercase())
                .map_err(|e| invalid(e.to_string()))?;
            (registry, repository)
        }
    };
    let repository = if upstream.is_docker_hub() && !repository.contains('/') {
        // Docker Hub's official images live under `library/`, as the docker CLI writes them.
        format!("library/{repository}")
    } else {
        repository.to_owned()
    };
    let repository = Repository::parse(&repository).map_err(|e| invalid(e.kind.to_string()))?;
    Ok((upstream, repository))
}

/// The digest of a content route. The facade never resolves tags, so a manifest reference
/// that is not a digest, whether a valid tag (`latest`) or neither tag nor digest
/// (`.INVALID_MANIFEST_NAME`, `sha256:totallywrong`), names a manifest the facade does not
/// have: [`Error::DigestOnly`], answered 404 `MANIFEST_UNKNOWN` as the distribution spec's
/// endpoint table and its conformance suite expect (see respond.rs). A blob is named by
/// digest alone, so a malformed one is the device's error: [`Error::InvalidDigest`], 400
/// `DIGEST_INVALID`. Either way no upstream request is made.
fn digest(kind: ContentKind, reference: &str) -> Result<Digest, Error> {
    match Digest::parse(reference) {
        Ok(digest) => Ok(digest),
        Err(_) if kind == ContentKind::Manifest => Err(Error::DigestOnly {
            reference: reference.chars().take(256).collect(),
        }),
        Err(e) => Err(Error::InvalidDigest {
            input: e.input,
            reason: e.reason.to_string(),
        }),
    }
}

// === impl MetaName ===

impl MetaName {
    /// Parses a metadata file name; `None` for anything that is not a published name.
    pub fn parse(name: &str) -> Option<MetaName> {
        let version = name
            .split_once('.')
            .and_then(|(version, _)| version.parse::<u64>().ok())
            .filter(|version| *version >= 1);
        // Compared with the name written back the way the repository writes it, so that
        // `01.root.cose` or `+1.root.cose` (which `u64::from_str` reads as 1) are refused.
        let published = name == TIMESTAMP_FILE
            || version.is_some_and(|v| name == root_file(v) || name == targets_file(v));
        published.then(|| MetaName(name.to_owned()))
    }

    /// The file name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests;
