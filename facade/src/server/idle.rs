//! Idle detection by stream progress: a connection is idle once nothing moved a stream for
//! the idle timeout, where moving is a request starting, a request ending (its response body
//! dropped), or a response body frame taken for sending. A request still waiting for its
//! response head (on an upstream, bounded by the upstream timeouts) keeps the connection
//! from being idle. Bytes on the socket do not count:
//! HTTP/2 PINGs and other control frames (the agent sends keep-alive PINGs) cannot keep an
//! idle connection open, and a device that stops reading mid-body is idle too once the
//! send buffers are full and its body stops being polled, so a stalled reader cannot pin a
//! connection (and its upstream stream) forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::Hold;

/// When a connection's streams last made progress, in milliseconds since it opened.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    /// Requests waiting for their response head.
    waiting: AtomicUsize,
}

/// A request waiting for its response head, until dropped.
#[derive(Debug)]
pub struct Waiting {
    activity: Arc<Activity>,
}

/// One request in progress on a connection: notes progress when it starts, at each frame of
/// its response body (held in a [`Holding`](crate::budget::Holding) body) and when it is dropped with that body, and
/// holds `G` (its budget share) as long.
#[derive(Debug)]
pub struct Stream<G> {
    activity: Arc<Activity>,
    _held: G,
}

// === impl Activity ===

impl Activity {
    /// A connection opened now (which counts as progress).
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
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

    /// Resolves once no stream made progress for `idle` and no request is waiting for its
    /// response head.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.last() + idle;
            if Instant::now() >= deadline {
                if self.waiting.load(Ordering::Relaxed) == 0 {
                    return;
                }
                // A request is being answered: look again one period on.
                tokio::time::sleep(idle).await;
                continue;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// A request waiting for its response head until the returned guard is dropped.
    pub fn waiting(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting {
            activity: self.clone(),
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

// === impl Waiting ===

impl Drop for Waiting {
    fn drop(&mut self) {
        self.activity.waiting.fetch_sub(1, Ordering::Relaxed);
        self.activity.touch();
    }
}

// === impl Stream ===

impl<G> Drop for Stream<G> {
    fn drop(&mut self) {
        self.activity.touch();
    }
}

impl<G> Hold for Stream<G> {
    fn frame_sent(&self) {
        self.activity.touch();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::{BodyExt as _, StreamBody};

    use crate::budget::Holding;

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
    async fn a_request_waiting_for_its_answer_is_not_idle() {
        let activity = Activity::new();
        let waiting = activity.waiting();
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(Duration::from_secs(10)).await }
        });
        tokio::time::advance(Duration::from_secs(60)).await;
        tokio::task::yield_now().await;
        assert!(
            !idle.is_finished(),
            "idle while a request waited for its answer"
        );
        drop(waiting);
        let answered = Instant::now();
        idle.await.unwrap();
        // The answer was progress: idle a full period after it.
        assert!(answered.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn body_frames_are_progress_and_a_stalled_body_is_not() {
        let activity = Activity::new();
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, String>>(1);
        let frames = tokio_stream_from(receiver);
        let mut body = Holding::new(StreamBody::new(frames), activity.stream(()));
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
