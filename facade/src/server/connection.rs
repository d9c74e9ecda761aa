//! One device connection: a handshake turn ([`crate::budget`]), the TLS handshake
//! (refusals logged with their reason and counted), the device's identity, a share of its
//! device's connections and a connection slot, then HTTP/1.1 or HTTP/2 until the client
//! leaves, the connection idles out (no stream progress: [`super::idle`]), or the drain asks
//! it to finish its streams and close. Each request takes a share of its device's streams.
//! The serve loop ([`meshanics_http::serve`]) accepted it and tracks this task.
//!
//! Memory per stream is bounded by the buffers set here, whatever the number of devices:
//! HTTP/2 sends at most [`SEND_BUFFER`] ahead per stream (hyper's default is 400 KiB) and
//! HTTP/1.1 buffers at most [`HTTP1_BUFFER`]; what a device may send (request headers, no
//! bodies) is bounded by small receive windows.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use http_body_util::BodyExt as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshanics_http::Connection;
use rustls::{CertificateError, Error as TlsError};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::idle::Activity;
use crate::budget::{self, Holding, NoTurn};
use crate::identity::DeviceIdentity;
use crate::service::{self, Shared};

/// How far ahead of the device's reading an HTTP/2 stream's response may be buffered.
pub(crate) const SEND_BUFFER: usize = 64 * 1024;
/// The HTTP/1.1 connection buffer (hyper's default is about 400 KiB).
pub(crate) const HTTP1_BUFFER: usize = 64 * 1024;
/// The HTTP/2 receive windows: devices send request headers only.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// The largest HTTP/2 frame accepted (the protocol's minimum, hyper's default).
const MAX_FRAME: u32 = 16 * 1024;
/// How long a refused connection gets to receive its TLS close_notify.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves one accepted TCP connection to its end.
pub(super) async fn serve(
    accepted: Connection<TcpStream, SocketAddr>,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    let Connection {
        io: tcp,
        peer,
        drain,
        header_timeout,
    } = accepted;
    let _ = tcp.set_nodelay(true);
    let limits = shared.limits.clone();
    let turn = tokio::select! {
        turn = shared.budgets.handshake_turn(peer.ip()) => turn,
        () = drain.signaled() => return,
    };
    let turn = match turn {
        Ok(turn) => turn,
        Err(refused) => {
            let reason = match refused {
                NoTurn::SourceCap => "source_cap",
                NoTurn::Busy => "busy",
            };
            shared.metrics.refused_handshake(reason);
            // Debug only: a flood would otherwise flood the log; the counter shows it.
            tracing::debug!(%peer, reason, "closed a socket without a handshake turn");
            return;
        }
    };
    let handshake = tokio::time::timeout(limits.handshake(), acceptor.accept(tcp)).await;
    drop(turn);
    let mut tls = match handshake {
        Ok(Ok(tls)) => {
            shared.metrics.handshake();
            tls
        }
        Ok(Err(error)) => {
            let reason = refusal_reason(&error);
            shared.metrics.refused_handshake(reason);
            tracing::warn!(%peer, reason, %error, "refused a TLS handshake");
            return;
        }
        Err(_) => {
            shared.metrics.refused_handshake("timeout");
            tracing::warn!(%peer, reason = "timeout", "refused a TLS handshake");
            return;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| DeviceIdentity::from_der(cert))
        .unwrap_or_else(DeviceIdentity::unknown);
    let span = tracing::info_span!("device", device = %identity, %peer);
    async move {
        let Some(device_share) = shared.budgets.device_connection(&identity) else {
            shared.metrics.refused_connection("device_cap");
            tracing::warn!(
                max = limits.max_connections_per_device,
                "closing a connection: the device has its maximum open"
            );
            let _ = tokio::time::timeout(CLOSE_WAIT, tls.shutdown()).await;
            return;
        };
        let slot = tokio::select! {
            slot = shared.budgets.connection_slot() => slot,
            () = drain.signaled() => return,
        };
        tracing::debug!("connected");
        shared.metrics.connection(1);
        let activity = Activity::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(HTTP1_BUFFER);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_streams_per_device)
            .max_send_buf_size(SEND_BUFFER)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME);
        let handler = shared.clone();
        let device = identity.clone();
        let streams = activity.clone();
        let service = service_fn(move |request| {
            let shared = handler.clone();
            let device = device.clone();
            let activity = streams.clone();
            async move {
                let Some(share) = shared.budgets.stream(&device) else {
                    activity.touch();
                    shared.metrics.refused_stream("device_cap");
                    tracing::info!(%device, max = shared.limits.max_streams_per_device,
                        "refused a request: the device has its maximum in progress");
                    return Ok::<_, std::convert::Infallible>(budget::refusal(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many requests in progress from this device; retry later",
                    ));
                };
                let stream = activity.stream(share);
                let waiting = activity.waiting();
                let response = service::handle(shared, device, request).await;
                drop(waiting);
                Ok(response.map(|body| Holding::new(body, stream).boxed_unsync()))
            }
        });
        let connection = builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(connection);
        let mut draining = drain.is_draining();
        if draining {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    break;
                }
                () = drain.signaled(), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = activity.idle_for(limits.idle()) => {
                    tracing::info!(idle_seconds = limits.idle().as_secs(), "closing an idle connection");
                    break;
                }
            }
        }
        shared.metrics.connection(-1);
        drop((slot, device_share));
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await;
}

/// A short reason for a refused handshake, for logs and the metric label.
fn refusal_reason(error: &io::Error) -> &'static str {
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) else {
        return "io";
    };
    match tls {
        TlsError::NoCertificatesPresented => "no_certificate",
        TlsError::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::UnknownRevocationStatus => "unknown_revocation_status",
            CertificateError::BadSignature => "bad_signature",
            _ => "invalid_certificate",
        },
        _ => "tls",
    }
}
