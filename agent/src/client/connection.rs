//! Connections to the facade: TCP + TLS within a timeout, HTTP/2 kept and shared (with
//! keep-alive pings while a request is in flight), HTTP/1.1 one per request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::ClientOptions;
use crate::error::{Error, Result};

type Body = Empty<Bytes>;

/// HTTP/2 flow-control window per stream (one blob).
const STREAM_WINDOW: u32 = 512 * 1024;
/// HTTP/2 flow-control window for the whole connection.
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

/// Makes (and for HTTP/2, keeps) connections to one `https://host:port`.
pub(super) struct Connector {
    base: String,
    authority: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    timeout: Duration,
    keep_alive_interval: Duration,
    keep_alive_timeout: Duration,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
}

/// A connection ready for one request.
pub(super) enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

// === impl Connector ===

impl Connector {
    pub(super) fn new(
        base: &Uri,
        mut tls: rustls::ClientConfig,
        options: &ClientOptions,
    ) -> Result<Self> {
        let bad = |reason: &str| Error::Url {
            url: base.to_string(),
            reason: reason.to_owned(),
        };
        if base.scheme_str() != Some("https") {
            return Err(bad("the facade is reached over https only"));
        }
        let host = base.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = base.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| bad(&format!("not a TLS server name: {e}")))?;
        let authority = base
            .authority()
            .map(|a| a.as_str().to_owned())
            .ok_or_else(|| bad("no host"))?;
        tls.alpn_protocols = if options.http1_only {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        Ok(Connector {
            base: format!("https://{authority}"),
            authority,
            host,
            port,
            server_name,
            tls: TlsConnector::from(Arc::new(tls)),
            timeout: options.connect_timeout,
            keep_alive_interval: options.keep_alive_interval,
            keep_alive_timeout: options.keep_alive_timeout,
            h2: Mutex::new(None),
        })
    }

    /// The full URL of `path`, for messages.
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Drops the kept HTTP/2 connection (after an error, the next request reconnects).
    pub(super) fn forget(&self) {
        if let Ok(mut h2) = self.h2.lock() {
            *h2 = None;
        }
    }

    /// A connection for one request: the kept HTTP/2 one if it is still open, else a new one.
    pub(super) async fn sender(&self) -> Result<Sender> {
        if let Ok(h2) = self.h2.lock()
            && let Some(sender) = h2.as_ref()
            && !sender.is_closed()
        {
            return Ok(Sender::H2(sender.clone()));
        }
        let sender = self.connect().await?;
        if let Sender::H2(h2) = &sender
            && let Ok(mut kept) = self.h2.lock()
        {
            *kept = Some(h2.clone());
        }
        Ok(sender)
    }

    async fn connect(&self) -> Result<Sender> {
        let authority = &self.authority;
        let handshake = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|source| Error::Connect {
                    authority: authority.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            self.tls
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|source| Error::Handshake {
                    authority: authority.clone(),
                    source,
                })
        };
        let stream = tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| Error::ConnectTimeout {
                authority: authority.clone(),
                after: self.timeout,
            })??;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let http = |source| Error::Http {
            url: self.base.clone(),
            source,
        };
        let io = TokioIo::new(stream);
        if h2 {
            // Small flow-control windows bound what the server may send ahead of what the
            // agent has written: memory on a small device, and bytes lost (and fetched
            // again) when the agent is killed mid-download. 512 KiB per stream still fills a
            // LAN link; hyper's defaults are several MiB.
            //
            // Keep-alive: while a request is in flight and the peer has sent nothing for the
            // interval, a PING goes out; no answer within the timeout closes the connection
            // and fails its requests, so a facade that vanished (a dead NAT mapping, a
            // powered-off host) is noticed instead of waited on. An idle kept connection is
            // not pinged (no traffic on metered links between cycles); its first request
            // after a long pause sends a PING at once, since nothing was read for longer than
            // the interval.
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .timer(TokioTimer::new())
                .keep_alive_interval(self.keep_alive_interval)
                .keep_alive_timeout(self.keep_alive_timeout)
                .keep_alive_while_idle(false)
                .handshake(io)
                .await
                .map_err(http)?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    debug!(error = %err, "HTTP/2 connection ended");
                }
            });
            Ok(Sender::H2(sender))
        } else {
            let (sender, connection) = http1::handshake(io).await.map_err(http)?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    debug!(error = %err, "HTTP/1.1 connection ended");
                }
            });
            Ok(Sender::H1(sender))
        }
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

// === impl Sender ===

impl Sender {
    /// The request URI: absolute for HTTP/2 (`:scheme` and `:authority` come from it),
    /// origin-form for HTTP/1.1.
    pub(super) fn uri_for(&self, connector: &Connector, path: &str) -> Result<Uri> {
        let text = match self {
            Sender::H2(_) => connector.url(path),
            Sender::H1(_) => path.to_owned(),
        };
        text.parse().map_err(|e: http::uri::InvalidUri| Error::Url {
            url: connector.url(path),
            reason: e.to_string(),
        })
    }

    /// Adds `Host` for HTTP/1.1.
    pub(super) fn with_host(
        &self,
        connector: &Connector,
        request: http::request::Builder,
    ) -> http::request::Builder {
        match self {
            Sender::H1(_) => request.header(http::header::HOST, &connector.authority),
            Sender::H2(_) => request,
        }
    }

    pub(super) async fn send(
        &mut self,
        request: Request<Body>,
        url: &str,
    ) -> Result<Response<Incoming>> {
        let http = |source| Error::Http {
            url: url.to_owned(),
            source,
        };
        match self {
            Sender::H1(sender) => {
                sender.ready().await.map_err(http)?;
                sender.send_request(request).await.map_err(http)
            }
            Sender::H2(sender) => {
                sender.ready().await.map_err(http)?;
                sender.send_request(request).await.map_err(http)
            }
        }
    }
}
