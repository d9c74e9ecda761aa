use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use super::*;
use crate::store::artifacts::REF_NAME;
use crate::testing::{pulled, pulled_with, release, store};

/// An executable shell script `name` in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs_err::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn hook(dir: &Path, body: &str) -> Hook {
    Hook {
        path: script(dir, "hook.sh", body),
        timeout: Duration::from_secs(30),
    }
}

/// A health check running `body`, with no settle time.
fn health(dir: &Path, body: &str) -> HealthCheck {
    HealthCheck {
        program: script(dir, "health.sh", body),
        args: Vec::new(),
        settle: Duration::ZERO,
        timeout: Duration::from_secs(30),
    }
}

/// A hook that appends `<event> <target> <path>` to `log`.
fn logging_hook(dir: &Path, log: &Path) -> Hook {
    hook(
        dir,
        &format!(
            "echo \"$MESHANICS_EVENT $MESHANICS_TARGET $MESHANICS_PATH\" >> {}",
            log.display()
        ),
    )
}

fn no_checks() -> Checks<'static> {
    Checks::default()
}

fn with_hook(hook: &Hook) -> Checks<'_> {
    Checks {
        hook: Some(hook),
        ..Checks::default()
    }
}

fn slot(name: &str) -> TargetName {
    TargetName::parse(name).unwrap()
}

fn state_of(store: &Store, id: &str) -> ArtifactState {
    store.index().artifact(id).unwrap().unwrap().state
}

/// What a stop after the switch and before the checks leaves: the apply recorded as pending
/// (with the links to restore) and the slot's links switched.
fn interrupted(store: &Store, name: &str, id: &str, restore: Pointers) {
    let slot = slot(name);
    let mut state = store.slot_state(&slot).unwrap();
    state.pending = Some(Pending {
        id: id.to_owned(),
        restore: restore.clone(),
        targets_version: Some(7),
        since: 0,
    });
    store.set_slot_state(&slot, &state).unwrap();
    switch(
        store,
        &slot,
        &Pointers {
            current: Some(id.to_owned()),
            previous: restore.current,
        },
    )
    .unwrap();
}

#[test]
fn lays_out_an_oci_layout_hard_linked_into_the_cache() {
    let (_dir, store) = store();
    let pulled = pulled(&store, "app", &[b"layer a", b"layer b"]);
    let record = lay_out(&store, &pulled).unwrap();
    let layout = store.artifacts_dir().join(&record.id);

    let oci_layout: serde_json::Value =
        serde_json::from_slice(&fs_err::read(layout.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        pulled.manifest.digest.as_str()
    );
    assert_eq!(index["manifests"][0]["annotations"][REF_NAME], "app");
    for blob in pulled.blobs.iter().chain([&pulled.manifest]) {
        let in_layout = fs_err::metadata(store.layout_blob_path(&record.id, &blob.digest)).unwrap();
        let in_cache = fs_err::metadata(store.blob_path(&blob.digest)).unwrap();
        assert_eq!(
            in_layout.ino(),
            in_cache.ino(),
            "{} is not a hard link",
            blob.digest
        );
    }
    assert_eq!(record.state, ArtifactState::Pulled);
    assert_eq!(store.index().artifact(&record.id).unwrap(), Some(record));
}

#[tokio::test]
async fn a_sha512_target_is_pulled_committed_and_laid_out() {
    let (_dir, store) = store();
    // Committed through the cache's ingest, as a pull commits what it downloads.
    let pulled = pulled_with(
        &store,
        "app",
        &[b"layer a"],
        meshanics_shared::Algorithm::Sha512,
    );
    let record = lay_out(&store, &pulled).unwrap();
    apply(&store, &record.id, &no_checks()).await.unwrap();

    let sha512_blobs = store.root().join("cache/blobs/sha512");
    for blob in pulled.blobs.iter().chain([&pulled.manifest]) {
        let in_cache = store.blob_path(&blob.digest);
        assert_eq!(in_cache, sha512_blobs.join(blob.digest.hex()));
        // The OCI image layout names a blob `blobs/<algorithm>/<hex>`.
        let in_layout = store
            .root()
            .join("current/blobs/sha512")
            .join(blob.digest.hex());
        assert_eq!(
            fs_err::metadata(&in_layout).unwrap().ino(),
            fs_err::metadata(&in_cache).unwrap().ino(),
            "{} is not laid out as a hard link",
            blob.digest
        );
    }
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(store.root().join("current/index.json")).unwrap())
            .unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        pulled.manifest.digest.as_str()
    );
}

#[tokio::test]
async fn switches_current_and_keeps_the_old_one_as_previous() {
    let (_dir, store) = store();
    let one = lay_out(&store, &release(&store, "app", "one", &[b"1"])).unwrap();
    let two = lay_out(&store, &release(&store, "app", "two", &[b"2"])).unwrap();

    apply(&store, &one.id, &no_checks()).await.unwrap();
    let applied = apply(&store, &two.id, &no_checks()).await.unwrap();
    assert_eq!(
        applied,
        Applied::Switched {
            current: two.id.clone(),
            previous: Some(one.id.clone())
        }
    );
    let pointers = store.slot_pointers(&slot("app")).unwrap();
    assert_eq!(pointers.current.as_deref(), Some(two.id.as_str()));
    assert_eq!(pointers.previous.as_deref(), Some(one.id.as_str()));
    // The state directory's links follow the only slot, as before slots.
    assert_eq!(Pointers::read(&store).unwrap(), pointers);
    assert!(store.root().join("current/index.json").exists());
    assert!(store.root().join("slots/app/previous/index.json").exists());
    assert_eq!(state_of(&store, &two.id), ArtifactState::Current);
    assert_eq!(state_of(&store, &one.id), ArtifactState::Previous);
    assert!(store.last_result().unwrap().unwrap().ok);
    let slot_state = store.slot_state(&slot("app")).unwrap();
    assert!(slot_state.last_result.unwrap().ok);
    assert_eq!(slot_state.pending, None);
}

#[tokio::test]
async fn each_target_has_its_own_slot_with_its_own_current_and_previous() {
    let (_dir, store) = store();
    let app1 = lay_out(&store, &release(&store, "app", "app1", &[b"a1"])).unwrap();
    let model1 = lay_out(&store, &release(&store, "model", "model1", &[b"m1"])).unwrap();
    let app2 = lay_out(&store, &release(&store, "app", "app2", &[b"a2"])).unwrap();

    for id in [&app1.id, &model1.id, &app2.id] {
        apply(&store, id, &no_checks()).await.unwrap();
    }

    let app = store.slot_pointers(&slot("app")).unwrap();
    assert_eq!(app.current.as_deref(), Some(app2.id.as_str()));
    assert_eq!(app.previous.as_deref(), Some(app1.id.as_str()));
    let model = store.slot_pointers(&slot("model")).unwrap();
    assert_eq!(model.current.as_deref(), Some(model1.id.as_str()));
    assert_eq!(model.previous, None);
    assert_eq!(
        store.slot_names().unwrap(),
        vec![slot("app"), slot("model")]
    );
    // The first slot applied became the primary one.
    assert_eq!(store.primary_slot().unwrap(), Some(slot("app")));
    assert_eq!(Pointers::read(&store).unwrap(), app);
    assert_eq!(state_of(&store, &model1.id), ArtifactState::Current);
}

#[tokio::test]
async fn applying_the_current_artifact_again_changes_nothing() {
    let (_dir, store) = store();
    let one = lay_out(&store, &pulled(&store, "one", &[b"1"])).unwrap();
    apply(&store, &one.id, &no_checks()).await.unwrap();
    assert_eq!(
        apply(&store, &one.id, &no_checks()).await.unwrap(),
        Applied::AlreadyCurrent
    );
    assert_eq!(Pointers::read(&store).unwrap().previous, None);
}

#[tokio::test]
async fn the_hook_sees_the_layout_and_the_target_in_its_environment() {
    let (dir, store) = store();
    let out = dir.path().join("hook.out");
    let hook = hook(
        dir.path(),
        &format!(
            "echo \"$MESHANICS_LAYOUT|$MESHANICS_TARGET|$MESHANICS_MANIFEST_DIGEST|$MESHANICS_EVENT|$MESHANICS_KIND|$MESHANICS_PATH|$MESHANICS_SLOT\" > {}",
            out.display()
        ),
    );
    let pulled = pulled(&store, "edge-app", &[b"x"]);
    let record = lay_out(&store, &pulled).unwrap();
    apply(&store, &record.id, &with_hook(&hook)).await.unwrap();

    let seen = fs_err::read_to_string(&out).unwrap();
    let layout = store.artifacts_dir().join(&record.id);
    assert_eq!(
        seen.trim(),
        format!(
            "{}|edge-app|{}|apply|image|{}|{}",
            layout.display(),
            pulled.manifest.digest,
            layout.display(),
            store.root().join("slots/edge-app").display()
        )
    );
}

#[tokio::test]
async fn a_failing_hook_rolls_current_back_and_is_recorded() {
    let (dir, store) = store();
    let zero = lay_out(&store, &release(&store, "app", "zero", &[b"0"])).unwrap();
    let one = lay_out(&store, &release(&store, "app", "one", &[b"1"])).unwrap();
    apply(&store, &zero.id, &no_checks()).await.unwrap();
    apply(&store, &one.id, &no_checks()).await.unwrap();
    let before = Pointers::read(&store).unwrap();
    let two = lay_out(&store, &release(&store, "app", "two", &[b"2"])).unwrap();

    let hook = hook(dir.path(), "exit 3");
    let err = apply(&store, &two.id, &with_hook(&hook)).await.unwrap_err();
    assert!(matches!(err, Error::HookFailed { .. }), "{err}");
    assert_eq!(Pointers::read(&store).unwrap(), before);
    assert_eq!(state_of(&store, &two.id), ArtifactState::HookFailed);
    assert_eq!(state_of(&store, &one.id), ArtifactState::Current);
    let last = store.last_result().unwrap().unwrap();
    assert!(!last.ok);
    assert_eq!(last.target.as_deref(), Some("app"));
    assert!(last.message.contains("exit status: 3"), "{}", last.message);
    // A failing hook is not a failed health check: the release is tried again next time.
    assert_eq!(store.slot_state(&slot("app")).unwrap().bad, None);
}

#[tokio::test]
async fn an_apply_killed_during_its_hook_is_finished_with_the_hook_run_again() {
    let (dir, store) = store();
    let one = lay_out(&store, &release(&store, "app", "one", &[b"1"])).unwrap();
    apply(&store, &one.id, &no_checks()).await.unwrap();
    let two = lay_out(&store, &release(&store, "app", "two", &[b"2"])).unwrap();
    interrupted(
        &store,
        "app",
        &two.id,
        store.slot_pointers(&slot("app")).unwrap(),
    );
    let ran = dir.path().join("hook.ran");
    let hook = hook(
        dir.path(),
        &format!("echo \"$MESHANICS_TARGET\" > {}", ran.display()),
    );

    let applied = apply(&store, &two.id, &with_hook(&hook)).await.unwrap();

    assert_eq!(
        applied,
        Applied::Switched {
            current: two.id.clone(),
            previous: Some(one.id.clone())
        }
    );
    assert_eq!(fs_err::read_to_string(&ran).unwrap().trim(), "app");
    assert_eq!(state_of(&store, &two.id), ArtifactState::Current);
    assert_eq!(store.slot_state(&slot("app")).unwrap().pending, None);
    assert_eq!(
        apply(&store, &two.id, &no_checks()).await.unwrap(),
        Applied::AlreadyCurrent
    );
}

#[tokio::test]
async fn an_interrupted_apply_whose_hook_now_fails_rolls_back_to_previous() {
    let (dir, store) = store();
    let one = lay_out(&store, &release(&store, "app", "one", &[b"1"])).unwrap();
    apply(&store, &one.id, &no_checks()).await.unwrap();
    let two = lay_out(&store, &release(&store, "app", "two", &[b"2"])).unwrap();
    interrupted(
        &store,
        "app",
        &two.id,
        store.slot_pointers(&slot("app")).unwrap(),
    );

    let hook = hook(dir.path(), "exit 4");
    let err = apply(&store, &two.id, &with_hook(&hook)).await.unwrap_err();

    assert!(matches!(err, Error::HookFailed { .. }), "{err}");
    assert_eq!(
        Pointers::read(&store).unwrap().current.as_deref(),
        Some(one.id.as_str())
    );
}

#[tokio::test]
async fn a_hook_that_runs_too_long_is_stopped_and_rolled_back() {
    let (dir, store) = store();
    let one = lay_out(&store, &pulled(&store, "one", &[b"1"])).unwrap();
    let mut slow = hook(dir.path(), "sleep 30");
    slow.timeout = Duration::from_millis(200);
    let err = apply(&store, &one.id, &with_hook(&slow)).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(Pointers::read(&store).unwrap(), Pointers::default());
    assert_eq!(
        store.slot_pointers(&slot("one")).unwrap(),
        Pointers::default()
    );
}

#[tokio::test]
async fn a_failing_health_check_rolls_the_slot_back_holds_the_release_back_and_tells_the_hook() {
    let (dir, store) = store();
    let one = lay_out(&store, &release(&store, "model", "one", &[b"1"])).unwrap();
    let two = lay_out(&store, &release(&store, "model", "two", &[b"2"])).unwrap();
    let log = dir.path().join("hook.log");
    let hook = logging_hook(dir.path(), &log);
    let health = health(dir.path(), "echo unhealthy >&2; exit 1");
    apply(&store, &one.id, &with_hook(&hook)).await.unwrap();
    let before = store.slot_pointers(&slot("model")).unwrap();

    let checks = Checks {
        hook: Some(&hook),
        health: Some(&health),
        targets_version: Some(12),
        ..Checks::default()
    };
    let err = apply(&store, &two.id, &checks).await.unwrap_err();

    assert!(matches!(err, Error::HealthCheckFailed { .. }), "{err}");
    assert_eq!(store.slot_pointers(&slot("model")).unwrap(), before);
    assert_eq!(state_of(&store, &two.id), ArtifactState::HealthFailed);
    assert_eq!(state_of(&store, &one.id), ArtifactState::Current);
    let state = store.slot_state(&slot("model")).unwrap();
    let bad = state.bad.unwrap();
    assert_eq!(bad.target_digest, two.target_digest);
    assert_eq!(bad.targets_version, Some(12));
    assert!(bad.reason.contains("exit status: 1"), "{}", bad.reason);
    assert!(bad.holds_back(&two.target_digest, Some(12)));
    assert!(
        !bad.holds_back(&two.target_digest, Some(13)),
        "a new version retries it"
    );
    let last = state.last_result.unwrap();
    assert!(
        !last.ok && last.message.contains("health check"),
        "{last:?}"
    );
    assert_eq!(state.pending, None);
    let layout = |id: &str| store.layout_dir(id).display().to_string();
    assert_eq!(
        fs_err::read_to_string(&log).unwrap(),
        format!(
            "apply model {}\napply model {}\nrollback model {}\n",
            layout(&one.id),
            layout(&two.id),
            layout(&one.id)
        )
    );
}

#[tokio::test]
async fn a_health_check_that_runs_past_its_timeout_fails_and_rolls_back() {
    let (dir, store) = store();
    let one = lay_out(&store, &pulled(&store, "app", &[b"1"])).unwrap();
    let mut slow = health(dir.path(), "sleep 30");
    slow.timeout = Duration::from_millis(200);
    let checks = Checks {
        health: Some(&slow),
        ..Checks::default()
    };
    let err = apply(&store, &one.id, &checks).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    // The slot had nothing before: rolled back to nothing.
    assert_eq!(
        store.slot_pointers(&slot("app")).unwrap(),
        Pointers::default()
    );
    assert!(store.slot_state(&slot("app")).unwrap().bad.is_some());
}

#[tokio::test]
async fn the_health_check_runs_after_the_hook_with_its_arguments_and_the_slot_in_its_environment() {
    let (dir, store) = store();
    let record = lay_out(&store, &pulled(&store, "app", &[b"1"])).unwrap();
    let ran = dir.path().join("hook.ran");
    let hook = hook(dir.path(), &format!("touch {}", ran.display()));
    let out = dir.path().join("health.out");
    let mut health = health(
        dir.path(),
        &format!(
            "test -f {} && echo \"$1|$MESHANICS_EVENT|$MESHANICS_TARGET|$MESHANICS_KIND|$MESHANICS_PATH\" > {}",
            ran.display(),
            out.display()
        ),
    );
    health.args = vec!["--probe".into()];
    health.settle = Duration::from_millis(10);
    let checks = Checks {
        hook: Some(&hook),
        health: Some(&health),
        ..Checks::default()
    };

    apply(&store, &record.id, &checks).await.unwrap();

    assert_eq!(
        fs_err::read_to_string(&out).unwrap().trim(),
        format!(
            "--probe|health|app|image|{}",
            store.layout_dir(&record.id).display()
        )
    );
    assert_eq!(state_of(&store, &record.id), ArtifactState::Current);
}

#[tokio::test]
async fn recovery_finishes_an_apply_whose_health_check_never_ran() {
    let (dir, store) = store();
    let one = lay_out(&store, &release(&store, "app", "one", &[b"1"])).unwrap();
    apply(&store, &one.id, &no_checks()).await.unwrap();
    let two = lay_out(&store, &release(&store, "app", "two", &[b"2"])).unwrap();
    interrupted(
        &store,
        "app",
        &two.id,
        store.slot_pointers(&slot("app")).unwrap(),
    );
    let health = health(dir.path(), "exit 0");
    let checks = Checks {
        health: Some(&health),
        ..Checks::default()
    };

    let recovered = recover(&store, &checks).await.unwrap();

    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].0, slot("app"));
    assert!(recovered[0].1.is_ok());
    assert_eq!(state_of(&store, &two.id), ArtifactState::Current);
    let pointers = store.slot_pointers(&slot("app")).unwrap();
    assert_eq!(pointers.current.as_deref(), Some(two.id.as_str()));
    assert_eq!(pointers.previous.as_deref(), Some(one.id.as_str()));
    assert_eq!(store.slot_state(&slot("app")).unwrap().pending, None);
    assert!(
        recover(&store, &checks).await.unwrap().is_empty(),
        "nothing left"
    );
}

#[tokio::test]
async fn recovery_rolls_back_an_interrupted_apply_whose_health_check_now_fails() {
    let (dir, store) = store();
    let zero = lay_out(&store, &release(&store, "app", "zero", &[b"0"])).unwrap();
    let one = lay_out(&store, &release(&store, "app", "one", &[b"1"])).unwrap();
    apply(&store, &zero.id, &no_checks()).await.unwrap();
    apply(&store, &one.id, &no_checks()).await.unwrap();
    let before = store.slot_pointers(&slot("app")).unwrap();
    let two = lay_out(&store, &release(&store, "app", "two", &[b"2"])).unwrap();
    interrupted(&store, "app", &two.id, before.clone());
    let health = health(dir.path(), "exit 1");
    let checks = Checks {
        health: Some(&health),
        ..Checks::default()
    };

    let recovered = recover(&store, &checks).await.unwrap();

    assert!(
        matches!(recovered[0].1, Err(Error::HealthCheckFailed { .. })),
        "{:?}",
        recovered[0].1
    );
    // Both links as they were, `previous` included: the pending record kept them.
    assert_eq!(store.slot_pointers(&slot("app")).unwrap(), before);
    let bad = store.slot_state(&slot("app")).unwrap().bad.unwrap();
    assert_eq!(bad.target_digest, two.target_digest);
    assert_eq!(
        bad.targets_version,
        Some(7),
        "the version the release came with"
    );
}

#[tokio::test]
async fn recovery_forgets_a_pending_apply_whose_switch_never_happened() {
    let (dir, store) = store();
    let one = lay_out(&store, &release(&store, "app", "one", &[b"1"])).unwrap();
    apply(&store, &one.id, &no_checks()).await.unwrap();
    let two = lay_out(&store, &release(&store, "app", "two", &[b"2"])).unwrap();
    let mut state = store.slot_state(&slot("app")).unwrap();
    state.pending = Some(Pending {
        id: two.id.clone(),
        restore: store.slot_pointers(&slot("app")).unwrap(),
        targets_version: None,
        since: 0,
    });
    store.set_slot_state(&slot("app"), &state).unwrap();
    let log = dir.path().join("hook.log");
    let hook = logging_hook(dir.path(), &log);

    let recovered = recover(&store, &with_hook(&hook)).await.unwrap();

    assert!(recovered.is_empty());
    assert!(
        !log.exists(),
        "the hook is not run for what was never switched"
    );
    assert_eq!(store.slot_state(&slot("app")).unwrap().pending, None);
    assert_eq!(
        store
            .slot_pointers(&slot("app"))
            .unwrap()
            .current
            .as_deref(),
        Some(one.id.as_str())
    );
}

#[tokio::test]
async fn retiring_a_slot_tells_the_hook_removes_the_slot_and_lets_gc_collect_its_blobs() {
    let (dir, store) = store();
    let app = release(&store, "app", "app", &[b"app layer"]);
    let model = release(&store, "model", "model", &[b"model weights"]);
    let app_id = lay_out(&store, &app).unwrap().id;
    let model_id = lay_out(&store, &model).unwrap().id;
    apply(&store, &app_id, &no_checks()).await.unwrap();
    apply(&store, &model_id, &no_checks()).await.unwrap();
    let log = dir.path().join("hook.log");
    let hook = logging_hook(dir.path(), &log);

    let problem = retire(&store, &slot("model"), &with_hook(&hook))
        .await
        .unwrap();

    assert_eq!(problem, None);
    assert_eq!(
        fs_err::read_to_string(&log).unwrap(),
        format!("retire model {}\n", store.layout_dir(&model_id).display())
    );
    assert_eq!(store.slot_names().unwrap(), vec![slot("app")]);
    assert!(!store.slot_dir(&slot("model")).exists());
    assert_eq!(state_of(&store, &model_id), ArtifactState::Retired);
    let gc = store.gc().unwrap();
    assert_eq!(gc.removed_artifacts, vec![model_id]);
    assert!(gc.removed_blobs.contains(&model.blobs[1].digest), "{gc:?}");
    assert!(store.has(&app.blobs[1].digest, app.blobs[1].size).unwrap());
}

#[tokio::test]
async fn retiring_the_primary_slot_removes_the_state_directory_links() {
    let (_dir, store) = store();
    let id = lay_out(&store, &pulled(&store, "app", &[b"1"])).unwrap().id;
    apply(&store, &id, &no_checks()).await.unwrap();
    retire(&store, &slot("app"), &no_checks()).await.unwrap();
    assert_eq!(store.primary_slot().unwrap(), None);
    assert!(fs_err::symlink_metadata(store.root().join("current")).is_err());
}

#[tokio::test]
async fn an_artifact_whose_name_is_not_a_target_name_is_refused_a_slot() {
    let (_dir, store) = store();
    let id = lay_out(&store, &pulled(&store, "team/app", &[b"1"]))
        .unwrap()
        .id;
    let err = apply(&store, &id, &no_checks()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }), "{err}");
    assert!(store.slot_names().unwrap().is_empty());
}

#[test]
fn scanning_a_layout_recovers_its_record() {
    let (_dir, store) = store();
    let pulled = pulled(&store, "app", &[b"a"]);
    let record = lay_out(&store, &pulled).unwrap();
    let mut scanned = store
        .scan_layout(&record.id, ArtifactState::Pulled)
        .unwrap();
    let mut expected = record;
    scanned.blobs.sort();
    expected.blobs.sort();
    scanned.updated = expected.updated;
    assert_eq!(scanned, expected);
}
