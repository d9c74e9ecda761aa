//! Agent pull benchmark: prints figures, asserts nothing.
//!
//! A single-platform image of 8 layers (`MESHANICS_BENCH_MIB` MiB in total, 1024 by default)
//! is pushed to the distribution registry, and the facade (in this process, mutual TLS,
//! verifying every byte) proxies it. Then, in the same run:
//!
//! - the agent binary (`MESHANICS_AGENT_BIN`, a release build) pulls it by digest through the
//!   facade into an empty state directory and applies it: wall time, MB/s, peak RSS (GNU
//!   `time`);
//! - `skopeo copy` pulls the same manifest through the same facade, with the same device
//!   certificate, into an OCI layout: wall time, MB/s.
//!
//! Run it with `scripts/bench-agent`, which builds the release binary and prints its size.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

use meshanics_shared::Platform;
use meshanics_tests::binaries;
use meshanics_tests::facade::{
    FacadeFixture, FacadeOptions, UpstreamEntry, Who, device_repository,
};
use meshanics_tests::oci_layout::{Layer, LayerFile, SampleImage, pseudo_random};
use meshanics_tests::registry::{Options, RegistryServer};

const LAYERS: usize = 8;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    meshanics_tests::run_main("agent_pull", run)
}

fn run() -> Result<(), BoxError> {
    let agent = binaries::from_env(
        "MESHANICS_AGENT_BIN",
        "a release meshanics-agent, e.g. target/release/meshanics-agent (scripts/bench-agent sets it)",
    )?;
    let mib: usize = std::env::var("MESHANICS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let work = tempfile::tempdir()?;
    let registry = RegistryServer::start(&Options::default())?;
    let facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::anonymous(&registry.host())],
        ..FacadeOptions::default()
    })?;
    let certs = facade.cert_dir(Who::Device)?;

    let layer_bytes = mib * 1024 * 1024 / LAYERS;
    let layers = (0..LAYERS)
        .map(|i| Layer {
            files: vec![LayerFile {
                path: format!("data/layer-{i}.bin"),
                contents: pseudo_random(1000 + i as u64, layer_bytes),
            }],
        })
        .collect();
    let image = SampleImage {
        platforms: vec![(Platform::parse("linux/amd64")?, layers)],
    };
    let built = image.write_layout(&work.path().join("src"), "bench")?;
    meshanics_tests::skopeo::push_layout(&built.dir, "bench", &registry.host(), "bench/app")?;
    let manifest = built
        .manifest_for("linux/amd64")
        .ok_or("no amd64 manifest")?
        .clone();
    let total: u64 = built.blobs.iter().flatten().map(|d| d.size).sum::<u64>() + manifest.size;
    let repository = device_repository(&registry.host(), "bench/app");
    println!(
        "image: {LAYERS} layers, {:.1} MiB to pull",
        total as f64 / 1048576.0
    );

    // The agent.
    let state = work.path().join("state");
    let config = work.path().join("agent.toml");
    let facade_url = format!("https://{}", facade.host());
    fs_err::write(
        &config,
        format!(
            "[facade]\nurl = \"{url}\"\nca = \"{ca}\"\n[device]\ncertificate = \"{cert}\"\n\
             key = \"{key}\"\nclass = \"bench\"\nplatform = \"linux/amd64\"\n[trust]\n\
             anchor = \"{ca}\"\n[agent]\nstate_dir = \"{state}\"\nconcurrency = 4\n",
            url = facade_url,
            ca = certs.join("ca.crt").display(),
            cert = certs.join("client.cert").display(),
            key = certs.join("client.key").display(),
            state = state.display(),
        ),
    )?;
    let rss_file = work.path().join("rss");
    let start = Instant::now();
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss_file)
        .arg(&agent)
        .arg("--config")
        .arg(&config)
        .args(["pull", "--repository", &repository, "--digest"])
        .arg(manifest.digest.as_str())
        .args(["--size", &manifest.size.to_string(), "--media-type"])
        .arg(&manifest.media_type)
        .env("RUST_LOG", "warn")
        .status()
        .map_err(|e| format!("/usr/bin/time (GNU time, to measure the agent's RSS): {e}"))?;
    let agent_secs = start.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("the agent failed: {status}").into());
    }
    let rss_text = fs_err::read_to_string(&rss_file)?;
    let rss_kib: f64 = rss_text
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()
        .map_err(|e| format!("{}: no peak RSS in {rss_text:?}: {e}", rss_file.display()))?;
    report("meshanics-agent pull", total, agent_secs);
    println!("meshanics-agent peak RSS: {:.1} MiB", rss_kib / 1024.0);

    // skopeo, the same manifest, through the same facade, into an OCI layout.
    let start = Instant::now();
    let out = work.path().join("skopeo");
    meshanics_tests::skopeo::run(&[
        "copy",
        "--src-cert-dir",
        &certs.display().to_string(),
        &format!(
            "docker://{}/{repository}@{}",
            facade.host(),
            manifest.digest
        ),
        &format!("oci:{}:bench", out.display()),
    ])?;
    report("skopeo copy", total, start.elapsed().as_secs_f64());
    blob_count(&out);
    Ok(())
}

fn report(what: &str, bytes: u64, secs: f64) {
    println!(
        "{what}: {secs:.2} s, {:.1} MB/s",
        bytes as f64 / 1_000_000.0 / secs.max(f64::EPSILON)
    );
}

fn blob_count(layout: &Path) {
    let count = std::fs::read_dir(layout.join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0);
    println!("skopeo layout: {count} blobs");
}
