//! Several targets on one device, end to end: the real registry -> the facade -> the agent's
//! update cycle with its signed-metadata source. Each target has its own slot: a release
//! whose health check fails is rolled back and held back in its slot alone while the other
//! target is applied, new signed metadata retries it, and a target the metadata stops
//! listing is retired. An application image beside a CNCF ModelPack model: the model is
//! applied as files and its failing release rolled back to its files while the application
//! is not touched.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers: a setup that fails is a failing test"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use meshanics_agent::apply::ArtifactKind;
use meshanics_agent::service::SlotAction;
use meshanics_agent::status::{self, SlotView};
use meshanics_shared::Digest;
use meshanics_tests::agent_device::AgentDevice;
use meshanics_tests::artifacts::{self, BuiltArtifact, read_tree, source_tree};
use meshanics_tests::oci_layout::{BuiltImage, LayerFile, pseudo_random};
use meshanics_tests::update_chain::{REPOSITORY, UpdateChain};
use meshanics_tests::{release, skopeo};

/// The manifest digest the layout behind `link` holds.
fn manifest_behind(link: &std::path::Path) -> Digest {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(link.join("index.json")).unwrap()).unwrap();
    Digest::parse(index["manifests"][0]["digest"].as_str().unwrap()).unwrap()
}

fn slot<'a>(slots: &'a [SlotView], name: &str) -> &'a SlotView {
    slots.iter().find(|s| s.name == name).unwrap()
}

/// A `linux/amd64` gateway with the health check `check` (no settle time) and the hook `hook`.
fn checked_device(s: &UpdateChain, hook: Option<&Path>, check: &Path) -> AgentDevice {
    let hook = hook.map_or_else(String::new, |h| format!("hook = \"{}\"\n", h.display()));
    AgentDevice::with_apply(
        &s.facade,
        s.release.anchor(),
        "gateway",
        "linux/amd64",
        &format!(
            "{hook}health_check = \"{}\"\nhealth_settle = \"0s\"",
            check.display()
        ),
    )
    .unwrap()
}

fn amd64(built: &BuiltImage) -> Digest {
    built.manifest_for("linux/amd64").unwrap().digest.clone()
}

#[test]
fn a_device_running_two_targets_rolls_back_only_the_one_whose_health_check_fails() {
    let mut s = UpdateChain::start().unwrap();
    let app1 = s
        .push("app1", &["linux/amd64"], 64 * 1024, 16 * 1024)
        .unwrap();
    let model1 = s
        .push("model1", &["linux/amd64"], 32 * 1024, 8 * 1024)
        .unwrap();
    let app2 = s
        .push("app2", &["linux/amd64"], 64 * 1024, 20 * 1024)
        .unwrap();
    let model2 = s
        .push("model2", &["linux/amd64"], 32 * 1024, 12 * 1024)
        .unwrap();
    // The check fails for the second model release only, and logs what it checked.
    let log = s.work.path().join("health.log");
    let check = s.work.path().join("health.sh");
    script(
        &check,
        &format!(
            "echo \"$MESHANICS_TARGET $MESHANICS_KIND\" >> {}\n[ \"$MESHANICS_TARGET_DIGEST\" != \"{}\" ]\n",
            log.display(),
            model2.index.digest
        ),
    );
    let device = checked_device(&s, None, &check);
    let publish = |s: &mut UpdateChain, releases: &[(&str, &BuiltImage)]| {
        let entries = releases
            .iter()
            .map(|(name, built)| s.entry(name, built, None).unwrap())
            .collect();
        s.release.publish(entries).unwrap();
    };

    publish(&mut s, &[("app", &app1), ("model", &model1)]);
    let first = s.sync(&device).unwrap();
    assert!(first.is_ok(), "{first:?}");
    assert_eq!(
        manifest_behind(&device.slot_current("model")),
        amd64(&model1)
    );

    publish(&mut s, &[("app", &app2), ("model", &model2)]);
    let second = s.sync(&device).unwrap();

    assert!(
        matches!(second.action("app"), Some(SlotAction::Applied { .. })),
        "{second:?}"
    );
    assert!(second.action("model").is_none(), "{second:?}");
    assert_eq!(manifest_behind(&device.slot_current("app")), amd64(&app2));
    assert_eq!(
        manifest_behind(&device.slot_current("model")),
        amd64(&model1),
        "rolled back"
    );
    // The state directory's own `current` follows the first target listed.
    assert_eq!(manifest_behind(&device.current()), amd64(&app2));
    let view = status::read(&device.config).unwrap();
    let model = slot(&view.slots, "model");
    let bad = model.bad.as_ref().unwrap();
    assert_eq!(bad.target_digest, model2.index.digest);
    assert_eq!(bad.targets_version, Some(2));
    assert!(bad.reason.contains("health check"), "{}", bad.reason);
    assert!(model.pending_health.is_none());
    assert!(!model.last_result.as_ref().unwrap().ok);
    let app = slot(&view.slots, "app");
    assert!(app.primary && app.bad.is_none() && app.last_result.as_ref().unwrap().ok);
    assert_eq!(
        app.previous.as_ref().unwrap().manifest_digest.as_ref(),
        Some(&amd64(&app1))
    );

    // Under the same signed metadata the failed release is not tried again.
    let checks_before = std::fs::read_to_string(&log).unwrap().lines().count();
    let third = s.sync(&device).unwrap();
    assert!(
        matches!(third.action("model"), Some(SlotAction::HeldBack { .. })),
        "{third:?}"
    );
    assert_eq!(third.action("app"), Some(&SlotAction::UpToDate));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().lines().count(),
        checks_before,
        "no check ran"
    );

    // The operator signs again (targets version 3): the release is tried again.
    publish(&mut s, &[("app", &app2), ("model", &model2)]);
    let fourth = s.sync(&device).unwrap();
    assert!(fourth.action("model").is_none(), "{fourth:?}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().lines().last(),
        Some("model image")
    );

    // The model is no longer listed: its slot is retired.
    publish(&mut s, &[("app", &app2)]);
    let fifth = s.sync(&device).unwrap();
    assert_eq!(fifth.retired, vec!["model".to_owned()]);
    assert!(!device.slot_current("model").exists());
    let view = status::read(&device.config).unwrap();
    assert_eq!(
        view.slots
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        vec!["app"]
    );
}

/// An executable `sh` script at `path`.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The lines of a log a script appends to (none before it first runs).
fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The lines of `log` (`TARGET ...`) about the target `name`.
fn about(log: &Path, name: &str) -> Vec<String> {
    lines(log)
        .into_iter()
        .filter(|l| l.split(' ').nth(1) == Some(name))
        .collect()
}

/// A small model release: weights at the top and a folder of tokenizer files, `seed` making
/// each release's bytes its own.
fn model_files(seed: u64) -> Vec<LayerFile> {
    let file = |path: &str, contents: Vec<u8>| LayerFile {
        path: path.to_owned(),
        contents,
    };
    vec![
        file("model.safetensors", pseudo_random(seed, 96 * 1024)),
        file(
            "tokenizer/tokenizer.json",
            format!(r#"{{"vocab": {{"a": {seed}}}}}"#).into_bytes(),
        ),
        file("tokenizer/config.json", br#"{"hidden": 64}"#.to_vec()),
    ]
}

#[test]
fn an_app_image_beside_a_modelpack_model_whose_check_fails_keeps_the_app_and_rolls_the_model_back_to_its_files()
 {
    let mut s = UpdateChain::start().unwrap();
    let app = s
        .push("app1", &["linux/amd64"], 64 * 1024, 16 * 1024)
        .unwrap();
    let (files1, files2) = (model_files(11), model_files(12));
    let model = |files: &[LayerFile], tag: &str| -> BuiltArtifact {
        let built = artifacts::modelpack(files, &s.work.path().join(tag), tag).unwrap();
        skopeo::push_layout(&built.dir, tag, &s.registry.host(), REPOSITORY).unwrap();
        built
    };
    let (model1, model2) = (model(&files1, "m1"), model(&files2, "m2"));
    // Both scripts log `EVENT TARGET KIND PATH`; the check fails for model v2 only.
    let (hook_log, health_log) = (
        s.work.path().join("hook.log"),
        s.work.path().join("health.log"),
    );
    let (hook, check) = (
        s.work.path().join("hook.sh"),
        s.work.path().join("health.sh"),
    );
    let record = "echo \"$MESHANICS_EVENT $MESHANICS_TARGET $MESHANICS_KIND $MESHANICS_PATH\" >>";
    script(&hook, &format!("{record} {}\n", hook_log.display()));
    script(
        &check,
        &format!(
            "{record} {}\n[ \"$MESHANICS_TARGET_DIGEST\" != \"{}\" ]\n",
            health_log.display(),
            model2.manifest.digest
        ),
    );
    let device = checked_device(&s, Some(&hook), &check);
    let publish = |s: &mut UpdateChain, model: &BuiltArtifact| {
        let entries = vec![
            s.entry("app", &app, None).unwrap(),
            release::entry("model", &s.upstream(), &model.manifest, None).unwrap(),
        ];
        s.release.publish(entries).unwrap();
    };
    let path_of = |line: &str| PathBuf::from(line.splitn(4, ' ').nth(3).unwrap());

    // Release 1: the app is laid out as an image, the model v1 as its files.
    publish(&mut s, &model1);
    let first = s.sync(&device).unwrap();
    assert!(first.is_ok(), "{first:?}");
    for name in ["app", "model"] {
        assert!(
            matches!(first.action(name), Some(SlotAction::Applied { .. })),
            "{name}: {first:?}"
        );
    }
    let app_current = std::fs::canonicalize(device.slot_current("app")).unwrap();
    assert_eq!(ArtifactKind::of_layout(&app_current), ArtifactKind::Image);
    assert_eq!(manifest_behind(&app_current), amd64(&app));
    assert_eq!(
        about(&hook_log, "app"),
        vec![format!("apply app image {}", app_current.display())]
    );
    assert_eq!(
        about(&health_log, "app"),
        vec![format!("health app image {}", app_current.display())]
    );
    let model_checked = about(&health_log, "model");
    assert_eq!(model_checked.len(), 1, "{model_checked:?}");
    assert!(
        model_checked[0].starts_with("health model files "),
        "{model_checked:?}"
    );
    let model1_files = path_of(&model_checked[0]);
    assert!(
        model1_files.ends_with("files"),
        "{}",
        model1_files.display()
    );
    assert_eq!(read_tree(&model1_files).unwrap(), source_tree(&files1));
    let model_current = device.slot_current("model");
    assert_eq!(ArtifactKind::of_layout(&model_current), ArtifactKind::Files);
    assert_eq!(
        std::fs::canonicalize(ArtifactKind::Files.folder(&model_current)).unwrap(),
        std::fs::canonicalize(&model1_files).unwrap()
    );
    assert_eq!(
        about(&hook_log, "model"),
        vec![format!("apply model files {}", model1_files.display())]
    );

    // Release 2: the same app, model v2, whose check fails.
    let (app_hooks, app_checks) = (about(&hook_log, "app"), about(&health_log, "app"));
    publish(&mut s, &model2);
    let second = s.sync(&device).unwrap();

    assert_eq!(
        second.action("app"),
        Some(&SlotAction::UpToDate),
        "{second:?}"
    );
    assert!(second.action("model").is_none(), "{second:?}");
    // The check saw model v2 as files, then the slot went back to v1's files.
    let model2_checked = path_of(about(&health_log, "model").last().unwrap());
    assert!(
        model2_checked.ends_with("files"),
        "{}",
        model2_checked.display()
    );
    assert_ne!(model2_checked, model1_files);
    assert_eq!(read_tree(&model2_checked).unwrap(), source_tree(&files2));
    assert_eq!(
        std::fs::canonicalize(ArtifactKind::Files.folder(&model_current)).unwrap(),
        std::fs::canonicalize(&model1_files).unwrap(),
        "rolled back"
    );
    assert_eq!(
        read_tree(&ArtifactKind::Files.folder(&model_current)).unwrap(),
        source_tree(&files1)
    );
    assert_eq!(
        about(&hook_log, "model"),
        vec![
            format!("apply model files {}", model1_files.display()),
            format!("apply model files {}", model2_checked.display()),
            format!("rollback model files {}", model1_files.display()),
        ]
    );
    // The app: same release, its hook and check not run again.
    assert_eq!(
        std::fs::canonicalize(device.slot_current("app")).unwrap(),
        app_current
    );
    assert_eq!(about(&hook_log, "app"), app_hooks);
    assert_eq!(about(&health_log, "app"), app_checks);
    let view = status::read(&device.config).unwrap();
    let model = slot(&view.slots, "model");
    let bad = model.bad.as_ref().unwrap();
    assert_eq!(bad.target_digest, model2.manifest.digest);
    assert!(bad.reason.contains("health check"), "{}", bad.reason);
    assert!(!model.last_result.as_ref().unwrap().ok);
    let app_view = slot(&view.slots, "app");
    assert!(app_view.bad.is_none() && app_view.last_result.as_ref().unwrap().ok);

    // Under the same signed metadata model v2 is held back, and nothing runs.
    let (hooks, checks) = (lines(&hook_log), lines(&health_log));
    let third = s.sync(&device).unwrap();
    let Some(SlotAction::HeldBack { reason }) = third.action("model") else {
        panic!("not held back: {third:?}");
    };
    assert!(reason.contains("health check"), "{reason}");
    assert_eq!(third.action("app"), Some(&SlotAction::UpToDate));
    assert_eq!((lines(&hook_log), lines(&health_log)), (hooks, checks));
}
