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

use meshanics_agent::apply::Pointers;
use meshanics_agent::metadata::MetadataSource;
use meshanics_agent::progress::Silent;
use meshanics_agent::service::{Agent, CycleOutcome};
use meshanics_agent::store::StoreOptions;
use meshanics_agent::{Error, status};
use meshanics_shared::Digest;
use meshanics_shared::metadata::{MetadataError, UnixTime};
use meshanics_tests::agent_device::AgentDevice;
use meshanics_tests::facade::{FacadeFixture, FacadeOptions, UpstreamEntry};
use meshanics_tests::oci_layout::{BuiltImage, SampleImage};
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::release::{self, Release};
use meshanics_tests::skopeo;

const REPO: &str = "team/app";
const DAY: Duration = Duration::from_secs(86_400);

struct Setup {
    work: tempfile::TempDir,
    registry: RegistryServer,
    facade: FacadeFixture,
    release: Release,
}

fn setup() -> Setup {
    let registry = RegistryServer::start(&Options::default()).unwrap();
    let facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::anonymous(&registry.host())],
        ..FacadeOptions::default()
    })
    .unwrap();
    let release = Release::init(&facade.metadata_dir()).unwrap();
    Setup {
        work: tempfile::tempdir().unwrap(),
        registry,
        facade,
        release,
    }
}

impl Setup {
    fn push(&self, tag: &str, own: usize) -> BuiltImage {
        let built = SampleImage::multi_arch(&["linux/amd64"], 64 * 1024, own)
            .unwrap()
            .write_layout(&self.work.path().join(tag), tag)
            .unwrap();
        skopeo::push_layout(&built.dir, tag, &self.registry.host(), REPO).unwrap();
        built
    }

    fn publish(&mut self, built: &BuiltImage) {
        let upstream = format!("{}/{REPO}", self.registry.host());
        self.release
            .publish(vec![
                release::entry("app", &upstream, &built.index, None).unwrap(),
            ])
            .unwrap();
    }

    fn sync(&self, device: &AgentDevice) -> Result<CycleOutcome, Error> {
        let (agent, _) = Agent::from_config(&device.config, StoreOptions::default())?;
        let mut source = MetadataSource::from_config(&device.config)?;
        self.facade.block_on(agent.cycle(&mut source, &Silent))
    }

    fn blob_data_path(&self, digest: &Digest) -> std::path::PathBuf {
        let hex = digest.hex();
        self.registry
            .dir()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(hex.get(..2).unwrap())
            .join(hex)
            .join("data")
    }
}

#[test]
fn a_blob_tampered_with_upstream_is_refused_and_current_is_unchanged() {
    let mut s = setup();
    let v1 = s.push("v1", 16 * 1024);
    let v2 = s.push("v2", 24 * 1024);
    s.publish(&v1);
    let device = AgentDevice::new(&s.facade, s.release.anchor(), "gateway", "linux/amd64").unwrap();
    s.sync(&device).unwrap();
    let before = Pointers::read_in(device.state_dir()).unwrap();
    assert!(before.current.is_some());
    let evil = &v2.blobs[0][2];
    let stored = s.blob_data_path(&evil.digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    s.publish(&v2);

    let err = s.sync(&device).unwrap_err();

    assert!(err.to_string().contains(evil.digest.hex()), "{err}");
    assert_eq!(Pointers::read_in(device.state_dir()).unwrap(), before);
    let blob = device
        .state_dir()
        .join("cache/blobs/sha256")
        .join(evil.digest.hex());
    assert!(!blob.exists(), "a tampered blob entered the cache");
    let status = status::read(&device.config).unwrap();
    let last = status.last_result.unwrap();
    assert!(!last.ok);
    assert!(last.message.contains(evil.digest.hex()), "{}", last.message);
    assert_eq!(
        status.current.unwrap().manifest_digest.unwrap(),
        v1.manifests[0].digest
    );
}

#[test]
fn an_expired_timestamp_applies_nothing_and_status_says_why() {
    let mut s = setup();
    let v1 = s.push("v1", 16 * 1024);
    let v2 = s.push("v2", 24 * 1024);
    s.publish(&v1);
    let device = AgentDevice::new(&s.facade, s.release.anchor(), "gateway", "linux/amd64").unwrap();
    s.sync(&device).unwrap();
    let before = Pointers::read_in(device.state_dir()).unwrap();
    s.publish(&v2);
    // The operator's timestamp went stale before the device saw the release.
    let now = UnixTime::now();
    let two_days_ago = UnixTime::from_secs(now.as_secs() - 2 * DAY.as_secs());
    let yesterday = UnixTime::from_secs(now.as_secs() - DAY.as_secs());
    s.release.timestamp(two_days_ago, yesterday).unwrap();

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
    let status = status::read(&device.config).unwrap();
    let last = status.last_result.unwrap();
    assert!(!last.ok);
    assert!(
        last.message.contains("timestamp") && last.message.contains("expired"),
        "{}",
        last.message
    );
    // The stale timestamp was not trusted: the device still holds release 1's.
    let metadata = status.metadata.unwrap();
    assert_eq!(metadata.timestamp.unwrap().version, 1);
    assert_eq!(metadata.targets.unwrap().version, 1);
    assert_eq!(
        status.current.unwrap().manifest_digest.unwrap(),
        v1.manifests[0].digest
    );
}

#[test]
fn a_device_that_never_saw_a_fresh_timestamp_applies_nothing() {
    let mut s = setup();
    let v1 = s.push("v1", 16 * 1024);
    s.publish(&v1);
    let now = UnixTime::now();
    let two_days_ago = UnixTime::from_secs(now.as_secs() - 2 * DAY.as_secs());
    let yesterday = UnixTime::from_secs(now.as_secs() - DAY.as_secs());
    s.release.timestamp(two_days_ago, yesterday).unwrap();
    let device = AgentDevice::new(&s.facade, s.release.anchor(), "gateway", "linux/amd64").unwrap();

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
    let built = SampleImage::multi_arch(&["linux/amd64"], 1536 * 1024, 8 * 1024)
        .unwrap()
        .write_layout(&s.work.path().join("v1"), "v1")
        .unwrap();
    skopeo::push_layout(&built.dir, "v1", &s.registry.host(), REPO).unwrap();
    s.publish(&built);
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
        matches!(outcome, CycleOutcome::Applied { received_bytes, .. } if received_bytes == total),
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
