//! Device fleet benchmark: prints figures, asserts nothing.
//!
//! `FLEET_DEVICES` devices (1,000 by default), each with its own client certificate, arrive
//! at random moments over `FLEET_SECONDS` seconds (60) at one facade (the release binary in
//! `MESHANICS_FACADE_BIN`, a process of its own so its RSS and file descriptors are its
//! own). Each device does what an agent does, with the agent's own library: the signed
//! metadata check (root, timestamp, targets, verified against its pinned root) and a pull
//! of a `FLEET_IMAGE_MIB` MiB image (20) into its own content-addressed cache (in
//! /dev/shm, removed after the pull), every byte verified. The upstream is the CNCF
//! distribution registry.
//!
//! Printed: handshakes (the facade's counter) per second, peak and mean; errors; metadata
//! and pull time percentiles (arrival to applied-ready); the facade's peak RSS and peak open
//! file descriptors. Run it with `bench/run fleet` or, from the repository root (a relative
//! `MESHANICS_FACADE_BIN` is taken from there),
//! `MESHANICS_FACADE_BIN=target/release/meshanics-facade cargo bench -p meshanics-tests --bench fleet`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshanics_agent::client::{Client, ClientOptions};
use meshanics_agent::metadata::{FacadeFetch, pull_target};
use meshanics_agent::progress::Silent;
use meshanics_agent::pull::Puller;
use meshanics_agent::store::{Store, StoreOptions};
use meshanics_shared::devpki::DevCa;
use meshanics_shared::metadata::{TrustedStore, UnixTime, Updater};
use meshanics_shared::{Platform, tls};
use meshanics_tests::binaries;
use meshanics_tests::facade_process::FacadeProcess;
use meshanics_tests::oci_layout::{Layer, LayerFile, SampleImage, pseudo_random};
use meshanics_tests::proc_stats::ProcStats;
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::release::{Release, entry};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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

fn main() -> ExitCode {
    meshanics_tests::run_main("fleet", run)
}

fn run() -> Result<(), BoxError> {
    let facade_bin = binaries::from_env(
        "MESHANICS_FACADE_BIN",
        "a release meshanics-facade, e.g. target/release/meshanics-facade (bench/run fleet sets it)",
    )?;
    let devices = env_number("FLEET_DEVICES", 1000) as usize;
    let window = Duration::from_secs(env_number("FLEET_SECONDS", 60));
    let image_mib = env_number("FLEET_IMAGE_MIB", 20) as usize;
    let work = tempfile::tempdir()?;
    let shm = if Path::new("/dev/shm").is_dir() {
        tempfile::Builder::new()
            .prefix("meshanics-fleet-")
            .tempdir_in("/dev/shm")?
    } else {
        tempfile::tempdir()?
    };

    // The image: one platform, four layers.
    let registry = RegistryServer::start(&Options::default())?;
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
    meshanics_tests::skopeo::push_layout(&built.dir, "fleet", &registry.host(), "fleet/app")?;
    let manifest = built
        .manifest_for("linux/amd64")
        .ok_or("no amd64 manifest")?
        .clone();
    let image_bytes: u64 =
        built.blobs.iter().flatten().map(|d| d.size).sum::<u64>() + manifest.size;

    // The signed release.
    let metadata_dir = work.path().join("metadata");
    fs_err::create_dir_all(&metadata_dir)?;
    let mut release = Release::init(&metadata_dir)?;
    let upstream = format!("{}/fleet/app", registry.host());
    release.publish(vec![entry("app", &upstream, &manifest, Some("fleet"))?])?;
    let anchor: Arc<Vec<u8>> = Arc::new(release.anchor().to_vec());

    // The PKI: the facade's certificate and one certificate per device.
    let started = Instant::now();
    let mut ca = DevCa::new("fleet CA")?;
    let server = ca.issue_server(&["127.0.0.1"])?;
    let pki = work.path().join("pki");
    fs_err::create_dir_all(&pki)?;
    fs_err::write(pki.join("ca.crt"), ca.cert_pem())?;
    fs_err::write(pki.join("facade.crt"), &server.cert_pem)?;
    fs_err::write(pki.join("facade.key"), &server.key_pem)?;
    let mut identities = Vec::with_capacity(devices);
    for i in 0..devices {
        let issued = ca.issue_device(&format!("fleet-device-{i:04}"))?;
        let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
        identities.push((certs, key));
    }
    println!(
        "fleet: {devices} device certificates issued in {:.1} s; image {:.1} MiB in {} blobs",
        started.elapsed().as_secs_f64(),
        image_bytes as f64 / 1048576.0,
        built.blobs.iter().flatten().count() + 1
    );

    let config = facade_config(work.path(), &pki, &metadata_dir, &registry.host())?;
    let facade = Arc::new(FacadeProcess::start_binary(&facade_bin, &config, "warn")?);
    let roots = tls::load_ca_bundle(&pki.join("ca.crt"))?;
    let base: http::Uri = facade.url("").parse()?;

    // Samples of the facade: RSS, open fds, handshakes counter, once every 250 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let facade = facade.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let stats = facade.stats().ok();
                let fds = stats.map_or(0, |s| s.fds);
                let rss = stats.map_or(0, |s| s.rss_kib);
                let handshakes = facade.metric("facade_handshakes_total").unwrap_or(0) as f64;
                samples.push((start.elapsed(), fds, rss, handshakes));
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        })
    };

    // The arrivals: uniform over the window, seeded (printed) so a run can be repeated.
    let seed = env_number("FLEET_SEED", 20261122);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut arrivals: Vec<Duration> = (0..devices).map(|_| window.mul_f64(rng.f64())).collect();
    arrivals.sort();
    let platform = Platform::parse("linux/amd64")?;
    // Two client threads (the machine has two cores, shared with the facade), each a
    // single-threaded runtime with its half of the devices: the pull futures are not `Send`.
    let run_start = Instant::now();
    let mut groups: Vec<Vec<(usize, Duration, Identity)>> = vec![Vec::new(), Vec::new()];
    for (i, (arrival, identity)) in arrivals.iter().zip(identities).enumerate() {
        if let Some(group) = groups.get_mut(i % 2) {
            group.push((i, *arrival, identity));
        }
    }
    let mut threads = Vec::new();
    for group in groups {
        let roots = roots.clone();
        let base = base.clone();
        let anchor = anchor.clone();
        let platform = platform.clone();
        let shm = shm.path().to_owned();
        threads.push(std::thread::spawn(move || {
            run_group(group, run_start, &shm, &base, &roots, &anchor, &platform)
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

    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let outcomes: Vec<&Outcome> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut totals: Vec<f64> = outcomes.iter().map(|o| o.total.as_secs_f64()).collect();
    let mut metas: Vec<f64> = outcomes.iter().map(|o| o.metadata.as_secs_f64()).collect();
    let bytes: u64 = outcomes.iter().map(|o| o.bytes).sum();
    let handshakes_total = samples
        .last()
        .map(|s| s.3)
        .unwrap_or(0.0)
        .max(facade.metric("facade_handshakes_total").unwrap_or(0) as f64);
    let peak_rate = samples
        .windows(5)
        .filter_map(|w| {
            let (first, last) = (w.first()?, w.last()?);
            let secs = (last.0 - first.0).as_secs_f64();
            (secs > 0.0).then(|| (last.3 - first.3) / secs)
        })
        .fold(0.0_f64, f64::max);
    let peak_fds = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let hwm = facade.stats().map_or(0, |s: ProcStats| s.peak_rss_kib);
    println!(
        "fleet: seed {seed}, {devices} devices over {} s, run took {:.1} s",
        window.as_secs(),
        elapsed.as_secs_f64()
    );
    println!("errors: {} of {devices}", errors.len());
    for error in errors.iter().take(5) {
        println!("  {error}");
    }
    println!(
        "handshakes: {handshakes_total:.0} completed, mean {:.1}/s over the run, peak {peak_rate:.1}/s (1 s windows)",
        handshakes_total / elapsed.as_secs_f64()
    );
    println!(
        "metadata check (s): p50 {:.3}  p99 {:.3}  max {:.3}",
        percentile(&mut metas, 0.50),
        percentile(&mut metas, 0.99),
        percentile(&mut metas, 1.0)
    );
    println!(
        "pull incl. metadata (s): p50 {:.2}  p99 {:.2}  max {:.2}",
        percentile(&mut totals, 0.50),
        percentile(&mut totals, 0.99),
        percentile(&mut totals, 1.0)
    );
    println!(
        "bytes verified by devices: {:.2} GB ({:.0} MB/s over the run)",
        bytes as f64 / 1e9,
        bytes as f64 / 1e6 / elapsed.as_secs_f64()
    );
    println!(
        "facade: peak RSS {:.1} MiB, peak open fds {peak_fds}",
        hwm as f64 / 1024.0
    );
    Ok(())
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Runs one thread's devices, each starting at its arrival time.
fn run_group(
    group: Vec<(usize, Duration, Identity)>,
    run_start: Instant,
    shm: &Path,
    base: &http::Uri,
    roots: &rustls::RootCertStore,
    anchor: &[u8],
    platform: &Platform,
) -> Result<Vec<Result<Outcome, String>>, BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let results = local.block_on(&runtime, async {
        let mut tasks = Vec::with_capacity(group.len());
        for (i, arrival, identity) in group {
            let at = tokio::time::Instant::from_std(run_start + arrival);
            let dir = shm.join(format!("device-{i:04}"));
            let roots = roots.clone();
            let base = base.clone();
            let anchor = anchor.to_vec();
            let platform = platform.clone();
            tasks.push(tokio::task::spawn_local(async move {
                tokio::time::sleep_until(at).await;
                let result = device(&dir, &base, roots, identity, &anchor, &platform).await;
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

/// One device: the metadata check, then the pull into its own cache.
async fn device(
    dir: &Path,
    base: &http::Uri,
    roots: rustls::RootCertStore,
    identity: Identity,
    anchor: &[u8],
    platform: &Platform,
) -> Result<Outcome, BoxError> {
    let start = Instant::now();
    let tls = tls::client_config_from(roots, Some(identity))?;
    let client = Client::new(
        base,
        tls,
        ClientOptions {
            connect_timeout: Duration::from_secs(30),
            stall_window: Duration::from_secs(60),
            ..ClientOptions::default()
        },
    )?;
    let trusted = TrustedStore::open(dir.join("metadata"))?;
    std::fs::create_dir_all(dir.join("metadata"))?;
    let mut updater = Updater::with_store(anchor, trusted)?;
    updater
        .update(&mut FacadeFetch::new(&client), UnixTime::now())
        .await?;
    let metadata = start.elapsed();
    let targets = updater.trusted().targets().ok_or("no targets trusted")?;
    let entry = targets
        .matching("fleet", platform)
        .next()
        .ok_or("no target for this device")?;
    let target = pull_target(entry)?;
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

/// The facade's configuration for the fleet: its listeners on port 0 (read back from its log
/// by [`FacadeProcess`]), the fleet CA for devices, room for every device's connection.
fn facade_config(
    work: &Path,
    pki: &Path,
    metadata: &Path,
    upstream: &str,
) -> Result<std::path::PathBuf, BoxError> {
    let state = work.join("facade-state");
    fs_err::create_dir_all(&state)?;
    let config = work.join("facade.toml");
    fs_err::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\noperator_listen = \"127.0.0.1:0\"\n\
             state_dir = \"{state}\"\nmetadata_dir = \"{metadata}\"\n\n[tls]\n\
             certificate = \"{pki}/facade.crt\"\nprivate_key = \"{pki}/facade.key\"\n\
             device_ca = \"{pki}/ca.crt\"\n\n[limits]\nmax_connections = 2048\n\n\
             [[upstreams]]\nhost = \"{upstream}\"\nplain_http = true\n",
            state = state.display(),
            metadata = metadata.display(),
            pki = pki.display(),
        ),
    )?;
    Ok(config)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((values.len() - 1) as f64 * p).round() as usize;
    values.get(rank).copied().unwrap_or(0.0)
}
