//! Several targets on one device, end to end: the real registry -> the facade -> the agent's
//! update cycle with its signed-metadata source. Each target has its own slot: a release
//! whose health check fails is rolled back and held back in its slot alone while the other
//! target is applied, new signed metadata retries it, and a target the metadata stops
//! listing is retired.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers: a setup that fails is a failing test"
)]

use std::os::unix::fs::PermissionsExt;

use meshanics_agent::service::SlotAction;
use meshanics_agent::status::{self, SlotView};
use meshanics_shared::Digest;
use meshanics_tests::agent_device::AgentDevice;
use meshanics_tests::oci_layout::BuiltImage;
use meshanics_tests::update_chain::UpdateChain;

/// The manifest digest the layout behind `link` holds.
fn manifest_behind(link: &std::path::Path) -> Digest {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(link.join("index.json")).unwrap()).unwrap();
    Digest::parse(index["manifests"][0]["digest"].as_str().unwrap()).unwrap()
}

fn slot<'a>(slots: &'a [SlotView], name: &str) -> &'a SlotView {
    slots.iter().find(|s| s.name == name).unwrap()
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
    std::fs::write(
        &check,
        format!(
            "#!/bin/sh\necho \"$MESHANICS_TARGET $MESHANICS_KIND\" >> {}\n[ \"$MESHANICS_TARGET_DIGEST\" != \"{}\" ]\n",
            log.display(),
            model2.index.digest
        ),
    )
    .unwrap();
    std::fs::set_permissions(&check, std::fs::Permissions::from_mode(0o755)).unwrap();
    let device = AgentDevice::with_apply(
        &s.facade,
        s.release.anchor(),
        "gateway",
        "linux/amd64",
        &format!(
            "health_check = \"{}\"\nhealth_settle = \"0s\"",
            check.display()
        ),
    )
    .unwrap();
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
