use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshanics_operator_api::ProviderKind;
use meshanics_shared::reference::Registry;

use super::*;
use crate::cloud::ecr::EcrRole;
use crate::seal::MasterKey;

const SECRET: &str = "ghp_SuperSecretToken123";
const T0: u64 = 1_800_000_000;

fn key() -> MasterKey {
    MasterKey::from_bytes(&[42u8; 32]).unwrap()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn static_conn(registry: &str) -> NewConnection {
    NewConnection {
        registry: registry.into(),
        credentials: ConnectionCredentials::Static {
            username: "robot".into(),
            token: SECRET.into(),
        },
        plain_http: false,
        ca_pem: None,
        storage_hosts: Vec::new(),
        connected_by: "alice".into(),
    }
}

fn anonymous(registry: &str) -> NewConnection {
    NewConnection {
        credentials: ConnectionCredentials::Anonymous,
        ..static_conn(registry)
    }
}

/// A state dir whose store holds `new`, connected at `T0`.
fn stored(new: NewConnection) -> tempfile::TempDir {
    let state = tempfile::tempdir().unwrap();
    Store::open(state.path(), key())
        .unwrap()
        .add(new, at(T0))
        .unwrap();
    state
}

/// Every byte under `dir`, as text, for grepping.
fn everything_under(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.push_str(&everything_under(&path));
        } else {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    out
}

#[test]
fn connects_a_registry_by_pasted_url_and_never_shows_its_secret() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), key()).unwrap();
    let view = store
        .add(
            static_conn("https://github.com/orgs/acme/packages/container/package/app"),
            at(T0),
        )
        .unwrap();
    assert_eq!(view.host, "ghcr.io");
    assert_eq!(view.provider, ProviderKind::Static);
    assert_eq!(view.username.as_deref(), Some("robot"));
    assert_eq!(view.connected_by, "alice");
    assert_eq!(view.connected_at, T0);
    assert!(view.approved);
    let shown = serde_json::to_string(&store.list()).unwrap()
        + &serde_json::to_string(&store.show("ghcr.io").unwrap()).unwrap();
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(!everything_under(state.path()).contains(SECRET));
    assert!(
        !format!(
            "{:?}",
            store
                .connection(&Registry::parse("ghcr.io").unwrap())
                .unwrap()
        )
        .contains(SECRET)
    );
}

#[test]
fn docker_hub_names_are_one_connection() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), key()).unwrap();
    store.add(static_conn("index.docker.io"), at(T0)).unwrap();
    for alias in [
        "docker.io",
        "registry-1.docker.io",
        "https://hub.docker.com/_/nginx",
    ] {
        let err = store.add(static_conn(alias), at(T0)).unwrap_err();
        assert!(
            matches!(err, ConnectionError::Exists { ref host } if host == "docker.io"),
            "{alias}: {err}"
        );
    }
    assert_eq!(store.show("hub.docker.com").unwrap().host, "docker.io");
}

#[test]
fn keeps_the_port_of_a_registry() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), key()).unwrap();
    let view = store
        .add(static_conn("registry.example.com:5000"), at(T0))
        .unwrap();
    assert_eq!(view.host, "registry.example.com:5000");
    assert!(store.show("registry.example.com").is_err());
}

#[test]
fn anonymous_connections_are_not_proxied_until_approved() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), key()).unwrap();
    let registry = Registry::parse("quay.io").unwrap();
    assert!(!store.add(anonymous("quay.io"), at(T0)).unwrap().approved);
    assert!(store.approved(&registry).unwrap().is_none());
    assert!(
        store.connection(&registry).unwrap().is_some(),
        "operators can still browse it"
    );
    assert!(
        store
            .approve("https://quay.io/repository/org/app")
            .unwrap()
            .approved
    );
    let connection = store.approved(&registry).unwrap().unwrap();
    assert_eq!(*connection.credentials, ConnectionCredentials::Anonymous);
}

#[test]
fn removing_a_connection_stops_proxying_at_once() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), key()).unwrap();
    let registry = Registry::parse("ghcr.io").unwrap();
    store.add(static_conn("ghcr.io"), at(T0)).unwrap();
    assert!(store.approved(&registry).unwrap().is_some());
    store.remove("ghcr.io").unwrap();
    assert!(store.approved(&registry).unwrap().is_none());
    assert!(matches!(
        store.remove("ghcr.io"),
        Err(ConnectionError::NotFound { .. })
    ));
    assert!(Store::open(state.path(), key()).unwrap().list().is_empty());
}

#[test]
fn unapproving_a_connection_stops_proxying_at_once_keeps_it_and_survives_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), key()).unwrap();
    let registry = Registry::parse("ghcr.io").unwrap();
    store.add(static_conn("ghcr.io"), at(T0)).unwrap();
    assert!(store.approved(&registry).unwrap().is_some());

    let operator = Actor {
        uid: Some(1000),
        pid: Some(7),
    };
    let view = store.unapprove_by("ghcr.io", &operator).unwrap();
    assert!(!view.approved);
    assert!(store.approved(&registry).unwrap().is_none());
    assert!(
        store.connection(&registry).unwrap().is_some(),
        "the connection stays, for browsing and a later approve"
    );
    // The withdrawn approval is on disk, authenticated: a restart does not bring it back.
    let reopened = Store::open(state.path(), key()).unwrap();
    assert!(reopened.approved(&registry).unwrap().is_none());
    assert!(!reopened.show("ghcr.io").unwrap().approved);

    reopened.approve("ghcr.io").unwrap();
    assert!(reopened.approved(&registry).unwrap().is_some());
    assert!(matches!(
        reopened.unapprove("quay.io"),
        Err(ConnectionError::NotFound { .. })
    ));
    let actions: Vec<(String, String)> = reopened
        .audit(10)
        .unwrap()
        .into_iter()
        .map(|entry| (entry.action, entry.operator))
        .collect();
    assert_eq!(
        actions,
        [
            ("connect".to_owned(), "alice (the facade itself)".to_owned()),
            ("unapprove".to_owned(), "uid 1000 pid 7".to_owned()),
            ("approve".to_owned(), "the facade itself".to_owned()),
        ]
    );
}

#[test]
fn survives_a_restart_with_credentials_intact() {
    let state = stored(static_conn("ghcr.io"));
    let store = Store::open(state.path(), key()).unwrap();
    let connection = store
        .approved(&Registry::parse("ghcr.io").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        *connection.credentials,
        ConnectionCredentials::Static {
            username: "robot".into(),
            token: SECRET.into()
        }
    );
}

#[test]
fn a_record_moved_to_another_host_fails_to_open() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), key()).unwrap();
    store.add(static_conn("ghcr.io"), at(T0)).unwrap();
    let dir = state.path().join("connections");
    let record = std::fs::read_to_string(dir.join("ghcr.io.json")).unwrap();
    std::fs::remove_file(dir.join("ghcr.io.json")).unwrap();
    std::fs::write(
        dir.join("quay.io.json"),
        record.replace("\"ghcr.io\"", "\"quay.io\""),
    )
    .unwrap();
    let err = Store::open(state.path(), key()).unwrap_err();
    assert!(
        matches!(err, ConnectionError::Unopenable { ref path, .. } if path.ends_with("quay.io.json")),
        "{err}"
    );
}

#[test]
fn refuses_incomplete_or_malformed_credentials() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), key()).unwrap();
    let mut empty = static_conn("ghcr.io");
    empty.credentials = ConnectionCredentials::Static {
        username: "robot".into(),
        token: String::new(),
    };
    assert!(matches!(
        store.add(empty, at(T0)),
        Err(ConnectionError::InvalidCredentials { .. })
    ));
    let mut gcp = static_conn("europe-docker.pkg.dev");
    gcp.credentials = ConnectionCredentials::Gcp {
        key_json: r#"{"type":"service_account","client_email":"a@b","private_key":"nope","token_uri":"https://x"}"#.into(),
    };
    let err = store.add(gcp, at(T0)).unwrap_err();
    assert!(err.to_string().contains("private_key"), "{err}");
    let mut ecr = static_conn("123.dkr.ecr.eu-west-1.amazonaws.com");
    ecr.credentials = ConnectionCredentials::Ecr(EcrRole {
        role_arn: "not-an-arn".into(),
        external_id: None,
        region: "eu-west-1".into(),
    });
    assert!(store.add(ecr, at(T0)).is_err());
    assert!(matches!(
        store.add(static_conn("bad host"), at(T0)),
        Err(ConnectionError::InvalidRegistry(_))
    ));
    assert!(store.list().is_empty(), "nothing half-written");
}

#[test]
fn seals_an_ecr_role_configuration() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), key()).unwrap();
    let role = EcrRole {
        role_arn: "arn:aws:iam::123456789012:role/meshanics-pull".into(),
        external_id: Some("ext-id-5ecret".into()),
        region: "eu-west-1".into(),
    };
    let mut new = static_conn("123456789012.dkr.ecr.eu-west-1.amazonaws.com");
    new.credentials = ConnectionCredentials::Ecr(role.clone());
    store.add(new, at(T0)).unwrap();
    assert!(!everything_under(state.path()).contains("ext-id-5ecret"));
    let registry = Registry::parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com").unwrap();
    assert_eq!(
        *store.approved(&registry).unwrap().unwrap().credentials,
        ConnectionCredentials::Ecr(role)
    );
}

#[test]
fn record_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let state = stored(static_conn("ghcr.io"));
    let mode = std::fs::metadata(state.path().join("connections/ghcr.io.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

mod sealing;
