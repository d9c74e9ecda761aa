use std::collections::BTreeMap;
use std::time::Duration;

use meshanics_shared::metadata::{
    RoleKeys, Roles, Root, Selectors, SigningKey, TargetName, UpstreamRepository, sign,
};
use meshanics_shared::{Digest, tls};

use super::*;
use crate::client::ClientOptions;

fn entry(upstream: &str) -> TargetEntry {
    TargetEntry {
        name: TargetName::parse("app").unwrap(),
        repository: UpstreamRepository::parse(upstream).unwrap(),
        digest: Digest::sha256_of(b"manifest"),
        size: 8,
        media_type: meshanics_shared::media_type::OCI_INDEX.to_owned(),
        selectors: Selectors::default(),
        custom: BTreeMap::new(),
        rollout: None,
        apply: None,
    }
}

fn anchor() -> Vec<u8> {
    let key = SigningKey::from_seed(&[7; 32]);
    let now = UnixTime::now();
    let one = RoleKeys::new(vec![key.id()], 1);
    let root = Root::new(
        1,
        now,
        now.saturating_add(Duration::from_secs(86_400)),
        &[key.public()],
        Roles {
            root: one.clone(),
            targets: one.clone(),
            timestamp: one,
        },
    );
    sign(&root, &[&key]).unwrap()
}

/// A client for a port nothing listens on, trying once.
fn unreachable_client() -> Client {
    let tls = tls::client_config_from(rustls::RootCertStore::empty(), None).unwrap();
    Client::new(
        &"https://127.0.0.1:1".parse().unwrap(),
        tls,
        ClientOptions {
            attempts: 1,
            connect_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

fn source(state: &Path, anchor: Vec<u8>) -> MetadataSource {
    MetadataSource {
        anchor,
        store_dir: metadata_dir(state),
        class: "gateway".into(),
        platform: Platform::parse("linux/arm64").unwrap(),
        spki: b"device key".to_vec(),
        download_ahead: false,
        last_report: None,
    }
}

#[test]
fn facade_repositories_put_the_registry_in_path_form_before_the_repository() {
    let cases = [
        ("127.0.0.1:5000/team/app", "127.0.0.1_5000/team/app"),
        ("ghcr.io/org/app", "ghcr.io/org/app"),
        ("docker.io/library/nginx", "docker.io/library/nginx"),
        (
            "registry.example.com:8443/a/b/c",
            "registry.example.com_8443/a/b/c",
        ),
    ];
    for (upstream, facade) in cases {
        assert_eq!(
            facade_repository(&entry(upstream)).unwrap().as_str(),
            facade
        );
    }
}

#[test]
fn a_pull_target_carries_the_entry_digest_size_and_media_type() {
    let e = entry("ghcr.io/org/app");
    let target = pull_target(&e).unwrap();
    assert_eq!(target.name, "app");
    assert_eq!(target.digest, e.digest);
    assert_eq!(target.size, 8);
    assert_eq!(target.media_type, e.media_type);
}

#[tokio::test]
async fn an_unreachable_facade_is_a_metadata_error_naming_the_file() {
    let state = tempfile::tempdir().unwrap();
    let mut source = source(state.path(), anchor());

    let err = source.targets(&unreachable_client()).await.unwrap_err();

    assert!(
        matches!(
            &err,
            Error::Metadata {
                source: MetadataError::Fetch { file, .. },
                ..
            } if file == "2.root.cose"
        ),
        "{err}"
    );
    assert!(source.last_report().is_none());
    // Nothing was trusted, so nothing but the folder was written.
    let written: Vec<_> = std::fs::read_dir(metadata_dir(state.path()))
        .unwrap()
        .collect();
    assert!(written.is_empty(), "{written:?}");
}

#[tokio::test]
async fn an_anchor_that_does_not_verify_is_refused_before_any_request() {
    let state = tempfile::tempdir().unwrap();
    let mut bad = anchor();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let client = unreachable_client();
    let mut source = source(state.path(), bad);

    let err = source.targets(&client).await.unwrap_err();

    assert!(
        matches!(err, Error::Metadata { action, .. } if action == "loading the trusted metadata"),
        "{err}"
    );
    assert_eq!(client.downloaded_bytes(), 0);
}
