//! Budgets: how many of something may be in progress at once, overall ([`Budget`]) and per
//! key ([`PerKey`]: per client address, per device). A taken share is a guard that gives it
//! back when dropped, so a share cannot leak past the work it was taken for (a task aborted
//! mid-way drops its guards too).
//!
//! The facade's device listener uses them for TLS handshakes (overall and per source
//! address), connections (overall and per device certificate), streams per device and the
//! bytes of manifests held in memory; any listener can.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `capacity` units in use at once. Waiting takers are served first come, first
/// served (tokio's semaphore is fair), so a large share waits its turn instead of starving.
#[derive(Debug, Clone)]
pub struct Budget {
    semaphore: Arc<Semaphore>,
    capacity: u32,
}

/// Units of a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Share {
    _permit: OwnedSemaphorePermit,
}

/// At most `cap` shares in use at once for each key; keys without a share in use take no
/// memory.
#[derive(Debug)]
pub struct PerKey<K> {
    cap: usize,
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

/// One share of a [`PerKey`] for its key, given back when dropped.
#[derive(Debug)]
pub struct KeyShare<K: Hash + Eq> {
    key: Option<K>,
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

// === impl Budget ===

impl Budget {
    /// A budget of `capacity` units (at most `u32::MAX`, tokio's limit for one take).
    pub fn new(capacity: u32) -> Self {
        Budget {
            semaphore: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
        }
    }

    /// How many units the budget has.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// How many units are taken now.
    pub fn in_use(&self) -> u32 {
        let available = u32::try_from(self.semaphore.available_permits()).unwrap_or(u32::MAX);
        self.capacity.saturating_sub(available)
    }

    /// One unit if one is free now, without waiting.
    pub fn try_take(&self) -> Option<Share> {
        self.semaphore
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|permit| Share { _permit: permit })
    }

    /// One unit, waiting for as long as it takes.
    pub async fn take(&self) -> Share {
        match self.semaphore.clone().acquire_owned().await {
            Ok(permit) => Share { _permit: permit },
            // The semaphore is never closed; were it, waiting on would be waiting forever.
            Err(_) => std::future::pending().await,
        }
    }

    /// `units` units, waiting at most `wait` for them; `None` if they did not free up in
    /// time, or if `units` is more than the whole budget (they never could).
    pub async fn take_within(&self, units: u32, wait: Duration) -> Option<Share> {
        if units > self.capacity {
            return None;
        }
        let acquire = self.semaphore.clone().acquire_many_owned(units);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => Some(Share { _permit: permit }),
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

// === impl PerKey ===

impl<K: Hash + Eq + Clone> PerKey<K> {
    /// At most `cap` shares per key.
    pub fn new(cap: usize) -> Self {
        PerKey {
            cap,
            counts: Arc::default(),
        }
    }

    /// The cap per key.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// A share for `key` if it has fewer than the cap in use; never waits.
    pub fn try_take(&self, key: &K) -> Option<KeyShare<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key.clone()).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(KeyShare {
            key: Some(key.clone()),
            counts: self.counts.clone(),
        })
    }

    /// How many shares `key` has in use.
    pub fn in_use(&self, key: &K) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(key).copied().unwrap_or(0)
    }

    /// How many keys have a share in use.
    pub fn keys(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

// === impl KeyShare ===

impl<K: Hash + Eq> Drop for KeyShare<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_gives_units_back_when_their_share_drops() {
        let budget = Budget::new(2);
        let first = budget.try_take().unwrap();
        let second = budget.try_take().unwrap();
        assert!(budget.try_take().is_none(), "a third unit out of two");
        assert_eq!(budget.in_use(), 2);
        drop(first);
        assert_eq!(budget.in_use(), 1);
        let third = budget.try_take();
        assert!(third.is_some());
        drop((second, third));
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_large_share_waits_for_units_then_gives_up_after_its_wait() {
        let budget = Budget::new(10);
        let held = budget.take_within(8, Duration::ZERO).await.unwrap();
        assert_eq!(budget.in_use(), 8);
        // Not enough free: waits, then gives up with nothing taken.
        assert!(
            budget
                .take_within(4, Duration::from_millis(20))
                .await
                .is_none()
        );
        assert_eq!(budget.in_use(), 8);
        // Freed while waiting: taken.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move {
                budget
                    .take_within(4, Duration::from_secs(60))
                    .await
                    .is_some()
            }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiting.await.unwrap());
        // More than the whole budget never fits.
        assert!(
            budget
                .take_within(11, Duration::from_secs(60))
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn take_waits_for_a_free_unit() {
        let budget = Budget::new(1);
        let held = budget.take().await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move {
                let _share = budget.take().await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        waiting.await.unwrap();
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn per_key_caps_each_key_alone_and_forgets_keys_without_shares() {
        let per_source = PerKey::new(2);
        let a1 = per_source.try_take(&"a").unwrap();
        let a2 = per_source.try_take(&"a").unwrap();
        assert!(
            per_source.try_take(&"a").is_none(),
            "a third share for one key"
        );
        let b1 = per_source.try_take(&"b").unwrap();
        assert_eq!((per_source.in_use(&"a"), per_source.in_use(&"b")), (2, 1));
        drop(a1);
        assert!(per_source.try_take(&"a").is_some());
        drop((a2, b1));
        assert_eq!(per_source.keys(), 0, "keys without shares are kept");
    }
}
