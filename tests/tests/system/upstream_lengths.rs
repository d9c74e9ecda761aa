//! An upstream length that no content with the digest asked for can have (0 bytes for any
//! digest but the empty content's, or more than 0 for the empty content's) is refused before
//! the device gets any header: over HTTP/1.1 a `Content-Length: 0` answer is complete as soon
//! as its head is sent, so a later abort could not tell the device it got nothing good.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions: a failed setup is a failed test"
)]

use meshanics_shared::Digest;
use meshanics_tests::facade::{FacadeFixture, UpstreamEntry, device_path};
use meshanics_tests::scripted::{Reply, ScriptedServer, ok, reply};

fn facade(upstream: &ScriptedServer) -> FacadeFixture {
    FacadeFixture::with_upstream(UpstreamEntry::anonymous(&upstream.host())).unwrap()
}

/// Status, error code and whether the body ended cleanly, for `method` on `kind`/`digest`.
fn ask(
    facade: &FacadeFixture,
    upstream: &ScriptedServer,
    method: reqwest::Method,
    kind: &str,
    digest: &Digest,
    http2: bool,
) -> (u16, Option<String>, Vec<u8>, bool) {
    let path = device_path(&upstream.host(), "team/app", kind, digest.as_ref());
    let response = facade.device_request(method, &path, &[], http2).unwrap();
    let code = serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|j| j.pointer("/errors/0/code")?.as_str().map(str::to_owned));
    (response.status, code, response.body, response.clean)
}

#[test]
fn an_upstream_zero_length_for_a_non_empty_digest_is_refused_before_headers() {
    let upstream = ScriptedServer::start(|_| Reply::Raw(ok(b"", &[]))).unwrap();
    let facade = facade(&upstream);
    let digest = Digest::sha256_of(b"a blob that is not empty");
    for http2 in [false, true] {
        for kind in ["blobs", "manifests"] {
            let (status, code, body, clean) = ask(
                &facade,
                &upstream,
                reqwest::Method::GET,
                kind,
                &digest,
                http2,
            );
            assert_eq!(
                status,
                502,
                "GET {kind} http2={http2}: {}",
                String::from_utf8_lossy(&body)
            );
            assert!(clean, "GET {kind} http2={http2}: the refusal was aborted");
            assert_eq!(code.as_deref(), Some("DIGEST_INVALID"), "GET {kind}");
            let (status, ..) = ask(
                &facade,
                &upstream,
                reqwest::Method::HEAD,
                kind,
                &digest,
                http2,
            );
            assert_eq!(status, 502, "HEAD {kind} http2={http2}");
        }
    }
}

#[test]
fn an_upstream_length_for_the_empty_digest_must_be_zero() {
    let empty = Digest::sha256_of(b"");
    let upstream = ScriptedServer::start(|_| {
        Reply::Raw(reply(200, &[("Content-Length", "5".into())], b"12345"))
    })
    .unwrap();
    let facade = facade(&upstream);
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let (status, code, ..) = ask(&facade, &upstream, method.clone(), "blobs", &empty, false);
        assert_eq!(status, 502, "{method}");
        if method == reqwest::Method::GET {
            assert_eq!(code.as_deref(), Some("DIGEST_INVALID"));
        }
    }
}

#[test]
fn the_empty_blob_is_served_with_its_zero_length() {
    let empty = Digest::sha256_of(b"");
    let upstream = ScriptedServer::start(|_| Reply::Raw(ok(b"", &[]))).unwrap();
    let facade = facade(&upstream);
    for http2 in [false, true] {
        let (status, _, body, clean) = ask(
            &facade,
            &upstream,
            reqwest::Method::GET,
            "blobs",
            &empty,
            http2,
        );
        assert_eq!((status, body.len(), clean), (200, 0, true), "http2={http2}");
    }
}
