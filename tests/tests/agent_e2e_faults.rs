//! End to end, with faults: registry -> facade (mutual TLS) -> the agent's update cycle
//! with its signed-metadata source. A blob tampered with in the registry's storage, and a
//! stale timestamp: each time nothing is applied, `current` stays what it was, and `status`
//! says why.

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
