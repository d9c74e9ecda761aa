//! The facade's content-addressed cache and its single flight per digest (issue 13), whole
//! system: the real distribution registry as the upstream (its log counts the upstream's
//! requests), or a scripted upstream where a test needs wrong bytes, a fill that takes a while
//! or a 429. Devices are the agent's own pull code, or mutual-TLS clients of the fixture that
//! read at the pace a test chooses. Every claim is about bytes and request counts, never time.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers outside #[test] fns: a failed setup is a failed test"
)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use meshanics_agent::client::ClientOptions;
use meshanics_agent::pull::PullTarget;
use meshanics_operator_api::{OperatorClient, ProviderKind};
use meshanics_shared::{Descriptor, Digest, Platform, Repository};
use meshanics_tests::facade::{
    DeviceResponse, FacadeFixture, FacadeOptions, UpstreamEntry, Who, device_path,
    device_repository, plain_http_connection,
};
use meshanics_tests::facade_process::{FacadeProcess, metric_value, replica_config};
use meshanics_tests::oci_layout::{BuiltImage, Layer, LayerFile, SampleImage, pseudo_random};
use meshanics_tests::pull_device::PullDevice;
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::scripted::{Recorded, Reply, ScriptedServer, reply};
use meshanics_tests::skopeo;

const REPO: &str = "team/app";
/// Devices per wave.
const WAVE: usize = 8;

// --- upstreams ---------------------------------------------------------------------------

/// A registry with `image` pushed to each of `repositories` (tag `v1`).
fn registry_with(
    work: &Path,
    image: &SampleImage,
    repositories: &[&str],
) -> (RegistryServer, BuiltImage) {
    let registry = RegistryServer::start(&Options::default()).unwrap();
    let built = image.write_layout(&work.join("layout"), "v1").unwrap();
    for repository in repositories {
        skopeo::push_layout(&built.dir, "v1", &registry.host(), repository).unwrap();
    }
    (registry, built)
}

/// A two-platform image whose shared layer is `shared` bytes and own layers `own` bytes.
fn image(shared: usize, own: usize) -> SampleImage {
    SampleImage::multi_arch(&["linux/amd64", "linux/arm64"], shared, own).unwrap()
}

/// The GETs of `kind` (`blobs`, `manifests`) `digest` in any repository that the registry
/// answered.
fn upstream_gets(registry: &RegistryServer, kind: &str, digest: &Digest) -> usize {
    registry.requests("GET", &format!("/{kind}/{digest}"))
}

/// What the scripted upstream does with the blob.
const SLOW_GOOD: u8 = 0;
const SLOW_WRONG: u8 = 1;
const FAST_GOOD: u8 = 2;
const UNAVAILABLE: u8 = 3;
const TOO_MANY: u8 = 4;

/// A scripted upstream serving `blob` under any repository, as `mode` says: slowly (in
/// `parts` pieces, `pause` apart) with the right or wrong bytes, at once, or refusing every
/// request with `503` or `429` and `Retry-After`. It honours single ranges (a resumed fill)
/// and `HEAD`; anything else is a 404.
fn scripted_blob(
    blob: Arc<Vec<u8>>,
    mode: Arc<AtomicU8>,
    parts: usize,
    pause: Duration,
) -> ScriptedServer {
    let digest = Digest::sha256_of(&blob);
    ScriptedServer::start(move |request| {
        let mode = mode.load(Ordering::SeqCst);
        if mode == UNAVAILABLE || mode == TOO_MANY {
            let status = if mode == UNAVAILABLE { 503 } else { 429 };
            return Reply::Raw(reply(
                status,
                &[("Content-Length", "0".into()), ("Retry-After", "7".into())],
                b"",
            ));
        }
        if request.path == "/v2/" {
            return Reply::Raw(reply(200, &[("Content-Length", "2".into())], b"{}"));
        }
        if !request.path.ends_with(&format!("/blobs/{digest}")) {
            return Reply::Raw(reply(404, &[("Content-Length", "0".into())], b""));
        }
        let mut bytes = blob.to_vec();
        if mode == SLOW_WRONG
            && let Some(last) = bytes.last_mut()
        {
            *last ^= 0xff;
        }
        let size = bytes.len();
        let (status, body, range) = match requested_range(request, size) {
            Some((first, last)) => (
                206,
                bytes[first..=last].to_vec(),
                Some(format!("bytes {first}-{last}/{size}")),
            ),
            None => (200, bytes, None),
        };
        let mut head = format!(
            "HTTP/1.1 {status} Scripted\r\nContent-Length: {}\r\n\
             Content-Type: application/octet-stream\r\nDocker-Content-Digest: {digest}\r\n",
            body.len()
        );
        if let Some(range) = range {
            head.push_str(&format!("Content-Range: {range}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        if request.method == "HEAD" {
            return Reply::Raw(head.into_bytes());
        }
        if mode == FAST_GOOD {
            let mut raw = head.into_bytes();
            raw.extend_from_slice(&body);
            return Reply::Raw(raw);
        }
        Reply::Slow {
            head: head.into_bytes(),
            body,
            parts,
            pause,
        }
    })
    .unwrap()
}

/// `bytes=N-`, `bytes=N-M` or `bytes=-N` within `size`, as (first, last).
fn requested_range(request: &Recorded, size: usize) -> Option<(usize, usize)> {
    let spec = request.header("range")?.strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let end = size.checked_sub(1)?;
    let (first, last) = match (first, last) {
        ("", suffix) => (size.saturating_sub(suffix.parse().ok()?), end),
        (first, "") => (first.parse().ok()?, end),
        (first, last) => (first.parse().ok()?, last.parse::<usize>().ok()?.min(end)),
    };
    (first <= last).then_some((first, last))
}

/// The GETs of the blob the scripted upstream received.
fn scripted_gets(server: &ScriptedServer, digest: &Digest) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/blobs/{digest}")))
        .count()
}

// --- devices -----------------------------------------------------------------------------

/// A device of `facade`, trying once: a failure is an error here, not an extra upstream
/// request later.
fn device(facade: &FacadeFixture) -> PullDevice {
    PullDevice::new(
        &[facade.url("").parse().unwrap()],
        facade.tls_config(Who::Device).unwrap(),
        ClientOptions {
            attempts: 1,
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

/// The agent's target for `built`'s index in `REPO` of `registry`, through the facade.
fn index_target(registry: &RegistryServer, built: &BuiltImage) -> PullTarget {
    PullTarget {
        name: "app".into(),
        repository: Repository::parse(&device_repository(&registry.host(), REPO)).unwrap(),
        digest: built.index.digest.clone(),
        size: built.index.size,
        media_type: built.index.media_type.clone(),
        rollout: None,
        apply: None,
    }
}

/// `devices` devices pull `target` at once; each one's cached blobs are the source's bytes.
fn wave(facade: &FacadeFixture, built: &BuiltImage, target: &PullTarget, devices: usize) {
    let devices: Vec<PullDevice> = (0..devices).map(|_| device(facade)).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pulls = runtime.block_on(futures_util::future::join_all(
        devices.iter().map(|device| device.pull(target, 4)),
    ));
    for (device, pulled) in devices.iter().zip(pulls) {
        let pulled = pulled.unwrap();
        for blob in pulled.blobs.iter().chain([&pulled.manifest]) {
            let cached = std::fs::read(device.store.blob_path(&blob.digest)).unwrap();
            assert_eq!(cached, built.blob(&blob.digest).unwrap(), "{}", blob.digest);
        }
    }
}

/// A GET (or `method`) of `url` read to its end or until it breaks off.
async fn fetch(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    headers: &[(&str, &str)],
) -> DeviceResponse {
    meshanics_tests::facade::send(client, method, url, headers)
        .await
        .unwrap()
}

/// Reads `response` until at least `bytes` came (or it ended); returns what came.
async fn read_some(response: &mut reqwest::Response, bytes: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < bytes {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body
}

/// Reads the rest of `response`: (bytes, ended cleanly).
async fn read_rest(response: &mut reqwest::Response) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return (body, true),
            Err(_) => return (body, false),
        }
    }
}

fn blob_path(host: &str, repository: &str, digest: &Digest) -> String {
    device_path(host, repository, "blobs", digest.as_ref())
}

fn get(
    facade: &FacadeFixture,
    path: &str,
    headers: &[(&str, &str)],
    http2: bool,
) -> DeviceResponse {
    facade
        .device_request(reqwest::Method::GET, path, headers, http2)
        .unwrap()
}

fn header<'a>(response: &'a DeviceResponse, name: &str) -> Option<&'a str> {
    response.headers.get(name).and_then(|v| v.to_str().ok())
}

fn metric(facade: &FacadeFixture, name: &str) -> Option<i64> {
    metric_value(&facade.metrics(), name)
}

fn assert_served(response: &DeviceResponse, bytes: &[u8], what: &str) {
    assert_eq!(
        response.status,
        200,
        "{what}: {:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert!(response.clean, "{what}: the body broke off");
    assert!(
        response.body == bytes,
        "{what}: other bytes ({} of {})",
        response.body.len(),
        bytes.len()
    );
}

/// A miss while the upstream cannot answer: `503` with a `Retry-After`.
fn assert_unavailable(response: &DeviceResponse, what: &str) {
    assert_eq!(
        response.status,
        503,
        "{what}: {:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert!(
        header(response, "retry-after").is_some(),
        "{what}: no Retry-After"
    );
}

// --- one upstream fetch per digest ---------------------------------------------------------

#[test]
fn devices_pulling_at_once_and_a_wave_after_them_cost_one_upstream_get_per_blob_and_manifest() {
    let work = tempfile::tempdir().unwrap();
    let (registry, built) = registry_with(work.path(), &image(4 << 20, 1 << 20), &[REPO]);
    let facade = FacadeFixture::with_upstream(UpstreamEntry::anonymous(&registry.host())).unwrap();
    let target = index_target(&registry, &built);

    wave(&facade, &built, &target, WAVE);
    wave(&facade, &built, &target, WAVE);

    let manifest = built.manifest_for("linux/amd64").unwrap();
    for digest in [&built.index.digest, &manifest.digest] {
        assert_eq!(
            upstream_gets(&registry, "manifests", digest),
            1,
            "manifest {digest}"
        );
    }
    for blob in &built.blobs[0] {
        assert_eq!(
            upstream_gets(&registry, "blobs", &blob.digest),
            1,
            "blob {}",
            blob.digest
        );
    }
    // The arm64 platform's own content was never asked for.
    let arm64 = built.manifest_for("linux/arm64").unwrap();
    assert_eq!(upstream_gets(&registry, "manifests", &arm64.digest), 0);
    let hits = metric(&facade, "facade_cache_hits_total{kind=\"blob\"}").unwrap_or(0);
    assert!(hits > 0, "no blob hits counted: {}", facade.metrics());
}

#[test]
fn wrong_bytes_in_a_shared_fill_reset_every_device_cache_nothing_and_the_next_pull_refetches() {
    let blob = Arc::new(pseudo_random(21, 2 << 20));
    let digest = Digest::sha256_of(&blob);
    let mode = Arc::new(AtomicU8::new(SLOW_WRONG));
    // About a second of body: every device arrives while the fill runs.
    let server = scripted_blob(blob.clone(), mode.clone(), 50, Duration::from_millis(20));
    let facade = FacadeFixture::with_upstream(UpstreamEntry::anonymous(&server.host())).unwrap();
    let path = blob_path(&server.host(), REPO, &digest);

    let clients: Vec<reqwest::Client> = (0..6)
        .map(|i| facade.client(Who::Device, i % 2 == 1).unwrap())
        .collect();
    let outcomes = facade.block_on(futures_util::future::join_all(
        clients
            .iter()
            .map(|c| fetch(c, reqwest::Method::GET, facade.url(&path), &[])),
    ));
    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(
            !(outcome.status == 200 && outcome.clean),
            "device {i} got a clean end ({} bytes)",
            outcome.body.len()
        );
        assert!(outcome.body.len() < blob.len(), "device {i} got every byte");
    }
    assert_eq!(
        scripted_gets(&server, &digest),
        1,
        "the devices did not share one fill"
    );
    let metrics = facade.metrics();
    assert_eq!(
        metric_value(&metrics, "facade_cache_entries"),
        Some(0),
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "facade_cache_fills_total{outcome=\"failed\"}").unwrap_or(0) >= 1,
        "{metrics}"
    );

    mode.store(FAST_GOOD, Ordering::SeqCst);
    assert_served(
        &get(&facade, &path, &[], false),
        &blob,
        "after the upstream healed",
    );
    assert_eq!(
        scripted_gets(&server, &digest),
        2,
        "the next pull did not refetch"
    );
}

#[test]
fn a_facade_killed_during_a_fill_serves_no_partial_entry_after_restart_and_the_pull_completes() {
    let blob = Arc::new(pseudo_random(22, 4 << 20));
    let digest = Digest::sha256_of(&blob);
    let mode = Arc::new(AtomicU8::new(SLOW_GOOD));
    // 100 pieces 50 ms apart: the kill lands in the middle of the fill.
    let server = scripted_blob(blob.clone(), mode.clone(), 100, Duration::from_millis(50));
    let fixture = FacadeFixture::with_upstream(UpstreamEntry::anonymous(&server.host())).unwrap();
    let (work, config) = replica_config(&fixture.config_path()).unwrap();
    let path = blob_path(&server.host(), REPO, &digest);
    let client = fixture.client(Who::Device, false).unwrap();

    let facade = FacadeProcess::start(&config, "warn").unwrap();
    let url = facade.url(&path);
    let (mut response, got) = fixture.block_on(async {
        let mut response = client.get(&url).send().await.unwrap();
        let got = read_some(&mut response, 256 * 1024).await;
        (response, got)
    });
    assert!(
        got.len() >= 256 * 1024 && got.len() < blob.len(),
        "{} bytes before the kill",
        got.len()
    );
    drop(facade); // SIGKILL
    let (_, clean) = fixture.block_on(read_rest(&mut response));
    assert!(!clean, "the killed facade's response ended cleanly");
    let before = server.requests().len();

    // Restarted on the same cache folder while the upstream is down: the partial fill must
    // not be served as the blob.
    mode.store(UNAVAILABLE, Ordering::SeqCst);
    let facade = FacadeProcess::start(&config, "warn").unwrap();
    let url = facade.url(&path);
    let down = fixture.block_on(fetch(&client, reqwest::Method::GET, url.clone(), &[]));
    assert!(
        !(down.status == 200 && down.clean),
        "a partial fill was served as the blob"
    );
    assert_unavailable(&down, "a miss after the restart with the upstream down");

    mode.store(FAST_GOOD, Ordering::SeqCst);
    let healed = fixture.block_on(fetch(&client, reqwest::Method::GET, url, &[]));
    assert_served(&healed, &blob, "after the restart");
    assert!(
        server.requests().len() > before,
        "the restarted facade never asked the upstream"
    );
    drop(facade);
    drop(work);
}

// --- the size cap --------------------------------------------------------------------------

#[test]
fn a_full_cache_evicts_the_least_recently_used_and_stays_under_its_cap() {
    const MIB: usize = 1 << 20;
    let cap = 3 * MIB;
    let work = tempfile::tempdir().unwrap();
    let layers = (0..6)
        .map(|i| Layer {
            files: vec![LayerFile {
                path: format!("data/{i}.bin"),
                contents: pseudo_random(300 + i, MIB),
            }],
        })
        .collect();
    let sample = SampleImage {
        platforms: vec![(Platform::parse("linux/amd64").unwrap(), layers)],
    };
    let (registry, built) = registry_with(work.path(), &sample, &[REPO]);
    let facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::anonymous(&registry.host())],
        cache: vec![format!("max_bytes = {cap}")],
        ..FacadeOptions::default()
    })
    .unwrap();
    let layers: Vec<&Descriptor> = built.blobs[0].iter().skip(1).collect();
    for layer in &layers {
        let path = blob_path(&registry.host(), REPO, &layer.digest);
        assert_served(
            &get(&facade, &path, &[], false),
            &built.blob(&layer.digest).unwrap(),
            "a layer",
        );
    }
    let first = layers[0];
    let path = blob_path(&registry.host(), REPO, &first.digest);
    assert_served(
        &get(&facade, &path, &[], false),
        &built.blob(&first.digest).unwrap(),
        "again",
    );

    let metrics = facade.metrics();
    let bytes = metric_value(&metrics, "facade_cache_bytes").unwrap();
    assert!(
        bytes > 0 && bytes <= cap as i64,
        "facade_cache_bytes {bytes} (cap {cap})"
    );
    let evictions = metric_value(&metrics, "facade_cache_evictions_total").unwrap();
    // Seven fills of a little over 1 MiB each under a 3 MiB cap: at most two stay.
    assert!(evictions >= 5, "facade_cache_evictions_total {evictions}");
    assert_eq!(
        upstream_gets(&registry, "blobs", &first.digest),
        2,
        "the evicted layer came from the cache"
    );
    let on_disk = folder_bytes(&facade.state_dir().join("cache"));
    assert!(
        on_disk <= cap as u64,
        "{on_disk} bytes in the cache folder (cap {cap})"
    );
}

fn folder_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

// --- an upstream that fails --------------------------------------------------------------

#[test]
fn with_the_upstream_stopped_hits_are_served_and_misses_get_503_with_retry_after() {
    let work = tempfile::tempdir().unwrap();
    let (registry, built) = registry_with(work.path(), &image(1 << 20, 256 * 1024), &[REPO]);
    let facade = FacadeFixture::with_upstream(UpstreamEntry::anonymous(&registry.host())).unwrap();
    let host = registry.host();
    let amd64 = built.manifest_for("linux/amd64").unwrap().clone();
    let arm64 = built.manifest_for("linux/arm64").unwrap().clone();
    let layer = built.blobs[0][1].clone();
    let missed = built.blobs[1][2].clone();
    let manifest_path = device_path(&host, REPO, "manifests", amd64.digest.as_ref());
    assert_eq!(get(&facade, &manifest_path, &[], false).status, 200);
    let layer_path = blob_path(&host, REPO, &layer.digest);
    assert_served(
        &get(&facade, &layer_path, &[], false),
        &built.blob(&layer.digest).unwrap(),
        "the fill",
    );

    drop(registry);
    for http2 in [false, true] {
        assert_served(
            &get(&facade, &layer_path, &[], http2),
            &built.blob(&layer.digest).unwrap(),
            "a blob hit with the upstream stopped",
        );
        assert_served(
            &get(&facade, &manifest_path, &[], http2),
            &built.blob(&amd64.digest).unwrap(),
            "a manifest hit with the upstream stopped",
        );
        assert_unavailable(
            &get(&facade, &blob_path(&host, REPO, &missed.digest), &[], http2),
            "a blob miss",
        );
        assert_unavailable(
            &get(
                &facade,
                &device_path(&host, REPO, "manifests", arm64.digest.as_ref()),
                &[],
                http2,
            ),
            "a manifest miss",
        );
    }
}

#[test]
fn with_the_upstream_answering_429_hits_are_served_and_misses_get_503_with_retry_after() {
    let blob = Arc::new(pseudo_random(23, 512 * 1024));
    let digest = Digest::sha256_of(&blob);
    let other = Digest::sha256_of(b"never fetched");
    let mode = Arc::new(AtomicU8::new(FAST_GOOD));
    let server = scripted_blob(blob.clone(), mode.clone(), 1, Duration::ZERO);
    let facade = FacadeFixture::with_upstream(UpstreamEntry::anonymous(&server.host())).unwrap();
    let path = blob_path(&server.host(), REPO, &digest);
    assert_served(&get(&facade, &path, &[], false), &blob, "the fill");

    mode.store(TOO_MANY, Ordering::SeqCst);
    assert_served(
        &get(&facade, &path, &[], false),
        &blob,
        "a hit while rate-limited",
    );
    assert_served(&get(&facade, &path, &[], true), &blob, "a hit over HTTP/2");
    assert_eq!(scripted_gets(&server, &digest), 1);
    let miss = blob_path(&server.host(), REPO, &other);
    assert_unavailable(
        &get(&facade, &miss, &[], false),
        "a miss while rate-limited",
    );
}

// --- pace -----------------------------------------------------------------------------------

#[test]
fn a_fast_reader_finishes_a_fill_that_a_slow_reader_shares_while_the_slow_one_has_read_little() {
    let blob = Arc::new(pseudo_random(24, 8 << 20));
    let digest = Digest::sha256_of(&blob);
    let mode = Arc::new(AtomicU8::new(SLOW_GOOD));
    let server = scripted_blob(blob.clone(), mode, 64, Duration::from_millis(15));
    let facade = FacadeFixture::with_upstream(UpstreamEntry::anonymous(&server.host())).unwrap();
    let url = facade.url(&blob_path(&server.host(), REPO, &digest));
    let slow = facade.client(Who::Device, false).unwrap();
    let fast = facade.client(Who::Device, true).unwrap();

    let (slow_first, fast_got, slow_rest) = facade.block_on(async {
        let mut slow_response = slow.get(&url).send().await.unwrap();
        // The slow device reads 64 KiB, then nothing while the fast one reads everything.
        let slow_first = read_some(&mut slow_response, 64 * 1024).await;
        let fast_got = tokio::time::timeout(
            Duration::from_secs(120),
            fetch(&fast, reqwest::Method::GET, url.clone(), &[]),
        )
        .await
        .expect("the fast reader never finished: the fill waits for the slow one");
        let slow_rest = read_rest(&mut slow_response).await;
        (slow_first, fast_got, slow_rest)
    });
    assert_served(&fast_got, &blob, "the fast reader");
    assert!(
        slow_first.len() < 1 << 20,
        "the slow reader read {} bytes",
        slow_first.len()
    );
    let (rest, clean) = slow_rest;
    assert!(clean, "the slow reader's body broke off");
    assert!(
        [slow_first, rest].concat() == *blob,
        "the slow reader got other bytes"
    );
    assert_eq!(
        scripted_gets(&server, &digest),
        1,
        "the readers did not share one fill"
    );
}

// --- hits still obey the connections ----------------------------------------------------------

#[test]
fn a_removed_or_unapproved_connection_has_its_cached_content_refused_at_once() {
    let work = tempfile::tempdir().unwrap();
    let (registry, built) = registry_with(work.path(), &image(256 * 1024, 64 * 1024), &[REPO]);
    let facade = FacadeFixture::with_connections().unwrap();
    let operator = OperatorClient::new(facade.admin_socket().unwrap());
    let host = registry.host();
    let anonymous =
        || plain_http_connection(host.clone(), ProviderKind::Anonymous, None, Vec::new());
    facade.block_on(operator.add(&anonymous())).unwrap();
    facade.block_on(operator.approve(&host)).unwrap();
    let layer = built.blobs[0][1].clone();
    let bytes = built.blob(&layer.digest).unwrap();
    let path = blob_path(&host, REPO, &layer.digest);
    assert_served(&get(&facade, &path, &[], false), &bytes, "while connected");
    let gets = upstream_gets(&registry, "blobs", &layer.digest);

    facade.block_on(operator.remove(&host)).unwrap();
    for http2 in [false, true] {
        let refused = get(&facade, &path, &[], http2);
        assert_eq!(
            refused.status,
            404,
            "removed: {:?}",
            String::from_utf8_lossy(&refused.body)
        );
        assert!(refused.body != bytes);
    }
    // Connected again, anonymous, not yet approved.
    facade.block_on(operator.add(&anonymous())).unwrap();
    let refused = get(&facade, &path, &[], false);
    assert_eq!(
        refused.status,
        404,
        "unapproved: {:?}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(
        upstream_gets(&registry, "blobs", &layer.digest),
        gets,
        "a refusal reached the upstream"
    );

    facade.block_on(operator.approve(&host)).unwrap();
    assert_served(&get(&facade, &path, &[], false), &bytes, "approved again");
}

#[test]
fn a_hit_asked_under_another_repository_is_served_only_if_the_upstream_has_it_there() {
    let work = tempfile::tempdir().unwrap();
    let (registry, built) = registry_with(
        work.path(),
        &image(256 * 1024, 64 * 1024),
        &[REPO, "team/mirror"],
    );
    // Another image in `team/other`: the repository exists, this content is not in it.
    let other = image(128 * 1024, 1024);
    let other = other
        .write_layout(&work.path().join("other"), "v1")
        .unwrap();
    skopeo::push_layout(&other.dir, "v1", &registry.host(), "team/other").unwrap();
    let facade = FacadeFixture::with_upstream(UpstreamEntry::anonymous(&registry.host())).unwrap();
    let host = registry.host();
    let layer = built.blobs[0][1].clone();
    let bytes = built.blob(&layer.digest).unwrap();
    let amd64 = built.manifest_for("linux/amd64").unwrap().clone();
    assert_served(
        &get(&facade, &blob_path(&host, REPO, &layer.digest), &[], false),
        &bytes,
        "the fill",
    );
    let manifest = device_path(&host, REPO, "manifests", amd64.digest.as_ref());
    assert_eq!(get(&facade, &manifest, &[], false).status, 200);

    for http2 in [false, true] {
        let refused = get(
            &facade,
            &blob_path(&host, "team/other", &layer.digest),
            &[],
            http2,
        );
        assert_eq!(
            refused.status,
            404,
            "a blob not in team/other: {:?}",
            String::from_utf8_lossy(&refused.body)
        );
        assert!(refused.body != bytes);
        let refused = get(
            &facade,
            &device_path(&host, "team/other", "manifests", amd64.digest.as_ref()),
            &[],
            http2,
        );
        assert_eq!(refused.status, 404, "a manifest not in team/other");
    }
    let asked = |path: &str| registry.requests("HEAD", path) + registry.requests("GET", path);
    assert!(
        asked(&format!("/team/other/blobs/{}", layer.digest)) >= 1,
        "the upstream was not asked"
    );

    assert_served(
        &get(
            &facade,
            &blob_path(&host, "team/mirror", &layer.digest),
            &[],
            false,
        ),
        &bytes,
        "a blob the upstream has in team/mirror too",
    );
    assert!(
        asked(&format!("/team/mirror/blobs/{}", layer.digest)) >= 1,
        "served without asking the upstream"
    );
}

// --- Range and HEAD ------------------------------------------------------------------------

/// HEAD, ranges and an unsatisfiable range on `path` (content `bytes`), over `http2` or not.
fn assert_range_and_head(
    facade: &FacadeFixture,
    path: &str,
    bytes: &[u8],
    digest: &Digest,
    http2: bool,
) {
    let size = bytes.len();
    let head = facade
        .device_request(reqwest::Method::HEAD, path, &[], http2)
        .unwrap();
    assert_eq!(head.status, 200, "HEAD");
    assert_eq!(
        header(&head, "content-length"),
        Some(size.to_string().as_str()),
        "HEAD length"
    );
    assert_eq!(
        header(&head, "docker-content-digest"),
        Some(digest.as_ref()),
        "HEAD digest"
    );
    assert!(head.body.is_empty(), "HEAD carried a body");

    let cases = [
        ("bytes=100-199".to_owned(), 100, 199),
        (format!("bytes={}-", size - 1000), size - 1000, size - 1),
        ("bytes=-50".to_owned(), size - 50, size - 1),
        (format!("bytes=0-{}", size + 10), 0, size - 1),
    ];
    for (range, first, last) in cases {
        let got = get(facade, path, &[("range", &range)], http2);
        assert_eq!(got.status, 206, "{range}");
        assert_eq!(
            header(&got, "content-range"),
            Some(format!("bytes {first}-{last}/{size}").as_str()),
            "{range}"
        );
        assert!(
            got.clean && got.body == bytes[first..=last],
            "{range}: other bytes"
        );
    }
    let beyond = format!("bytes={}-", size + 10);
    let got = get(facade, path, &[("range", &beyond)], http2);
    assert_eq!(got.status, 416, "{beyond}");
    assert_eq!(
        header(&got, "content-range"),
        Some(format!("bytes */{size}").as_str()),
        "{beyond}"
    );
}

#[test]
fn range_and_head_are_answered_from_the_cache_with_206_and_416() {
    let work = tempfile::tempdir().unwrap();
    let (registry, built) = registry_with(work.path(), &image(1 << 20, 64 * 1024), &[REPO]);
    let facade = FacadeFixture::with_upstream(UpstreamEntry::anonymous(&registry.host())).unwrap();
    let layer = built.blobs[0][1].clone();
    let bytes = built.blob(&layer.digest).unwrap();
    let path = blob_path(&registry.host(), REPO, &layer.digest);
    assert_served(&get(&facade, &path, &[], false), &bytes, "the fill");
    for http2 in [false, true] {
        assert_range_and_head(&facade, &path, &bytes, &layer.digest, http2);
    }
    assert_eq!(
        upstream_gets(&registry, "blobs", &layer.digest),
        1,
        "a range went upstream"
    );
}

#[test]
fn range_and_head_are_answered_from_a_fill_in_progress() {
    let blob = Arc::new(pseudo_random(25, 4 << 20));
    let digest = Digest::sha256_of(&blob);
    let mode = Arc::new(AtomicU8::new(SLOW_GOOD));
    let server = scripted_blob(blob.clone(), mode, 100, Duration::from_millis(30));
    let facade = FacadeFixture::with_upstream(UpstreamEntry::anonymous(&server.host())).unwrap();
    let path = blob_path(&server.host(), REPO, &digest);
    let client = facade.client(Who::Device, false).unwrap();
    let url = facade.url(&path);

    // A device starts the fill and reads its first bytes; the checks run while it goes on.
    let mut filling = facade.block_on(async {
        let mut response = client.get(&url).send().await.unwrap();
        let _ = read_some(&mut response, 64 * 1024).await;
        response
    });
    assert_range_and_head(&facade, &path, &blob, &digest, false);
    let (_, clean) = facade.block_on(read_rest(&mut filling));
    assert!(clean, "the filling device's body broke off");
    assert_eq!(
        scripted_gets(&server, &digest),
        1,
        "a range or HEAD started another fill"
    );
}
