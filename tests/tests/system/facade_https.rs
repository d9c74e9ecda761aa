//! An HTTPS upstream with a private CA: the facade reaches it with the CA bundle of that
//! connection, and refuses to talk to it without (the public web roots do not vouch for it).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions: a failed setup is a failed test"
)]

use meshanics_shared::Digest;
use meshanics_shared::devpki::DevCa;
use meshanics_tests::facade::{FacadeFixture, FacadeOptions, UpstreamEntry, Who};
use meshanics_tests::oci_layout::{BuiltImage, SampleImage};
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::skopeo;

struct Setup {
    work: tempfile::TempDir,
    built: BuiltImage,
    registry: RegistryServer,
}

fn tls_registry() -> Setup {
    let work = tempfile::tempdir().unwrap();
    let mut ca = DevCa::new("on-prem registry CA").unwrap();
    let server = ca.issue_server(&["127.0.0.1"]).unwrap();
    let (cert, key, ca_file) = (
        work.path().join("registry.crt"),
        work.path().join("registry.key"),
        work.path().join("registry-ca.crt"),
    );
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let built = SampleImage::multi_arch(&["linux/amd64"], 16 * 1024, 4 * 1024)
        .unwrap()
        .write_layout(&work.path().join("src"), "v1")
        .unwrap();
    let registry = RegistryServer::start(&Options {
        tls: Some((cert, key)),
        ..Options::default()
    })
    .unwrap();
    skopeo::push_layout(&built.dir, "v1", &registry.host(), "team/app").unwrap();
    Setup {
        work,
        built,
        registry,
    }
}

fn get_index(facade: &FacadeFixture, s: &Setup) -> (u16, Vec<u8>) {
    let client = facade.client(Who::Device, false).unwrap();
    let url = facade.url(&format!(
        "/v2/{}/team/app/manifests/{}",
        s.registry.host().replace(':', "_"),
        s.built.index.digest
    ));
    facade.block_on(async {
        let response = client.get(url).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap().to_vec())
    })
}

#[test]
fn reaches_an_https_upstream_through_its_connection_ca_bundle() {
    let s = tls_registry();
    let facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::https(
            &s.registry.host(),
            Some(s.work.path().join("registry-ca.crt")),
        )],
        ..FacadeOptions::default()
    })
    .unwrap();
    let (status, body) = get_index(&facade, &s);
    assert_eq!(status, 200);
    assert_eq!(Digest::sha256_of(&body), s.built.index.digest);
}

#[test]
fn refuses_an_https_upstream_its_roots_do_not_vouch_for() {
    let s = tls_registry();
    let facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::https(&s.registry.host(), None)],
        ..FacadeOptions::default()
    })
    .unwrap();
    let (status, body) = get_index(&facade, &s);
    assert_eq!(status, 502);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["errors"][0]["code"], "UNAVAILABLE");
}
