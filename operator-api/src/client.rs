//! The operator API client `meshctl` uses: HTTP/1.1 over the facade's Unix socket.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::connection::ConnectionView;
use crate::percent::encode;
use crate::wire::{
    AddRegistry, AuditRecord, ErrorBody, ImportRequest, ImportResponse, PublishRequest,
    PublishResponse, TagList,
};

/// The largest answer read (a 10,000-tag list is well under this).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// A client of one facade's operator socket.
#[derive(Debug, Clone)]
pub struct OperatorClient {
    socket: PathBuf,
}

/// Why an operator API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorClientError {
    /// The socket could not be reached.
    #[error(
        "cannot reach the facade's operator socket {socket}: {source} (is the facade running, and may you read its state dir?)"
    )]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to the facade on {socket}: {reason}")]
    Http {
        /// The socket.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
    /// The facade answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error code (`NOT_FOUND`, `INVALID`, ...).
        code: String,
        /// The facade's message.
        message: String,
    },
}

impl OperatorClient {
    /// A client for the socket at `socket`.
    pub fn new(socket: &Path) -> Self {
        OperatorClient {
            socket: socket.to_owned(),
        }
    }

    /// Every connection.
    pub async fn list(&self) -> Result<Vec<ConnectionView>, OperatorClientError> {
        self.call(Method::GET, "/v1/registries", None::<&()>).await
    }

    /// Connects a registry.
    pub async fn add(&self, request: &AddRegistry) -> Result<ConnectionView, OperatorClientError> {
        self.call(Method::POST, "/v1/registries", Some(request))
            .await
    }

    /// One connection.
    pub async fn show(&self, host: &str) -> Result<ConnectionView, OperatorClientError> {
        self.call(
            Method::GET,
            &format!("/v1/registries/{}", encode(host)),
            None::<&()>,
        )
        .await
    }

    /// Approves a connection.
    pub async fn approve(&self, host: &str) -> Result<ConnectionView, OperatorClientError> {
        self.call(
            Method::POST,
            &format!("/v1/registries/{}/approve", encode(host)),
            None::<&()>,
        )
        .await
    }

    /// Withdraws a connection's approval (its device traffic is refused at once).
    pub async fn unapprove(&self, host: &str) -> Result<ConnectionView, OperatorClientError> {
        self.call(
            Method::POST,
            &format!("/v1/registries/{}/unapprove", encode(host)),
            None::<&()>,
        )
        .await
    }

    /// Removes a connection.
    pub async fn remove(&self, host: &str) -> Result<ConnectionView, OperatorClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/registries/{}", encode(host)),
            None::<&()>,
        )
        .await
    }

    /// The newest `limit` entries of the operator audit log, oldest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, OperatorClientError> {
        self.call(
            Method::GET,
            &format!("/v1/audit?limit={limit}"),
            None::<&()>,
        )
        .await
    }

    /// A repository's tags.
    pub async fn tags(
        &self,
        repository: &str,
        limit: Option<usize>,
    ) -> Result<TagList, OperatorClientError> {
        let mut path = format!("/v1/tags?repository={}", encode(repository));
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Resolves tags to digests.
    pub async fn import(
        &self,
        references: Vec<String>,
    ) -> Result<ImportResponse, OperatorClientError> {
        self.call(
            Method::POST,
            "/v1/import",
            Some(&ImportRequest { references }),
        )
        .await
    }

    /// Publishes signed metadata files; the answer says what the facade serves now.
    pub async fn publish(
        &self,
        request: &PublishRequest,
    ) -> Result<PublishResponse, OperatorClientError> {
        self.call(Method::POST, "/v1/metadata", Some(request)).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, OperatorClientError> {
        let http = |reason: String| OperatorClientError::Http {
            socket: self.socket.clone(),
            reason,
        };
        let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
            OperatorClientError::Connect {
                socket: self.socket.clone(),
                source,
            }
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.to_string()))?;
        tokio::spawn(connection);
        let bytes = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body).map_err(|e| http(e.to_string()))?),
            None => Bytes::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "meshanics-facade")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| http(format!("unreadable answer: {e}")));
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { errors }) if !errors.is_empty() => {
                let first = errors.into_iter().next().map(|e| (e.code, e.message));
                first.unwrap_or_default()
            }
            _ => ("HTTP".to_owned(), format!("the facade answered {status}")),
        };
        Err(OperatorClientError::Api {
            status: status.as_u16(),
            code,
            message,
        })
    }
}

impl OperatorClientError {
    /// Whether the facade said the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, OperatorClientError::Api { status, .. } if *status == StatusCode::NOT_FOUND.as_u16())
    }
}
