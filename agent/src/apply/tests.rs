use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use super::*;
use crate::store::artifacts::REF_NAME;
use crate::testing::{pulled, pulled_with, store};

fn hook(dir: &Path, script: &str) -> Hook {
    let path = dir.join("hook.sh");
    fs_err::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Hook {
        path,
        timeout: Duration::from_secs(30),
    }
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
    apply(&store, &record.id, None).await.unwrap();

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
    let one = lay_out(&store, &pulled(&store, "one", &[b"1"])).unwrap();
    let two = lay_out(&store, &pulled(&store, "two", &[b"2"])).unwrap();

    apply(&store, &one.id, None).await.unwrap();
    let applied = apply(&store, &two.id, None).await.unwrap();
    assert_eq!(
        applied,
        Applied::Switched {
            current: two.id.clone(),
            previous: Some(one.id.clone())
        }
    );
    let pointers = Pointers::read(&store).unwrap();
    assert_eq!(pointers.current.as_deref(), Some(two.id.as_str()));
    assert_eq!(pointers.previous.as_deref(), Some(one.id.as_str()));
    assert!(store.root().join("current/index.json").exists());
    let states = |id: &str| store.index().artifact(id).unwrap().unwrap().state;
    assert_eq!(states(&two.id), ArtifactState::Current);
    assert_eq!(states(&one.id), ArtifactState::Previous);
    assert!(store.last_result().unwrap().unwrap().ok);
}

#[tokio::test]
async fn applying_the_current_artifact_again_changes_nothing() {
    let (_dir, store) = store();
    let one = lay_out(&store, &pulled(&store, "one", &[b"1"])).unwrap();
    apply(&store, &one.id, None).await.unwrap();
    assert_eq!(
        apply(&store, &one.id, None).await.unwrap(),
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
            "echo \"$MESHANICS_LAYOUT|$MESHANICS_TARGET|$MESHANICS_MANIFEST_DIGEST\" > {}",
            out.display()
        ),
    );
    let pulled = pulled(&store, "edge-app", &[b"x"]);
    let record = lay_out(&store, &pulled).unwrap();
    apply(&store, &record.id, Some(&hook)).await.unwrap();

    let seen = fs_err::read_to_string(&out).unwrap();
    let layout = store.artifacts_dir().join(&record.id);
    assert_eq!(
        seen.trim(),
        format!("{}|edge-app|{}", layout.display(), pulled.manifest.digest)
    );
}

#[tokio::test]
async fn a_failing_hook_rolls_current_back_and_is_recorded() {
    let (dir, store) = store();
    let one = lay_out(&store, &pulled(&store, "one", &[b"1"])).unwrap();
    let zero = lay_out(&store, &pulled(&store, "zero", &[b"0"])).unwrap();
    apply(&store, &zero.id, None).await.unwrap();
    apply(&store, &one.id, None).await.unwrap();
    let before = Pointers::read(&store).unwrap();
    let two = lay_out(&store, &pulled(&store, "two", &[b"2"])).unwrap();

    let err = apply(&store, &two.id, Some(&hook(dir.path(), "exit 3")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::HookFailed { .. }), "{err}");
    assert_eq!(Pointers::read(&store).unwrap(), before);
    assert_eq!(
        store.index().artifact(&two.id).unwrap().unwrap().state,
        ArtifactState::HookFailed
    );
    assert_eq!(
        store.index().artifact(&one.id).unwrap().unwrap().state,
        ArtifactState::Current
    );
    let last = store.last_result().unwrap().unwrap();
    assert!(!last.ok);
    assert_eq!(last.target.as_deref(), Some("two"));
    assert!(last.message.contains("exit status: 3"), "{}", last.message);
}

#[tokio::test]
async fn an_apply_killed_during_its_hook_is_finished_with_the_hook_run_again() {
    let (dir, store) = store();
    let one = lay_out(&store, &pulled(&store, "one", &[b"1"])).unwrap();
    apply(&store, &one.id, None).await.unwrap();
    let two = lay_out(&store, &pulled(&store, "two", &[b"2"])).unwrap();
    // What a SIGKILL during the hook leaves: the links switched, the record never marked.
    switch(
        &store,
        &Pointers {
            current: Some(two.id.clone()),
            previous: Some(one.id.clone()),
        },
    )
    .unwrap();
    let ran = dir.path().join("hook.ran");

    let applied = apply(
        &store,
        &two.id,
        Some(&hook(
            dir.path(),
            &format!("echo \"$MESHANICS_TARGET\" > {}", ran.display()),
        )),
    )
    .await
    .unwrap();

    assert_eq!(
        applied,
        Applied::Switched {
            current: two.id.clone(),
            previous: Some(one.id.clone())
        }
    );
    assert_eq!(fs_err::read_to_string(&ran).unwrap().trim(), "two");
    assert_eq!(
        store.index().artifact(&two.id).unwrap().unwrap().state,
        ArtifactState::Current
    );
    assert_eq!(
        apply(&store, &two.id, None).await.unwrap(),
        Applied::AlreadyCurrent
    );
}

#[tokio::test]
async fn an_interrupted_apply_whose_hook_now_fails_rolls_back_to_previous() {
    let (dir, store) = store();
    let one = lay_out(&store, &pulled(&store, "one", &[b"1"])).unwrap();
    apply(&store, &one.id, None).await.unwrap();
    let two = lay_out(&store, &pulled(&store, "two", &[b"2"])).unwrap();
    switch(
        &store,
        &Pointers {
            current: Some(two.id.clone()),
            previous: Some(one.id.clone()),
        },
    )
    .unwrap();

    let err = apply(&store, &two.id, Some(&hook(dir.path(), "exit 4")))
        .await
        .unwrap_err();

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
    let err = apply(&store, &one.id, Some(&slow)).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(Pointers::read(&store).unwrap(), Pointers::default());
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
