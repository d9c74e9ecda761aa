//! The agent binary killed with SIGKILL at random points of a download, twenty times, then
//! run to the end: it converges on the right artifact, no unverified byte ever sits in the
//! blob folder, and interrupted blobs resume instead of starting over.
//!
//! Bytes are counted at a TCP proxy in front of the registry (TLS included). Each kill may
//! lose what the server had already sent but the agent had not written: at most the HTTP/2
//! flow-control windows of the blobs in flight, which is the "one chunk per interruption"
//! this test allows. Starting blobs over would cost many times more.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a setup that fails is a failing test"
)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use meshanics_shared::Digest;
use meshanics_tests::binaries;
use meshanics_tests::oci_layout::SampleImage;
use meshanics_tests::skopeo;
use meshanics_tests::tcp_proxy::TcpProxy;
use meshanics_tests::tls_registry::TlsRegistry;

const KILLS: usize = 20;
/// The agent's HTTP/2 stream window (see `client/connection.rs`) times its concurrency.
const IN_FLIGHT_PER_KILL: u64 = 2 * 512 * 1024 + 64 * 1024;

/// Every committed blob hashes to its name.
fn assert_blob_folder_verifies(state: &Path) {
    let dir = state.join("cache/blobs/sha256");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            Digest::sha256_of(&bytes).hex(),
            name,
            "unverified content in {}",
            path.display()
        );
    }
}

/// How much of a blob is on disk: its size once committed, else its partial download.
fn progress(state: &Path, digest: &Digest) -> u64 {
    let committed = state.join("cache/blobs/sha256").join(digest.hex());
    let partial = state
        .join("cache/ingest")
        .join(format!("sha256-{}", digest.hex()));
    std::fs::metadata(committed)
        .or_else(|_| std::fs::metadata(partial))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_after_twenty_sigkills_mid_download_without_refetching_blobs() {
    let work = tempfile::tempdir().unwrap();
    let registry = TlsRegistry::start().unwrap();
    let image =
        SampleImage::multi_arch(&["linux/amd64"], 8 * 1024 * 1024, 8 * 1024 * 1024).unwrap();
    let built = registry
        .push_image(&image, work.path(), "v1", "team/app")
        .unwrap();
    let proxy = TcpProxy::start(registry.registry.addr(), Vec::new())
        .await
        .unwrap();
    let state = work.path().join("state");
    let config = work.path().join("agent.toml");
    let url = format!("https://{}", proxy.addr());
    std::fs::write(
        &config,
        registry.agent_config(&url, &state, "bandwidth_limit = \"4MiB\"", 3),
    )
    .unwrap();
    let digest = built.index.digest.to_string();
    let size = built.index.size.to_string();
    let repository = registry.facade_repository("team/app");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "pull",
        "--repository",
        &repository,
        "--digest",
        &digest,
        "--size",
        &size,
        "--name",
        "app",
    ];
    let seed = fastrand::u64(..);
    println!("kill points seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    let blobs = &built.blobs[0];
    let mut on_disk = vec![0u64; blobs.len()];
    let mut kills = 0;
    for _ in 0..KILLS {
        let mut child = binaries::command(
            binaries::workspace_binary("meshanics-agent", "meshanics-agent").unwrap(),
        )
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.u64(20..300))).await;
        match child.try_wait().unwrap() {
            Some(status) => assert!(status.success(), "the agent failed: {status}"),
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
            }
        }
        assert_blob_folder_verifies(&state);
        for (blob, before) in blobs.iter().zip(on_disk.iter_mut()) {
            let now = progress(&state, &blob.digest);
            assert!(
                now >= *before,
                "{} went back from {before} to {now} bytes: it started over",
                blob.digest
            );
            *before = now;
        }
    }

    let last = binaries::command(
        binaries::workspace_binary("meshanics-agent", "meshanics-agent").unwrap(),
    )
    .args(args)
    .output()
    .unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    assert_blob_folder_verifies(&state);
    for (digest, _) in built
        .all_blobs
        .iter()
        .filter(|(d, _)| **d != built.index.digest)
    {
        let Ok(cached) = std::fs::read(state.join("cache/blobs/sha256").join(digest.hex())) else {
            // Other platforms' blobs are not pulled; this image has one platform, so only
            // the index could be missing (it is kept too, checked below).
            panic!("{digest} missing from the cache");
        };
        assert_eq!(cached, built.blob(digest).unwrap());
    }
    let inspected = skopeo::run(&[
        "inspect",
        &format!("oci:{}", state.join("current").display()),
    ]);
    assert!(inspected.is_ok(), "{inspected:?}");
    let total: u64 = built.all_blobs.values().sum();
    let received = proxy.bytes_to_client();
    println!("{kills} kills; {received} bytes through the proxy for {total} bytes of blobs");
    assert!(
        kills >= KILLS / 2,
        "only {kills} runs were killed mid-download"
    );
    let allowed = total + total / 50 + (kills as u64 + 1) * IN_FLIGHT_PER_KILL;
    assert!(
        received <= allowed,
        "{received} bytes received, more than {allowed}: blobs were fetched again"
    );
}
