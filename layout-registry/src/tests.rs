use std::sync::Arc;

use meshanics_shared::Digest;
use serde_json::json;

use super::{Ask, LayoutRegistry, parse_path, serve};

/// A layout folder `ROOT/demo/app` with one image: a manifest (tagged `1.0` and `latest`), a
/// config and a 100 000-byte layer.
struct Fixture {
    root: tempfile::TempDir,
    manifest: Digest,
    manifest_bytes: Vec<u8>,
    layer: Digest,
    layer_bytes: Vec<u8>,
}

fn write_blob(dir: &std::path::Path, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256_of(bytes);
    let path = dir.join("blobs/sha256").join(digest.hex());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    digest
}

fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("demo/app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let layer_bytes: Vec<u8> = (0..100_000_u32).map(|i| (i % 251) as u8).collect();
    let layer = write_blob(&dir, &layer_bytes);
    let config = write_blob(&dir, b"{}");
    let manifest_bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.as_str(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.as_str(), "size": layer_bytes.len()}],
    }))
    .unwrap();
    let manifest = write_blob(&dir, &manifest_bytes);
    let entry = |tag: &str| {
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest.as_str(),
               "size": manifest_bytes.len(), "annotations": {"org.opencontainers.image.ref.name": tag}})
    };
    let index =
        json!({"schemaVersion": 2, "manifests": [entry("latest"), entry("1.0"), entry("0.9")]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Fixture {
        root,
        manifest,
        manifest_bytes,
        layer,
        layer_bytes,
    }
}

/// Starts the registry on 127.0.0.1:0; the returned sender stops it.
async fn start(
    root: &std::path::Path,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let registry = Arc::new(LayoutRegistry::open(root).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve(listener, registry, async move {
        let _ = stopped.await;
    }));
    (base, stop, task)
}

/// A plain-HTTP client (reqwest is built without a TLS provider of its own).
fn client() -> reqwest::Client {
    let tls =
        meshanics_shared::tls::client_config_from(rustls::RootCertStore::empty(), None).unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn json_body(response: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[test]
fn splits_registry_paths_into_what_they_ask_for() {
    assert_eq!(parse_path("/v2/"), Some(Ask::Base));
    assert_eq!(parse_path("/v2"), Some(Ask::Base));
    assert_eq!(
        parse_path("/v2/org/app/tags/list"),
        Some(Ask::Tags("org/app"))
    );
    assert_eq!(
        parse_path("/v2/org/app/manifests/1.0"),
        Some(Ask::Manifest("org/app", "1.0"))
    );
    assert_eq!(
        parse_path("/v2/a/blobs/sha256:ab"),
        Some(Ask::Blob("a", "sha256:ab"))
    );
    assert_eq!(parse_path("/v1/a/blobs/x"), None);
    assert_eq!(parse_path("/v2/a/uploads/"), None);
}

#[test]
fn refuses_a_root_that_is_not_a_folder() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let error = LayoutRegistry::open(file.path()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&file.path().display().to_string())
    );
    assert!(LayoutRegistry::open(std::path::Path::new("/nonexistent/layouts")).is_err());
}

#[test]
fn lists_the_layouts_under_the_root_with_their_tags() {
    let fixture = fixture();
    let registry = LayoutRegistry::open(fixture.root.path()).unwrap();
    assert_eq!(
        registry.repositories(),
        vec![(
            "demo/app".to_owned(),
            vec!["0.9".to_owned(), "1.0".to_owned(), "latest".to_owned()]
        )]
    );
}

#[tokio::test]
async fn serves_tags_manifests_and_blobs_as_a_registry_does() {
    let fixture = fixture();
    let (base, stop, task) = start(fixture.root.path()).await;
    let client = client();

    let base_answer = client.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(base_answer.status(), 200);
    assert_eq!(
        base_answer.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    let tags: serde_json::Value = json_body(
        client
            .get(format!("{base}/v2/demo/app/tags/list"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        tags,
        json!({"name": "demo/app", "tags": ["0.9", "1.0", "latest"]})
    );

    let page = client
        .get(format!("{base}/v2/demo/app/tags/list?n=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.headers()["link"],
        "</v2/demo/app/tags/list?n=2&last=1.0>; rel=\"next\""
    );
    let next: serde_json::Value = json_body(
        client
            .get(format!("{base}/v2/demo/app/tags/list?n=2&last=1.0"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(next["tags"], json!(["latest"]));

    for reference in ["1.0", fixture.manifest.as_str()] {
        let manifest = client
            .get(format!("{base}/v2/demo/app/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(manifest.status(), 200, "{reference}");
        assert_eq!(
            manifest.headers()["content-type"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            manifest.headers()["docker-content-digest"],
            fixture.manifest.as_str()
        );
        assert_eq!(manifest.bytes().await.unwrap(), fixture.manifest_bytes);
    }

    let blob_url = format!("{base}/v2/demo/app/blobs/{}", fixture.layer);
    let head = client.head(&blob_url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "100000");
    let blob = client.get(&blob_url).send().await.unwrap();
    assert_eq!(blob.bytes().await.unwrap(), fixture.layer_bytes);

    let part = client
        .get(&blob_url)
        .header("range", "bytes=99000-")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 99000-99999/100000");
    assert_eq!(part.bytes().await.unwrap(), fixture.layer_bytes[99_000..]);

    let beyond = client
        .get(&blob_url)
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
    assert_eq!(beyond.headers()["content-range"], "bytes */100000");
    // The distribution spec has no RANGE_INVALID: a range past the end is SIZE_INVALID.
    assert_eq!(json_body(beyond).await["errors"][0]["code"], "SIZE_INVALID");

    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn answers_unknown_names_content_and_writes_with_oci_errors() {
    let fixture = fixture();
    let (base, stop, task) = start(fixture.root.path()).await;
    let client = client();
    let missing = Digest::sha256_of(b"not here");
    let cases = [
        (
            "GET",
            "/v2/other/app/tags/list".to_owned(),
            404,
            "NAME_UNKNOWN",
        ),
        (
            "GET",
            "/v2/demo/app/manifests/2.0".to_owned(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            format!("/v2/demo/app/manifests/{missing}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            format!("/v2/demo/app/blobs/{missing}"),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            "GET",
            "/v2/demo/app/blobs/sha256:zz".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/Demo/App/tags/list".to_owned(),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/demo/app/tags/list?n=x".to_owned(),
            400,
            "PAGINATION_NUMBER_INVALID",
        ),
        (
            "PUT",
            "/v2/demo/app/manifests/1.0".to_owned(),
            405,
            "UNSUPPORTED",
        ),
        (
            "GET",
            "/v2/demo/app/uploads/".to_owned(),
            404,
            "UNSUPPORTED",
        ),
    ];
    for (method, path, status, code) in cases {
        let response = client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        let body: serde_json::Value = json_body(response).await;
        assert_eq!(body["errors"][0]["code"], code, "{method} {path}");
    }
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[test]
fn never_resolves_a_name_outside_the_root() {
    let fixture = fixture();
    let registry = LayoutRegistry::open(&fixture.root.path().join("demo")).unwrap();
    for name in [
        "../demo/app",
        "app/../../demo/app",
        "/demo/app",
        "./app",
        "app/.",
    ] {
        let refused = registry.layout(name).unwrap_err();
        assert_eq!(refused.status, 400, "{name}");
    }
    assert!(registry.layout("app").is_ok());
}

#[tokio::test]
async fn refuses_to_serve_a_manifest_that_does_not_match_its_digest() {
    let fixture = fixture();
    let path = fixture
        .root
        .path()
        .join("demo/app/blobs/sha256")
        .join(fixture.manifest.hex());
    let mut bytes = fixture.manifest_bytes.clone();
    bytes.push(b' ');
    std::fs::write(&path, bytes).unwrap();
    let (base, stop, task) = start(fixture.root.path()).await;
    let response = client()
        .get(format!("{base}/v2/demo/app/manifests/1.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains(&fixture.root.path().display().to_string()),
        "{text}"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}
