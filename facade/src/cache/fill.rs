//! A fill: one upstream fetch of a digest, written to the ingest file and published to every
//! request that waits on it.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt as _, Stream, StreamExt as _};
use meshanics_shared::{Digest, Verifier};
use tokio::sync::watch;

use super::{Cache, Pair, WRITE_CHUNK};
use crate::body::AbortReason;
use crate::error::Error;
use crate::registry_client::ContentKind;

/// A fill's failure, shared by every request that waited on it.
pub type SharedError = Arc<Error>;

/// How far a fill got, as its readers see it.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Asking the upstream.
    Starting,
    /// Writing: `written` bytes of `size` are in `file`.
    Streaming {
        /// The ingest file (readers read it with `pread`, each at its own offset).
        file: Arc<File>,
        /// The whole size (the upstream's announced length).
        size: u64,
        /// The media type the upstream announced.
        media_type: Option<String>,
        /// Bytes written so far.
        written: u64,
    },
    /// Verified and committed.
    Done {
        /// The content (committed; the same open file).
        file: Arc<File>,
        /// Its size.
        size: u64,
        /// Its media type.
        media_type: Option<String>,
    },
    /// Failed: nothing was cached.
    Failed(FillFailure),
    /// The content cannot be cached (no announced size, or it does not fit): each request
    /// streams it from the upstream itself (the first may take the fill's response).
    Uncacheable,
}

/// Why a fill failed.
#[derive(Debug, Clone)]
pub struct FillFailure {
    /// The error requests still waiting for an answer get.
    pub error: SharedError,
}

/// One upstream fetch of a digest; see the module docs.
#[derive(Debug)]
pub struct Fill {
    digest: Digest,
    kind: ContentKind,
    pair: Pair,
    progress: watch::Sender<Progress>,
    devices: AtomicU64,
    handed_over: Mutex<Option<reqwest::Response>>,
    /// Other pairs an upstream `HEAD` confirmed while it ran, recorded with it.
    confirmed: Mutex<Vec<Pair>>,
}

/// Runs a fill: owns its registration, and on drop before an outcome (the task ended or was
/// cancelled) fails it, so no reader waits forever and no entry is left registered.
#[derive(Debug)]
pub struct Filler {
    cache: Arc<Cache>,
    fill: Arc<Fill>,
    reserved: u64,
    /// Bytes in the ingest file, for the logs.
    written: u64,
    started: Instant,
    finished: bool,
}

/// The upstream's answer to a fill's request, checked.
#[derive(Debug)]
pub struct Head {
    /// The whole size.
    pub size: u64,
    /// The announced media type.
    pub media_type: Option<String>,
    /// The resume point, when the upstream answered the `Range` that asked for the rest.
    pub resume: Option<(File, Verifier)>,
}

/// How a fill's body ended other than committed.
#[derive(Debug)]
enum Ending {
    /// Reading the upstream failed: what was written is kept for the next fill to resume.
    Read(String),
    /// The content was wrong (or could not be written): thrown away.
    Wrong(Error),
}

// === impl Fill ===

impl Fill {
    pub(super) fn new(digest: Digest, kind: ContentKind, pair: Pair) -> Fill {
        Fill {
            digest,
            kind,
            pair,
            progress: watch::Sender::new(Progress::Starting),
            devices: AtomicU64::new(0),
            handed_over: Mutex::new(None),
            confirmed: Mutex::new(Vec::new()),
        }
    }

    /// The digest filled.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Manifest or blob.
    pub fn kind(&self) -> ContentKind {
        self.kind
    }

    /// The (registry, repository) it is fetched under.
    pub fn pair(&self) -> &Pair {
        &self.pair
    }

    /// Follows the fill's progress.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Records that the upstream confirmed this content under `pair` too (a request asked
    /// under it joined): committed with it.
    pub fn confirm(&self, pair: Pair) {
        if let Ok(mut confirmed) = self.confirmed.lock() {
            confirmed.push(pair);
        }
    }

    /// The pairs to commit the content under.
    pub(super) fn pairs(&self) -> BTreeSet<Pair> {
        let mut pairs = BTreeSet::from([self.pair.clone()]);
        if let Ok(confirmed) = self.confirmed.lock() {
            pairs.extend(confirmed.iter().cloned());
        }
        pairs
    }

    /// Counts a request served from this fill.
    pub fn add_device(&self) {
        self.devices.fetch_add(1, Ordering::Relaxed);
    }

    /// The upstream response of an uncacheable fill, for the first request that takes it.
    pub fn take_response(&self) -> Option<reqwest::Response> {
        self.handed_over.lock().ok()?.take()
    }

    fn devices(&self) -> u64 {
        self.devices.load(Ordering::Relaxed)
    }
}

// === impl Filler ===

impl Filler {
    pub(super) fn new(cache: Arc<Cache>, fill: Arc<Fill>) -> Filler {
        Filler {
            cache,
            fill,
            reserved: 0,
            written: 0,
            started: Instant::now(),
            finished: false,
        }
    }

    /// The fill.
    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// The size of what a previous fill left after a read error, if any: ask the upstream
    /// for the rest (`Range: bytes=<written>-`) and pass what [`Filler::resume_point`] gives.
    pub fn partial(&self) -> Option<(u64, u64)> {
        self.cache.partial(self.fill.digest())
    }

    /// The file and verifier to resume from, having hashed the kept bytes again.
    pub async fn resume_point(&self, size: u64) -> Option<(File, Verifier)> {
        let cache = self.cache.clone();
        let digest = self.fill.digest.clone();
        tokio::task::spawn_blocking(move || cache.resume_point(&digest, size))
            .await
            .ok()
            .flatten()
    }

    /// Fails the fill before any content: every waiting request gets `error`. What a
    /// previous fill left stays for the next one to resume.
    pub fn fail(mut self, error: Error) {
        self.finish_failed(error, true);
    }

    /// Throws away what a previous fill left (the upstream did not answer the rest as asked).
    pub fn discard_partial(&self) {
        self.cache.forget_partial(self.fill.digest());
        let _ = std::fs::remove_file(self.cache.ingest_path(self.fill.digest()));
    }

    /// The content will not be cached: waiting requests fetch it themselves, the first may
    /// take `response`.
    pub fn uncacheable(mut self, response: Option<reqwest::Response>) {
        if let Ok(mut slot) = self.fill.handed_over.lock() {
            *slot = response;
        }
        self.cache.forget_partial(self.fill.digest());
        self.cache.release(&self.fill, self.reserved);
        self.reserved = 0;
        self.finished = true;
        self.fill.progress.send_replace(Progress::Uncacheable);
    }

    /// Reserves room for `size` bytes (evicting as needed); `false` when it cannot fit, and
    /// the content goes through uncached ([`Filler::uncacheable`]).
    pub fn reserve(&mut self, size: u64) -> bool {
        if self.cache.reserve(size) {
            self.reserved = size;
            true
        } else {
            false
        }
    }

    /// Streams `body` into the ingest file, verifies it, and commits it. Call
    /// [`Filler::reserve`] first.
    pub async fn run<S, E>(mut self, head: Head, mut body: S)
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let Head {
            size,
            media_type,
            resume,
        } = head;
        let registry = self.fill.pair.0.clone();
        let digest = self.fill.digest.clone();
        let path = self.cache.ingest_path(&digest);
        let opened = match resume {
            Some((file, verifier)) => Ok((file, verifier)),
            // Read and write: readers `pread` the same open file.
            None => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map(|file| (file, Verifier::new(digest.clone(), size))),
        };
        let (file, mut verifier) = match opened {
            Ok(opened) => opened,
            Err(source) => {
                let error = Error::FillFailed {
                    registry,
                    digest,
                    reason: format!("creating {}: {source}", path.display()),
                };
                return self.finish_failed(error, false);
            }
        };
        let file = Arc::new(file);
        let mut written = verifier.received();
        self.written = written;
        let resumed = written;
        tracing::info!(%digest, upstream = %registry, repository = %self.fill.pair.1, size,
            resumed_from = resumed, "cache fill started");
        self.fill.progress.send_replace(Progress::Streaming {
            file: file.clone(),
            size,
            media_type: media_type.clone(),
            written,
        });
        let ending = loop {
            let mut batch = BytesMut::new();
            let mut read_error = None;
            let mut ended = false;
            match body.next().await {
                None => ended = true,
                Some(Err(error)) => read_error = Some(error.to_string()),
                Some(Ok(chunk)) => batch.extend_from_slice(&chunk),
            }
            // Whatever else the upstream has ready goes in the same write.
            while read_error.is_none() && !ended && batch.len() < WRITE_CHUNK {
                match body.next().now_or_never() {
                    None => break,
                    Some(None) => ended = true,
                    Some(Some(Err(error))) => read_error = Some(error.to_string()),
                    Some(Some(Ok(chunk))) => batch.extend_from_slice(&chunk),
                }
            }
            if !batch.is_empty() {
                if let Err(source) = verifier.update(&batch) {
                    break Some(Ending::Wrong(Error::Verification {
                        registry: registry.clone(),
                        source,
                    }));
                }
                let batch = batch.freeze();
                let len = batch.len() as u64;
                if let Err(reason) = write_at(&file, batch, written).await {
                    break Some(Ending::Wrong(Error::FillFailed {
                        registry: registry.clone(),
                        digest: digest.clone(),
                        reason,
                    }));
                }
                written += len;
                self.written = written;
                self.fill.progress.send_modify(|progress| {
                    if let Progress::Streaming { written: w, .. } = progress {
                        *w = written;
                    }
                });
            }
            if let Some(reason) = read_error {
                break Some(Ending::Read(reason));
            }
            if ended {
                break None;
            }
        };
        let ending = match ending {
            Some(ending) => Some(ending),
            None => match verifier.finish() {
                Err(source) => Some(Ending::Wrong(Error::Verification {
                    registry: registry.clone(),
                    source,
                })),
                Ok(_) => None,
            },
        };
        match ending {
            Some(Ending::Read(reason)) => {
                let error = Error::FillFailed {
                    registry,
                    digest: digest.clone(),
                    reason: format!("reading the upstream: {reason}"),
                };
                if written > 0 {
                    self.cache.keep_partial(&digest, written, size);
                }
                self.finish_failed(error, true);
            }
            Some(Ending::Wrong(error)) => {
                if let Error::Verification { source, .. } = &error {
                    let label = AbortReason::Verify(source.clone()).label();
                    self.cache.metrics().verification_failure(label);
                }
                self.finish_failed(error, false);
            }
            None => self.commit(file, size, media_type).await,
        }
    }

    async fn commit(mut self, file: Arc<File>, size: u64, media_type: Option<String>) {
        let media_type = match (self.fill.kind, media_type) {
            (ContentKind::Manifest, None) => sniff(&file, size).await,
            (_, media_type) => media_type,
        };
        let cache = self.cache.clone();
        let fill = self.fill.clone();
        let committing = file.clone();
        let recorded = media_type.clone();
        let committed =
            tokio::task::spawn_blocking(move || cache.commit(&fill, &committing, size, recorded))
                .await;
        match committed {
            Ok(Ok(())) => {
                self.reserved = 0;
                self.finished = true;
                self.cache.forget_partial(self.fill.digest());
                self.cache.metrics().cache_fill(true, self.fill.devices());
                tracing::info!(digest = %self.fill.digest, upstream = %self.fill.pair.0,
                    bytes = size, devices = self.fill.devices(),
                    seconds = self.started.elapsed().as_secs_f64(), "cache fill finished");
                self.fill.progress.send_replace(Progress::Done {
                    file,
                    size,
                    media_type,
                });
            }
            Ok(Err(error)) => {
                let error = Error::FillFailed {
                    registry: self.fill.pair.0.clone(),
                    digest: self.fill.digest.clone(),
                    reason: error.to_string(),
                };
                self.finish_failed(error, false);
            }
            Err(join) => {
                let error = Error::FillFailed {
                    registry: self.fill.pair.0.clone(),
                    digest: self.fill.digest.clone(),
                    reason: format!("committing: {join}"),
                };
                self.finish_failed(error, false);
            }
        }
    }

    /// Ends the fill in failure: ingest file removed (kept after a read error, for the next
    /// fill to resume), registration released, then every reader told.
    fn finish_failed(&mut self, error: Error, keep_ingest: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        let digest = self.fill.digest.clone();
        if !keep_ingest {
            self.cache.forget_partial(&digest);
            let _ = std::fs::remove_file(self.cache.ingest_path(&digest));
        }
        self.cache.release(&self.fill, self.reserved);
        self.reserved = 0;
        self.cache.metrics().cache_fill(false, self.fill.devices());
        tracing::warn!(%digest, upstream = %self.fill.pair.0, bytes = self.written,
            devices = self.fill.devices(), %error, kept_for_resume = keep_ingest,
            "cache fill failed");
        self.fill
            .progress
            .send_replace(Progress::Failed(FillFailure {
                error: Arc::new(error),
            }));
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if !self.finished {
            let error = Error::FillFailed {
                registry: self.fill.pair.0.clone(),
                digest: self.fill.digest.clone(),
                reason: "the fill stopped".into(),
            };
            self.finish_failed(error, false);
        }
    }
}

async fn write_at(file: &Arc<File>, batch: Bytes, offset: u64) -> Result<(), String> {
    let file = file.clone();
    match tokio::task::spawn_blocking(move || file.write_all_at(&batch, offset)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("writing the ingest file: {error}")),
        Err(join) => Err(format!("writing the ingest file: {join}")),
    }
}

/// A manifest's own `mediaType`, for an upstream that announced none (manifests are at most
/// 4 MiB: read once per fill, not per device).
async fn sniff(file: &Arc<File>, size: u64) -> Option<String> {
    let file = file.clone();
    let len = usize::try_from(size).ok()?;
    let bytes = tokio::task::spawn_blocking(move || {
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, 0).map(|()| bytes)
    })
    .await
    .ok()?
    .ok()?;
    media_type_of(&bytes)
}

/// The `mediaType` a manifest's JSON names, if any.
pub(crate) fn media_type_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct MediaType {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let parsed: MediaType = serde_json::from_slice(bytes).ok()?;
    parsed.media_type
}
