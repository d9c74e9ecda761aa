//! What an operator typed or pasted, reduced to a registry or an image reference: a host
//! (`ghcr.io`, `registry.example.com:5000`), an image reference (`quay.io/org/app:1.0`), or
//! the browser URL of a repository page on Docker Hub, Quay, GitHub Packages or any registry
//! (`https://hub.docker.com/r/bitnami/redis`,
//! `https://registry.example.com:5000/team/app?tab=tags`).
//!
//! Connections are keyed by the [`Registry`] this yields, so Docker Hub's four names are one
//! connection and a pasted page of a registry finds its connection. The reference grammar
//! itself is shared's ([`Reference::parse`]); this module only takes the web page off.

use meshanics_shared::reference::{Reference, ReferenceError, ReferenceErrorKind, Registry};
use percent_encoding::percent_decode_str;

/// The parts of an `http(s)://` URL that matter here.
struct Url {
    host: String,
    segments: Vec<String>,
}

/// Reduces what an operator typed or pasted to a registry: a host (`ghcr.io`,
/// `registry.example.com:5000`), an image reference (`quay.io/org/app:1.0`), or a browser
/// URL (`https://hub.docker.com/r/bitnami/redis`). The host is lowercased (DNS names are
/// case-insensitive, and a connection must have one spelling).
pub fn registry(input: &str) -> Result<Registry, ReferenceError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(ReferenceError::new(input, ReferenceErrorKind::Empty));
    }
    if let Some(url) = as_url(trimmed) {
        let (registry, _) = reduce_url(&url, trimmed)?;
        return Ok(registry);
    }
    let lowered = trimmed.to_ascii_lowercase();
    if !lowered.contains('/') {
        return Registry::parse(&lowered);
    }
    Ok(Reference::parse(&lowered)?.registry().clone())
}

/// Reads what an operator typed or pasted as an image: a reference as [`Reference::parse`]
/// takes it, or a browser URL of a repository page on Docker Hub, Quay, GitHub Packages or
/// any registry (`https://registry.example.com:5000/team/app?tab=tags`).
pub fn reference(input: &str) -> Result<Reference, ReferenceError> {
    let trimmed = input.trim();
    let Some(url) = as_url(trimmed) else {
        return Reference::parse(trimmed);
    };
    let (registry, repository) = reduce_url(&url, trimmed)?;
    let repository = repository
        .ok_or_else(|| ReferenceError::new(trimmed, ReferenceErrorKind::MissingRepository))?;
    let text = format!("{}/{}", registry.as_str(), repository);
    Reference::parse(&text).map_err(|e| ReferenceError::new(trimmed, e.kind))
}

/// Recognizes a URL: `scheme://...`, or a schemeless address of a known web UI
/// (`hub.docker.com/...`, `github.com/...`).
fn as_url(input: &str) -> Option<Result<Url, &'static str>> {
    let (scheme, rest) = match input.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => {
            let first = input
                .split('/')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if matches!(
                first.as_str(),
                "hub.docker.com" | "github.com" | "www.github.com"
            ) {
                (None, input)
            } else {
                return None;
            }
        }
    };
    if let Some(scheme) = scheme
        && !scheme.eq_ignore_ascii_case("https")
        && !scheme.eq_ignore_ascii_case("http")
    {
        return Some(Err("only http and https URLs are understood"));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // Credentials in a URL are never kept, logged or echoed.
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let path = tail.get(..path_end).unwrap_or_default();
    Some(Ok(Url {
        host: host.to_ascii_lowercase(),
        segments: path
            .split('/')
            .filter(|s| !s.is_empty())
            // GitHub writes nested package names as `app%2Fsub`; invalid escapes stay as
            // they are.
            .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
            .collect(),
    }))
}

/// Reduces a parsed URL to a registry and, where the page names one, a repository path.
fn reduce_url(
    url: &Result<Url, &'static str>,
    input: &str,
) -> Result<(Registry, Option<String>), ReferenceError> {
    let unsupported = |why| ReferenceError::new(input, ReferenceErrorKind::UnsupportedUrl(why));
    let url = url.as_ref().map_err(|why| unsupported(why))?;
    let seg: Vec<&str> = url.segments.iter().map(String::as_str).collect();
    match url.host.as_str() {
        "hub.docker.com" | "www.docker.com" | "docker.com" => {
            let repository = match seg.as_slice() {
                [] => None,
                ["_", name, ..] => Some(format!("library/{name}")),
                ["r", ns, name, ..] => Some(format!("{ns}/{name}")),
                ["repository", "docker", ns, name, ..] => Some(format!("{ns}/{name}")),
                ["layers", ns, name, ..] => Some(format!("{ns}/{name}")),
                _ => return Err(unsupported("not a Docker Hub repository page")),
            };
            Ok((Registry::docker_hub(), repository))
        }
        "github.com" | "www.github.com" => {
            let repository = match seg.as_slice() {
                [
                    "orgs" | "users",
                    owner,
                    "packages",
                    "container",
                    "package",
                    name,
                    ..,
                ]
                | [owner, _, "pkgs", "container", name, ..] => {
                    format!("{}/{}", owner.to_ascii_lowercase(), name)
                }
                _ => return Err(unsupported("not a GitHub container package page")),
            };
            Ok((Registry::parse("ghcr.io")?, Some(repository)))
        }
        host => {
            let registry = Registry::parse(host).map_err(|e| ReferenceError::new(input, e.kind))?;
            let mut path: &[&str] = &seg;
            if host == "quay.io" {
                if let ["repository", rest @ ..] = path {
                    path = rest;
                }
                // Quay's pages go on after the repository: /manifest/<digest>, /tag/<tag>.
                if let Some(end) = path.iter().position(|s| matches!(*s, "manifest" | "tag")) {
                    path = path.get(..end).unwrap_or(path);
                }
            }
            // A distribution API URL: /v2/<name>/tags/list, /v2/<name>/manifests/<ref>.
            if let ["v2", rest @ ..] = path {
                path = rest;
                if let Some(end) = path
                    .iter()
                    .position(|s| matches!(*s, "tags" | "manifests" | "blobs"))
                {
                    path = path.get(..end).unwrap_or(path);
                }
            }
            let repository = (!path.is_empty()).then(|| path.join("/"));
            Ok((registry, repository))
        }
    }
}

#[cfg(test)]
mod tests;
