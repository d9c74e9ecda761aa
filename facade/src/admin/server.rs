//! The operator API server on a Unix socket, run by the shared serve loop
//! ([`meshanics_http::serve`]: accept backoff, header timeout, tracked connections, drain).

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use meshanics_http::{Connection, ServeConfig};
use meshanics_operator_api::percent::decode;
use meshanics_operator_api::{
    AddRegistry, BrowseError, Browser, ConnectionView, ErrorBody, ErrorEntry, ImportRequest,
    ImportResponse, ImportResult, Outcome, ProviderKind, PublishRequest,
};
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream, unix};

use crate::cloud::ecr::EcrRole;
use crate::connections::pasted;
use crate::connections::{Actor, ConnectionCredentials, ConnectionError, NewConnection, Store};
use crate::publish::{Metadata, PublishError};

/// The largest request body accepted (a service-account key is a few KiB).
const MAX_BODY: usize = 1024 * 1024;
/// The default cap on tags listed.
pub(super) const DEFAULT_TAG_LIMIT: usize = 10_000;
/// The default number of audit log entries shown.
const DEFAULT_AUDIT_LIMIT: usize = 100;
/// How many tags an import resolves at once.
const IMPORT_CONCURRENCY: usize = 4;

/// What the operator API works on.
#[derive(Debug)]
pub struct AdminState {
    /// The connection store.
    pub store: Arc<Store>,
    /// Tag listing and resolution against the registries.
    pub browser: Arc<dyn Browser>,
    /// The published metadata (`POST /v1/metadata`).
    pub metadata: Arc<Metadata>,
}

/// Binds the operator socket at `path`: a stale socket file is replaced, and the new one is
/// made reachable by the facade's user and group only (mode 0660) before anyone can connect.
/// The group is how operators get `meshctl` access (they join the facade's group); the
/// state directory's mode decides whether the group can reach the socket at all
/// (`StateDirectoryMode=0750` in the unit; 0700 makes it the facade user's alone).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    // Bind inside a private temporary name, then rename, so the socket is never reachable
    // with looser permissions.
    let tmp = path.with_extension("sock.tmp");
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

/// Serves the operator API on `listener` until `shutdown` completes, then lets requests in
/// flight finish (an import resolving many tags included) for up to 10 seconds.
pub async fn serve(
    listener: UnixListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    let handler = move |connection: Connection<UnixStream, unix::SocketAddr>| {
        let state = state.clone();
        // Who is on the other end, for the audit log: the kernel's word, not the client's.
        let actor = match connection.io.peer_cred() {
            Ok(cred) => Actor {
                uid: Some(cred.uid()),
                pid: cred.pid(),
            },
            Err(_) => Actor::default(),
        };
        connection.serve_http1(hyper::service::service_fn(move |req| {
            let state = state.clone();
            let actor = actor.clone();
            async move { Ok::<_, Infallible>(handle(&state, &actor, req).await) }
        }))
    };
    meshanics_http::serve(
        listener,
        ServeConfig::new("operator API"),
        shutdown,
        handler,
    )
    .await;
}

type Reply = Response<Full<Bytes>>;

async fn handle(state: &AdminState, actor: &Actor, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Metadata files are bigger than anything else sent here (a targets file may reach
    // `max_meta_bytes`); every other route keeps the small cap.
    let limit = match (&parts.method, segments.as_slice()) {
        (&Method::POST, ["v1", "metadata"]) => state.metadata.max_request_bytes(),
        _ => MAX_BODY,
    };
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "TOO_LARGE",
                &format!("request body over {limit} bytes"),
            );
        }
    };
    match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["v1", "registries"]) => json(StatusCode::OK, &state.store.list()),
        (&Method::POST, ["v1", "registries"]) => add_registry(state, actor, &body).await,
        (&Method::GET, ["v1", "registries", host]) => store_reply(state.store.show(&decode(host))),
        (&Method::POST, ["v1", "registries", host, "approve"]) => {
            let (host, by) = (decode(host), actor.clone());
            let result = write(state, move |store| store.approve_by(&host, &by)).await;
            if let Ok(view) = &result {
                tracing::info!(host = %view.host, %actor, "operator approved registry");
            }
            store_reply(result)
        }
        (&Method::POST, ["v1", "registries", host, "unapprove"]) => {
            let (host, by) = (decode(host), actor.clone());
            let result = write(state, move |store| store.unapprove_by(&host, &by)).await;
            if let Ok(view) = &result {
                tracing::info!(host = %view.host, %actor, "operator unapproved registry");
            }
            store_reply(result)
        }
        (&Method::DELETE, ["v1", "registries", host]) => {
            let (host, by) = (decode(host), actor.clone());
            let result = write(state, move |store| store.remove_by(&host, &by)).await;
            if let Ok(view) = &result {
                tracing::info!(host = %view.host, %actor, "operator removed registry");
            }
            store_reply(result)
        }
        (&Method::GET, ["v1", "audit"]) => audit(state, &query).await,
        (&Method::GET, ["v1", "tags"]) => tags(state, &query).await,
        (&Method::POST, ["v1", "import"]) => import(state, &body).await,
        (&Method::POST, ["v1", "metadata"]) => publish(state, actor, &body).await,
        _ => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("no operator API route {} {path}", parts.method),
        ),
    }
}

/// Runs a store operation that may wait for the state database on a blocking thread, so a
/// slow or unreachable database never holds up one of the runtime's workers.
async fn write<T: Send + 'static>(
    state: &AdminState,
    operation: impl FnOnce(&Store) -> Result<T, ConnectionError> + Send + 'static,
) -> Result<T, ConnectionError> {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || operation(&store)).await {
        Ok(result) => result,
        Err(e) => Err(ConnectionError::Database {
            action: "waiting for",
            database: "the connection store".into(),
            reason: e.to_string(),
        }),
    }
}

async fn add_registry(state: &AdminState, actor: &Actor, body: &[u8]) -> Reply {
    let request: AddRegistry = match parse_body(body) {
        Ok(r) => r,
        Err(reply) => return *reply,
    };
    let missing = |what: &str| {
        error(
            StatusCode::BAD_REQUEST,
            "INVALID",
            &format!("a {} connection needs {what}", request.provider),
        )
    };
    let credentials = match request.provider {
        ProviderKind::Anonymous => ConnectionCredentials::Anonymous,
        ProviderKind::Static => match (&request.username, &request.token) {
            (Some(username), Some(token)) => ConnectionCredentials::Static {
                username: username.clone(),
                token: token.clone(),
            },
            _ => return missing("a username and a token"),
        },
        ProviderKind::Gcp => match &request.gcp_key_json {
            Some(key_json) => ConnectionCredentials::Gcp {
                key_json: key_json.clone(),
            },
            None => return missing("a service-account key file"),
        },
        ProviderKind::Ecr => match (&request.role_arn, &request.region) {
            (Some(role_arn), Some(region)) => ConnectionCredentials::Ecr(EcrRole {
                role_arn: role_arn.clone(),
                external_id: request.external_id.clone(),
                region: region.clone(),
            }),
            _ => return missing("a role ARN and a region"),
        },
    };
    let new = NewConnection {
        registry: request.registry.clone(),
        credentials,
        plain_http: request.plain_http,
        ca_pem: request.ca_pem.clone(),
        storage_hosts: request.storage_hosts.clone(),
        connected_by: request.connected_by.clone(),
    };
    let by = actor.clone();
    let result = write(state, move |store| {
        store.add_by(new, SystemTime::now(), &by)
    })
    .await;
    if let Ok(view) = &result {
        tracing::info!(host = %view.host, provider = %view.provider, by = %view.connected_by, %actor, approved = view.approved, "operator connected registry");
    }
    match result {
        Ok(view) => json(StatusCode::CREATED, &view),
        Err(e) => store_error(&e),
    }
}

async fn audit(state: &AdminState, query: &str) -> Reply {
    let limit = match limit(query, DEFAULT_AUDIT_LIMIT) {
        Ok(limit) => limit,
        Err(reply) => return *reply,
    };
    match write(state, move |store| store.audit(limit)).await {
        Ok(entries) => json(StatusCode::OK, &entries),
        Err(e) => store_error(&e),
    }
}

/// The query's `limit`: `default` when absent, a 400 unless a positive number.
fn limit(query: &str, default: usize) -> Result<usize, Box<Reply>> {
    match query_param(query, "limit").map(|l| l.parse::<usize>()) {
        None => Ok(default),
        Some(Ok(l)) if l > 0 => Ok(l),
        Some(_) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "INVALID",
            "limit must be a positive number",
        ))),
    }
}

/// The value of `name` in a query string, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| decode(v))
}

async fn tags(state: &AdminState, query: &str) -> Reply {
    let Some(repository) = query_param(query, "repository") else {
        return error(StatusCode::BAD_REQUEST, "INVALID", "missing ?repository=");
    };
    let limit = match limit(query, DEFAULT_TAG_LIMIT) {
        Ok(limit) => limit,
        Err(reply) => return *reply,
    };
    let reference = match pasted::reference(&repository) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "INVALID", &e.to_string()),
    };
    match state.store.connection(reference.registry()) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "NOT_CONNECTED",
                &format!(
                    "registry {} is not connected (meshctl registry add)",
                    reference.registry()
                ),
            );
        }
        Err(e) => return store_error(&e),
    }
    match state.browser.tags(&reference, limit).await {
        Ok(list) => json(StatusCode::OK, &list),
        Err(e) => browse_error(&e),
    }
}

async fn import(state: &AdminState, body: &[u8]) -> Reply {
    let request: ImportRequest = match parse_body(body) {
        Ok(r) => r,
        Err(reply) => return *reply,
    };
    let results: Vec<ImportResult> = futures_util::stream::iter(request.references)
        .map(|reference| import_one(state, reference))
        .buffered(IMPORT_CONCURRENCY)
        .collect()
        .await;
    json(StatusCode::OK, &ImportResponse { results })
}

async fn import_one(state: &AdminState, input: String) -> ImportResult {
    let mut result = ImportResult::failed(input.clone());
    let reference = match pasted::reference(&input) {
        Ok(r) => r,
        Err(e) => {
            result.outcome = Outcome::Invalid;
            result.message = Some(e.to_string());
            return result;
        }
    };
    result.repository = Some(reference.name());
    result.tag = reference.tag().map(|t| t.to_string());
    if reference.tag().is_none() || reference.digest().is_some() {
        result.outcome = Outcome::Invalid;
        result.message =
            Some("import takes a reference with a tag and no digest (repository:tag)".into());
        return result;
    }
    match state.store.connection(reference.registry()) {
        Ok(Some(_)) => {}
        Ok(None) => {
            result.outcome = Outcome::NotConnected;
            result.message = Some(format!(
                "registry {} is not connected",
                reference.registry()
            ));
            return result;
        }
        Err(e) => {
            result.message = Some(e.to_string());
            return result;
        }
    }
    match state.browser.resolve(&reference).await {
        Ok(resolved) => {
            tracing::info!(reference = %reference, digest = %resolved.digest, "imported tag");
            result.outcome = Outcome::Imported;
            result.digest = Some(resolved.digest.to_string());
            result.size = Some(resolved.size);
            result.media_type = Some(resolved.media_type);
        }
        Err(e) => {
            tracing::info!(reference = %reference, error = %e, "tag not imported");
            result.outcome = match &e {
                BrowseError::NotConnected(_) => Outcome::NotConnected,
                BrowseError::NotFound(_) => Outcome::NotFound,
                BrowseError::Unauthorized(_) => Outcome::Unauthorized,
                BrowseError::RateLimited { retry_after, .. } => {
                    result.retry_after = *retry_after;
                    Outcome::RateLimited
                }
                BrowseError::Timeout(_) => Outcome::Timeout,
                BrowseError::Failed(_) => Outcome::Failed,
            };
            result.message = Some(e.to_string());
        }
    }
    result
}

async fn publish(state: &AdminState, actor: &Actor, body: &[u8]) -> Reply {
    let request: PublishRequest = match parse_body(body) {
        Ok(r) => r,
        Err(reply) => return *reply,
    };
    let files = request
        .files
        .into_iter()
        .map(|(name, bytes)| (name, bytes.0))
        .collect();
    let (metadata, by) = (state.metadata.clone(), actor.clone());
    let result = match tokio::task::spawn_blocking(move || metadata.publish(files, &by)).await {
        Ok(result) => result,
        Err(e) => Err(PublishError::Store(ConnectionError::Database {
            action: "waiting for",
            database: "the publish".into(),
            reason: e.to_string(),
        })),
    };
    match result {
        Ok(response) => json(StatusCode::OK, &response),
        Err(e) => publish_error(&e, actor),
    }
}

/// A refused publish names the file in its message and in `detail.file`.
fn publish_error(e: &PublishError, actor: &Actor) -> Reply {
    let (status, code, file) = match e {
        PublishError::Refused { file, .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "REFUSED", Some(file))
        }
        PublishError::Conflict { file, .. } => (StatusCode::CONFLICT, "CONFLICT", Some(file)),
        PublishError::TooLarge { file, .. } => {
            (StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE", Some(file))
        }
        PublishError::TooManyFiles { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE", None),
        PublishError::NoFolder => (StatusCode::CONFLICT, "NOT_CONFIGURED", None),
        // Not the facade's fault: files in the folder that do not chain from 1.root.cose.
        PublishError::Published { .. } => (StatusCode::CONFLICT, "PUBLISHED_INVALID", None),
        PublishError::Store(store) => return store_error(store),
        _ => {
            tracing::error!(error = %e, "operator API: publishing failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", None)
        }
    };
    if status != StatusCode::INTERNAL_SERVER_ERROR {
        tracing::info!(error = %e, %actor, "operator publish refused");
    }
    let mut entry = ErrorEntry::new(code, &e.to_string());
    entry.detail = file.map(|file| serde_json::json!({ "file": file }));
    json(
        status,
        &ErrorBody {
            errors: vec![entry],
        },
    )
}

fn store_reply(result: Result<ConnectionView, ConnectionError>) -> Reply {
    match result {
        Ok(view) => json(StatusCode::OK, &view),
        Err(e) => store_error(&e),
    }
}

fn store_error(e: &ConnectionError) -> Reply {
    let (status, code) = match e {
        ConnectionError::InvalidRegistry(_)
        | ConnectionError::InvalidCredentials { .. }
        | ConnectionError::InvalidStorageHost(_) => (StatusCode::BAD_REQUEST, "INVALID"),
        ConnectionError::NotFound { .. } => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        ConnectionError::Exists { .. } => (StatusCode::CONFLICT, "EXISTS"),
        ConnectionError::Database { .. } => {
            tracing::error!(error = %e, "operator API: write refused, the state database failed");
            (StatusCode::SERVICE_UNAVAILABLE, "DATABASE")
        }
        _ => {
            tracing::error!(error = %e, "operator API: connection store failure");
            (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL")
        }
    };
    error(status, code, &e.to_string())
}

fn browse_error(e: &BrowseError) -> Reply {
    let (status, code) = match e {
        BrowseError::NotConnected(_) => (StatusCode::NOT_FOUND, "NOT_CONNECTED"),
        BrowseError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        BrowseError::Unauthorized(_) => (StatusCode::BAD_GATEWAY, "UNAUTHORIZED"),
        BrowseError::RateLimited { .. } => (StatusCode::SERVICE_UNAVAILABLE, "RATE_LIMITED"),
        BrowseError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "TIMEOUT"),
        BrowseError::Failed(_) => (StatusCode::BAD_GATEWAY, "UPSTREAM"),
    };
    error(status, code, &e.to_string())
}

/// A JSON request body, or the 400 answer that names what is wrong with it.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Reply>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "INVALID",
            &format!("malformed request: {e}"),
        ))
    })
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(_) => Response::new(Full::new(Bytes::new())),
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Reply {
    json(status, &ErrorBody::new(code, message))
}
