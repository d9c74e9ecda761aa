//! One test per attack, named for the attack it stops. Each builds its own fixture: a
//! simulated repository with its own keys, published and then tampered with.

use coset::iana;
use coset::{CoseSignBuilder, CoseSignatureBuilder, HeaderBuilder, TaggedCborSerializable as _};

use super::simulator::{DAY, Simulator, T0};
use crate::metadata::{
    Limits, MetadataError, Role, RoleType, SigningKey, Targets, TargetsMeta, Timestamp,
    TrustedStore, UnixTime, Updater, sign, targets_file,
};
use crate::verify::VerifyError;

fn assert_err<T: std::fmt::Debug>(
    result: Result<T, MetadataError>,
    check: impl Fn(&MetadataError) -> bool,
) {
    match result {
        Err(e) if check(&e) => {}
        other => panic!("unexpected outcome: {other:?}"),
    }
}

// --- arbitrary software and endless data ---------------------------------------------------

#[tokio::test]
async fn refuses_arbitrary_software_whose_manifest_hash_does_not_match() {
    let mut sim = Simulator::with_release();
    let mut device = sim.device();
    device.update(&mut sim, T0).await.unwrap();
    let entry = device
        .trusted()
        .targets()
        .unwrap()
        .entry("app")
        .unwrap()
        .clone();
    sim.serve_target(&entry.digest, b"manifest 0ne".to_vec());

    let result = device.fetch_target(&mut sim, &entry).await;

    assert_err(
        result,
        |e| matches!(e, MetadataError::Target { name, source: VerifyError::Mismatch { .. } } if name == "app"),
    );
}

#[tokio::test]
async fn accepts_a_target_manifest_with_the_pinned_size_and_digest() {
    let mut sim = Simulator::with_release();
    let mut device = sim.device();
    device.update(&mut sim, T0).await.unwrap();
    let entry = device
        .trusted()
        .targets()
        .unwrap()
        .entry("app")
        .unwrap()
        .clone();

    let bytes = device.fetch_target(&mut sim, &entry).await.unwrap();

    assert_eq!(bytes, b"manifest one");
}

#[tokio::test]
async fn refuses_endless_data_in_a_target_manifest() {
    let mut sim = Simulator::with_release();
    let mut device = sim.device();
    device.update(&mut sim, T0).await.unwrap();
    let entry = device
        .trusted()
        .targets()
        .unwrap()
        .entry("app")
        .unwrap()
        .clone();
    let mut endless = b"manifest one".to_vec();
    endless.extend(std::iter::repeat_n(b'x', 1 << 20));
    sim.serve_target(&entry.digest, endless);

    let result = device.fetch_target(&mut sim, &entry).await;

    assert_err(
        result,
        |e| matches!(e, MetadataError::TooLarge { limit, .. } if *limit == 12),
    );
}

#[tokio::test]
async fn refuses_endless_data_in_the_timestamp() {
    let mut sim = Simulator::with_release();
    let mut device = sim.device();
    let mut huge = sim.files["timestamp.cose"].clone();
    huge.resize(17 * 1024, 0);
    sim.serve("timestamp.cose", huge);

    let result = device.update(&mut sim, T0).await;

    assert_err(
        result,
        |e| matches!(e, MetadataError::TooLarge { file, limit } if file == "timestamp.cose" && *limit == 16 * 1024),
    );
}

#[tokio::test]
async fn refuses_endless_data_in_a_root() {
    let mut sim = Simulator::with_release();
    let mut device = sim.device();
    sim.serve("2.root.cose", vec![0; 513 * 1024]);

    let result = device.update(&mut sim, T0).await;

    assert_err(
        result,
        |e| matches!(e, MetadataError::TooLarge { file, limit } if file == "2.root.cose" && *limit == 512 * 1024),
    );
}

#[tokio::test]
async fn refuses_targets_longer_than_the_timestamp_says() {
    let mut sim = Simulator::with_release();
    let mut device = sim.device();
    let mut longer = sim.current_targets.clone();
    longer.extend_from_slice(&[0; 100]);
    sim.serve(&targets_file(1), longer);

    let result = device.update(&mut sim, T0).await;

    assert_err(
        result,
        |e| matches!(e, MetadataError::TooLarge { file, .. } if file == "1.targets.cose"),
    );
    assert!(device.trusted().targets().is_none());
}

// --- rollback --------------------------------------------------------------------------------

#[tokio::test]
async fn refuses_root_rollback_offered_as_the_next_root() {
    let mut sim = Simulator::with_release();
    let spec = sim.spec.clone();
    sim.publish_root(spec);
    let mut device = sim.device();
    device.update(&mut sim, T0).await.unwrap();
    assert_eq!(device.trusted().root().version(), 2);
    // The attacker serves the old root 1 (validly signed by the same keys) as root 3.
    let old = sim.files["1.root.cose"].clone();
    sim.serve("3.root.cose", old);

    let result = device.update(&mut sim, T0).await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::RootVersion {
                expected: 3,
                found: 1,
                ..
            }
        )
    });
    assert_eq!(device.trusted().root().version(), 2);
}

#[tokio::test]
async fn refuses_timestamp_rollback() {
    let mut sim = Simulator::with_release();
    let old_timestamp = sim.files["timestamp.cose"].clone();
    sim.publish_timestamp();
    let mut device = sim.device();
    device.update(&mut sim, T0).await.unwrap();
    sim.serve("timestamp.cose", old_timestamp);

    let result = device.update(&mut sim, T0).await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::Rollback {
                role: RoleType::Timestamp,
                trusted: 2,
                found: 1,
                ..
            }
        )
    });
}

#[tokio::test]
async fn refuses_timestamp_naming_older_targets_than_the_trusted_timestamp() {
    let mut sim = Simulator::with_release();
    let first_targets = sim.current_targets.clone();
    let entry = sim.entry("app", b"manifest two");
    sim.publish_release(vec![entry]);
    let mut device = sim.device();
    device.update(&mut sim, T0).await.unwrap();
    // A newer timestamp (validly signed: a compromised or buggy signer) naming targets 1.
    let stale = sim.sign_timestamp(
        3,
        T0.saturating_add(DAY),
        TargetsMeta::new(1, &first_targets),
    );
    sim.serve("timestamp.cose", stale);

    let result = device.update(&mut sim, T0).await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::TargetsRollback {
                trusted: 2,
                found: 1,
                ..
            }
        )
    });
}

#[tokio::test]
async fn refuses_targets_rollback_after_the_timestamp_keys_rotate() {
    let mut sim = Simulator::with_release();
    let first_targets = sim.current_targets.clone();
    let entry = sim.entry("app", b"manifest two");
    sim.publish_release(vec![entry]);
    let mut device = sim.device();
    device.update(&mut sim, T0).await.unwrap();
    // New timestamp keys: the device forgets its timestamp (fast-forward recovery), so only
    // the trusted targets' own version stands between it and the old targets file.
    let mut spec = sim.spec.clone();
    spec.timestamp = vec![sim.key()];
    sim.publish_root(spec);
    let stale = sim.sign_timestamp(
        1,
        T0.saturating_add(DAY),
        TargetsMeta::new(1, &first_targets),
    );
    sim.serve("timestamp.cose", stale);

    let result = device.update(&mut sim, T0).await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::Rollback {
                role: RoleType::Targets,
                trusted: 2,
                found: 1,
                ..
            }
        )
    });
    assert_eq!(device.trusted().targets().unwrap().version(), 2);
}

// --- indefinite freeze -----------------------------------------------------------------------

#[tokio::test]
async fn refuses_an_expired_timestamp() {
    let mut sim = Simulator::with_release();
    let mut device = sim.device();

    let result = device.update(&mut sim, T0.saturating_add(2 * DAY)).await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::Expired {
                role: RoleType::Timestamp,
                ..
            }
        )
    });
}

#[tokio::test]
async fn refuses_a_replayed_timestamp_once_it_has_expired() {
    let mut sim = Simulator::with_release();
    let mut device = sim.device();
    device.update(&mut sim, T0).await.unwrap();

    // The repository is frozen: it keeps serving the same (trusted) timestamp.
    let result = device.update(&mut sim, T0.saturating_add(2 * DAY)).await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::Expired {
                role: RoleType::Timestamp,
                ..
            }
        )
    });
}

#[tokio::test]
async fn refuses_expired_targets() {
    let mut sim = Simulator::with_release();
    let mut device = sim.device();
    device.update(&mut sim, T0).await.unwrap();
    // The timestamp stays fresh, the targets file it names expired after 30 days.
    sim.now = T0.saturating_add(31 * DAY);
    sim.publish_timestamp();

    let result = {
        let now = sim.now;
        device.update(&mut sim, now)
    }
    .await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::Expired {
                role: RoleType::Targets,
                ..
            }
        )
    });
}

#[tokio::test]
async fn refuses_new_targets_that_are_already_expired() {
    let mut sim = Simulator::new();
    sim.targets_version = 1;
    let targets = sim.sign_targets(1, T0.saturating_add(DAY), vec![]);
    sim.serve(&targets_file(1), targets.clone());
    sim.current_targets = targets;
    sim.now = T0.saturating_add(2 * DAY);
    sim.publish_timestamp();
    let mut device = sim.device();

    let result = {
        let now = sim.now;
        device.update(&mut sim, now)
    }
    .await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::Expired {
                role: RoleType::Targets,
                ..
            }
        )
    });
    assert!(device.trusted().targets().is_none());
}

#[tokio::test]
async fn refuses_an_expired_final_root() {
    let mut sim = Simulator::new();
    let mut spec = sim.spec.clone();
    spec.expires = T0.saturating_add(10 * DAY);
    sim.publish_root(spec);
    sim.now = T0.saturating_add(20 * DAY);
    let entry = sim.entry("app", b"manifest one");
    sim.publish_release(vec![entry]);
    let mut device = sim.device();

    let result = {
        let now = sim.now;
        device.update(&mut sim, now)
    }
    .await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::Expired {
                role: RoleType::Root,
                ..
            }
        )
    });
    // The chain walk itself succeeded: the device trusts root 2, expired or not.
    assert_eq!(device.trusted().root().version(), 2);
}

#[tokio::test]
async fn accepts_expired_intermediate_roots_on_the_way_to_a_current_one() {
    let mut sim = Simulator::new();
    let mut spec = sim.spec.clone();
    spec.expires = T0.saturating_add(DAY);
    sim.publish_root(spec.clone());
    spec.expires = T0.saturating_add(365 * DAY);
    sim.now = T0.saturating_add(10 * DAY);
    sim.publish_root(spec);
    let entry = sim.entry("app", b"manifest one");
    sim.publish_release(vec![entry]);
    let mut device = sim.device();

    let report = {
        let now = sim.now;
        device.update(&mut sim, now)
    }
    .await
    .unwrap();

    assert_eq!(report.root_version, 3);
    assert_eq!(report.root_rotations, 2);
}

#[tokio::test]
async fn refuses_expired_timestamp_when_the_clock_is_stepped_back_below_latest_known_time() {
    // An old release, signed long ago with the same keys and long expired.
    let mut sim = Simulator::new();
    sim.now = UnixTime::from_secs(T0.as_secs() - 100 * DAY.as_secs());
    let entry = sim.entry("app", b"manifest one");
    sim.publish_release(vec![entry]);
    sim.now = T0;
    // The device is pinned to a root issued at T0 and boots with its clock in 1970: the
    // attacker replays the old release, which looks fresh to a 1970 clock.
    let mut device = sim.device();
    assert_eq!(device.trusted().offline_known(), T0);

    let result = device.update(&mut sim, UnixTime::EPOCH).await;

    assert_err(
        result,
        |e| matches!(e, MetadataError::Expired { role: RoleType::Timestamp, now, .. } if *now == T0),
    );
}

// --- fast-forward recovery -------------------------------------------------------------------

#[tokio::test]
async fn recovers_from_a_fast_forward_attack_once_timestamp_keys_rotate() {
    let mut sim = Simulator::with_release();
    let mut device = sim.device();
    device.update(&mut sim, T0).await.unwrap();
    // A compromised timestamp key pushes the device to timestamp version 1000.
    let forwarded = sim.sign_timestamp(
        1000,
        T0.saturating_add(DAY),
        TargetsMeta::new(1, &sim.current_targets),
    );
    sim.serve("timestamp.cose", forwarded);
    device.update(&mut sim, T0).await.unwrap();
    assert_eq!(device.trusted().timestamp().unwrap().version(), 1000);
    // The operator rotates the timestamp key and signs timestamp version 2 with the new one.
    let mut spec = sim.spec.clone();
    spec.timestamp = vec![sim.key()];
    sim.publish_root(spec);
    sim.publish_timestamp();

    let report = device.update(&mut sim, T0).await.unwrap();

    assert_eq!(report.root_version, 2);
    assert_eq!(report.timestamp_version, 2);
}

// --- a clock pushed forward by the online key ------------------------------------------------

/// Signs a timestamp with the repository's current timestamp keys but an `issued` of the
/// signer's choosing: what whoever holds the (online) timestamp key, or a signing host whose
/// clock runs far ahead, can produce.
fn timestamp_issued_at(sim: &mut Simulator, version: u64, issued: UnixTime) -> Vec<u8> {
    let honest_now = sim.now;
    sim.now = issued;
    let expires = issued.saturating_add(DAY);
    let meta = TargetsMeta::new(sim.targets_version, &sim.current_targets);
    let bytes = sim.sign_timestamp(version, expires, meta);
    sim.now = honest_now;
    bytes
}

/// A clock-less device (its system clock reads 1970) that trusts the first release, then is
/// served a timestamp the timestamp key signed with `issued` in the far future. It persists
/// to `store` when given one.
async fn device_served_a_timestamp_issued_at(
    issued: UnixTime,
    store: Option<TrustedStore>,
) -> (Simulator, Updater) {
    let mut sim = Simulator::with_release();
    let mut device = match store {
        Some(store) => Updater::with_store(&sim.anchor(), store).unwrap(),
        None => sim.device(),
    };
    device.update(&mut sim, UnixTime::EPOCH).await.unwrap();
    let forged = timestamp_issued_at(&mut sim, 2, issued);
    sim.timestamp_version = 2;
    sim.serve("timestamp.cose", forged);
    let attacked = device.update(&mut sim, UnixTime::EPOCH).await;

    // The forged timestamp is validly signed: the device takes it, and learns from it that
    // time has passed, but only up to the trusted targets' expiry. So those targets count as
    // expired now (as they would if the timestamp were honest), and nothing else does.
    let targets_expire = T0.saturating_add(30 * DAY);
    assert_eq!(device.trusted().timestamp().unwrap().version(), 2);
    assert_eq!(device.trusted().online_known(), targets_expire);
    assert_eq!(device.trusted().offline_known(), T0);
    assert_err(attacked, |e| {
        matches!(
            e,
            MetadataError::Expired {
                role: RoleType::Targets,
                now,
                ..
            } if *now == targets_expire
        )
    });
    (sim, device)
}

#[tokio::test]
async fn a_timestamp_issued_far_in_the_future_cannot_freeze_the_device() {
    let first_targets_expire = T0.saturating_add(30 * DAY);
    for issued in [
        T0.saturating_add(100 * 365 * DAY),
        UnixTime::from_secs(u64::MAX - 1),
    ] {
        let (mut sim, mut device) = device_served_a_timestamp_issued_at(issued, None).await;
        // An hour later the operator publishes a release with the real keys.
        sim.now = T0.saturating_add(std::time::Duration::from_secs(3600));
        let entry = sim.entry("app", b"manifest two");
        sim.publish_release(vec![entry]);

        let report = device.update(&mut sim, UnixTime::EPOCH).await.unwrap();

        assert_eq!(report.timestamp_version, 3, "issued {issued:?}");
        assert_eq!(report.targets_version, 2);
        assert!(report.targets_changed);
        // The forged timestamp moved the clock no further than the first targets' expiry.
        assert_eq!(report.effective_time, first_targets_expire);
        assert_eq!(device.trusted().online_known(), first_targets_expire);
        assert_eq!(device.trusted().offline_known(), sim.now);
    }
}

#[tokio::test]
async fn rotating_the_timestamp_key_recovers_from_a_clock_pushed_forward() {
    let dir = tempfile::tempdir().unwrap();
    let store = TrustedStore::open(dir.path()).unwrap();
    let pushed = UnixTime::from_secs(u64::MAX - 1);
    let (mut sim, mut device) =
        device_served_a_timestamp_issued_at(pushed, Some(store.clone())).await;
    // The operator rotates the timestamp key (root 2) and publishes a release with it.
    let released = T0.saturating_add(std::time::Duration::from_secs(3600));
    sim.now = released;
    let mut spec = sim.spec.clone();
    spec.timestamp = vec![sim.key()];
    sim.publish_root(spec);
    let entry = sim.entry("app", b"manifest two");
    sim.publish_release(vec![entry]);

    let report = device.update(&mut sim, UnixTime::EPOCH).await.unwrap();

    assert_eq!(report.root_version, 2);
    assert_eq!(report.timestamp_version, 3);
    assert_eq!(report.targets_version, 2);
    // What the compromised key did to the clock is undone.
    assert_eq!(device.trusted().online_known(), released);
    assert_eq!(device.trusted().offline_known(), released);
    assert_eq!(device.trusted().effective_time(UnixTime::EPOCH), released);
    assert_eq!(report.effective_time, released);
    // And it stays undone across a restart.
    let restarted = Updater::with_store(&sim.anchor(), store).unwrap();
    assert_eq!(restarted.trusted().online_known(), released);
    assert_eq!(restarted.trusted().offline_known(), released);
}

// --- mix-and-match ---------------------------------------------------------------------------

#[tokio::test]
async fn refuses_targets_that_do_not_match_the_timestamp() {
    let mut sim = Simulator::with_release();
    let mut device = sim.device();
    // Another validly signed targets file with the same version, swapped in.
    let other_entry = sim.entry("app", b"manifest other");
    let other = sim.sign_targets(1, T0.saturating_add(30 * DAY), vec![other_entry]);
    sim.serve(&targets_file(1), other);

    let result = device.update(&mut sim, T0).await;

    assert_err(
        result,
        |e| matches!(e, MetadataError::TimestampMismatch { file, .. } if file == "1.targets.cose"),
    );
    assert!(device.trusted().targets().is_none());
}

#[tokio::test]
async fn refuses_targets_whose_version_is_not_the_one_the_timestamp_names() {
    let mut sim = Simulator::new();
    let entry = sim.entry("app", b"manifest one");
    let targets = sim.sign_targets(1, T0.saturating_add(30 * DAY), vec![entry]);
    // The timestamp names version 2 with the exact bytes of the version 1 file.
    let timestamp = sim.sign_timestamp(1, T0.saturating_add(DAY), TargetsMeta::new(2, &targets));
    sim.serve(&targets_file(2), targets);
    sim.serve("timestamp.cose", timestamp);
    let mut device = sim.device();

    let result = device.update(&mut sim, T0).await;

    assert_err(
        result,
        |e| matches!(e, MetadataError::TimestampMismatch { reason, .. } if reason.contains("version 1")),
    );
}

// --- signatures and thresholds ---------------------------------------------------------------

/// A repository whose timestamp role has two keys and a threshold of two.
fn two_of_two_timestamp() -> (Simulator, SigningKey, SigningKey) {
    let mut sim = Simulator::new();
    let (a, b) = (sim.key(), sim.key());
    let mut spec = sim.spec.clone();
    spec.timestamp = vec![a.clone(), b.clone()];
    spec.timestamp_threshold = 2;
    sim.publish_root(spec);
    let entry = sim.entry("app", b"manifest one");
    sim.publish_release(vec![entry]);
    (sim, a, b)
}

fn timestamp_signed_by(sim: &Simulator, keys: &[&SigningKey]) -> Vec<u8> {
    let payload = Timestamp::new(
        sim.timestamp_version,
        sim.now,
        sim.now.saturating_add(DAY),
        TargetsMeta::new(sim.targets_version, &sim.current_targets),
    );
    sign(&payload, keys).unwrap()
}

#[tokio::test]
async fn accepts_a_timestamp_signed_by_its_threshold() {
    let (mut sim, a, b) = two_of_two_timestamp();
    sim.serve("timestamp.cose", timestamp_signed_by(&sim, &[&a, &b]));
    let mut device = sim.device();

    let report = device.update(&mut sim, T0).await.unwrap();

    assert_eq!(report.timestamp_version, 1);
}

#[tokio::test]
async fn refuses_a_timestamp_signed_below_threshold() {
    let (mut sim, a, _b) = two_of_two_timestamp();
    sim.serve("timestamp.cose", timestamp_signed_by(&sim, &[&a]));
    let mut device = sim.device();

    let result = device.update(&mut sim, T0).await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::BelowThreshold {
                role: RoleType::Timestamp,
                valid: 1,
                threshold: 2,
                ..
            }
        )
    });
}

#[tokio::test]
async fn counts_duplicate_signatures_by_one_key_once() {
    let (mut sim, a, _b) = two_of_two_timestamp();
    sim.serve("timestamp.cose", timestamp_signed_by(&sim, &[&a, &a]));
    let mut device = sim.device();

    let result = device.update(&mut sim, T0).await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::BelowThreshold {
                role: RoleType::Timestamp,
                valid: 1,
                threshold: 2,
                ..
            }
        )
    });
}

#[tokio::test]
async fn ignores_a_signature_by_an_unknown_key() {
    let (mut sim, a, b) = two_of_two_timestamp();
    let stranger = sim.key();
    sim.serve(
        "timestamp.cose",
        timestamp_signed_by(&sim, &[&stranger, &a, &b]),
    );
    let mut device = sim.device();

    let report = device.update(&mut sim, T0).await.unwrap();

    assert_eq!(report.timestamp_version, 1);
}

#[tokio::test]
async fn refuses_a_timestamp_signed_only_by_an_unknown_key() {
    let mut sim = Simulator::with_release();
    let stranger = sim.key();
    sim.serve("timestamp.cose", timestamp_signed_by(&sim, &[&stranger]));
    let mut device = sim.device();

    let result = device.update(&mut sim, T0).await;

    assert_err(result, |e| {
        matches!(e, MetadataError::BelowThreshold { valid: 0, .. })
    });
}

#[tokio::test]
async fn ignores_a_signature_by_a_key_of_another_role() {
    let (mut sim, a, _b) = two_of_two_timestamp();
    // The root lists the targets key, but not for the timestamp role.
    let targets_key = sim.spec.targets[0].clone();
    sim.serve(
        "timestamp.cose",
        timestamp_signed_by(&sim, &[&a, &targets_key]),
    );
    let mut device = sim.device();

    let result = device.update(&mut sim, T0).await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::BelowThreshold {
                role: RoleType::Timestamp,
                valid: 1,
                ..
            }
        )
    });
}

#[tokio::test]
async fn refuses_a_signature_over_other_bytes() {
    let mut sim = Simulator::with_release();
    let mut bytes = sim.files["timestamp.cose"].clone();
    // The signature is the last 64 bytes: flip one bit of it.
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    sim.serve("timestamp.cose", bytes);
    let mut device = sim.device();

    let result = device.update(&mut sim, T0).await;

    assert_err(result, |e| {
        matches!(e, MetadataError::BelowThreshold { valid: 0, .. })
    });
}

// --- wrong role ------------------------------------------------------------------------------

#[tokio::test]
async fn refuses_a_targets_file_served_as_the_timestamp() {
    // One key for both roles, so the signature alone cannot tell the files apart.
    let mut sim = Simulator::new();
    let mut spec = sim.spec.clone();
    spec.timestamp = spec.targets.clone();
    sim.publish_root(spec);
    let entry = sim.entry("app", b"manifest one");
    sim.publish_release(vec![entry]);
    let targets = sim.current_targets.clone();
    sim.serve("timestamp.cose", targets);
    let mut device = sim.device();

    let result = device.update(&mut sim, T0).await;

    assert_err(
        result,
        |e| matches!(e, MetadataError::WrongRole { expected: RoleType::Timestamp, found, .. } if found == "targets"),
    );
}

// --- root rotation ---------------------------------------------------------------------------

#[tokio::test]
async fn accepts_a_root_rotation_signed_by_the_old_and_the_new_keys() {
    let mut sim = Simulator::with_release();
    let mut spec = sim.spec.clone();
    spec.root = vec![sim.key()];
    sim.publish_root(spec.clone());
    let mut device = sim.device();

    let report = device.update(&mut sim, T0).await.unwrap();

    assert_eq!(report.root_version, 2);
    assert_eq!(report.root_rotations, 1);
    assert!(
        device
            .trusted()
            .root()
            .roles()
            .root
            .authorizes(&spec.root[0].id())
    );
}

#[tokio::test]
async fn refuses_a_new_root_not_signed_by_the_old_keys() {
    let mut sim = Simulator::with_release();
    let mut spec = sim.spec.clone();
    spec.root = vec![sim.key()];
    let payload = sim.root_payload(&spec, 2);
    // Signed by the new root key only: an attacker who made up a root.
    sim.serve("2.root.cose", sign(&payload, &[&spec.root[0]]).unwrap());
    let mut device = sim.device();

    let result = device.update(&mut sim, T0).await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::BelowThreshold {
                role: RoleType::Root,
                root_version: 1,
                valid: 0,
                ..
            }
        )
    });
    assert_eq!(device.trusted().root().version(), 1);
}

#[tokio::test]
async fn refuses_a_new_root_not_signed_by_its_own_keys() {
    let mut sim = Simulator::with_release();
    let old_key = sim.spec.root[0].clone();
    let mut spec = sim.spec.clone();
    spec.root = vec![sim.key()];
    let payload = sim.root_payload(&spec, 2);
    sim.serve("2.root.cose", sign(&payload, &[&old_key]).unwrap());
    let mut device = sim.device();

    let result = device.update(&mut sim, T0).await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::BelowThreshold {
                role: RoleType::Root,
                root_version: 2,
                valid: 0,
                ..
            }
        )
    });
}

#[tokio::test]
async fn refuses_a_root_that_skips_a_version() {
    let mut sim = Simulator::with_release();
    let spec = sim.spec.clone();
    let payload = sim.root_payload(&spec, 3);
    let signers: Vec<&SigningKey> = spec.root.iter().collect();
    sim.serve("2.root.cose", sign(&payload, &signers).unwrap());
    let mut device = sim.device();

    let result = device.update(&mut sim, T0).await;

    assert_err(result, |e| {
        matches!(
            e,
            MetadataError::RootVersion {
                expected: 2,
                found: 3,
                ..
            }
        )
    });
}

#[tokio::test]
async fn stops_after_the_maximum_number_of_root_rotations() {
    let mut sim = Simulator::with_release();
    for _ in 0..5 {
        let mut spec = sim.spec.clone();
        spec.root = vec![sim.key()];
        sim.publish_root(spec);
    }
    let mut device = sim.device_with_limits(Limits {
        max_root_rotations: 3,
        ..Limits::default()
    });

    let report = device.update(&mut sim, T0).await.unwrap();

    assert_eq!(report.root_version, 4);
    assert!(report.rotation_limit_reached);
    assert!(!sim.requests.contains(&"5.root.cose".to_owned()));
    // The next update walks on from where this one stopped.
    let report = device.update(&mut sim, T0).await.unwrap();
    assert_eq!(report.root_version, 6);
}

// --- the state folder ------------------------------------------------------------------------

#[tokio::test]
async fn a_root_planted_in_the_state_dir_that_does_not_chain_to_the_anchor_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = TrustedStore::open(dir.path()).unwrap();
    let mut sim = Simulator::with_release();
    let mut device = Updater::with_store(&sim.anchor(), store.clone()).unwrap();
    device.update(&mut sim, T0).await.unwrap();
    drop(device);
    // Someone who can write the state folder but holds no key makes up keys of its own,
    // then plants a root signed by them alone (under the name the store used to trust and
    // under the name of the next link of the chain) and targets its own key signs.
    let mut forged = sim.spec.clone();
    forged.root = vec![sim.key()];
    forged.targets = vec![sim.key()];
    forged.timestamp = vec![sim.key()];
    let root = sign(&sim.root_payload(&forged, 2), &[&forged.root[0]]).unwrap();
    let arbitrary = sim.entry("app", b"arbitrary software");
    let targets = Targets::new(1, T0, T0.saturating_add(30 * DAY), vec![arbitrary]);
    let targets = sign(&targets, &[&forged.targets[0]]).unwrap();
    store.write("root.cose", &root).unwrap();
    store.write("2.root.cose", &root).unwrap();
    store.write("targets.cose", &targets).unwrap();

    let mut restarted = Updater::with_store(&sim.anchor(), store).unwrap();

    assert_eq!(restarted.trusted().root().version(), 1);
    assert_eq!(restarted.trusted().root_bytes(), sim.anchor());
    assert!(restarted.trusted().targets().is_none());
    // The next update walks from the anchor again and trusts the honest release only.
    let report = restarted.update(&mut sim, T0).await.unwrap();
    assert_eq!(report.root_version, 1);
    let entry = restarted.trusted().targets().unwrap().entry("app").unwrap();
    assert_eq!(entry.digest, crate::Digest::sha256_of(b"manifest one"));
}

// --- malformed CBOR and COSE -----------------------------------------------------------------

async fn timestamp_error(mutate: impl FnOnce(&Simulator) -> Vec<u8>) -> MetadataError {
    let mut sim = Simulator::with_release();
    let bytes = mutate(&sim);
    sim.serve("timestamp.cose", bytes);
    let mut device = sim.device();
    device.update(&mut sim, T0).await.unwrap_err()
}

#[tokio::test]
async fn refuses_a_truncated_cose_sign() {
    let e = timestamp_error(|sim| {
        let bytes = &sim.files["timestamp.cose"];
        bytes[..bytes.len() - 10].to_vec()
    })
    .await;
    assert!(matches!(e, MetadataError::Envelope { .. }), "{e:?}");
}

#[tokio::test]
async fn refuses_a_cose_sign1_tag() {
    let e = timestamp_error(|sim| {
        let mut bytes = sim.files["timestamp.cose"].clone();
        // 0xd8 0x62 is tag 98; 0xd8 0x12 is tag 18 (COSE_Sign1).
        assert_eq!(&bytes[..2], &[0xd8, 0x62]);
        bytes[1] = 0x12;
        bytes
    })
    .await;
    assert!(matches!(e, MetadataError::Envelope { .. }), "{e:?}");
}

#[tokio::test]
async fn refuses_an_untagged_cose_sign() {
    let e = timestamp_error(|sim| sim.files["timestamp.cose"][2..].to_vec()).await;
    assert!(matches!(e, MetadataError::Envelope { .. }), "{e:?}");
}

#[tokio::test]
async fn refuses_a_signature_algorithm_other_than_eddsa() {
    let e = timestamp_error(|sim| {
        // A valid Ed25519 signature whose header claims ES256.
        let key = &sim.spec.timestamp[0];
        let payload = Timestamp::new(
            1,
            T0,
            T0.saturating_add(DAY),
            TargetsMeta::new(1, &sim.current_targets),
        );
        let mut cbor = Vec::new();
        ciborium::ser::into_writer(&payload, &mut cbor).unwrap();
        let signature = CoseSignatureBuilder::new()
            .protected(
                HeaderBuilder::new()
                    .algorithm(iana::Algorithm::ES256)
                    .build(),
            )
            .unprotected(
                HeaderBuilder::new()
                    .key_id(key.id().as_bytes().to_vec())
                    .build(),
            )
            .build();
        CoseSignBuilder::new()
            .payload(cbor)
            .add_created_signature(signature, &[], |data| key.sign(data))
            .build()
            .to_tagged_vec()
            .unwrap()
    })
    .await;
    assert!(
        matches!(&e, MetadataError::Algorithm { found, .. } if found.contains("ES256")),
        "{e:?}"
    );
}

#[tokio::test]
async fn refuses_a_payload_that_is_not_cbor_of_the_role() {
    let e = timestamp_error(|sim| {
        let key = &sim.spec.timestamp[0];
        crate::metadata::envelope::sign_payload(vec![0xa1, 0x64, b't', b'y', b'p'], &[key]).unwrap()
    })
    .await;
    assert!(matches!(e, MetadataError::Payload { .. }), "{e:?}");
}

#[tokio::test]
async fn refuses_trailing_bytes_after_the_payload() {
    let e = timestamp_error(|sim| {
        let key = &sim.spec.timestamp[0];
        let payload = Timestamp::new(
            1,
            T0,
            T0.saturating_add(DAY),
            TargetsMeta::new(1, &sim.current_targets),
        );
        let mut cbor = Vec::new();
        ciborium::ser::into_writer(&payload, &mut cbor).unwrap();
        cbor.push(0x00);
        crate::metadata::envelope::sign_payload(cbor, &[key]).unwrap()
    })
    .await;
    assert!(matches!(e, MetadataError::Payload { .. }), "{e:?}");
}

#[test]
fn trusted_set_refuses_targets_longer_than_the_timestamp_says() {
    // The same attack one layer down, for callers that drive the trusted set themselves
    // (without the updater's fetch cap).
    let sim = Simulator::with_release();
    let mut trusted = crate::metadata::TrustedSet::from_anchor(&sim.anchor()).unwrap();
    trusted
        .update_timestamp("timestamp.cose", &sim.files["timestamp.cose"], T0)
        .unwrap();
    let mut longer = sim.current_targets.clone();
    longer.push(0);

    let result = trusted.update_targets("1.targets.cose", &longer, T0);

    assert_err(
        result,
        |e| matches!(e, MetadataError::TooLarge { limit, .. } if *limit == sim.current_targets.len() as u64),
    );
}
