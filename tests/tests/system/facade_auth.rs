//! Upstream authentication through the facade, against the real registry: HTTP Basic
//! (htpasswd) and the Docker bearer-token flow (our ES256 token server, verified by the
//! registry's `auth.token`). Devices never see a credential; the facade's tokens are cached.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions: a failed setup is a failed test"
)]

use meshanics_shared::Digest;
use meshanics_tests::facade::{
    FacadeFixture, FacadeOptions, UpstreamEntry, Who, device_repository,
};
use meshanics_tests::oci_layout::{BuiltImage, SampleImage};
use meshanics_tests::registry::{Auth, Options, RegistryServer};
use meshanics_tests::skopeo;
use meshanics_tests::token_server::{ISSUER, SERVICE, TokenServer};

const USER: &str = "operator";
const TOKEN: &str = "s3cret-token";

fn image(work: &std::path::Path) -> BuiltImage {
    SampleImage::multi_arch(&["linux/amd64", "linux/arm64"], 32 * 1024, 8 * 1024)
        .unwrap()
        .write_layout(&work.join("src"), "v1")
        .unwrap()
}

/// A registry with HTTP Basic auth for [`USER`] and `built` pushed to `team/app:v1`.
fn basic_auth_registry(built: &BuiltImage) -> RegistryServer {
    let registry = RegistryServer::start(&Options::basic_auth(USER, TOKEN)).unwrap();
    push_with_credentials(built, &registry);
    registry
}

/// A registry sending clients to `tokens` and `built` pushed to `team/app:v1`.
fn token_auth_registry(built: &BuiltImage, tokens: &TokenServer) -> RegistryServer {
    let registry = RegistryServer::start(&Options {
        auth: Auth::Token {
            realm: tokens.realm(),
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            root_cert_bundle: tokens.root_cert_bundle(),
        },
        ..Options::default()
    })
    .unwrap();
    push_with_credentials(built, &registry);
    registry
}

fn push_with_credentials(built: &BuiltImage, registry: &RegistryServer) {
    let reference = format!("{}/team/app:v1", registry.host());
    skopeo::push_layout_as(
        &built.dir,
        "v1",
        &reference,
        Some(&format!("{USER}:{TOKEN}")),
    )
    .unwrap();
}

fn facade_for(registry: &RegistryServer, credentials: bool) -> FacadeFixture {
    let entry = if credentials {
        UpstreamEntry::with_credentials(&registry.host(), USER, TOKEN)
    } else {
        UpstreamEntry::anonymous(&registry.host())
    };
    FacadeFixture::start(&FacadeOptions {
        upstreams: vec![entry],
        ..FacadeOptions::default()
    })
    .unwrap()
}

fn get(facade: &FacadeFixture, path: &str) -> (u16, Vec<u8>) {
    let client = facade.client(Who::Device, false).unwrap();
    facade.block_on(async {
        let response = client.get(facade.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap().to_vec())
    })
}

fn skopeo_pull(
    facade: &FacadeFixture,
    registry: &RegistryServer,
    digest: &Digest,
    out: &std::path::Path,
) {
    let repository = device_repository(&registry.host(), "team/app");
    facade
        .skopeo_pull(Who::Device, &repository, digest.as_str(), out)
        .unwrap();
}

fn assert_identical(built: &BuiltImage, out: &std::path::Path) {
    for digest in built.all_blobs.keys() {
        let pulled = std::fs::read(out.join("blobs/sha256").join(digest.hex())).unwrap();
        assert_eq!(pulled, built.blob(digest).unwrap(), "{digest}");
    }
}

#[test]
fn pulls_from_a_basic_auth_registry_with_the_configured_token() {
    let work = tempfile::tempdir().unwrap();
    let built = image(work.path());
    let registry = basic_auth_registry(&built);
    let facade = facade_for(&registry, true);
    let out = work.path().join("out");
    skopeo_pull(&facade, &registry, &built.index.digest, &out);
    assert_identical(&built, &out);
}

#[test]
fn an_upstream_refusing_the_facade_is_a_502_denied_for_the_device() {
    let work = tempfile::tempdir().unwrap();
    let built = image(work.path());
    let registry = basic_auth_registry(&built);
    let facade = facade_for(&registry, false);
    let path = format!(
        "/v2/{}/manifests/{}",
        device_repository(&registry.host(), "team/app"),
        built.index.digest
    );
    let (status, body) = get(&facade, &path);
    assert_eq!(status, 502);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["errors"][0]["code"], "DENIED");
}

#[test]
fn pulls_from_a_token_auth_registry_and_reuses_the_token() {
    let work = tempfile::tempdir().unwrap();
    let built = image(work.path());
    let tokens = TokenServer::start(USER, TOKEN, 300).unwrap();
    let registry = token_auth_registry(&built, &tokens);
    let facade = facade_for(&registry, true);
    let out = work.path().join("out");
    skopeo_pull(&facade, &registry, &built.index.digest, &out);
    assert_identical(&built, &out);

    // Many more requests, one token: the facade caches it per scope.
    let layer = &built.blobs[0][1];
    for _ in 0..5 {
        let (status, body) = get(
            &facade,
            &format!(
                "/v2/{}/blobs/{}",
                device_repository(&registry.host(), "team/app"),
                layer.digest
            ),
        );
        assert_eq!(status, 200);
        assert_eq!(Digest::sha256_of(&body), layer.digest);
    }
    let facade_requests: Vec<_> = tokens
        .requests()
        .into_iter()
        .filter(|r| r.user_agent.starts_with("meshanics-facade"))
        .collect();
    assert_eq!(facade_requests.len(), 1, "{facade_requests:?}");
    assert!(facade_requests[0].authenticated);
    assert_eq!(facade_requests[0].scopes, vec!["repository:team/app:pull"]);
}

#[test]
fn a_token_registry_refuses_a_facade_with_wrong_credentials() {
    let work = tempfile::tempdir().unwrap();
    let built = image(work.path());
    let tokens = TokenServer::start(USER, TOKEN, 300).unwrap();
    let registry = token_auth_registry(&built, &tokens);
    let facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::with_credentials(
            &registry.host(),
            USER,
            "wrong",
        )],
        ..FacadeOptions::default()
    })
    .unwrap();
    let (status, body) = get(
        &facade,
        &format!(
            "/v2/{}/manifests/{}",
            device_repository(&registry.host(), "team/app"),
            built.index.digest
        ),
    );
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert!(
        !tokens
            .requests()
            .iter()
            .any(|r| r.user_agent.starts_with("meshanics-facade") && r.authenticated)
    );
}
