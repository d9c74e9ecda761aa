//! The README's first command, run as a user runs it: the demo binary from start to end,
//! with each kind of upstream, twice in a row in one folder's parent, checking what it left.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test on anything unexpected"
)]

use std::path::Path;
use std::process::Command;

fn run_demo(upstream: &str, keep: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_meshanics-demo"))
        .args(["--upstream", upstream, "run", "--keep"])
        .arg(keep)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "demo failed:\n{text}");
    text
}

/// Both devices applied the signed release: `current` is a layout whose index names the
/// platform's manifest, and every blob it links is in the device's cache.
fn assert_applied(keep: &Path) {
    for device in ["demo-device-1", "demo-device-2"] {
        let current = keep.join(device).join("state/current");
        let index = std::fs::read_to_string(current.join("index.json"))
            .unwrap_or_else(|e| panic!("{device} has no applied layout: {e}"));
        assert!(index.contains("sha256:"), "{index}");
        assert!(current.join("oci-layout").is_file());
    }
}

fn check(upstream: &str) {
    let parent = tempfile::tempdir().unwrap();
    for round in ["first", "second"] {
        let keep = parent.path().join(round);
        let text = run_demo(upstream, &keep);
        assert!(text.contains("[8/8]"), "{text}");
        assert!(text.contains("imported  127.0.0.1:"), "{text}");
        assert!(text.contains("OK: a device pinned to"), "{text}");
        // Published through the facade's check, not copied into its folder.
        assert!(
            text.contains("$ meshctl publish") && text.contains("serving root version 1"),
            "{text}"
        );
        assert!(
            text.contains("Done: both devices verified and applied the signed release."),
            "{text}"
        );
        assert_applied(&keep);
        // The facade got SIGTERM and drained.
        let log = std::fs::read_to_string(keep.join("facade/facade.log")).unwrap();
        assert!(log.contains("facade stopped"), "{log}");
    }
}

#[test]
fn runs_end_to_end_with_the_built_in_layout_registry_twice() {
    check("layout");
}

#[test]
fn runs_end_to_end_with_the_distribution_registry_twice() {
    check("registry");
}

#[test]
fn refuses_a_keep_folder_that_is_not_empty_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious"), b"data").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_meshanics-demo"))
        .args(["run", "--keep"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not empty"), "{stderr}");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}
