//! Device fleet benchmark: prints figures, asserts nothing.
//!
//! `FLEET_DEVICES` devices (1,000 by default), each with its own client certificate, arrive
//! at random moments over a window of `FLEET_SECONDS` seconds at one facade (the release
//! binary in `MESHANICS_FACADE_BIN`, a process of its own so its RSS and file descriptors are
//! its own). `FLEET_SECONDS` is a list (`60,5` by default: spread over a minute, then a burst),
//! each window on a fresh facade with an empty cache. Each device does what an agent does,
//! with the agent's own library: the signed metadata check (root, timestamp, targets,
//! verified against its pinned root) and a pull of a `FLEET_IMAGE_MIB` MiB image (20) into
//! its own content-addressed cache (in /dev/shm, removed after the pull), every byte
//! verified. The upstream is the CNCF distribution registry; its log counts the requests the
//! fleet cost it.
//!
//! In the same run (`FLEET_PROXY=0` skips it), the same fan-out per window against the
//! distribution registry in proxy mode (`proxy: remoteurl:` the same upstream, mutual TLS with
//! the same device certificates; the pull only, as it serves no signed metadata): its
//! upstream GETs per blob and its RSS. Then a handshake flood (`FLEET_FLOOD`, 1,100 idle TCP
//! connections from 127.0.0.2 that never send a ClientHello, more than the facade's default
//! 1,024 connection slots) beside `FLEET_FLOOD_DEVICES` (100) valid devices arriving over
//! `FLEET_FLOOD_SECONDS` (5) on a facade with its default limits.
//!
//! Then, per window, on the same devices and image (`FLEET_CLUSTER`, a list of
//! `haproxy,haproxy-kill,urls-kill`; unset or empty: none, as the three add ~9 minutes to
//! the default windows), two facade replicas (each its own cache) on one PostgreSQL
//! (Debian's, started by the bench; the upstream connected once through the operator API):
//! behind HAProxy in TCP mode; behind HAProxy with replica 0 SIGKILLed once a third of the
//! devices are done; with both replicas in each device's URL list (the agent's failover) and
//! the first one SIGKILLed likewise. See `fleet/cluster.rs` for what a kill run measures.
//!
//! Printed per run: errors; devices whose client retried a request; metadata and pull time
//! percentiles (arrival to done); the upstream's GETs per blob and per manifest and its request total; the server's peak RSS and
//! peak open file descriptors; for the facade, handshakes per second. Run it with
//! `bench/run fleet` or, from the repository root (a relative `MESHANICS_FACADE_BIN` is taken
//! from there),
//! `MESHANICS_FACADE_BIN=target/release/meshanics-facade cargo bench -p meshanics-tests --bench fleet`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshanics_agent::client::{Client, ClientOptions};
use meshanics_agent::metadata::{FacadeFetch, pull_target};
use meshanics_agent::progress::Silent;
use meshanics_agent::pull::{PullTarget, Puller};
use meshanics_agent::store::{Store, StoreOptions};
use meshanics_shared::devpki::DevCa;
use meshanics_shared::metadata::{TrustedStore, UnixTime, Updater};
use meshanics_shared::{Descriptor, Platform, Repository, tls};
use meshanics_tests::binaries;
use meshanics_tests::facade_process::{FacadeProcess, metric_value};
use meshanics_tests::oci_layout::{Layer, LayerFile, SampleImage, pseudo_random};
use meshanics_tests::proc_stats::ProcStats;
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::release::{Release, entry};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

// The two-replica runs (a module beside this file: a bench root looks for its modules beside
// it, not under `fleet/`).
#[path = "fleet/cluster.rs"]
mod cluster;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one device saw.
struct Outcome {
    metadata: Duration,
    total: Duration,
    bytes: u64,
}

/// What the devices pull and check.
#[derive(Clone)]
enum Work {
    /// The signed metadata check, then the target it names (the facade).
    Metadata(Arc<Vec<u8>>),
    /// This target, no metadata (the registry in proxy mode).
    Pull(PullTarget),
}

/// The server the fleet pulls from.
enum Server {
    Facade(Arc<FacadeProcess>),
    Proxy(RegistryServer),
    Cluster(cluster::Cluster),
}

/// Everything a run needs that does not change between runs.
struct Setup {
    facade_bin: PathBuf,
    work: PathBuf,
    shm: PathBuf,
    pki: PathBuf,
    metadata_dir: PathBuf,
    upstream: RegistryServer,
    anchor: Arc<Vec<u8>>,
    roots: rustls::RootCertStore,
    identities: Vec<Identity>,
    manifest: Descriptor,
    blobs: Vec<Descriptor>,
    platform: Platform,
    seed: u64,
    /// The replicas' PostgreSQL and master key, for the cluster runs.
    cluster: Option<cluster::State>,
}

fn main() -> ExitCode {
    meshanics_tests::run_main("fleet", run)
}

fn run() -> Result<(), BoxError> {
    let facade_bin = binaries::from_env(
        "MESHANICS_FACADE_BIN",
        "a release meshanics-facade, e.g. target/release/meshanics-facade (bench/run fleet sets it)",
    )?;
    let devices = env_number("FLEET_DEVICES", 1000) as usize;
    let windows: Vec<u64> = std::env::var("FLEET_SECONDS")
        .unwrap_or_else(|_| "60,5".into())
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .collect();
    let image_mib = env_number("FLEET_IMAGE_MIB", 20) as usize;
    let proxy = env_number("FLEET_PROXY", 1) != 0;
    let flood = env_number("FLEET_FLOOD", 1100) as usize;
    let flood_devices = env_number("FLEET_FLOOD_DEVICES", 100) as usize;
    let flood_window = Duration::from_secs(env_number("FLEET_FLOOD_SECONDS", 5));
    let cluster_modes =
        cluster::Mode::parse_list(&std::env::var("FLEET_CLUSTER").unwrap_or_default());
    cluster::install_retry_counter()?;
    let work = tempfile::tempdir()?;
    let shm = if Path::new("/dev/shm").is_dir() {
        tempfile::Builder::new()
            .prefix("meshanics-fleet-")
            .tempdir_in("/dev/shm")?
    } else {
        tempfile::tempdir()?
    };

    // The image: one platform, four layers.
    let upstream = RegistryServer::start(&Options::default())?;
    let layer_bytes = image_mib * 1024 * 1024 / 4;
    let layers = (0..4)
        .map(|i| Layer {
            files: vec![LayerFile {
                path: format!("data/{i}.bin"),
                contents: pseudo_random(7000 + i, layer_bytes),
            }],
        })
        .collect();
    let image = SampleImage {
        platforms: vec![(Platform::parse("linux/amd64")?, layers)],
    };
    let built = image.write_layout(&work.path().join("image"), "fleet")?;
    meshanics_tests::skopeo::push_layout(&built.dir, "fleet", &upstream.host(), "fleet/app")?;
    let manifest = built
        .manifest_for("linux/amd64")
        .ok_or("no amd64 manifest")?
        .clone();
    let blobs = built.blobs.first().cloned().unwrap_or_default();
    let image_bytes: u64 = blobs.iter().map(|d| d.size).sum::<u64>() + manifest.size;

    // The signed release.
    let metadata_dir = work.path().join("metadata");
    fs_err::create_dir_all(&metadata_dir)?;
    let mut release = Release::init(&metadata_dir)?;
    let repository = format!("{}/fleet/app", upstream.host());
    release.publish(vec![entry("app", &repository, &manifest, Some("fleet"))?])?;
    let anchor: Arc<Vec<u8>> = Arc::new(release.anchor().to_vec());

    // The PKI: the servers' certificate and one certificate per device.
    let started = Instant::now();
    let mut ca = DevCa::new("fleet CA")?;
    let server = ca.issue_server(&["127.0.0.1"])?;
    let pki = work.path().join("pki");
    fs_err::create_dir_all(&pki)?;
    fs_err::write(pki.join("ca.crt"), ca.cert_pem())?;
    fs_err::write(pki.join("facade.crt"), &server.cert_pem)?;
    fs_err::write(pki.join("facade.key"), &server.key_pem)?;
    let mut identities = Vec::with_capacity(devices.max(flood_devices));
    for i in 0..devices.max(flood_devices) {
        let issued = ca.issue_device(&format!("fleet-device-{i:04}"))?;
        let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
        identities.push((certs, key));
    }
    println!(
        "fleet: {} device certificates issued in {:.1} s; image {:.1} MiB in {} blobs; \
         load average {}",
        identities.len(),
        started.elapsed().as_secs_f64(),
        image_bytes as f64 / 1048576.0,
        blobs.len() + 1,
        load_average()
    );
    let mut setup = Setup {
        facade_bin,
        work: work.path().to_owned(),
        shm: shm.path().to_owned(),
        roots: tls::load_ca_bundle(&pki.join("ca.crt"))?,
        pki,
        metadata_dir,
        upstream,
        anchor,
        identities,
        manifest,
        blobs,
        platform: Platform::parse("linux/amd64")?,
        seed: env_number("FLEET_SEED", 20261122),
        cluster: None,
    };
    if !cluster_modes.is_empty() {
        let state = cluster::State::start(
            &setup.work,
            &setup.upstream.host(),
            &setup.facade_bin,
            &setup.metadata_dir,
            |state, name| facade_config(&setup, name, true, true, Some(state)),
        )?;
        setup.cluster = Some(state);
    }

    for (round, window) in windows.iter().enumerate() {
        let window = Duration::from_secs(*window);
        facade_run(&setup, &format!("facade-{round}"), true, devices, window, 0)?;
        for (i, mode) in cluster_modes.iter().enumerate() {
            cluster_run(
                &setup,
                *mode,
                &format!("cluster-{round}-{i}"),
                devices,
                window,
            )?;
        }
        if proxy {
            let registry = RegistryServer::start(&Options {
                tls: Some((setup.pki.join("facade.crt"), setup.pki.join("facade.key"))),
                client_cas: vec![setup.pki.join("ca.crt")],
                proxy_remote: Some(setup.upstream.base_url()),
                ..Options::default()
            })?;
            let target = PullTarget {
                name: "app".into(),
                repository: Repository::parse("fleet/app")?,
                digest: setup.manifest.digest.clone(),
                size: setup.manifest.size,
                media_type: setup.manifest.media_type.clone(),
                rollout: None,
                apply: None,
            };
            fleet_run(
                &setup,
                &Server::Proxy(registry),
                &Work::Pull(target),
                devices,
                window,
                0,
            )?;
        }
    }
    if flood > 0 {
        facade_run(
            &setup,
            "facade-flood",
            false,
            flood_devices,
            flood_window,
            flood,
        )?;
    }
    Ok(())
}

/// [`fleet_run`] on a fresh facade (state folder `name`, limits as [`facade_config`] says for
/// `roomy`), every device doing the metadata check first.
fn facade_run(
    setup: &Setup,
    name: &str,
    roomy: bool,
    devices: usize,
    window: Duration,
    flood: usize,
) -> Result<(), BoxError> {
    let config = facade_config(setup, name, roomy, roomy, None)?;
    let facade = match FacadeProcess::start_binary(&setup.facade_bin, &config, "warn") {
        Ok(facade) => facade,
        // A facade without the per-source handshake cap does not know its key.
        Err(error) if roomy && error.to_string().contains("max_handshakes_per_source") => {
            let config = facade_config(setup, name, roomy, false, None)?;
            FacadeProcess::start_binary(&setup.facade_bin, &config, "warn")?
        }
        Err(error) => return Err(error.into()),
    };
    let work = Work::Metadata(setup.anchor.clone());
    fleet_run(
        setup,
        &Server::Facade(Arc::new(facade)),
        &work,
        devices,
        window,
        flood,
    )
}

/// [`fleet_run`] on two fresh replicas (state folders `name-0` and `name-1`, room for every
/// device) on the cluster state, reached as `mode` says.
fn cluster_run(
    setup: &Setup,
    mode: cluster::Mode,
    name: &str,
    devices: usize,
    window: Duration,
) -> Result<(), BoxError> {
    let state = setup.cluster.as_ref().ok_or("no cluster state")?;
    let configs = (0..2)
        .map(|i| facade_config(setup, &format!("{name}-{i}"), true, true, Some(state)))
        .collect::<Result<Vec<_>, _>>()?;
    let cluster = cluster::Cluster::start(mode, &setup.facade_bin, &configs)?;
    let work = Work::Metadata(setup.anchor.clone());
    fleet_run(setup, &Server::Cluster(cluster), &work, devices, window, 0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The upstream's GETs of each of `descriptors` so far.
fn upstream_gets(upstream: &RegistryServer, kind: &str, descriptors: &[&Descriptor]) -> Vec<usize> {
    descriptors
        .iter()
        .map(|d| upstream.requests("GET", &format!("/{kind}/{}", d.digest)))
        .collect()
}

/// One fleet: `devices` devices arriving over `window` at `server`, beside `flood` idle TCP
/// connections opened first; prints its figures.
fn fleet_run(
    setup: &Setup,
    server: &Server,
    work: &Work,
    devices: usize,
    window: Duration,
    flood: usize,
) -> Result<(), BoxError> {
    // The processes serving devices (each sampled), and the URLs devices are given.
    let (name, pids, urls, facades): (&str, Vec<u32>, Vec<String>, Vec<Arc<FacadeProcess>>) =
        match server {
            Server::Facade(facade) => (
                "facade",
                vec![facade.pid()],
                vec![facade.url("")],
                vec![facade.clone()],
            ),
            Server::Proxy(registry) => (
                "registry (proxy mode)",
                vec![registry.pid()],
                vec![registry.base_url()],
                Vec::new(),
            ),
            Server::Cluster(cluster) => (
                cluster.label(),
                cluster.replicas.iter().map(|r| r.pid()).collect(),
                cluster.urls(),
                cluster.replicas.clone(),
            ),
        };
    let urls: Vec<http::Uri> = urls.iter().map(|u| u.parse()).collect::<Result<_, _>>()?;
    let first = urls.first().ok_or("no server URL")?.clone();
    let blobs: Vec<&Descriptor> = setup.blobs.iter().collect();
    let blob_gets_before = upstream_gets(&setup.upstream, "blobs", &blobs);
    let manifest_gets_before = upstream_gets(&setup.upstream, "manifests", &[&setup.manifest]);
    let requests_before = setup.upstream.requests("GET", "") + setup.upstream.requests("HEAD", "");

    // The flood: idle connections from another loopback address that never say a word.
    let flood_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let idle = flood_runtime.block_on(async {
        let mut idle = Vec::with_capacity(flood);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], first.port_u16().unwrap_or(443)));
        for _ in 0..flood {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::from(([127, 0, 0, 2], 0)))?;
            idle.push(socket.connect(addr).await?);
        }
        Ok::<_, std::io::Error>(idle)
    })?;

    // Samples of each server process: RSS, open fds, and the facades' handshakes counters
    // (summed), every 250 ms.
    let stop = Arc::new(AtomicBool::new(false));
    // The proxy-mode registry's memory grows with the fan-out (14 GiB in one run here): past
    // `FLEET_PROXY_MAX_RSS_MIB` (4,096) the bench stops it, so a shared machine is not run out
    // of memory, and says so.
    let rss_cap_kib = env_number("FLEET_PROXY_MAX_RSS_MIB", 4096) * 1024;
    let is_proxy = matches!(server, Server::Proxy(_));
    let sampler = {
        let stop = stop.clone();
        let facades = facades.clone();
        let pids = pids.clone();
        std::thread::spawn(move || {
            let mut samples: Vec<Sample> = Vec::new();
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let stats: Vec<Option<ProcStats>> =
                    pids.iter().map(|pid| ProcStats::read(*pid).ok()).collect();
                let handshakes = facades
                    .iter()
                    .map(|f| f.metric("facade_handshakes_total").unwrap_or(0) as f64)
                    .sum();
                let per_process = stats
                    .iter()
                    .map(|s| s.map_or((0, 0), |s| (s.fds, s.rss_kib)))
                    .collect();
                samples.push(Sample {
                    at: start.elapsed(),
                    per_process,
                    handshakes,
                });
                let rss = stats.first().copied().flatten().map_or(0, |s| s.rss_kib);
                if is_proxy && rss > rss_cap_kib {
                    if let Some(pid) = pids.first() {
                        let _ = std::process::Command::new("kill")
                            .arg(pid.to_string())
                            .status();
                    }
                    println!(
                        "registry (proxy mode) stopped by the bench at {:.0} MiB RSS (FLEET_PROXY_MAX_RSS_MIB)",
                        rss as f64 / 1024.0
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        })
    };

    // Each device's failed attempts and, in a kill run, the kill once a third of the devices
    // are done, and when each device cut by it received bytes again (checked every 5 ms).
    let tracker = cluster::Tracker::new(devices);
    let victim = match server {
        Server::Cluster(cluster) if cluster.kills() => cluster.replicas.first().cloned(),
        _ => None,
    };
    let watcher = {
        let stop = stop.clone();
        let tracker = tracker.clone();
        std::thread::spawn(move || {
            let mut done_at_kill = None;
            let mut metrics_at_kill = None;
            while !stop.load(Ordering::Relaxed) {
                if let Some(victim) = &victim
                    && done_at_kill.is_none()
                    && tracker.done() * 3 >= devices
                {
                    // Its cache figures, read just before: they die with it.
                    metrics_at_kill = victim.metrics().ok();
                    done_at_kill = Some(tracker.done());
                    // The clock starts as the kill is sent, so no failure it causes comes
                    // before it.
                    tracker.killed();
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &victim.pid().to_string()])
                        .status();
                }
                tracker.watch();
                std::thread::sleep(Duration::from_millis(5));
            }
            (done_at_kill, metrics_at_kill)
        })
    };

    // The arrivals: uniform over the window, seeded (printed) so a run can be repeated.
    let mut rng = fastrand::Rng::with_seed(setup.seed);
    let mut arrivals: Vec<Duration> = (0..devices).map(|_| window.mul_f64(rng.f64())).collect();
    arrivals.sort();
    // Two client threads (the machine has two cores, shared with the servers), each a
    // single-threaded runtime with its half of the devices: the pull futures are not `Send`.
    let run_start = Instant::now();
    let mut groups: Vec<Vec<(usize, Duration, Identity)>> = vec![Vec::new(), Vec::new()];
    for (i, (arrival, identity)) in arrivals.iter().zip(&setup.identities).enumerate() {
        if let Some(group) = groups.get_mut(i % 2) {
            let identity = (identity.0.clone(), identity.1.clone_key());
            group.push((i, *arrival, identity));
        }
    }
    let mut threads = Vec::new();
    for group in groups {
        let roots = setup.roots.clone();
        let urls = urls.clone();
        let work = work.clone();
        let platform = setup.platform.clone();
        let shm = setup.shm.clone();
        let tracker = tracker.clone();
        threads.push(std::thread::spawn(move || {
            let context = GroupContext {
                run_start,
                shm: &shm,
                urls: &urls,
                roots: &roots,
                work: &work,
                platform: &platform,
                tracker: &tracker,
            };
            run_group(group, &context)
        }));
    }
    let mut results: Vec<Result<Outcome, String>> = Vec::with_capacity(devices);
    for thread in threads {
        results.extend(
            thread
                .join()
                .map_err(|_| "a client thread panicked")?
                .map_err(|e| e.to_string())?,
        );
    }
    let elapsed = run_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().map_err(|_| "the sampler thread panicked")?;
    let (done_at_kill, metrics_at_kill) =
        watcher.join().map_err(|_| "the watcher thread panicked")?;
    // Idle connections the server closed by now (a read that ends at once), the rest open.
    let closed = flood_runtime.block_on(async {
        let mut closed = 0;
        for tcp in &idle {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), tcp.peek(&mut byte)).await
            {
                closed += 1;
            }
        }
        closed
    });
    drop(idle);

    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let outcomes: Vec<&Outcome> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut totals: Vec<f64> = outcomes.iter().map(|o| o.total.as_secs_f64()).collect();
    let mut metas: Vec<f64> = outcomes.iter().map(|o| o.metadata.as_secs_f64()).collect();
    let mut pulls: Vec<f64> = outcomes
        .iter()
        .map(|o| (o.total - o.metadata).as_secs_f64())
        .collect();
    let bytes: u64 = outcomes.iter().map(|o| o.bytes).sum();
    let flood_text = if flood > 0 {
        format!(", beside {flood} idle TCP connections without a ClientHello")
    } else {
        String::new()
    };
    println!();
    println!(
        "== {name}: {devices} devices over {} s{flood_text} (seed {}, load average {})",
        window.as_secs(),
        setup.seed,
        load_average()
    );
    println!("run took {:.1} s", elapsed.as_secs_f64());
    println!("errors: {} of {devices}", errors.len());
    for error in errors.iter().take(5) {
        println!("  {error}");
    }
    let (retried, failures) = tracker.retries();
    println!(
        "devices whose client retried a request: {retried} ({failures} failed attempts tried again)"
    );
    if let Some(kill) = done_at_kill.and_then(|done| tracker.kill_figures(done)) {
        print_kill(&kill, devices);
    }
    if !facades.is_empty() {
        let handshakes_total = samples.last().map(|s| s.handshakes).unwrap_or(0.0).max(
            facades
                .iter()
                .map(|f| f.metric("facade_handshakes_total").unwrap_or(0) as f64)
                .sum(),
        );
        let peak_rate = samples
            .windows(5)
            .filter_map(|w| {
                let (first, last) = (w.first()?, w.last()?);
                let secs = (last.at - first.at).as_secs_f64();
                (secs > 0.0).then(|| (last.handshakes - first.handshakes) / secs)
            })
            .fold(0.0_f64, f64::max);
        println!(
            "handshakes: {handshakes_total:.0} completed, mean {:.1}/s over the run, peak {peak_rate:.1}/s (1 s windows)",
            handshakes_total / elapsed.as_secs_f64()
        );
        print_percentiles("metadata check", &mut metas, 3);
        print_percentiles("pull incl. metadata", &mut totals, 2);
        for (i, facade) in facades.iter().enumerate() {
            // A killed replica answers no more: its figures as read just before the kill.
            let (text, when) = match facade.metrics() {
                Ok(text) => (text, ""),
                Err(_) => match &metrics_at_kill {
                    Some(text) => (text.clone(), " (just before its kill)"),
                    None => {
                        println!("facade {i} cache metrics: none (the process is gone)");
                        continue;
                    }
                },
            };
            let cache: Vec<String> = [
                "facade_cache_hits_total{kind=\"blob\"}",
                "facade_cache_misses_total{kind=\"blob\"}",
                "facade_cache_fills_total{outcome=\"ok\"}",
                "facade_cache_fills_total{outcome=\"failed\"}",
                "facade_cache_bytes_served_total{source=\"cache\"}",
                "facade_cache_bytes_served_total{source=\"upstream\"}",
            ]
            .iter()
            .filter_map(|m| Some(format!("{m} {}", metric_value(&text, m)?)))
            .collect();
            println!("facade {i} cache metrics{when}: {}", cache.join(", "));
        }
        // What the facades warned about (their log is at `warn`), a few lines each.
        for (i, facade) in facades.iter().enumerate() {
            let log = facade.log();
            let warnings: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .collect();
            if warnings.is_empty() {
                continue;
            }
            println!(
                "facade {i}: {} warnings and errors logged, the first:",
                warnings.len()
            );
            for line in warnings.iter().take(3) {
                println!("  {}", line.chars().take(300).collect::<String>());
            }
        }
    }
    print_percentiles("pull", &mut pulls, 2);
    println!(
        "bytes verified by devices: {:.2} GB ({:.0} MB/s over the run)",
        bytes as f64 / 1e9,
        bytes as f64 / 1e6 / elapsed.as_secs_f64()
    );
    let delta = |after: Vec<usize>, before: &[usize]| -> Vec<usize> {
        after.iter().zip(before).map(|(a, b)| a - b).collect()
    };
    let blob_gets = delta(
        upstream_gets(&setup.upstream, "blobs", &blobs),
        &blob_gets_before,
    );
    let manifest_gets = delta(
        upstream_gets(&setup.upstream, "manifests", &[&setup.manifest]),
        &manifest_gets_before,
    );
    let requests =
        setup.upstream.requests("GET", "") + setup.upstream.requests("HEAD", "") - requests_before;
    println!(
        "upstream: GETs per blob {blob_gets:?} ({} blobs), per manifest {manifest_gets:?}; \
         {requests} requests in all (GET and HEAD, /v2/ included)",
        blobs.len()
    );
    if flood > 0 {
        println!(
            "idle connections: {flood} opened from 127.0.0.2, {closed} closed by the server by the end"
        );
    }
    for (i, pid) in pids.iter().enumerate() {
        let peak_fds = samples
            .iter()
            .filter_map(|s| s.per_process.get(i).map(|p| p.0))
            .max()
            .unwrap_or(0);
        let sampled_rss = samples
            .iter()
            .filter_map(|s| s.per_process.get(i).map(|p| p.1))
            .max()
            .unwrap_or(0);
        let peak_rss = ProcStats::read(*pid)
            .map_or(0, |s| s.peak_rss_kib)
            .max(sampled_rss);
        let which = if pids.len() > 1 {
            format!("{name}, process {i}")
        } else {
            name.to_owned()
        };
        println!(
            "{which}: peak RSS {:.1} MiB, peak open fds {peak_fds}",
            peak_rss as f64 / 1024.0
        );
    }
    Ok(())
}

/// One look at the server processes.
struct Sample {
    at: Duration,
    /// Open fds and RSS (KiB) per process.
    per_process: Vec<(usize, u64)>,
    /// The facades' handshakes counters, summed.
    handshakes: f64,
}

/// Prints what the devices saw of a replica kill.
fn print_kill(kill: &cluster::KillFigures, devices: usize) {
    let mut resumed: Vec<f64> = kill.resumed.iter().flatten().copied().collect();
    let never = kill.resumed.len() - resumed.len();
    println!(
        "kill: replica 0 SIGKILLed {:.2} s into the run, {} of {devices} devices done, {} pulling \
         ({} failed attempts before it)",
        kill.at.as_secs_f64(),
        kill.done_before,
        kill.busy,
        kill.failures_before
    );
    println!(
        "devices cut (pulling at the kill, a failed attempt after it): {}; back to receiving \
         bytes: {}, never: {never}; devices started after the kill with a failed attempt: {}",
        kill.resumed.len(),
        resumed.len(),
        kill.late_failed
    );
    print_percentiles(
        "from the kill to a cut device's first bytes again",
        &mut resumed,
        3,
    );
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// What every device of a client thread shares.
struct GroupContext<'a> {
    run_start: Instant,
    shm: &'a Path,
    urls: &'a [http::Uri],
    roots: &'a rustls::RootCertStore,
    work: &'a Work,
    platform: &'a Platform,
    tracker: &'a Arc<cluster::Tracker>,
}

/// Runs one thread's devices, each starting at its arrival time.
fn run_group(
    group: Vec<(usize, Duration, Identity)>,
    context: &GroupContext<'_>,
) -> Result<Vec<Result<Outcome, String>>, BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let results = local.block_on(&runtime, async {
        let mut tasks = Vec::with_capacity(group.len());
        for (i, arrival, identity) in group {
            let at = tokio::time::Instant::from_std(context.run_start + arrival);
            let dir = context.shm.join(format!("device-{i:04}"));
            let roots = context.roots.clone();
            let urls = context.urls.to_vec();
            let work = context.work.clone();
            let platform = context.platform.clone();
            let tracker = context.tracker.clone();
            tasks.push(tokio::task::spawn_local(async move {
                tokio::time::sleep_until(at).await;
                let result = cluster::tracked(
                    i,
                    tracker,
                    // Boxed: the device's future is large (clippy::large_futures).
                    Box::pin(device(&dir, &urls, roots, identity, &work, &platform)),
                )
                .await;
                let _ = std::fs::remove_dir_all(&dir);
                result.map_err(|e| format!("device {i}: {e}"))
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            out.push(task.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
        }
        out
    });
    Ok(results)
}

/// One device: the metadata check (when `work` says so), then the pull into its own cache,
/// with a client for `urls` (one facade, or replicas it fails over between).
async fn device(
    dir: &Path,
    urls: &[http::Uri],
    roots: rustls::RootCertStore,
    identity: Identity,
    work: &Work,
    platform: &Platform,
) -> Result<Outcome, BoxError> {
    let start = Instant::now();
    let tls = tls::client_config_from(roots, Some(identity))?;
    let client = Arc::new(Client::with_replicas(
        urls,
        tls,
        ClientOptions {
            connect_timeout: Duration::from_secs(30),
            stall_window: Duration::from_secs(60),
            ..ClientOptions::default()
        },
    )?);
    cluster::register(&client);
    let target = match work {
        Work::Metadata(anchor) => {
            let trusted = TrustedStore::open(dir.join("metadata"))?;
            std::fs::create_dir_all(dir.join("metadata"))?;
            let mut updater = Updater::with_store(anchor, trusted)?;
            updater
                .update(&mut FacadeFetch::new(&client), UnixTime::now())
                .await?;
            let targets = updater.trusted().targets().ok_or("no targets trusted")?;
            let entry = targets
                .matching("fleet", platform)
                .next()
                .ok_or("no target for this device")?;
            pull_target(entry)?
        }
        Work::Pull(target) => target.clone(),
    };
    let metadata = start.elapsed();
    let (store, _) = Store::open(&dir.join("state"), StoreOptions::default())?;
    let pulled = Puller {
        client: &client,
        store: &store,
        platform,
        concurrency: 4,
        progress: &Silent,
    }
    .pull(&target)
    .await?;
    Ok(Outcome {
        metadata,
        total: start.elapsed(),
        bytes: pulled.received_bytes,
    })
}

/// The facade's configuration for a run (`name` names its state folder, so each run starts
/// with an empty cache; with `cluster`, on the replicas' shared state): its listeners on port 0 (read back from its log by
/// [`FacadeProcess`]), the fleet CA for devices, and with `roomy` room for every device's
/// connection (else the default limits). With `per_source`, the per-source handshake cap is
/// lifted too: the simulated fleet shares one address, 127.0.0.1, where a real fleet has one
/// per device (as the load benches do; the flood run keeps the default cap, and its idle
/// connections come from 127.0.0.2).
fn facade_config(
    setup: &Setup,
    name: &str,
    roomy: bool,
    per_source: bool,
    cluster: Option<&cluster::State>,
) -> Result<PathBuf, BoxError> {
    let state = setup.work.join(format!("{name}-state"));
    fs_err::create_dir_all(&state)?;
    let config = setup.work.join(format!("{name}.toml"));
    let limits = match (roomy, per_source) {
        (true, true) => "max_connections = 2048\nmax_handshakes_per_source = 1024\n",
        (true, false) => "max_connections = 2048\n",
        (false, _) => "",
    };
    // On the cluster state: the master key, the PostgreSQL backend, and the upstream from the
    // connection in the database; else the upstream approved in the file.
    let (master_key, tail) = match cluster {
        Some(state) => state.config_lines(),
        None => (
            String::new(),
            format!(
                "[[upstreams]]\nhost = \"{}\"\nplain_http = true\n",
                setup.upstream.host()
            ),
        ),
    };
    fs_err::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\noperator_listen = \"127.0.0.1:0\"\n\
             state_dir = \"{state}\"\nmetadata_dir = \"{metadata}\"\n{master_key}\n[tls]\n\
             certificate = \"{pki}/facade.crt\"\nprivate_key = \"{pki}/facade.key\"\n\
             device_ca = \"{pki}/ca.crt\"\n\n[limits]\n{limits}\n{tail}",
            state = state.display(),
            metadata = setup.metadata_dir.display(),
            pki = setup.pki.display(),
        ),
    )?;
    Ok(config)
}

/// Prints `LABEL (s): p50 ..  p99 ..  max ..` with `decimals` decimals.
fn print_percentiles(label: &str, values: &mut [f64], decimals: usize) {
    let (p50, p99, max) = (
        percentile(values, 0.50),
        percentile(values, 0.99),
        percentile(values, 1.0),
    );
    println!("{label} (s): p50 {p50:.decimals$}  p99 {p99:.decimals$}  max {max:.decimals$}");
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((values.len() - 1) as f64 * p).round() as usize;
    values.get(rank).copied().unwrap_or(0.0)
}
