//! Pulling through the facade from the real distribution registry: skopeo with a device
//! certificate gets a byte-identical image; without a valid one it gets nothing; HEAD, Range,
//! HTTP/2 and containerd's mirror form behave as a registry's would.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions: a failed setup is a failed test"
)]

use std::fs;

use meshanics_shared::Digest;
use meshanics_tests::facade::{
    FacadeFixture, FacadeOptions, UpstreamEntry, Who, device_repository,
};
use meshanics_tests::oci_layout::{BuiltImage, SampleImage};
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::skopeo;

const PLATFORMS: [&str; 3] = ["linux/amd64", "linux/arm64", "linux/arm/v7"];

struct Setup {
    _work: tempfile::TempDir,
    out: std::path::PathBuf,
    built: BuiltImage,
    registry: RegistryServer,
    facade: FacadeFixture,
}

fn setup() -> Setup {
    let work = tempfile::tempdir().unwrap();
    let built = SampleImage::multi_arch(&PLATFORMS, 256 * 1024, 64 * 1024)
        .unwrap()
        .write_layout(&work.path().join("src"), "v1")
        .unwrap();
    let registry = RegistryServer::start(&Options::default()).unwrap();
    skopeo::push_layout(&built.dir, "v1", &registry.host(), "team/app").unwrap();
    let facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::anonymous(&registry.host())],
        ..FacadeOptions::default()
    })
    .unwrap();
    Setup {
        out: work.path().join("out"),
        _work: work,
        built,
        registry,
        facade,
    }
}

fn upstream_path(s: &Setup) -> String {
    device_repository(&s.registry.host(), "team/app")
}

fn pull(s: &Setup, who: Who, digest: &Digest) -> Result<String, meshanics_tests::FixtureError> {
    s.facade
        .skopeo_pull(who, &upstream_path(s), digest.as_str(), &s.out)
}

#[test]
fn skopeo_pulls_a_multi_arch_image_byte_for_byte_with_a_device_certificate() {
    let s = setup();
    pull(&s, Who::Device, &s.built.index.digest).unwrap();
    for (digest, size) in &s.built.all_blobs {
        let pulled = fs::read(s.out.join("blobs/sha256").join(digest.hex())).unwrap();
        assert_eq!(pulled.len() as u64, *size, "{digest}");
        assert_eq!(pulled, s.built.blob(digest).unwrap(), "{digest}");
    }
    let metrics = s.facade.metrics();
    assert!(
        metrics.contains("facade_requests_total{route=\"blob\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("facade_requests_total{route=\"manifest\",status=\"200\"}"),
        "{metrics}"
    );
}

fn refused_handshakes(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("facade_refused_handshakes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn skopeo_gets_nothing_without_a_valid_device_certificate() {
    let s = setup();
    for who in [Who::Nobody, Who::Foreign, Who::Expired, Who::Revoked] {
        let before = refused_handshakes(&s.facade.metrics());
        let result = pull(&s, who, &s.built.index.digest);
        assert!(result.is_err(), "{who:?} pulled an image");
        assert!(!s.out.join("index.json").exists(), "{who:?} wrote a layout");
        let counted = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            refused_handshakes(&s.facade.metrics()) > before
        });
        assert!(counted, "{who:?} was not refused at the handshake");
    }
    assert!(
        !s.facade.metrics().contains("route=\"manifest\""),
        "a request got through"
    );
}

#[test]
fn refused_handshakes_are_counted_by_reason() {
    // skopeo (Go) withholds a certificate the server's CA list does not name; a rustls client
    // presents it anyway, so each reason can be seen.
    let s = setup();
    for (who, reason) in [
        (Who::Nobody, "no_certificate"),
        (Who::Foreign, "unknown_issuer"),
        (Who::Expired, "expired"),
        (Who::Revoked, "revoked"),
    ] {
        let client = s.facade.client(who, false).unwrap();
        let result = s.facade.block_on(client.get(s.facade.url("/v2/")).send());
        assert!(result.is_err(), "{who:?} got an answer: {result:?}");
        // The client can see the alert before the server task has counted it.
        let line = format!("facade_refused_handshakes_total{{reason=\"{reason}\"}} 1");
        let counted = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            s.facade.metrics().contains(&line)
        });
        assert!(counted, "{who:?}: {}", s.facade.metrics());
    }
    let client = s.facade.client(Who::Device, false).unwrap();
    let ping = s
        .facade
        .block_on(client.get(s.facade.url("/v2/")).send())
        .unwrap();
    assert_eq!(ping.status(), 200);
}

#[test]
fn head_answers_with_length_type_and_digest_and_no_body() {
    let s = setup();
    let layer = &s.built.blobs[0][2];
    let client = s.facade.client(Who::Device, false).unwrap();
    let url = s
        .facade
        .url(&format!("/v2/{}/blobs/{}", upstream_path(&s), layer.digest));
    let response = s.facade.block_on(client.head(&url).send()).unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-length"], layer.size.to_string().as_str());
    assert_eq!(headers["docker-content-digest"], layer.digest.as_str());
    assert!(headers.contains_key("content-type"));
    let body = s.facade.block_on(response.bytes()).unwrap();
    assert!(body.is_empty());

    let manifest = s.built.manifest_for("linux/arm64").unwrap();
    let url = s.facade.url(&format!(
        "/v2/{}/manifests/{}",
        upstream_path(&s),
        manifest.digest
    ));
    let response = s.facade.block_on(client.head(&url).send()).unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"],
        manifest.size.to_string().as_str()
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
}

#[test]
fn ranges_on_blobs_pass_through_as_206_and_416() {
    let s = setup();
    let layer = &s.built.blobs[0][2];
    let bytes = s.built.blob(&layer.digest).unwrap();
    let client = s.facade.client(Who::Device, false).unwrap();
    let url = s
        .facade
        .url(&format!("/v2/{}/blobs/{}", upstream_path(&s), layer.digest));
    let response = s
        .facade
        .block_on(client.get(&url).header("Range", "bytes=100-199").send())
        .unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 100-199/{}", bytes.len()).as_str()
    );
    let body = s.facade.block_on(response.bytes()).unwrap();
    assert_eq!(&body[..], &bytes[100..200]);

    let beyond = format!("bytes={}-", bytes.len() + 10);
    let response = s
        .facade
        .block_on(client.get(&url).header("Range", beyond).send())
        .unwrap();
    assert_eq!(response.status(), 416);
}

#[test]
fn http2_clients_and_the_containerd_mirror_form_get_verified_content() {
    let s = setup();
    let layer = &s.built.blobs[1][2];
    let bytes = s.built.blob(&layer.digest).unwrap();
    let client = s.facade.client(Who::Device, true).unwrap();
    let url = s.facade.url(&format!(
        "/v2/team/app/blobs/{}?ns={}",
        layer.digest,
        s.registry.host()
    ));
    let response = s.facade.block_on(client.get(&url).send()).unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = s.facade.block_on(response.bytes()).unwrap();
    assert_eq!(Digest::sha256_of(&body), layer.digest);
    assert_eq!(body.len(), bytes.len());
}
