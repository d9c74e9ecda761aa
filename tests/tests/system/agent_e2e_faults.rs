//! End to end, with faults: registry -> facade (mutual TLS) -> the agent's update cycle
//! with its signed-metadata source. A blob tampered with in the registry's storage, and a
//! stale timestamp: each time nothing is applied, `current` stays what it was, and `status`
//! says why. The facade killed and restarted mid-stream: the agent resumes the blob with
//! `Range` from what is on disk.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a setup that fails is a failing test"
)]

use std::time::Duration;

use meshanics_agent::metadata::MetadataSource;
use meshanics_agent::progress::Silent;
use meshanics_agent::service::{Agent, SlotAction};
use meshanics_agent::store::{Pointers, StoreOptions};
use meshanics_agent::{Error, status};
use meshanics_shared::metadata::MetadataError;
use meshanics_tests::agent_device::AgentDevice;
use meshanics_tests::oci_layout::BuiltImage;
use meshanics_tests::skopeo;
use meshanics_tests::update_chain::UpdateChain;

fn setup() -> UpdateChain {
    UpdateChain::start().unwrap()
}

/// `status` after a failed cycle: the last result failed with a message holding every one of
/// `why`, and `current` is still `kept`'s manifest. Returns the status for more checks.
fn assert_failed_keeping(device: &AgentDevice, why: &[&str], kept: &BuiltImage) -> status::Status {
    let status = status::read(&device.config).unwrap();
    let last = status.last_result.clone().unwrap();
    assert!(!last.ok);
    assert!(
        why.iter().all(|w| last.message.contains(w)),
        "{}",
        last.message
    );
    assert_eq!(
        status
            .current
            .as_ref()
            .unwrap()
            .manifest_digest
            .as_ref()
            .unwrap(),
        &kept.manifests.first().unwrap().digest
    );
    status
}

/// Release 1 applied on a device, release 2 pushed but not yet published: the chain, the
/// device, the two releases, and the device's `current` and `previous` with release 1
/// applied.
fn v1_applied() -> (UpdateChain, AgentDevice, BuiltImage, BuiltImage, Pointers) {
    let mut s = setup();
    let v1 = push(&s, "v1", 16 * 1024);
    let v2 = push(&s, "v2", 24 * 1024);
    s.publish(&v1, None).unwrap();
    let device = s.device("gateway", "linux/amd64").unwrap();
    s.sync(&device).unwrap();
    let before = Pointers::read_in(device.state_dir()).unwrap();
    (s, device, v1, v2, before)
}

/// One platform, 64 KiB shared with every other release, `own` bytes of its own.
fn push(s: &UpdateChain, tag: &str, own: usize) -> BuiltImage {
    s.push(tag, &["linux/amd64"], 64 * 1024, own).unwrap()
}

#[test]
fn a_blob_tampered_with_upstream_is_refused_and_current_is_unchanged() {
    let (mut s, device, v1, v2, before) = v1_applied();
    assert!(before.current.is_some());
    let evil = &v2.blobs[0][2];
    let stored = s.registry.blob_data_path(&evil.digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    s.publish(&v2, None).unwrap();

    let outcome = s.sync(&device).unwrap();

    // The slot failed (the cycle itself went on: other targets would have been applied).
    assert!(!outcome.is_ok());
    let err = outcome.slot("app").unwrap().result.as_ref().unwrap_err();
    assert!(err.to_string().contains(evil.digest.hex()), "{err}");
    assert_eq!(Pointers::read_in(device.state_dir()).unwrap(), before);
    let blob = device
        .state_dir()
        .join("cache/blobs/sha256")
        .join(evil.digest.hex());
    assert!(!blob.exists(), "a tampered blob entered the cache");
    assert_failed_keeping(&device, &[evil.digest.hex()], &v1);
}

#[test]
fn an_expired_timestamp_applies_nothing_and_status_says_why() {
    let (mut s, device, v1, v2, before) = v1_applied();
    s.publish(&v2, None).unwrap();
    // The operator's timestamp went stale before the device saw the release.
    s.release.stale_timestamp().unwrap();

    let err = s.sync(&device).unwrap_err();

    assert!(
        matches!(
            err,
            Error::Metadata {
                source: MetadataError::Expired { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(Pointers::read_in(device.state_dir()).unwrap(), before);
    let status = assert_failed_keeping(&device, &["timestamp", "expired"], &v1);
    // The stale timestamp was not trusted: the device still holds release 1's.
    let metadata = status.metadata.unwrap();
    assert_eq!(metadata.timestamp.unwrap().version, 1);
    assert_eq!(metadata.targets.unwrap().version, 1);
}

#[test]
fn a_device_that_never_saw_a_fresh_timestamp_applies_nothing() {
    let mut s = setup();
    let v1 = push(&s, "v1", 16 * 1024);
    s.publish(&v1, None).unwrap();
    s.release.stale_timestamp().unwrap();
    let device = s.device("gateway", "linux/amd64").unwrap();

    let err = s.sync(&device).unwrap_err();

    assert!(err.to_string().contains("expired"), "{err}");
    assert!(!device.current().exists());
    let blobs = device.state_dir().join("cache/blobs/sha256");
    assert_eq!(
        std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing may be fetched before the metadata verifies"
    );
    let status = status::read(&device.config).unwrap();
    assert!(status.metadata.unwrap().timestamp.is_none());
    assert!(status.last_result.unwrap().message.contains("expired"));
}

/// The size of the largest partial download in the state directory's ingest folder.
fn partial_bytes(device: &AgentDevice) -> u64 {
    std::fs::read_dir(device.state_dir().join("cache/ingest"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn the_facade_restarted_mid_stream_is_resumed_without_downloading_a_byte_twice() {
    let mut s = setup();
    let built = s
        .push("v1", &["linux/amd64"], 1536 * 1024, 8 * 1024)
        .unwrap();
    s.publish(&built, None).unwrap();
    // Slow enough to be caught mid-stream, with retries enough to outlast the restart. The
    // agent's HTTP/2 window lets the facade send up to 512 KiB of a blob ahead of what is
    // written, so the restart must come while more than that is still to be sent.
    let device = AgentDevice::with_settings(
        &s.facade,
        s.release.anchor(),
        "gateway",
        "linux/amd64",
        "bandwidth_limit = \"512KiB\"",
        5,
    )
    .unwrap();
    let config = device.config.clone();
    let cycle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (agent, _) = Agent::from_config(&config, StoreOptions::default()).unwrap();
        let mut source = MetadataSource::from_config(&config).unwrap();
        runtime.block_on(agent.cycle(&mut source, &Silent))
    });
    let shared = &built.blobs[0][1];
    let mut polls = 0;
    let at_restart = loop {
        let partial = partial_bytes(&device);
        if partial >= 64 * 1024 && partial + 768 * 1024 < shared.size {
            break partial;
        }
        polls += 1;
        assert!(
            polls < 2000 && !cycle.is_finished(),
            "never saw a partial download"
        );
        std::thread::sleep(Duration::from_millis(10));
    };

    s.facade.restart().unwrap();
    let outcome = cycle.join().unwrap().unwrap();

    let total: u64 = built.all_blobs.values().sum();
    assert!(
        matches!(outcome.action("app"), Some(SlotAction::Applied { received_bytes, .. }) if *received_bytes == total),
        "{outcome:?}: expected exactly {total} bytes (restarted at {at_restart} of {})",
        shared.size
    );
    // The restarted facade served the rest of the blob as a range, not the whole of it.
    let metrics = s.facade.metrics();
    assert!(
        metrics.contains("facade_requests_total{route=\"blob\",status=\"206\"}"),
        "{metrics}"
    );
    let streamed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("facade_bytes_streamed_total ")?.parse().ok())
        .unwrap();
    assert!(
        streamed <= total - at_restart,
        "the restarted facade streamed {streamed} bytes; {at_restart} were on disk already"
    );
    let inspected: serde_json::Value = serde_json::from_str(
        &skopeo::run(&["inspect", &format!("oci:{}", device.current().display())]).unwrap(),
    )
    .unwrap();
    assert_eq!(inspected["Digest"], built.manifests[0].digest.as_str());
    let layout_blob = device
        .current()
        .join("blobs/sha256")
        .join(shared.digest.hex());
    assert_eq!(
        std::fs::read(layout_blob).unwrap(),
        built.blob(&shared.digest).unwrap()
    );
}
