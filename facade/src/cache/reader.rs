//! A device's body read from the cache: a committed file, or the growing file of a fill.
//!
//! Each reader has its own offset and reads at most [`READ_CHUNK`] bytes at a time with
//! `pread` on the shared open file, only when hyper asks for the next chunk: a device that
//! reads slowly holds one chunk, never more, and never slows the fill or another device. A
//! reader of a fill waits for the fill's progress (a watch of bytes written), releases the
//! last byte of the whole content only once the fill verified it, and ends in an error
//! (a reset, never a clean end) if the fill fails.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use meshanics_shared::Digest;
use tokio::sync::watch;

use super::{Progress, READ_CHUNK};
use crate::body::{Body, BodyError};
use crate::metrics::{Metrics, ServedFrom};

/// What a reader reads.
#[derive(Debug)]
pub struct Reader {
    file: Arc<File>,
    /// `None` for committed content.
    progress: Option<watch::Receiver<Progress>>,
    digest: Digest,
    /// Next byte to send.
    pos: u64,
    /// One past the last byte to send.
    end: u64,
    /// The whole content's size.
    size: u64,
    metrics: Arc<Metrics>,
    from: ServedFrom,
    ended: bool,
}

// === impl Reader ===

impl Reader {
    /// Reads `[start, end)` of content of `size` bytes: committed (`progress` `None`), or
    /// written by a fill that `progress` follows.
    pub fn new(
        file: Arc<File>,
        progress: Option<watch::Receiver<Progress>>,
        digest: Digest,
        (start, end): (u64, u64),
        size: u64,
        metrics: Arc<Metrics>,
    ) -> Reader {
        Reader {
            file,
            from: match progress {
                Some(_) => ServedFrom::Upstream,
                None => ServedFrom::Cache,
            },
            progress,
            digest,
            pos: start,
            end,
            size,
            metrics,
            ended: false,
        }
    }

    /// The reader as a response body.
    pub fn into_body(self) -> Body {
        let stream = futures_util::stream::unfold(self, |mut reader| async move {
            let next = reader.next().await?;
            Some((next.map(Frame::data), reader))
        });
        StreamBody::new(stream.boxed()).boxed_unsync()
    }

    /// The next chunk; `None` at a clean end (all sent, and verified where it must be).
    pub async fn next(&mut self) -> Option<Result<Bytes, BodyError>> {
        if self.ended {
            return None;
        }
        let next = self.step().await;
        if !matches!(next, Some(Ok(_))) {
            self.ended = true;
        }
        next
    }

    async fn step(&mut self) -> Option<Result<Bytes, BodyError>> {
        loop {
            let (available, verified) = match &mut self.progress {
                None => (self.size, true),
                Some(progress) => match &*progress.borrow_and_update() {
                    Progress::Streaming { written, .. } => (*written, false),
                    Progress::Done { .. } => (self.size, true),
                    Progress::Failed(failure) => {
                        let message = format!(
                            "the upstream fetch of {} failed: {}",
                            self.digest, failure.error
                        );
                        return Some(Err(message.into()));
                    }
                    Progress::Starting | Progress::Uncacheable => {
                        return Some(Err("the fill has no content to read".into()));
                    }
                },
            };
            // The last byte of the whole waits for the verification of the whole.
            let releasable = if verified {
                available
            } else {
                available.min(self.size.saturating_sub(1))
            }
            .min(self.end);
            if self.pos >= self.end {
                if verified || self.end < self.size {
                    return None;
                }
            } else if releasable > self.pos {
                let len = usize::try_from(releasable - self.pos)
                    .unwrap_or(READ_CHUNK)
                    .min(READ_CHUNK);
                return Some(self.read(len).await);
            }
            let Some(progress) = &mut self.progress else {
                return Some(Err("the cache file ended early".into()));
            };
            if progress.changed().await.is_err() {
                return Some(Err("the fill stopped".into()));
            }
        }
    }

    async fn read(&mut self, len: usize) -> Result<Bytes, BodyError> {
        let file = self.file.clone();
        let pos = self.pos;
        let read = tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0; len];
            let read = file.read_at(&mut buffer, pos)?;
            buffer.truncate(read);
            Ok::<_, std::io::Error>(buffer)
        })
        .await;
        let bytes = match read {
            Ok(Ok(bytes)) if !bytes.is_empty() => bytes,
            Ok(Ok(_)) => {
                return Err(format!("the cache file of {} ended early", self.digest).into());
            }
            Ok(Err(error)) => {
                return Err(format!("reading the cache file of {}: {error}", self.digest).into());
            }
            Err(join) => return Err(format!("reading the cache file: {join}").into()),
        };
        self.pos += bytes.len() as u64;
        self.metrics.cache_served(self.from, bytes.len() as u64);
        Ok(Bytes::from(bytes))
    }
}
