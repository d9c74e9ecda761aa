//! The format (envelope layout, payload rules, keys), target matching, and persistence.

use ciborium::Value;

use super::simulator::{DAY, Simulator, T0};
use crate::metadata::envelope::{Envelope, sign_payload};
use crate::metadata::fetch::{FetchError, read_capped};
use crate::metadata::rollout::{Rollout, RolloutError};
use crate::metadata::{
    KeyId, MetadataError, PublicKey, Role, RoleType, Selectors, SigningKey, TargetError,
    TargetName, TargetsMeta, Timestamp, TrustedStore, UnixTime, UpstreamRepository, open, sign,
};
use crate::platform::Platform;

fn timestamp_payload() -> Timestamp {
    Timestamp::new(
        1,
        T0,
        T0.saturating_add(DAY),
        TargetsMeta::from_parts(1, 10, [7; 32]),
    )
}

/// The payload as a CBOR map, to edit fields the types would not let us set.
fn edited(payload: &Timestamp, edit: impl FnOnce(&mut Vec<(Value, Value)>)) -> Vec<u8> {
    let mut value = Value::serialized(payload).unwrap();
    edit(value.as_map_mut().unwrap());
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(&value, &mut bytes).unwrap();
    bytes
}

fn opened_timestamp(sim: &Simulator, payload: Vec<u8>) -> Result<Timestamp, MetadataError> {
    let bytes = sign_payload(payload, &[&sim.spec.timestamp[0]]).unwrap();
    open::<Timestamp>("timestamp.cose", &bytes, &sim.root_payload(&sim.spec, 1))
}

#[test]
fn writes_a_tagged_cose_sign_with_empty_body_headers() {
    let key = SigningKey::from_seed(&[1; 32]);
    let bytes = sign(&timestamp_payload(), &[&key]).unwrap();
    // tag 98, array(4), h'' (protected), {} (unprotected), then the payload bstr.
    assert_eq!(&bytes[..5], &[0xd8, 0x62, 0x84, 0x40, 0xa0]);
    let envelope = Envelope::decode("t", &bytes).unwrap();
    assert_eq!(envelope.key_ids(), vec![key.id()]);
}

#[test]
fn writes_signature_headers_as_alg_eddsa_and_kid() {
    let key = SigningKey::from_seed(&[1; 32]);
    let bytes = sign(&timestamp_payload(), &[&key]).unwrap();
    let value: Value = ciborium::de::from_reader(bytes.as_slice()).unwrap();
    let (98, inner) = value.as_tag().map(|(t, v)| (t, v.clone())).unwrap() else {
        panic!("not tag 98")
    };
    let signatures = inner.as_array().unwrap()[3].as_array().unwrap();
    let signature = signatures[0].as_array().unwrap();
    // Protected: bstr of {1: -8}.
    assert_eq!(signature[0].as_bytes().unwrap(), &vec![0xa1, 0x01, 0x27]);
    // Unprotected: {4: kid}.
    let unprotected = signature[1].as_map().unwrap();
    assert_eq!(unprotected.len(), 1);
    assert_eq!(unprotected[0].0, Value::Integer(4.into()));
    assert_eq!(
        unprotected[0].1.as_bytes().unwrap(),
        &key.id().as_bytes().to_vec()
    );
    assert_eq!(signature[2].as_bytes().unwrap().len(), 64);
}

#[test]
fn key_id_is_the_sha256_of_the_raw_public_key() {
    // RFC 8032, section 7.1, test 1.
    let seed: [u8; 32] =
        hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap()
            .try_into()
            .unwrap();
    let key = SigningKey::from_seed(&seed);
    let public = hex::encode(key.public().as_bytes());
    assert_eq!(
        public,
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    use sha2::Digest as _;
    let expected: [u8; 32] = sha2::Sha256::digest(key.public().as_bytes()).into();
    assert_eq!(key.id(), KeyId::from_slice(&expected).unwrap());
}

#[test]
fn key_files_round_trip_through_pkcs8_and_spki_pem() {
    let key = SigningKey::generate().unwrap();
    let private = key.to_pem().unwrap();
    let public = key.public().to_pem().unwrap();
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert_eq!(SigningKey::from_pem(&private, "k").unwrap().id(), key.id());
    assert_eq!(PublicKey::from_pem(&public, "k").unwrap(), key.public());
    assert!(matches!(
        SigningKey::from_pem(&public, "k.pub"),
        Err(MetadataError::Key { what, .. }) if what == "k.pub"
    ));
}

#[test]
fn opens_a_timestamp_signed_by_its_key() {
    let sim = Simulator::new();
    let payload = timestamp_payload();
    let mut cbor = Vec::new();
    ciborium::ser::into_writer(&payload, &mut cbor).unwrap();
    assert_eq!(opened_timestamp(&sim, cbor).unwrap(), payload);
}

#[test]
fn refuses_a_spec_version_other_than_1() {
    let sim = Simulator::new();
    let bytes = edited(&timestamp_payload(), |map| {
        for (k, v) in map.iter_mut() {
            if k.as_text() == Some("spec_version") {
                *v = Value::Integer(2.into());
            }
        }
    });
    assert!(matches!(
        opened_timestamp(&sim, bytes),
        Err(MetadataError::SpecVersion { found: 2, .. })
    ));
}

#[test]
fn refuses_unknown_payload_fields() {
    let sim = Simulator::new();
    let bytes = edited(&timestamp_payload(), |map| {
        map.push((Value::Text("extra".into()), Value::Bool(true)));
    });
    assert!(matches!(
        opened_timestamp(&sim, bytes),
        Err(MetadataError::Payload { .. })
    ));
}

#[test]
fn refuses_a_payload_without_a_type() {
    let sim = Simulator::new();
    let bytes = edited(&timestamp_payload(), |map| {
        map.retain(|(k, _)| k.as_text() != Some("type"));
    });
    assert!(matches!(
        opened_timestamp(&sim, bytes),
        Err(MetadataError::Payload { .. })
    ));
}

#[test]
fn refuses_a_root_whose_threshold_exceeds_its_keys() {
    let mut sim = Simulator::new();
    let mut spec = sim.spec.clone();
    spec.targets_threshold = 2;
    let payload = sim.root_payload(&spec, 2);
    let bytes = sign(&payload, &[&spec.root[0]]).unwrap();
    let result = crate::metadata::open_root("2.root.cose", &bytes, None);
    assert!(
        matches!(&result, Err(MetadataError::Invalid { role: RoleType::Root, reason, .. }) if reason.contains("threshold 2")),
        "{result:?}"
    );
    let _ = sim.key();
}

#[test]
fn refuses_targets_with_a_duplicate_name() {
    let mut sim = Simulator::new();
    let a = sim.entry("app", b"one");
    let b = sim.entry("app", b"two");
    let bytes = sim.sign_targets(1, T0.saturating_add(DAY), vec![a, b]);
    let root = sim.root_payload(&sim.spec, 1);
    let result = open::<crate::metadata::Targets>("1.targets.cose", &bytes, &root);
    assert!(
        matches!(&result, Err(MetadataError::Invalid { reason, .. }) if reason.contains("used twice")),
        "{result:?}"
    );
}

#[test]
fn target_names_are_safe_file_names() {
    assert!(TargetName::parse("edge-app_1.2").is_ok());
    for bad in ["", "../etc", "a/b", ".hidden", "-flag", &"a".repeat(129)] {
        assert!(TargetName::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn upstream_repositories_must_be_in_normalized_form() {
    let repo = UpstreamRepository::parse("ghcr.io/org/app").unwrap();
    assert_eq!(repo.registry().as_str(), "ghcr.io");
    assert_eq!(repo.repository().as_str(), "org/app");
    assert!(UpstreamRepository::parse("docker.io/library/nginx").is_ok());
    for bad in [
        "nginx",
        "ghcr.io/org/app:v1",
        "index.docker.io/library/nginx",
        "GHCR.io/Org/app",
    ] {
        assert!(UpstreamRepository::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn refused_names_and_repositories_say_what_was_refused_and_why() {
    assert_eq!(
        TargetName::parse("../etc").unwrap_err(),
        TargetError::Name {
            name: "../etc".into()
        }
    );
    assert_eq!(
        UpstreamRepository::parse("ghcr.io/org/app:v1").unwrap_err(),
        TargetError::RepositoryPinned {
            input: "ghcr.io/org/app:v1".into()
        }
    );
    let err = UpstreamRepository::parse("nginx").unwrap_err();
    assert_eq!(
        err,
        TargetError::RepositoryNotNormalized {
            input: "nginx".into(),
            normalized: "docker.io/library/nginx".into()
        }
    );
    assert_eq!(
        err.to_string(),
        r#"repository "nginx" is not in normalized form; write "docker.io/library/nginx""#
    );
    let err = UpstreamRepository::parse("GHCR.io/Org/app").unwrap_err();
    assert!(
        matches!(&err, TargetError::Reference(e) if e.input == "GHCR.io/Org/app"),
        "{err:?}"
    );
}

#[test]
fn a_target_entry_that_breaks_a_rule_is_refused_with_the_rule() {
    let mut sim = Simulator::new();
    let good = sim.entry("app", b"1");
    assert_eq!(good.check(), Ok(()));

    let mut entry = good.clone();
    entry.media_type = "text/plain".into();
    assert_eq!(
        entry.check(),
        Err(TargetError::MediaType {
            media_type: "text/plain".into()
        })
    );
    let mut entry = good.clone();
    entry.size = 0;
    assert!(matches!(
        entry.check(),
        Err(TargetError::Size { size: 0, .. })
    ));
    let mut entry = good.clone();
    entry.selectors.hardware_class = Some("a/b".into());
    assert_eq!(
        entry.check(),
        Err(TargetError::HardwareClass {
            class: "a/b".into()
        })
    );
    let mut entry = good;
    entry.custom = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
    assert_eq!(
        entry.check(),
        Err(TargetError::CustomFields { count: 65, max: 64 })
    );
    assert_eq!(
        entry.check().unwrap_err().to_string(),
        "more than 64 custom fields"
    );

    let targets = crate::metadata::Targets::new(1, T0, T0.saturating_add(DAY), vec![entry]);
    let err = targets.check("7.targets.cose").unwrap_err();
    assert_eq!(
        err.to_string(),
        "7.targets.cose: invalid targets metadata: target app: more than 64 custom fields"
    );
    assert!(
        matches!(&err, MetadataError::InvalidTarget { name, source, .. }
            if name == "app" && matches!(**source, TargetError::CustomFields { .. })),
        "{err:?}"
    );
}

#[test]
fn selects_the_entries_for_a_device_class_and_platform() {
    let mut sim = Simulator::new();
    let arm64 = Platform::parse("linux/arm64").unwrap();
    let amd64 = Platform::parse("linux/amd64").unwrap();
    let mut any = sim.entry("any", b"1");
    any.selectors = Selectors::default();
    let mut gateway_arm = sim.entry("gateway-arm", b"2");
    gateway_arm.selectors = Selectors {
        hardware_class: Some("gateway".into()),
        platform: Some(arm64.clone()),
    };
    let mut sensor = sim.entry("sensor", b"3");
    sensor.selectors.hardware_class = Some("sensor".into());
    let targets = crate::metadata::Targets::new(
        1,
        T0,
        T0.saturating_add(DAY),
        vec![any, gateway_arm, sensor],
    );

    let names = |class: &str, platform: &Platform| {
        targets
            .matching(class, platform)
            .map(|e| e.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names("gateway", &arm64), ["any", "gateway-arm"]);
    assert_eq!(names("gateway", &amd64), ["any"]);
    assert_eq!(names("sensor", &amd64), ["any", "sensor"]);
}

#[test]
fn pins_json_decodes_into_target_entries() {
    let json = r#"[{"name": "app", "repository": "ghcr.io/org/app",
        "digest": "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
        "size": 525, "media_type": "application/vnd.oci.image.index.v1+json",
        "selectors": {"hardware_class": "gateway", "platform": "linux/arm64"},
        "custom": {"channel": "stable"}}]"#;
    let entries: Vec<crate::metadata::TargetEntry> = serde_json::from_str(json).unwrap();
    assert_eq!(
        entries[0].selectors.platform,
        Some(Platform::parse("linux/arm64").unwrap())
    );
    assert_eq!(entries[0].custom["channel"], "stable");
    assert!(entries[0].check().is_ok());
}

#[test]
fn the_apply_field_is_optional_and_an_entry_without_it_encodes_as_before_it_existed() {
    let json = r#"{"name": "model", "repository": "ghcr.io/org/model",
        "digest": "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
        "size": 525, "media_type": "application/vnd.oci.image.manifest.v1+json"}"#;
    let mut entry: crate::metadata::TargetEntry = serde_json::from_str(json).unwrap();
    assert_eq!(entry.apply, None);
    let mut old = Vec::new();
    ciborium::into_writer(&entry, &mut old).unwrap();
    let keys = |bytes: &[u8]| -> Vec<String> {
        let value: Value = ciborium::from_reader(bytes).unwrap();
        value
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_text().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        keys(&old),
        ["name", "repository", "digest", "size", "media_type"]
    );

    entry.apply = Some(crate::metadata::ApplyMode::Files);
    let mut new = Vec::new();
    ciborium::into_writer(&entry, &mut new).unwrap();
    assert_eq!(keys(&new).last().map(String::as_str), Some("apply"));
    let back: crate::metadata::TargetEntry = ciborium::from_reader(&new[..]).unwrap();
    assert_eq!(back.apply, Some(crate::metadata::ApplyMode::Files));

    let bad = json.replace("\"size\"", "\"apply\": \"copy\", \"size\"");
    assert!(serde_json::from_str::<crate::metadata::TargetEntry>(&bad).is_err());
}

fn waves() -> Rollout {
    crate::metadata::rollout::example(T0)
}

#[test]
fn a_rollout_is_a_map_of_start_and_waves_and_an_entry_without_one_encodes_as_before() {
    let mut sim = Simulator::new();
    let plain = sim.entry("app", b"1");
    let value = Value::serialized(&plain).unwrap();
    let keys: Vec<&str> = value
        .as_map()
        .unwrap()
        .iter()
        .filter_map(|(k, _)| k.as_text())
        .collect();
    // No `rollout` key: a release without waves is byte-for-byte what older signers wrote,
    // and what older devices read.
    assert_eq!(keys, ["name", "repository", "digest", "size", "media_type"]);

    let mut staged = plain;
    staged.rollout = Some(waves());
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(&staged, &mut bytes).unwrap();
    let value: Value = ciborium::de::from_reader(bytes.as_slice()).unwrap();
    let rollout = value
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_text() == Some("rollout"))
        .map(|(_, v)| v.clone())
        .unwrap();
    let wave = |share: u64, delay: u64| {
        Value::Map(vec![
            (Value::Text("share".into()), Value::Integer(share.into())),
            (Value::Text("delay".into()), Value::Integer(delay.into())),
        ])
    };
    assert_eq!(
        rollout,
        Value::Map(vec![
            (
                Value::Text("start".into()),
                Value::Integer(T0.as_secs().into())
            ),
            (
                Value::Text("waves".into()),
                Value::Array(vec![
                    wave(10_000, 0),
                    wave(100_000, 7200),
                    wave(1_000_000, 86_400)
                ])
            ),
        ])
    );
    let decoded: crate::metadata::TargetEntry =
        ciborium::de::from_reader(bytes.as_slice()).unwrap();
    assert_eq!(decoded, staged);
}

#[test]
fn signed_targets_with_a_malformed_rollout_are_refused_naming_the_target() {
    let mut sim = Simulator::new();
    let root = sim.root_payload(&sim.spec, 1);
    let mut entry = sim.entry("app", b"1");
    let mut bad = waves();
    bad.waves[1].share = 5_000;
    entry.rollout = Some(bad);
    let bytes = sim.sign_targets(1, T0.saturating_add(DAY), vec![entry.clone()]);

    let err = open::<crate::metadata::Targets>("1.targets.cose", &bytes, &root).unwrap_err();

    assert_eq!(
        err.to_string(),
        "1.targets.cose: invalid targets metadata: target app: rollout wave 2: share 5000 is not above the previous wave's 10000"
    );
    assert!(
        matches!(&err, MetadataError::InvalidTarget { name, source, .. }
            if name == "app" && matches!(**source, TargetError::Rollout(RolloutError::ShareNotIncreasing { wave: 2, .. }))),
        "{err:?}"
    );
    // Unknown keys inside a rollout are refused like anywhere else in a payload.
    entry.rollout = Some(waves());
    let mut value = Value::serialized(&crate::metadata::Targets::new(
        1,
        T0,
        T0.saturating_add(DAY),
        vec![entry],
    ))
    .unwrap();
    let targets = value
        .as_map_mut()
        .unwrap()
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some("targets"))
        .unwrap();
    let first = &mut targets.1.as_array_mut().unwrap()[0];
    let rollout = first
        .as_map_mut()
        .unwrap()
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some("rollout"))
        .unwrap();
    rollout
        .1
        .as_map_mut()
        .unwrap()
        .push((Value::Text("jitter".into()), Value::Integer(1.into())));
    let mut payload = Vec::new();
    ciborium::ser::into_writer(&value, &mut payload).unwrap();
    let bytes = sign_payload(payload, &[&sim.spec.targets[0]]).unwrap();
    let err = open::<crate::metadata::Targets>("1.targets.cose", &bytes, &root).unwrap_err();
    assert!(
        matches!(&err, MetadataError::Payload { reason, .. } if reason.contains("jitter")),
        "{err:?}"
    );
}

#[test]
fn a_rollout_changed_after_signing_fails_the_signature() {
    let mut sim = Simulator::new();
    let root = sim.root_payload(&sim.spec, 1);
    let mut entry = sim.entry("app", b"1");
    entry.rollout = Some(waves());
    let mut bytes = sim.sign_targets(1, T0.saturating_add(DAY), vec![entry]);
    assert!(open::<crate::metadata::Targets>("1.targets.cose", &bytes, &root).is_ok());

    // Move the start a day earlier (a facade opening every wave at once): "start", then
    // its value as a 4- or 8-byte unsigned integer.
    let at = bytes.windows(6).position(|w| w == b"\x65start").unwrap();
    let mut start: Value = ciborium::de::from_reader(&bytes[at + 6..]).unwrap();
    let old = start.as_integer().map(u64::try_from).unwrap().unwrap();
    let mut encoded = Vec::new();
    ciborium::ser::into_writer(&start, &mut encoded).unwrap();
    start = Value::Integer((old - DAY.as_secs()).into());
    let mut replacement = Vec::new();
    ciborium::ser::into_writer(&start, &mut replacement).unwrap();
    assert_eq!(encoded.len(), replacement.len());
    bytes[at + 6..at + 6 + encoded.len()].copy_from_slice(&replacement);

    let err = open::<crate::metadata::Targets>("1.targets.cose", &bytes, &root).unwrap_err();
    assert!(
        matches!(err, MetadataError::BelowThreshold { valid: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn pins_json_carries_a_rollout_as_unix_seconds_and_millionths() {
    let json = r#"[{"name": "app", "repository": "ghcr.io/org/app",
        "digest": "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
        "size": 525, "media_type": "application/vnd.oci.image.index.v1+json",
        "rollout": {"start": 1795331972, "waves": [
            {"share": 10000, "delay": 0}, {"share": 1000000, "delay": 86400}]}}]"#;
    let entries: Vec<crate::metadata::TargetEntry> = serde_json::from_str(json).unwrap();
    let rollout = entries[0].rollout.as_ref().unwrap();
    assert_eq!(rollout.start, UnixTime::from_secs(1_795_331_972));
    assert_eq!(rollout.waves.len(), 2);
    assert!(entries[0].check().is_ok());
}

#[tokio::test]
async fn an_equal_timestamp_version_means_nothing_new() {
    let mut sim = Simulator::with_release();
    let mut device = sim.device();
    let first = device.update(&mut sim, T0).await.unwrap();
    assert!(first.timestamp_changed && first.targets_changed);

    let second = device.update(&mut sim, T0).await.unwrap();

    assert!(!second.timestamp_changed);
    assert!(!second.targets_changed);
    assert_eq!(
        sim.requests
            .iter()
            .filter(|r| *r == "1.targets.cose")
            .count(),
        1
    );
}

#[tokio::test]
async fn persists_trusted_metadata_and_keeps_rollback_protection_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::with_release();
    let old_timestamp = sim.files["timestamp.cose"].clone();
    sim.publish_timestamp();
    let store = TrustedStore::open(dir.path().join("trust")).unwrap();
    let mut device = crate::metadata::Updater::with_store(&sim.anchor(), store.clone()).unwrap();
    device.update(&mut sim, T0).await.unwrap();
    drop(device);

    let mut restarted = crate::metadata::Updater::with_store(&sim.anchor(), store).unwrap();
    assert_eq!(restarted.trusted().timestamp().unwrap().version(), 2);
    assert_eq!(restarted.trusted().targets().unwrap().version(), 1);
    sim.serve("timestamp.cose", old_timestamp);
    let result = restarted.update(&mut sim, T0).await;

    assert!(matches!(
        result,
        Err(MetadataError::Rollback {
            role: RoleType::Timestamp,
            ..
        })
    ));
}

#[tokio::test]
async fn restores_the_offline_and_online_known_times_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::with_release();
    sim.now = T0.saturating_add(DAY);
    sim.publish_timestamp();
    let store = TrustedStore::open(dir.path()).unwrap();
    let mut device = crate::metadata::Updater::with_store(&sim.anchor(), store.clone()).unwrap();
    // A device without a real-time clock: all it knows of the time comes from metadata.
    device.update(&mut sim, UnixTime::EPOCH).await.unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    // The root and the targets were issued at T0, the timestamp a day later.
    assert_eq!(read("offline-known-time"), format!("{}\n", T0.as_secs()));
    assert_eq!(
        read("online-known-time"),
        format!("{}\n", sim.now.as_secs())
    );
    assert!(!dir.path().join("latest-known-time").exists());

    let restarted = crate::metadata::Updater::with_store(&sim.anchor(), store).unwrap();

    assert_eq!(restarted.trusted().offline_known(), T0);
    assert_eq!(restarted.trusted().online_known(), sim.now);
    assert_eq!(restarted.trusted().timestamp_time(UnixTime::EPOCH), T0);
    assert_eq!(restarted.trusted().effective_time(UnixTime::EPOCH), sim.now);
}

#[tokio::test]
async fn restores_the_known_times_even_without_the_metadata_they_came_from() {
    // The stored times, not just the stored files, keep the clock from going back: here the
    // files are gone (a targets key rotation drops the targets, for one) and the times stay.
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::with_release();
    let store = TrustedStore::open(dir.path()).unwrap();
    let later = T0.saturating_add(10 * DAY);
    store
        .write_known_times(later, T0.saturating_add(20 * DAY))
        .unwrap();

    let restarted = crate::metadata::Updater::with_store(&sim.anchor(), store).unwrap();

    assert_eq!(restarted.trusted().offline_known(), later);
    // Without trusted targets the online-known time is capped by the root's expiry only.
    assert_eq!(
        restarted.trusted().online_known(),
        T0.saturating_add(20 * DAY)
    );
}

#[test]
fn directory_fetch_refuses_files_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("timestamp.cose");
    std::fs::write(&path, [0u8; 100]).unwrap();
    assert_eq!(read_capped(&path, 100).unwrap().len(), 100);
    assert!(matches!(
        read_capped(&path, 99),
        Err(FetchError::TooLarge { limit: 99 })
    ));
    assert!(matches!(
        read_capped(&dir.path().join("missing"), 99),
        Err(FetchError::NotFound)
    ));
    // A folder cannot be read as a file: the error names the path.
    match read_capped(dir.path(), 99) {
        Err(FetchError::Io { path, .. }) => assert_eq!(path, dir.path()),
        other => panic!("expected an I/O error naming the path, got {other:?}"),
    }
}

#[tokio::test]
async fn walks_the_chain_from_the_anchor_again_when_the_stored_root_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::with_release();
    let spec = sim.spec.clone();
    sim.publish_root(spec);
    let store = TrustedStore::open(dir.path()).unwrap();
    store.write("2.root.cose", b"not a root").unwrap();
    store.write("root.cose", b"not a root either").unwrap();

    let mut device = crate::metadata::Updater::with_store(&sim.anchor(), store).unwrap();
    assert_eq!(device.trusted().root().version(), 1);
    let report = device.update(&mut sim, T0).await.unwrap();

    assert_eq!(report.root_version, 2);
    let stored = std::fs::read(dir.path().join("2.root.cose")).unwrap();
    assert_eq!(stored, sim.files["2.root.cose"]);
    assert!(!dir.path().join("root.cose").exists());
}

#[tokio::test]
async fn restores_rotated_roots_by_walking_the_stored_chain_from_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::with_release();
    for _ in 0..2 {
        let mut spec = sim.spec.clone();
        spec.root = vec![sim.key()];
        sim.publish_root(spec);
    }
    let store = TrustedStore::open(dir.path()).unwrap();
    let mut device = crate::metadata::Updater::with_store(&sim.anchor(), store.clone()).unwrap();
    device.update(&mut sim, T0).await.unwrap();
    drop(device);
    for version in [2, 3] {
        let name = format!("{version}.root.cose");
        assert_eq!(
            std::fs::read(dir.path().join(&name)).unwrap(),
            sim.files[&name]
        );
    }

    let restarted = crate::metadata::Updater::with_store(&sim.anchor(), store).unwrap();

    assert_eq!(restarted.trusted().root().version(), 3);
    assert_eq!(restarted.trusted().root_bytes(), sim.files["3.root.cose"]);
    assert_eq!(restarted.trusted().targets().unwrap().version(), 1);
}

#[tokio::test]
async fn keeps_the_single_root_of_an_older_store_when_it_chains_from_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::with_release();
    let mut spec = sim.spec.clone();
    spec.root = vec![sim.key()];
    sim.publish_root(spec);
    // What an agent from before the stored chain leaves after one rotation.
    let store = TrustedStore::open(dir.path()).unwrap();
    store.write("root.cose", &sim.files["2.root.cose"]).unwrap();

    let restarted = crate::metadata::Updater::with_store(&sim.anchor(), store).unwrap();

    assert_eq!(restarted.trusted().root().version(), 2);
    // From now on it is a link of the chain, under its own name.
    let stored = std::fs::read(dir.path().join("2.root.cose")).unwrap();
    assert_eq!(stored, sim.files["2.root.cose"]);
    assert!(!dir.path().join("root.cose").exists());
}

#[tokio::test]
async fn reads_an_old_latest_known_time_file_as_the_online_known_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::with_release();
    let store = TrustedStore::open(dir.path()).unwrap();
    let mut device = crate::metadata::Updater::with_store(&sim.anchor(), store.clone()).unwrap();
    device.update(&mut sim, UnixTime::EPOCH).await.unwrap();
    drop(device);
    // What an agent from before the two clocks leaves behind after a timestamp signed far in
    // the future pushed its clock: one file, and no other.
    for name in ["offline-known-time", "online-known-time"] {
        std::fs::remove_file(dir.path().join(name)).ok();
    }
    std::fs::write(
        dir.path().join("latest-known-time"),
        format!("{}\n", u64::MAX - 1),
    )
    .unwrap();

    let mut restarted = crate::metadata::Updater::with_store(&sim.anchor(), store).unwrap();

    // Read as the online-known time, the pushed value is capped at the trusted targets'
    // expiry; the offline-known time is recomputed from the stored root and targets.
    let targets_expire = T0.saturating_add(30 * DAY);
    assert_eq!(restarted.trusted().online_known(), targets_expire);
    assert_eq!(restarted.trusted().offline_known(), T0);
    assert_eq!(
        restarted.trusted().effective_time(UnixTime::EPOCH),
        targets_expire
    );
    // So the device takes the next release, and writes the clocks in the new files.
    sim.now = T0.saturating_add(std::time::Duration::from_secs(3600));
    let entry = sim.entry("app", b"manifest two");
    sim.publish_release(vec![entry]);
    let report = restarted.update(&mut sim, UnixTime::EPOCH).await.unwrap();
    assert_eq!(report.targets_version, 2);
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(
        read("offline-known-time"),
        format!("{}\n", sim.now.as_secs())
    );
    assert_eq!(
        read("online-known-time"),
        format!("{}\n", targets_expire.as_secs())
    );
    assert!(!dir.path().join("latest-known-time").exists());
}
