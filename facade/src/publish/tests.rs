//! The publish check, one test per refusal, each naming the file; and the files backend's
//! store (order, atomic files, audit line, nothing stored on a refusal).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meshanics_shared::metadata::{
    RoleKeys, Roles, Root, SigningKey, TIMESTAMP_FILE, Targets, TargetsMeta, Timestamp, UnixTime,
    root_file, sign,
};

use super::check::{MAX_FILES, Plan, check};
use super::{Metadata, PublishError};
use crate::connections::{Actor, Store};
use crate::seal::MasterKey;

const DAY: Duration = Duration::from_secs(86_400);
const CAP: u64 = 1024 * 1024;

/// An operator's keys, signing as `meshctl` does.
struct Keys {
    root: SigningKey,
    targets: SigningKey,
    timestamp: SigningKey,
}

fn keys() -> Keys {
    Keys {
        root: SigningKey::generate().unwrap(),
        targets: SigningKey::generate().unwrap(),
        timestamp: SigningKey::generate().unwrap(),
    }
}

fn now() -> UnixTime {
    UnixTime::now()
}

fn days_ago(days: u64) -> UnixTime {
    UnixTime::from_secs(now().as_secs() - days * DAY.as_secs())
}

/// Root `version` listing `keys`, signed by `signers`.
fn root(version: u64, keys: &Keys, signers: &[&SigningKey]) -> Vec<u8> {
    let one = |key: &SigningKey| RoleKeys::new(vec![key.id()], 1);
    let payload = Root::new(
        version,
        now(),
        now().saturating_add(365 * DAY),
        &[
            keys.root.public(),
            keys.targets.public(),
            keys.timestamp.public(),
        ],
        Roles {
            root: one(&keys.root),
            targets: one(&keys.targets),
            timestamp: one(&keys.timestamp),
        },
    );
    sign(&payload, signers).unwrap()
}

fn targets(version: u64, keys: &Keys) -> Vec<u8> {
    let payload = Targets::new(version, now(), now().saturating_add(7 * DAY), Vec::new());
    sign(&payload, &[&keys.targets]).unwrap()
}

fn timestamp_until(
    version: u64,
    targets_version: u64,
    targets: &[u8],
    signer: &SigningKey,
    issued: UnixTime,
    expires: UnixTime,
) -> Vec<u8> {
    let payload = Timestamp::new(
        version,
        issued,
        expires,
        TargetsMeta::new(targets_version, targets),
    );
    sign(&payload, &[signer]).unwrap()
}

fn timestamp(version: u64, targets_version: u64, targets: &[u8], keys: &Keys) -> Vec<u8> {
    timestamp_until(
        version,
        targets_version,
        targets,
        &keys.timestamp,
        now(),
        now().saturating_add(DAY),
    )
}

fn files(entries: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    entries
        .iter()
        .map(|(name, bytes)| ((*name).to_owned(), bytes.to_vec()))
        .collect()
}

/// A first release: root 1, targets 1, timestamp 1.
fn first(keys: &Keys) -> BTreeMap<String, Vec<u8>> {
    let t1 = targets(1, keys);
    files(&[
        ("1.root.cose", &root(1, keys, &[&keys.root])),
        ("1.targets.cose", &t1),
        (TIMESTAMP_FILE, &timestamp(1, 1, &t1, keys)),
    ])
}

/// `current` with a plan applied, as a store would hold it.
fn applied(current: &BTreeMap<String, Vec<u8>>, plan: &Plan) -> BTreeMap<String, Vec<u8>> {
    let mut next = current.clone();
    next.extend(plan.writes.iter().cloned());
    next
}

fn refused_file(result: Result<Plan, PublishError>) -> (String, String) {
    match result {
        Err(PublishError::Refused { file, reason }) => (file, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn conflict_file(result: Result<Plan, PublishError>) -> (String, String) {
    match result {
        Err(PublishError::Conflict { file, reason }) => (file, reason),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn a_first_publish_starts_at_root_1_and_stores_roots_then_targets_then_the_timestamp() {
    let keys = keys();
    let release = first(&keys);
    let plan = check(&BTreeMap::new(), &release, now(), CAP).unwrap();
    let names: Vec<&str> = plan.writes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["1.root.cose", "1.targets.cose", TIMESTAMP_FILE]);
    assert_eq!(
        (
            plan.root_version,
            plan.targets_version,
            plan.timestamp_version
        ),
        (1, 1, 1)
    );

    // The same set again stores nothing.
    let current = applied(&BTreeMap::new(), &plan);
    let again = check(&current, &release, now(), CAP).unwrap();
    assert!(again.writes.is_empty());
}

#[test]
fn a_first_publish_without_root_1_or_not_self_signed_is_refused_naming_it() {
    let keys = keys();
    let mut upload = first(&keys);
    upload.remove("1.root.cose");
    let (file, reason) = refused_file(check(&BTreeMap::new(), &upload, now(), CAP));
    assert_eq!(file, "1.root.cose");
    assert!(reason.contains("nothing is published yet"), "{reason}");

    let other = SigningKey::generate().unwrap();
    upload.insert("1.root.cose".into(), root(1, &keys, &[&other]));
    let (file, _) = refused_file(check(&BTreeMap::new(), &upload, now(), CAP));
    assert_eq!(file, "1.root.cose");
}

#[test]
fn a_root_rotation_signed_by_the_old_and_new_root_keys_is_accepted() {
    let old = keys();
    let current = applied(
        &BTreeMap::new(),
        &check(&BTreeMap::new(), &first(&old), now(), CAP).unwrap(),
    );
    let new = keys();
    let t2 = targets(2, &new);
    let mut upload = current.clone();
    upload.insert("2.root.cose".into(), root(2, &new, &[&old.root, &new.root]));
    upload.insert("2.targets.cose".into(), t2.clone());
    upload.remove("1.targets.cose");
    // New timestamp keys: devices drop the old timestamp, so its version may start over.
    upload.insert(TIMESTAMP_FILE.into(), timestamp(1, 2, &t2, &new));
    let plan = check(&current, &upload, now(), CAP).unwrap();
    let names: Vec<&str> = plan.writes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["2.root.cose", "2.targets.cose", TIMESTAMP_FILE]);
    assert_eq!(plan.root_version, 2);
}

#[test]
fn a_new_root_not_signed_by_the_published_root_keys_is_refused_naming_it() {
    let old = keys();
    let current = applied(
        &BTreeMap::new(),
        &check(&BTreeMap::new(), &first(&old), now(), CAP).unwrap(),
    );
    let new = keys();
    let mut upload = current.clone();
    upload.insert("2.root.cose".into(), root(2, &new, &[&new.root]));
    let (file, _) = refused_file(check(&current, &upload, now(), CAP));
    assert_eq!(file, "2.root.cose");

    // A gap in the chain names the root that is missing.
    let mut gap = current.clone();
    gap.insert("3.root.cose".into(), root(3, &new, &[&old.root, &new.root]));
    let (file, reason) = refused_file(check(&current, &gap, now(), CAP));
    assert_eq!(file, "3.root.cose");
    assert!(reason.contains("2.root.cose is missing"), "{reason}");
}

#[test]
fn a_timestamp_signed_by_a_key_the_root_does_not_list_is_refused_naming_it() {
    let keys = keys();
    let mut upload = first(&keys);
    let stranger = SigningKey::generate().unwrap();
    let t1 = upload["1.targets.cose"].clone();
    upload.insert(
        TIMESTAMP_FILE.into(),
        timestamp_until(1, 1, &t1, &stranger, now(), now().saturating_add(DAY)),
    );
    let (file, _) = refused_file(check(&BTreeMap::new(), &upload, now(), CAP));
    assert_eq!(file, TIMESTAMP_FILE);
}

#[test]
fn rollbacks_and_a_republished_version_with_other_bytes_conflict_naming_the_file() {
    let keys = keys();
    let mut current = applied(
        &BTreeMap::new(),
        &check(&BTreeMap::new(), &first(&keys), now(), CAP).unwrap(),
    );
    let t2 = targets(2, &keys);
    let mut release2 = current.clone();
    release2.insert("2.targets.cose".into(), t2.clone());
    release2.insert(TIMESTAMP_FILE.into(), timestamp(3, 2, &t2, &keys));
    release2.remove("1.targets.cose");
    current = applied(&current, &check(&current, &release2, now(), CAP).unwrap());

    // A timestamp version below the published one.
    let mut older = current.clone();
    older.insert(TIMESTAMP_FILE.into(), timestamp(2, 2, &t2, &keys));
    let (file, _) = conflict_file(check(&current, &older, now(), CAP));
    assert_eq!(file, TIMESTAMP_FILE);

    // A newer timestamp naming older targets.
    let t1 = current["1.targets.cose"].clone();
    let mut back = files(&[("1.root.cose", &current["1.root.cose"])]);
    back.insert(TIMESTAMP_FILE.into(), timestamp(4, 1, &t1, &keys));
    let (file, _) = conflict_file(check(&current, &back, now(), CAP));
    assert_eq!(file, TIMESTAMP_FILE);

    // The published timestamp version with other bytes.
    let mut same_version = current.clone();
    same_version.insert(
        TIMESTAMP_FILE.into(),
        timestamp_until(
            3,
            2,
            &t2,
            &keys.timestamp,
            now(),
            now().saturating_add(2 * DAY),
        ),
    );
    let (file, reason) = conflict_file(check(&current, &same_version, now(), CAP));
    assert_eq!(file, TIMESTAMP_FILE);
    assert!(reason.contains("other bytes"), "{reason}");

    // A published targets version with other bytes (another expiry: signing is
    // deterministic, so the same payload in the same second would be the same bytes).
    let other = Targets::new(2, now(), now().saturating_add(8 * DAY), Vec::new());
    let other_t2 = sign(&other, &[&keys.targets]).unwrap();
    let mut changed = current.clone();
    changed.insert("2.targets.cose".into(), other_t2.clone());
    changed.insert(TIMESTAMP_FILE.into(), timestamp(4, 2, &other_t2, &keys));
    let (file, _) = conflict_file(check(&current, &changed, now(), CAP));
    assert_eq!(file, "2.targets.cose");
}

#[test]
fn an_expired_timestamp_is_refused_but_an_expired_published_one_can_be_refreshed() {
    let keys = keys();
    let mut upload = first(&keys);
    let t1 = upload["1.targets.cose"].clone();
    let stale = timestamp_until(1, 1, &t1, &keys.timestamp, days_ago(2), days_ago(1));
    upload.insert(TIMESTAMP_FILE.into(), stale);
    let (file, reason) = refused_file(check(&BTreeMap::new(), &upload, now(), CAP));
    assert_eq!(file, TIMESTAMP_FILE);
    assert!(reason.contains("expired"), "{reason}");

    // Published while it was fresh, expired since: the refresh goes through.
    let current = upload;
    let mut refresh = current.clone();
    refresh.insert(TIMESTAMP_FILE.into(), timestamp(2, 1, &t1, &keys));
    let plan = check(&current, &refresh, now(), CAP).unwrap();
    let names: Vec<&str> = plan.writes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, [TIMESTAMP_FILE]);
}

#[test]
fn a_timestamp_naming_targets_neither_uploaded_nor_published_is_refused_naming_them() {
    let keys = keys();
    let mut upload = first(&keys);
    let t5 = targets(5, &keys);
    upload.insert(TIMESTAMP_FILE.into(), timestamp(1, 5, &t5, &keys));
    upload.remove("1.targets.cose");
    let (file, reason) = refused_file(check(&BTreeMap::new(), &upload, now(), CAP));
    assert_eq!(file, "5.targets.cose");
    assert!(
        reason.contains("neither uploaded nor published"),
        "{reason}"
    );

    // A targets file the timestamp does not name is refused too.
    let mut extra = first(&keys);
    extra.insert("5.targets.cose".into(), t5);
    let (file, _) = refused_file(check(&BTreeMap::new(), &extra, now(), CAP));
    assert_eq!(file, "5.targets.cose");
}

#[test]
fn names_that_are_not_metadata_files_are_refused_naming_them() {
    let keys = keys();
    for bad in [
        "../1.root.cose",
        "root.cose",
        "01.root.cose",
        "0.targets.cose",
        "pins.toml",
        "",
    ] {
        let mut upload = first(&keys);
        upload.insert(bad.into(), b"x".to_vec());
        let (file, _) = refused_file(check(&BTreeMap::new(), &upload, now(), CAP));
        assert_eq!(file, bad);
    }
}

#[test]
fn oversized_files_and_too_many_files_are_refused() {
    let keys = keys();
    let mut upload = first(&keys);
    upload.insert(TIMESTAMP_FILE.into(), vec![0; 16 * 1024 + 1]);
    match check(&BTreeMap::new(), &upload, now(), CAP) {
        Err(PublishError::TooLarge { file, size, limit }) => {
            assert_eq!(
                (file.as_str(), size, limit),
                (TIMESTAMP_FILE, 16 * 1024 + 1, 16 * 1024)
            );
        }
        other => panic!("{other:?}"),
    }
    let mut upload = first(&keys);
    upload.insert("1.targets.cose".into(), vec![0; 2048]);
    assert!(matches!(
        check(&BTreeMap::new(), &upload, now(), 1024),
        Err(PublishError::TooLarge { file, .. }) if file == "1.targets.cose"
    ));
    let many: BTreeMap<String, Vec<u8>> = (1..=MAX_FILES as u64 + 1)
        .map(|v| (root_file(v), Vec::new()))
        .collect();
    assert!(matches!(
        check(&BTreeMap::new(), &many, now(), CAP),
        Err(PublishError::TooManyFiles { .. })
    ));
}

fn folder_metadata(dir: &std::path::Path, with_folder: bool) -> (Metadata, Arc<Store>) {
    let store = Arc::new(Store::open(dir, MasterKey::from_bytes(&[5u8; 32]).unwrap()).unwrap());
    let folder = with_folder.then(|| dir.join("metadata"));
    if let Some(folder) = &folder {
        std::fs::create_dir_all(folder).unwrap();
    }
    (
        Metadata::from_parts(folder, Some(store.clone()), CAP),
        store,
    )
}

#[test]
fn the_files_backend_stores_into_metadata_dir_audits_and_keeps_it_unchanged_on_a_refusal() {
    let state = tempfile::tempdir().unwrap();
    let (metadata, store) = folder_metadata(state.path(), true);
    let keys = keys();
    let actor = Actor {
        uid: Some(1000),
        pid: Some(7),
    };
    let release = first(&keys);
    let served = metadata.publish(release.clone(), &actor).unwrap();
    assert_eq!(
        served.written,
        ["1.root.cose", "1.targets.cose", TIMESTAMP_FILE]
    );
    let folder = state.path().join("metadata");
    for (name, bytes) in &release {
        assert_eq!(&std::fs::read(folder.join(name)).unwrap(), bytes, "{name}");
    }
    let before = std::fs::read(folder.join(TIMESTAMP_FILE)).unwrap();
    let audit = store.audit(10).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].action.as_str(), audit[0].subject.as_str()),
        ("publish", "root 1, targets 1, timestamp 1")
    );
    assert_eq!(audit[0].operator, "uid 1000 pid 7");

    let t2 = targets(2, &keys);
    let mut bad = files(&[("2.targets.cose", &t2)]);
    let stranger = SigningKey::generate().unwrap();
    bad.insert(
        TIMESTAMP_FILE.into(),
        timestamp_until(2, 2, &t2, &stranger, now(), now().saturating_add(DAY)),
    );
    assert!(matches!(
        metadata.publish(bad, &actor),
        Err(PublishError::Refused { file, .. }) if file == TIMESTAMP_FILE
    ));
    assert!(!folder.join("2.targets.cose").exists(), "nothing stored");
    assert_eq!(std::fs::read(folder.join(TIMESTAMP_FILE)).unwrap(), before);
    assert_eq!(store.audit(10).unwrap().len(), 1);
}

#[test]
fn the_files_backend_without_metadata_dir_refuses_naming_the_setting() {
    let state = tempfile::tempdir().unwrap();
    let (metadata, _store) = folder_metadata(state.path(), false);
    let refused = metadata
        .publish(first(&keys()), &Actor::default())
        .unwrap_err();
    assert!(matches!(refused, PublishError::NoFolder));
    assert!(refused.to_string().contains("`metadata_dir`"), "{refused}");
}
