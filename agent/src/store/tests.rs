use std::os::unix::fs::PermissionsExt;

use meshanics_shared::{Digest, VerifyError};

use meshanics_shared::metadata::TargetName;

use super::*;
use crate::testing::{applied, laid_out, pulled, pulled_with, release, store, store_with_space};

fn writable(path: &Path) {
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn commits_a_verified_blob_read_only_and_indexes_its_size() {
    let (_dir, store) = store();
    let bytes = b"hello, cache".as_slice();
    let digest = Digest::sha256_of(bytes);
    store.put(&digest, bytes).unwrap();

    let path = store.blob_path(&digest);
    assert_eq!(fs_err::read(&path).unwrap(), bytes);
    assert_eq!(
        fs_err::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert_eq!(store.index().blob(&digest).unwrap().unwrap().size, 12);
    assert!(store.has(&digest, 12).unwrap());
    assert!(!store.has(&digest, 13).unwrap());
    assert!(!store.ingest_path(&digest).exists());
}

#[tokio::test]
async fn sha512_blobs_are_found_again_by_an_index_rebuild_fsck_and_gc() {
    let (_dir, store) = store();
    let image = pulled_with(
        &store,
        "app",
        &[b"layer a"],
        meshanics_shared::Algorithm::Sha512,
    );
    let id = applied(&store, &image).await;
    let mut digests: Vec<Digest> = image
        .blobs
        .iter()
        .chain([&image.manifest])
        .map(|b| b.digest.clone())
        .collect();
    digests.sort();

    store.rebuild_index().unwrap();
    let mut indexed = store.index().artifact(&id).unwrap().unwrap().blobs;
    indexed.sort();
    assert_eq!(indexed, digests);
    assert_eq!(
        store.blob_files().unwrap().into_iter().collect::<Vec<_>>(),
        digests
    );
    let fsck = store.fsck(false).unwrap();
    assert_eq!(fsck.checked, 3);
    assert!(fsck.is_clean(), "{fsck:?}");
    let gc = store.gc().unwrap();
    assert!(gc.removed_blobs.is_empty(), "{gc:?}");
    for digest in &digests {
        assert!(store.blob_path(digest).exists(), "{digest}");
    }
}

#[test]
fn refuses_a_byte_beyond_the_expected_size_without_writing_it() {
    let (_dir, store) = store();
    let digest = Digest::sha256_of(b"abc");
    let mut ingest = store.ingest(&digest, 3).unwrap();
    ingest.write(b"ab").unwrap();
    let err = ingest.write(b"cd").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Verify {
                source: VerifyError::TooLong { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        fs_err::metadata(store.ingest_path(&digest)).unwrap().len(),
        2
    );
    assert!(!store.blob_path(&digest).exists());
}

#[test]
fn refuses_content_with_another_digest_and_drops_the_ingest_file() {
    let (_dir, store) = store();
    let digest = Digest::sha256_of(b"the real content");
    let err = store.put(&digest, b"forged content!!").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Verify {
                source: VerifyError::Mismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(!store.blob_path(&digest).exists());
    assert!(!store.ingest_path(&digest).exists());
    assert!(store.index().blob(&digest).unwrap().is_none());
}

#[test]
fn resumes_a_partial_download_from_the_end_of_its_ingest_file() {
    let (_dir, store) = store();
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256_of(&bytes);
    {
        let mut ingest = store.ingest(&digest, bytes.len() as u64).unwrap();
        ingest.write(&bytes[..40_000]).unwrap();
        // Dropped: an interruption.
    }
    assert_eq!(store.partial_len(&digest), 40_000);
    let mut ingest = store.ingest(&digest, bytes.len() as u64).unwrap();
    assert_eq!(ingest.offset(), 40_000);
    ingest.write(&bytes[40_000..]).unwrap();
    ingest.commit().unwrap();
    assert_eq!(fs_err::read(store.blob_path(&digest)).unwrap(), bytes);
}

#[test]
fn a_partial_file_longer_than_the_blob_starts_over() {
    let (_dir, store) = store();
    let digest = Digest::sha256_of(b"short");
    fs_err::write(store.ingest_path(&digest), b"much longer than five bytes").unwrap();
    let mut ingest = store.ingest(&digest, 5).unwrap();
    assert_eq!(ingest.offset(), 0);
    ingest.write(b"short").unwrap();
    ingest.commit().unwrap();
    assert!(store.has(&digest, 5).unwrap());
}

#[test]
fn refuses_a_download_larger_than_the_free_space_with_the_figures() {
    let (_dir, store) = store_with_space(1_000);
    store.ensure_space(1_000).unwrap();
    let err = store.ensure_space(1_001).unwrap_err();
    match &err {
        Error::NoSpace {
            needed, available, ..
        } => assert_eq!((*needed, *available), (1_001, 1_000)),
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("not enough free space"), "{err}");
}

#[test]
fn measures_real_free_space_with_statvfs() {
    let (_dir, store) = store();
    store.ensure_space(1).unwrap();
    let err = store.ensure_space(u64::MAX / 2).unwrap_err();
    assert!(
        matches!(err, Error::NoSpace { available, .. } if available > 0),
        "{err}"
    );
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let (dir, _store) = store();
    let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
}

#[test]
fn rebuilds_the_index_from_the_blob_files_when_sled_cannot_open_it() {
    let dir = tempfile::tempdir().unwrap();
    let digest = Digest::sha256_of(b"survivor");
    {
        let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
        store.put(&digest, b"survivor").unwrap();
    }
    // Garbage where sled keeps its configuration and its log.
    let index_dir = dir.path().join("cache/index");
    for entry in fs_err::read_dir(&index_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            fs_err::write(&path, b"\xff\xfe not a sled file \x00\x01").unwrap();
        }
    }

    let (store, report) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(report.rebuilt);
    let aside = report.index_moved_to.expect("index moved aside");
    assert!(aside.exists(), "the broken index is kept for a post-mortem");
    assert_eq!(store.index().blob(&digest).unwrap().unwrap().size, 8);
}

#[test]
fn rebuilds_a_missing_index_with_its_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let pulled = pulled(&store, "app", &[b"layer one"]);
        laid_out(&store, &pulled).id
    };
    fs_err::remove_dir_all(dir.path().join("cache/index")).unwrap();

    let (store, report) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(report.rebuilt);
    assert!(report.index_moved_to.is_none());
    let record = store.index().artifact(&id).unwrap().unwrap();
    assert_eq!(record.name, "app");
    assert_eq!(record.blobs.len(), 3, "manifest, config, layer");
}

#[test]
fn fsck_finds_a_corrupt_blob_and_repair_removes_it() {
    let (_dir, store) = store();
    let good = Digest::sha256_of(b"good blob");
    let bad = Digest::sha256_of(b"bad blob!");
    store.put(&good, b"good blob").unwrap();
    store.put(&bad, b"bad blob!").unwrap();
    let path = store.blob_path(&bad);
    writable(&path);
    fs_err::write(&path, b"bit rot!!").unwrap();

    let report = store.fsck(false).unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.corrupt, vec![bad.clone()]);
    assert!(path.exists(), "fsck without --repair changes nothing");

    let repaired = store.fsck(true).unwrap();
    assert_eq!(repaired.corrupt, vec![bad.clone()]);
    assert!(!path.exists());
    assert!(store.index().blob(&bad).unwrap().is_none());
    let after = store.fsck(false).unwrap();
    assert!(after.is_clean(), "{after:?}");
    assert_eq!(after.checked, 1);
}

#[test]
fn fsck_reports_artifacts_that_link_a_corrupt_blob() {
    let (_dir, store) = store();
    let pulled = pulled(&store, "app", &[b"precious layer"]);
    let record = laid_out(&store, &pulled);
    let layer = &pulled.blobs[1].digest;
    let path = store.blob_path(layer);
    writable(&path);
    fs_err::write(&path, b"precious LAYER").unwrap();

    let report = store.fsck(true).unwrap();
    assert_eq!(report.damaged_artifacts, vec![record.id.clone()]);
    assert!(!store.layout_blob_path(&record.id, layer).exists());
}

#[test]
fn fsck_makes_the_index_match_the_files() {
    let (_dir, store) = store();
    let kept = Digest::sha256_of(b"kept");
    let lost = Digest::sha256_of(b"lost");
    store.put(&kept, b"kept").unwrap();
    store.put(&lost, b"lost").unwrap();
    fs_err::remove_file(store.blob_path(&lost)).unwrap();
    store.index().remove_blob(&kept).unwrap();

    let report = store.fsck(true).unwrap();
    assert_eq!(report.unindexed, vec![kept.clone()]);
    assert_eq!(report.dangling, vec![lost.clone()]);
    assert!(store.index().blob(&kept).unwrap().is_some());
    assert!(store.index().blob(&lost).unwrap().is_none());
}

#[tokio::test]
async fn gc_keeps_current_and_previous_and_removes_the_rest() {
    let (_dir, store) = store();
    let shared: &[u8] = b"base layer shared by all";
    let one = release(&store, "app", "one", &[shared, b"only in one"]);
    let two = release(&store, "app", "two", &[shared, b"only in two"]);
    let three = release(&store, "app", "three", &[shared, b"only in three"]);
    let stray = Digest::sha256_of(b"referenced by nothing");
    store.put(&stray, b"referenced by nothing").unwrap();
    let mut ids = Vec::new();
    for p in [&one, &two, &three] {
        ids.push(applied(&store, p).await);
    }

    let report = store.gc().unwrap();
    assert_eq!(report.removed_artifacts, vec![ids[0].clone()]);
    let mut removed = report.removed_blobs;
    removed.sort();
    let mut expected = vec![
        stray.clone(),
        one.manifest.digest.clone(),
        one.blobs[0].digest.clone(),
        one.blobs[2].digest.clone(),
    ];
    expected.sort();
    assert_eq!(removed, expected);
    assert!(
        store.has(&one.blobs[1].digest, one.blobs[1].size).unwrap(),
        "shared layer kept"
    );
    for p in [&two, &three] {
        for blob in &p.blobs {
            assert!(store.has(&blob.digest, blob.size).unwrap());
        }
    }
    assert!(!store.artifacts_dir().join(&ids[0]).exists());
    assert!(store.index().artifact(&ids[0]).unwrap().is_none());
    assert!(
        store.gc().unwrap().removed_blobs.is_empty(),
        "a second gc finds nothing"
    );
}

#[test]
fn gc_removes_layouts_a_crash_left_half_built() {
    let (_dir, store) = store();
    let half = store.artifacts_dir().join(".tmp-0123456789abcdef-1");
    fs_err::create_dir_all(half.join("blobs/sha256")).unwrap();
    let report = store.gc().unwrap();
    assert_eq!(
        report.removed_artifacts,
        vec![".tmp-0123456789abcdef-1".to_owned()]
    );
    assert!(!half.exists());
}

#[test]
fn a_blob_committed_but_not_yet_indexed_when_the_process_died_is_adopted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let digest = Digest::sha256_of(b"renamed, then the power went");
    {
        let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let earlier = b"committed before";
        store.put(&Digest::sha256_of(earlier), earlier).unwrap();
        store.put(&digest, b"renamed, then the power went").unwrap();
        // The state a crash between the rename and the index record leaves.
        store.index().remove_blob(&digest).unwrap();
        store.index().flush().unwrap();
    }

    let (store, report) = Store::open(dir.path(), StoreOptions::default()).unwrap();

    assert_eq!(report.adopted, 1);
    assert!(!report.rebuilt);
    assert_eq!(store.index().blob(&digest).unwrap().unwrap().size, 28);
    assert!(store.fsck(false).unwrap().is_clean());
}

#[test]
fn a_committed_file_whose_rename_a_power_cut_lost_is_writable_again_and_resumes() {
    let (_dir, store) = store();
    let bytes = b"fsynced and read-only, then the rename was lost".as_slice();
    let digest = Digest::sha256_of(bytes);
    store.put(&digest, bytes).unwrap();
    // What the disk holds when the rename never reached it: the read-only file, still
    // under its ingest name.
    fs_err::rename(store.blob_path(&digest), store.ingest_path(&digest)).unwrap();
    store.index().remove_blob(&digest).unwrap();

    let ingest = store.ingest(&digest, bytes.len() as u64).unwrap();

    assert_eq!(ingest.offset(), bytes.len() as u64);
    assert_eq!(
        fs_err::metadata(store.ingest_path(&digest))
            .unwrap()
            .permissions()
            .mode()
            & 0o200,
        0o200,
        "an unprivileged agent could not write the ingest file"
    );
    ingest.commit().unwrap();
    assert_eq!(fs_err::read(store.blob_path(&digest)).unwrap(), bytes);
}

/// A state directory as the agent left it before slots: `current` and `previous` linking
/// layouts directly. Returns the (current, previous) layout ids.
fn state_dir_before_slots(root: &Path, name: &str) -> (String, String) {
    let (store, _) = Store::open(root, StoreOptions::default()).unwrap();
    let old = laid_out(&store, &release(&store, name, "old", &[b"old layer"])).id;
    let new = laid_out(&store, &release(&store, name, "new", &[b"new layer"])).id;
    for (link, id) in [("current", &new), ("previous", &old)] {
        std::os::unix::fs::symlink(Path::new("artifacts").join(id), root.join(link)).unwrap();
    }
    (new, old)
}

#[test]
fn a_state_directory_from_before_slots_is_migrated_into_the_slot_of_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let (current, previous) = state_dir_before_slots(dir.path(), "app");

    let (store, report) = Store::open(dir.path(), StoreOptions::default()).unwrap();

    assert_eq!(report.migrated_to_slot.as_deref(), Some("app"));
    let app = TargetName::parse("app").unwrap();
    let slot = store.slot_pointers(&app).unwrap();
    assert_eq!(slot.current.as_deref(), Some(current.as_str()));
    assert_eq!(slot.previous.as_deref(), Some(previous.as_str()));
    // The old paths still lead to the same layouts, through the slot.
    assert_eq!(Pointers::read(&store).unwrap(), slot);
    assert_eq!(
        fs_err::read_link(dir.path().join("current")).unwrap(),
        Path::new("slots/app/current")
    );
    assert_eq!(
        fs_err::canonicalize(dir.path().join("current")).unwrap(),
        fs_err::canonicalize(store.layout_dir(&current)).unwrap()
    );
    assert!(dir.path().join("previous/index.json").exists());
    assert_eq!(store.primary_slot().unwrap(), Some(app));
    drop(store);
    let (_store, again) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(again.migrated_to_slot, None, "migrated once");
}

#[test]
fn a_migrated_layout_whose_name_is_no_target_name_goes_to_the_fallback_slot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let id = laid_out(&store, &pulled(&store, "team/app", &[b"x"])).id;
        std::os::unix::fs::symlink(Path::new("artifacts").join(&id), dir.path().join("current"))
            .unwrap();
    }
    let (store, report) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(
        report.migrated_to_slot.as_deref(),
        Some(slots::FALLBACK_SLOT)
    );
    assert!(Pointers::read(&store).unwrap().current.is_some());
}

#[tokio::test]
async fn an_index_rebuild_takes_artifact_states_from_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let (app, model) = {
        let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let app = applied(&store, &release(&store, "app", "a", &[b"a"])).await;
        let model = applied(&store, &release(&store, "model", "m", &[b"m"])).await;
        (app, model)
    };
    fs_err::remove_dir_all(dir.path().join("cache/index")).unwrap();
    let (store, report) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(report.rebuilt);
    for id in [&app, &model] {
        assert_eq!(
            store.index().artifact(id).unwrap().unwrap().state,
            ArtifactState::Current
        );
    }
}

#[tokio::test]
async fn gc_keeps_every_slot() {
    let (_dir, store) = store();
    let app = applied(&store, &release(&store, "app", "a", &[b"a"])).await;
    let model = applied(&store, &release(&store, "model", "m", &[b"m"])).await;
    let report = store.gc().unwrap();
    assert!(report.removed_artifacts.is_empty(), "{report:?}");
    assert_eq!(report.kept_artifacts.len(), 2);
    assert!(report.kept_artifacts.contains(&app) && report.kept_artifacts.contains(&model));
}
