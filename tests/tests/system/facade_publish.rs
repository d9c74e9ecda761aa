//! Publishing signed metadata through the operator API (`meshctl publish DIR`) instead of
//! copying files: releases made with the `meshctl` binary, published to the facade, verified
//! by the agent's own update cycle through it; a refused publish leaves what is served as it
//! was; on PostgreSQL, what one replica published is served by the other within a second,
//! and the schema migrates to version 3 from version 2.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions: a failed setup is a failed test"
)]

use std::path::{Path, PathBuf};
use std::process::Output;

use meshanics_agent::metadata::MetadataSource;
use meshanics_agent::progress::Silent;
use meshanics_agent::service::{Agent, CycleOutcome, SlotAction};
use meshanics_agent::status;
use meshanics_agent::store::StoreOptions;
use meshanics_facade::connections::postgres::{MIGRATIONS, migrate};
use meshanics_facade::seal::MasterKey;
use meshanics_tests::agent_device::AgentDevice;
use meshanics_tests::binaries::{command, workspace_binary};
use meshanics_tests::facade::{FacadeFixture, FacadeOptions, UpstreamEntry};
use meshanics_tests::oci_layout::{BuiltImage, SampleImage};
use meshanics_tests::postgres::PostgresServer;
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::skopeo;

use meshanics_tests::within;

use crate::facade_cluster::{PROPAGATION_BOUND, connect};

const REPOSITORY: &str = "team/app";

/// An operator's workstation: keys and a metadata folder `meta/`, signed with the `meshctl`
/// binary as an operator runs it.
struct Operator {
    dir: tempfile::TempDir,
    meshctl: PathBuf,
}

impl Operator {
    /// Keys for the three roles and root version 1 in `meta/`.
    fn new() -> Operator {
        let operator = Operator {
            dir: tempfile::tempdir().unwrap(),
            meshctl: workspace_binary("meshctl", "meshctl").unwrap(),
        };
        for name in ["root", "targets", "timestamp"] {
            operator.ok(&["key", "generate", "--out", &format!("keys/{name}")]);
        }
        operator.ok(&[
            "root",
            "init",
            "--dir",
            "meta",
            "--root-key",
            "keys/root.key",
            "--targets-key",
            "keys/targets.pub",
            "--timestamp-key",
            "keys/timestamp.pub",
        ]);
        operator
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        command(&self.meshctl)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "meshctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `meshctl release` of one target `app`: `built`'s index in `upstream`.
    fn release(&self, upstream: &str, built: &BuiltImage) {
        let pins = serde_json::json!([{
            "name": "app",
            "repository": format!("{upstream}/{REPOSITORY}"),
            "digest": built.index.digest.as_str(),
            "size": built.index.size,
            "media_type": built.index.media_type,
        }]);
        std::fs::write(self.path("pins.json"), pins.to_string()).unwrap();
        self.ok(&[
            "release",
            "--dir",
            "meta",
            "--pins",
            "pins.json",
            "--targets-key",
            "keys/targets.key",
            "--timestamp-key",
            "keys/timestamp.key",
        ]);
    }

    /// `meshctl --json publish DIR` to `facade`.
    fn publish(&self, facade: &FacadeFixture, dir: &str) -> Output {
        let socket = facade.admin_socket().unwrap().to_str().unwrap().to_owned();
        self.run(&["--json", "--socket", &socket, "publish", dir])
    }

    /// Publishes to `facade` a folder `old/` holding root 1, targets 1 and `timestamp`,
    /// which the facade must refuse (exit code 1); meshctl's error message.
    fn refused(&self, facade: &FacadeFixture, timestamp: &[u8]) -> String {
        let _ = std::fs::remove_dir_all(self.path("old"));
        std::fs::create_dir(self.path("old")).unwrap();
        for name in ["1.root.cose", "1.targets.cose"] {
            std::fs::copy(
                self.path(&format!("meta/{name}")),
                self.path(&format!("old/{name}")),
            )
            .unwrap();
        }
        std::fs::write(self.path("old/timestamp.cose"), timestamp).unwrap();
        let refused = self.publish(facade, "old");
        assert_eq!(refused.status.code(), Some(1), "the facade refuses it");
        String::from_utf8_lossy(&refused.stderr).into_owned()
    }

    fn anchor(&self) -> Vec<u8> {
        std::fs::read(self.path("meta/1.root.cose")).unwrap()
    }
}

fn published(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What the facade serves as `/meta/<name>` (status, body).
fn meta(facade: &FacadeFixture, name: &str) -> (u16, Vec<u8>) {
    let response = facade
        .device_request(reqwest::Method::GET, &format!("/meta/{name}"), &[], false)
        .unwrap();
    (response.status, response.body)
}

/// Pushes an image as `tag`; `own` bytes of its own make each tag's content differ.
fn push(registry: &RegistryServer, work: &Path, tag: &str, own: usize) -> BuiltImage {
    let built = SampleImage::multi_arch(&["linux/amd64"], 48 * 1024, own)
        .unwrap()
        .write_layout(&work.join(tag), tag)
        .unwrap();
    skopeo::push_layout(&built.dir, tag, &registry.host(), REPOSITORY).unwrap();
    built
}

/// One update cycle of `device`, as `sync --once` runs it.
fn sync(facade: &FacadeFixture, device: &AgentDevice) -> CycleOutcome {
    let (agent, _) = Agent::from_config(&device.config, StoreOptions::default()).unwrap();
    let mut source = MetadataSource::from_config(&device.config).unwrap();
    facade
        .block_on(agent.cycle(&mut source, &Silent))
        .expect("the update cycle verifies and applies")
}

#[test]
fn releases_published_with_meshctl_are_what_devices_verify_and_a_refused_one_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let registry = RegistryServer::start(&Options::default()).unwrap();
    let facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::anonymous(&registry.host())],
        connections: true,
        ..FacadeOptions::default()
    })
    .unwrap();
    let operator = Operator::new();

    let v1 = push(&registry, work.path(), "v1", 16 * 1024);
    operator.release(&registry.host(), &v1);
    let first_timestamp = std::fs::read(operator.path("meta/timestamp.cose")).unwrap();
    let served = published(&operator.publish(&facade, "meta"));
    assert_eq!(
        served["written"],
        serde_json::json!(["1.root.cose", "1.targets.cose", "timestamp.cose"])
    );
    assert_eq!(
        (
            served["root_version"].as_u64(),
            served["targets_version"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // Published into the files backend's folder, served from there.
    assert_eq!(
        std::fs::read(facade.metadata_dir().join("timestamp.cose")).unwrap(),
        first_timestamp
    );
    assert_eq!(
        meta(&facade, "timestamp.cose"),
        (200, first_timestamp.clone())
    );

    let device = AgentDevice::new(&facade, &operator.anchor(), "gateway", "linux/amd64").unwrap();
    let outcome = sync(&facade, &device);
    assert!(
        matches!(outcome.action("app"), Some(SlotAction::Applied { .. })),
        "{outcome:?}"
    );
    let v1_manifest = &v1.manifest_for("linux/amd64").unwrap().digest;
    let status = status::read(&device.config).unwrap();
    assert_eq!(
        status.current.unwrap().manifest_digest.as_ref(),
        Some(v1_manifest)
    );

    // The second release is picked up by the next cycle.
    let v2 = push(&registry, work.path(), "v2", 24 * 1024);
    operator.release(&registry.host(), &v2);
    let served = published(&operator.publish(&facade, "meta"));
    assert_eq!(
        served["written"],
        serde_json::json!(["2.targets.cose", "timestamp.cose"])
    );
    let second_timestamp = std::fs::read(operator.path("meta/timestamp.cose")).unwrap();
    let outcome = sync(&facade, &device);
    assert!(
        matches!(outcome.action("app"), Some(SlotAction::Applied { .. })),
        "{outcome:?}"
    );
    let status = status::read(&device.config).unwrap();
    let v2_manifest = &v2.manifest_for("linux/amd64").unwrap().digest;
    assert_eq!(
        status.current.unwrap().manifest_digest.as_ref(),
        Some(v2_manifest)
    );
    assert_eq!(status.metadata.unwrap().targets.unwrap().version, 2);

    // A rollback (the first timestamp again) is refused naming the file; nothing changes.
    let message = operator.refused(&facade, &first_timestamp);
    assert!(
        message.contains("timestamp.cose") && message.contains("rollback"),
        "{message}"
    );
    assert_eq!(meta(&facade, "timestamp.cose"), (200, second_timestamp));
    let next = sync(&facade, &device);
    assert_eq!(next.action("app"), Some(&SlotAction::UpToDate), "{next:?}");

    // Every publish is in the audit log.
    let socket = facade.admin_socket().unwrap().to_str().unwrap().to_owned();
    let audit: serde_json::Value =
        serde_json::from_str(&operator.ok(&["--json", "--socket", &socket, "audit"])).unwrap();
    let publishes: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "publish")
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        publishes,
        ["root 1, targets 1, timestamp 1", "targets 2, timestamp 2"]
    );
}

fn replica(database: &PostgresServer, key: &str) -> FacadeFixture {
    FacadeFixture::start(&FacadeOptions {
        connections: true,
        master_key_hex: Some(key.to_owned()),
        state: vec![
            "backend = \"postgres\"".into(),
            format!("url = \"{}\"", database.url()),
            "sslmode = \"disable\"".into(),
        ],
        ..FacadeOptions::default()
    })
    .expect("replica starts")
}

#[test]
fn metadata_published_on_one_replica_is_served_by_the_other_within_a_second() {
    let database = PostgresServer::start().expect("postgres starts");
    let key = MasterKey::generate_hex().unwrap();
    let a = replica(&database, &key);
    let b = replica(&database, &key);
    let operator = Operator::new();
    let work = tempfile::tempdir().unwrap();
    let registry = RegistryServer::start(&Options::default()).unwrap();
    let v1 = push(&registry, work.path(), "v1", 16 * 1024);
    operator.release(&registry.host(), &v1);
    assert_eq!(meta(&b, "timestamp.cose").0, 404, "nothing published yet");

    published(&operator.publish(&a, "meta"));
    let stored = std::time::Instant::now();
    let timestamp = std::fs::read(operator.path("meta/timestamp.cose")).unwrap();
    assert_eq!(meta(&a, "timestamp.cose"), (200, timestamp.clone()));
    assert!(
        within(PROPAGATION_BOUND, || meta(&b, "timestamp.cose")
            == (200, timestamp.clone())),
        "B serves what A published"
    );
    // A figure for the log, not a check (the bound above is the check).
    eprintln!(
        "served by B {:?} after A's publish returned",
        stored.elapsed()
    );
    for name in ["1.root.cose", "1.targets.cose"] {
        let bytes = std::fs::read(operator.path(&format!("meta/{name}"))).unwrap();
        assert_eq!(meta(&b, name), (200, bytes), "{name}");
    }
    // Not from the folder: the database is what replicas share.
    assert!(!a.metadata_dir().join("timestamp.cose").exists());

    // A refresh published on B reaches A.
    operator.ok(&[
        "timestamp",
        "refresh",
        "--dir",
        "meta",
        "--timestamp-key",
        "keys/timestamp.key",
    ]);
    let refreshed = std::fs::read(operator.path("meta/timestamp.cose")).unwrap();
    let served = published(&operator.publish(&b, "meta"));
    assert_eq!(served["timestamp_version"].as_u64(), Some(2));
    assert_eq!(served["written"], serde_json::json!(["timestamp.cose"]));
    assert!(
        within(PROPAGATION_BOUND, || meta(&a, "timestamp.cose")
            == (200, refreshed.clone())),
        "A serves what B published"
    );

    // A checks against what B published, not against its own memory: the first timestamp
    // again is a rollback, refused naming the file; both keep serving the refresh.
    let message = operator.refused(&a, &timestamp);
    assert!(message.contains("timestamp.cose"), "{message}");
    for replica in [&a, &b] {
        assert_eq!(meta(replica, "timestamp.cose"), (200, refreshed.clone()));
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows = runtime.block_on(async {
        let client = connect(&database).await;
        client
            .query(
                "SELECT action, subject FROM meshanics_audit WHERE action = 'publish' ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, String>(1))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        rows,
        ["root 1, targets 1, timestamp 1", "targets 1, timestamp 2"]
    );
}

#[test]
fn the_schema_migrates_to_the_published_metadata_table_from_version_2() {
    let server = PostgresServer::start().expect("postgres starts");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = connect(&server).await;
        assert_eq!(migrate(&mut client, 2).await.unwrap(), 2);
        client
            .execute(
                "INSERT INTO meshanics_audit (operator, action, subject) VALUES ('alice', 'connect', 'old.lan')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(MIGRATIONS.len(), 3);
        assert_eq!(migrate(&mut client, MIGRATIONS.len()).await.unwrap(), 3);
        let rows = client
            .query("SELECT count(*) FROM meshanics_metadata", &[])
            .await
            .unwrap();
        assert_eq!(rows[0].get::<_, i64>(0), 0);
        client
            .execute(
                "INSERT INTO meshanics_metadata (name, bytes, published_by) VALUES ('1.root.cose', '\\x01', 'alice')",
                &[],
            )
            .await
            .unwrap();
        let audit = client
            .query("SELECT subject FROM meshanics_audit", &[])
            .await
            .unwrap();
        assert_eq!(audit[0].get::<_, String>(0), "old.lan", "the audit log is kept");
    });
}
