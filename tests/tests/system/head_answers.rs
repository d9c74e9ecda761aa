//! No answer to a `HEAD` carries a body, on either protocol, refusals included, and every one
//! keeps the status and `Content-Length` of the `GET`. Over HTTP/2 the HEADERS frame must end
//! the stream (RFC 9113 section 8.1.1): checked at the frame level with an h2 client (hyper's,
//! which reports END_STREAM on HEADERS as an ended body) and with curl, a real client that
//! fails with PROTOCOL_ERROR when a HEAD answer has DATA. Over HTTP/1.1, on the raw bytes.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions: a failed setup is a failed test"
)]

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshanics_shared::Digest;
use meshanics_tests::facade::{FacadeFixture, FacadeOptions, UpstreamEntry, Who};
use meshanics_tests::scripted::{Reply, ScriptedServer, ok};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

struct Setup {
    // Kept alive for the facade's upstream requests.
    _upstream: ScriptedServer,
    facade: FacadeFixture,
    /// Paths every kind of answer comes from: served, refused, unrouted, missing.
    paths: Vec<String>,
}

fn setup() -> Setup {
    let upstream = ScriptedServer::start(|_| Reply::Raw(ok(MANIFEST, &[]))).unwrap();
    let facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::anonymous(&upstream.host())],
        metadata: vec![("timestamp.cose".into(), b"signed timestamp".to_vec())],
        ..FacadeOptions::default()
    })
    .unwrap();
    let up = upstream.host().replace(':', "_");
    let digest = Digest::sha256_of(MANIFEST);
    let paths = vec![
        "/v2/".to_owned(),
        "/meta/timestamp.cose".to_owned(),
        "/meta/2.root.cose".to_owned(),
        format!("/v2/{up}/team/app/manifests/{digest}"),
        format!("/v2/registry.example/team/app/manifests/{digest}"),
        format!("/v2/{up}/Team/App/manifests/{digest}"),
        format!("/v2/{up}/team/app/manifests/latest"),
        format!("/v2/{up}/team/app/blobs/latest"),
        "/v2/_catalog".to_owned(),
    ];
    Setup {
        _upstream: upstream,
        facade,
        paths,
    }
}

/// An HTTP/2 connection to the facade with the device certificate.
async fn h2_connection(
    facade: &FacadeFixture,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let mut config = facade.tls_config(Who::Device).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(facade.device_addr())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

fn request(
    method: http::Method,
    facade: &FacadeFixture,
    path: &str,
) -> http::Request<Empty<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(facade.url(path))
        .body(Empty::new())
        .unwrap()
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[test]
fn head_answers_over_http2_end_the_stream_with_the_headers() {
    let s = setup();
    s.facade.block_on(async {
        let mut sender = h2_connection(&s.facade).await;
        for path in &s.paths {
            let get = sender
                .send_request(request(http::Method::GET, &s.facade, path))
                .await
                .unwrap();
            let get_status = get.status();
            let get_body = get.into_body().collect().await.unwrap().to_bytes();

            let head = sender
                .send_request(request(http::Method::HEAD, &s.facade, path))
                .await
                .unwrap();
            // The body of an h2 response has ended before any read exactly when the HEADERS
            // frame carried END_STREAM.
            assert!(
                head.body().is_end_stream(),
                "HEAD {path} ({}): HEADERS without END_STREAM",
                head.status()
            );
            assert_eq!(head.status(), get_status, "HEAD {path}");
            assert_eq!(
                content_length(head.headers()),
                Some(get_body.len() as u64),
                "HEAD {path}: Content-Length is not the GET's"
            );
        }
    });
}

#[test]
fn curl_over_http2_reads_every_head_answer_cleanly() {
    let s = setup();
    let certs = s.facade.cert_dir(Who::Device).unwrap();
    let client = s.facade.client(Who::Device, true).unwrap();
    for path in &s.paths {
        let (get_status, get_length) = s.facade.block_on(async {
            let response = client.get(s.facade.url(path)).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.bytes().await.unwrap().len())
        });
        let output = std::process::Command::new("curl")
            .args([
                "--http2",
                "--silent",
                "--show-error",
                "--head",
                "--noproxy",
                "*",
            ])
            .arg("--cacert")
            .arg(certs.join("ca.crt"))
            .arg("--cert")
            .arg(certs.join("client.cert"))
            .arg("--key")
            .arg(certs.join("client.key"))
            .arg(s.facade.url(path))
            .output()
            .unwrap();
        let headers = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
        assert!(
            output.status.success(),
            "curl --http2 --head {path}: {}\n{headers}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            headers.starts_with(&format!("http/2 {get_status}")),
            "HEAD {path}: {headers}"
        );
        assert!(
            headers.contains(&format!("\ncontent-length: {get_length}\r\n")),
            "HEAD {path}: Content-Length is not the GET's {get_length}: {headers}"
        );
    }
}

#[test]
fn head_answers_over_http1_have_no_body_and_the_length_of_the_get() {
    let s = setup();
    let config = Arc::new(s.facade.tls_config(Who::Device).unwrap());
    let client = s.facade.client(Who::Device, false).unwrap();
    for path in &s.paths {
        let get_length = s.facade.block_on(async {
            let response = client.get(s.facade.url(path)).send().await.unwrap();
            response.bytes().await.unwrap().len()
        });
        // The raw answer: what a HEAD gets is the head and nothing after it.
        let raw = s.facade.block_on(async {
            let tcp = tokio::net::TcpStream::connect(s.facade.device_addr())
                .await
                .unwrap();
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .unwrap();
            let head = format!(
                "HEAD {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                s.facade.host()
            );
            tls.write_all(head.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            // The facade closes after answering (`Connection: close`); a TLS close without
            // close_notify still ends the read.
            let _ = tls.read_to_end(&mut raw).await;
            raw
        });
        let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        assert!(rest.is_empty(), "HEAD {path} carried a body: {rest:?}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {get_length}")),
            "HEAD {path}: Content-Length is not the GET's {get_length}: {head}"
        );
    }
}
