//! Power-loss emulation for the cache and the apply: the agent binary, built with the
//! `failpoints` feature, aborts at each crash point of a commit (after the last write,
//! before the fsync, before the rename, before the folder fsync, before the index record), of
//! a layout and of the `current`/`previous` switch, and at random byte offsets inside blob
//! writes (a torn write). Before the restart the test also takes away what a power cut could
//! have lost that was never fsynced: ingest files cut to a random length (sometimes with a
//! zeroed tail, as unwritten blocks read back), a blob rename or a link switch undone.
//!
//! Its own test binary: it runs only with the `failpoints` feature (`cargo test -p
//! meshanics-tests --features failpoints --test power_loss`), and builds the agent binary with
//! that feature, which the other tests must not run.
//!
//! `abort()` itself loses nothing the kernel holds (the page cache survives it), so the
//! emulation of lost writes is this test's, not the kernel's: it covers what the agent's
//! fsync discipline promises, not a file system's own behaviour (sled's log included).
//!
//! After each cut: `fsck` is clean without repair, `current` is a complete layout of the old
//! or the new release, and a plain restart converges on the new one. A cut between the
//! switch and a passed health check is finished at the next start: the check runs then, and
//! a failing one rolls the slot back.
//! `MESHANICS_FAULT_POWER_CUTS` random write offsets are cut on top of every named point
//! (default 4; `scripts/faults` runs 20).

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test helpers: a setup that fails is a failing test"
)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meshanics_agent::failpoint::POINTS;
use meshanics_shared::Digest;
use meshanics_tests::binaries::workspace_binary_with;
use meshanics_tests::oci_layout::{BuiltImage, SampleImage};
use meshanics_tests::tls_registry::TlsRegistry;

struct Rig {
    /// The agent binary built with its crash points.
    agent: PathBuf,
    work: tempfile::TempDir,
    registry: TlsRegistry,
    old: BuiltImage,
    new: BuiltImage,
}

// === impl Rig ===

impl Rig {
    fn start() -> Rig {
        let work = tempfile::tempdir().unwrap();
        let registry = TlsRegistry::start().unwrap();
        let old = SampleImage::multi_arch(&["linux/amd64"], 128 * 1024, 64 * 1024).unwrap();
        let old = registry
            .push_image(&old, work.path(), "old", "team/app")
            .unwrap();
        // Other sizes, so other content: every blob of the new release is new.
        let new = SampleImage::multi_arch(&["linux/amd64"], 1024 * 1024, 768 * 1024).unwrap();
        let new = registry
            .push_image(&new, work.path(), "new", "team/app")
            .unwrap();
        Rig {
            agent: workspace_binary_with("meshanics-agent", "meshanics-agent", &["failpoints"])
                .unwrap(),
            work,
            registry,
            old,
            new,
        }
    }

    /// A fresh device with the old release applied; returns its config file.
    fn device(&self, name: &str) -> PathBuf {
        self.device_with(name, "")
    }

    /// [`Rig::device`] with more configuration (an `[apply]` table) at the end.
    fn device_with(&self, name: &str, more: &str) -> PathBuf {
        let state = self.work.path().join(name);
        let config = self.work.path().join(format!("{name}.toml"));
        let url = self.registry.base_url();
        let text = self.registry.agent_config(&url, &state, "", 2) + more;
        std::fs::write(&config, text).unwrap();
        let out = self.pull(&config, &self.old, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        config
    }

    fn pull(&self, config: &Path, image: &BuiltImage, failpoint: Option<&str>) -> Output {
        let mut command = Command::new(&self.agent);
        command
            .arg("--config")
            .arg(config)
            .args(["pull", "--repository"])
            .arg(self.registry.facade_repository("team/app"))
            .arg("--digest")
            .arg(image.index.digest.as_str())
            .arg("--size")
            .arg(image.index.size.to_string())
            .args(["--name", "app"]);
        match failpoint {
            Some(spec) => command.env("MESHANICS_FAILPOINT", spec),
            None => command.env_remove("MESHANICS_FAILPOINT"),
        };
        command.output().unwrap()
    }

    fn fsck_is_clean(&self, config: &Path) -> Result<(), String> {
        let out = Command::new(&self.agent)
            .arg("--config")
            .arg(config)
            .args(["fsck", "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Which release `current` holds ("old" or "new"), after checking its layout whole.
    fn current(&self, state: &Path) -> Option<&'static str> {
        let link = state.join("current");
        std::fs::symlink_metadata(&link).ok()?;
        let layout = std::fs::canonicalize(&link).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifest = Digest::parse(index["manifests"][0]["digest"].as_str().unwrap()).unwrap();
        let (name, built) = if manifest == self.old.manifests[0].digest {
            ("old", &self.old)
        } else if manifest == self.new.manifests[0].digest {
            ("new", &self.new)
        } else {
            panic!("current holds {manifest}, neither release");
        };
        let mut needed: Vec<&Digest> = built.blobs[0].iter().map(|d| &d.digest).collect();
        needed.push(&manifest);
        for digest in needed {
            let bytes = std::fs::read(layout.join("blobs/sha256").join(digest.hex())).unwrap();
            assert_eq!(&Digest::sha256_of(&bytes), digest, "current has a bad blob");
        }
        Some(name)
    }
}

/// Takes away what was not yet durable when the process died at `point` (see the module
/// docs); `detail` is the path the crash point printed.
fn lose_unsynced(
    point: &str,
    detail: &str,
    state: &Path,
    links_before: &[(PathBuf, Option<PathBuf>)],
    rng: &mut fastrand::Rng,
) -> String {
    match point {
        "ingest.write" | "ingest.before-fsync" => {
            // No ingest file was fsynced: each keeps some prefix of what was written, and
            // the blocks past what reached the disk may read back as zeros.
            let mut done = Vec::new();
            for entry in std::fs::read_dir(state.join("cache/ingest")).unwrap() {
                let path = entry.unwrap().path();
                let len = std::fs::metadata(&path).unwrap().len();
                let keep = rng.u64(0..=len);
                let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                file.set_len(keep).unwrap();
                if keep > 0 && rng.bool() {
                    use std::os::unix::fs::FileExt as _;
                    let zeros = rng.u64(1..=keep.min(8192));
                    file.write_all_at(&vec![0u8; zeros as usize], keep - zeros)
                        .unwrap();
                    done.push(format!("{len}->{keep} (last {zeros} zeroed)"));
                } else {
                    done.push(format!("{len}->{keep}"));
                }
            }
            format!("ingest files cut: {done:?}")
        }
        "ingest.before-dir-fsync" => {
            // The rename never reached the disk: the blob is back under its ingest name, still
            // read-only (the agent, unprivileged in production, must make it writable again).
            let blob = Path::new(detail);
            let name = blob.file_name().unwrap().to_str().unwrap();
            let ingest = state.join("cache/ingest").join(format!("sha256-{name}"));
            std::fs::rename(blob, &ingest).unwrap();
            "blob rename undone".into()
        }
        "apply.between-pointers" | "apply.before-dir-fsync" => {
            for (link, target) in links_before {
                let _ = std::fs::remove_file(link);
                if let Some(target) = target {
                    std::os::unix::fs::symlink(target, link).unwrap();
                }
            }
            "link switch undone".into()
        }
        _ => "nothing lost".into(),
    }
}

/// The links of the slot `app` (the state directory's own follow them).
fn links(state: &Path) -> Vec<(PathBuf, Option<PathBuf>)> {
    ["current", "previous"]
        .iter()
        .map(|name| {
            let link = state.join("slots/app").join(name);
            let target = std::fs::read_link(&link).ok();
            (link, target)
        })
        .collect()
}

#[test]
fn a_power_cut_at_any_crash_point_leaves_a_verified_cache_and_a_whole_current() {
    let random_cuts: usize = std::env::var("MESHANICS_FAULT_POWER_CUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let seed = std::env::var("MESHANICS_FAULT_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("power-loss campaign: seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let rig = Rig::start();
    let new_bytes: u64 = rig.new.all_blobs.values().sum();

    let mut cuts: Vec<String> = POINTS
        .iter()
        .filter(|p| **p != "ingest.write")
        // A pull commits five blobs (index, manifest, config, two layers) and applies once.
        .map(|p| match p.starts_with("ingest.") {
            true => format!("{p}#{}", rng.u64(1..=5)),
            false => format!("{p}#1"),
        })
        .collect();
    cuts.extend((0..random_cuts).map(|_| format!("ingest.write@{}", rng.u64(1..new_bytes))));

    let mut aborted = 0;
    for (i, spec) in cuts.iter().enumerate() {
        let config = rig.device(&format!("device-{i}"));
        let state = rig.work.path().join(format!("device-{i}"));
        let before = links(&state);

        let out = rig.pull(&config, &rig.new, Some(spec));

        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let lost = match stderr.lines().find_map(|l| l.strip_prefix("failpoint ")) {
            Some(line) => {
                assert_eq!(
                    out.status.signal(),
                    Some(6),
                    "{spec}: not aborted: {stderr}"
                );
                aborted += 1;
                let (point, detail) = line.split_once(' ').unwrap();
                lose_unsynced(point, detail, &state, &before, &mut rng)
            }
            // The point was not reached this often (e.g. a second hit that never came).
            None => {
                assert!(out.status.success(), "{spec}: {stderr}");
                "not reached".into()
            }
        };
        let when = format!("{spec} ({lost})");
        if let Err(report) = rig.fsck_is_clean(&config) {
            panic!("{when}: fsck after the cut is not clean: {report}");
        }
        let current = rig.current(&state);
        assert!(
            matches!(current, Some("old" | "new")),
            "{when}: current is {current:?}"
        );

        let again = rig.pull(&config, &rig.new, None);
        assert!(
            again.status.success(),
            "{when}: the restart failed: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        assert_eq!(rig.current(&state), Some("new"), "{when}");
        rig.fsck_is_clean(&config)
            .unwrap_or_else(|report| panic!("{when}: fsck after the restart: {report}"));
        println!("cut {spec}: {lost}; current after the cut: {current:?}");
        std::fs::remove_dir_all(&state).unwrap();
    }
    println!("{} cuts, {aborted} aborted the agent", cuts.len());
    assert!(
        aborted * 4 >= cuts.len() * 3,
        "only {aborted} of {} cuts were reached",
        cuts.len()
    );
}

/// `meshanics-agent --config <config> <args>`, without a crash point.
fn agent(rig: &Rig, config: &Path, args: &[&str]) -> Output {
    Command::new(&rig.agent)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("MESHANICS_FAILPOINT")
        .output()
        .unwrap()
}

/// The slot `app` as `status --json` shows it.
fn app_slot(rig: &Rig, config: &Path) -> serde_json::Value {
    let out = agent(rig, config, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "app")
        .cloned()
        .unwrap()
}

#[test]
fn a_cut_between_the_switch_and_a_passed_health_check_is_finished_or_rolled_back_at_the_next_start()
{
    let rig = Rig::start();
    let new_manifest = rig.new.manifests[0].digest.to_string();
    for healthy in [true, false] {
        let name = format!("health-{healthy}");
        let runs = rig.work.path().join(format!("{name}.runs"));
        // The old release always passes; the new one passes only on the healthy device.
        let check = rig.work.path().join(format!("{name}.sh"));
        std::fs::write(
            &check,
            format!(
                "#!/bin/sh\necho \"$MESHANICS_MANIFEST_DIGEST\" >> {runs}\n[ {healthy} = true ] || [ \"$MESHANICS_MANIFEST_DIGEST\" != {new_manifest} ]\n",
                runs = runs.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&check, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = rig.device_with(
            &name,
            &format!(
                "[apply]\nhealth_check = \"{}\"\nhealth_settle = \"0s\"\n",
                check.display()
            ),
        );
        let state = rig.work.path().join(&name);

        let out = rig.pull(&config, &rig.new, Some("apply.before-health#1"));

        assert_eq!(
            out.status.signal(),
            Some(6),
            "not aborted: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(rig.current(&state), Some("new"), "switched before the cut");
        let slot = app_slot(&rig, &config);
        assert!(slot["pending_health"].is_object(), "{slot}");
        let checked_before = std::fs::read_to_string(&runs).unwrap().lines().count();

        // The next start: the facade's metadata is out of reach here (the cycle fails), but
        // the interrupted check is settled before the cycle asks for it.
        let restart = agent(&rig, &config, &["sync", "--once"]);

        let checks = std::fs::read_to_string(&runs).unwrap();
        assert_eq!(
            checks.lines().count(),
            checked_before + 1,
            "the check ran once at the restart: {}",
            String::from_utf8_lossy(&restart.stdout)
        );
        assert_eq!(checks.lines().last(), Some(new_manifest.as_str()));
        let slot = app_slot(&rig, &config);
        assert!(slot["pending_health"].is_null(), "{slot}");
        if healthy {
            assert_eq!(rig.current(&state), Some("new"));
            assert!(slot["bad"].is_null(), "{slot}");
        } else {
            assert_eq!(rig.current(&state), Some("old"), "rolled back");
            assert_eq!(slot["bad"]["target_digest"], rig.new.index.digest.as_str());
        }
        rig.fsck_is_clean(&config).unwrap();
    }
}
