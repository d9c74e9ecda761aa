//! Bearer tokens from a registry's token endpoint (the Docker token flow), cached per scope
//! until shortly before they expire, with one fetch at a time per scope so that a burst of
//! device requests costs the token endpoint one request, not a stampede.
//!
//! Scopes name repositories, and devices choose repository names: the cache is a bounded LRU
//! map, so a device trying name after name costs at most [`MAX_SCOPES`] entries and evicts
//! the least recently used one in constant time.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::providers::Secret;

/// The lifetime assumed when a token response names none, or less (the Docker token spec:
/// "if omitted, a default of 60 seconds should be assumed"; shorter values are raised to it).
pub(super) const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// The longest a token is used before it is fetched again, whatever its `expires_in` says
/// (an `Instant` cannot hold the largest numbers an endpoint may send; a day is far above
/// what registries issue, minutes to hours).
pub(super) const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long before expiry a token is refreshed, at most.
const MAX_MARGIN: Duration = Duration::from_secs(30);
/// The most scopes cached per upstream; past it, the least recently used one is dropped.
pub(crate) const MAX_SCOPES: NonZeroUsize = match NonZeroUsize::new(1024) {
    Some(bound) => bound,
    None => NonZeroUsize::MIN,
};

/// One scope's token, locked while it is fetched.
type Slot = Arc<tokio::sync::Mutex<Option<BearerToken>>>;

/// A token endpoint's answer.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    /// The token (Docker spelling).
    #[serde(default)]
    token: Option<String>,
    /// The token (OAuth2 spelling).
    #[serde(default)]
    access_token: Option<String>,
    /// Lifetime in seconds.
    #[serde(default)]
    expires_in: Option<u64>,
    /// When it was issued (RFC 3339).
    #[serde(default)]
    issued_at: Option<String>,
}

/// A token and when to stop using it.
#[derive(Debug, Clone)]
pub struct BearerToken {
    value: Secret,
    refresh_at: Instant,
}

/// Tokens per scope, with single-flight refresh, at most [`MAX_SCOPES`] scopes.
#[derive(Debug)]
pub struct BearerTokenCache {
    slots: Mutex<LruCache<String, Slot>>,
}

// === impl TokenResponse ===

impl TokenResponse {
    /// Parses a token endpoint's JSON body; `None` if it holds no token.
    pub fn into_token(self, received: Instant) -> Option<BearerToken> {
        let value = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        let mut lifetime = self
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME)
            .max(DEFAULT_LIFETIME);
        // The lifetime counts from `issued_at`: a token that sat in a queue has less left.
        if let Some(issued) = self
            .issued_at
            .as_deref()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        {
            let age = OffsetDateTime::now_utc() - issued;
            if age.is_positive() {
                let age = Duration::from_secs(age.whole_seconds().unsigned_abs());
                lifetime = lifetime.saturating_sub(age);
            }
        }
        let lifetime = lifetime.min(MAX_LIFETIME);
        let margin = (lifetime / 5).min(MAX_MARGIN);
        Some(BearerToken {
            value: Secret::new(value),
            refresh_at: received + lifetime.saturating_sub(margin),
        })
    }
}

// === impl BearerToken ===

impl BearerToken {
    /// The token.
    pub fn value(&self) -> &Secret {
        &self.value
    }

    /// When the cache stops handing it out and fetches a new one.
    pub fn refresh_at(&self) -> Instant {
        self.refresh_at
    }

    fn fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

// === impl BearerTokenCache ===

impl Default for BearerTokenCache {
    fn default() -> Self {
        BearerTokenCache {
            slots: Mutex::new(LruCache::new(MAX_SCOPES)),
        }
    }
}

impl BearerTokenCache {
    /// A fresh cached token for `scope`, waiting for a refresh in flight.
    pub async fn cached(&self, scope: &str) -> Option<Secret> {
        let slot = self.slots.lock().ok()?.get(scope).cloned()?;
        let guard = slot.lock().await;
        guard
            .as_ref()
            .filter(|t| t.fresh())
            .map(|t| t.value.clone())
    }

    /// A fresh token for `scope`: the cached one unless it is stale or is `rejected` (the
    /// upstream just refused it), else one from `fetch`, stored for the next request.
    pub async fn get_or_fetch<F, Fut, E>(
        &self,
        scope: &str,
        rejected: Option<&Secret>,
        fetch: F,
    ) -> Result<Secret, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BearerToken, E>>,
    {
        // A poisoned map only costs the cache, not the request.
        let Some(slot) = self.slot(scope) else {
            return fetch().await.map(|t| t.value);
        };
        let mut guard = slot.lock().await;
        if let Some(token) = guard.as_ref()
            && token.fresh()
            && Some(&token.value) != rejected
        {
            return Ok(token.value.clone());
        }
        let token = fetch().await?;
        let value = token.value.clone();
        *guard = Some(token);
        Ok(value)
    }

    /// The slot for `scope`, made (evicting the least recently used scope when full) if
    /// there is none. An evicted slot with a fetch in flight finishes that fetch for its
    /// waiters; the next request for its scope fetches again.
    fn slot(&self, scope: &str) -> Option<Slot> {
        let mut slots = self.slots.lock().ok()?;
        Some(slots.get_or_insert(scope.to_owned(), Slot::default).clone())
    }

    /// How many scopes are cached.
    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or_default()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(json: &str) -> TokenResponse {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn takes_token_or_access_token() {
        let now = Instant::now();
        let t = response(r#"{"token":"a"}"#).into_token(now).unwrap();
        assert_eq!(t.value().expose(), "a");
        let t = response(r#"{"access_token":"b","expires_in":300}"#)
            .into_token(now)
            .unwrap();
        assert_eq!(t.value().expose(), "b");
        assert!(response(r#"{"expires_in":300}"#).into_token(now).is_none());
    }

    #[test]
    fn refreshes_shortly_before_expiry_with_a_sixty_second_floor() {
        let now = Instant::now();
        let t = response(r#"{"token":"a"}"#).into_token(now).unwrap();
        assert_eq!(t.refresh_at - now, Duration::from_secs(48));
        let t = response(r#"{"token":"a","expires_in":5}"#)
            .into_token(now)
            .unwrap();
        assert_eq!(t.refresh_at - now, Duration::from_secs(48));
        let t = response(r#"{"token":"a","expires_in":3600}"#)
            .into_token(now)
            .unwrap();
        assert_eq!(t.refresh_at - now, Duration::from_secs(3570));
    }

    #[test]
    fn caps_an_expires_in_too_large_for_a_clock_at_a_day() {
        let now = Instant::now();
        let json = format!(r#"{{"token":"a","expires_in":{}}}"#, u64::MAX);
        let t = response(&json).into_token(now).unwrap();
        assert_eq!(t.refresh_at - now, MAX_LIFETIME - MAX_MARGIN);
    }

    #[test]
    fn counts_lifetime_from_issued_at() {
        let now = Instant::now();
        let issued = (OffsetDateTime::now_utc() - time::Duration::seconds(600))
            .format(&Rfc3339)
            .unwrap();
        let json = format!(r#"{{"token":"a","expires_in":3600,"issued_at":"{issued}"}}"#);
        let t = response(&json).into_token(now).unwrap();
        let left = t.refresh_at - now;
        assert!(left <= Duration::from_secs(2970) && left >= Duration::from_secs(2960));
    }

    #[tokio::test]
    async fn fetches_once_and_refetches_a_rejected_token() {
        let cache = BearerTokenCache::default();
        let mut fetches = 0;
        let mut fetch = |v: &'static str| {
            fetches += 1;
            async move {
                Ok::<_, ()>(
                    response(&format!(r#"{{"token":"{v}"}}"#))
                        .into_token(Instant::now())
                        .unwrap(),
                )
            }
        };
        let first = cache
            .get_or_fetch("s", None, || fetch("one"))
            .await
            .unwrap();
        let again = cache
            .get_or_fetch("s", None, || fetch("two"))
            .await
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(cache.cached("s").await, Some(first.clone()));
        let renewed = cache
            .get_or_fetch("s", Some(&first), || fetch("three"))
            .await
            .unwrap();
        assert_eq!(renewed.expose(), "three");
        assert_eq!(fetches, 2);
        assert_eq!(cache.cached("other").await, None);
        assert_eq!(cache.len(), 1, "a lookup must not add an entry");
    }

    #[tokio::test]
    async fn drops_stale_scopes_instead_of_growing_without_bound() {
        let cache = BearerTokenCache::default();
        let stale = || async {
            let mut token = response(r#"{"token":"t"}"#)
                .into_token(Instant::now())
                .unwrap();
            token.refresh_at = Instant::now();
            Ok::<_, ()>(token)
        };
        for i in 0..MAX_SCOPES.get() + 10 {
            cache
                .get_or_fetch(&format!("repository:r{i}:pull"), None, stale)
                .await
                .unwrap();
        }
        assert!(cache.len() <= MAX_SCOPES.get(), "{}", cache.len());
    }

    #[tokio::test]
    async fn keeps_its_bound_and_evicts_the_least_recently_used_scope() {
        let cache = BearerTokenCache::default();
        let fresh = |v: String| async move {
            Ok::<_, ()>(
                response(&format!(r#"{{"token":"{v}"}}"#))
                    .into_token(Instant::now())
                    .unwrap(),
            )
        };
        let scope = |i: usize| format!("repository:r{i}:pull");
        for i in 0..MAX_SCOPES.get() {
            cache
                .get_or_fetch(&scope(i), None, || fresh(format!("t{i}")))
                .await
                .unwrap();
        }
        // r0 is the oldest entry, but used again: r1 is now the least recently used.
        assert_eq!(cache.cached(&scope(0)).await.unwrap().expose(), "t0");
        cache
            .get_or_fetch(&scope(MAX_SCOPES.get()), None, || fresh("new".into()))
            .await
            .unwrap();
        assert_eq!(cache.len(), MAX_SCOPES.get());
        assert_eq!(cache.cached(&scope(1)).await, None, "the LRU scope stayed");
        assert_eq!(cache.cached(&scope(0)).await.unwrap().expose(), "t0");
        assert_eq!(
            cache
                .cached(&scope(MAX_SCOPES.get()))
                .await
                .unwrap()
                .expose(),
            "new"
        );
    }
}
