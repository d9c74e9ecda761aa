//! The `meshanics-agent` binary: exit codes, `config check`, `status`, `fsck` and `gc` on a
//! real state directory.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a setup that fails is a failing test"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meshanics_agent::store::{Store, StoreOptions};
use meshanics_shared::Digest;
use meshanics_shared::devpki::DevCa;

/// A device's files: PKI, trust anchor, a state dir, and the config naming them.
struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = DevCa::new("cli test CA").unwrap();
        let device = ca.issue_device("device-cli").unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("device.pem"), &device.cert_pem).unwrap();
        std::fs::write(dir.path().join("device.key"), &device.key_pem).unwrap();
        std::fs::write(dir.path().join("root.cose"), b"root").unwrap();
        let d = Device { dir };
        d.write_config("");
        d
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    fn write_config(&self, extra_agent_keys: &str) {
        let text = format!(
            r#"
[facade]
url = "https://127.0.0.1:1"
ca = "ca.pem"

[device]
certificate = "device.pem"
key = "device.key"
class = "test-rig"
platform = "linux/arm64"

[trust]
anchor = "root.cose"

[agent]
state_dir = "{}"
{extra_agent_keys}
"#,
            self.state_dir().display()
        );
        std::fs::write(self.config(), text).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        agent()
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }
}

/// The agent binary, through the emulator `MESHANICS_TEST_RUNNER` names when the tests run
/// for another architecture (scripts/test-aarch64: no binfmt_misc to start it otherwise).
fn agent() -> Command {
    let binary = env!("CARGO_BIN_EXE_meshanics-agent");
    let runner = std::env::var("MESHANICS_TEST_RUNNER").unwrap_or_default();
    match runner.split_whitespace().collect::<Vec<_>>().split_first() {
        Some((emulator, emulator_args)) => {
            let mut command = Command::new(emulator);
            command.args(emulator_args).arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn put(state_dir: &Path, bytes: &[u8]) -> Digest {
    let (store, _) = Store::open(state_dir, StoreOptions::default()).unwrap();
    let digest = Digest::sha256_of(bytes);
    store.put(&digest, bytes).unwrap();
    digest
}

#[test]
fn config_check_accepts_a_valid_file() {
    let device = Device::new();
    let out = device.run(&["config", "check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("configuration is valid"));
}

#[test]
fn a_bad_config_exits_64_and_names_the_key() {
    let device = Device::new();
    device.write_config("concurrency = 0\npoll_interval = \"soon\"");
    for args in [&["config", "check"][..], &["status"][..]] {
        let out = device.run(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("agent.concurrency"), "{stderr}");
        assert!(stderr.contains("agent.poll_interval"), "{stderr}");
    }
}

#[test]
fn status_json_describes_an_empty_device() {
    let device = Device::new();
    let out = device.run(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["platform"], "linux/arm64");
    assert_eq!(status["device_class"], "test-rig");
    assert!(status["current"].is_null());
    assert!(status["last_result"].is_null());
    assert_eq!(status["cache"]["blobs"], 0);
}

#[test]
fn fsck_fails_on_a_corrupt_blob_and_repair_fixes_it() {
    let device = Device::new();
    let digest = put(&device.state_dir(), b"a blob that will rot");
    let path = device
        .state_dir()
        .join("cache/blobs/sha256")
        .join(digest.hex());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, b"a blob that has rot!").unwrap();

    let out = device.run(&["fsck"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains(&format!("corrupt: {digest}")));

    let out = device.run(&["fsck", "--repair", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["corrupt"][0], digest.as_str());
    assert!(!path.exists());

    assert!(device.run(&["fsck"]).status.success());
}

#[test]
fn gc_removes_blobs_no_artifact_uses() {
    let device = Device::new();
    let digest = put(&device.state_dir(), b"nobody needs me");
    let out = device.run(&["gc", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["removed_blobs"][0], digest.as_str());
    assert_eq!(report["freed_bytes"], 15);
}

#[test]
fn pull_reports_an_unreachable_facade_and_records_it_for_status() {
    let device = Device::new();
    device.write_config("");
    let digest = Digest::sha256_of(b"{}");
    let out = device.run(&[
        "pull",
        "--repository",
        "127.0.0.1_5000/team/app",
        "--digest",
        digest.as_str(),
        "--size",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("127.0.0.1:1"),
        "{}",
        text(&out.stderr)
    );
    let status = device.run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["last_result"]["ok"], false);
}

#[test]
fn status_reads_the_state_while_another_process_holds_it() {
    use meshanics_agent::store::LastResult;
    let device = Device::new();
    let (store, _) = Store::open(&device.state_dir(), StoreOptions::default()).unwrap();
    let digest = Digest::sha256_of(b"cached");
    store.put(&digest, b"cached").unwrap();
    std::fs::write(store.ingest_path(&Digest::sha256_of(b"partial")), b"par").unwrap();
    store
        .set_last_result(&LastResult {
            time: 1_700_000_000,
            target: Some("app".into()),
            ok: false,
            message: "timestamp expired".into(),
        })
        .unwrap();

    // The store (and its lock) is still held, as the service would hold it.
    let out = device.run(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["cache"]["blobs"], 1);
    assert_eq!(status["cache"]["bytes"], 6);
    assert_eq!(status["cache"]["partial_downloads"], 1);
    assert_eq!(status["last_result"]["message"], "timestamp expired");
    assert_eq!(status["last_result"]["target"], "app");

    let out = device.run(&["gc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("another meshanics-agent"),
        "{}",
        text(&out.stderr)
    );
    drop(store);
}

/// Two slots as the service leaves them: `app` holding back a release that failed its health
/// check, `model` with an apply whose checks have not passed yet.
fn two_slots(state_dir: &Path) -> Digest {
    use meshanics_agent::store::{BadRelease, LastResult, Pending, Pointers, SlotState};
    use meshanics_shared::metadata::TargetName;
    let (store, _) = Store::open(state_dir, StoreOptions::default()).unwrap();
    let bad = Digest::sha256_of(b"release 2");
    let app = SlotState {
        last_result: Some(LastResult {
            time: 1_700_000_000,
            target: Some("app".into()),
            ok: false,
            message: "the health check failed".into(),
        }),
        bad: Some(BadRelease {
            target_digest: bad.clone(),
            targets_version: Some(4),
            reason: "exit status: 1".into(),
            time: 1_700_000_000,
        }),
        ..SlotState::default()
    };
    let model = SlotState {
        pending: Some(Pending {
            id: "0123456789abcdef-1".into(),
            restore: Pointers::default(),
            targets_version: Some(4),
            since: 1_700_000_000,
        }),
        ..SlotState::default()
    };
    for (name, state) in [("app", app), ("model", model)] {
        store
            .set_slot_state(&TargetName::parse(name).unwrap(), &state)
            .unwrap();
    }
    bad
}

#[test]
fn status_lists_every_slot_with_its_pending_check_and_held_back_release() {
    let device = Device::new();
    let bad = two_slots(&device.state_dir());

    let out = device.run(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let slots = status["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    assert_eq!(slots[0]["name"], "app");
    assert_eq!(slots[0]["bad"]["target_digest"], bad.as_str());
    assert_eq!(slots[0]["bad"]["targets_version"], 4);
    assert_eq!(slots[0]["last_result"]["ok"], false);
    assert!(slots[0]["pending_health"].is_null());
    assert!(slots[0]["wave_opens"].is_null());
    assert_eq!(slots[1]["name"], "model");
    assert_eq!(slots[1]["pending_health"]["id"], "0123456789abcdef-1");

    let out = device.run(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    // The state directory's own links (the primary slot's) keep their lines.
    assert!(report.contains("\ncurrent:   none"), "{report}");
    assert!(report.contains("slot:      app"), "{report}");
    assert!(
        report.contains(&format!("held back: {bad}")) && report.contains("exit status: 1"),
        "{report}"
    );
    assert!(report.contains("slot:      model"), "{report}");
    assert!(report.contains("pending:   0123456789abcdef-1"), "{report}");
}
