//! The agent's HTTP client to the facade: mutual TLS with the device certificate, the OCI
//! distribution API by digest, and the signed metadata files.
//!
//! Connections: TCP plus TLS (ALPN `h2`, then `http/1.1`) within the connect timeout. An
//! HTTP/2 connection is kept and multiplexed, with keep-alive pings while a request is in
//! flight; HTTP/1.1 gets a connection per request (the facade speaks HTTP/2, so that path is
//! a fallback, not the norm).
//!
//! Deadlines: no wait is unbounded. A response head must arrive within the header timeout
//! of sending the request; a body that stays under the configured bytes-per-second floor
//! for a whole window (or sends nothing for that long) is cut.
//!
//! Every request is retried with exponential backoff and full jitter on network trouble
//! (those deadlines included) and 5xx/429, never on a refusal. Blob downloads are resumed
//! with `Range` from what the ingest file holds (see [`blob`]), and no response may put a
//! byte more than the expected size on disk: every body goes through a verifier.
//!
//! Several facade URLs (replicas) are tried in order and kept while they work; a replica
//! that is lost or broken moves the client on to the next one at once (see [`facades`]).

mod activity;
mod blob;
mod connection;
mod facades;
mod transfer;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use meshanics_shared::media_type::MANIFEST_ACCEPT;
use meshanics_shared::{Digest, Repository, Verifier, tls};
use tracing::{debug, info};

use crate::config::Config;
use crate::error::{Error, Result};

pub use activity::Activity;
pub use transfer::RateLimiter;

use connection::Connector;
use facades::{Facades, Journey, Next};

/// Timeouts, retries and limits for a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Limit on TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// The longest wait for a response's status and headers once the request is sent (the
    /// body has the stall window instead).
    pub header_timeout: Duration,
    /// How often an HTTP/2 connection with a request in flight pings a silent peer.
    pub keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection counts as dead.
    pub keep_alive_timeout: Duration,
    /// The bytes-per-second floor under which a transfer counts as stalled.
    pub stall_floor: u64,
    /// The window the floor is measured over (and the longest wait for any bytes).
    pub stall_window: Duration,
    /// Attempts per request (at least 1).
    pub attempts: u32,
    /// The first retry's backoff ceiling; it doubles per attempt.
    pub backoff_base: Duration,
    /// The largest backoff.
    pub backoff_max: Duration,
    /// A cap on download speed for the whole client, bytes per second.
    pub bandwidth_limit: Option<u64>,
    /// Offer only HTTP/1.1 in ALPN (for a facade behind a proxy that mishandles HTTP/2).
    pub http1_only: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(20),
            stall_floor: 1024,
            stall_window: Duration::from_secs(30),
            attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            bandwidth_limit: None,
            http1_only: false,
        }
    }
}

/// A client for one facade, or for several replicas of it.
#[derive(Debug)]
pub struct Client {
    facades: Facades,
    options: ClientOptions,
    limiter: Option<Mutex<RateLimiter>>,
    downloaded: AtomicU64,
    activity: Activity,
}

// === impl Client ===

impl Client {
    /// A client for the facade at `base` (`https://host[:port]`), with a TLS configuration
    /// that trusts the facade's CA and presents the device certificate.
    pub fn new(
        base: &http::Uri,
        tls: rustls::ClientConfig,
        options: ClientOptions,
    ) -> Result<Client> {
        Client::with_replicas(std::slice::from_ref(base), tls, options)
    }

    /// A client for facade replicas at `bases`, tried in that order and failed over between
    /// (see [`facades`]); they share the TLS configuration (one CA, one device identity).
    pub fn with_replicas(
        bases: &[http::Uri],
        tls: rustls::ClientConfig,
        options: ClientOptions,
    ) -> Result<Client> {
        let Some((first, others)) = bases.split_first() else {
            return Err(Error::Url {
                url: String::new(),
                reason: "no facade URL".into(),
            });
        };
        let others = others
            .iter()
            .map(|base| Connector::new(base, tls.clone(), &options))
            .collect::<Result<Vec<_>>>()?;
        let first = Connector::new(first, tls, &options)?;
        Ok(Client {
            facades: Facades::new(first, others),
            limiter: options
                .bandwidth_limit
                .map(|rate| Mutex::new(RateLimiter::new(rate))),
            options,
            downloaded: AtomicU64::new(0),
            activity: Activity::new(),
        })
    }

    /// A client from the agent's configuration.
    pub fn from_config(config: &Config) -> Result<Client> {
        let tls = tls::client_config(
            &config.facade.ca,
            Some((&config.device.certificate, &config.device.key)),
        )?;
        Client::with_replicas(
            &config.facade.urls,
            tls,
            ClientOptions {
                connect_timeout: config.network.connect_timeout,
                stall_floor: config.network.stall_floor,
                stall_window: config.network.stall_window,
                header_timeout: config.network.header_timeout,
                attempts: config.network.attempts,
                bandwidth_limit: config.bandwidth_limit,
                http1_only: config.network.http1_only,
                ..ClientOptions::default()
            },
        )
    }

    /// Bytes of response bodies received so far (manifests, blobs, metadata).
    pub fn downloaded_bytes(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }

    /// When the next sign of life from this client's requests is due (for the watchdog).
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// The options in force.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Fetches a manifest by digest, verified against `digest` and `size`. Returns its bytes
    /// and the `Content-Type` it was served with.
    pub async fn fetch_manifest(
        &self,
        repository: &Repository,
        digest: &Digest,
        size: u64,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let path = format!("/v2/{repository}/manifests/{digest}");
        let accept = HeaderValue::from_static(MANIFEST_ACCEPT);
        self.retrying(&path, |facade| async {
            let response = self.get(facade, &path, &[(ACCEPT, accept.clone())]).await?;
            let url = facade.url(&path);
            expect_status(&url, &response, StatusCode::OK)?;
            refuse_declared_length(&url, &response, size)?;
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut verifier = Verifier::new(digest.clone(), size);
            let mut bytes = Vec::new();
            let mut body = transfer::Body::new(response.into_body(), self, url.clone());
            while let Some(chunk) = body.next_chunk().await? {
                self.count(chunk.len());
                verifier.update(&chunk).map_err(|source| Error::Verify {
                    digest: digest.clone(),
                    source,
                })?;
                bytes.extend_from_slice(&chunk);
            }
            if verifier.received() < size {
                return Err(Error::ShortBody {
                    url,
                    received: verifier.received(),
                    expected: size,
                });
            }
            verifier.finish().map_err(|source| Error::Verify {
                digest: digest.clone(),
                source,
            })?;
            Ok((bytes, content_type))
        })
        .await
    }

    /// Fetches a signed metadata file (`GET /meta/<file>`), reading no more than `cap`
    /// bytes. `None` when the facade has no such file (the end of a root rotation chain).
    pub async fn fetch_meta(&self, file: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        if file.is_empty()
            || file.len() > 255
            || file.starts_with('.')
            || !file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(Error::InvalidName {
                what: "metadata file",
                name: file.to_owned(),
                reason: "must be 1 to 255 of [A-Za-z0-9._-], not starting with a dot".into(),
            });
        }
        let path = format!("/meta/{file}");
        self.retrying(&path, |facade| async {
            let response = self.get(facade, &path, &[]).await?;
            let url = facade.url(&path);
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            expect_status(&url, &response, StatusCode::OK)?;
            if declared_length(&response).is_some_and(|len| len > cap) {
                return Err(Error::TooLarge { url, limit: cap });
            }
            let mut bytes = Vec::new();
            let mut body = transfer::Body::new(response.into_body(), self, url.clone());
            while let Some(chunk) = body.next_chunk().await? {
                self.count(chunk.len());
                if bytes.len() as u64 + chunk.len() as u64 > cap {
                    return Err(Error::TooLarge { url, limit: cap });
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(Some(bytes))
        })
        .await
    }

    /// One GET to `facade` with extra headers, no retry.
    async fn get(
        &self,
        facade: &Connector,
        path: &str,
        headers: &[(http::HeaderName, HeaderValue)],
    ) -> Result<Response<Incoming>> {
        // The next sign of life: a response head, within the connect plus header timeouts.
        self.activity.expect_within(
            self.options
                .connect_timeout
                .saturating_add(self.options.header_timeout),
        );
        let mut sender = facade.sender().await?;
        let mut request = Request::get(sender.uri_for(facade, path)?);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = sender
            .with_host(facade, request)
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::Url {
                url: facade.url(path),
                reason: e.to_string(),
            })?;
        let url = facade.url(path);
        debug!(%url, "GET");
        // The deadline covers waiting for a free HTTP/2 stream and for the response head; a
        // facade that takes the request and never answers ends the attempt here (dropping
        // the future resets the stream, or closes an HTTP/1.1 connection), and the retry
        // reconnects.
        let after = self.options.header_timeout;
        tokio::time::timeout(after, sender.send(request, &url))
            .await
            .map_err(|_| Error::ResponseTimeout {
                url: url.clone(),
                after,
            })?
    }

    /// Runs `attempt` on the current replica until it succeeds, fails for good, or the
    /// attempts run out.
    async fn retrying<'a, T, F, Fut>(&'a self, path: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut(&'a Connector) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut journey = Journey::default();
        let mut n = 0;
        loop {
            n += 1;
            let (index, facade) = self.facades.current();
            match attempt(facade).await {
                Ok(value) => {
                    self.facades.succeeded(index);
                    return Ok(value);
                }
                Err(err) => {
                    self.after_failure(&mut journey, index, path, n, err)
                        .await?;
                }
            }
        }
    }

    /// After attempt `n` at `path` on replica `index` failed with `err`: returns the error
    /// to give up with, or fails over to the next replica (at once while the round has
    /// replicas left to try) or waits out the backoff, and returns `Ok` to try again.
    ///
    /// `network.attempts` counts per replica: with two URLs and 5 attempts, up to ten.
    async fn after_failure(
        &self,
        journey: &mut Journey,
        index: usize,
        path: &str,
        n: u32,
        err: Error,
    ) -> Result<()> {
        let replicas = self.facades.len();
        let over = replicas > 1 && err.fails_over();
        if !(err.is_retryable() || over) {
            return Err(err);
        }
        let facade = self.facades.at(index);
        let url = facade.url(path);
        let total = self
            .options
            .attempts
            .max(1)
            .saturating_mul(u32::try_from(replicas).unwrap_or(u32::MAX));
        facade.forget();
        let next = journey.failed(&url, &err, over, replicas);
        if n >= total || next == Next::GiveUp {
            return Err(Error::RetriesExhausted {
                elsewhere: std::mem::take(journey).elsewhere(&url),
                url,
                attempts: n,
                last: Box::new(err),
            });
        }
        if over {
            self.facades.fail_over_from(index, !err.is_retryable());
            let (now, to) = self.facades.current();
            if now == index {
                debug!(%url, attempt = n, error = %err, "facade replica failed; the others failed as often: staying");
            } else {
                info!(%url, attempt = n, error = %err, next = %to.url(""), "facade replica failed; failing over");
            }
        }
        match next {
            Next::Now | Next::GiveUp => {}
            Next::Backoff(round) => {
                let wait = self.backoff(round);
                debug!(%url, attempt = n, error = %err, ?wait, "retrying");
                self.activity.expect_within(wait);
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }

    /// Full jitter: a uniformly random wait up to `base * 2^(attempt-1)`, capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .options
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.options.backoff_max);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    }

    /// The longest a healthy body goes between two chunks: the stall check fails a silent
    /// one within a window, or two when bytes came late in the previous window.
    fn chunk_allowance(&self) -> Duration {
        self.options.stall_window.saturating_mul(2)
    }

    fn count(&self, n: usize) {
        self.downloaded.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Waits as long as the bandwidth limit asks for after receiving `n` bytes.
    async fn throttle(&self, n: usize) {
        let wait = match &self.limiter {
            Some(limiter) => match limiter.lock() {
                Ok(mut limiter) => limiter.take(n as u64),
                Err(_) => Duration::ZERO,
            },
            None => Duration::ZERO,
        };
        if !wait.is_zero() {
            self.activity
                .expect_within(wait.saturating_add(self.chunk_allowance()));
            tokio::time::sleep(wait).await;
        }
    }
}

fn expect_status(url: &str, response: &Response<Incoming>, expected: StatusCode) -> Result<()> {
    if response.status() != expected {
        return Err(Error::Status {
            url: url.to_owned(),
            status: response.status().as_u16(),
        });
    }
    Ok(())
}

fn declared_length(response: &Response<Incoming>) -> Option<u64> {
    response
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Refuses a response that announces more bytes than may arrive, before reading any.
fn refuse_declared_length(url: &str, response: &Response<Incoming>, limit: u64) -> Result<()> {
    if declared_length(response).is_some_and(|len| len > limit) {
        return Err(Error::TooLarge {
            url: url.to_owned(),
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
