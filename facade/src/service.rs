//! The device-facing request handler: route, serve, count, log. Errors become responses
//! through [`crate::respond`] only.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName};
use http::{HeaderValue, Method, Request, Response};

use crate::approval::ApprovedUpstreams;
use crate::body::Body;
use crate::budget::Budgets;
use crate::cache::Cache;
use crate::config::Limits;
use crate::error::Error;
use crate::identity::DeviceIdentity;
use crate::metrics::{Metrics, Work};
use crate::publish::Metadata;
use crate::routes::{self, Route};
use crate::{meta, proxy, respond};

/// What every request handler shares.
#[derive(Debug)]
pub struct Shared {
    /// The approved upstreams.
    pub upstreams: Arc<dyn ApprovedUpstreams>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The published metadata `/meta/` serves.
    pub metadata: Arc<Metadata>,
    /// Limits.
    pub limits: Limits,
    /// The device listener's budgets (of `limits`).
    pub budgets: Budgets,
    /// The content cache (`None` when `[cache] max_bytes = 0`).
    pub cache: Option<Arc<Cache>>,
}

/// Handles one device request from `device`. Never fails: errors are responses. A `HEAD` is
/// answered with the headers of the `GET` and no body.
///
/// The device is logged explicitly rather than through the connection's span: hyper runs
/// HTTP/2 streams as tasks of their own, outside that span.
pub async fn handle<B>(
    shared: Arc<Shared>,
    device: DeviceIdentity,
    request: Request<B>,
) -> Response<Body> {
    let _in_flight = shared.metrics.in_progress(Work::Request);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = routes::route(&method, &path, request.uri().query());
    let label = route.as_ref().map(Route::label).unwrap_or("unrouted");
    let result = match route {
        Ok(Route::Ping) => Ok(ping()),
        Ok(Route::Content(target)) => {
            proxy::content(&shared, &device, target, &method, request.headers()).await
        }
        Ok(Route::Meta(name)) => {
            meta::serve(
                &shared.metadata,
                &name,
                &method,
                shared.limits.max_meta_bytes,
            )
            .await
        }
        Err(error) => Err(error),
    };
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            log_error(&device, &error);
            respond::error_response(&error)
        }
    };
    if method == Method::HEAD {
        // No HEAD answer carries a body, refusals and the ping included: an HTTP/2 HEAD
        // answer must end the stream with its HEADERS frame (RFC 9113 section 8.1.1), which
        // hyper does only for a body that has ended. The headers, `Content-Length` with them,
        // stay those of the GET. Dropping the body drops an upstream stream unread.
        *response.body_mut() = respond::full(Bytes::new());
    }
    let status = response.status().as_u16();
    shared.metrics.request(label, status);
    tracing::info!(%device, %method, %path, status, "request");
    response
}

fn log_error(device: &DeviceIdentity, error: &Error) {
    let (status, code, _) = respond::classify(error);
    if status.is_server_error() {
        tracing::warn!(%device, %error, code, "request failed");
    } else {
        tracing::info!(%device, %error, code, "request refused");
    }
}

fn ping() -> Response<Body> {
    let mut response = Response::new(respond::full(Bytes::from_static(b"{}")));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(2));
    headers.insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    response
}
