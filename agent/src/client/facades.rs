//! Several facade replicas behind one client: tried in order, sticky, failing over.
//!
//! Every request goes to the current replica. One that fails the way a lost or broken
//! replica fails (see [`Error::fails_over`]) moves the client on to the next URL in the
//! list, at once and without a backoff, and the client stays there (sticky) until that one
//! fails in turn: a replica that answers is never left for one earlier in the list, so a
//! fleet does not flap back to a replica that is still coming up. Only a whole round of
//! failures (every URL failed once) waits for the backoff, so a fleet without a load
//! balancer rides through a replica loss in one extra request, and an outage of every
//! replica still backs off as one facade does.
//!
//! Each replica counts its failures in a row (a success clears them; the count stops at
//! [`FAILURE_MEMORY`]). A failure moves the client to the other replica with the fewest,
//! the next in the list among equals, only if it has fewer than the one that just failed:
//! when a replica is lost, its devices' concurrent requests all fail on it, and the
//! survivor, busy taking them over, may cut a body or two; that sends the client back to
//! the lost replica only once the survivor has failed as often. A failure that is not worth
//! retrying on the same replica (a refused handshake) always moves on.
//!
//! Content is addressed by digest, so any replica serves the same bytes: a blob download cut
//! by a replica loss resumes with `Range` on the next one (see `blob`), and what ends up in
//! the ingest file is checked against the digest as with one facade.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use super::connection::Connector;
use crate::error::Error;

/// The replicas, in the configured order, and which one requests go to.
#[derive(Debug)]
pub(super) struct Facades {
    /// The first replica, apart so that there always is one.
    first: Connector,
    /// The others, in order: replica `i` is `others[i - 1]`.
    others: Vec<Connector>,
    current: AtomicUsize,
    /// Failures in a row per replica (index as in [`Facades::at`]), at most
    /// [`FAILURE_MEMORY`].
    failures: Vec<AtomicU32>,
}

/// How many failures in a row a replica's count remembers: a replica lost for long is
/// tried again after this many failures of the one that replaced it.
pub(super) const FAILURE_MEMORY: u32 = 2;

/// One request's journey through the replicas: what failed where, and when to back off.
#[derive(Debug, Default)]
pub(super) struct Journey {
    /// The last failure at each URL tried, in the order first tried.
    failures: Vec<(String, String)>,
    /// Failures since the last backoff.
    since_backoff: usize,
    /// Backoffs so far (the next one's ceiling doubles with each).
    backoffs: u32,
    /// The replicas that refused in a row (a failure that moves on to the next replica but
    /// would not be retried on the same one, a failed TLS handshake): once every replica
    /// has, the device itself is refused (a revoked certificate, a wrong CA), and trying
    /// again cannot help.
    refused: Vec<String>,
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Try again now (on the next replica).
    Now,
    /// Wait out backoff number `n` (1-based), then try again.
    Backoff(u32),
    /// Stop: every replica refused this device.
    GiveUp,
}

// === impl Facades ===

impl Facades {
    pub(super) fn new(first: Connector, others: Vec<Connector>) -> Self {
        let failures = std::iter::repeat_with(AtomicU32::default)
            .take(others.len() + 1)
            .collect();
        Facades {
            first,
            others,
            current: AtomicUsize::new(0),
            failures,
        }
    }

    /// How many replicas there are.
    pub(super) fn len(&self) -> usize {
        self.others.len() + 1
    }

    /// The replica at `index` in the list (the first one past the end, which no caller
    /// asks for: indexes come from [`Facades::current`]).
    pub(super) fn at(&self, index: usize) -> &Connector {
        match index.checked_sub(1) {
            Some(i) => self.others.get(i).unwrap_or(&self.first),
            None => &self.first,
        }
    }

    /// The replica requests go to now, and its place in the list.
    pub(super) fn current(&self) -> (usize, &Connector) {
        let index = self.current.load(Ordering::Relaxed) % self.len();
        (index, self.at(index))
    }

    /// A request to the replica at `index` succeeded: its failures in a row are over.
    pub(super) fn succeeded(&self, index: usize) {
        if let Some(count) = self.failures.get(index) {
            count.store(0, Ordering::Relaxed);
        }
    }

    /// The replica at `index` failed: move on to the other replica with the fewest failures
    /// in a row if it has fewer than this one (always, when `must_move`: the failure is not
    /// worth retrying here), unless another request has already moved the client on
    /// (concurrent failures on one lost replica move it once, not once per request, which
    /// would skip the good replica after it).
    pub(super) fn fail_over_from(&self, index: usize, must_move: bool) {
        let count = |i: usize| {
            self.failures
                .get(i)
                .map_or(0, |c| c.load(Ordering::Relaxed))
        };
        let failed = self.failures.get(index).map_or(0, |c| {
            let add = |n: u32| (n + 1).min(FAILURE_MEMORY);
            // The closure never refuses: `Ok` and `Err` both hold the count before it.
            match c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(add(n))) {
                Ok(before) | Err(before) => add(before),
            }
        });
        let len = self.len();
        // `min_by_key` keeps the first of equals: the next in the list.
        let Some(next) = (1..len)
            .map(|k| (index + k) % len)
            .min_by_key(|&i| count(i))
        else {
            return;
        };
        if must_move || count(next) < failed {
            let _ =
                self.current
                    .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

// === impl Journey ===

impl Journey {
    /// Records that `url` failed with `err`, and says whether to try again now (another
    /// replica has not been tried in this round), after a backoff, or not at all.
    pub(super) fn failed(&mut self, url: &str, err: &Error, over: bool, replicas: usize) -> Next {
        let message = err.to_string();
        match self.failures.iter_mut().find(|(u, _)| u == url) {
            Some(entry) => entry.1 = message,
            None => self.failures.push((url.to_owned(), message)),
        }
        if err.is_retryable() {
            self.refused.clear();
        } else {
            if !self.refused.iter().any(|u| u == url) {
                self.refused.push(url.to_owned());
            }
            if self.refused.len() >= replicas {
                return Next::GiveUp;
            }
        }
        self.since_backoff += 1;
        if over && self.since_backoff < replicas {
            return Next::Now;
        }
        self.since_backoff = 0;
        self.backoffs += 1;
        Next::Backoff(self.backoffs)
    }

    /// The other URLs tried (not `last_url`) with their last failure, for the final error.
    pub(super) fn elsewhere(self, last_url: &str) -> Vec<String> {
        self.failures
            .into_iter()
            .filter(|(url, _)| url != last_url)
            .map(|(url, message)| format!("{url}: {message}"))
            .collect()
    }
}

#[cfg(test)]
mod tests;
