//! Verify content while it streams: hash bytes as they pass, refuse a byte beyond the expected
//! size the moment it arrives, and refuse a short body or a digest mismatch at the end.
//!
//! [`Verifier`] is the state machine; the adapters wrap it around the three shapes bytes
//! travel in: [`VerifyingReader`] (`tokio::io::AsyncRead`), [`VerifyingStream`] (a
//! `Stream` of chunks, as hyper bodies are), and [`VerifyingWriter`] (`std::io::Write`, for
//! writing to a file). None of them buffers: each chunk is hashed once, in place, so the cost
//! is the cost of the hash itself.
//!
//! Failing closed is the caller's half of the contract: an adapter reports the failure, and
//! the caller must then discard what it wrote (the agent's cache) or abort the response (the
//! facade) rather than end it cleanly.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, ReadBuf};

use crate::digest::{Digest, Hasher};

/// Why streamed content failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// More bytes arrived than the expected size.
    #[error("content for {digest} is longer than the expected {expected} bytes")]
    TooLong {
        /// The digest being verified.
        digest: Digest,
        /// The expected size.
        expected: u64,
    },
    /// The content ended before the expected size.
    #[error("content for {digest} ended after {received} of {expected} bytes")]
    TooShort {
        /// The digest being verified.
        digest: Digest,
        /// The expected size.
        expected: u64,
        /// How many bytes arrived.
        received: u64,
    },
    /// The size was right but the content hashes to another digest.
    #[error("content expected to be {expected} hashes to {actual}")]
    Mismatch {
        /// The digest the content should have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
    },
}

/// Hashes bytes against an expected digest and size.
#[derive(Debug, Clone)]
pub struct Verifier {
    expected: Digest,
    expected_size: u64,
    received: u64,
    hasher: Hasher,
}

// === impl Verifier ===

impl Verifier {
    /// Starts verifying content that must be exactly `expected_size` bytes hashing to
    /// `expected`.
    pub fn new(expected: Digest, expected_size: u64) -> Self {
        let hasher = expected.hasher();
        Verifier {
            expected,
            expected_size,
            received: 0,
            hasher,
        }
    }

    /// Resumes verification after `prefix` (bytes already received and kept, such as a partial
    /// download on disk): they are hashed and counted as if they had just arrived.
    pub fn resume(
        expected: Digest,
        expected_size: u64,
        prefix: &[u8],
    ) -> Result<Self, VerifyError> {
        let mut verifier = Verifier::new(expected, expected_size);
        verifier.update(prefix)?;
        Ok(verifier)
    }

    /// The digest being verified.
    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// The size being verified.
    pub fn expected_size(&self) -> u64 {
        self.expected_size
    }

    /// How many bytes have been accepted so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// How many more bytes may arrive.
    pub fn remaining(&self) -> u64 {
        self.expected_size - self.received
    }

    /// Checks that `len` more bytes fit, without hashing anything.
    pub fn check_room(&self, len: usize) -> Result<(), VerifyError> {
        if len as u64 > self.remaining() {
            return Err(self.too_long());
        }
        Ok(())
    }

    /// Hashes `bytes`. Fails, hashing nothing, if they would go past the expected size.
    #[inline]
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), VerifyError> {
        self.check_room(bytes.len())?;
        self.hasher.update(bytes);
        self.received += bytes.len() as u64;
        Ok(())
    }

    /// Ends verification: the size must be exact and the digest must match.
    pub fn finish(self) -> Result<Digest, VerifyError> {
        if self.received != self.expected_size {
            return Err(VerifyError::TooShort {
                digest: self.expected,
                expected: self.expected_size,
                received: self.received,
            });
        }
        let actual = self.hasher.finish();
        if actual != self.expected {
            return Err(VerifyError::Mismatch {
                expected: self.expected,
                actual,
            });
        }
        Ok(actual)
    }

    fn too_long(&self) -> VerifyError {
        VerifyError::TooLong {
            digest: self.expected.clone(),
            expected: self.expected_size,
        }
    }
}

/// A `std::io::Write` wrapper that writes only verified-size content to `inner` and hashes
/// exactly the bytes `inner` accepted.
///
/// A write that would pass the expected size fails before anything reaches `inner`, so the
/// file behind it never holds more than the expected size.
#[derive(Debug)]
pub struct VerifyingWriter<W> {
    inner: W,
    verifier: Verifier,
}

// === impl VerifyingWriter ===

impl<W: io::Write> VerifyingWriter<W> {
    /// Wraps `inner`; see [`Verifier::new`].
    pub fn new(inner: W, expected: Digest, expected_size: u64) -> Self {
        VerifyingWriter {
            inner,
            verifier: Verifier::new(expected, expected_size),
        }
    }

    /// Wraps `inner` with a verifier that has already seen a prefix (see [`Verifier::resume`]).
    pub fn with_verifier(inner: W, verifier: Verifier) -> Self {
        VerifyingWriter { inner, verifier }
    }

    /// The verification state.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Flushes `inner` and checks size and digest; returns `inner` only when both match.
    pub fn finish(mut self) -> Result<W, FinishError> {
        self.inner.flush().map_err(FinishError::Io)?;
        self.verifier.finish().map_err(FinishError::Verify)?;
        Ok(self.inner)
    }
}

impl<W: io::Write> io::Write for VerifyingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.verifier.check_room(buf.len()).map_err(into_io)?;
        let written = self.inner.write(buf)?;
        let accepted = buf.get(..written).unwrap_or(buf);
        self.verifier.update(accepted).map_err(into_io)?;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Why [`VerifyingWriter::finish`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FinishError {
    /// Flushing the inner writer failed.
    #[error("flushing verified content failed: {0}")]
    Io(#[source] io::Error),
    /// The content did not verify.
    #[error(transparent)]
    Verify(VerifyError),
}

pin_project! {
    /// A `tokio::io::AsyncRead` adapter that hashes as bytes are read.
    ///
    /// A read that goes past the expected size fails with `io::ErrorKind::InvalidData`
    /// (wrapping the [`VerifyError`]) and hands out none of those bytes; end of input fails the
    /// same way when size or digest differ. A reader that returns end of input without an error
    /// therefore delivered exactly the expected content.
    #[derive(Debug)]
    pub struct VerifyingReader<R> {
        #[pin]
        inner: R,
        verifier: Option<Verifier>,
        verified: Option<Digest>,
    }
}

// === impl VerifyingReader ===

impl<R> VerifyingReader<R> {
    /// Wraps `inner`; see [`Verifier::new`].
    pub fn new(inner: R, expected: Digest, expected_size: u64) -> Self {
        Self::with_verifier(inner, Verifier::new(expected, expected_size))
    }

    /// Wraps `inner` with a verifier that has already seen a prefix.
    pub fn with_verifier(inner: R, verifier: Verifier) -> Self {
        VerifyingReader {
            inner,
            verifier: Some(verifier),
            verified: None,
        }
    }

    /// The digest, once end of input was reached and it matched.
    pub fn verified(&self) -> Option<&Digest> {
        self.verified.as_ref()
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead> AsyncRead for VerifyingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let Some(verifier) = this.verifier.as_mut() else {
            // Already finished: verified (clean end again) or failed (keep failing).
            return Poll::Ready(match this.verified {
                Some(_) => Ok(()),
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "read after a verification failure",
                )),
            });
        };
        let before = buf.filled().len();
        ready!(this.inner.poll_read(cx, buf))?;
        let fresh = buf.filled().get(before..).unwrap_or_default();
        if fresh.is_empty() && buf.remaining() > 0 {
            // End of input: settle size and digest.
            let verifier = this
                .verifier
                .take()
                .ok_or_else(|| into_io_msg("verifier gone"))?;
            let digest = verifier.finish().map_err(into_io)?;
            *this.verified = Some(digest);
            return Poll::Ready(Ok(()));
        }
        if let Err(err) = verifier.update(fresh) {
            buf.set_filled(before);
            *this.verifier = None;
            return Poll::Ready(Err(into_io(err)));
        }
        Poll::Ready(Ok(()))
    }
}

pin_project! {
    /// A `Stream` adapter over chunks (`Bytes`, `Vec<u8>`, hyper frames' data...) that hashes
    /// each chunk as it passes.
    ///
    /// A chunk that would pass the expected size is not yielded: the stream yields
    /// [`StreamError::Verify`] instead. At the end of the inner stream, a short body or a
    /// digest mismatch is yielded as an error before the stream ends; a stream that ends
    /// without an error delivered exactly the expected content.
    #[derive(Debug)]
    pub struct VerifyingStream<S> {
        #[pin]
        inner: S,
        verifier: Option<Verifier>,
        verified: Option<Digest>,
    }
}

/// An error from a [`VerifyingStream`]: the inner stream's own error, or a verification failure.
#[derive(Debug, thiserror::Error)]
pub enum StreamError<E> {
    /// The inner stream failed.
    #[error(transparent)]
    Source(E),
    /// The content failed verification.
    #[error(transparent)]
    Verify(VerifyError),
}

// === impl VerifyingStream ===

impl<S> VerifyingStream<S> {
    /// Wraps `inner`; see [`Verifier::new`].
    pub fn new(inner: S, expected: Digest, expected_size: u64) -> Self {
        Self::with_verifier(inner, Verifier::new(expected, expected_size))
    }

    /// Wraps `inner` with a verifier that has already seen a prefix.
    pub fn with_verifier(inner: S, verifier: Verifier) -> Self {
        VerifyingStream {
            inner,
            verifier: Some(verifier),
            verified: None,
        }
    }

    /// The digest, once the stream ended and it matched.
    pub fn verified(&self) -> Option<&Digest> {
        self.verified.as_ref()
    }
}

impl<S, B, E> Stream for VerifyingStream<S>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    type Item = Result<B, StreamError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let Some(verifier) = this.verifier.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(this.inner.poll_next(cx)) {
            Some(Ok(chunk)) => match verifier.update(chunk.as_ref()) {
                Ok(()) => Poll::Ready(Some(Ok(chunk))),
                Err(err) => {
                    *this.verifier = None;
                    Poll::Ready(Some(Err(StreamError::Verify(err))))
                }
            },
            Some(Err(err)) => {
                *this.verifier = None;
                Poll::Ready(Some(Err(StreamError::Source(err))))
            }
            None => {
                let Some(verifier) = this.verifier.take() else {
                    return Poll::Ready(None);
                };
                match verifier.finish() {
                    Ok(digest) => {
                        *this.verified = Some(digest);
                        Poll::Ready(None)
                    }
                    Err(err) => Poll::Ready(Some(Err(StreamError::Verify(err)))),
                }
            }
        }
    }
}

/// Wraps a [`VerifyError`] as an `io::Error` of kind `InvalidData`; recover it with
/// [`VerifyError::from_io`].
pub fn into_io(err: VerifyError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

fn into_io_msg(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl VerifyError {
    /// The verification failure inside an `io::Error` made by a verifying adapter, if any.
    pub fn from_io(err: &io::Error) -> Option<&VerifyError> {
        err.get_ref()?.downcast_ref::<VerifyError>()
    }
}

#[cfg(test)]
mod tests;
