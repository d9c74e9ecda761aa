//! The facade server: binds the device listener (mutual TLS) and the metrics listener
//! (`operator_listen`), runs both on the shared serve loop ([`meshanics_http::serve`]: the
//! device side under the budgets and header timeout of `[limits]`, see [`crate::budget`]; the
//! loop itself only stops accepting at [`Limits::max_sockets`](crate::config::Limits::max_sockets)), and shuts down
//! gracefully: stop accepting, let streams in flight finish up to the grace period, then
//! close what is left. Each device handshake takes the device TLS configuration in force
//! when it starts; SIGHUP and changed `[tls]` files reload it ([`crate::device_tls`]).
//!
//! [`start`] returns once both listeners are bound, with their addresses (port 0 works, which
//! is how tests run it) and a [`Running`] handle to shut it down.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use meshanics_http::{Connection, ServeConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::approval::ApprovedUpstreams;
use crate::budget::Budgets;
use crate::cache::{Cache, CacheError};
use crate::config::Config;
use crate::device_tls::{CHANGE_CHECK, DeviceTls};
use crate::metrics::Metrics;
use crate::metrics_listener;
use crate::publish::Metadata;
use crate::service::Shared;

mod connection;
mod idle;

pub use idle::{Activity, Stream, Waiting};

/// A running facade.
#[derive(Debug)]
pub struct Running {
    device_addr: SocketAddr,
    operator_addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    stop_metrics: watch::Sender<bool>,
    devices: JoinHandle<()>,
    metrics_listener: JoinHandle<()>,
    tls_reloads: JoinHandle<()>,
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
    /// The content cache could not be opened.
    #[error("opening the cache: {0}")]
    Cache(#[source] CacheError),
    /// SIGHUP (which reloads the device TLS files) could not be watched.
    #[error("watching SIGHUP: {0}")]
    Signal(#[source] io::Error),
}

/// Binds the listeners and starts serving on the current tokio runtime; from then on, SIGHUP
/// reloads the device TLS files. `/meta/` serves `metadata_dir` ([`start_with`] serves what
/// the operator API publishes).
pub async fn start(
    config: &Config,
    upstreams: Arc<dyn ApprovedUpstreams>,
) -> Result<Running, StartError> {
    start_with(config, upstreams, Arc::new(Metadata::folder(config))).await
}

/// [`start`], with `/meta/` serving `metadata` (the one the operator API publishes into).
pub async fn start_with(
    config: &Config,
    upstreams: Arc<dyn ApprovedUpstreams>,
    metadata: Arc<Metadata>,
) -> Result<Running, StartError> {
    // Before anything runs: a SIGHUP must never meet the default action (the end of the
    // process).
    let hangup = signal(SignalKind::hangup()).map_err(StartError::Signal)?;
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
    metrics.set_crls(&config.tls.crls());
    let cache = match config.cache.max_bytes {
        0 => None,
        max_bytes => {
            let (dir, metrics) = (config.cache.dir.clone(), metrics.clone());
            let opened =
                tokio::task::spawn_blocking(move || Cache::open(&dir, max_bytes, metrics)).await;
            match opened {
                Ok(cache) => Some(Arc::new(cache.map_err(StartError::Cache)?)),
                Err(join) => {
                    return Err(StartError::Cache(CacheError::Io {
                        operation: "opening",
                        path: config.cache.dir.clone(),
                        source: io::Error::other(join),
                    }));
                }
            }
        }
    };
    let shared = Arc::new(Shared {
        cache,
        upstreams,
        metrics: metrics.clone(),
        metadata,
        limits: config.limits.clone(),
        budgets: Budgets::new(&config.limits, metrics.clone()),
    });
    let (shutdown, signal) = watch::channel(false);
    tracing::info!(%device_addr, %operator_addr, "facade listening");
    let mut stop_reloads = signal.clone();
    let tls_reloads = tokio::spawn(config.tls.clone().watch(
        metrics.clone(),
        Some(hangup),
        CHANGE_CHECK,
        async move {
            let _ = stop_reloads.wait_for(|stop| *stop).await;
        },
    ));
    let device_task = tokio::spawn(serve_devices(
        devices,
        config.tls.clone(),
        shared,
        signal.clone(),
    ));
    let (stop_metrics, metrics_signal) = watch::channel(false);
    let metrics_task = tokio::spawn(metrics_listener::serve(
        operators,
        metrics.clone(),
        signal,
        metrics_signal,
    ));
    Ok(Running {
        device_addr,
        operator_addr,
        metrics,
        shutdown,
        stop_metrics,
        devices: device_task,
        metrics_listener: metrics_task,
        tls_reloads,
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
        let _ = self.tls_reloads.await;
        let _ = self.devices.await;
        // The metrics listener stays up while devices drain, so health checks see "draining".
        let _ = self.stop_metrics.send(true);
        let _ = self.metrics_listener.await;
    }
}

/// Serves devices until `shutdown` turns true, then drains within the grace period.
async fn serve_devices(
    listener: TcpListener,
    tls: DeviceTls,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = &shared.limits;
    let config = ServeConfig::new("device")
        .with_max_connections(limits.max_sockets())
        .with_header_timeout(limits.header())
        .with_grace(limits.grace());
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let handler = move |accepted: Connection<TcpStream, SocketAddr>| {
        // The configuration in force when the handshake starts (a reload swaps it).
        connection::serve(accepted, tls.acceptor(), shared.clone())
    };
    meshanics_http::serve(listener, config, stop, handler).await;
    tracing::info!("facade stopped");
}

#[cfg(test)]
mod tests;
