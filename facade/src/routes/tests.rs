use super::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn get(path: &str) -> Result<Route, Error> {
    route(&Method::GET, path, None)
}

fn content(route: Result<Route, Error>) -> ContentTarget {
    match route {
        Ok(Route::Content(target)) => target,
        other => panic!("not a content route: {other:?}"),
    }
}

#[test]
fn ping_answers_with_and_without_trailing_slash() {
    assert_eq!(get("/v2/").unwrap(), Route::Ping);
    assert_eq!(get("/v2").unwrap(), Route::Ping);
}

#[test]
fn reads_upstream_repository_kind_and_digest() {
    let target = content(get(&format!("/v2/ghcr.io/org/team/app/manifests/{DIGEST}")));
    assert_eq!(target.upstream.as_str(), "ghcr.io");
    assert_eq!(target.repository.as_str(), "org/team/app");
    assert_eq!(target.kind, ContentKind::Manifest);
    assert_eq!(target.digest.as_str(), DIGEST);
    let blob = content(route(
        &Method::HEAD,
        &format!("/v2/ghcr.io/org/app/blobs/{DIGEST}"),
        None,
    ));
    assert_eq!(blob.kind, ContentKind::Blob);
}

#[test]
fn reads_a_port_written_as_host_underscore_port() {
    let target = content(get(&format!("/v2/127.0.0.1_5000/team/app/blobs/{DIGEST}")));
    assert_eq!(target.upstream.as_str(), "127.0.0.1:5000");
    assert_eq!(target.repository.as_str(), "team/app");
}

#[test]
fn upstream_hosts_are_case_insensitive() {
    let target = content(get(&format!("/v2/GHCR.io/org/app/blobs/{DIGEST}")));
    assert_eq!(target.upstream.as_str(), "ghcr.io");
}

#[test]
fn docker_hub_single_names_are_library_images() {
    let target = content(get(&format!("/v2/docker.io/nginx/manifests/{DIGEST}")));
    assert!(target.upstream.is_docker_hub());
    assert_eq!(target.repository.as_str(), "library/nginx");
}

#[test]
fn reads_the_containerd_mirror_form() {
    let target = content(route(
        &Method::GET,
        &format!("/v2/team/app/manifests/{DIGEST}"),
        Some("ns=127.0.0.1%3A5000"),
    ));
    assert_eq!(target.upstream.as_str(), "127.0.0.1:5000");
    assert_eq!(target.repository.as_str(), "team/app");
    let hub = content(route(
        &Method::GET,
        &format!("/v2/library/nginx/blobs/{DIGEST}"),
        Some("ns=docker.io"),
    ));
    assert!(hub.upstream.is_docker_hub());
}

#[test]
fn refuses_tags_as_digest_only() {
    assert!(matches!(
        get("/v2/ghcr.io/org/app/manifests/latest"),
        Err(Error::DigestOnly { reference }) if reference == "latest"
    ));
}

#[test]
fn refuses_malformed_blob_digests() {
    for reference in ["sha256:abc", "md5:0123", "sha256:ABCDEF", "latest"] {
        assert!(
            matches!(
                get(&format!("/v2/ghcr.io/org/app/blobs/{reference}")),
                Err(Error::InvalidDigest { .. })
            ),
            "{reference}"
        );
    }
}

#[test]
fn refuses_malformed_names() {
    for path in [
        format!("/v2/ghcr.io/Org/App/manifests/{DIGEST}"),
        format!("/v2/ghcr.io/manifests/{DIGEST}"),
        format!("/v2/host_port/app/manifests/{DIGEST}"),
        format!("/v2/ghcr.io/a//b/manifests/{DIGEST}"),
        format!("/v2/ghcr.io/a/%2e%2e/manifests/{DIGEST}"),
    ] {
        assert!(
            matches!(get(&path), Err(Error::InvalidName { .. })),
            "{path}: {:?}",
            get(&path)
        );
    }
}

#[test]
fn unknown_paths_are_not_found() {
    for path in [
        "/",
        "/v1/",
        "/v2/_catalog",
        "/v2/ghcr.io/org/app/tags/list",
        "/v2/ghcr.io/org/app/blobs/uploads/",
        "/healthz",
    ] {
        assert!(
            matches!(get(path), Err(Error::NotFound { .. })),
            "{path}: {:?}",
            get(path)
        );
    }
    for path in [
        "/meta/",
        "/meta/../secret",
        "/meta/.hidden",
        "/meta/a/b",
        "/meta/1.root.cose/x",
        "/meta/%2e%2e",
    ] {
        assert!(
            matches!(get(path), Err(Error::MetaNotFound { .. })),
            "{path}: {:?}",
            get(path)
        );
    }
}

#[test]
fn writes_are_not_allowed() {
    for method in [Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
        assert!(matches!(
            route(
                &method,
                &format!("/v2/ghcr.io/org/app/blobs/{DIGEST}"),
                None
            ),
            Err(Error::MethodNotAllowed { .. })
        ));
    }
}

#[test]
fn meta_names_are_single_plain_files() {
    assert!(MetaName::parse(&format!("{}.root.cose", "1".repeat(300))).is_none());
    assert!(MetaName::parse("1.root.cose\\x").is_none());
    assert!(MetaName::parse("../1.root.cose").is_none());
}

#[test]
fn a_manifest_reference_that_is_neither_tag_nor_digest_is_manifest_unknown() {
    // `.INVALID_MANIFEST_NAME` is the nonexistent manifest of the released conformance suite
    // (v1.1), which expects 404; `sha256:totallywrong` may be 400 or 404 there.
    for reference in [
        ".INVALID_MANIFEST_NAME",
        "sha256:totallywrong",
        "sha256:1234",
        "md5:0123",
        "latest",
        "v1.2.3",
    ] {
        let error = get(&format!("/v2/ghcr.io/org/app/manifests/{reference}")).unwrap_err();
        let (status, code, _) = crate::respond::classify(&error);
        assert_eq!(
            (status.as_u16(), code),
            (404, "MANIFEST_UNKNOWN"),
            "{reference}"
        );
    }
}

#[test]
fn meta_serves_only_the_published_metadata_files() {
    for name in [
        "1.root.cose",
        "12.root.cose",
        "1.targets.cose",
        "7.targets.cose",
        "timestamp.cose",
    ] {
        assert_eq!(
            get(&format!("/meta/{name}")).unwrap(),
            Route::Meta(MetaName(name.into())),
            "{name}"
        );
    }
    for name in [
        "pins.json",
        "root.key",
        "timestamp.key",
        "root.cose",
        "targets.cose",
        "0.root.cose",
        "01.root.cose",
        "+1.root.cose",
        "1.timestamp.cose",
        "1.root.cose.tmp",
        "18446744073709551616.root.cose",
        "timestamp.cbor",
    ] {
        let route = get(&format!("/meta/{name}"));
        assert!(
            matches!(route, Err(Error::MetaNotFound { .. })),
            "{name}: {route:?}"
        );
    }
}
