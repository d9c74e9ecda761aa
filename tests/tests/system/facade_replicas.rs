//! Two facade replicas (the real binary, one upstream, a state folder and cache each) and
//! devices running the agent's own pull code while one replica is SIGKILLed mid-pull: once
//! with HAProxy in TCP mode in front of the replicas (devices know one URL), once with the
//! replicas in the agent's own URL list (no load balancer). Every device finishes, and every
//! byte in every device's cache is the source's: a cut response is never taken as a clean
//! one, and a cut download resumes (with `Range`) on the surviving replica.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a setup that fails is a failing test"
)]

use std::time::Duration;

use meshanics_agent::client::ClientOptions;
use meshanics_agent::pull::PullTarget;
use meshanics_shared::Repository;
use meshanics_tests::facade::{FacadeFixture, UpstreamEntry, Who, device_repository};
use meshanics_tests::facade_process::{FacadeProcess, replica_config};
use meshanics_tests::haproxy::Haproxy;
use meshanics_tests::oci_layout::{BuiltImage, SampleImage};
use meshanics_tests::pull_device::PullDevice;
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::skopeo;

const REPO: &str = "team/app";
const DEVICES: usize = 4;
/// Per device: slow enough that the kill lands mid-pull (the kill waits for bytes, not time).
const DEVICE_RATE: u64 = 2 << 20;

/// The upstream with an image, and two facade replicas of one fixture's config.
struct Cluster {
    _work: tempfile::TempDir,
    registry: RegistryServer,
    built: BuiltImage,
    fixture: FacadeFixture,
    /// Each replica's own folder (state and cache) and process.
    replicas: Vec<(tempfile::TempDir, FacadeProcess)>,
}

impl Cluster {
    fn start() -> Self {
        let work = tempfile::tempdir().unwrap();
        let registry = RegistryServer::start(&Options::default()).unwrap();
        let image = SampleImage::multi_arch(&["linux/amd64"], 4 << 20, 2 << 20).unwrap();
        let built = image
            .write_layout(&work.path().join("layout"), "v1")
            .unwrap();
        skopeo::push_layout(&built.dir, "v1", &registry.host(), REPO).unwrap();
        let fixture =
            FacadeFixture::with_upstream(UpstreamEntry::anonymous(&registry.host())).unwrap();
        let replicas = (0..2)
            .map(|_| {
                let (dir, config) = replica_config(&fixture.config_path()).unwrap();
                let process = FacadeProcess::start(&config, "warn").unwrap();
                (dir, process)
            })
            .collect();
        Cluster {
            _work: work,
            registry,
            built,
            fixture,
            replicas,
        }
    }

    fn target(&self) -> PullTarget {
        PullTarget {
            name: "app".into(),
            repository: Repository::parse(&device_repository(&self.registry.host(), REPO)).unwrap(),
            digest: self.built.index.digest.clone(),
            size: self.built.index.size,
            media_type: self.built.index.media_type.clone(),
            rollout: None,
            apply: None,
        }
    }

    fn device(&self, urls: &[String]) -> PullDevice {
        let urls: Vec<http::Uri> = urls.iter().map(|u| u.parse().unwrap()).collect();
        PullDevice::new(
            &urls,
            self.fixture.tls_config(Who::Device).unwrap(),
            ClientOptions {
                connect_timeout: Duration::from_secs(2),
                stall_window: Duration::from_secs(2),
                keep_alive_interval: Duration::from_secs(1),
                keep_alive_timeout: Duration::from_secs(2),
                backoff_base: Duration::from_millis(100),
                backoff_max: Duration::from_secs(1),
                attempts: 5,
                bandwidth_limit: Some(DEVICE_RATE),
                ..ClientOptions::default()
            },
        )
        .unwrap()
    }

    /// The replica that is not killed (the last one): its bytes streamed to devices.
    fn survivor_streamed(&self) -> i64 {
        let (_, survivor) = self.replicas.last().unwrap();
        survivor.metric("facade_bytes_streamed_total").unwrap()
    }
}

/// The bytes a device pulls: index, manifest, config and layers (the image has one
/// platform, so every blob of its layout).
fn pull_size(built: &BuiltImage) -> u64 {
    built.all_blobs.values().sum()
}

/// Every device pulls `cluster`'s image through `urls` while the first replica is SIGKILLed
/// once the devices have a quarter of their bytes. Returns what each device had received
/// when the kill came, and what the killed replica had streamed to devices by then.
fn pull_while_the_first_replica_is_killed(
    cluster: &mut Cluster,
    urls: &[String],
) -> (Vec<u64>, i64) {
    let target = cluster.target();
    let devices: Vec<PullDevice> = (0..DEVICES).map(|_| cluster.device(urls)).collect();
    let whole = pull_size(&cluster.built);
    let (victim_dir, victim) = cluster.replicas.remove(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (pulls, (at_kill, victim_streamed)) = runtime.block_on(async {
        let kill = async {
            let mut victim = Some(victim);
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let received: Vec<u64> = devices
                    .iter()
                    .map(|d| d.client.downloaded_bytes())
                    .collect();
                if received.iter().sum::<u64>() >= DEVICES as u64 * whole / 4 {
                    let streamed = victim
                        .as_ref()
                        .map(|v| v.metric("facade_bytes_streamed_total").unwrap())
                        .unwrap_or(0);
                    drop(victim.take()); // SIGKILL
                    return (received, streamed);
                }
            }
        };
        tokio::join!(
            futures_util::future::join_all(devices.iter().map(|d| d.pull(&target, 2))),
            kill
        )
    });
    drop(victim_dir);
    for (i, (device, pulled)) in devices.iter().zip(pulls).enumerate() {
        let pulled = pulled.unwrap();
        for blob in pulled.blobs.iter().chain([&pulled.manifest]) {
            let cached = std::fs::read(device.store.blob_path(&blob.digest)).unwrap();
            assert_eq!(
                cached,
                cluster.built.blob(&blob.digest).unwrap(),
                "device {i}: {}",
                blob.digest
            );
        }
        assert!(
            device
                .store
                .has(&pulled.target.digest, pulled.target.size)
                .unwrap()
        );
        // What a device had received before the kill stayed in its ingest files: the cut
        // downloads resumed on the survivor instead of starting over.
        assert_eq!(
            device.client.downloaded_bytes(),
            whole,
            "device {i} received bytes twice"
        );
    }
    (at_kill, victim_streamed)
}

#[test]
fn devices_behind_haproxy_finish_a_pull_with_every_byte_verified_when_a_replica_is_killed() {
    let mut cluster = Cluster::start();
    let servers: Vec<_> = cluster
        .replicas
        .iter()
        .map(|(_, p)| p.device_addr())
        .collect();
    let haproxy = Haproxy::start(&servers).unwrap();
    let whole = pull_size(&cluster.built);

    let (at_kill, victim_streamed) =
        pull_while_the_first_replica_is_killed(&mut cluster, &[haproxy.url()]);

    assert!(
        victim_streamed > 0,
        "the killed replica had served no device"
    );
    assert!(
        at_kill.iter().any(|&n| n < whole),
        "every device had finished before the kill: {at_kill:?}"
    );
    assert!(cluster.survivor_streamed() > 0);
}

#[test]
fn devices_with_both_replicas_in_their_url_list_finish_a_pull_when_the_first_is_killed() {
    let mut cluster = Cluster::start();
    let urls: Vec<String> = cluster.replicas.iter().map(|(_, p)| p.url("")).collect();
    let whole = pull_size(&cluster.built);
    let survivor_before = cluster.survivor_streamed();

    let (at_kill, victim_streamed) = pull_while_the_first_replica_is_killed(&mut cluster, &urls);

    // Sticky and in order: nothing went to the second replica until the first was lost.
    assert_eq!(survivor_before, 0);
    assert!(
        victim_streamed > 0,
        "the killed replica had served no device"
    );
    assert!(
        at_kill.iter().all(|&n| n > 0 && n < whole),
        "a device was not mid-pull when the kill came: {at_kill:?} of {whole}"
    );
    assert!(
        cluster.survivor_streamed() > 0,
        "the survivor served nothing"
    );
}
