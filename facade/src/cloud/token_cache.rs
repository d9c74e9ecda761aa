//! Short-lived registry tokens cached per connection ([`TokenKey`]: the host and the
//! connection's generation), refreshed shortly before they expire, one refresh at a time.
//!
//! A token the registry refused is dropped ([`CloudTokenCache::reject`]), and a removed
//! connection's tokens with it ([`CloudTokenCache::forget_host`]): a registry connected again
//! with another role or key never gets the old connection's token.
//!
//! A token is used until `expires_at - margin`, where the margin is the smaller of a fixed
//! duration (default 5 minutes) and a fraction of the token's lifetime (default 10 %), so a
//! 12-hour ECR token is renewed 5 minutes early and a 60-second token 6 seconds early.
//!
//! Each connection has its own async mutex: the first caller that finds the token stale refreshes
//! it while the others wait, and they all get the new token (single flight: 50 concurrent
//! pulls, one token request). A failed refresh is remembered for a short back-off, so a
//! token endpoint that is down is not hammered by every waiting pull; callers get
//! [`CloudError::RecentlyFailed`] with the time to retry after.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{CloudError, RegistryToken};

/// A source of the current time (injectable so tests and benchmarks can simulate hours).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// When a cached token counts as stale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MarginPolicy {
    /// The largest margin before expiry.
    pub max: Duration,
    /// The margin as a fraction of the token's lifetime, if smaller.
    pub fraction: f64,
    /// How long a failed refresh is remembered before the next attempt.
    pub failure_backoff: Duration,
}

impl Default for MarginPolicy {
    fn default() -> Self {
        MarginPolicy {
            max: Duration::from_secs(300),
            fraction: 0.1,
            failure_backoff: Duration::from_secs(5),
        }
    }
}

impl MarginPolicy {
    /// The margin for a token that lives `lifetime`.
    pub fn margin(&self, lifetime: Duration) -> Duration {
        self.max
            .min(lifetime.mul_f64(self.fraction.clamp(0.0, 1.0)))
    }
}

/// Which connection a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// The registry host.
    pub host: String,
    /// The connection's generation (see [`crate::connections::Connection::generation`]).
    pub connection: u64,
}

#[derive(Debug, Default)]
struct Slot {
    token: Option<RegistryToken>,
    failed_at: Option<SystemTime>,
}

/// The per-connection token cache.
#[derive(Debug)]
pub struct CloudTokenCache {
    policy: MarginPolicy,
    clock: Arc<dyn Clock>,
    slots: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<Slot>>>>,
    refreshes: AtomicU64,
    hits: AtomicU64,
}

// === impl CloudTokenCache ===

impl CloudTokenCache {
    /// A cache with `policy`, reading time from `clock`.
    pub fn new(policy: MarginPolicy, clock: Arc<dyn Clock>) -> Self {
        CloudTokenCache {
            policy,
            clock,
            slots: Mutex::new(HashMap::new()),
            refreshes: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// The token for `key`: the cached one while fresh, else the result of `refresh(now)`
    /// (called by one caller at a time per connection).
    pub async fn get<F, Fut>(&self, key: &TokenKey, refresh: F) -> Result<RegistryToken, CloudError>
    where
        F: FnOnce(SystemTime) -> Fut,
        Fut: Future<Output = Result<RegistryToken, CloudError>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(key.clone()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        let now = self.clock.now();
        if let Some(token) = &slot.token {
            let margin = self.policy.margin(token.lifetime);
            if now + margin < token.expires_at {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(token.clone());
            }
        }
        if let Some(failed_at) = slot.failed_at {
            let since = now.duration_since(failed_at).unwrap_or_default();
            if since < self.policy.failure_backoff {
                return Err(CloudError::RecentlyFailed {
                    host: key.host.clone(),
                    retry_after: self.policy.failure_backoff - since,
                });
            }
        }
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        match refresh(now).await {
            Ok(token) => {
                slot.token = Some(token.clone());
                slot.failed_at = None;
                Ok(token)
            }
            Err(err) => {
                slot.token = None;
                slot.failed_at = Some(now);
                Err(err)
            }
        }
    }

    /// Drops the token of `key` if it is still `password` (the registry refused it): the
    /// next caller refreshes. A newer token is kept, so many requests refused at once cause
    /// one refresh, not one each.
    pub async fn reject(&self, key: &TokenKey, password: &str) {
        let slot = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.get(key).cloned()
        };
        let Some(slot) = slot else {
            return;
        };
        let mut slot = slot.lock().await;
        if slot
            .token
            .as_ref()
            .is_some_and(|token| token.password == password)
        {
            slot.token = None;
        }
    }

    /// Forgets every token of `host`'s connections (the connection was removed).
    pub fn forget_host(&self, host: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|key, _| key.host != host);
    }

    /// How many refreshes were started.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// How many calls were answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
