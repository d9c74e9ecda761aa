//! A device's body read from the cache: a committed file, or the growing file of a fill.
//!
//! Each reader has its own offset and reads at most [`READ_CHUNK`] bytes at a time with
//! `pread` on the shared open file (from the page cache on the runtime's thread when the
//! bytes are there, else on the blocking pool), only when hyper asks for the next chunk: a device that
//! reads slowly holds one chunk, never more, and never slows the fill or another device. A
//! reader of a fill waits for the fill's progress (a watch of bytes written), releases the
//! last byte of the whole content only once the fill verified it, and ends in an error
//! (a reset, never a clean end) if the fill fails.
//!
//! Whole chunks ([`READ_CHUNK`]) hold room in one budget for the whole process
//! ([`READ_BUDGET`]) until hyper has written them out and dropped them; once the budget is
//! used up, readers go on with [`MIN_READ_CHUNK`]s outside it, so the memory in chunks stays
//! near the budget plus one small chunk per stream however many devices read at once.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use meshanics_shared::Digest;
use tokio::sync::{Semaphore, SemaphorePermit, watch};

use super::{Progress, READ_CHUNK};
use crate::body::{Body, BodyError};
use crate::metrics::{Metrics, ServedFrom};

/// The most bytes all device readers together hold in chunks read but not yet sent.
pub const READ_BUDGET: usize = 48 * 1024 * 1024;
/// The chunk a reader takes when the budget is used up (one TLS record's worth).
pub const MIN_READ_CHUNK: usize = 16 * 1024;

/// The budget, in KiB.
static READ_BUFFERS: Semaphore = Semaphore::const_new(READ_BUDGET / 1024);

/// A chunk read, holding its room in the budget (if it took any) until hyper drops it.
struct Chunk {
    bytes: Vec<u8>,
    _room: Option<SemaphorePermit<'static>>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Room for a chunk of up to `len` bytes: a whole chunk from the budget while it has room,
/// else [`MIN_READ_CHUNK`] outside it. A reader never waits for room: streams stalled on
/// their devices' flow control must not hold back the ones that can go on, so each stream
/// keeps a floor of one small chunk and the budget bounds only what goes beyond it.
fn room_for(len: usize) -> (Option<SemaphorePermit<'static>>, usize) {
    let kib = u32::try_from(len.div_ceil(1024)).unwrap_or(u32::MAX);
    match READ_BUFFERS.try_acquire_many(kib) {
        Ok(room) => (Some(room), len),
        Err(_) => (None, len.min(MIN_READ_CHUNK)),
    }
}

/// Reads up to `len` bytes at `pos` if they are in the page cache, without blocking
/// (`preadv2` with `RWF_NOWAIT`): `None` when the read would wait for the disk (or the kernel
/// cannot tell), and the caller reads on the blocking pool instead. Hot content, which is
/// what a fleet pulls, never pays for a hop to another thread.
fn read_cached(file: &File, len: usize, pos: u64) -> Option<std::io::Result<Vec<u8>>> {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    let mut buffer = vec![0; len];
    let slices = &mut [std::io::IoSliceMut::new(&mut buffer)];
    match preadv2(file, slices, pos, ReadWriteFlags::NOWAIT) {
        // 0 bytes may be a page not cached at the start: let the blocking read decide.
        Ok(0) => None,
        Ok(read) => {
            buffer.truncate(read);
            Some(Ok(buffer))
        }
        Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => None,
        Err(error) => Some(Err(error.into())),
    }
}

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
        let (room, len) = room_for(len);
        let pos = self.pos;
        let read = match read_cached(&self.file, len, pos) {
            Some(read) => Ok(read),
            None => {
                let file = self.file.clone();
                tokio::task::spawn_blocking(move || {
                    let mut buffer = vec![0; len];
                    let read = file.read_at(&mut buffer, pos)?;
                    buffer.truncate(read);
                    Ok::<_, std::io::Error>(buffer)
                })
                .await
            }
        };
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
        Ok(Bytes::from_owner(Chunk { bytes, _room: room }))
    }
}
