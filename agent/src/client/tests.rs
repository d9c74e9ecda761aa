use std::time::Duration;

use meshanics_shared::devpki::DevCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn client(options: ClientOptions) -> Client {
    let mut ca = DevCa::new("ca").unwrap();
    let _ = ca.issue_server(&["127.0.0.1"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    fs_err::write(&ca_path, ca.cert_pem()).unwrap();
    let tls = tls::client_config(&ca_path, None).unwrap();
    Client::new(&"https://127.0.0.1:1".parse().unwrap(), tls, options).unwrap()
}

#[test]
fn backoff_stays_under_a_doubling_ceiling() {
    let client = client(ClientOptions {
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(1000),
        ..ClientOptions::default()
    });
    for attempt in 1..10u32 {
        let ceiling = Duration::from_millis((100u64 << (attempt - 1)).min(1000));
        for _ in 0..50 {
            assert!(client.backoff(attempt) <= ceiling, "attempt {attempt}");
        }
    }
}

#[test]
fn refuses_plain_http_facades() {
    let tls = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let err = Client::new(
        &"http://127.0.0.1:1".parse().unwrap(),
        tls,
        ClientOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Url { .. }), "{err}");
}

#[tokio::test]
async fn refuses_metadata_file_names_that_leave_the_folder() {
    let client = client(ClientOptions::default());
    for name in ["../root.json", "", ".hidden", "a/b", "1.root.json?x=1"] {
        let err = client.fetch_meta(name, 1024).await.unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{name}: {err}");
    }
}

#[tokio::test]
async fn gives_up_after_the_configured_attempts_when_nothing_listens() {
    let client = client(ClientOptions {
        attempts: 3,
        backoff_base: Duration::from_millis(1),
        ..ClientOptions::default()
    });
    let err = client.fetch_meta("timestamp.cose", 1024).await.unwrap_err();
    match err {
        Error::RetriesExhausted { attempts, last, .. } => {
            assert_eq!(attempts, 3);
            assert!(matches!(*last, Error::Connect { .. }), "{last}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn the_rate_limiter_spaces_bytes_at_the_rate() {
    let mut limiter = RateLimiter::new(1000);
    let first = limiter.take(500);
    let second = limiter.take(500);
    assert!(first <= Duration::from_millis(500));
    assert!(second > first, "{second:?} after {first:?}");
    assert!(second <= Duration::from_millis(1000));
}

/// A facade on loopback that accepts connections and completes the TLS handshake (choosing
/// `alpn`), then reads what the client sends and writes `answer` once (nothing, or a
/// response head without the body it announces), and never anything more. Returns a client
/// for it, and the folder that holds its CA.
async fn silent_facade(
    alpn: &[u8],
    answer: &'static [u8],
    options: ClientOptions,
) -> (Client, tempfile::TempDir) {
    let mut ca = DevCa::new("ca").unwrap();
    let issued = ca.issue_server(&["127.0.0.1"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    fs_err::write(path("ca.pem"), ca.cert_pem()).unwrap();
    fs_err::write(path("server.pem"), &issued.cert_pem).unwrap();
    fs_err::write(path("server.key"), &issued.key_pem).unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            tls::load_certificates(&path("server.pem")).unwrap(),
            tls::load_private_key(&path("server.key")).unwrap(),
        )
        .unwrap();
    server.alpn_protocols = vec![alpn.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 64 * 1024];
                let mut answered = false;
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !answered && !answer.is_empty() {
                        answered = true;
                        let _ = stream.write_all(answer).await;
                        let _ = stream.flush().await;
                    }
                }
                // Hold the connection open until the client goes: a silent peer, not a
                // closed one.
                std::future::pending::<()>().await;
            });
        }
    });
    let tls = tls::client_config(&path("ca.pem"), None).unwrap();
    let base = format!("https://127.0.0.1:{port}").parse().unwrap();
    (Client::new(&base, tls, options).unwrap(), dir)
}

/// Fails the test if `request` is still pending after `guard` (which is far beyond every
/// deadline the test sets): without a deadline it would hang for good.
async fn within<T>(guard: Duration, request: impl Future<Output = T>) -> T {
    match tokio::time::timeout(guard, request).await {
        Ok(value) => value,
        Err(_) => panic!("the request was still pending after {guard:?}"),
    }
}

/// The last attempt's error behind `RetriesExhausted`.
fn last_attempt(err: Error) -> Error {
    match err {
        Error::RetriesExhausted { last, .. } => *last,
        other => panic!("expected the attempts to run out, got {other}"),
    }
}

/// Fetches `timestamp.cose` (guarded by `within` for 20 s), which must fail, and returns the
/// last attempt's error.
async fn fetch_timestamp_last_error(client: &Client) -> Error {
    let err = within(
        Duration::from_secs(20),
        client.fetch_meta("timestamp.cose", 1024),
    )
    .await
    .unwrap_err();
    last_attempt(err)
}

#[tokio::test]
async fn a_facade_that_never_answers_fails_the_request_after_the_header_deadline() {
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let header_timeout = Duration::from_millis(300);
        let (client, _dir) = silent_facade(
            alpn,
            b"",
            ClientOptions {
                header_timeout,
                attempts: 2,
                backoff_base: Duration::from_millis(1),
                ..ClientOptions::default()
            },
        )
        .await;
        let err = fetch_timestamp_last_error(&client).await;
        let Error::ResponseTimeout { url, after } = &err else {
            panic!("{alpn:?}: expected a response timeout, got {err}");
        };
        assert!(url.ends_with("/meta/timestamp.cose"), "{url}");
        assert_eq!(*after, header_timeout);
        let message = err.to_string();
        assert!(
            message.contains(url.as_str()) && message.contains("300ms"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_silent_http2_peer_is_noticed_by_keep_alive_before_the_header_deadline() {
    let (client, _dir) = silent_facade(
        b"h2",
        b"",
        ClientOptions {
            // Far beyond the guard: only keep-alive can end the request in time.
            header_timeout: Duration::from_secs(600),
            keep_alive_interval: Duration::from_millis(200),
            keep_alive_timeout: Duration::from_millis(200),
            attempts: 1,
            ..ClientOptions::default()
        },
    )
    .await;
    let err = fetch_timestamp_last_error(&client).await;
    let Error::Http { url, .. } = &err else {
        panic!("expected the connection to be closed, got {err}");
    };
    assert!(url.ends_with("/meta/timestamp.cose"), "{url}");
}

#[tokio::test]
async fn a_body_that_stops_arriving_fails_after_the_stall_window() {
    let (client, _dir) = silent_facade(
        b"http/1.1",
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nten bytes.",
        ClientOptions {
            stall_window: Duration::from_millis(300),
            attempts: 1,
            ..ClientOptions::default()
        },
    )
    .await;
    let err = fetch_timestamp_last_error(&client).await;
    let Error::Stalled { url, .. } = &err else {
        panic!("expected a stalled transfer, got {err}");
    };
    assert!(url.ends_with("/meta/timestamp.cose"), "{url}");
}
