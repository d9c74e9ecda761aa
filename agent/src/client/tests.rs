use std::time::Duration;

use meshanics_shared::devpki::DevCa;

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
