//! The binary's `sync --once`, `run` and `status` against the whole chain: the real distribution
//! registry -> the facade in-process (mutual TLS) -> `meshanics-agent` run as a process with
//! a device's TOML configuration and a release signed into the facade's metadata folder.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a setup that fails is a failing test"
)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use meshanics_tests::agent_device::AgentDevice;
use meshanics_tests::binaries;
use meshanics_tests::oci_layout::BuiltImage;
use meshanics_tests::skopeo;
use meshanics_tests::update_chain::UpdateChain;

struct Setup {
    chain: UpdateChain,
    built: BuiltImage,
}

/// A two-platform image in the registry and a release of it signed for class `gateway`.
fn setup() -> Setup {
    let mut chain = UpdateChain::start().unwrap();
    let built = chain
        .push("v1", &["linux/amd64", "linux/arm64"], 64 * 1024, 16 * 1024)
        .unwrap();
    chain.publish(&built, Some("gateway")).unwrap();
    Setup { chain, built }
}

/// `meshanics-agent --config <device> ARGS`, run to its end, without the caller's RUST_LOG.
fn agent(device: &AgentDevice, args: &[&str]) -> Output {
    device
        .command()
        .unwrap()
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn sync_once_applies_the_signed_release_and_status_reports_the_trusted_versions() {
    let s = setup();
    let device = s.chain.device("gateway", "linux/arm64").unwrap();

    let out = agent(&device, &["sync", "--once"]);

    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("applied app"),
        "{}",
        text(&out.stdout)
    );
    let arm64 = s.built.manifest_for("linux/arm64").unwrap();
    let inspected: serde_json::Value = serde_json::from_str(
        &skopeo::run(&["inspect", &format!("oci:{}", device.current().display())]).unwrap(),
    )
    .unwrap();
    assert_eq!(inspected["Digest"], arm64.digest.as_str());

    let out = agent(&device, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["metadata"]["root"]["version"], 1);
    assert_eq!(status["metadata"]["timestamp"]["version"], 1);
    assert_eq!(status["metadata"]["targets"]["version"], 1);
    assert_eq!(status["metadata"]["timestamp"]["expired"], false);
    assert_eq!(status["last_result"]["ok"], true);
    assert_eq!(status["current"]["manifest_digest"], arm64.digest.as_str());

    let out = agent(&device, &["sync", "--once"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("up to date"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn sync_once_with_an_expired_timestamp_fails_and_status_says_why() {
    let mut s = setup();
    s.chain.release.stale_timestamp().unwrap();
    let device = s.chain.device("gateway", "linux/amd64").unwrap();

    let out = agent(&device, &["sync", "--once"]);

    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("expired"),
        "{}",
        text(&out.stderr)
    );
    assert!(!device.current().exists());
    let out = agent(&device, &["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains("last:      FAILED"), "{report}");
    assert!(
        report.contains("timestamp.cose: timestamp metadata expired"),
        "{report}"
    );
    assert!(report.contains("timestamp: none trusted yet"), "{report}");
}

#[test]
fn sync_without_once_is_a_usage_error() {
    // Arguments are checked before the configuration is read.
    let out = binaries::command(
        binaries::workspace_binary("meshanics-agent", "meshanics-agent").unwrap(),
    )
    .args(["--config", "/nonexistent/agent.toml", "sync"])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--once"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn run_applies_the_signed_release_and_stops_cleanly_on_sigterm() {
    let s = setup();
    let device = s.chain.device("gateway", "linux/amd64").unwrap();
    let mut child = device
        .command()
        .unwrap()
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let last_result = device.state_dir().join("last-result.json");
    let mut polls = 0;
    while !last_result.exists() {
        polls += 1;
        if polls > 3000 || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "no cycle finished: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();

    assert!(killed.success());
    assert!(
        out.status.success(),
        "{:?}: {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("SIGTERM: stopping"),
        "{}",
        text(&out.stdout)
    );
    let status = agent(&device, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["last_result"]["ok"], true, "{status}");
    let amd64 = s.built.manifest_for("linux/amd64").unwrap();
    assert_eq!(status["current"]["manifest_digest"], amd64.digest.as_str());
}
