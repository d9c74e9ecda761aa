//! Every public field of a record is authenticated under the master key, the old format is
//! migrated once, and opened secrets are kept, not reopened per request.

use serde_json::Value;

use super::*;
use crate::seal::SealError;

/// A static `ghcr.io` record as the first format wrote it (the secret sealed with only the
/// host as associated data), under `key()`: robot / `SECRET`, connected by alice at `T0`.
const LEGACY_STATIC: &str = r#"{
  "host": "ghcr.io",
  "provider": "static",
  "username": "robot",
  "sealed": "v1:zVoFAL6mNISVwHCq7x9YHrdc2bnPV+FkBy3E592vqUy3WTa6Z1KBsO1N7m8rS2uYkMof",
  "plain_http": false,
  "connected_by": "alice",
  "connected_at": 1800000000,
  "approved": true
}"#;

/// An anonymous `quay.io` record as the first format wrote it: nothing sealed at all.
const LEGACY_ANONYMOUS: &str = r#"{
  "host": "quay.io",
  "provider": "anonymous",
  "plain_http": false,
  "connected_by": "alice",
  "connected_at": 1800000000,
  "approved": false
}"#;

/// A connection's opened credentials (however the connection holds them).
fn credentials(connection: &Connection) -> &ConnectionCredentials {
    &connection.credentials
}

fn record_path(state: &std::path::Path, host: &str) -> std::path::PathBuf {
    state.join("connections").join(format!("{host}.json"))
}

/// Rewrites one field of a stored record, as someone without the master key could.
fn edit(state: &std::path::Path, host: &str, field: &str, value: Value) {
    let path = record_path(state, host);
    let mut record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record[field] = value;
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
}

/// The error opening the store (or, failing that, reading `host`'s connection) gives.
fn refusal(state: &std::path::Path, host: &str) -> ConnectionError {
    match Store::open(state, key()) {
        Err(err) => err,
        Ok(store) => match store.connection(&Registry::parse(host).unwrap()) {
            Err(err) => err,
            Ok(connection) => panic!("the altered record opened: {connection:?}"),
        },
    }
}

fn assert_unopenable(err: &ConnectionError, state: &std::path::Path, host: &str) {
    assert!(
        matches!(err, ConnectionError::Unopenable { path, source: SealError::Open { host: h } }
            if *path == record_path(state, host) && h == host),
        "{err}"
    );
}

/// Stores `new`, sets `field` of its record file to `value`, and checks the store refuses it.
fn assert_edit_refused(new: NewConnection, field: &str, value: Value) {
    let host = Registry::parse(&new.registry).unwrap().as_str().to_owned();
    let state = stored(new);
    edit(state.path(), &host, field, value);
    assert_unopenable(&refusal(state.path(), &host), state.path(), &host);
}

#[test]
fn flipping_plain_http_in_a_stored_record_makes_it_refuse_to_open() {
    assert_edit_refused(static_conn("ghcr.io"), "plain_http", Value::Bool(true));
}

#[test]
fn planting_a_ca_in_a_stored_record_makes_it_refuse_to_open() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    assert_edit_refused(static_conn("ghcr.io"), "ca_pem", Value::String(pem.into()));
}

#[test]
fn changing_a_storage_host_in_a_stored_record_makes_it_refuse_to_open() {
    let listed = NewConnection {
        storage_hosts: vec!["blobs.example".into()],
        ..static_conn("ghcr.io")
    };
    // The same count, another host: only the hosts themselves tell the records apart.
    assert_edit_refused(
        listed,
        "storage_hosts",
        Value::Array(vec![Value::String("169.254.169.254".into())]),
    );
}

#[test]
fn approving_an_anonymous_record_by_editing_its_file_makes_it_refuse_to_open() {
    assert_edit_refused(anonymous("quay.io"), "approved", Value::Bool(true));
}

#[test]
fn changing_who_connected_a_record_makes_it_refuse_to_open() {
    assert_edit_refused(
        static_conn("ghcr.io"),
        "connected_by",
        Value::String("mallory".into()),
    );
}

#[test]
fn an_operator_approval_keeps_the_record_openable() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), key()).unwrap();
    store.add(anonymous("quay.io"), at(T0)).unwrap();
    store.approve("quay.io").unwrap();
    let store = Store::open(state.path(), key()).unwrap();
    assert!(
        store
            .approved(&Registry::parse("quay.io").unwrap())
            .unwrap()
            .is_some()
    );
}

#[test]
fn records_in_the_old_format_are_migrated_at_start() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("connections");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ghcr.io.json"), LEGACY_STATIC).unwrap();
    std::fs::write(dir.join("quay.io.json"), LEGACY_ANONYMOUS).unwrap();

    let store = Store::open(state.path(), key()).unwrap();
    let ghcr = Registry::parse("ghcr.io").unwrap();
    assert_eq!(
        credentials(&store.approved(&ghcr).unwrap().unwrap()),
        &ConnectionCredentials::Static {
            username: "robot".into(),
            token: SECRET.into()
        }
    );
    assert!(!store.show("quay.io").unwrap().approved);
    for host in ["ghcr.io", "quay.io"] {
        let record: Value =
            serde_json::from_slice(&std::fs::read(record_path(state.path(), host)).unwrap())
                .unwrap();
        let sealed = record["sealed"].as_str().unwrap_or_default();
        assert!(sealed.starts_with("v2:"), "{host}: {record}");
    }
    assert!(!everything_under(state.path()).contains(SECRET));

    // Migrated records are authenticated like new ones.
    edit(state.path(), "quay.io", "approved", Value::Bool(true));
    assert_unopenable(&refusal(state.path(), "quay.io"), state.path(), "quay.io");
}

#[test]
fn a_record_in_the_old_format_is_refused_once_the_store_was_migrated() {
    let state = stored(static_conn("ghcr.io"));
    // An old backup of the record, restored over the migrated one, with plain HTTP turned on.
    let restored = LEGACY_STATIC.replace("\"plain_http\": false", "\"plain_http\": true");
    std::fs::write(record_path(state.path(), "ghcr.io"), restored).unwrap();
    let err = refusal(state.path(), "ghcr.io");
    assert!(
        matches!(&err, ConnectionError::Legacy { path, host }
            if *path == record_path(state.path(), "ghcr.io") && host == "ghcr.io"),
        "{err}"
    );
}

#[test]
fn a_store_opened_with_another_master_key_refuses_to_start_naming_the_record() {
    let state = stored(static_conn("ghcr.io"));
    let Err(err) = Store::open(state.path(), MasterKey::from_bytes(&[1u8; 32]).unwrap()) else {
        panic!("the store opened under another master key");
    };
    assert_unopenable(&err, state.path(), "ghcr.io");
    let shown = err.to_string();
    assert!(
        shown.contains("ghcr.io.json") && shown.contains("another master key"),
        "{shown}"
    );
}

#[test]
fn connection_secrets_are_unsealed_once_not_per_request() {
    let state = stored(static_conn("ghcr.io"));
    let store = Store::open(state.path(), key()).unwrap();
    let registry = Registry::parse("ghcr.io").unwrap();
    for _ in 0..100 {
        assert!(store.approved(&registry).unwrap().is_some());
    }
    assert!(store.unseals() <= 1, "{} unseals", store.unseals());
}
