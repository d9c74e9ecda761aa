//! The pull-through proxy: a content route is answered from the cache ([`crate::cache`]: a
//! hit, or a fill shared by every request for the digest), or, with the cache off or for
//! content it does not take, becomes one upstream request whose answer becomes the device's
//! response.
//!
//! Through the cache: the upstream must be approved now, hit or not; a hit asked under
//! another repository than the ones it was fetched or confirmed under is confirmed with an
//! upstream `HEAD` first (refused as the upstream refuses, fetched again when the answer is
//! unclear). `Range` (one `bytes=` range: 206, or 416 with `Content-Range: bytes */SIZE`) and
//! `HEAD` are answered from the entry or from the fill in progress. A miss whose upstream is
//! unreachable, failing or rate-limiting is a 503 with `Retry-After` ([`Error::on_miss`]).
//!
//! Straight from the upstream:
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
use tokio::sync::watch;

use crate::body::{Body, Check, CheckedBody, Origin};
use crate::cache::reader::Reader;
use crate::cache::{Cache, Fill, Filler, Head, Lookup, Progress, media_type_of};
use crate::config::Limits;
use crate::error::Error;
use crate::identity::DeviceIdentity;
use crate::metrics::Metrics;
use crate::registry_client::{ContentKind, ContentRequest, Upstream, UpstreamError, read_capped};
use crate::respond;
use crate::routes::ContentTarget;
use crate::service::Shared;

/// The digest header of the distribution API.
pub static DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

/// One device request for content, with what serving it needs.
#[derive(Debug, Clone, Copy)]
struct Ask<'a> {
    upstream: &'a Arc<Upstream>,
    metrics: &'a Arc<Metrics>,
    limits: &'a Limits,
    device: &'a DeviceIdentity,
    target: &'a ContentTarget,
    method: &'a Method,
    headers: &'a HeaderMap,
}

/// Serves a manifest or blob: from the cache when `shared` has one (a hit, a fill in
/// progress, or a new fill), else straight from its approved upstream.
pub async fn content(
    shared: &Shared,
    device: &DeviceIdentity,
    target: ContentTarget,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response<Body>, Error> {
    let upstream =
        shared
            .upstreams
            .approved(&target.upstream)
            .ok_or_else(|| Error::UnknownUpstream {
                registry: target.upstream.clone(),
            })?;
    let ask = Ask {
        upstream: &upstream,
        metrics: &shared.metrics,
        limits: &shared.limits,
        device,
        target: &target,
        method,
        headers,
    };
    match &shared.cache {
        Some(cache) => cached(cache, ask).await,
        None => passthrough(ask, None).await,
    }
}

/// What an upstream `HEAD` said about content asked under another repository than the ones
/// it was fetched or confirmed under.
enum Confirmation {
    /// It serves that content there.
    Yes,
    /// It refuses it (404, 401, 403): the device is refused the same way.
    Refused(Error),
    /// No clear answer (unreachable, another status, other content): treated as a miss.
    Unknown,
}

/// Serves content through the cache; see [`crate::cache`].
async fn cached(cache: &Arc<Cache>, ask: Ask<'_>) -> Result<Response<Body>, Error> {
    let target = ask.target;
    let digest = &target.digest;
    let pair = (target.upstream.clone(), target.repository.clone());
    let manifest = target.kind == ContentKind::Manifest;
    // A HEAD never starts a fill: on a miss it is answered by an upstream HEAD.
    let start = *ask.method == Method::GET;
    match cache.lookup(digest, target.kind, &pair, start) {
        Lookup::Hit(hit) => {
            if !hit.pair_known {
                match confirm(ask, Some(hit.entry.size)).await {
                    Confirmation::Yes => drop(cache.confirm(digest, &pair)),
                    Confirmation::Refused(error) => return Err(error),
                    Confirmation::Unknown => return miss(ask).await,
                }
            }
            let path = hit.path.clone();
            let file = match tokio::task::spawn_blocking(move || std::fs::File::open(path)).await {
                Ok(Ok(file)) => Arc::new(file),
                _ => {
                    // Evicted since the lookup, or removed behind the facade's back.
                    tracing::warn!(%digest, path = %hit.path.display(),
                        "cache: an entry's file cannot be opened; fetching again");
                    cache.remove(digest);
                    return miss(ask).await;
                }
            };
            ask.metrics.cache_hit(manifest);
            let media_type = hit.entry.media_type.clone();
            answer(ask, file, None, hit.entry.size, media_type)
        }
        Lookup::Miss => miss(ask).await,
        Lookup::Join(fill) => {
            if fill.pair() != &pair {
                match confirm(ask, None).await {
                    Confirmation::Yes => fill.confirm(pair),
                    Confirmation::Refused(error) => return Err(error),
                    Confirmation::Unknown => return miss(ask).await,
                }
            }
            ask.metrics.cache_miss(manifest);
            from_fill(ask, &fill).await
        }
        Lookup::Start(filler) => {
            ask.metrics.cache_miss(manifest);
            let fill = filler.fill().clone();
            tokio::spawn(run_fill(
                filler,
                ask.upstream.clone(),
                target.clone(),
                ask.metrics.clone(),
                ask.device.clone(),
            ));
            from_fill(ask, &fill).await
        }
    }
}

/// A miss answered straight from the upstream (a `HEAD`, or a hit that could not be
/// confirmed or read).
async fn miss(ask: Ask<'_>) -> Result<Response<Body>, Error> {
    ask.metrics
        .cache_miss(ask.target.kind == ContentKind::Manifest);
    passthrough(ask, None)
        .await
        .map_err(|error| error.on_miss(&ask.target.digest))
}

/// Asks the upstream (`HEAD`) whether it serves `digest` under the repository asked for.
async fn confirm(ask: Ask<'_>, size: Option<u64>) -> Confirmation {
    let target = ask.target;
    let request = ContentRequest {
        method: Method::HEAD,
        kind: target.kind,
        repository: &target.repository,
        digest: &target.digest,
        range: None,
    };
    let Ok(response) = ask.upstream.fetch(&request).await else {
        return Confirmation::Unknown;
    };
    let status = response.status();
    match status {
        StatusCode::OK => {
            let headers = response.headers();
            let same_digest = headers.get(&DOCKER_CONTENT_DIGEST).is_none_or(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|text| Digest::parse(text.trim()).ok())
                    .is_some_and(|announced| announced == target.digest)
            });
            let same_size = match (size, content_length(headers)) {
                (Some(size), Some(length)) => size == length,
                _ => true,
            };
            if same_digest && same_size {
                Confirmation::Yes
            } else {
                Confirmation::Unknown
            }
        }
        StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Confirmation::Refused(status_error(target, status, response.headers()))
        }
        _ => Confirmation::Unknown,
    }
}

/// Answers from a fill: once it has the upstream's answer (blobs), or once it verified the
/// whole (manifests, sent only whole and verified).
async fn from_fill(ask: Ask<'_>, fill: &Arc<Fill>) -> Result<Response<Body>, Error> {
    let digest = &ask.target.digest;
    let stopped = || Error::FillFailed {
        registry: ask.target.upstream.clone(),
        digest: digest.clone(),
        reason: "the fill stopped".into(),
    };
    let mut progress = fill.subscribe();
    let manifest_get = ask.target.kind == ContentKind::Manifest && *ask.method == Method::GET;
    let state = progress
        .wait_for(|state| match state {
            Progress::Starting => false,
            Progress::Streaming { .. } => !manifest_get,
            _ => true,
        })
        .await
        .map(|state| state.clone())
        .map_err(|_| stopped().on_miss(digest))?;
    let (file, size, media_type) = match state {
        Progress::Failed(failure) => return Err(Error::Shared(failure.error).on_miss(digest)),
        Progress::Uncacheable => {
            let whole_get = *ask.method == Method::GET && ask.headers.get(RANGE).is_none();
            let response = whole_get.then(|| fill.take_response()).flatten();
            return passthrough(ask, response)
                .await
                .map_err(|error| error.on_miss(digest));
        }
        Progress::Starting => return Err(stopped().on_miss(digest)),
        Progress::Streaming {
            file,
            size,
            media_type,
            ..
        }
        | Progress::Done {
            file,
            size,
            media_type,
        } => (file, size, media_type),
    };
    if *ask.method == Method::GET {
        fill.add_device();
    }
    answer(ask, file, Some(progress), size, media_type)
}

/// The answer from cached content (`progress` while a fill is writing it): headers, a
/// `Range` (206, or 416 with `Content-Range: bytes */SIZE`), the body read at the device's
/// pace.
fn answer(
    ask: Ask<'_>,
    file: Arc<std::fs::File>,
    progress: Option<watch::Receiver<Progress>>,
    size: u64,
    media_type: Option<String>,
) -> Result<Response<Body>, Error> {
    let target = ask.target;
    let content_type = media_type.and_then(|text| HeaderValue::from_str(&text).ok());
    if *ask.method == Method::HEAD {
        return Ok(headers_only(&target.digest, content_type, size));
    }
    let asked = match target.kind {
        ContentKind::Blob => ask.headers.get(RANGE),
        ContentKind::Manifest => None,
    };
    let span = match asked {
        None => None,
        Some(value) => match range::parse(value, size) {
            Some(span) => Some(span),
            None if single_range(value) => {
                return Err(Error::RangeNotSatisfiable {
                    registry: target.upstream.clone(),
                    digest: target.digest.clone(),
                    content_range: HeaderValue::from_str(&format!("bytes */{size}")).ok(),
                });
            }
            // Not a range the facade answers: the whole content, as HTTP allows.
            None => None,
        },
    };
    let (start, end) = span.unwrap_or((0, size));
    let metrics = ask.metrics.clone();
    let digest = target.digest.clone();
    let reader = Reader::new(file, progress, digest, (start, end), size, metrics);
    let mut reply = headers_only(&target.digest, content_type, end - start);
    *reply.body_mut() = reader.into_body();
    if span.is_some() {
        *reply.status_mut() = StatusCode::PARTIAL_CONTENT;
        let content_range = format!("bytes {start}-{}/{size}", end.saturating_sub(1));
        if let Ok(value) = HeaderValue::from_str(&content_range) {
            reply.headers_mut().insert(CONTENT_RANGE, value);
        }
    }
    Ok(reply)
}

/// The fill's own task: one upstream `GET` (for the rest only, with `Range`, when a previous
/// fill was cut off by a read error and the upstream answers it), checked as a pass-through
/// answer is, then streamed into the cache.
async fn run_fill(
    filler: Filler,
    upstream: Arc<Upstream>,
    target: ContentTarget,
    metrics: Arc<Metrics>,
    device: DeviceIdentity,
) {
    let partial = filler.partial();
    let resume_range =
        partial.and_then(|(written, _)| HeaderValue::from_str(&format!("bytes={written}-")).ok());
    let request = ContentRequest {
        method: Method::GET,
        kind: target.kind,
        repository: &target.repository,
        digest: &target.digest,
        range: resume_range.as_ref(),
    };
    let started = Instant::now();
    let response = match upstream.fetch(&request).await {
        Ok(response) => response,
        Err(error) => return filler.fail(error.into()),
    };
    metrics.upstream_latency(started.elapsed());
    let status = response.status();
    let resumed = status == StatusCode::PARTIAL_CONTENT && resume_range.is_some();
    if status != StatusCode::OK && !resumed {
        return filler.fail(status_error(&target, status, response.headers()));
    }
    if let Err(error) = check_digest_header(&target, response.headers(), &metrics, &device) {
        return filler.fail(error);
    }
    let length = content_length(response.headers());
    let media_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let (size, resume) = match partial {
        Some((written, size)) if resumed => {
            let answered = response.headers().get(CONTENT_RANGE);
            let fits = answered.and_then(range::content_range) == Some(((written, size), size))
                && length == Some(size - written);
            let resume = match fits {
                true => filler.resume_point(size).await,
                false => None,
            };
            let Some(resume) = resume else {
                filler.discard_partial();
                return filler.fail(Error::FillFailed {
                    registry: target.upstream.clone(),
                    digest: target.digest.clone(),
                    reason: "the upstream did not answer the rest of the content as asked".into(),
                });
            };
            (size, Some(resume))
        }
        _ => {
            if partial.is_some() {
                // A whole answer to a `Range`: start over.
                filler.discard_partial();
            }
            let Some(length) = length else {
                return filler.uncacheable(Some(response));
            };
            if let Err(error) = check_length_can_match(&target, length, &metrics, &device) {
                return filler.fail(error);
            }
            if target.kind == ContentKind::Manifest && length > MAX_MANIFEST_SIZE {
                return filler.fail(manifest_too_large(&target, length));
            }
            (length, None)
        }
    };
    let mut filler = filler;
    if !filler.reserve(size) {
        tracing::info!(digest = %target.digest, size, "cache: too large to cache, streamed through");
        return filler.uncacheable((!resumed).then_some(response));
    }
    let body = futures_util::stream::unfold(response, |mut response| async move {
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), response)),
            Ok(None) => None,
            Err(error) => Some((Err(error.without_url()), response)),
        }
    });
    let head = Head {
        size,
        media_type,
        resume,
    };
    filler.run(head, Box::pin(body)).await;
}

/// Serves a manifest or blob straight from its upstream (the cache off, or content it does
/// not take): `response` when the fill already has the upstream's answer, else a request of
/// its own.
async fn passthrough(
    ask: Ask<'_>,
    response: Option<reqwest::Response>,
) -> Result<Response<Body>, Error> {
    let reply = straight(ask, response).await?;
    let metrics = ask.metrics.clone();
    Ok(reply.map(|body| {
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                metrics.passed_through(data.len() as u64);
            }
            frame
        })
        .boxed_unsync()
    }))
}

/// [`passthrough`], before its bytes are counted.
async fn straight(
    ask: Ask<'_>,
    response: Option<reqwest::Response>,
) -> Result<Response<Body>, Error> {
    let Ask {
        upstream,
        metrics,
        limits,
        device,
        target,
        method,
        headers,
    } = ask;
    let target = target.clone();
    let range = match (target.kind, method) {
        (ContentKind::Blob, &Method::GET) => headers.get(RANGE).filter(|r| single_range(r)),
        _ => None,
    };
    let response = match response {
        Some(response) => response,
        None => {
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
            response
        }
    };

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
        return manifest(target, response, content_type, metrics, device).await;
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

/// Reads and verifies a manifest before sending any of it.
async fn manifest(
    target: ContentTarget,
    response: reqwest::Response,
    content_type: Option<HeaderValue>,
    metrics: &Metrics,
    device: &DeviceIdentity,
) -> Result<Response<Body>, Error> {
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
    *reply.body_mut() = respond::full(Bytes::from(bytes));
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
    HeaderValue::from_str(&media_type_of(bytes)?).ok()
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
