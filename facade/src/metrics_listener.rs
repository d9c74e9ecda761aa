//! The metrics listener: `GET /healthz` and `GET /metrics` (Prometheus text format), plain
//! HTTP on its own address (config key `operator_listen`), never on the device port. It runs
//! on the shared serve loop and stops after the device listener has drained. (The operator
//! API, which `meshctl` drives, is [`admin`](crate::admin), on a Unix socket.)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use meshanics_http::{Connection, ServeConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a scrape in flight may take to finish once the listener stops (answers are
/// small; idle connections close at once).
const GRACE: Duration = Duration::from_secs(1);

/// Serves `/healthz` and `/metrics` until `stop` turns true; `/healthz` answers 503 once
/// `draining` turns true (the device listener is shutting down).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    draining: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let config = ServeConfig::new("metrics")
        .with_header_timeout(HEADER_TIMEOUT)
        .with_grace(GRACE);
    let stop = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let handler = move |connection: Connection<TcpStream, SocketAddr>| {
        let metrics = metrics.clone();
        let draining = draining.clone();
        connection.serve_http1(service_fn(move |request| {
            let response = answer(&request, &metrics, *draining.borrow());
            async move { Ok::<_, Infallible>(response) }
        }))
    };
    meshanics_http::serve(listener, config, stop, handler).await;
}

fn answer<B>(request: &Request<B>, metrics: &Metrics, draining: bool) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") if draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".to_owned(),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
