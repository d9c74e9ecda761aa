//! One device connection: the TLS handshake (refusals logged with their reason and counted),
//! the device's identity, then HTTP/1.1 or HTTP/2 until the client leaves, the connection
//! idles out, or the drain asks it to finish its streams and close. The serve loop
//! ([`meshanics_http::serve`]) accepted it and tracks this task.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshanics_http::Connection;
use rustls::{CertificateError, Error as TlsError};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::idle::{Activity, Tracked};
use crate::identity::DeviceIdentity;
use crate::service::{self, Shared};

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
    let activity = Activity::new();
    let tcp = Tracked::new(tcp, activity.clone());
    let tls = match tokio::time::timeout(limits.handshake(), acceptor.accept(tcp)).await {
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
        tracing::debug!("connected");
        shared.metrics.connection(1);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(128);
        let handler = shared.clone();
        let device = identity.clone();
        let service = service_fn(move |request| {
            let shared = handler.clone();
            let device = device.clone();
            async move {
                Ok::<_, std::convert::Infallible>(service::handle(shared, device, request).await)
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
