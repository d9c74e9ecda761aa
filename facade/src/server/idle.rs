//! Idle detection by stream progress: a connection is idle once nothing moved a stream for
//! the idle timeout, where moving is a request starting, a request ending (its response body
//! dropped), or a response body frame taken for sending. Bytes on the socket do not count:
//! HTTP/2 PINGs and other control frames (the agent sends keep-alive PINGs) cannot keep an
//! idle connection open, and a device that stops reading mid-body is idle too once the
//! send buffers are full and its body stops being polled, so a stalled reader cannot pin a
//! connection (and its upstream stream) forever.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

/// When a connection's streams last made progress, in milliseconds since it opened.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
}

/// One request in progress on a connection: notes progress when it starts and when it is
/// dropped (with its response body), and holds `G` (its budget share) as long.
#[derive(Debug)]
pub struct Stream<G> {
    activity: Arc<Activity>,
    _held: G,
}

pin_project! {
    /// A response body that notes progress on every frame it yields, and ends its
    /// [`Stream`] when dropped.
    #[derive(Debug)]
    pub struct Progress<B, G> {
        #[pin]
        inner: B,
        stream: Stream<G>,
    }
}

// === impl Activity ===

impl Activity {
    /// A connection opened now (which counts as progress).
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    /// Notes progress now.
    pub fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once no stream made progress for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.last() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// A request started now; it lasts until the returned stream (or the body that takes
    /// it) is dropped, holding `held`.
    pub fn stream<G>(self: &Arc<Self>, held: G) -> Stream<G> {
        self.touch();
        Stream {
            activity: self.clone(),
            _held: held,
        }
    }
}

// === impl Stream ===

impl<G> Drop for Stream<G> {
    fn drop(&mut self) {
        self.activity.touch();
    }
}

// === impl Progress ===

impl<B, G> Progress<B, G> {
    /// `inner`, sent as part of `stream`.
    pub fn new(inner: B, stream: Stream<G>) -> Self {
        Progress { inner, stream }
    }
}

impl<B, G> HttpBody for Progress<B, G>
where
    B: HttpBody<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.stream.activity.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_only_after_a_quiet_period() {
        let activity = Activity::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        let stream = activity.stream(());
        let started = Instant::now();
        activity.idle_for(Duration::from_secs(10)).await;
        // The request started at t=5 s moved the deadline to t=15 s.
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(activity.last() >= activity.opened + Duration::from_secs(5));
        drop(stream);
    }

    #[tokio::test(start_paused = true)]
    async fn body_frames_are_progress_and_a_stalled_body_is_not() {
        let activity = Activity::new();
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, String>>(1);
        let frames = tokio_stream_from(receiver);
        let mut body = Progress::new(StreamBody::new(frames), activity.stream(()));
        tokio::time::advance(Duration::from_secs(30)).await;
        sender
            .send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        body.frame().await.unwrap().unwrap();
        // Progress at t=30 s; then the body stalls: idle 10 s later, though it is open.
        let stalled = Instant::now();
        activity.idle_for(Duration::from_secs(10)).await;
        assert_eq!(stalled.elapsed(), Duration::from_secs(10));
        drop(sender);
    }

    /// A frame stream over a channel (what an upstream body looks like to the server).
    fn tokio_stream_from<T>(
        mut receiver: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }
}
