//! Where a redirect may lead once it leaves the upstream's origin.
//!
//! A registry redirects blobs to its storage; a malicious or compromised one can redirect
//! to anything the facade can reach (its own listeners, a cloud metadata endpoint, a host on
//! the facade's private network), and a device asking for `Range: bytes=0-` would read that
//! answer as a clean `206`. So a hop off the upstream's origin is followed only to
//!
//! - a host the operator named as the upstream's storage ([`StorageHost`]; on-prem object
//!   storage often sits on a private address), whatever address it resolves to, or
//! - a host whose every address is public ([`super::public_address`]);
//!
//! and never to one of the facade's own listeners. The host is resolved once, here; the
//! request then connects to exactly the addresses checked (see
//! [`super::pinned_resolver`]), so a name that answers differently a moment later (DNS
//! rebinding) changes nothing.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use http::uri::Authority;
use reqwest::Url;

use super::public_address::is_public;
use super::{UpstreamError, redacted};

/// A host an operator named as an upstream's storage: `HOST` or `HOST:PORT` (a name or an
/// IP address, IPv6 in brackets). Without a port it stands for the default port of the
/// redirect's scheme (443, or 80 over plain HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageHost {
    /// As URLs write it: lowercase, IPv6 in brackets.
    host: String,
    port: Option<u16>,
}

/// A storage host that is not `HOST` or `HOST:PORT`.
#[derive(Debug, thiserror::Error)]
#[error("storage host {text:?}: {reason}")]
pub struct InvalidStorageHost {
    text: String,
    reason: &'static str,
}

/// The rules for one upstream's redirects off its origin.
#[derive(Debug, Clone, Default)]
pub struct RedirectRules {
    storage_hosts: Vec<StorageHost>,
    own_listeners: Vec<SocketAddr>,
}

// === impl StorageHost ===

impl StorageHost {
    /// Whether a URL is on this host (and port).
    fn matches(&self, url: &Url) -> bool {
        let default_port = match url.scheme() {
            "http" => 80,
            _ => 443,
        };
        url.host().is_some_and(|host| host.to_string() == self.host)
            && url.port_or_known_default() == Some(self.port.unwrap_or(default_port))
    }
}

impl FromStr for StorageHost {
    type Err = InvalidStorageHost;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidStorageHost {
            text: text.to_owned(),
            reason,
        };
        if text.contains(['@', '/', '?', '#']) || text.chars().any(char::is_whitespace) {
            return Err(invalid(
                "write HOST or HOST:PORT, without scheme, user or path",
            ));
        }
        let authority = Authority::from_str(text).map_err(|_| invalid("not HOST or HOST:PORT"))?;
        let after_host = authority.as_str().len() > authority.host().len();
        if after_host && authority.port_u16().is_none() {
            return Err(invalid("the port is not a number from 0 to 65535"));
        }
        let host = url::Host::parse(authority.host()).map_err(|_| invalid("not a host name"))?;
        if host.to_string().is_empty() {
            return Err(invalid("the host is empty"));
        }
        Ok(StorageHost {
            host: host.to_string(),
            port: authority.port_u16(),
        })
    }
}

impl fmt::Display for StorageHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

// === impl RedirectRules ===

impl RedirectRules {
    /// Rules that follow redirects to `storage_hosts` and to public addresses, never to
    /// `own_listeners` (the facade's configured listen addresses).
    pub fn new(storage_hosts: Vec<StorageHost>, own_listeners: Vec<SocketAddr>) -> Self {
        RedirectRules {
            storage_hosts,
            own_listeners,
        }
    }

    /// The addresses a request to `url` (off the upstream's origin) may connect to, every
    /// one of them checked; an error names the first address refused, or why the host did
    /// not resolve (within `timeout`).
    pub(super) async fn addresses(
        &self,
        url: &Url,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, UpstreamError> {
        let refused = |reason: String| UpstreamError::RedirectRefused {
            url: redacted(url),
            reason,
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| refused("it names no port".into()))?;
        let addresses = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Some(url::Host::Domain(name)) => {
                match tokio::time::timeout(timeout, tokio::net::lookup_host((name, port))).await {
                    Ok(Ok(found)) => found.collect(),
                    Ok(Err(e)) => return Err(refused(format!("its host did not resolve: {e}"))),
                    Err(_) => return Err(refused("its host did not resolve in time".into())),
                }
            }
            None => return Err(refused("it names no host".into())),
        };
        if addresses.is_empty() {
            return Err(refused("its host resolved to no address".into()));
        }
        let listed = self.storage_hosts.iter().any(|host| host.matches(url));
        for address in &addresses {
            if let Some(reason) = self.refusal(listed, *address) {
                return Err(refused(format!("{address} {reason}")));
            }
        }
        Ok(addresses)
    }

    /// Why a connection to `address` is refused, if it is.
    fn refusal(&self, listed: bool, address: SocketAddr) -> Option<&'static str> {
        let ip = address.ip().to_canonical();
        let own = self.own_listeners.iter().any(|listener| {
            let listener_ip = listener.ip().to_canonical();
            listener.port() == address.port()
                && (listener_ip == ip || (listener_ip.is_unspecified() && !is_public(ip)))
        });
        if own {
            return Some("is one of the facade's own listeners");
        }
        if !listed && !is_public(ip) {
            return Some(
                "is not a public address (loopback, private, link-local or reserved), and the \
                 host is not one of the upstream's storage hosts (`storage_hosts`)",
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn host(s: &str) -> StorageHost {
        s.parse().unwrap()
    }

    #[test]
    fn storage_hosts_are_a_host_and_an_optional_port() {
        assert_eq!(host("MinIO.example:9000").to_string(), "minio.example:9000");
        assert_eq!(host("10.0.0.5").to_string(), "10.0.0.5");
        assert_eq!(host("[::1]:8080").to_string(), "[::1]:8080");
        for bad in [
            "",
            "https://s3.example",
            "s3.example/bucket",
            "user@s3.example",
            "s3.example:",
            "s3.example:port",
            "s3 example",
        ] {
            assert!(bad.parse::<StorageHost>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_storage_host_without_port_matches_the_default_port_only() {
        let minio = host("minio.example");
        assert!(minio.matches(&url("https://minio.example/b/k")));
        assert!(minio.matches(&url("http://MINIO.example:80/b/k")));
        assert!(!minio.matches(&url("https://minio.example:9000/b/k")));
        assert!(!minio.matches(&url("https://other.example/b/k")));
        let with_port = host("127.0.0.1:9000");
        assert!(with_port.matches(&url("http://127.0.0.1:9000/b")));
        assert!(!with_port.matches(&url("http://127.0.0.1:9001/b")));
        assert!(host("[::1]:9000").matches(&url("http://[::1]:9000/b")));
    }

    fn rules(storage: &[&str], listeners: &[&str]) -> RedirectRules {
        RedirectRules::new(
            storage.iter().map(|s| host(s)).collect(),
            listeners.iter().map(|s| s.parse().unwrap()).collect(),
        )
    }

    async fn refused(rules: &RedirectRules, target: &str) -> Option<String> {
        rules
            .addresses(&url(target), Duration::from_secs(5))
            .await
            .err()
            .map(|e| e.to_string())
    }

    #[tokio::test]
    async fn unlisted_hosts_are_followed_to_public_addresses_only() {
        let rules = rules(&[], &[]);
        assert_eq!(
            refused(&rules, "https://52.216.8.1/bucket/key?sig=x").await,
            None
        );
        assert_eq!(refused(&rules, "https://[2606:4700::1111]/k").await, None);
        for internal in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:9464/metrics",
            "http://10.1.2.3/",
            "http://[::1]:8080/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0:9464/",
            "http://localhost:9464/",
        ] {
            let reason = refused(&rules, internal).await.expect(internal);
            assert!(reason.contains("not a public address"), "{reason}");
            assert!(!reason.contains("sig=x"));
        }
    }

    #[tokio::test]
    async fn listed_storage_hosts_are_followed_to_any_address_but_the_facades_own() {
        let listed = rules(
            &["127.0.0.1:9000", "10.0.0.5"],
            &["0.0.0.0:5443", "127.0.0.1:9464"],
        );
        assert_eq!(refused(&listed, "http://127.0.0.1:9000/b/k").await, None);
        assert_eq!(refused(&listed, "https://10.0.0.5/b/k").await, None);
        assert!(
            refused(&listed, "http://127.0.0.1:9001/b/k")
                .await
                .is_some()
        );
        assert!(
            refused(&listed, "https://10.0.0.5:8443/b/k")
                .await
                .is_some()
        );
        // Listed, but the facade's own listeners (the device port on every address, the
        // operator port on loopback).
        let own = rules(
            &["127.0.0.1:9464", "127.0.0.1:5443"],
            &["0.0.0.0:5443", "127.0.0.1:9464"],
        );
        let reason = refused(&own, "http://127.0.0.1:9464/metrics")
            .await
            .unwrap();
        assert!(reason.contains("own listeners"), "{reason}");
        let reason = refused(&own, "https://127.0.0.1:5443/").await.unwrap();
        assert!(reason.contains("own listeners"), "{reason}");
    }
}
