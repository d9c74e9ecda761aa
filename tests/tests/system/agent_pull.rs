//! The agent pulling by digest from the real distribution registry behind mutual TLS (the
//! facade's API and names, device certificate required), into its content-addressed cache,
//! then applying an OCI layout that skopeo accepts. Faults are real too: connections cut or
//! stalled by a TCP proxy, bytes tampered with in the registry's storage.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a setup that fails is a failing test"
)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use meshanics_agent::Error;
use meshanics_agent::apply;
use meshanics_agent::client::{Client, ClientOptions};
use meshanics_agent::progress::Silent;
use meshanics_agent::pull::{PullTarget, Pulled, Puller};
use meshanics_agent::store::{FreeSpace, Pointers, Store, StoreOptions};
use meshanics_shared::{Descriptor, Platform, VerifyError, tls};
use meshanics_tests::oci_layout::{BuiltImage, SampleImage};
use meshanics_tests::skopeo;
use meshanics_tests::tcp_proxy::{Fault, TcpProxy};
use meshanics_tests::tls_registry::TlsRegistry;

const REPO: &str = "team/app";

/// A device: its state dir, cache and client.
struct Device {
    dir: tempfile::TempDir,
    store: Store,
    client: Client,
    platform: Platform,
}

impl Device {
    fn new(registry: &TlsRegistry, platform: &str) -> Self {
        Device::with(
            registry,
            &registry.base_url(),
            platform,
            StoreOptions::default(),
        )
    }

    fn with(registry: &TlsRegistry, base: &str, platform: &str, options: StoreOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), options).unwrap();
        let client = Client::new(
            &base.parse().unwrap(),
            registry.device_tls().unwrap(),
            test_options(),
        )
        .unwrap();
        Device {
            dir,
            store,
            client,
            platform: Platform::parse(platform).unwrap(),
        }
    }

    async fn pull(&self, target: &PullTarget) -> Result<Pulled, Error> {
        Puller {
            client: &self.client,
            store: &self.store,
            platform: &self.platform,
            concurrency: 1,
            progress: &Silent,
        }
        .pull(target)
        .await
    }

    async fn pull_and_apply(&self, target: &PullTarget) -> Result<Pulled, Error> {
        let pulled = self.pull(target).await?;
        let record = apply::lay_out(&self.store, &pulled)?;
        apply::apply(&self.store, &record.id, &apply::Checks::default()).await?;
        Ok(pulled)
    }

    fn current(&self) -> std::path::PathBuf {
        self.dir.path().join("current")
    }
}

fn test_options() -> ClientOptions {
    ClientOptions {
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        stall_window: Duration::from_millis(500),
        stall_floor: 1024,
        attempts: 5,
        ..ClientOptions::default()
    }
}

fn target(registry: &TlsRegistry, name: &str, descriptor: &Descriptor) -> PullTarget {
    registry.pull_target(name, REPO, descriptor).unwrap()
}

fn publish(
    registry: &TlsRegistry,
    work: &Path,
    tag: &str,
    platforms: &[&str],
    shared: usize,
    own: usize,
) -> BuiltImage {
    let image = SampleImage::multi_arch(platforms, shared, own).unwrap();
    registry.push_image(&image, work, tag, REPO).unwrap()
}

/// The folder two amd64 releases were built in, and a registry with them published: `v1`
/// and `v2`, sharing a layer of `shared` bytes, each with one of its own of `own[0]` and
/// `own[1]` bytes.
fn two_releases(
    shared: usize,
    own: [usize; 2],
) -> (tempfile::TempDir, TlsRegistry, BuiltImage, BuiltImage) {
    let work = tempfile::tempdir().unwrap();
    let registry = TlsRegistry::start().unwrap();
    let v1 = publish(
        &registry,
        work.path(),
        "v1",
        &["linux/amd64"],
        shared,
        own[0],
    );
    let v2 = publish(
        &registry,
        work.path(),
        "v2",
        &["linux/amd64"],
        shared,
        own[1],
    );
    (work, registry, v1, v2)
}

/// A registry with release `v1` published: the start of most tests here.
fn start(
    platforms: &[&str],
    shared: usize,
    own: usize,
) -> (tempfile::TempDir, TlsRegistry, BuiltImage) {
    let work = tempfile::tempdir().unwrap();
    let registry = TlsRegistry::start().unwrap();
    let built = publish(&registry, work.path(), "v1", platforms, shared, own);
    (work, registry, built)
}

/// Asserts every blob the pull names is cached, byte for byte equal to the source.
fn assert_blobs_equal_source(device: &Device, pulled: &Pulled, built: &BuiltImage) {
    for blob in pulled.blobs.iter().chain([&pulled.manifest]) {
        let cached = std::fs::read(device.store.blob_path(&blob.digest)).unwrap();
        assert_eq!(cached, built.blob(&blob.digest).unwrap(), "{}", blob.digest);
    }
}

/// A device of `platform` pulls and applies `built`'s index: it gets the manifest of that
/// platform and its blobs (the image's `nth` platform), each equal to the source.
async fn assert_applies_platform(
    registry: &TlsRegistry,
    built: &BuiltImage,
    platform: &str,
    nth: usize,
) -> Device {
    let device = Device::new(registry, platform);
    let pulled = device
        .pull_and_apply(&target(registry, "app", &built.index))
        .await
        .unwrap();
    let manifest = built.manifest_for(platform).unwrap();
    assert_eq!(pulled.manifest.digest, manifest.digest);
    assert_eq!(Some(&pulled.blobs), built.blobs.get(nth));
    assert_blobs_equal_source(&device, &pulled, built);
    device
}

#[tokio::test]
async fn pulls_an_index_by_digest_and_applies_a_layout_skopeo_accepts() {
    let (work, registry, built) = start(&["linux/amd64", "linux/arm64"], 96 * 1024, 32 * 1024);
    let device = assert_applies_platform(&registry, &built, "linux/amd64", 0).await;

    let amd64 = built.manifest_for("linux/amd64").unwrap();
    let inspected: serde_json::Value = serde_json::from_str(
        &skopeo::run(&["inspect", &format!("oci:{}", device.current().display())]).unwrap(),
    )
    .unwrap();
    assert_eq!(inspected["Digest"], amd64.digest.as_str());
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2);
    // And skopeo can copy it out again as a standard client would.
    let copied = work.path().join("copied");
    skopeo::run(&[
        "copy",
        &format!("oci:{}", device.current().display()),
        &format!("dir:{}", copied.display()),
    ])
    .unwrap();
    assert!(device.store.fsck(false).unwrap().is_clean());
}

#[tokio::test]
async fn an_arm64_device_gets_the_arm64_manifest_of_a_multi_arch_index() {
    let (_work, registry, built) = start(
        &["linux/amd64", "linux/arm64", "linux/arm/v7"],
        32 * 1024,
        8 * 1024,
    );
    let device = assert_applies_platform(&registry, &built, "linux/arm64", 1).await;

    let amd64_layer = &built.blobs[0][2].digest;
    assert!(
        !device.store.blob_path(amd64_layer).exists(),
        "fetched another platform's layer"
    );
    let inspected: serde_json::Value = serde_json::from_str(
        &skopeo::run(&[
            "inspect",
            "--override-arch",
            "arm64",
            &format!("oci:{}", device.current().display()),
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(inspected["Architecture"], "arm64");
}

#[tokio::test]
async fn a_second_release_sharing_layers_fetches_only_the_new_blobs() {
    let (_work, registry, v1, v2) = two_releases(256 * 1024, [64 * 1024, 80 * 1024]);
    let shared = &v1.blobs[0][1];
    assert_eq!(shared, &v2.blobs[0][1], "the fixtures share the base layer");
    let device = Device::new(&registry, "linux/amd64");

    let first = device
        .pull_and_apply(&target(&registry, "app", &v1.index))
        .await
        .unwrap();
    assert_eq!(first.received_bytes, v1.all_blobs.values().sum::<u64>());
    let shared_inode = std::fs::metadata(device.store.blob_path(&shared.digest))
        .unwrap()
        .ino();
    let before = device.client.downloaded_bytes();

    let second = device
        .pull_and_apply(&target(&registry, "app", &v2.index))
        .await
        .unwrap();

    let new_bytes = v2.bytes_not_in(&v1);
    assert_eq!(new_bytes, v2.all_blobs.values().sum::<u64>() - shared.size);
    assert_eq!(second.received_bytes, new_bytes);
    assert_eq!(device.client.downloaded_bytes() - before, new_bytes);
    assert_eq!((second.fetched, second.cached), (4, 1));
    assert_eq!(
        std::fs::metadata(device.store.blob_path(&shared.digest))
            .unwrap()
            .ino(),
        shared_inode,
        "the shared layer was written again"
    );
    let pointers = Pointers::read(&device.store).unwrap();
    assert!(pointers.previous.is_some());
}

#[tokio::test]
async fn a_pre_seeded_partial_download_is_resumed_with_range() {
    let (_work, registry, built) = start(&["linux/amd64"], 512 * 1024, 16 * 1024);
    let device = Device::new(&registry, "linux/amd64");
    let layer = &built.blobs[0][1];
    let bytes = built.blob(&layer.digest).unwrap();
    let half = bytes.len() / 2;
    std::fs::write(device.store.ingest_path(&layer.digest), &bytes[..half]).unwrap();

    let pulled = device
        .pull(&target(&registry, "app", &built.index))
        .await
        .unwrap();

    let total: u64 = built.all_blobs.values().sum();
    assert_eq!(pulled.received_bytes, total - half as u64);
    assert_blobs_equal_source(&device, &pulled, &built);
    assert!(!device.store.ingest_path(&layer.digest).exists());
}

#[tokio::test]
async fn a_partial_download_that_is_not_a_prefix_is_fetched_again_from_zero() {
    let (_work, registry, built) = start(&["linux/amd64"], 128 * 1024, 16 * 1024);
    let device = Device::new(&registry, "linux/amd64");
    let layer = &built.blobs[0][1];
    std::fs::write(device.store.ingest_path(&layer.digest), vec![0xAA; 1000]).unwrap();

    let pulled = device
        .pull(&target(&registry, "app", &built.index))
        .await
        .unwrap();

    let total: u64 = built.all_blobs.values().sum();
    assert_eq!(pulled.received_bytes, total - 1000 + layer.size);
    assert_blobs_equal_source(&device, &pulled, &built);
}

/// Pulls `v1` (a base layer of `layer` bytes) through a proxy applying `faults`: over at least
/// `connections` connections, and every byte received was kept (nothing downloaded twice).
async fn assert_pull_resumes_through(faults: Vec<Fault>, layer: usize, connections: usize) {
    let (_work, registry, built) = start(&["linux/amd64"], layer, 16 * 1024);
    let proxy = TcpProxy::start(registry.registry.addr(), faults)
        .await
        .unwrap();
    let base = format!("https://{}", proxy.addr());
    let device = Device::with(&registry, &base, "linux/amd64", StoreOptions::default());

    let pulled = device
        .pull(&target(&registry, "app", &built.index))
        .await
        .unwrap();

    assert!(
        proxy.connections() >= connections,
        "{} connections",
        proxy.connections()
    );
    assert_eq!(pulled.received_bytes, built.all_blobs.values().sum::<u64>());
    assert_blobs_equal_source(&device, &pulled, &built);
}

#[tokio::test]
async fn a_connection_cut_mid_blob_resumes_where_it_stopped() {
    let cuts = vec![Fault::CutAfter(600 * 1024), Fault::CutAfter(1200 * 1024)];
    assert_pull_resumes_through(cuts, 2 * 1024 * 1024, 3).await;
}

#[tokio::test]
async fn a_stalled_transfer_is_cut_and_resumed() {
    // One stalled connection, then at least one more (a loaded machine may add a spurious
    // stall, which costs a reconnection but no byte).
    assert_pull_resumes_through(vec![Fault::StallAfter(300 * 1024)], 1024 * 1024, 2).await;
}

#[tokio::test]
async fn a_blob_tampered_with_upstream_is_refused_and_current_is_unchanged() {
    let (_work, registry, v1, v2) = two_releases(64 * 1024, [16 * 1024, 24 * 1024]);
    let device = Device::new(&registry, "linux/amd64");
    device
        .pull_and_apply(&target(&registry, "app", &v1.index))
        .await
        .unwrap();
    let before = Pointers::read(&device.store).unwrap();
    let evil = &v2.blobs[0][2];
    let stored = registry.registry.blob_data_path(&evil.digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();

    let err = device
        .pull_and_apply(&target(&registry, "app", &v2.index))
        .await
        .unwrap_err();

    assert!(
        matches!(err, Error::Verify { ref digest, source: VerifyError::Mismatch { .. } } if *digest == evil.digest),
        "{err}"
    );
    assert_eq!(Pointers::read(&device.store).unwrap(), before);
    assert!(!device.store.blob_path(&evil.digest).exists());
    assert!(!device.store.ingest_path(&evil.digest).exists());
    assert!(device.store.fsck(false).unwrap().is_clean());
}

#[tokio::test]
async fn a_disk_too_small_is_a_clear_error_before_any_download() {
    let (_work, registry, built) = start(&["linux/amd64"], 256 * 1024, 16 * 1024);
    let device = Device::with(
        &registry,
        &registry.base_url(),
        "linux/amd64",
        StoreOptions {
            free_space: FreeSpace::Fixed(100 * 1024),
            reserve: 0,
        },
    );

    let err = device
        .pull_and_apply(&target(&registry, "app", &built.index))
        .await
        .unwrap_err();

    match &err {
        Error::NoSpace {
            needed, available, ..
        } => {
            assert_eq!(*available, 100 * 1024);
            assert_eq!(*needed, built.blobs[0].iter().map(|d| d.size).sum::<u64>());
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(Pointers::read(&device.store).unwrap(), Pointers::default());
    for blob in &built.blobs[0] {
        assert!(!device.store.blob_path(&blob.digest).exists());
        assert_eq!(device.store.partial_len(&blob.digest), 0);
    }
}

#[tokio::test]
async fn the_registry_refuses_a_device_without_a_certificate() {
    let (_work, registry, built) = start(&["linux/amd64"], 4096, 1024);
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let anonymous = Client::new(
        &registry.base_url().parse().unwrap(),
        tls::client_config(&registry.ca, None).unwrap(),
        test_options(),
    )
    .unwrap();
    let platform = Platform::parse("linux/amd64").unwrap();

    let err = Puller {
        client: &anonymous,
        store: &store,
        platform: &platform,
        concurrency: 1,
        progress: &Silent,
    }
    .pull(&target(&registry, "app", &built.index))
    .await
    .unwrap_err();

    assert!(
        !matches!(err, Error::Verify { .. } | Error::Status { .. }),
        "expected a TLS or connection failure, got {err}"
    );
    assert_eq!(store.blob_files().unwrap().len(), 0);
}

#[tokio::test]
async fn pulls_over_http1_when_http2_is_not_offered() {
    let (_work, registry, built) = start(&["linux/amd64"], 512 * 1024, 16 * 1024);
    let mut device = Device::new(&registry, "linux/amd64");
    device.client = Client::new(
        &registry.base_url().parse().unwrap(),
        registry.device_tls().unwrap(),
        ClientOptions {
            http1_only: true,
            ..test_options()
        },
    )
    .unwrap();
    let layer = &built.blobs[0][1];
    let bytes = built.blob(&layer.digest).unwrap();
    std::fs::write(device.store.ingest_path(&layer.digest), &bytes[..1000]).unwrap();

    let pulled = device
        .pull(&target(&registry, "app", &built.index))
        .await
        .unwrap();

    assert_eq!(
        pulled.received_bytes,
        built.all_blobs.values().sum::<u64>() - 1000
    );
    assert_blobs_equal_source(&device, &pulled, &built);
}
