//! Facade replicas on one PostgreSQL (Debian's, started by the test): a change on one is seen
//! by the others within a second, the schema migrates from empty and from the previous
//! version, and an outage leaves the replicas serving what they had while operator writes
//! fail naming the database.
//!
//! The replicas are connection stores opened in-process on the same database with the same
//! master key, as each facade process opens its own; the proxy asks exactly
//! [`Store::approved`] on every device request.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions: a failed setup is a failed test"
)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshanics_facade::config::PostgresConfig;
use meshanics_facade::connections::postgres::{MIGRATIONS, migrate};
use meshanics_facade::connections::{
    Actor, ConnectionCredentials, ConnectionError, NewConnection, Store,
};
use meshanics_facade::seal::MasterKey;
use meshanics_operator_api::{AddRegistry, OperatorClient, OperatorClientError, ProviderKind};
use meshanics_shared::Registry;
use meshanics_shared::devpki::DevCa;
use meshanics_tests::facade::{FacadeFixture, FacadeOptions, device_path};
use meshanics_tests::oci_layout::SampleImage;
use meshanics_tests::postgres::{PostgresServer, USER};
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::skopeo;
use meshanics_tests::tcp_proxy::TcpProxy;
use meshanics_tests::within;

/// The bound the issue sets for a change to reach every replica.
pub(crate) const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

fn settings(server: &PostgresServer) -> PostgresConfig {
    PostgresConfig {
        url: server.url(),
        password_file: None,
        ca_file: None,
        resync_interval: Duration::from_secs(30),
    }
}

fn replica(server: &PostgresServer, state: &tempfile::TempDir) -> Arc<Store> {
    let key = MasterKey::from_bytes(&[9u8; 32]).expect("a 32-byte key");
    Store::open_postgres(state.path(), &settings(server), key).expect("replica opens")
}

fn anonymous(registry: &str) -> NewConnection {
    NewConnection {
        registry: registry.into(),
        credentials: ConnectionCredentials::Anonymous,
        plain_http: true,
        ca_pem: None,
        storage_hosts: Vec::new(),
        connected_by: "alice".into(),
    }
}

fn operator() -> Actor {
    Actor {
        uid: Some(1000),
        pid: Some(4242),
    }
}

fn served(store: &Store, registry: &Registry) -> bool {
    store.approved(registry).expect("store answers").is_some()
}

#[test]
fn a_connection_approved_on_one_replica_is_served_by_the_other_and_its_removal_reaches_both() {
    let server = PostgresServer::start().expect("postgres starts");
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&server, &state_a);
    let b = replica(&server, &state_b);
    let registry = Registry::parse("registry.lan:5000").unwrap();

    a.add_by(
        anonymous("registry.lan:5000"),
        SystemTime::now(),
        &operator(),
    )
    .expect("added on A");
    assert!(
        within(PROPAGATION_BOUND, || b.show("registry.lan:5000").is_ok()),
        "B sees the connection A added"
    );
    assert!(
        !served(&b, &registry),
        "an anonymous connection waits for approval"
    );

    a.approve_by("registry.lan:5000", &operator())
        .expect("approved on A");
    assert!(
        within(PROPAGATION_BOUND, || served(&b, &registry)),
        "B serves what A approved"
    );

    b.remove_by("registry.lan:5000", &operator())
        .expect("removed on B");
    assert!(!served(&b, &registry));
    assert!(
        within(PROPAGATION_BOUND, || !served(&a, &registry)),
        "A refuses what B removed"
    );
    assert!(
        a.add(anonymous("registry.lan:5000"), SystemTime::now())
            .is_ok()
    );
    assert!(
        matches!(
            b.add(anonymous("registry.lan:5000"), SystemTime::now()),
            Err(ConnectionError::Exists { .. })
        ),
        "the database decides who connected first, even before B heard of it"
    );

    let audit = query(
        &server,
        "SELECT operator, action, subject FROM meshanics_audit ORDER BY id",
    );
    let actions: Vec<&str> = audit.iter().map(|row| row[1].as_str()).collect();
    assert_eq!(actions, ["connect", "approve", "remove", "connect"]);
    assert_eq!(audit[0][0], "alice (uid 1000 pid 4242)");
    assert_eq!(audit[1][0], "uid 1000 pid 4242");
    assert_eq!(audit[0][2], "registry.lan:5000");
    // Every replica reads the one log (`meshctl audit`), newest last.
    let from_b = b.audit(2).unwrap();
    let actions: Vec<&str> = from_b.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["remove", "connect"]);
}

#[test]
fn the_database_never_holds_a_plaintext_secret() {
    let server = PostgresServer::start().expect("postgres starts");
    let state = tempfile::tempdir().unwrap();
    let a = replica(&server, &state);
    let secret = "s3cr3t-token-never-stored";
    a.add(
        NewConnection {
            credentials: ConnectionCredentials::Static {
                username: "robot".into(),
                token: secret.into(),
            },
            ..anonymous("ghcr.io")
        },
        SystemTime::now(),
    )
    .expect("added");
    let rows = query(&server, "SELECT host, record FROM meshanics_connections");
    assert_eq!(rows.len(), 1);
    assert!(rows[0][1].contains("\"sealed\""), "the record is sealed");
    assert!(!rows[0][1].contains(secret));

    // A replica with another master key refuses the row at start (exit 64 in the binary).
    let other = MasterKey::from_bytes(&[1u8; 32]).unwrap();
    let refused = Store::open_postgres(state.path(), &settings(&server), other)
        .expect_err("another key does not open the record");
    assert!(
        matches!(refused, ConnectionError::Unopenable { .. }),
        "{refused}"
    );
}

#[test]
fn the_schema_migrates_from_an_empty_database_and_from_the_previous_version() {
    let server = PostgresServer::start().expect("postgres starts");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = connect(&server).await;
        // The previous schema, with a record in it.
        assert_eq!(migrate(&mut client, 1).await.unwrap(), 1);
        client
            .execute(
                "INSERT INTO meshanics_connections (host, record) VALUES ('old.lan', '{}')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(migrate(&mut client, 2).await.unwrap(), 2);
        let row = client
            .query_one("SELECT host, approved_by FROM meshanics_connections", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "old.lan");
        assert_eq!(row.get::<_, Option<String>>(1), None);
        // Applying again changes nothing.
        assert_eq!(migrate(&mut client, 2).await.unwrap(), 2);
        let versions = client
            .query("SELECT version FROM meshanics_schema ORDER BY version", &[])
            .await
            .unwrap();
        let versions: Vec<i32> = versions.iter().map(|r| r.get(0)).collect();
        assert_eq!(versions, [1, 2]);

        // A database migrated by a newer facade is refused, not written to.
        client
            .execute("INSERT INTO meshanics_schema (version) VALUES (99)", &[])
            .await
            .unwrap();
        let refused = migrate(&mut client, MIGRATIONS.len()).await.unwrap_err();
        assert!(refused.contains("newer"), "{refused}");
    });
    // From empty: a replica starting on a fresh database migrates it whole.
    let fresh = PostgresServer::start().expect("postgres starts");
    let state = tempfile::tempdir().unwrap();
    let _replica = replica(&fresh, &state);
    let versions = query(
        &fresh,
        "SELECT version::text FROM meshanics_schema ORDER BY version",
    );
    let all: Vec<Vec<String>> = (1..=MIGRATIONS.len())
        .map(|v| vec![v.to_string()])
        .collect();
    assert_eq!(versions, all);
}

#[test]
fn with_the_database_down_replicas_keep_serving_and_writes_fail_naming_it_then_converge() {
    let mut server = PostgresServer::start().expect("postgres starts");
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&server, &state_a);
    let b = replica(&server, &state_b);
    let kept = Registry::parse("kept.lan").unwrap();
    let gone = Registry::parse("gone.lan").unwrap();
    for registry in ["kept.lan", "gone.lan"] {
        a.add(anonymous(registry), SystemTime::now()).unwrap();
        a.approve(registry).unwrap();
    }
    assert!(within(PROPAGATION_BOUND, || served(&b, &kept) && served(&b, &gone)));

    server.stop();
    assert!(
        within(Duration::from_secs(10), || a.stale() && b.stale()),
        "both replicas notice the outage"
    );
    assert!(
        served(&a, &kept) && served(&b, &gone),
        "devices keep being served"
    );
    let refused = a
        .remove("gone.lan")
        .expect_err("no write without the database");
    assert!(
        matches!(refused, ConnectionError::Database { .. }),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains(&format!("127.0.0.1:{}", server.port())),
        "the error names the database: {refused}"
    );
    assert!(served(&a, &gone), "a failed removal removed nothing");

    server.start_again().expect("postgres starts again");
    assert!(
        within(Duration::from_secs(10), || a.remove("gone.lan").is_ok()),
        "writes work again once the database is back"
    );
    assert!(within(Duration::from_secs(10), || !a.stale() && !b.stale()));
    assert!(
        within(PROPAGATION_BOUND, || !served(&b, &gone)),
        "B converges on the removal made after the outage"
    );
    assert!(served(&b, &kept));
}

#[test]
fn a_replica_whose_database_goes_silent_says_its_state_is_stale_keeps_serving_and_catches_up_once_it_answers()
 {
    let server = PostgresServer::start().expect("postgres starts");
    // A's way to the database: a network that can drop every packet without closing a socket.
    let network = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], server.port()));
    let link = network
        .block_on(TcpProxy::start(upstream, Vec::new()))
        .unwrap();
    let through_link = PostgresConfig {
        url: format!("postgres://{USER}@{}/postgres", link.addr()),
        resync_interval: Duration::from_secs(1),
        ..settings(&server)
    };
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = MasterKey::from_bytes(&[9u8; 32]).unwrap();
    let a = Store::open_postgres(state_a.path(), &through_link, key).unwrap();
    let b = replica(&server, &state_b);
    let kept = Registry::parse("kept.lan").unwrap();
    a.add(anonymous("kept.lan"), SystemTime::now()).unwrap();
    a.approve("kept.lan").unwrap();
    assert!(within(PROPAGATION_BOUND, || served(&b, &kept)));

    link.freeze(true);
    assert!(
        within(Duration::from_secs(60), || a.stale()),
        "a replica whose database stopped answering says its state is stale"
    );
    assert!(
        !b.stale(),
        "a replica that reaches the database is not stale"
    );
    // Meanwhile B's operator unapproves the registry: A, cut off, serves what it last loaded.
    b.unapprove("kept.lan").unwrap();
    assert!(!served(&b, &kept));
    assert!(
        served(&a, &kept),
        "the cut-off replica serves its last state"
    );

    link.freeze(false);
    assert!(
        within(Duration::from_secs(60), || !a.stale()),
        "it reloads once the database answers again"
    );
    assert!(
        !served(&a, &kept),
        "the reload brought the unapproval made while it was cut off"
    );
}

#[test]
fn a_replica_reaches_the_database_over_tls_checked_against_its_ca_and_refuses_another() {
    let mut ca = DevCa::new("database CA").unwrap();
    let server_cert = ca.issue_server(&["127.0.0.1"]).unwrap();
    let server = PostgresServer::start_tls(&server_cert.cert_pem, &server_cert.key_pem)
        .expect("postgres starts");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("db-ca.crt");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let tls = PostgresConfig {
        ca_file: Some(ca_file),
        ..settings(&server)
    };
    let key = || MasterKey::from_bytes(&[9u8; 32]).unwrap();
    let replica = Store::open_postgres(dir.path(), &tls, key()).expect("opens over TLS");
    replica
        .add(anonymous("tls.lan"), SystemTime::now())
        .unwrap();
    let ssl = query(
        &server,
        "SELECT count(*)::text FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE ssl AND application_name = 'meshanics-facade'",
    );
    assert_ne!(ssl[0][0], "0", "the facade's sessions are encrypted");

    let other = DevCa::new("another CA").unwrap();
    let other_file = dir.path().join("other-ca.crt");
    std::fs::write(&other_file, other.cert_pem()).unwrap();
    let refused = Store::open_postgres(
        dir.path(),
        &PostgresConfig {
            ca_file: Some(other_file),
            ..settings(&server)
        },
        key(),
    )
    .expect_err("a server the CA did not sign is refused");
    assert!(
        matches!(refused, ConnectionError::Database { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("127.0.0.1"), "{refused}");
}

/// Two facades on `database` (same master key) and a registry with one image; the device
/// path of its manifest.
struct Cluster {
    _work: tempfile::TempDir,
    registry: RegistryServer,
    a: FacadeFixture,
    b: FacadeFixture,
    path: String,
}

impl Cluster {
    fn start(database: &PostgresServer) -> Cluster {
        let work = tempfile::tempdir().unwrap();
        let registry = RegistryServer::start(&Options::default()).unwrap();
        let built = SampleImage::multi_arch(&["linux/amd64"], 64 * 1024, 16 * 1024)
            .unwrap()
            .write_layout(&work.path().join("layout"), "v1")
            .unwrap();
        skopeo::push_layout(&built.dir, "v1", &registry.host(), "app").unwrap();
        let options = FacadeOptions {
            connections: true,
            master_key_hex: Some(MasterKey::generate_hex().unwrap()),
            state: database.facade_state(),
            ..FacadeOptions::default()
        };
        let a = FacadeFixture::start(&options).expect("replica A starts");
        let b = FacadeFixture::start(&options).expect("replica B starts");
        let digest = built.manifest_for("linux/amd64").unwrap().digest.clone();
        let path = device_path(&registry.host(), "app", "manifests", digest.as_ref());
        Cluster {
            _work: work,
            registry,
            a,
            b,
            path,
        }
    }

    fn status(&self, facade: &FacadeFixture) -> u16 {
        facade
            .device_request(reqwest::Method::GET, &self.path, &[], false)
            .unwrap()
            .status
    }

    fn connect(&self, facade: &FacadeFixture) -> Result<(), OperatorClientError> {
        let operator = OperatorClient::new(facade.admin_socket().unwrap());
        facade.block_on(async {
            operator
                .add(&AddRegistry {
                    registry: self.registry.host(),
                    provider: ProviderKind::Anonymous,
                    username: None,
                    token: None,
                    gcp_key_json: None,
                    role_arn: None,
                    external_id: None,
                    region: None,
                    plain_http: true,
                    ca_pem: None,
                    storage_hosts: Vec::new(),
                    connected_by: "alice".into(),
                })
                .await?;
            operator.approve(&self.registry.host()).await
        })?;
        Ok(())
    }

    /// Approves (`true`) or unapproves the registry through `facade`'s operator API.
    fn set_approval(
        &self,
        facade: &FacadeFixture,
        approved: bool,
    ) -> Result<(), OperatorClientError> {
        let operator = OperatorClient::new(facade.admin_socket().unwrap());
        let host = self.registry.host();
        let view = facade.block_on(async {
            if approved {
                operator.approve(&host).await
            } else {
                operator.unapprove(&host).await
            }
        })?;
        assert_eq!(view.approved, approved);
        Ok(())
    }

    fn remove(&self, facade: &FacadeFixture) -> Result<(), OperatorClientError> {
        let operator = OperatorClient::new(facade.admin_socket().unwrap());
        facade.block_on(operator.remove(&self.registry.host()))?;
        Ok(())
    }
}

#[test]
fn two_facades_on_one_database_serve_what_either_operator_connected_and_stop_what_either_removed() {
    let database = PostgresServer::start().expect("postgres starts");
    let cluster = Cluster::start(&database);
    let (a, b) = (&cluster.a, &cluster.b);
    assert_eq!(cluster.status(b), 404, "nothing connected yet");

    cluster.connect(a).expect("connected and approved on A");
    assert!(
        within(PROPAGATION_BOUND, || cluster.status(b) == 200),
        "B serves the registry A's operator connected"
    );
    assert_eq!(cluster.status(a), 200);

    cluster.remove(b).expect("removed on B");
    assert!(
        within(PROPAGATION_BOUND, || cluster.status(a) == 404),
        "A refuses the registry B's operator removed, cached content included"
    );
    let operator = OperatorClient::new(a.admin_socket().unwrap());
    let audit = a.block_on(operator.audit(10)).unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["connect", "approve", "remove"]);
}

#[test]
fn a_registry_unapproved_on_one_facade_is_refused_by_the_other_cached_content_included_and_served_again_once_approved()
 {
    let database = PostgresServer::start().expect("postgres starts");
    let cluster = Cluster::start(&database);
    let (a, b) = (&cluster.a, &cluster.b);
    cluster.connect(b).expect("connected and approved on B");
    assert!(
        within(PROPAGATION_BOUND, || cluster.status(a) == 200),
        "A serves the registry B's operator connected"
    );
    // Served twice by A: the second from its cache.
    assert_eq!(cluster.status(a), 200);

    cluster.set_approval(b, false).expect("unapproved on B");
    assert_eq!(cluster.status(b), 404, "B refuses it at once");
    assert!(
        within(PROPAGATION_BOUND, || cluster.status(a) == 404),
        "A refuses the registry B's operator unapproved, cached content included"
    );
    let operator = OperatorClient::new(a.admin_socket().unwrap());
    let view = a.block_on(operator.show(&cluster.registry.host())).unwrap();
    assert!(!view.approved, "the connection stays, unapproved");
    let approvals = query(
        &database,
        "SELECT coalesce(approved_by, 'none') FROM meshanics_connections",
    );
    assert_eq!(
        approvals[0][0], "none",
        "an unapproved row names no approver"
    );

    cluster.set_approval(a, true).expect("approved again on A");
    assert!(
        within(PROPAGATION_BOUND, || cluster.status(b) == 200),
        "B serves it again once A's operator approved it"
    );
    assert_eq!(cluster.status(a), 200);
    let audit = a.block_on(operator.audit(10)).unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["connect", "approve", "unapprove", "approve"]);
    let approvals = query(
        &database,
        "SELECT coalesce(approved_by, 'none') FROM meshanics_connections",
    );
    assert_ne!(approvals[0][0], "none", "who approved it last is recorded");
}

#[test]
fn two_facades_keep_serving_devices_through_a_database_outage_refuse_operator_writes_and_converge()
{
    let mut database = PostgresServer::start().expect("postgres starts");
    let cluster = Cluster::start(&database);
    let (a, b) = (&cluster.a, &cluster.b);
    cluster.connect(a).expect("connected and approved on A");
    assert!(within(PROPAGATION_BOUND, || cluster.status(b) == 200));

    database.stop();
    assert!(
        within(Duration::from_secs(10), || a
            .metrics()
            .contains("facade_state_stale 1")),
        "the metric says the state is stale"
    );
    for _ in 0..3 {
        assert_eq!(cluster.status(a), 200, "devices keep pulling from A");
        assert_eq!(cluster.status(b), 200, "devices keep pulling from B");
    }
    let refused = cluster
        .remove(b)
        .expect_err("no write without the database");
    let text = refused.to_string();
    assert!(
        text.contains("DATABASE") || text.contains("state database"),
        "{text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{}", database.port())),
        "{text}"
    );

    database.start_again().expect("postgres starts again");
    assert!(
        within(Duration::from_secs(10), || cluster.remove(b).is_ok()),
        "operator writes work again"
    );
    assert!(
        within(PROPAGATION_BOUND, || cluster.status(a) == 404),
        "A converges on the removal made on B after the outage"
    );
}

pub(crate) async fn connect(server: &PostgresServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(connection);
    client
}

/// Every row of `sql`, each column as text.
fn query(server: &PostgresServer, sql: &str) -> Vec<Vec<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = connect(server).await;
        let rows = client.query(sql, &[]).await.expect("query runs");
        rows.iter()
            .map(|row| (0..row.len()).map(|i| row.get::<_, String>(i)).collect())
            .collect()
    })
}
