//! `meshctl`'s offline signing commands, run as the operator runs them: keys, root, release,
//! timestamp refresh and rotation, checked with `meshctl verify` (the device's workflow).

// Helpers outside `#[test]` functions are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// A folder with keys `root`, `targets`, `timestamp`, root version 1 in `meta/`, and a
    /// pins file with two targets.
    fn new() -> Self {
        let ws = Workspace {
            dir: tempfile::tempdir().unwrap(),
        };
        for name in ["root", "targets", "timestamp"] {
            ws.ok(&["key", "generate", "--out", &format!("keys/{name}")]);
        }
        ws.ok(&[
            "root",
            "init",
            "--dir",
            "meta",
            "--root-key",
            "keys/root.key",
            "--targets-key",
            "keys/targets.pub",
            "--timestamp-key",
            "keys/timestamp.pub",
        ]);
        std::fs::write(
            ws.path("pins.json"),
            r#"[
  {"name": "app", "repository": "ghcr.io/org/app",
   "digest": "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
   "size": 525, "media_type": "application/vnd.oci.image.index.v1+json",
   "selectors": {"hardware_class": "gateway", "platform": "linux/arm64"}},
  {"name": "tools", "repository": "docker.io/library/busybox",
   "digest": "sha256:0c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
   "size": 1024, "media_type": "application/vnd.oci.image.manifest.v1+json",
   "custom": {"restart": "always"}}
]"#,
        )
        .unwrap();
        ws
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "meshctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "meshctl {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    }

    fn release(&self) -> Value {
        serde_json::from_str(&self.ok(&self.release_args(&[]))).unwrap()
    }

    /// `meshctl --json release` with this workspace's folder, pins and keys, then `extra`.
    fn release_args<'a>(&self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "--json",
            "release",
            "--dir",
            "meta",
            "--pins",
            "pins.json",
            "--targets-key",
            "keys/targets.key",
            "--timestamp-key",
            "keys/timestamp.key",
        ];
        args.extend(extra);
        args
    }

    fn verify(&self) -> Value {
        let out = self.ok(&["--json", "verify", "meta", "--root", "meta/1.root.cose"]);
        serde_json::from_str(&out).unwrap()
    }
}

#[cfg(unix)]
#[test]
fn key_generate_writes_a_private_key_only_its_owner_can_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let ws = Workspace::new();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ws.path("keys/root.key")), 0o600);
    let private = std::fs::read_to_string(ws.path("keys/root.key")).unwrap();
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
    let public = std::fs::read_to_string(ws.path("keys/root.pub")).unwrap();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
}

#[test]
fn key_generate_refuses_to_overwrite_a_key() {
    let ws = Workspace::new();
    let err = ws.fails(&["key", "generate", "--out", "keys/root"]);
    assert!(err.contains("keys/root.key"), "{err}");
}

#[test]
fn a_release_verifies_as_a_device_would_accept_it() {
    let ws = Workspace::new();
    let release = ws.release();
    assert_eq!(release["targets"]["version"], 1);
    assert_eq!(release["timestamp"]["version"], 1);

    let verified = ws.verify();

    assert_eq!(verified["root"]["version"], 1);
    assert_eq!(verified["targets"]["version"], 1);
    let entries = verified["targets"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["repository"], "ghcr.io/org/app");
    assert_eq!(entries[0]["selectors"]["platform"], "linux/arm64");
    assert_eq!(entries[1]["custom"]["restart"], "always");
}

#[test]
fn verify_lists_only_the_targets_for_a_device() {
    let ws = Workspace::new();
    ws.release();
    let out = ws.ok(&[
        "--json",
        "verify",
        "meta",
        "--root",
        "meta/1.root.cose",
        "--hardware-class",
        "sensor",
        "--platform",
        "linux/amd64",
    ]);
    let verified: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<_> = verified["targets"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["tools"]);
}

#[test]
fn versions_increase_with_each_release_and_refresh() {
    let ws = Workspace::new();
    ws.release();
    let second = ws.release();
    assert_eq!(second["targets"]["version"], 2);
    assert_eq!(second["timestamp"]["version"], 2);
    let refreshed: Value = serde_json::from_str(&ws.ok(&[
        "--json",
        "timestamp",
        "refresh",
        "--dir",
        "meta",
        "--timestamp-key",
        "keys/timestamp.key",
    ]))
    .unwrap();
    assert_eq!(refreshed["version"], 3);
    assert_eq!(refreshed["targets_version"], 2);
    assert_eq!(ws.verify()["timestamp"]["version"], 3);
}

#[test]
fn verify_names_the_file_and_reason_when_a_byte_is_flipped() {
    let ws = Workspace::new();
    ws.release();
    let path = ws.path("meta/1.targets.cose");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let err = ws.fails(&["verify", "meta", "--root", "meta/1.root.cose"]);

    assert!(err.contains("1.targets.cose"), "{err}");
    assert!(err.contains("does not match the timestamp"), "{err}");
}

#[test]
fn root_rotation_is_followed_by_verify_from_the_old_anchor() {
    let ws = Workspace::new();
    ws.release();
    ws.ok(&["key", "generate", "--out", "keys/root2"]);
    ws.ok(&["key", "generate", "--out", "keys/timestamp2"]);
    ws.ok(&[
        "root",
        "rotate",
        "--dir",
        "meta",
        "--old-root-key",
        "keys/root.key",
        "--root-key",
        "keys/root2.key",
        "--timestamp-key",
        "keys/timestamp2.pub",
    ]);
    // The old timestamp key no longer counts.
    let err = ws.fails(&["verify", "meta", "--root", "meta/1.root.cose"]);
    assert!(
        err.contains("timestamp.cose") && err.contains("below the threshold"),
        "{err}"
    );
    ws.ok(&[
        "timestamp",
        "refresh",
        "--dir",
        "meta",
        "--timestamp-key",
        "keys/timestamp2.key",
    ]);

    let verified = ws.verify();

    assert_eq!(verified["root"]["version"], 2);
    assert_eq!(verified["timestamp"]["version"], 2);
}

#[test]
fn root_rotate_refuses_keys_that_do_not_meet_the_current_threshold() {
    let ws = Workspace::new();
    ws.ok(&["key", "generate", "--out", "keys/other"]);
    let err = ws.fails(&[
        "root",
        "rotate",
        "--dir",
        "meta",
        "--old-root-key",
        "keys/other.key",
    ]);
    assert!(err.contains("2.root.cose"), "{err}");
    assert!(!ws.path("meta/2.root.cose").exists());
}

#[test]
fn release_refuses_pins_with_an_invalid_entry_and_names_the_file() {
    let ws = Workspace::new();
    std::fs::write(
        ws.path("bad-pins.json"),
        r#"[{"name": "app", "repository": "nginx",
  "digest": "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
  "size": 525, "media_type": "application/vnd.oci.image.index.v1+json"}]"#,
    )
    .unwrap();
    let err = ws.fails(&[
        "release",
        "--dir",
        "meta",
        "--pins",
        "bad-pins.json",
        "--targets-key",
        "keys/targets.key",
        "--timestamp-key",
        "keys/timestamp.key",
    ]);
    assert!(
        err.contains("bad-pins.json") && err.contains("normalized"),
        "{err}"
    );
    assert!(!ws.path("meta/1.targets.cose").exists());
}

#[test]
fn release_apply_signs_how_a_target_is_applied_into_its_entry_only() {
    let ws = Workspace::new();
    let err = ws.fails(&ws.release_args(&["--apply", "nosuch=files"]));
    assert!(err.contains("no target nosuch"), "{err}");
    let err = ws.fails(&ws.release_args(&["--apply", "app=copy"]));
    assert!(err.contains("copy"), "{err}");

    ws.ok(&ws.release_args(&["--apply", "tools=files"]));
    let verified = ws.verify();
    let entries = verified["targets"]["entries"].as_array().unwrap();
    assert_eq!(entries[1]["name"], "tools");
    assert_eq!(entries[1]["apply"], "files");
    assert!(entries[0].get("apply").is_none(), "{}", entries[0]);
}
