//! Tag listing and tag resolution over the connections' registry clients: the operator API's
//! [`Browser`].
//!
//! Tags follow `Link: <...>; rel="next"` verbatim (registries use opaque cursors), stay on
//! the registry's origin, drop tags that break the tag grammar, and stop at the caller's
//! limit, a `Link` loop or a cap, saying so ([`tags::Walk`]). A tag resolves by `HEAD`
//! with all four manifest media types (the digest header, size and type), falling back to
//! `GET`, where the body is hashed and must match any digest header: an unverified body never
//! becomes a pin.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK, RETRY_AFTER};
use http::{Method, StatusCode};
use meshanics_operator_api::{BrowseError, Browser, ClipReason, Resolved, TagList};
use meshanics_shared::manifest::MAX_MANIFEST_SIZE;
use meshanics_shared::media_type::{MANIFEST_ACCEPT, manifest_kind};
use meshanics_shared::{Digest, Reference};
use serde::Deserialize;

use super::store_upstreams::StoreUpstreams;
use crate::registry_client::{Upstream, UpstreamError, read_capped};
use crate::tags;

/// Browses registries through the connection store.
#[derive(Debug)]
pub struct StoreBrowser {
    upstreams: Arc<StoreUpstreams>,
}

#[derive(Deserialize)]
struct TagPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl StoreBrowser {
    /// A browser over `upstreams`' connections.
    pub fn new(upstreams: Arc<StoreUpstreams>) -> Self {
        StoreBrowser { upstreams }
    }

    fn client(&self, reference: &Reference) -> Result<Arc<Upstream>, BrowseError> {
        match self.upstreams.connected(reference.registry()) {
            Ok(Some(client)) => Ok(client),
            Ok(None) => Err(BrowseError::NotConnected(reference.registry().to_string())),
            Err(e) => Err(BrowseError::Failed(e.to_string())),
        }
    }

    async fn list(&self, reference: &Reference, limit: usize) -> Result<TagList, BrowseError> {
        let client = self.client(reference)?;
        let repository = reference.repository();
        let what = reference.name();
        let mut url = client
            .api_url(&format!(
                "{repository}/tags/list?n={}",
                limit.min(tags::PAGE_SIZE)
            ))
            .map_err(|e| upstream_error(&what, e))?;
        let base = client.api_url("").map_err(|e| upstream_error(&what, e))?;
        let mut walk = tags::Walk::new(limit);
        while walk.visit(&url) {
            let response = client
                .request(Method::GET, url.clone(), repository, "application/json")
                .await
                .map_err(|e| upstream_error(&what, e))?;
            check_status(&response, &what)?;
            let next = tags::next_link(
                response
                    .headers()
                    .get_all(LINK)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let body = match read_capped(response, walk.page_budget()).await {
                Ok(body) => body,
                Err(UpstreamError::TooLarge { .. }) => {
                    walk.page_too_large();
                    break;
                }
                Err(e) => return Err(upstream_error(&what, e)),
            };
            let page: TagPage = serde_json::from_slice(&body)
                .map_err(|e| BrowseError::Failed(format!("{what}: unreadable tag list: {e}")))?;
            if !walk.page(body.len(), page.tags.unwrap_or_default(), next.is_some()) {
                break;
            }
            let Some(next) = next else { break };
            url = tags::resolve_link(&base, &next)
                .map_err(|e| BrowseError::Failed(format!("{what}: {e}")))?;
        }
        if walk.dropped() > 0 {
            tracing::warn!(
                repository = %what,
                dropped = walk.dropped(),
                "the registry listed tags that break the tag grammar: dropped"
            );
        }
        let list = walk.finish(what);
        if let Some(reason) = list.clip_reason.filter(|r| *r != ClipReason::Limit) {
            tracing::warn!(repository = %list.repository, "tag listing clipped: {reason}");
        }
        Ok(list)
    }

    async fn resolve_tag(&self, reference: &Reference) -> Result<Resolved, BrowseError> {
        let client = self.client(reference)?;
        let repository = reference.repository();
        let tag = reference
            .tag()
            .ok_or_else(|| BrowseError::Failed(format!("{reference} has no tag")))?;
        let what = reference.to_string();
        let url = client
            .api_url(&format!("{repository}/manifests/{tag}"))
            .map_err(|e| upstream_error(&what, e))?;
        let head = client
            .request(Method::HEAD, url.clone(), repository, MANIFEST_ACCEPT)
            .await
            .map_err(|e| upstream_error(&what, e))?;
        if head.status() != StatusCode::METHOD_NOT_ALLOWED {
            check_status(&head, &what)?;
            let header = |name| head.headers().get(name).and_then(|v| v.to_str().ok());
            let digest = header("docker-content-digest").and_then(|d| Digest::parse(d).ok());
            let size = header(CONTENT_LENGTH.as_str()).and_then(|s| s.parse::<u64>().ok());
            let media_type = header(CONTENT_TYPE.as_str()).filter(|t| manifest_kind(t).is_some());
            if let (Some(digest), Some(size), Some(media_type)) = (digest, size, media_type) {
                return Ok(Resolved {
                    digest,
                    size,
                    media_type: essence(media_type),
                });
            }
        }
        // No usable HEAD answer: fetch the manifest and hash it ourselves.
        let get = client
            .request(Method::GET, url, repository, MANIFEST_ACCEPT)
            .await
            .map_err(|e| upstream_error(&what, e))?;
        check_status(&get, &what)?;
        let claimed = get
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| Digest::parse(d).ok());
        let content_type = get
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(essence);
        let body = read_capped(get, MAX_MANIFEST_SIZE as usize)
            .await
            .map_err(|e| upstream_error(&what, e))?;
        let digest = Digest::sha256_of(&body);
        if let Some(claimed) = claimed
            && claimed.algorithm() == digest.algorithm()
            && claimed != digest
        {
            return Err(BrowseError::Failed(format!(
                "{what}: the registry says {claimed} but the manifest hashes to {digest}"
            )));
        }
        let media_type = match content_type.filter(|t| manifest_kind(t).is_some()) {
            Some(t) => t,
            None => body_media_type(&body).ok_or_else(|| {
                BrowseError::Failed(format!("{what}: the manifest names no media type"))
            })?,
        };
        Ok(Resolved {
            digest,
            size: body.len() as u64,
            media_type,
        })
    }
}

impl Browser for StoreBrowser {
    fn tags<'a>(
        &'a self,
        repository: &'a Reference,
        limit: usize,
    ) -> BoxFuture<'a, Result<TagList, BrowseError>> {
        Box::pin(self.list(repository, limit))
    }

    fn resolve<'a>(
        &'a self,
        reference: &'a Reference,
    ) -> BoxFuture<'a, Result<Resolved, BrowseError>> {
        Box::pin(self.resolve_tag(reference))
    }
}

fn check_status(response: &reqwest::Response, what: &str) -> Result<(), BrowseError> {
    let status = response.status();
    match status {
        s if s.is_success() => Ok(()),
        StatusCode::NOT_FOUND => Err(BrowseError::NotFound(what.to_owned())),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Err(BrowseError::Unauthorized(what.to_owned()))
        }
        StatusCode::TOO_MANY_REQUESTS => Err(BrowseError::RateLimited {
            what: what.to_owned(),
            retry_after: response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok()),
        }),
        s => Err(BrowseError::Failed(format!(
            "{what}: the registry answered {}",
            s.as_u16()
        ))),
    }
}

fn upstream_error(what: &str, error: UpstreamError) -> BrowseError {
    match error {
        UpstreamError::Timeout { .. } => BrowseError::Timeout(what.to_owned()),
        UpstreamError::Credentials(e) => BrowseError::Failed(format!("{what}: {e}")),
        other => BrowseError::Failed(format!("{what}: {other}")),
    }
}

fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn body_media_type(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let probe: Probe = serde_json::from_slice(body).ok()?;
    probe.media_type.filter(|t| manifest_kind(t).is_some())
}
