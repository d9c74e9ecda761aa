//! End to end: the real distribution registry -> the facade (mutual TLS, approved upstream)
//! -> the agent's update cycle with its signed-metadata source, configured from a TOML file
//! like a device. The operator signs a release into the facade's metadata folder; a cycle
//! (what `sync --once` runs) verifies it, pulls what matches the device and applies it as an
//! OCI layout that skopeo reads.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a setup that fails is a failing test"
)]

use meshanics_agent::client::Client;
use meshanics_agent::metadata::FacadeFetch;
use meshanics_agent::service::SlotAction;
use meshanics_agent::status;
use meshanics_shared::metadata::{TrustedSet, UnixTime, Updater};
use meshanics_shared::{Descriptor, Digest};
use meshanics_tests::agent_device::AgentDevice;
use meshanics_tests::oci_layout::BuiltImage;
use meshanics_tests::skopeo;
use meshanics_tests::update_chain::UpdateChain;

fn setup() -> UpdateChain {
    UpdateChain::start().unwrap()
}

fn inspect(device: &AgentDevice) -> serde_json::Value {
    serde_json::from_str(
        &skopeo::run(&["inspect", &format!("oci:{}", device.current().display())]).unwrap(),
    )
    .unwrap()
}

/// Every blob of `manifest` (and the manifest) in the layout equals the source's bytes.
fn assert_layout_equals_source(device: &AgentDevice, built: &BuiltImage, manifest: &Descriptor) {
    let platform = built
        .manifests
        .iter()
        .position(|m| m.digest == manifest.digest)
        .unwrap();
    let blob =
        |d: &Digest| std::fs::read(device.current().join("blobs/sha256").join(d.hex())).unwrap();
    assert_eq!(
        blob(&manifest.digest),
        built.blob(&manifest.digest).unwrap()
    );
    for descriptor in built.blobs.get(platform).unwrap() {
        assert_eq!(
            blob(&descriptor.digest),
            built.blob(&descriptor.digest).unwrap(),
            "{}",
            descriptor.digest
        );
    }
}

#[test]
fn a_signed_release_is_pulled_through_the_facade_and_applied_as_a_layout_skopeo_reads() {
    let mut s = setup();
    let built = s
        .push("v1", &["linux/amd64", "linux/arm64"], 128 * 1024, 32 * 1024)
        .unwrap();
    s.publish(&built, Some("gateway")).unwrap();
    let device = s.device("gateway", "linux/amd64").unwrap();

    let outcome = s.sync(&device).unwrap();

    assert!(
        matches!(outcome.action("app"), Some(SlotAction::Applied { .. })),
        "{outcome:?}"
    );
    let amd64 = built.manifest_for("linux/amd64").unwrap();
    let inspected = inspect(&device);
    assert_eq!(inspected["Digest"], amd64.digest.as_str());
    assert_eq!(inspected["Architecture"], "amd64");
    assert_layout_equals_source(&device, &built, amd64);

    let status = status::read(&device.config).unwrap();
    let metadata = status.metadata.unwrap();
    assert_eq!(metadata.root.version, 1);
    assert_eq!(metadata.targets.as_ref().unwrap().version, 1);
    assert_eq!(metadata.timestamp.as_ref().unwrap().version, 1);
    assert!(!metadata.timestamp.unwrap().expired);
    assert!(status.last_result.unwrap().ok);
    assert_eq!(
        status.current.unwrap().manifest_digest.unwrap(),
        amd64.digest
    );

    // The next cycle finds nothing new and fetches no blob.
    let next = s.sync(&device).unwrap();
    assert_eq!(next.action("app"), Some(&SlotAction::UpToDate), "{next:?}");
    assert_eq!(next.received_bytes(), 0);
}

#[test]
fn an_arm64_device_of_its_class_gets_the_arm64_manifest_of_a_multi_arch_index() {
    let mut s = setup();
    let app = s
        .push("v1", &["linux/amd64", "linux/arm64"], 96 * 1024, 24 * 1024)
        .unwrap();
    let camera = s
        .push("cam", &["linux/arm64"], 16 * 1024, 8 * 1024)
        .unwrap();
    s.release
        .publish(vec![
            s.entry("camera-app", &camera, Some("camera")).unwrap(),
            s.entry("app", &app, Some("gateway")).unwrap(),
        ])
        .unwrap();
    let device = s.device("gateway", "linux/arm64").unwrap();

    let outcome = s.sync(&device).unwrap();

    assert!(
        matches!(outcome.action("app"), Some(SlotAction::Applied { .. })),
        "{outcome:?}"
    );
    let arm64 = app.manifest_for("linux/arm64").unwrap();
    let inspected = inspect(&device);
    assert_eq!(inspected["Digest"], arm64.digest.as_str());
    assert_eq!(inspected["Architecture"], "arm64");
    assert_layout_equals_source(&device, &app, arm64);
}

#[test]
fn a_second_release_sharing_a_layer_fetches_only_the_new_blobs() {
    let mut s = setup();
    let v1 = s
        .push("v1", &["linux/amd64"], 256 * 1024, 64 * 1024)
        .unwrap();
    let v2 = s
        .push("v2", &["linux/amd64"], 256 * 1024, 80 * 1024)
        .unwrap();
    let shared = &v1.blobs[0][1];
    assert_eq!(shared, &v2.blobs[0][1], "the fixtures share the base layer");
    s.publish(&v1, None).unwrap();
    let device = s.device("gateway", "linux/amd64").unwrap();
    let first = s.sync(&device).unwrap();
    assert!(
        matches!(first.action("app"), Some(SlotAction::Applied { received_bytes, .. }) if *received_bytes == v1.all_blobs.values().sum::<u64>()),
        "{first:?}"
    );

    s.publish(&v2, None).unwrap();
    let second = s.sync(&device).unwrap();

    let new_bytes = v2.bytes_not_in(&v1);
    assert_eq!(new_bytes, v2.all_blobs.values().sum::<u64>() - shared.size);
    assert!(
        matches!(second.action("app"), Some(SlotAction::Applied { received_bytes, .. }) if *received_bytes == new_bytes),
        "{second:?}, expected {new_bytes} new bytes"
    );
    let v2_manifest = &v2.manifests[0];
    assert_eq!(inspect(&device)["Digest"], v2_manifest.digest.as_str());
    assert_layout_equals_source(&device, &v2, v2_manifest);
    let status = status::read(&device.config).unwrap();
    assert_eq!(status.metadata.unwrap().targets.unwrap().version, 2);
    assert_eq!(
        status.previous.unwrap().manifest_digest.unwrap(),
        v1.manifests[0].digest
    );
}

#[test]
fn the_workflow_over_the_facade_fetches_a_target_manifest_by_digest_and_verifies_it() {
    let mut s = setup();
    let built = s
        .push("v1", &["linux/amd64", "linux/arm64"], 16 * 1024, 8 * 1024)
        .unwrap();
    let entry = s.entry("app", &built, None).unwrap();
    s.release.publish(vec![entry.clone()]).unwrap();
    let device = s.device("gateway", "linux/amd64").unwrap();
    let client = Client::from_config(&device.config).unwrap();
    let mut updater = Updater::new(TrustedSet::from_anchor(s.release.anchor()).unwrap());
    let mut fetch = FacadeFetch::new(&client);

    let (report, index) = s.facade.block_on(async {
        let report = updater.update(&mut fetch, UnixTime::now()).await.unwrap();
        let index = updater.fetch_target(&mut fetch, &entry).await.unwrap();
        (report, index)
    });

    assert_eq!(report.targets_version, 1);
    assert!(report.targets_changed);
    assert_eq!(index, built.blob(&built.index.digest).unwrap());
}
