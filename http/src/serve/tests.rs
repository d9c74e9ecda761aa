use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;

use super::*;

/// The test service's answer: `ok` after `delay`.
async fn slow_ok(delay: Duration) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    tokio::time::sleep(delay).await;
    Ok(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// Serves `slow_ok(delay)` over HTTP/1.1 on 127.0.0.1:0; the sender stops it.
async fn start(
    config: ServeConfig,
    delay: Duration,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        config,
        async move {
            let _ = stopped.await;
        },
        move |connection: Connection<TcpStream, SocketAddr>| {
            connection.serve_http1(hyper::service::service_fn(move |_| slow_ok(delay)))
        },
    ));
    (addr, stop, task)
}

/// Sends one request on `stream` and reads the answer to its end.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[test]
fn backs_off_with_a_doubling_capped_delay_and_starts_over_after_a_success() {
    let error = io::Error::from_raw_os_error(24); // EMFILE
    let mut backoff = Backoff::default();
    let delays: Vec<Duration> = (0..10).map(|_| backoff.failed("t", &error)).collect();
    assert_eq!(delays[0], FIRST_BACKOFF);
    assert_eq!(delays[1], FIRST_BACKOFF * 2);
    assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
    assert_eq!(delays[9], MAX_BACKOFF);
    backoff.succeeded("t");
    assert_eq!(backoff.failed("t", &error), FIRST_BACKOFF);
}

#[test]
fn skips_clients_that_left_but_backs_off_on_resource_errors() {
    assert!(one_connection_failed(
        &io::ErrorKind::ConnectionAborted.into()
    ));
    for errno in [24, 23, 105, 12] {
        // EMFILE, ENFILE, ENOBUFS, ENOMEM
        assert!(!one_connection_failed(&io::Error::from_raw_os_error(errno)));
    }
}

#[tokio::test]
async fn serves_http1_and_lets_a_request_in_flight_finish_on_shutdown() {
    let (addr, stop, task) = start(ServeConfig::new("test"), Duration::from_millis(300)).await;
    let in_flight = tokio::spawn(get(TcpStream::connect(addr).await.unwrap()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let answer = in_flight.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    task.await.unwrap();
    // The socket is closed: nobody is accepted any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn aborts_connections_still_open_after_the_grace_period() {
    let config = ServeConfig::new("test").with_grace(Duration::from_millis(200));
    let (addr, stop, task) = start(config, Duration::from_secs(3600)).await;
    let stuck = tokio::spawn(get(TcpStream::connect(addr).await.unwrap()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    stop.send(()).unwrap();
    task.await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The aborted connection was closed without an answer.
    assert_eq!(stuck.await.unwrap(), "");
}

#[tokio::test]
async fn closes_a_connection_that_sends_no_headers_within_the_timeout() {
    let config = ServeConfig::new("test").with_header_timeout(Duration::from_millis(200));
    let (addr, stop, task) = start(config, Duration::ZERO).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    silent.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest))
        .await
        .expect("the server kept a connection that sent no headers")
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(150));
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn holds_new_clients_in_the_backlog_at_the_connection_limit() {
    let config = ServeConfig::new("test").with_max_connections(1);
    let (addr, stop, task) = start(config, Duration::ZERO).await;
    // The first client holds the only slot by sending nothing.
    let first = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(get(TcpStream::connect(addr).await.unwrap()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served at the limit"
    );
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn serves_a_unix_socket_and_tracks_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = oneshot::channel::<()>();
    let count = handled.clone();
    let task = tokio::spawn(serve(
        listener,
        ServeConfig::new("test"),
        async move {
            let _ = stopped.await;
        },
        move |connection: Connection<UnixStream, unix::SocketAddr>| {
            count.fetch_add(1, Ordering::Relaxed);
            connection.serve_http1(hyper::service::service_fn(|_| slow_ok(Duration::ZERO)))
        },
    ));
    for _ in 0..3 {
        let answer = get(UnixStream::connect(&path).await.unwrap()).await;
        assert!(answer.ends_with("ok"), "{answer}");
    }
    stop.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(handled.load(Ordering::Relaxed), 3);
}
