//! The facade's connection budgets against real clients: sockets that never send a
//! ClientHello cannot keep a device from pulling, a source address over its handshake cap is
//! closed while others handshake, a device over its connection cap is closed after the
//! handshake, a device over its stream cap gets 429 with Retry-After, and a connection that
//! only sends HTTP/2 PINGs is closed when idle.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions: a failed setup is a failed test"
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshanics_tests::facade::{
    FacadeFixture, FacadeOptions, UpstreamEntry, Who, device_repository,
};
use meshanics_tests::oci_layout::SampleImage;
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::skopeo;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpSocket, TcpStream};

/// Another loopback address (all of 127.0.0.0/8 is local on Linux): the flood's source, so
/// that the per-source cap tells it from the device on 127.0.0.1.
const OTHER_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A TCP connection to `addr` from `source` that sends nothing.
async fn idle_socket(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// The value of the sample `name` (with its labels) in the metrics text, 0 if absent.
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Polls the facade's metrics until `done` holds (a bounded wait for the facade to take in
/// what the test sent; the assertions that follow say what must hold).
fn wait_until(facade: &FacadeFixture, done: impl Fn(&str) -> bool) {
    for _ in 0..500 {
        if done(&facade.metrics()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls the facade's metrics until `name` reads `value`.
fn wait_for(facade: &FacadeFixture, name: &str, value: u64) {
    wait_until(facade, |metrics| sample(metrics, name) == value);
}

const IN_PROGRESS: &str = "facade_handshakes_in_progress";
const SOURCE_CAP: &str = "facade_refused_handshakes_total{reason=\"source_cap\"}";
/// Sockets in the flood: many more than `max_connections` (4), and fewer than the listen
/// backlog (128) takes beside them, so that on a facade that accepts no more the flood
/// still connects and the device's connection is queued behind it.
const FLOOD: u64 = 100;

/// Whether the server closed `stream` (EOF or a reset) rather than keeping it open; waits
/// generously, since the outcome is the point, not its timing.
async fn closed_by_server(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buffer)).await;
    matches!(read, Ok(Ok(0) | Err(_)))
}

#[test]
fn idle_tcp_connections_without_a_handshake_do_not_stop_a_devices_pull() {
    let work = tempfile::tempdir().unwrap();
    let built = SampleImage::multi_arch(&["linux/amd64"], 256 * 1024, 64 * 1024)
        .unwrap()
        .write_layout(&work.path().join("src"), "v1")
        .unwrap();
    let registry = RegistryServer::start(&Options::default()).unwrap();
    skopeo::push_layout(&built.dir, "v1", &registry.host(), "team/app").unwrap();
    // Four connection slots, and handshakes that would wait an hour: the flood below holds
    // its sockets open for the whole test.
    let facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::anonymous(&registry.host())],
        limits: vec![
            "max_connections = 4".into(),
            "handshake_timeout = \"1h\"".into(),
        ],
        ..FacadeOptions::default()
    })
    .unwrap();
    let flood: Vec<TcpStream> = facade.block_on(async {
        let mut flood = Vec::new();
        for _ in 0..FLOOD {
            flood.push(idle_socket(OTHER_SOURCE, facade.device_addr()).await);
        }
        flood
    });
    // Each socket either waits for its ClientHello or was closed for its source's cap.
    wait_until(&facade, |metrics| {
        sample(metrics, IN_PROGRESS) + sample(metrics, SOURCE_CAP) == FLOOD
    });

    let out = work.path().join("out");
    facade
        .skopeo_pull(
            Who::Device,
            &device_repository(&registry.host(), "team/app"),
            built.index.digest.as_str(),
            &out,
        )
        .unwrap();
    for (digest, size) in &built.all_blobs {
        let pulled = std::fs::read(out.join("blobs/sha256").join(digest.hex())).unwrap();
        assert_eq!(pulled.len() as u64, *size, "{digest}");
        assert_eq!(pulled, built.blob(digest).unwrap(), "{digest}");
    }
    let metrics = facade.metrics();
    // The flood was still there during the pull: its source held the 8 turns of its own and
    // at most the free half of the 128 (64 in all, give or take a race), the rest closed.
    let waiting = sample(&metrics, IN_PROGRESS);
    assert!((8..=70).contains(&waiting), "{metrics}");
    assert_eq!(waiting + sample(&metrics, SOURCE_CAP), FLOOD, "{metrics}");
    drop(flood);
}

#[test]
fn a_source_over_its_handshake_cap_is_closed_at_once_while_other_sources_handshake() {
    let facade = FacadeFixture::start(&FacadeOptions {
        // Two turns per source, and no free half to borrow from once a source holds them.
        limits: vec![
            "max_handshakes = 4".into(),
            "max_handshakes_per_source = 2".into(),
            "handshake_timeout = \"1h\"".into(),
        ],
        ..FacadeOptions::default()
    })
    .unwrap();
    let addr = facade.device_addr();
    let held = facade.block_on(async {
        vec![
            idle_socket(OTHER_SOURCE, addr).await,
            idle_socket(OTHER_SOURCE, addr).await,
        ]
    });
    wait_for(&facade, IN_PROGRESS, 2);
    let third_closed = facade.block_on(async {
        let mut third = idle_socket(OTHER_SOURCE, addr).await;
        closed_by_server(&mut third).await
    });
    assert!(
        third_closed,
        "a third handshake from one source was let wait"
    );
    let metrics = facade.metrics();
    assert_eq!(sample(&metrics, IN_PROGRESS), 2, "{metrics}");
    assert_eq!(sample(&metrics, SOURCE_CAP), 1, "{metrics}");
    // A device from another address still gets in while the two wait.
    let client = facade.client(Who::Device, false).unwrap();
    let status = facade.block_on(async { client.get(facade.url("/v2/")).send().await });
    assert_eq!(status.unwrap().status(), 200);
    // The two were not closed: the source's turns are still theirs.
    let metrics = facade.metrics();
    assert_eq!(sample(&metrics, IN_PROGRESS), 2, "{metrics}");
    drop(held);
}

/// A TLS connection with the device certificate that sends nothing after its handshake.
async fn device_tls(facade: &FacadeFixture) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = Arc::new(facade.tls_config(Who::Device).unwrap());
    let tcp = TcpStream::connect(facade.device_addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap()
}

#[test]
fn a_device_over_its_connection_cap_is_closed_after_the_handshake() {
    let facade = FacadeFixture::start(&FacadeOptions {
        limits: vec!["max_connections_per_device = 2".into()],
        ..FacadeOptions::default()
    })
    .unwrap();
    let held =
        facade.block_on(async { vec![device_tls(&facade).await, device_tls(&facade).await] });
    wait_for(&facade, "facade_open_connections", 2);
    let closed = facade.block_on(async {
        let mut third = device_tls(&facade).await;
        closed_by_server(&mut third).await
    });
    assert!(closed, "a third connection of one device was served");
    let metrics = facade.metrics();
    assert_eq!(
        sample(
            &metrics,
            "facade_refused_connections_total{reason=\"device_cap\"}"
        ),
        1,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "facade_open_connections"), 2, "{metrics}");
    // One closed, a new connection of the device is served again.
    drop(held);
    wait_for(&facade, "facade_open_connections", 0);
    let client = facade.client(Who::Device, false).unwrap();
    let status = facade.block_on(async { client.get(facade.url("/v2/")).send().await });
    assert_eq!(status.unwrap().status(), 200);
}

#[test]
fn a_connection_that_only_sends_pings_is_closed_when_idle() {
    let facade = FacadeFixture::start(&FacadeOptions {
        limits: vec!["idle_timeout = 1".into()],
        ..FacadeOptions::default()
    })
    .unwrap();
    let ended = facade.block_on(async {
        let mut config = facade.tls_config(Who::Device).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(facade.device_addr()).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        // PINGs every 100 ms, idle or not, as the agent's keep-alive does (less often).
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_millis(100))
                .keep_alive_while_idle(true)
                .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let request = http::Request::builder()
            .uri(facade.url("/v2/"))
            .body(Empty::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
        // Generous: the test is about the connection being closed, not about when.
        tokio::time::timeout(Duration::from_secs(60), connection)
            .await
            .is_ok()
    });
    assert!(
        ended,
        "a connection kept open by PINGs alone was never closed"
    );
}

#[test]
fn a_device_over_its_stream_cap_gets_429_with_retry_after_until_a_stream_ends() {
    // 8 MiB: more than the send buffers and socket buffers hold, so a response the client
    // does not read stays in progress.
    let big = meshanics_tests::oci_layout::pseudo_random(7, 8 * 1024 * 1024);
    let facade = FacadeFixture::start(&FacadeOptions {
        limits: vec!["max_streams_per_device = 1".into()],
        metadata: vec![("timestamp.cose".into(), big.clone())],
        ..FacadeOptions::default()
    })
    .unwrap();
    let first = facade.client(Who::Device, false).unwrap();
    let second = facade.client(Who::Device, true).unwrap();
    facade.block_on(async {
        let unread = first
            .get(facade.url("/meta/timestamp.cose"))
            .send()
            .await
            .unwrap();
        assert_eq!(unread.status(), 200);
        // The device's one stream is taken, on another connection: refused, with a retry time.
        let refused = second.get(facade.url("/v2/")).send().await.unwrap();
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()["retry-after"], "1");
        let body: serde_json::Value =
            serde_json::from_slice(&refused.bytes().await.unwrap()).unwrap();
        assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
        // The stream read to its end frees the share: the retry is served.
        assert_eq!(unread.bytes().await.unwrap().len(), big.len());
        let mut status = 0;
        for _ in 0..100 {
            status = second
                .get(facade.url("/v2/"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status, 200);
    });
    let metrics = facade.metrics();
    assert!(
        sample(
            &metrics,
            "facade_refused_streams_total{reason=\"device_cap\"}"
        ) >= 1,
        "{metrics}"
    );
}
