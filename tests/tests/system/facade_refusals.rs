//! Every refusal of the device API, with its status and OCI error code, and the proof that
//! none of them reached the upstream: the approved upstream here records every request.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions: a failed setup is a failed test"
)]

use meshanics_shared::Digest;
use meshanics_tests::facade::{FacadeFixture, FacadeOptions, UpstreamEntry, Who};
use meshanics_tests::scripted::{Reply, ScriptedServer, ok};

struct Setup {
    upstream: ScriptedServer,
    facade: FacadeFixture,
}

fn setup() -> Setup {
    let upstream = ScriptedServer::start(|_| Reply::Raw(ok(b"{}", &[]))).unwrap();
    let facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::anonymous(&upstream.host())],
        metadata: vec![
            ("timestamp.cose".into(), b"signed timestamp".to_vec()),
            ("1.root.cose".into(), vec![0u8; 4096]),
            // Beside the published files, never served: what an operator's folder may hold.
            ("pins.json".into(), b"{}".to_vec()),
            ("root.key".into(), b"secret".to_vec()),
        ],
        limits: vec!["max_meta_bytes = 1024".into()],
        ..FacadeOptions::default()
    })
    .unwrap();
    Setup { upstream, facade }
}

fn request(s: &Setup, method: reqwest::Method, path: &str) -> (u16, Option<String>, Vec<u8>) {
    let client = s.facade.client(Who::Device, false).unwrap();
    s.facade.block_on(async {
        let response = client
            .request(method, s.facade.url(path))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap().to_vec();
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|j| j.pointer("/errors/0/code")?.as_str().map(str::to_owned));
        (status, code, body)
    })
}

#[test]
fn refusals_carry_their_oci_error_code_and_never_reach_the_upstream() {
    let s = setup();
    let up = s.upstream.host().replace(':', "_");
    let digest = Digest::sha256_of(b"{}");
    let cases: Vec<(reqwest::Method, String, u16, &str)> = vec![
        (
            reqwest::Method::GET,
            format!("/v2/{up}/team/app/manifests/latest"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            reqwest::Method::HEAD,
            format!("/v2/{up}/team/app/manifests/v1.2.3"),
            404,
            "",
        ),
        (
            reqwest::Method::GET,
            format!("/v2/{up}/team/app/manifests/sha256:1234"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            reqwest::Method::GET,
            format!("/v2/{up}/team/app/manifests/.INVALID_MANIFEST_NAME"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            reqwest::Method::GET,
            format!("/v2/{up}/team/app/blobs/latest"),
            400,
            "DIGEST_INVALID",
        ),
        (
            reqwest::Method::GET,
            format!("/v2/{up}/Team/App/manifests/{digest}"),
            400,
            "NAME_INVALID",
        ),
        (
            reqwest::Method::GET,
            format!("/v2/{up}/manifests/{digest}"),
            400,
            "NAME_INVALID",
        ),
        (
            reqwest::Method::GET,
            format!("/v2/registry.example/team/app/manifests/{digest}"),
            404,
            "NAME_UNKNOWN",
        ),
        (
            reqwest::Method::GET,
            format!("/v2/docker.io/library/nginx/blobs/{digest}"),
            404,
            "NAME_UNKNOWN",
        ),
        (
            reqwest::Method::GET,
            format!("/v2/team/app/blobs/{digest}?ns=ghcr.io"),
            404,
            "NAME_UNKNOWN",
        ),
        (
            reqwest::Method::GET,
            format!("/v2/{up}/team/app/tags/list"),
            404,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::GET,
            "/v2/_catalog".into(),
            404,
            "UNSUPPORTED",
        ),
        (reqwest::Method::GET, "/".into(), 404, "UNSUPPORTED"),
        (
            reqwest::Method::PUT,
            format!("/v2/{up}/team/app/manifests/{digest}"),
            405,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::POST,
            format!("/v2/{up}/team/app/blobs/uploads/"),
            404,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::DELETE,
            format!("/v2/{up}/team/app/blobs/{digest}"),
            405,
            "UNSUPPORTED",
        ),
        // The client resolves `..` first: this one asks for `/facade.toml`.
        (
            reqwest::Method::GET,
            "/meta/../facade.toml".into(),
            404,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::GET,
            "/meta/%2e%2e%2ffacade.toml".into(),
            404,
            "BLOB_UNKNOWN",
        ),
        (reqwest::Method::GET, "/meta/".into(), 404, "BLOB_UNKNOWN"),
        (
            reqwest::Method::GET,
            "/meta/2.root.cose".into(),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            reqwest::Method::GET,
            "/meta/pins.json".into(),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            reqwest::Method::GET,
            "/meta/root.key".into(),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            reqwest::Method::GET,
            "/meta/1.root.cose".into(),
            500,
            "UNAVAILABLE",
        ),
    ];
    for (method, path, status, code) in cases {
        let (got_status, got_code, body) = request(&s, method.clone(), &path);
        assert_eq!(
            got_status,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&body)
        );
        if method != reqwest::Method::HEAD {
            assert_eq!(got_code.as_deref(), Some(code), "{method} {path}");
        }
    }
    assert!(
        s.upstream.requests().is_empty(),
        "{:?}",
        s.upstream.requests()
    );
}

#[test]
fn the_digest_only_refusal_says_so() {
    let s = setup();
    let up = s.upstream.host().replace(':', "_");
    let (_, _, body) = request(
        &s,
        reqwest::Method::GET,
        &format!("/v2/{up}/team/app/manifests/latest"),
    );
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["errors"][0]["message"], "digest references only");
}

#[test]
fn ping_and_metadata_files_are_served() {
    let s = setup();
    let (status, _, body) = request(&s, reqwest::Method::GET, "/v2/");
    assert_eq!(status, 200);
    assert_eq!(body, b"{}");
    let (status, _, body) = request(&s, reqwest::Method::GET, "/meta/timestamp.cose");
    assert_eq!(status, 200);
    assert_eq!(body, b"signed timestamp");
    assert!(s.upstream.requests().is_empty());
}

#[test]
fn an_approved_upstream_is_asked_only_for_digests() {
    let s = setup();
    let up = s.upstream.host().replace(':', "_");
    let digest = Digest::sha256_of(b"{}");
    let (status, _, body) = request(
        &s,
        reqwest::Method::GET,
        &format!("/v2/{up}/team/app/manifests/{digest}"),
    );
    assert_eq!(status, 200);
    assert_eq!(body, b"{}");
    let requests = s.upstream.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, format!("/v2/team/app/manifests/{digest}"));
    let accept = requests[0].header("accept").unwrap();
    for media_type in [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ] {
        assert!(accept.contains(media_type), "{accept}");
    }
}
