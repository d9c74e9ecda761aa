//! The one accept loop. Every listener of the project runs through [`serve`]: the facade's
//! device listener (mutual TLS), its `/healthz` and `/metrics` listener, the operator API on a
//! Unix socket, and the layout registry.
//!
//! What it does, so that no caller repeats it:
//!
//! - **Accepts until shutdown, and never spins.** An accept that fails for want of resources
//!   (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`, or anything else not tied to one connection)
//!   is retried after a delay that doubles from [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`], and
//!   logged once per episode. Retrying at once would find the socket still readable and fail
//!   again, burning a core while the process is out of file descriptors. A connection that
//!   the client gave up on before it was accepted (`ECONNABORTED` and the like) is skipped.
//! - **Limits connections** when asked: at the limit it stops accepting, and new clients wait
//!   in the kernel's backlog until a connection ends. The count covers every accepted socket,
//!   whatever it is doing: a cap that protects file descriptors. A listener that must tell
//!   clients apart before it admits them (the facade: a TLS handshake first, a device
//!   certificate next) sets it well above its real limits and enforces those in its handler
//!   with [`crate::budget`].
//! - **Tracks every connection task** in a [`JoinSet`]: nothing it spawns outlives it.
//! - **Drains on shutdown**: it closes the listening socket, tells the connections to finish
//!   ([`Drain`]), waits for them up to the grace period, then aborts the rest.
//!
//! What a connection does is the caller's handler: it receives a [`Connection`] (the stream,
//! the peer, the drain signal, the header-read timeout). Plain HTTP/1.1 servers hand it to
//! [`Connection::serve_http1`], which applies the header-read timeout and finishes the request
//! in flight when the drain starts; the facade's device listener does its TLS handshake and
//! HTTP/1+HTTP/2 itself with the same two inputs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream, unix};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The first wait after an accept failed for want of resources.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait between two accepts that fail for want of resources.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Something that accepts connections: a TCP or a Unix listener.
pub trait Listener {
    /// An accepted connection's stream.
    type Io;
    /// The peer's address.
    type Addr;

    /// Waits for the next connection (cancel-safe, like tokio's `accept`).
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send;
}

/// How [`serve`] runs a listener. [`ServeConfig::new`] gives the defaults: no connection
/// limit, a 30-second header-read timeout, a 10-second grace period.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    name: &'static str,
    max_connections: Option<usize>,
    header_timeout: Duration,
    grace: Duration,
}

/// One accepted connection, handed to the handler.
#[derive(Debug)]
pub struct Connection<IO, A> {
    /// The stream.
    pub io: IO,
    /// Who connected.
    pub peer: A,
    /// Turns on when the listener shuts down: finish what is in flight, take no more.
    pub drain: Drain,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
}

/// The shutdown signal a connection watches: once it is on, the connection should finish
/// the requests in flight and close. Connections still open after the grace period are
/// aborted.
#[derive(Debug, Clone)]
pub struct Drain(CancellationToken);

/// Accept failures in a row, and the wait before the next try.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    delay: Duration,
}

/// Runs `listener` until `shutdown` completes, handing each connection to `handler` on a task
/// of its own, then drains (see the [module](self) overview). Returns once every connection
/// task has ended.
pub async fn serve<L, H, F>(
    listener: L,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
    mut handler: H,
) where
    L: Listener,
    H: FnMut(Connection<L::Io, L::Addr>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let name = config.name;
    let limit = config.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let drain = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut backoff = Backoff::default();
    tokio::pin!(shutdown);
    loop {
        // Waiting for a permit before accepting leaves extra clients in the kernel's queue.
        let next = async {
            let permit = match &limit {
                Some(limit) => match limit.clone().acquire_owned().await {
                    Ok(permit) => Some(permit),
                    // Never closed: it lives as long as this loop.
                    Err(_) => return None,
                },
                None => None,
            };
            Some((permit, listener.accept().await))
        };
        let (permit, accepted) = tokio::select! {
            () = &mut shutdown => break,
            next = next => match next {
                Some(next) => next,
                None => break,
            },
        };
        match accepted {
            Ok((io, peer)) => {
                backoff.succeeded(name);
                let connection = Connection {
                    io,
                    peer,
                    drain: Drain(drain.clone()),
                    header_timeout: config.header_timeout,
                };
                let task = handler(connection);
                connections.spawn(async move {
                    task.await;
                    drop(permit);
                });
            }
            Err(error) if one_connection_failed(&error) => {
                tracing::debug!(listener = name, %error, "a client left before it was accepted");
            }
            Err(error) => {
                let delay = backoff.failed(name, &error);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        while let Some(ended) = connections.try_join_next() {
            log_panic(name, ended);
        }
    }
    drop(listener);
    drain.cancel();
    if !connections.is_empty() {
        tracing::info!(
            listener = name,
            open = connections.len(),
            "shutting down: no new connections, letting open ones finish"
        );
    }
    let finish = async {
        while let Some(ended) = connections.join_next().await {
            log_panic(name, ended);
        }
    };
    if tokio::time::timeout(config.grace, finish).await.is_err() {
        tracing::warn!(
            listener = name,
            left = connections.len(),
            grace_seconds = config.grace.as_secs_f64(),
            "grace period over: closing the remaining connections"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Errors that end one pending connection (the client reset it before it was accepted),
/// not the listener's ability to accept: the next accept may succeed at once.
fn one_connection_failed(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// A connection task that panicked is a bug: say so (an aborted one is not).
fn log_panic(listener: &str, ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        tracing::error!(listener, %error, "a connection task panicked");
    }
}

// === impl Listener ===

impl Listener for TcpListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;
    type Addr = unix::SocketAddr;

    fn accept(&self) -> impl Future<Output = io::Result<(UnixStream, unix::SocketAddr)>> + Send {
        UnixListener::accept(self)
    }
}

// === impl ServeConfig ===

impl ServeConfig {
    /// The defaults, for the listener `name` (logged with its events: `device`, `metrics`,
    /// `operator API`, `layout registry`).
    pub fn new(name: &'static str) -> Self {
        ServeConfig {
            name,
            max_connections: None,
            header_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(10),
        }
    }

    /// At most `max` accepted sockets open at once; at the cap, accepting waits.
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max);
        self
    }

    /// How long a client may take to send a request's headers.
    pub fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// How long connections may take to finish once shutdown starts.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

// === impl Connection ===

impl<IO, A> Connection<IO, A>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Serves plain HTTP/1.1 with `service` until the client leaves, a client takes longer
    /// than the header-read timeout to send headers, or the drain starts (then the request
    /// in flight finishes and the connection closes). An error only ends the connection: it
    /// is logged at debug level.
    pub async fn serve_http1<S>(self, service: S)
    where
        S: HttpService<Incoming>,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S::ResBody: 'static,
        <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .serve_connection(TokioIo::new(self.io), service);
        tokio::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = self.drain.signaled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = ended {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

// === impl Drain ===

impl Drain {
    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once shutdown has started (at once if it already has).
    pub fn signaled(&self) -> impl Future<Output = ()> + Send + '_ {
        self.0.cancelled()
    }
}

// === impl Backoff ===

impl Backoff {
    /// Notes a failed accept and returns how long to wait; the first of an episode is logged.
    fn failed(&mut self, listener: &str, error: &io::Error) -> Duration {
        self.delay = if self.failures == 0 {
            tracing::warn!(
                listener,
                %error,
                "accepting a connection failed: retrying with a growing delay until it works"
            );
            FIRST_BACKOFF
        } else {
            (self.delay * 2).min(MAX_BACKOFF)
        };
        self.failures = self.failures.saturating_add(1);
        self.delay
    }

    /// Notes an accepted connection, ending an episode of failures.
    fn succeeded(&mut self, listener: &str) {
        if self.failures > 0 {
            tracing::info!(
                listener,
                failed = self.failures,
                "accepting connections again"
            );
            *self = Backoff::default();
        }
    }
}

#[cfg(test)]
mod tests;
