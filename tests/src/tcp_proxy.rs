//! A TCP proxy that interrupts transfers on purpose: it forwards bytes both ways, and on
//! the connections it is told to, cuts (closes) or stalls (stops forwarding but keeps the
//! socket open) after a number of bytes from the server, and all of them at once while frozen
//! ([`TcpProxy::freeze`]). TLS passes through untouched, so a client sees exactly what a
//! dropped or hung network gives it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What to do to one connection's server-to-client stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close both sides after this many bytes.
    CutAfter(u64),
    /// Forward this many bytes, then nothing more, keeping the connection open.
    StallAfter(u64),
}

/// A running proxy on 127.0.0.1, port 0; stopped on drop.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    to_client: Arc<AtomicU64>,
    frozen: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

// === impl TcpProxy ===

impl TcpProxy {
    /// Proxies to `upstream`; connection number `i` (from 0) gets `faults[i]`, later ones
    /// pass through. Must be called inside a tokio runtime.
    pub async fn start(upstream: SocketAddr, faults: Vec<Fault>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let to_client = Arc::new(AtomicU64::new(0));
        let bytes = to_client.clone();
        let frozen = Arc::new(AtomicBool::new(false));
        let freezer = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let fault = faults.get(n).copied();
                let bytes = bytes.clone();
                let frozen = freezer.clone();
                tokio::spawn(async move {
                    if frozen.load(Ordering::SeqCst) {
                        // Never answered, never closed (the task holds the socket).
                        std::future::pending::<()>().await;
                    }
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = forward(client, server, fault, &bytes, &frozen).await;
                    }
                });
            }
        });
        Ok(TcpProxy {
            addr,
            connections,
            to_client,
            frozen,
            task,
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes forwarded from the server to clients, over all connections (TLS included).
    pub fn bytes_to_client(&self) -> u64 {
        self.to_client.load(Ordering::SeqCst)
    }

    /// Freezes (`true`) or thaws the network it stands for: while frozen, no byte is forwarded
    /// either way and new connections are accepted but never answered, every socket kept open,
    /// as on a partition that drops packets silently. A connection that had a byte held back
    /// stays hung after a thaw (its peer must give up on it); new ones work again.
    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// How many connections it accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    client: TcpStream,
    server: TcpStream,
    fault: Option<Fault>,
    counter: &AtomicU64,
    frozen: &AtomicBool,
) -> std::io::Result<()> {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            if frozen.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            server_write
                .write_all(buf.get(..n).unwrap_or_default())
                .await?;
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut sent = 0u64;
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            if frozen.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let (limit, stall) = match fault {
                Some(Fault::CutAfter(limit)) => (limit, false),
                Some(Fault::StallAfter(limit)) => (limit, true),
                None => (u64::MAX, false),
            };
            let allowed = usize::try_from(limit.saturating_sub(sent))
                .unwrap_or(usize::MAX)
                .min(n);
            client_write
                .write_all(buf.get(..allowed).unwrap_or_default())
                .await?;
            sent += allowed as u64;
            counter.fetch_add(allowed as u64, Ordering::SeqCst);
            if allowed < n || sent >= limit {
                if stall {
                    std::future::pending::<()>().await;
                }
                return Ok(());
            }
        }
    };
    tokio::select! {
        r = upstream => r,
        r = downstream => r,
    }
}
