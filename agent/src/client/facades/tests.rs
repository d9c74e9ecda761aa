//! Failover between facade replicas, against real TLS servers on loopback: each replica is a
//! small HTTP/1.1 server that serves a metadata file and a blob (with `Range`), or answers
//! every request with one status, or cuts the blob short; a lost replica is a port nothing
//! listens on, and a broken one presents a certificate from another CA.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshanics_shared::devpki::DevCa;
use meshanics_shared::{Digest, Repository, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::client::{Client, ClientOptions};
use crate::error::Error;
use crate::progress::Silent;

const META: &[u8] = b"signed timestamp";

/// What a replica does with every request.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Serves `/meta/timestamp.cose` and the blob, honouring `Range`.
    Serves,
    /// Answers every request with this status.
    Status(u16),
    /// Serves the blob from where it is asked, but closes the connection after this many
    /// bytes of it (a replica killed mid-download).
    CutsAfter(usize),
    /// Closes this many connections before the TLS handshake (a facade over its handshake
    /// budget for the device's address), then serves.
    DropsFirst(usize),
}

/// The test's PKI: the CA the client trusts, and another one it does not.
struct Pki {
    dir: tempfile::TempDir,
    trusted: DevCa,
    stranger: DevCa,
}

/// A replica on loopback: its URL and the requests it got (`path` or `path range`).
struct Replica {
    url: http::Uri,
    requests: Arc<Mutex<Vec<String>>>,
    /// TCP connections accepted (handshakes begun), dropped ones included.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let trusted = DevCa::new("ca").unwrap();
        fs_err::write(dir.path().join("ca.pem"), trusted.cert_pem()).unwrap();
        Pki {
            dir,
            trusted,
            stranger: DevCa::new("stranger").unwrap(),
        }
    }

    /// A client for `replicas` in that order.
    fn client(&self, replicas: &[&http::Uri], attempts: u32) -> Client {
        let tls = tls::client_config(&self.dir.path().join("ca.pem"), None).unwrap();
        let bases: Vec<http::Uri> = replicas.iter().map(|u| (*u).clone()).collect();
        Client::with_replicas(
            &bases,
            tls,
            ClientOptions {
                attempts,
                backoff_base: Duration::from_millis(1),
                backoff_max: Duration::from_millis(5),
                connect_timeout: Duration::from_secs(5),
                header_timeout: Duration::from_secs(5),
                ..ClientOptions::default()
            },
        )
        .unwrap()
    }

    /// A replica whose certificate chains to the trusted CA (or, if `trusted` is false, to
    /// the stranger: its handshakes fail).
    async fn replica(
        &mut self,
        behaviour: Behaviour,
        blob: Arc<Vec<u8>>,
        trusted: bool,
    ) -> Replica {
        let ca = if trusted {
            &mut self.trusted
        } else {
            &mut self.stranger
        };
        let issued = ca.issue_server(&["127.0.0.1"]).unwrap();
        let name = format!("server-{}", fastrand::u64(..));
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        fs_err::write(&cert, &issued.cert_pem).unwrap();
        fs_err::write(&key, &issued.key_pem).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                tls::load_certificates(&cert).unwrap(),
                tls::load_private_key(&key).unwrap(),
            )
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepts = accepted.clone();
        let task = tokio::spawn(async move {
            let mut to_drop = match behaviour {
                Behaviour::DropsFirst(n) => n,
                _ => 0,
            };
            while let Ok((tcp, _)) = listener.accept().await {
                accepts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if to_drop > 0 {
                    to_drop -= 1;
                    drop(tcp);
                    continue;
                }
                let acceptor = acceptor.clone();
                let log = log.clone();
                let blob = blob.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        answer(stream, behaviour, &blob, &log).await;
                    }
                });
            }
        });
        Replica {
            url: format!("https://127.0.0.1:{port}").parse().unwrap(),
            requests,
            accepted,
            task,
        }
    }
}

impl Replica {
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A URL nothing listens on: a port bound, then released.
async fn lost_replica() -> http::Uri {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("https://127.0.0.1:{port}").parse().unwrap()
}

/// Reads one request head and answers it as `behaviour` says, then closes.
async fn answer(
    mut stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    behaviour: Behaviour,
    blob: &[u8],
    log: &Mutex<Vec<String>>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    let range_start = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range: bytes=")
                .map(str::to_owned)
        })
        .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
    log.lock().unwrap().push(match range_start {
        Some(start) => format!("{path} from {start}"),
        None => path.clone(),
    });
    let (status, headers, body): (u16, String, &[u8]) = match behaviour {
        Behaviour::Status(status) => (status, String::new(), b""),
        _ if path == "/meta/timestamp.cose" => (200, String::new(), META),
        _ if path.contains("/blobs/") => match range_start {
            Some(start) if start < blob.len() => (
                206,
                format!(
                    "content-range: bytes {start}-{}/{}\r\n",
                    blob.len() - 1,
                    blob.len()
                ),
                &blob[start..],
            ),
            _ => (200, String::new(), blob),
        },
        _ => (404, String::new(), b""),
    };
    let sent = match behaviour {
        Behaviour::CutsAfter(n) => &body[..n.min(body.len())],
        _ => body,
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.write_all(sent).await;
    let _ = stream.flush().await;
    // A cut replica drops the TCP connection without a TLS close: as a killed process does.
    if matches!(behaviour, Behaviour::CutsAfter(_)) {
        let (tcp, _) = stream.into_inner();
        drop(tcp);
    } else {
        let _ = stream.shutdown().await;
    }
}

fn no_blob() -> Arc<Vec<u8>> {
    Arc::new(Vec::new())
}

#[tokio::test]
async fn fails_over_to_the_next_replica_on_connect_errors_handshake_failures_and_5xx() {
    let mut pki = Pki::new();
    let good = pki.replica(Behaviour::Serves, no_blob(), true).await;
    let broken = pki.replica(Behaviour::Status(503), no_blob(), true).await;
    let stranger = pki.replica(Behaviour::Serves, no_blob(), false).await;
    let lost = lost_replica().await;
    for (what, first) in [
        ("a refused connection", &lost),
        ("a 503", &broken.url),
        ("a failed TLS handshake", &stranger.url),
    ] {
        let client = pki.client(&[first, &good.url], 1);
        let meta = client.fetch_meta("timestamp.cose", 1024).await;
        assert_eq!(meta.unwrap().as_deref(), Some(META), "after {what}");
    }
    assert_eq!(good.requests().len(), 3);
    assert!(
        stranger.requests().is_empty(),
        "no request over a failed handshake"
    );
}

#[tokio::test]
async fn keeps_the_replica_that_works_instead_of_going_back_to_the_first() {
    let mut pki = Pki::new();
    let broken = pki.replica(Behaviour::Status(502), no_blob(), true).await;
    let good = pki.replica(Behaviour::Serves, no_blob(), true).await;
    let client = pki.client(&[&broken.url, &good.url], 3);
    for _ in 0..4 {
        let meta = client.fetch_meta("timestamp.cose", 1024).await.unwrap();
        assert_eq!(meta.as_deref(), Some(META));
    }
    assert_eq!(
        broken.requests().len(),
        1,
        "only the first request tried it"
    );
    assert_eq!(good.requests().len(), 4);
}

/// A 200,000-byte blob.
fn blob() -> Arc<Vec<u8>> {
    Arc::new((0..200_000u32).map(|i| (i % 251) as u8).collect())
}

/// Downloads `blob` with `client` into a fresh store, checks every byte and that none was
/// fetched twice, and returns the path the replicas were asked.
async fn download_whole(client: &Client, blob: &[u8]) -> String {
    let digest = Digest::sha256_of(blob);
    let (_dir, store) = crate::testing::store();
    let repository = Repository::parse("127.0.0.1_5000/team/app").unwrap();
    let mut ingest = store.ingest(&digest, blob.len() as u64).unwrap();
    let received = client
        .fetch_blob(&repository, &mut ingest, &Silent)
        .await
        .unwrap();
    ingest.commit().unwrap();
    assert_eq!(store.read(&digest).unwrap(), blob);
    assert_eq!(received, blob.len() as u64, "no byte fetched twice");
    format!("/v2/{repository}/blobs/{digest}")
}

#[tokio::test]
async fn a_blob_download_cut_on_one_replica_resumes_with_range_on_the_next() {
    let blob = blob();
    let mut pki = Pki::new();
    let cut = pki
        .replica(Behaviour::CutsAfter(70_000), blob.clone(), true)
        .await;
    let good = pki.replica(Behaviour::Serves, blob.clone(), true).await;
    let client = pki.client(&[&cut.url, &good.url], 2);
    let path = download_whole(&client, &blob).await;
    assert_eq!(cut.requests(), std::slice::from_ref(&path));
    assert_eq!(good.requests(), [format!("{path} from 70000")]);
}

#[tokio::test]
async fn a_body_cut_on_the_replica_failed_over_to_does_not_send_the_client_back_to_the_lost_one() {
    // The first replica is lost (it drops every connection before the handshake); the
    // survivor, busy with the lost one's devices, cuts one body. Going back to the replica
    // that just failed would cost the device an attempt (a fleet's concurrent requests, many),
    // so the cut download resumes on the survivor.
    let blob = blob();
    let mut pki = Pki::new();
    let lost = pki
        .replica(Behaviour::DropsFirst(usize::MAX), blob.clone(), true)
        .await;
    let survivor = pki
        .replica(Behaviour::CutsAfter(120_000), blob.clone(), true)
        .await;
    let client = pki.client(&[&lost.url, &survivor.url], 3);
    let path = download_whole(&client, &blob).await;
    assert_eq!(
        lost.accepted.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the lost replica was tried once"
    );
    assert_eq!(
        survivor.requests(),
        [path.clone(), format!("{path} from 120000")]
    );
}

#[tokio::test]
async fn a_device_every_replica_refuses_at_the_handshake_gives_up_after_one_round() {
    let mut pki = Pki::new();
    let first = pki.replica(Behaviour::Serves, no_blob(), false).await;
    let second = pki.replica(Behaviour::Serves, no_blob(), false).await;
    let client = pki.client(&[&first.url, &second.url], 5);
    let err = client.fetch_meta("timestamp.cose", 1024).await.unwrap_err();
    let Error::RetriesExhausted { attempts, last, .. } = &err else {
        panic!("expected to give up, got {err}");
    };
    assert_eq!(*attempts, 2, "one handshake per replica, no retries");
    assert!(matches!(**last, Error::Handshake { .. }), "{last}");
}

#[tokio::test]
async fn a_handshake_cut_by_the_facade_is_retried_on_the_same_replica() {
    // The facade closes a connection before the handshake when the device's address is over
    // its handshake budget (many devices behind one NAT): a reason to wait and try again,
    // unlike a certificate the device does not trust.
    let mut pki = Pki::new();
    let busy = pki.replica(Behaviour::DropsFirst(2), no_blob(), true).await;
    let client = pki.client(&[&busy.url], 5);
    let meta = client.fetch_meta("timestamp.cose", 1024).await.unwrap();
    assert_eq!(meta.as_deref(), Some(META));
    assert_eq!(busy.requests(), ["/meta/timestamp.cose"]);
}

#[tokio::test]
async fn too_many_requests_backs_off_on_the_same_replica_instead_of_failing_over() {
    let mut pki = Pki::new();
    let busy = pki.replica(Behaviour::Status(429), no_blob(), true).await;
    let good = pki.replica(Behaviour::Serves, no_blob(), true).await;
    let client = pki.client(&[&busy.url, &good.url], 2);
    let err = client.fetch_meta("timestamp.cose", 1024).await.unwrap_err();
    let Error::RetriesExhausted { last, .. } = &err else {
        panic!("expected the attempts to run out, got {err}");
    };
    assert!(
        matches!(**last, Error::Status { status: 429, .. }),
        "{last}"
    );
    assert_eq!(busy.requests().len(), 4, "attempts count per replica");
    assert!(good.requests().is_empty());
}

#[tokio::test]
async fn a_refusal_is_not_failed_over_since_every_replica_gives_the_same_answer() {
    let mut pki = Pki::new();
    let refusing = pki.replica(Behaviour::Status(403), no_blob(), true).await;
    let good = pki.replica(Behaviour::Serves, no_blob(), true).await;
    let client = pki.client(&[&refusing.url, &good.url], 3);
    let err = client.fetch_meta("timestamp.cose", 1024).await.unwrap_err();
    assert!(matches!(err, Error::Status { status: 403, .. }), "{err}");
    assert!(good.requests().is_empty());
}

#[tokio::test]
async fn giving_up_names_every_replica_tried_with_its_failure() {
    let mut pki = Pki::new();
    let lost = lost_replica().await;
    let broken = pki.replica(Behaviour::Status(500), no_blob(), true).await;
    let client = pki.client(&[&lost, &broken.url], 2);
    let err = client.fetch_meta("timestamp.cose", 1024).await.unwrap_err();
    let Error::RetriesExhausted { attempts, .. } = &err else {
        panic!("expected the attempts to run out, got {err}");
    };
    assert_eq!(*attempts, 4, "two attempts on each of two replicas");
    assert_eq!(broken.requests().len(), 2);
    let message = err.to_string();
    for url in [lost.to_string(), broken.url.to_string()] {
        let url = format!("{url}meta/timestamp.cose");
        assert!(message.contains(&url), "{url} not named in {message}");
    }
    assert!(message.contains("answered 500"), "{message}");
    assert!(message.contains("connecting to"), "{message}");
}
