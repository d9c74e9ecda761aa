//! Response bodies, and the checked body that streams upstream content to a device while
//! verifying it.
//!
//! [`CheckedBody`] hashes every chunk as it passes and holds nothing back except to fail
//! closed: when a chunk completes the announced size, the digest is settled *before* that
//! chunk is released, so a device never receives the whole announced length of bad content.
//! Any failure (too long, too short, wrong digest, an upstream read error) becomes an error
//! from the body, which hyper turns into a reset: a closed connection on HTTP/1.1, an
//! `RST_STREAM` on HTTP/2. Never a clean end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use meshanics_shared::digest::Hasher;
use meshanics_shared::{Digest, Registry, Verifier, VerifyError};
use pin_project_lite::pin_project;

use crate::identity::DeviceIdentity;
use crate::metrics::{InProgress, Metrics, Work};

/// The error type of response bodies.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// The facade's response body.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// What a [`CheckedBody`] checks.
#[derive(Debug)]
pub enum Check {
    /// Exactly this size and digest (a `200` with a `Content-Length`).
    Whole(Verifier),
    /// This digest, size unknown (a chunked `200`), and at most `cap` bytes.
    Digest {
        /// The digest expected.
        expected: Digest,
        /// Hashes what passed.
        hasher: Hasher,
        /// Bytes still allowed.
        cap: u64,
    },
    /// Exactly this many bytes (a `206`: a slice has no digest of its own).
    Length {
        /// Bytes still expected.
        remaining: u64,
        /// Bytes expected in all.
        expected: u64,
    },
}

/// Why a checked body was aborted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AbortReason {
    /// The content failed verification.
    #[error("upstream content failed verification: {0}")]
    Verify(#[source] VerifyError),
    /// A partial response was longer or shorter than announced.
    #[error(
        "upstream partial content for {digest} was {problem} than the {expected} bytes announced"
    )]
    Length {
        /// The blob.
        digest: Digest,
        /// `longer` or `shorter`.
        problem: &'static str,
        /// The announced length.
        expected: u64,
    },
    /// Content of unannounced size went past the cap for such content.
    #[error("upstream content for {digest} came without a size and went past the cap")]
    OverCap {
        /// The blob.
        digest: Digest,
    },
    /// Reading the upstream body failed.
    #[error("reading upstream content for {digest}: {source}")]
    Upstream {
        /// The blob.
        digest: Digest,
        /// Why.
        #[source]
        source: BodyError,
    },
}

/// Where checked content comes from, for logs.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The upstream.
    pub registry: Registry,
    /// The digest asked for.
    pub digest: Digest,
    /// The device it goes to.
    pub device: DeviceIdentity,
}

pin_project! {
    /// An upstream body passed through with verification; see the module docs.
    #[derive(Debug)]
    pub struct CheckedBody<B> {
        #[pin]
        inner: B,
        state: State,
        origin: Origin,
        metrics: Arc<Metrics>,
        // Counts this body in `facade_upstream_bodies_open` until hyper drops it, which is
        // what shows a stream leaked by a client or upstream that went away.
        _open: InProgress,
    }
}

#[derive(Debug)]
enum State {
    // Boxed: a verifier holds a whole hasher state, and `Done` and `Failed` hold nothing.
    Streaming(Box<Check>),
    Done,
    Failed,
}

// === impl Check ===

impl Check {
    /// A check for a full response: whole content when the size is known, digest and at most
    /// `cap` bytes when it is not.
    pub fn full(digest: Digest, length: Option<u64>, cap: u64) -> Check {
        match length {
            Some(length) => Check::Whole(Verifier::new(digest, length)),
            None => Check::Digest {
                hasher: digest.hasher(),
                expected: digest,
                cap,
            },
        }
    }

    /// Takes a chunk. `Ok(true)` when the content is complete and verified.
    fn update(&mut self, chunk: &[u8], digest: &Digest) -> Result<bool, AbortReason> {
        match self {
            Check::Whole(verifier) => {
                verifier.update(chunk).map_err(AbortReason::Verify)?;
                if verifier.remaining() == 0 {
                    let done = verifier.clone();
                    done.finish().map_err(AbortReason::Verify)?;
                    return Ok(true);
                }
                Ok(false)
            }
            Check::Digest {
                hasher,
                expected,
                cap,
            } => {
                let len = chunk.len() as u64;
                if len > *cap {
                    return Err(AbortReason::OverCap {
                        digest: expected.clone(),
                    });
                }
                *cap -= len;
                hasher.update(chunk);
                Ok(false)
            }
            Check::Length {
                remaining,
                expected,
            } => {
                let len = chunk.len() as u64;
                if len > *remaining {
                    return Err(AbortReason::Length {
                        digest: digest.clone(),
                        problem: "longer",
                        expected: *expected,
                    });
                }
                *remaining -= len;
                Ok(*remaining == 0)
            }
        }
    }

    /// Settles the check at the end of the upstream body.
    fn finish(self, digest: &Digest) -> Result<(), AbortReason> {
        match self {
            Check::Whole(verifier) => verifier.finish().map(drop).map_err(AbortReason::Verify),
            Check::Digest {
                expected, hasher, ..
            } => {
                let actual = hasher.finish();
                if actual == expected {
                    Ok(())
                } else {
                    Err(AbortReason::Verify(VerifyError::Mismatch {
                        expected,
                        actual,
                    }))
                }
            }
            Check::Length { remaining: 0, .. } => Ok(()),
            Check::Length { expected, .. } => Err(AbortReason::Length {
                digest: digest.clone(),
                problem: "shorter",
                expected,
            }),
        }
    }

    fn remaining(&self) -> Option<u64> {
        match self {
            Check::Whole(verifier) => Some(verifier.remaining()),
            Check::Digest { .. } => None,
            Check::Length { remaining, .. } => Some(*remaining),
        }
    }
}

// === impl AbortReason ===

impl AbortReason {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            AbortReason::Verify(VerifyError::TooLong { .. }) => "too_long",
            AbortReason::Verify(VerifyError::TooShort { .. }) => "too_short",
            AbortReason::Verify(VerifyError::Mismatch { .. }) => "mismatch",
            AbortReason::Verify(_) => "other",
            AbortReason::Length { .. } => "range_length",
            AbortReason::OverCap { .. } => "over_cap",
            AbortReason::Upstream { .. } => "upstream_read",
        }
    }
}

// === impl CheckedBody ===

impl<B> CheckedBody<B> {
    /// Wraps an upstream body.
    pub fn new(inner: B, check: Check, origin: Origin, metrics: Arc<Metrics>) -> Self {
        CheckedBody {
            inner,
            state: State::Streaming(Box::new(check)),
            origin,
            _open: metrics.in_progress(Work::UpstreamBody),
            metrics,
        }
    }
}

impl<B> http_body::Body for CheckedBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        loop {
            let check = match this.state {
                State::Streaming(check) => check,
                State::Done => return Poll::Ready(None),
                State::Failed => return Poll::Ready(Some(Err("content already failed".into()))),
            };
            let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(source)) => {
                    let reason = AbortReason::Upstream {
                        digest: this.origin.digest.clone(),
                        source: source.into(),
                    };
                    return Poll::Ready(Some(Err(fail(
                        this.state,
                        this.origin,
                        this.metrics,
                        reason,
                    ))));
                }
                None => {
                    let State::Streaming(check) = std::mem::replace(this.state, State::Done) else {
                        return Poll::Ready(None);
                    };
                    return match check.finish(&this.origin.digest) {
                        Ok(()) => Poll::Ready(None),
                        Err(reason) => Poll::Ready(Some(Err(fail(
                            this.state,
                            this.origin,
                            this.metrics,
                            reason,
                        )))),
                    };
                }
            };
            // Trailers are not passed on: the digest is the only integrity the device needs.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            match check.update(&data, &this.origin.digest) {
                Ok(complete) => {
                    if complete {
                        *this.state = State::Done;
                    }
                    this.metrics.streamed(data.len() as u64);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Err(reason) => {
                    return Poll::Ready(Some(Err(fail(
                        this.state,
                        this.origin,
                        this.metrics,
                        reason,
                    ))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Streaming(check) => match check.remaining() {
                Some(remaining) => SizeHint::with_exact(remaining),
                None => SizeHint::default(),
            },
            State::Done | State::Failed => SizeHint::with_exact(0),
        }
    }
}

fn fail(state: &mut State, origin: &Origin, metrics: &Metrics, reason: AbortReason) -> BodyError {
    *state = State::Failed;
    metrics.verification_failure(reason.label());
    tracing::warn!(
        device = %origin.device,
        upstream = %origin.registry,
        digest = %origin.digest,
        reason = %reason,
        "aborting the response: upstream content failed its check"
    );
    Box::new(reason)
}

#[cfg(test)]
mod tests;
