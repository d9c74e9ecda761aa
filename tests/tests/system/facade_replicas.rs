//! Two facade replicas (the real binary, one upstream, a state folder and cache each) and
//! devices running the agent's own pull code, with either state backend.
//!
//! One replica SIGKILLed mid-pull: with HAProxy in TCP mode in front of the replicas (devices
//! know one URL; files backend, and PostgreSQL with the connection added through the killed
//! replica's operator API), and with the replicas in the agent's own URL list (no load
//! balancer). Every device finishes, and every byte in every device's cache is the source's: a
//! cut response is never taken as a clean one, and a cut download resumes (with `Range`) on
//! the surviving replica.
//!
//! PostgreSQL stopped for 30 s (real seconds) while devices pull through both replicas: every
//! pull succeeds, an operator write fails naming the database, `facade_state_stale` is 1
//! during and 0 after, and the replicas converge on changes made as the outage ended and
//! after it.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a setup that fails is a failing test"
)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meshanics_agent::client::ClientOptions;
use meshanics_agent::pull::{PullTarget, Pulled};
use meshanics_facade::connections::ADMIN_SOCKET;
use meshanics_facade::seal::MasterKey;
use meshanics_operator_api::{OperatorClient, ProviderKind};
use meshanics_shared::Repository;
use meshanics_tests::binaries::workspace_binary;
use meshanics_tests::facade::{
    FacadeFixture, FacadeOptions, UpstreamEntry, Who, device_path, device_repository,
    plain_http_connection, send,
};
use meshanics_tests::facade_process::{FacadeProcess, replica_config};
use meshanics_tests::haproxy::Haproxy;
use meshanics_tests::oci_layout::{BuiltImage, SampleImage};
use meshanics_tests::postgres::PostgresServer;
use meshanics_tests::pull_device::PullDevice;
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::skopeo;
use meshanics_tests::within;

const REPO: &str = "team/app";
const DEVICES: usize = 4;
/// Per device: slow enough that the kill lands mid-pull (the kill waits for bytes, not time).
const DEVICE_RATE: u64 = 2 << 20;
/// The bound the issue sets for a change to reach every replica.
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);
/// How long PostgreSQL is down in the outage test: the number, in real seconds.
const OUTAGE: Duration = Duration::from_secs(30);
/// Pulls per device in the outage test at most (each takes about 3 s at [`DEVICE_RATE`]).
const MAX_PULLS: usize = 100;

/// Where the replicas keep their connections.
#[derive(Debug, Clone, Copy)]
enum Backend<'a> {
    /// Files in each replica's state folder: the upstream is in the config they share.
    Files,
    /// One PostgreSQL database: the upstream is connected and approved through the first
    /// replica's operator API, and the second learns it from the database.
    Postgres(&'a PostgresServer),
}

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
    fn start(backend: Backend<'_>) -> Self {
        let work = tempfile::tempdir().unwrap();
        let registry = RegistryServer::start(&Options::default()).unwrap();
        let image = SampleImage::multi_arch(&["linux/amd64"], 4 << 20, 2 << 20).unwrap();
        let built = image
            .write_layout(&work.path().join("layout"), "v1")
            .unwrap();
        skopeo::push_layout(&built.dir, "v1", &registry.host(), REPO).unwrap();
        let fixture = match backend {
            Backend::Files => {
                FacadeFixture::with_upstream(UpstreamEntry::anonymous(&registry.host())).unwrap()
            }
            // The fixture's own facade is a third replica on the database, idle.
            Backend::Postgres(database) => FacadeFixture::start(&FacadeOptions {
                connections: true,
                master_key_hex: Some(MasterKey::generate_hex().unwrap()),
                state: database.facade_state(),
                ..FacadeOptions::default()
            })
            .unwrap(),
        };
        let replicas = (0..2)
            .map(|_| {
                let (dir, config) = replica_config(&fixture.config_path()).unwrap();
                let process = FacadeProcess::start(&config, "warn").unwrap();
                (dir, process)
            })
            .collect();
        let cluster = Cluster {
            _work: work,
            registry,
            built,
            fixture,
            replicas,
        };
        if let Backend::Postgres(_) = backend {
            let host = cluster.registry.host();
            cluster.connect(0, &host);
            assert!(
                within(PROPAGATION_BOUND, || cluster.status(1, &host) == 200),
                "the second replica serves what the first one's operator connected"
            );
        }
        cluster
    }

    /// Replica `replica`'s folder and process.
    fn replica(&self, replica: usize) -> &(tempfile::TempDir, FacadeProcess) {
        self.replicas.get(replica).unwrap()
    }

    /// Replica `replica`'s operator socket.
    fn socket(&self, replica: usize) -> PathBuf {
        self.replica(replica)
            .0
            .path()
            .join("state")
            .join(ADMIN_SOCKET)
    }

    /// A client of replica `replica`'s operator socket.
    fn operator(&self, replica: usize) -> OperatorClient {
        OperatorClient::new(&self.socket(replica))
    }

    /// Connects the upstream as `host` (anonymous, plain HTTP) through replica `replica`'s
    /// operator API, and approves it.
    fn connect(&self, replica: usize, host: &str) {
        let operator = self.operator(replica);
        let request =
            plain_http_connection(host.to_owned(), ProviderKind::Anonymous, None, Vec::new());
        self.fixture
            .block_on(async {
                operator.add(&request).await?;
                operator.approve(host).await
            })
            .unwrap();
    }

    /// The status replica `replica` answers a device's `GET` of the image's manifest through
    /// the upstream connected as `host`.
    fn status(&self, replica: usize, host: &str) -> u16 {
        let client = self.fixture.client(Who::Device, false).unwrap();
        let digest = self
            .built
            .manifest_for("linux/amd64")
            .unwrap()
            .digest
            .clone();
        let path = device_path(host, REPO, "manifests", digest.as_ref());
        let url = self.replica(replica).1.url(&path);
        self.fixture
            .block_on(send(&client, reqwest::Method::GET, url, &[]))
            .unwrap()
            .status
    }

    /// Replica `replica`'s `facade_state_stale`.
    fn stale(&self, replica: usize) -> i64 {
        self.replica(replica)
            .1
            .metric("facade_state_stale")
            .unwrap()
    }

    /// What each replica has streamed to devices so far.
    fn streamed(&self) -> Vec<i64> {
        self.replicas
            .iter()
            .map(|(_, p)| p.metric("facade_bytes_streamed_total").unwrap())
            .collect()
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
        device(&self.fixture.tls_config(Who::Device).unwrap(), urls)
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

/// A device with a fresh cache whose client tries `urls` in order, at [`DEVICE_RATE`].
fn device(tls: &rustls::ClientConfig, urls: &[String]) -> PullDevice {
    let urls: Vec<http::Uri> = urls.iter().map(|u| u.parse().unwrap()).collect();
    PullDevice::new(
        &urls,
        tls.clone(),
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

/// Every blob device `i` pulled is the source's, byte for byte, its image is whole in its
/// cache, and it received each byte once (what it had before a cut stayed in its ingest
/// files: a cut download resumed instead of starting over).
fn verify(built: &BuiltImage, i: usize, device: &PullDevice, pulled: &Pulled) {
    for blob in pulled.blobs.iter().chain([&pulled.manifest]) {
        let cached = std::fs::read(device.store.blob_path(&blob.digest)).unwrap();
        assert_eq!(
            cached,
            built.blob(&blob.digest).unwrap(),
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
    assert_eq!(
        device.client.downloaded_bytes(),
        pull_size(built),
        "device {i} received bytes twice"
    );
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
        verify(&cluster.built, i, device, &pulled.unwrap());
    }
    (at_kill, victim_streamed)
}

/// Devices behind HAProxy pull while the first replica is killed; both replicas served.
fn pull_behind_haproxy_while_the_first_replica_is_killed(mut cluster: Cluster) {
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
fn devices_behind_haproxy_finish_a_pull_with_every_byte_verified_when_a_replica_is_killed() {
    pull_behind_haproxy_while_the_first_replica_is_killed(Cluster::start(Backend::Files));
}

#[test]
fn with_postgresql_state_devices_behind_haproxy_finish_a_pull_when_the_replica_the_registry_was_connected_on_is_killed()
 {
    let database = PostgresServer::start().unwrap();
    pull_behind_haproxy_while_the_first_replica_is_killed(Cluster::start(Backend::Postgres(
        &database,
    )));
}

#[test]
fn devices_with_both_replicas_in_their_url_list_finish_a_pull_when_the_first_is_killed() {
    let mut cluster = Cluster::start(Backend::Files);
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

/// Device `i` pulls `target` through `urls` into a fresh cache again and again, verifying
/// every byte of each pull, until `stop` (or [`MAX_PULLS`]); counts its pulls in `done`.
async fn pull_until_stopped(
    i: usize,
    (tls, urls): (&rustls::ClientConfig, &[String]),
    (built, target): (&BuiltImage, &PullTarget),
    stop: &AtomicBool,
    done: &AtomicUsize,
) {
    for n in 0..MAX_PULLS {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let device = device(tls, urls);
        let pulled = device
            .pull(target, 2)
            .await
            .map_err(|error| format!("device {i}, pull {n} through {urls:?}: {error}"))
            .unwrap();
        verify(built, i, &device, &pulled);
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sets its flag when dropped, on a panic too.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn devices_keep_pulling_through_both_replicas_while_postgresql_is_down_for_30_s_and_the_state_converges_after()
 {
    let mut database = PostgresServer::start().unwrap();
    let cluster = Cluster::start(Backend::Postgres(&database));
    // The same upstream under a second name: the connection operators change during the test,
    // while devices pull through the first.
    let changed = cluster.registry.host().replace("127.0.0.1", "localhost");
    cluster.connect(0, &changed);
    assert!(within(PROPAGATION_BOUND, || cluster.status(1, &changed) == 200));

    let urls: Vec<String> = cluster.replicas.iter().map(|(_, p)| p.url("")).collect();
    // Half the devices stick to each replica: both serve for the whole outage.
    let orders = [urls.clone(), urls.iter().rev().cloned().collect::<Vec<_>>()];
    let tls = cluster.fixture.tls_config(Who::Device).unwrap();
    let target = cluster.target();
    let stop = AtomicBool::new(false);
    let done: Vec<AtomicUsize> = (0..DEVICES).map(|_| AtomicUsize::new(0)).collect();
    let pulls = || -> Vec<usize> { done.iter().map(|d| d.load(Ordering::Relaxed)).collect() };

    std::thread::scope(|scope| {
        let pulling = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(futures_util::future::join_all((0..DEVICES).map(|i| {
                pull_until_stopped(
                    i,
                    (&tls, &orders[i % 2]),
                    (&cluster.built, &target),
                    &stop,
                    &done[i],
                )
            })));
        });
        // A failed assertion below stops the devices too (the scope waits for them).
        let stop_devices = StopOnDrop(&stop);
        assert!(
            within(Duration::from_secs(30), || pulls().iter().all(|&n| n > 0)),
            "every device pulls once before the outage"
        );

        // PostgreSQL down for the 30 s.
        let (pulls_before, streamed_before) = (pulls(), cluster.streamed());
        let stopped = Instant::now();
        database.stop();
        assert!(
            within(Duration::from_secs(10), || cluster.stale(0) == 1
                && cluster.stale(1) == 1),
            "both replicas say their state is stale"
        );
        for replica in 0..2 {
            assert_eq!(
                cluster.status(replica, &changed),
                200,
                "replica {replica} serves the last state it loaded"
            );
        }
        let meshctl = workspace_binary("meshctl", "meshctl").unwrap();
        let refused = std::process::Command::new(&meshctl)
            .arg("--socket")
            .arg(cluster.socket(1))
            .args(["registry", "unapprove", &changed])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success(),
            "an operator write without the database: {said}"
        );
        assert!(
            said.contains("state database")
                && said.contains(&format!("127.0.0.1:{}", database.port())),
            "meshctl's error names the database: {said}"
        );
        std::thread::sleep(OUTAGE.saturating_sub(stopped.elapsed()));
        let (pulls_during, streamed_during) = (pulls(), cluster.streamed());
        database.start_again().unwrap();

        for (i, (before, during)) in pulls_before.iter().zip(&pulls_during).enumerate() {
            assert!(
                during > before,
                "device {i} pulled nothing during the outage"
            );
        }
        for (replica, (before, during)) in streamed_before.iter().zip(&streamed_during).enumerate()
        {
            assert!(
                during > before,
                "replica {replica} served nothing during the outage"
            );
        }
        assert!(
            cluster
                .replica(1)
                .1
                .log()
                .contains("state database unreachable"),
            "the log says the state is stale"
        );

        // As the outage ends, B's operator unapproves the second name: A, still reconnecting
        // or just back, picks the change up from the database.
        let (a, b) = (cluster.operator(0), cluster.operator(1));
        assert!(
            within(Duration::from_secs(30), || cluster
                .fixture
                .block_on(b.unapprove(&changed))
                .is_ok()),
            "operator writes work again"
        );
        let a_stale_at_write = cluster.stale(0);
        assert!(
            within(Duration::from_secs(10), || cluster.stale(0) == 0
                && cluster.stale(1) == 0),
            "both replicas reload once the database is back"
        );
        assert!(
            within(PROPAGATION_BOUND, || cluster.status(0, &changed) == 404),
            "A refuses what B's operator unapproved as the outage ended (A stale then: {a_stale_at_write})"
        );
        // And after it: approved again on A, served by B within the bound.
        cluster.fixture.block_on(a.approve(&changed)).unwrap();
        assert!(
            within(PROPAGATION_BOUND, || cluster.status(1, &changed) == 200),
            "B serves what A's operator approved after the outage"
        );
        let (on_a, on_b) = cluster
            .fixture
            .block_on(async { (a.list().await, b.list().await) });
        assert_eq!(on_a.unwrap(), on_b.unwrap(), "the replicas converged");
        let audit = cluster.fixture.block_on(a.audit(3)).unwrap();
        let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            ["approve", "unapprove", "approve"],
            "the write refused during the outage left no trace"
        );

        drop(stop_devices);
        pulling.join().unwrap();
        eprintln!(
            "outage test: pulls per device before/after the outage {pulls_before:?}/{pulls_during:?}, \
             now {:?}; A stale at B's first write after it: {a_stale_at_write}",
            pulls()
        );
    });
}
