//! Operating the facade: health and Prometheus metrics on the operator listener (not the
//! device port), and graceful shutdown that lets a stream in flight finish.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions: a failed setup is a failed test"
)]

use std::time::Duration;

use meshanics_shared::Digest;
use meshanics_tests::facade::{FacadeFixture, FacadeOptions, UpstreamEntry, Who};
use meshanics_tests::oci_layout::pseudo_random;
use meshanics_tests::scripted::{Reply, ScriptedServer, reply};

fn plain_get(facade: &FacadeFixture, url: String) -> (u16, String) {
    facade.block_on(async {
        let response = facade
            .plain_client()
            .unwrap()
            .get(url)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    })
}

#[test]
fn health_and_metrics_are_on_the_operator_listener_only() {
    let facade = FacadeFixture::start(&FacadeOptions::default()).unwrap();
    let (status, body) = plain_get(&facade, facade.operator_url("/healthz"));
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let client = facade.client(Who::Device, false).unwrap();
    let device = facade
        .block_on(client.get(facade.url("/metrics")).send())
        .unwrap();
    assert_eq!(device.status(), 404);
    let ping = facade
        .block_on(client.get(facade.url("/v2/")).send())
        .unwrap();
    assert_eq!(ping.status(), 200);

    let (status, metrics) = plain_get(&facade, facade.operator_url("/metrics"));
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE facade_requests_total counter"),
        "{metrics}"
    );
    assert!(
        metrics.contains("facade_requests_total{route=\"ping\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("facade_requests_total{route=\"unrouted\",status=\"404\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE facade_upstream_latency_seconds histogram"),
        "{metrics}"
    );
}

#[test]
fn shutdown_lets_a_stream_in_flight_finish_and_stops_accepting() {
    let body = pseudo_random(3, 64 * 1024);
    let digest = Digest::sha256_of(&body);
    let content = body.clone();
    let upstream = ScriptedServer::start(move |_| Reply::Slow {
        head: reply(200, &[("Content-Length", content.len().to_string())], b""),
        body: content.clone(),
        parts: 8,
        pause: Duration::from_millis(300),
    })
    .unwrap();
    let mut facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::anonymous(&upstream.host())],
        ..FacadeOptions::default()
    })
    .unwrap();
    let client = facade.client(Who::Device, false).unwrap();
    let url = facade.url(&format!(
        "/v2/{}/team/app/blobs/{digest}",
        upstream.host().replace(':', "_")
    ));
    let mut response = facade.block_on(client.get(&url).send()).unwrap();
    assert_eq!(response.status(), 200);
    let first = facade.block_on(response.chunk()).unwrap().unwrap();

    facade.begin_shutdown();
    // The listener closes: a new connection is refused (retry while the shutdown starts).
    let fresh = facade.client(Who::Device, false).unwrap();
    let refused = facade.block_on(async {
        for _ in 0..50 {
            if fresh.get(facade.url("/v2/")).send().await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    });
    assert!(refused, "the facade kept accepting after shutdown began");
    // While the stream drains, the operator side says so.
    let (status, health) = plain_get(&facade, facade.operator_url("/healthz"));
    assert_eq!((status, health.as_str()), (503, "draining\n"));

    let mut received = first.to_vec();
    facade.block_on(async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            received.extend_from_slice(&chunk);
        }
    });
    assert_eq!(received, body, "the stream in flight did not finish intact");
}

#[test]
fn a_connection_that_sends_nothing_is_closed() {
    let facade = FacadeFixture::start(&FacadeOptions {
        limits: vec!["idle_timeout = 1".into(), "header_timeout = 1".into()],
        ..FacadeOptions::default()
    })
    .unwrap();
    let config = std::sync::Arc::new(facade.tls_config(Who::Device).unwrap());
    let closed = facade.block_on(async {
        use tokio::io::AsyncReadExt as _;
        let tcp = tokio::net::TcpStream::connect(facade.device_addr())
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        let mut buffer = [0u8; 64];
        // Generous: the test is about the connection being closed, not about when.
        let read = tokio::time::timeout(Duration::from_secs(60), tls.read(&mut buffer)).await;
        matches!(read, Ok(Ok(0) | Err(_)))
    });
    assert!(closed, "the idle connection stayed open");
}

#[test]
fn connections_past_the_limit_wait_for_a_free_slot() {
    let facade = FacadeFixture::start(&FacadeOptions {
        limits: vec!["max_connections = 1".into()],
        ..FacadeOptions::default()
    })
    .unwrap();
    let first = facade.client(Who::Device, false).unwrap();
    let second = facade.client(Who::Device, false).unwrap();
    let url = facade.url("/v2/");
    facade.block_on(async {
        // The first client keeps its connection open (pooled) after its request.
        assert_eq!(first.get(&url).send().await.unwrap().status(), 200);
        let waiting = second.get(&url).send();
        tokio::pin!(waiting);
        // Not admitted while the first connection holds the only slot.
        let early = tokio::time::timeout(Duration::from_millis(500), &mut waiting).await;
        assert!(
            early.is_err(),
            "a second connection was served past the limit"
        );
        drop(first);
        let response = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the second connection was never admitted")
            .unwrap();
        assert_eq!(response.status(), 200);
    });
}
