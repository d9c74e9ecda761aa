//! A malicious upstream (a scripted server) against the facade: wrong bytes, bodies longer
//! than the content, a lying `Docker-Content-Digest`, a redirect to another host, endless
//! bodies. Each must end in an error or an aborted response, never in wrong bytes delivered
//! as a clean 200; and `Authorization` must never reach another origin.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions: a failed setup is a failed test"
)]

use std::sync::Arc;

use meshanics_shared::Digest;
use meshanics_tests::facade::{
    DeviceResponse, FacadeFixture, FacadeOptions, UpstreamEntry, device_path,
};
use meshanics_tests::oci_layout::pseudo_random;
use meshanics_tests::scripted::{Recorded, Reply, ScriptedServer, ok, reply};

const BLOB_SIZE: usize = 256 * 1024;

fn blob() -> Vec<u8> {
    pseudo_random(7, BLOB_SIZE)
}

fn upstream(script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> ScriptedServer {
    ScriptedServer::start(script).unwrap()
}

fn facade(upstream: &ScriptedServer, entry: UpstreamEntry, limits: &[&str]) -> FacadeFixture {
    let _ = upstream;
    FacadeFixture::start(&FacadeOptions {
        upstreams: vec![entry],
        limits: limits.iter().map(|l| (*l).to_owned()).collect(),
        ..FacadeOptions::default()
    })
    .unwrap()
}

/// What a device got: the status, the bytes before the body ended, and whether it ended
/// cleanly.
struct Outcome {
    status: u16,
    body: Vec<u8>,
    clean: bool,
    json: Option<serde_json::Value>,
}

fn fetch(
    facade: &FacadeFixture,
    upstream: &ScriptedServer,
    kind: &str,
    digest: &Digest,
    http2: bool,
) -> Outcome {
    let path = device_path(&upstream.host(), "team/app", kind, digest.as_ref());
    let response = facade
        .device_request(reqwest::Method::GET, &path, &[], http2)
        .unwrap();
    Outcome {
        json: serde_json::from_slice(&response.body).ok(),
        status: response.status,
        body: response.body,
        clean: response.clean,
    }
}

fn assert_never_clean_wrong_content(outcome: &Outcome, digest: &Digest) {
    let clean_ok = outcome.status == 200 && outcome.clean;
    assert!(
        !clean_ok || Digest::sha256_of(&outcome.body) == *digest,
        "wrong bytes delivered as a clean 200"
    );
}

#[test]
fn wrong_blob_bytes_abort_the_response_on_http1_and_http2() {
    let good = blob();
    let digest = Digest::sha256_of(&good);
    let mut evil = good;
    evil[BLOB_SIZE - 1] ^= 0xff;
    let server = upstream(move |_| Reply::Raw(ok(&evil, &[])));
    let facade = facade(&server, UpstreamEntry::anonymous(&server.host()), &[]);
    for http2 in [false, true] {
        let outcome = fetch(&facade, &server, "blobs", &digest, http2);
        assert_eq!(outcome.status, 200);
        assert!(!outcome.clean, "http2={http2}: the response ended cleanly");
        assert!(
            outcome.body.len() < BLOB_SIZE,
            "http2={http2}: every byte was delivered"
        );
        assert_never_clean_wrong_content(&outcome, &digest);
    }
    assert!(
        facade
            .metrics()
            .contains("facade_verification_failures_total{kind=\"mismatch\"} 2")
    );
}

#[test]
fn wrong_manifest_bytes_are_a_502_before_any_byte() {
    let digest = Digest::sha256_of(br#"{"schemaVersion":2}"#);
    let server = upstream(|_| Reply::Raw(ok(br#"{"schemaVersion":3}"#, &[])));
    let facade = facade(&server, UpstreamEntry::anonymous(&server.host()), &[]);
    let outcome = fetch(&facade, &server, "manifests", &digest, false);
    assert_eq!(outcome.status, 502);
    assert_eq!(outcome.json.unwrap()["errors"][0]["code"], "DIGEST_INVALID");
}

#[test]
fn bodies_longer_than_the_content_are_aborted() {
    let good = blob();
    let digest = Digest::sha256_of(&good);
    let mut longer = good;
    longer.extend_from_slice(b"and then some more bytes");
    // Announced with its (longer) length, and sent chunked without any length.
    let announced = longer.clone();
    let server = upstream(move |request| {
        if request.path.contains("chunked") {
            Reply::Raw(reply(
                200,
                &[("Transfer-Encoding", "chunked".into())],
                &chunked(&announced),
            ))
        } else {
            Reply::Raw(ok(&announced, &[]))
        }
    });
    let facade = facade(&server, UpstreamEntry::anonymous(&server.host()), &[]);
    let outcome = fetch(&facade, &server, "blobs", &digest, false);
    assert!(!outcome.clean, "announced longer body ended cleanly");
    assert!(outcome.body.len() < longer.len());
    assert_never_clean_wrong_content(&outcome, &digest);

    // The same through a path the script answers chunked (the repository name differs).
    let path = device_path(&server.host(), "team/chunked", "blobs", digest.as_ref());
    let DeviceResponse { status, clean, .. } = facade
        .device_request(reqwest::Method::GET, &path, &[], false)
        .unwrap();
    assert_eq!(status, 200);
    assert!(!clean, "chunked longer body ended cleanly");
}

#[test]
fn a_lying_docker_content_digest_is_refused() {
    let good = blob();
    let digest = Digest::sha256_of(&good);
    let other = Digest::sha256_of(b"other content");
    let server =
        upstream(move |_| Reply::Raw(ok(&good, &[("Docker-Content-Digest", other.to_string())])));
    let facade = facade(&server, UpstreamEntry::anonymous(&server.host()), &[]);
    for kind in ["blobs", "manifests"] {
        let outcome = fetch(&facade, &server, kind, &digest, false);
        assert_eq!(outcome.status, 502, "{kind}");
        assert_eq!(outcome.json.unwrap()["errors"][0]["code"], "DIGEST_INVALID");
    }
    assert!(
        facade
            .metrics()
            .contains("facade_verification_failures_total{kind=\"digest_header\"} 2")
    );
}

#[test]
fn redirects_to_another_host_never_carry_authorization() {
    let good = blob();
    let digest = Digest::sha256_of(&good);
    let content = good.clone();
    let storage = Arc::new(upstream(move |_| Reply::Raw(ok(&content, &[]))));
    let storage_url = storage.base_url();
    let registry = upstream(move |request| {
        if request.header("authorization").is_none() {
            return Reply::Raw(reply(
                401,
                &[
                    ("WWW-Authenticate", "Basic realm=\"test\"".into()),
                    ("Content-Length", "0".into()),
                ],
                b"",
            ));
        }
        Reply::Raw(reply(
            307,
            &[
                ("Location", format!("{storage_url}/storage/blob?sig=abc")),
                ("Content-Length", "0".into()),
            ],
            b"",
        ))
    });
    let facade = facade(
        &registry,
        UpstreamEntry::with_credentials(&registry.host(), "bot", "s3cret").storage(&storage.host()),
        &[],
    );
    let outcome = fetch(&facade, &registry, "blobs", &digest, false);
    assert_eq!(outcome.status, 200);
    assert!(outcome.clean);
    assert_eq!(outcome.body, good);
    let at_registry = registry.requests();
    assert!(
        at_registry
            .iter()
            .any(|r| r.header("authorization").is_some())
    );
    let at_storage = storage.requests();
    assert_eq!(at_storage.len(), 1);
    assert_eq!(at_storage[0].path, "/storage/blob?sig=abc");
    assert_eq!(
        at_storage[0].header("authorization"),
        None,
        "credentials leaked to storage"
    );
}

#[test]
fn an_endless_manifest_is_cut_off_with_a_502() {
    let digest = Digest::sha256_of(b"{}");
    let server = upstream(|_| Reply::EndlessChunked {
        head: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec(),
        chunk: vec![b' '; 16 * 1024],
    });
    let facade = facade(&server, UpstreamEntry::anonymous(&server.host()), &[]);
    let outcome = fetch(&facade, &server, "manifests", &digest, false);
    assert_eq!(outcome.status, 502);
    assert_eq!(outcome.json.unwrap()["errors"][0]["code"], "SIZE_INVALID");
}

#[test]
fn an_endless_blob_is_aborted_at_the_cap() {
    let digest = Digest::sha256_of(b"small");
    let server = upstream(|_| Reply::EndlessChunked {
        head: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec(),
        chunk: vec![b'x'; 16 * 1024],
    });
    let facade = facade(
        &server,
        UpstreamEntry::anonymous(&server.host()),
        &["max_unsized_blob_bytes = 1048576"],
    );
    let outcome = fetch(&facade, &server, "blobs", &digest, true);
    assert!(!outcome.clean);
    assert!(outcome.body.len() <= 1024 * 1024);
    assert!(
        facade
            .metrics()
            .contains("facade_verification_failures_total{kind=\"over_cap\"} 1")
    );
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(8192) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn a_redirect_loop_ends_in_a_502() {
    let digest = Digest::sha256_of(b"anything");
    let server = upstream(|request| {
        Reply::Raw(reply(
            302,
            &[
                ("Location", format!("{}-again", request.path)),
                ("Content-Length", "0".into()),
            ],
            b"",
        ))
    });
    let facade = facade(&server, UpstreamEntry::anonymous(&server.host()), &[]);
    let outcome = fetch(&facade, &server, "blobs", &digest, false);
    assert_eq!(outcome.status, 502);
    assert_eq!(outcome.json.unwrap()["errors"][0]["code"], "UNAVAILABLE");
    // The first request and five redirects, then the facade gives up.
    assert_eq!(server.requests().len(), 6);
}
