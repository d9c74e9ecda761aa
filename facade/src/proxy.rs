//! The pull-through proxy: a content route becomes one upstream request, and its answer
//! becomes the device's response.
//!
//! - Blobs stream through a [`CheckedBody`]: never buffered, hashed as they pass, aborted on
//!   any mismatch. A `Range` is passed on; a `206` must name the range asked for in its
//!   `Content-Range`, and is checked for length (a slice has no digest of its own: the device
//!   verifies the whole when it has it).
//! - Manifests (at most 4 MiB) are read whole and verified before the first byte is sent,
//!   so a bad manifest is a clean error response instead of an aborted one.
//! - `HEAD` asks the upstream for headers only and answers with `Content-Length`,
//!   `Content-Type` and `Docker-Content-Digest`.
//! - An upstream `Docker-Content-Digest` that names other content is refused.
//! - An upstream length no content with the digest can have is refused before any header:
//!   see [`check_length_can_match`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderName, RANGE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use meshanics_http::range;
use meshanics_shared::manifest::MAX_MANIFEST_SIZE;
use meshanics_shared::{Digest, Verifier, VerifyError};

use crate::approval::ApprovedUpstreams;
use crate::body::{Body, Check, CheckedBody, Origin};
use crate::budget::{self, Budgets, Holding, ManifestRoom};
use crate::config::Limits;
use crate::error::Error;
use crate::identity::DeviceIdentity;
use crate::metrics::Metrics;
use crate::registry_client::{ContentKind, ContentRequest, UpstreamError, read_capped};
use crate::respond;
use crate::routes::ContentTarget;

/// The digest header of the distribution API.
pub static DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

/// Serves a manifest or blob from its approved upstream.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site (service::handle) passes what the request shares; a struct would only rename them"
)]
pub async fn content(
    upstreams: &dyn ApprovedUpstreams,
    metrics: &Arc<Metrics>,
    limits: &Limits,
    budgets: &Budgets,
    device: &DeviceIdentity,
    target: ContentTarget,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response<Body>, Error> {
    let upstream = upstreams
        .approved(&target.upstream)
        .ok_or_else(|| Error::UnknownUpstream {
            registry: target.upstream.clone(),
        })?;
    let range = match (target.kind, method) {
        (ContentKind::Blob, &Method::GET) => headers.get(RANGE).filter(|r| single_range(r)),
        _ => None,
    };
    let request = ContentRequest {
        method: method.clone(),
        kind: target.kind,
        repository: &target.repository,
        digest: &target.digest,
        range,
    };
    let started = Instant::now();
    let response = upstream.fetch(&request).await?;
    metrics.upstream_latency(started.elapsed());

    let status = response.status();
    let partial = status == StatusCode::PARTIAL_CONTENT && range.is_some();
    if status != StatusCode::OK && !partial {
        return Err(status_error(&target, status, response.headers()));
    }
    check_digest_header(&target, response.headers(), metrics, device)?;
    let length = content_length(response.headers());
    if !partial && let Some(length) = length {
        check_length_can_match(&target, length, metrics, device)?;
    }
    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    let is_manifest = target.kind == ContentKind::Manifest;
    if is_manifest && let Some(size) = length.filter(|s| *s > MAX_MANIFEST_SIZE) {
        return Err(manifest_too_large(&target, size));
    }

    if method == Method::HEAD {
        let length = length.ok_or_else(|| Error::MissingLength {
            registry: target.upstream.clone(),
            digest: target.digest.clone(),
        })?;
        let mut reply = headers_only(&target.digest, content_type, length);
        *reply.status_mut() = status;
        return Ok(reply);
    }
    if is_manifest {
        let room = budgets
            .manifest_room(length.unwrap_or(MAX_MANIFEST_SIZE))
            .await;
        return manifest(target, response, content_type, room, metrics, device).await;
    }
    let check = if partial {
        let content_range = response.headers().get(CONTENT_RANGE).cloned();
        let (Some(length), Some(content_range)) = (length, content_range) else {
            return Err(Error::MissingLength {
                registry: target.upstream.clone(),
                digest: target.digest.clone(),
            });
        };
        if let Some(asked) = range {
            check_content_range(&target, asked, &content_range, length, metrics, device)?;
        }
        (
            Check::Length {
                remaining: length,
                expected: length,
            },
            Some(content_range),
        )
    } else {
        (
            Check::full(target.digest.clone(), length, limits.max_unsized_blob_bytes),
            None,
        )
    };
    let (check, content_range) = check;
    let origin = Origin {
        registry: target.upstream.clone(),
        digest: target.digest.clone(),
        device: device.clone(),
    };
    let body = CheckedBody::new(
        reqwest::Body::from(response),
        check,
        origin,
        metrics.clone(),
    );
    let mut reply = Response::new(body.boxed_unsync());
    *reply.status_mut() = status;
    let out = reply.headers_mut();
    out.insert(CONTENT_TYPE, content_type.unwrap_or_else(octet_stream));
    out.insert(DOCKER_CONTENT_DIGEST.clone(), digest_value(&target.digest));
    if let Some(length) = length {
        out.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    if let Some(content_range) = content_range {
        out.insert(CONTENT_RANGE, content_range);
    }
    Ok(reply)
}

/// Reads and verifies a manifest before sending any of it, in `room` taken from
/// `manifest_buffer_bytes` for its announced size (or the maximum) and held until its body
/// is dropped; without room, 503 with `Retry-After`.
async fn manifest(
    target: ContentTarget,
    response: reqwest::Response,
    content_type: Option<HeaderValue>,
    room: Option<ManifestRoom>,
    metrics: &Metrics,
    device: &DeviceIdentity,
) -> Result<Response<Body>, Error> {
    let Some(room) = room else {
        tracing::warn!(%device, upstream = %target.upstream, digest = %target.digest,
            "refusing a manifest for now: manifest_buffer_bytes is in use by others");
        return Ok(budget::refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the facade has too many manifests in memory; retry later",
        ));
    };
    let limit = usize::try_from(MAX_MANIFEST_SIZE).unwrap_or(usize::MAX);
    let bytes = match read_capped(response, limit).await {
        Ok(bytes) => bytes,
        Err(UpstreamError::TooLarge { .. }) => {
            metrics.verification_failure("manifest_too_large");
            return Err(manifest_too_large(&target, MAX_MANIFEST_SIZE + 1));
        }
        Err(other) => return Err(other.into()),
    };
    let mut verifier = Verifier::new(target.digest.clone(), bytes.len() as u64);
    let verified = verifier.update(&bytes).and_then(|()| verifier.finish());
    if let Err(source) = verified {
        metrics.verification_failure("mismatch");
        tracing::warn!(%device, upstream = %target.upstream, digest = %target.digest, %source,
            "refusing a manifest that does not match its digest");
        return Err(Error::Verification {
            registry: target.upstream,
            source,
        });
    }
    let content_type = content_type.or_else(|| sniff_media_type(&bytes));
    let length = bytes.len() as u64;
    let mut reply = headers_only(&target.digest, content_type, length);
    *reply.body_mut() = Holding::new(respond::full(Bytes::from(bytes)), room).boxed_unsync();
    metrics.streamed(length);
    Ok(reply)
}

/// A response with the content headers and an empty body (HEAD, or filled in later).
fn headers_only(digest: &Digest, content_type: Option<HeaderValue>, length: u64) -> Response<Body> {
    let mut reply = Response::new(respond::full(Bytes::new()));
    let out = reply.headers_mut();
    out.insert(CONTENT_TYPE, content_type.unwrap_or_else(octet_stream));
    out.insert(CONTENT_LENGTH, HeaderValue::from(length));
    out.insert(DOCKER_CONTENT_DIGEST.clone(), digest_value(digest));
    reply
}

fn status_error(target: &ContentTarget, status: StatusCode, headers: &HeaderMap) -> Error {
    let registry = target.upstream.clone();
    match status {
        StatusCode::NOT_FOUND => Error::ContentUnknown {
            registry,
            kind: target.kind,
            digest: target.digest.clone(),
        },
        StatusCode::RANGE_NOT_SATISFIABLE => Error::RangeNotSatisfiable {
            registry,
            digest: target.digest.clone(),
            content_range: headers.get(CONTENT_RANGE).cloned(),
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Error::UpstreamDenied { registry, status }
        }
        StatusCode::TOO_MANY_REQUESTS => Error::UpstreamRateLimited {
            registry,
            retry_after: retry_after(headers),
        },
        status => Error::UpstreamStatus {
            registry,
            digest: target.digest.clone(),
            status,
            retry_after: retry_after(headers),
        },
    }
}

/// The upstream's `Retry-After` when it is one a device can act on: delay seconds, or an
/// HTTP date (printable ASCII, short); anything else is dropped rather than echoed.
fn retry_after(headers: &HeaderMap) -> Option<HeaderValue> {
    let value = headers.get(RETRY_AFTER)?;
    let bytes = value.as_bytes();
    let seconds = !bytes.is_empty() && bytes.len() <= 10 && bytes.iter().all(u8::is_ascii_digit);
    let date = (20..=40).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b' ' | b',' | b':'));
    (seconds || date).then(|| value.clone())
}

fn check_digest_header(
    target: &ContentTarget,
    headers: &HeaderMap,
    metrics: &Metrics,
    device: &DeviceIdentity,
) -> Result<(), Error> {
    let Some(announced) = headers.get(&DOCKER_CONTENT_DIGEST) else {
        return Ok(());
    };
    let matches = announced
        .to_str()
        .ok()
        .and_then(|text| Digest::parse(text.trim()).ok())
        .is_some_and(|digest| digest == target.digest);
    if matches {
        return Ok(());
    }
    metrics.verification_failure("digest_header");
    let announced = String::from_utf8_lossy(announced.as_bytes()).into_owned();
    tracing::warn!(%device, upstream = %target.upstream, digest = %target.digest, %announced,
        "refusing content whose Docker-Content-Digest names other content");
    Err(Error::DigestHeaderMismatch {
        registry: target.upstream.clone(),
        expected: target.digest.clone(),
        announced,
    })
}

/// Refuses a whole-content length that no content with the digest can have. The empty
/// content has one digest per algorithm, so 0 bytes for any other digest, or more than 0 for
/// that one, can never verify. It must be caught before the headers go out: over HTTP/1.1 an
/// answer with `Content-Length: 0` is complete with its head, so the abort that verification
/// would end in reaches the device as a clean, empty 200.
fn check_length_can_match(
    target: &ContentTarget,
    length: u64,
    metrics: &Metrics,
    device: &DeviceIdentity,
) -> Result<(), Error> {
    let empty = target.digest.hasher().finish();
    let source = match (length == 0, target.digest == empty) {
        (true, false) => VerifyError::Mismatch {
            expected: target.digest.clone(),
            actual: empty,
        },
        (false, true) => VerifyError::TooLong {
            digest: empty,
            expected: 0,
        },
        _ => return Ok(()),
    };
    metrics.verification_failure("impossible_length");
    tracing::warn!(%device, upstream = %target.upstream, digest = %target.digest, length,
        "refusing content whose announced length cannot match its digest");
    Err(Error::Verification {
        registry: target.upstream.clone(),
        source,
    })
}

fn manifest_too_large(target: &ContentTarget, size: u64) -> Error {
    Error::ManifestTooLarge {
        registry: target.upstream.clone(),
        digest: target.digest.clone(),
        size,
        limit: MAX_MANIFEST_SIZE,
    }
}

/// Refuses a `206` whose `Content-Range` is not the slice `asked` names (of the total it
/// announces), or whose `Content-Length` is not that slice's length.
fn check_content_range(
    target: &ContentTarget,
    asked: &HeaderValue,
    answered: &HeaderValue,
    length: u64,
    metrics: &Metrics,
    device: &DeviceIdentity,
) -> Result<(), Error> {
    let matches = range::content_range(answered).is_some_and(|((start, end), total)| {
        range::parse(asked, total) == Some((start, end)) && end - start == length
    });
    if matches {
        return Ok(());
    }
    metrics.verification_failure("content_range");
    let text = |value: &HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned();
    let error = UpstreamError::WrongRange {
        registry: target.upstream.clone(),
        digest: target.digest.clone(),
        asked: text(asked),
        answered: text(answered),
        length,
    };
    tracing::warn!(%device, %error, "refusing a 206 that is not the range asked for");
    Err(error.into())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Only one plain `bytes=` range is passed on; anything else is dropped, and the device gets
/// the whole blob (which HTTP allows).
fn single_range(value: &HeaderValue) -> bool {
    let Some(spec) = value.to_str().ok().and_then(|v| v.strip_prefix("bytes=")) else {
        return false;
    };
    let Some((start, end)) = spec.split_once('-') else {
        return false;
    };
    let digits = |s: &str| s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    (!start.is_empty() || !end.is_empty()) && digits(start) && digits(end)
}

fn sniff_media_type(bytes: &[u8]) -> Option<HeaderValue> {
    #[derive(serde::Deserialize)]
    struct MediaType {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let parsed: MediaType = serde_json::from_slice(bytes).ok()?;
    HeaderValue::from_str(&parsed.media_type?).ok()
}

fn digest_value(digest: &Digest) -> HeaderValue {
    // A parsed digest is `algorithm:lowercase-hex`: always a valid header value.
    HeaderValue::from_str(digest.as_str()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn octet_stream() -> HeaderValue {
    HeaderValue::from_static("application/octet-stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_only_single_byte_ranges() {
        for ok in ["bytes=0-99", "bytes=100-", "bytes=-500"] {
            assert!(single_range(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "bytes=0-1,5-9",
            "items=0-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=1",
        ] {
            assert!(!single_range(&HeaderValue::from_static(bad)), "{bad}");
        }
    }

    #[test]
    fn passes_on_retry_after_seconds_and_dates_only() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_static(value));
            retry_after(&headers)
        };
        assert_eq!(with("7").unwrap(), "7");
        assert_eq!(
            with("Wed, 21 Oct 2026 07:28:00 GMT").unwrap(),
            "Wed, 21 Oct 2026 07:28:00 GMT"
        );
        for bad in ["", "-1", "soon<script>", "99999999999999"] {
            assert!(with(bad).is_none(), "{bad}");
        }
        assert!(retry_after(&HeaderMap::new()).is_none());
    }

    #[test]
    fn sniffs_a_manifest_media_type_from_its_json() {
        let json = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#;
        assert_eq!(
            sniff_media_type(json).unwrap(),
            "application/vnd.oci.image.index.v1+json"
        );
        assert!(sniff_media_type(b"{}").is_none());
    }
}
