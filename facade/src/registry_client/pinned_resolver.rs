//! The resolver of the client that follows redirects off the upstream's origin: it resolves
//! nothing itself, it hands reqwest the addresses [`super::destination`] checked for a name
//! just before the request. A name without a pin is refused, so that every connection off
//! the origin goes to an address that was checked, and a name that resolves differently a
//! moment later (DNS rebinding) cannot move it.
//!
//! The one exception is a proxy's host (`HTTPS_PROXY`...), which the operator chose: it is
//! resolved as usual. Through a proxy the facade checks a redirect's host as its own
//! resolver sees it, and the proxy connects.

use std::net::SocketAddr;
use std::sync::Mutex;

use lru::LruCache;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::bearer_token::MAX_SCOPES;

/// What a name resolves to.
#[derive(Debug, Clone)]
enum Pin {
    /// These checked addresses.
    Checked(Vec<SocketAddr>),
    /// A proxy's host: the system resolver's answer.
    Proxy,
}

/// Pinned names, the most recently pinned kept (as many as the token cache keeps scopes).
#[derive(Debug)]
pub(super) struct PinnedResolver {
    pins: Mutex<LruCache<String, Pin>>,
}

/// A name reqwest asked for that was never checked.
#[derive(Debug, thiserror::Error)]
#[error("{0} was not checked as a redirect target")]
struct Unchecked(String);

// === impl PinnedResolver ===

impl Default for PinnedResolver {
    fn default() -> Self {
        PinnedResolver {
            pins: Mutex::new(LruCache::new(MAX_SCOPES)),
        }
    }
}

impl PinnedResolver {
    /// From now on, `name` resolves to `addresses` (checked).
    pub(super) fn pin(&self, name: &str, addresses: Vec<SocketAddr>) {
        if let Ok(mut pins) = self.pins.lock() {
            pins.put(name.to_owned(), Pin::Checked(addresses));
        }
    }

    /// `name` is a proxy's host: it resolves as usual.
    pub(super) fn allow_proxy(&self, name: &str) {
        if let Ok(mut pins) = self.pins.lock() {
            pins.put(name.to_owned(), Pin::Proxy);
        }
    }
}

impl Resolve for PinnedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let pin = self
            .pins
            .lock()
            .ok()
            .and_then(|mut pins| pins.get(name.as_str()).cloned());
        Box::pin(async move {
            match pin {
                Some(Pin::Checked(addresses)) => {
                    let addresses: Addrs = Box::new(addresses.into_iter());
                    Ok(addresses)
                }
                Some(Pin::Proxy) => {
                    let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
                    let addresses: Addrs = Box::new(found.collect::<Vec<_>>().into_iter());
                    Ok(addresses)
                }
                None => Err(Unchecked(name.as_str().to_owned()).into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use super::*;

    async fn resolve(resolver: &PinnedResolver, name: &str) -> Result<Vec<SocketAddr>, String> {
        let name = Name::from_str(name).unwrap();
        resolver
            .resolve(name)
            .await
            .map(Iterator::collect)
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn resolves_pinned_names_to_their_checked_addresses_and_refuses_the_rest() {
        let resolver = PinnedResolver::default();
        let checked: SocketAddr = "52.216.8.1:443".parse().unwrap();
        resolver.pin("s3.example", vec![checked]);
        assert_eq!(
            resolve(&resolver, "s3.example").await.unwrap(),
            vec![checked]
        );
        let refused = resolve(&resolver, "other.example").await.unwrap_err();
        assert!(refused.contains("not checked"), "{refused}");
        resolver.allow_proxy("localhost");
        assert!(!resolve(&resolver, "localhost").await.unwrap().is_empty());
    }
}
