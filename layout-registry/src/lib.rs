//! # meshanics-layout-registry
//!
//! A read-only registry that serves OCI image layouts from a folder.
//!
//! It is the upstream for sites that receive images as files rather than from a registry
//! (air-gapped networks that carry `skopeo copy ... oci:DIR:TAG` folders across), and the
//! demo's upstream where no distribution registry is installed. The facade connects to it
//! like to any registry (`meshctl registry add HOST --anonymous --plain-http`).
//!
//! Every layout under the root folder (a folder holding `oci-layout` and `index.json`) is a
//! repository named by its path below the root: `ROOT/org/app` is `org/app`. Its tags are the
//! `org.opencontainers.image.ref.name` annotations in `index.json`. It answers what a puller
//! asks, GET and HEAD only: `/v2/`, `tags/list` (with `n`, `last` and `Link` paging),
//! manifests by tag or digest, and blobs by digest with single `Range`s.
//!
//! Plain HTTP, for loopback or a trusted link beside the facade. Manifests are checked
//! against their digest before they are served (they are small); blobs are streamed as they
//! are on disk, because every byte is verified downstream by the facade and the device.
//!
//! [`LayoutRegistry`] finds layouts and answers requests; [`serve`] runs it on a listener
//! through the shared serve loop ([`meshanics_http::serve`]). The `meshanics-layout-registry`
//! binary (src/main.rs) wraps both with a command line. It shares no code with the facade.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, RANGE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use meshanics_http::{Connection, ServeConfig, oci_error, range};
use meshanics_shared::Digest;
use meshanics_shared::manifest::MAX_MANIFEST_SIZE;
use meshanics_shared::media_type::{OCI_INDEX, OCI_MANIFEST};
use meshanics_shared::reference::Repository;
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::io::ReaderStream;

/// The annotation that names a tag in an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How many tags one `tags/list` page holds when the client does not say.
const DEFAULT_PAGE: usize = 1000;

/// The body every answer carries.
type Body = BoxBody<Bytes, io::Error>;

/// Why the layout registry could not start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The root folder is missing or not a folder.
    #[error("the layout root {path} is not a readable folder: {source}")]
    Root {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A layout file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A layout's `index.json` is not an OCI index.
    #[error("{path} is not an OCI image index: {detail}")]
    BadIndex {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A manifest on disk does not match its digest.
    #[error("{path} does not match its digest {digest}: the layout is damaged")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The digest it is stored under.
        digest: Digest,
    },
}

/// One entry of a layout's `index.json`.
#[derive(Debug, Deserialize)]
struct IndexEntry {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    digest: Digest,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// A layout's `index.json`, as far as serving needs it.
#[derive(Debug, Deserialize)]
struct LayoutIndex {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

/// A repository's layout folder, found under the root.
#[derive(Debug)]
struct Layout {
    dir: PathBuf,
    index: LayoutIndex,
}

/// The registry: a root folder of OCI layouts.
#[derive(Debug, Clone)]
pub struct LayoutRegistry {
    root: PathBuf,
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask<'a> {
    Base,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
}

// === impl LayoutRegistry ===

impl LayoutRegistry {
    /// A registry over `root`, which must be a readable folder.
    pub fn open(root: &Path) -> Result<Self, LayoutError> {
        let metadata = std::fs::metadata(root).map_err(|source| LayoutError::Root {
            path: root.to_owned(),
            source,
        })?;
        if !metadata.is_dir() {
            return Err(LayoutError::Root {
                path: root.to_owned(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a folder"),
            });
        }
        Ok(LayoutRegistry {
            root: root.to_owned(),
        })
    }

    /// The repositories under the root with their tags, for the start-up log. Folders are
    /// searched a few levels deep; unreadable ones are skipped.
    pub fn repositories(&self) -> Vec<(String, Vec<String>)> {
        let mut found = Vec::new();
        let mut pending = vec![(self.root.clone(), 0_usize)];
        while let Some((dir, depth)) = pending.pop() {
            if dir.join("index.json").is_file() && dir.join("oci-layout").is_file() {
                if let Ok(relative) = dir.strip_prefix(&self.root)
                    && let Some(name) = relative.to_str()
                    && let Ok(layout) = self.layout(name)
                {
                    found.push((name.to_owned(), layout.tags()));
                }
                continue;
            }
            if depth >= 8 {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push((entry.path(), depth + 1));
                }
            }
        }
        found.sort();
        found
    }

    /// The layout of repository `name`, if the name is valid and its folder a layout.
    fn layout(&self, name: &str) -> Result<Layout, Answer> {
        // The name grammar has no `.` or `..` components and no leading `/`, so the joined
        // path stays below the root.
        Repository::parse(name).map_err(|_| {
            Answer::error(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                "invalid repository name",
            )
        })?;
        let dir = self.root.join(name);
        let path = dir.join("index.json");
        if !dir.join("oci-layout").is_file() || !path.is_file() {
            return Err(Answer::error(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                "repository name not known to registry",
            ));
        }
        let bytes = read_capped(&path).map_err(|e| Answer::internal(&e))?;
        let index = serde_json::from_slice(&bytes).map_err(|e| {
            Answer::internal(&LayoutError::BadIndex {
                path: path.clone(),
                detail: e.to_string(),
            })
        })?;
        Ok(Layout { dir, index })
    }

    /// Answers one request.
    async fn answer(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Answer {
        if method != Method::GET && method != Method::HEAD {
            return Answer::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "this registry is read-only",
            );
        }
        let Some(ask) = parse_path(path) else {
            return Answer::error(StatusCode::NOT_FOUND, "UNSUPPORTED", "no such route");
        };
        let result = match ask {
            Ask::Base => Ok(Answer::json(Bytes::from_static(b"{}"))),
            Ask::Tags(name) => self.layout(name).map(|l| l.tags_page(name, query)),
            Ask::Manifest(name, reference) => match self.layout(name) {
                Ok(layout) => layout.manifest(reference),
                Err(answer) => Err(answer),
            },
            Ask::Blob(name, digest) => match self.layout(name) {
                Ok(layout) => layout.blob(digest, headers.get(RANGE)).await,
                Err(answer) => Err(answer),
            },
        };
        result.unwrap_or_else(|answer| answer)
    }
}

// === impl Layout ===

impl Layout {
    /// The tags, sorted and without repeats.
    fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self
            .index
            .manifests
            .iter()
            .filter_map(|entry| entry.annotations.get(REF_NAME).cloned())
            .collect();
        tags.sort();
        tags.dedup();
        tags
    }

    /// One page of `tags/list`: tags after `last`, at most `n`, with a `Link` to the next.
    fn tags_page(&self, name: &str, query: Option<&str>) -> Answer {
        let mut n = DEFAULT_PAGE;
        let mut last = None;
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "n" => match value.parse::<usize>() {
                    Ok(value) => n = value,
                    Err(_) => {
                        return Answer::error(
                            StatusCode::BAD_REQUEST,
                            "PAGINATION_NUMBER_INVALID",
                            "n must be a number",
                        );
                    }
                },
                "last" => last = Some(value.into_owned()),
                _ => {}
            }
        }
        let all = self.tags();
        let after: Vec<&String> = all
            .iter()
            .filter(|tag| last.as_ref().is_none_or(|last| *tag > last))
            .collect();
        let page: Vec<&String> = after.iter().take(n).copied().collect();
        let body = serde_json::json!({ "name": name, "tags": page });
        let mut answer = Answer::json(Bytes::from(body.to_string()));
        if after.len() > page.len()
            && let Some(last) = page.last()
        {
            let last: String = url::form_urlencoded::byte_serialize(last.as_bytes()).collect();
            let link = format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\"");
            if let Ok(value) = HeaderValue::from_str(&link) {
                answer.headers.push((LINK, value));
            }
        }
        answer
    }

    /// A manifest by tag or digest, checked against its digest.
    fn manifest(&self, reference: &str) -> Result<Answer, Answer> {
        let unknown = || {
            Answer::error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown",
            )
        };
        let (digest, listed_type) = if reference.contains(':') {
            let digest = Digest::parse(reference).map_err(|_| {
                Answer::error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest")
            })?;
            let listed = self
                .index
                .manifests
                .iter()
                .find(|entry| entry.digest == digest)
                .and_then(|entry| entry.media_type.clone());
            (digest, listed)
        } else {
            let entry = self
                .index
                .manifests
                .iter()
                .find(|entry| {
                    entry.annotations.get(REF_NAME).map(String::as_str) == Some(reference)
                })
                .ok_or_else(unknown)?;
            (entry.digest.clone(), entry.media_type.clone())
        };
        let path = self.blob_path(&digest);
        if !path.is_file() {
            return Err(unknown());
        }
        let bytes = read_capped(&path).map_err(|e| Answer::internal(&e))?;
        let mut hasher = digest.hasher();
        hasher.update(&bytes);
        if hasher.finish() != digest {
            return Err(Answer::internal(&LayoutError::Corrupt { path, digest }));
        }
        let media_type = listed_type
            .or_else(|| sniff_media_type(&bytes))
            .ok_or_else(unknown)?;
        let mut answer = Answer::bytes(Bytes::from(bytes), &media_type);
        if let Ok(value) = HeaderValue::from_str(digest.as_str()) {
            answer.headers.push((docker_content_digest(), value));
        }
        Ok(answer)
    }

    /// A blob by digest, whole or one `Range`.
    async fn blob(&self, digest: &str, range: Option<&HeaderValue>) -> Result<Answer, Answer> {
        let digest = Digest::parse(digest).map_err(|_| {
            Answer::error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest")
        })?;
        let path = self.blob_path(&digest);
        let unknown = || Answer::error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown");
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(unknown()),
            Err(source) => return Err(Answer::internal(&LayoutError::Read { path, source })),
        };
        let read_error = |source| {
            Answer::internal(&LayoutError::Read {
                path: path.clone(),
                source,
            })
        };
        let len = file.metadata().await.map_err(read_error)?.len();
        let mut answer = Answer::new(StatusCode::OK);
        let (start, end) = match range.map(|r| range::parse(r, len)) {
            None => (0, len),
            Some(Some((start, end))) => {
                answer.status = StatusCode::PARTIAL_CONTENT;
                let value = format!("bytes {start}-{}/{len}", end.saturating_sub(1));
                if let Ok(value) = HeaderValue::from_str(&value) {
                    answer.headers.push((CONTENT_RANGE, value));
                }
                (start, end)
            }
            Some(None) => {
                let mut refused = Answer::error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "SIZE_INVALID",
                    "requested range not satisfiable",
                );
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    refused.headers.push((CONTENT_RANGE, value));
                }
                return Err(refused);
            }
        };
        if start > 0 {
            file.seek(io::SeekFrom::Start(start))
                .await
                .map_err(read_error)?;
        }
        let length = end - start;
        let stream = ReaderStream::new(file.take(length)).map_ok(Frame::data);
        answer.body = Some(StreamBody::new(stream).boxed());
        answer.length = Some(length);
        answer.content_type = "application/octet-stream".to_owned();
        answer
            .headers
            .push((ACCEPT_RANGES, HeaderValue::from_static("bytes")));
        if let Ok(value) = HeaderValue::from_str(digest.as_str()) {
            answer.headers.push((docker_content_digest(), value));
        }
        Ok(answer)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm().to_string())
            .join(digest.hex())
    }
}

/// A response before the method is known (HEAD drops the body but keeps its length).
struct Answer {
    status: StatusCode,
    content_type: String,
    headers: Vec<(http::HeaderName, HeaderValue)>,
    length: Option<u64>,
    body: Option<Body>,
}

// === impl Answer ===

impl Answer {
    fn new(status: StatusCode) -> Self {
        Answer {
            status,
            content_type: "application/json".to_owned(),
            headers: Vec::new(),
            length: None,
            body: None,
        }
    }

    fn bytes(bytes: Bytes, content_type: &str) -> Self {
        let mut answer = Answer::new(StatusCode::OK);
        answer.content_type = content_type.to_owned();
        answer.length = Some(bytes.len() as u64);
        answer.body = Some(full(bytes));
        answer
    }

    fn json(bytes: Bytes) -> Self {
        Answer::bytes(bytes, "application/json")
    }

    /// The distribution spec's error body.
    fn error(status: StatusCode, code: &str, message: &str) -> Self {
        let mut answer = Answer::bytes(oci_error::body(code, message), oci_error::CONTENT_TYPE);
        answer.status = status;
        answer
    }

    /// A failure on this side: logged in full, answered without paths.
    fn internal(error: &LayoutError) -> Self {
        tracing::error!("{error}");
        Answer::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            "the layout could not be read",
        )
    }

    fn into_response(self, head: bool) -> Response<Body> {
        let body = match (head, self.body) {
            (false, Some(body)) => body,
            _ => empty(),
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&self.content_type) {
            headers.insert(CONTENT_TYPE, value);
        }
        if let Some(length) = self.length {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        }
        headers.insert(
            http::HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        );
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

fn docker_content_digest() -> http::HeaderName {
    http::HeaderName::from_static("docker-content-digest")
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Reads a small file (an index or a manifest), refusing more than a manifest may hold.
fn read_capped(path: &Path) -> Result<Vec<u8>, LayoutError> {
    let read = |source| LayoutError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_MANIFEST_SIZE {
        return Err(read(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {MAX_MANIFEST_SIZE}-byte cap"),
        )));
    }
    std::fs::read(path).map_err(read)
}

/// The media type of a manifest that `index.json` does not list: its own `mediaType`, or
/// the OCI type its shape says.
fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(media_type) = value.get("mediaType").and_then(|m| m.as_str()) {
        return Some(media_type.to_owned());
    }
    if value.get("manifests").is_some() {
        Some(OCI_INDEX.to_owned())
    } else if value.get("layers").is_some() {
        Some(OCI_MANIFEST.to_owned())
    } else {
        None
    }
}

/// Splits `/v2/<name>/{tags/list,manifests/<ref>,blobs/<digest>}`.
fn parse_path(path: &str) -> Option<Ask<'_>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Ask::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Ask::Tags(name));
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Some(Ask::Manifest(name, reference));
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return Some(Ask::Blob(name, digest));
    }
    None
}

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long requests in flight may take to finish once shutdown starts.
const GRACE: Duration = Duration::from_secs(10);

/// Serves `registry` on `listener` until `shutdown` completes; requests in flight then get
/// a grace period to finish.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<LayoutRegistry>,
    shutdown: impl Future<Output = ()>,
) {
    let config = ServeConfig::new("layout registry")
        .with_header_timeout(HEADER_TIMEOUT)
        .with_grace(GRACE);
    meshanics_http::serve(
        listener,
        config,
        shutdown,
        move |connection: Connection<TcpStream, SocketAddr>| {
            let registry = registry.clone();
            let peer = connection.peer;
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move {
                    let method = request.method().clone();
                    let path = request.uri().path().to_owned();
                    let answer = registry
                        .answer(&method, &path, request.uri().query(), request.headers())
                        .await;
                    tracing::info!(%peer, %method, path, status = answer.status.as_u16(), "request");
                    Ok::<_, Infallible>(answer.into_response(method == Method::HEAD))
                }
            });
            connection.serve_http1(service)
        },
    )
    .await;
}

#[cfg(test)]
mod tests;
