//! Signs of life from an update cycle, which the service loop turns into watchdog pings.
//!
//! Every step that is about to wait says by when its next sign of life is due: a request
//! being sent (connect plus header timeout), a body chunk that arrived (the stall window), a
//! backoff (its length), the apply hook (its timeout). Each of those waits is bounded, so a
//! healthy cycle never lets the due time pass by much; a cycle that does is stuck somewhere
//! nothing bounds, and the loop stops vouching for it (see `service::run`).
//!
//! Concurrent downloads each push the due time forward; one of them hanging does not count
//! as stuck while another makes progress (its own deadline ends it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// When a cycle's next sign of life is due. Shared by the client and the service loop.
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    /// Milliseconds after `origin`.
    due: AtomicU64,
}

// === impl Activity ===

impl Activity {
    /// Due now.
    pub fn new() -> Self {
        Activity {
            origin: Instant::now(),
            due: AtomicU64::new(0),
        }
    }

    /// A sign of life: the next one comes within `within`. A due time further out, set by a
    /// concurrent step, stays.
    pub fn expect_within(&self, within: Duration) {
        let due = self.millis(Instant::now()).saturating_add(millis(within));
        self.due.fetch_max(due, Ordering::Relaxed);
    }

    /// Starts over (a new cycle): the next sign of life is due now.
    pub fn reset(&self) {
        self.due
            .store(self.millis(Instant::now()), Ordering::Relaxed);
    }

    /// How long ago the next sign of life was due; zero when it is not due yet.
    pub fn overdue(&self) -> Duration {
        let now = self.millis(Instant::now());
        Duration::from_millis(now.saturating_sub(self.due.load(Ordering::Relaxed)))
    }

    fn millis(&self, at: Instant) -> u64 {
        millis(at.saturating_duration_since(self.origin))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
