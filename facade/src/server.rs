//! The facade server: binds the device listener (mutual TLS) and the operator listener, runs
//! the accept loop under a connection limit, and shuts down gracefully: stop accepting, let
//! streams in flight finish up to the grace period, then close what is left.
//!
//! [`start`] returns once both listeners are bound, with their addresses (port 0 works, which
//! is how tests run it) and a [`Running`] handle to shut it down.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::approval::ApprovedUpstreams;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::operator;
use crate::service::Shared;

mod connection;
mod idle;

pub use idle::{Activity, Tracked};

/// A running facade.
#[derive(Debug)]
pub struct Running {
    device_addr: SocketAddr,
    operator_addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    stop_operator: watch::Sender<bool>,
    devices: JoinHandle<()>,
    operator: JoinHandle<()>,
}

/// Why the facade could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listener could not be bound.
    #[error("binding the {which} listener on {addr}: {source}")]
    Bind {
        /// `device` or `operator`.
        which: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Binds the listeners and starts serving on the current tokio runtime.
pub async fn start(
    config: &Config,
    upstreams: Arc<dyn ApprovedUpstreams>,
) -> Result<Running, StartError> {
    let bind = |which, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                which,
                addr,
                source,
            })
    };
    let devices = bind("device", config.listen).await?;
    let operators = bind("operator", config.operator_listen).await?;
    let local = |which, listener: &TcpListener, addr| {
        listener.local_addr().map_err(|source| StartError::Bind {
            which,
            addr,
            source,
        })
    };
    let device_addr = local("device", &devices, config.listen)?;
    let operator_addr = local("operator", &operators, config.operator_listen)?;
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        upstreams,
        metrics: metrics.clone(),
        metadata_dir: config.metadata_dir.clone(),
        limits: config.limits.clone(),
    });
    let (shutdown, signal) = watch::channel(false);
    let acceptor = TlsAcceptor::from(config.tls.clone());
    tracing::info!(%device_addr, %operator_addr, "facade listening");
    let device_task = tokio::spawn(accept_loop(devices, acceptor, shared, signal.clone()));
    let (stop_operator, operator_signal) = watch::channel(false);
    let operator_task = tokio::spawn(operator::serve(
        operators,
        metrics.clone(),
        signal,
        operator_signal,
    ));
    Ok(Running {
        device_addr,
        operator_addr,
        metrics,
        shutdown,
        stop_operator,
        devices: device_task,
        operator: operator_task,
    })
}

// === impl Running ===

impl Running {
    /// Where devices connect.
    pub fn device_addr(&self) -> SocketAddr {
        self.device_addr
    }

    /// Where operators connect (`/healthz`, `/metrics`).
    pub fn operator_addr(&self) -> SocketAddr {
        self.operator_addr
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting, lets streams finish within the grace period, then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.devices.await;
        // The operator side stays up while devices drain, so health checks see "draining".
        let _ = self.stop_operator.send(true);
        let _ = self.operator.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(shared.limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        // Waiting for a permit before accepting leaves extra clients in the kernel's queue.
        let next = async {
            let permit = limit.clone().acquire_owned().await;
            (permit, listener.accept().await)
        };
        tokio::select! {
            _ = shutdown.changed() => break,
            (permit, accepted) = next => {
                let Ok(permit) = permit else { break };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let task = connection::serve(tcp, peer, acceptor.clone(), shared.clone(), shutdown.clone());
                connections.spawn(async move {
                    task.await;
                    drop(permit);
                });
            }
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let open = connections.len();
    tracing::info!(
        open,
        "shutting down: no new connections, letting streams finish"
    );
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.limits.grace(), drain)
        .await
        .is_err()
    {
        tracing::warn!(
            left = connections.len(),
            grace_seconds = shared.limits.grace().as_secs(),
            "grace period over: closing the remaining connections"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    tracing::info!("facade stopped");
}
