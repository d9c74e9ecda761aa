//! Reading response bodies with a speed floor, and the bandwidth limit.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Activity, Client};
use crate::error::{Error, Result};

/// A response body read chunk by chunk, cut when it stays under the speed floor for a whole
/// window (which includes sending nothing at all for that long). Each chunk is a sign of
/// life for the client's [`Activity`].
pub(super) struct Body<'a> {
    inner: Incoming,
    activity: &'a Activity,
    allowance: Duration,
    url: String,
    floor: u64,
    window: Duration,
    window_start: Instant,
    window_bytes: u64,
}

/// Spreads downloads over time so their sum stays under a rate (bytes per second).
#[derive(Debug)]
pub struct RateLimiter {
    rate: u64,
    /// When the bytes taken so far will have been "paid for" at the rate.
    next_free: Instant,
}

// === impl Body ===

impl<'a> Body<'a> {
    pub(super) fn new(inner: Incoming, client: &'a Client, url: String) -> Self {
        let allowance = client.chunk_allowance();
        client.activity.expect_within(allowance);
        Body {
            inner,
            activity: &client.activity,
            allowance,
            url,
            floor: client.options.stall_floor,
            window: client.options.stall_window.max(Duration::from_millis(10)),
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// The next data chunk, `None` at the end of the body.
    pub(super) async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            let left = self.window.saturating_sub(self.window_start.elapsed());
            let frame = match tokio::time::timeout(left, self.inner.frame()).await {
                Err(_) => {
                    self.check_floor(true)?;
                    continue;
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(source))) => {
                    return Err(Error::Http {
                        url: self.url.clone(),
                        source,
                    });
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                self.activity.expect_within(self.allowance);
                self.window_bytes += data.len() as u64;
                self.check_floor(false)?;
                return Ok(Some(data));
            }
        }
    }

    /// At the end of a window, fails if fewer bytes than the floor asks for arrived in it
    /// (and always if none did: a silent connection is stalled whatever the floor).
    fn check_floor(&mut self, window_over: bool) -> Result<()> {
        let elapsed = self.window_start.elapsed();
        if !window_over && elapsed < self.window {
            return Ok(());
        }
        let wanted = ((self.floor as f64 * elapsed.as_secs_f64()) as u64).max(1);
        if self.window_bytes < wanted {
            return Err(Error::Stalled {
                url: self.url.clone(),
                floor: self.floor,
                window: self.window,
            });
        }
        self.window_start = Instant::now();
        self.window_bytes = 0;
        Ok(())
    }
}

// === impl RateLimiter ===

impl RateLimiter {
    /// A limiter for `rate` bytes per second (at least 1).
    pub fn new(rate: u64) -> Self {
        RateLimiter {
            rate: rate.max(1),
            next_free: Instant::now(),
        }
    }

    /// Accounts for `n` bytes just received; returns how long to wait before reading more.
    pub fn take(&mut self, n: u64) -> Duration {
        let now = Instant::now();
        let start = self.next_free.max(now);
        self.next_free = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
        self.next_free.saturating_duration_since(now)
    }
}
