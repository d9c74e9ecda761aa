//! Registry connections end to end: an operator connects the real distribution registry with
//! `meshctl`, browses and imports tags, devices pull imported digests through the facade, and
//! removing the connection stops it; anonymous connections wait for approval; Google and AWS
//! connections exchange their configuration for tokens at local servers that speak the real
//! protocols. Every facade log line (at trace level) is captured and searched for secrets.
//!
//! Its own test binary, not a module of `system`: the capture is a process-wide log subscriber
//! (installed once, at trace level), which would swallow the other tests' logs and slow them.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns: a failure fails the test"
)]

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use meshanics_facade::cloud::ecr::AwsCredentials;
use meshanics_tests::aws_server::{AwsAccount, AwsServer};
use meshanics_tests::binaries::workspace_binary;
use meshanics_tests::facade::{FacadeFixture, FacadeOptions, Who, device_repository};
use meshanics_tests::gcp_server::{GcpTokenServer, ServiceAccount};
use meshanics_tests::oci_layout::{BuiltImage, SampleImage};
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::skopeo;
use serde_json::Value;

/// Every log line of this test process, at trace level.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .try_init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_nowhere(secret: &str, facade: &FacadeFixture, outputs: &[&str]) {
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(!logs.is_empty(), "no logs were captured");
    assert!(!logs.contains(secret), "the secret is in the logs");
    for output in outputs {
        assert!(
            !output.contains(secret),
            "the secret is in an answer: {output}"
        );
    }
    let mut stack = vec![facade.state_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(secret),
                    "the secret is in {}",
                    path.display()
                );
            }
        }
    }
}

/// Runs meshctl against the facade's socket; returns (exit code, stdout, stderr).
fn meshctl(facade: &FacadeFixture, args: &[&str]) -> (i32, String, String) {
    let bin = workspace_binary("meshctl", "meshctl").unwrap();
    let out = Command::new(bin)
        .arg("--socket")
        .arg(facade.admin_socket().unwrap())
        .args(args)
        .env_remove("MESHANICS_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn image(dir: &Path) -> BuiltImage {
    SampleImage::multi_arch(&["linux/amd64", "linux/arm64"], 32 * 1024, 8 * 1024)
        .unwrap()
        .write_layout(&dir.join("layout"), "v1")
        .unwrap()
}

fn push(built: &BuiltImage, registry: &RegistryServer, tag: &str, creds: Option<&str>) {
    let reference = format!("{}/team/app:{tag}", registry.host());
    skopeo::push_layout_as(&built.dir, "v1", &reference, creds).unwrap();
}

/// A registry that takes Basic `username:password`, with the image pushed to it as `v1`.
fn registry_with_image(
    work: &Path,
    username: &str,
    password: &str,
) -> (RegistryServer, BuiltImage) {
    let registry = RegistryServer::start(&Options::basic_auth(username, password)).unwrap();
    let built = image(work);
    push(
        &built,
        &registry,
        "v1",
        Some(&format!("{username}:{password}")),
    );
    (registry, built)
}

/// `skopeo copy --all` of `digest` through the facade with the device certificate.
fn device_pull(
    facade: &FacadeFixture,
    registry: &RegistryServer,
    digest: &str,
    out: &Path,
) -> Result<(), String> {
    let repository = device_repository(&registry.host(), "team/app");
    facade
        .skopeo_pull(Who::Device, &repository, digest, out)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Connects `host` as a Google connection with `key_json` through `meshctl`.
fn add_gcp_connection(facade: &FacadeFixture, work: &Path, host: &str, key_json: &str) {
    let key_file = work.join("sa.json");
    std::fs::write(&key_file, key_json).unwrap();
    let key_file = key_file.to_str().unwrap();
    let (code, _, err) = meshctl(
        facade,
        &[
            "registry",
            "add",
            host,
            "--gcp-key-file",
            key_file,
            "--plain-http",
        ],
    );
    assert_eq!(code, 0, "{err}");
}

fn facade_with_connections(cloud: Vec<String>, aws: Option<AwsCredentials>) -> FacadeFixture {
    logs();
    FacadeFixture::start(&FacadeOptions {
        connections: true,
        cloud,
        aws,
        ..FacadeOptions::default()
    })
    .unwrap()
}

/// A facade whose every device request reaches the upstream: the cache off, so that the
/// tests of upstream credentials see each pull exchange (or reuse) a token, and room for one
/// test client's 50 parallel HTTP/1.1 connections (the per-device cap is 8).
fn facade_without_cache(cloud: Vec<String>) -> FacadeFixture {
    logs();
    FacadeFixture::start(&FacadeOptions {
        connections: true,
        cloud,
        cache: vec!["max_bytes = 0".into()],
        limits: vec!["max_connections_per_device = 64".into()],
        ..FacadeOptions::default()
    })
    .unwrap()
}

#[test]
fn an_operator_connects_browses_imports_and_devices_pull_until_the_connection_is_removed() {
    let work = tempfile::tempdir().unwrap();
    let secret = "s3cret-registry-token-42";
    let registry = RegistryServer::start(&Options::basic_auth("robot", secret)).unwrap();
    let built = image(work.path());
    let creds = format!("robot:{secret}");
    push(&built, &registry, "v1.0", Some(&creds));
    push(&built, &registry, "v1.10", Some(&creds));
    push(&built, &registry, "latest", Some(&creds));
    let facade = facade_with_connections(vec![], None);
    let token_file = work.path().join("token");
    std::fs::File::create(&token_file)
        .unwrap()
        .write_all(format!("{secret}\n").as_bytes())
        .unwrap();
    let host = registry.host();

    let (code, added, err) = meshctl(
        &facade,
        &[
            "--json",
            "registry",
            "add",
            &host,
            "--username",
            "robot",
            "--token-file",
            token_file.to_str().unwrap(),
            "--plain-http",
            "--by",
            "alice",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let added = json(&added);
    assert_eq!(added["host"], host.as_str());
    assert_eq!(added["approved"], true);
    assert_eq!(added["connected_by"], "alice");

    let (code, listed, _) = meshctl(&facade, &["--json", "registry", "list"]);
    assert_eq!(code, 0);
    assert_eq!(json(&listed)[0]["username"], "robot");

    let (code, tags, err) = meshctl(&facade, &["--json", "tags", &format!("{host}/team/app")]);
    assert_eq!(code, 0, "{err}");
    let tags = json(&tags);
    assert_eq!(tags["tags"], serde_json::json!(["v1.10", "v1.0", "latest"]));
    assert_eq!(tags["clipped"], false);
    let (_, clipped, _) = meshctl(
        &facade,
        &[
            "--json",
            "tags",
            &format!("{host}/team/app"),
            "--limit",
            "2",
        ],
    );
    assert_eq!(json(&clipped)["clipped"], true);

    let pins = work.path().join("pins.json");
    let (code, imported, err) = meshctl(
        &facade,
        &[
            "--json",
            "import",
            &format!("{host}/team/app:v1.0"),
            &format!("{host}/team/app:v1.10"),
            &format!("{host}/team/app:missing"),
            "--pins",
            pins.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "some tags failed, so exit 1: {err}");
    let imported = json(&imported);
    let outcomes: Vec<&str> = imported["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["imported", "imported", "not_found"]);
    let index = built.index.digest.to_string();
    assert_eq!(imported["results"][0]["digest"], index.as_str());
    assert_eq!(imported["results"][0]["size"], built.index.size);
    let written: Value = json(&std::fs::read_to_string(&pins).unwrap());
    assert_eq!(written.as_array().unwrap().len(), 2);
    assert_eq!(written[0]["name"], "app-v1.0");
    assert_eq!(written[0]["repository"], format!("{host}/team/app"));

    device_pull(&facade, &registry, &index, &work.path().join("pulled")).unwrap();
    assert_nowhere(
        secret,
        &facade,
        &[
            &added.to_string(),
            &listed,
            &tags.to_string(),
            &imported.to_string(),
        ],
    );

    let (code, _, err) = meshctl(&facade, &["registry", "remove", &host]);
    assert_eq!(code, 0, "{err}");
    let refused = device_pull(
        &facade,
        &registry,
        &index,
        &work.path().join("after-remove"),
    );
    assert!(refused.is_err(), "pulled after the connection was removed");
}

#[test]
fn an_anonymous_connection_is_not_proxied_until_approved() {
    let work = tempfile::tempdir().unwrap();
    let registry = RegistryServer::start(&Options::default()).unwrap();
    let built = image(work.path());
    push(&built, &registry, "v1", None);
    let facade = facade_with_connections(vec![], None);
    let host = registry.host();
    let (code, added, err) = meshctl(
        &facade,
        &[
            "--json",
            "registry",
            "add",
            &host,
            "--anonymous",
            "--plain-http",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&added)["approved"], false);
    let index = built.index.digest.to_string();
    assert!(device_pull(&facade, &registry, &index, &work.path().join("before")).is_err());
    let (code, _, err) = meshctl(&facade, &["registry", "approve", &host]);
    assert_eq!(code, 0, "{err}");
    device_pull(&facade, &registry, &index, &work.path().join("after")).unwrap();
}

#[test]
fn a_gcp_connection_pulls_with_exchanged_tokens_refreshing_once_when_they_expire() {
    let work = tempfile::tempdir().unwrap();
    let access_token = "ya29.fixed-access-token-for-the-registry";
    let (registry, built) = registry_with_image(work.path(), "oauth2accesstoken", access_token);
    let account =
        ServiceAccount::generate(work.path(), "puller@meshanics-test.iam.gserviceaccount.com")
            .unwrap();
    let facade = facade_without_cache(vec!["token_margin_seconds = 1".into()]);
    let server = facade
        .block_on(GcpTokenServer::start(account.clone()))
        .unwrap();
    server.set_fixed_token(Some(access_token));
    server.set_token_lifetime(3);
    let host = registry.host();
    add_gcp_connection(
        &facade,
        work.path(),
        &host,
        &account.key_json(&server.token_uri()),
    );

    // 50 concurrent manifest requests from a device: one token request between them.
    let client = facade.client(Who::Device, false).unwrap();
    let url = facade.url(&format!(
        "/v2/{}/manifests/{}",
        device_repository(&host, "team/app"),
        built.index.digest
    ));
    let statuses: Vec<u16> = facade.block_on(async {
        let requests = (0..50).map(|_| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        });
        futures_util::future::join_all(requests).await
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(server.requests(), 1);

    // Past expiry (3 s lifetime, refreshed 0.3 s early): the next pull refreshes, once.
    std::thread::sleep(Duration::from_millis(3100));
    device_pull(
        &facade,
        &registry,
        built.index.digest.as_ref(),
        &work.path().join("pulled"),
    )
    .unwrap();
    assert_eq!(server.requests(), 2);
    assert_nowhere(access_token, &facade, &[]);
    assert_nowhere("PRIVATE KEY", &facade, &[]);
}

#[test]
fn a_failed_token_refresh_is_a_503_with_retry_after_and_no_upstream_text() {
    let work = tempfile::tempdir().unwrap();
    let registry = RegistryServer::start(&Options::default()).unwrap();
    let account =
        ServiceAccount::generate(work.path(), "puller@meshanics-test.iam.gserviceaccount.com")
            .unwrap();
    let impostor = ServiceAccount::generate(work.path(), "impostor").unwrap();
    let facade = facade_with_connections(vec![], None);
    let server = facade
        .block_on(GcpTokenServer::start(account.clone()))
        .unwrap();
    let mut forged = impostor;
    forged.client_email = account.client_email;
    let host = registry.host();
    add_gcp_connection(
        &facade,
        work.path(),
        &host,
        &forged.key_json(&server.token_uri()),
    );
    let client = facade.client(Who::Device, false).unwrap();
    let digest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    let url = facade.url(&format!(
        "/v2/{}/manifests/{digest}",
        device_repository(&host, "team/app")
    ));
    let (status, retry_after, body) = facade.block_on(async {
        let response = client.get(url).send().await.unwrap();
        let status = response.status().as_u16();
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, retry, response.text().await.unwrap())
    });
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
    assert!(body.contains("UNAVAILABLE"), "{body}");
    assert!(
        !body.contains("invalid_grant") && !body.contains("401") && !body.contains("400"),
        "{body}"
    );
    assert_eq!(server.rejected(), 1);
}

/// A registry that takes `AWS:<password>`, the image pushed to it, a local STS and ECR, and a
/// facade whose ECR endpoints are those; its connection is not added yet.
struct EcrSetup {
    work: tempfile::TempDir,
    registry: RegistryServer,
    built: BuiltImage,
    account: AwsAccount,
    aws: AwsServer,
    facade: FacadeFixture,
    /// The AWS server's runtime: it needs one before the facade exists.
    _rt: tokio::runtime::Runtime,
}

fn ecr_setup(password: &str) -> EcrSetup {
    let work = tempfile::tempdir().unwrap();
    let (registry, built) = registry_with_image(work.path(), "AWS", password);
    let account = AwsAccount {
        region: "eu-west-1".into(),
        access_key_id: "AKIAMESHANICSTEST".into(),
        secret_access_key: "base-secret-key-never-logged".into(),
        role_arn: "arn:aws:iam::123456789012:role/meshanics-pull".into(),
        external_id: Some("ext-77".into()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let aws = rt.block_on(AwsServer::start(account.clone())).unwrap();
    aws.set_fixed_password(Some(password));
    let facade = facade_with_connections(
        vec![
            format!("ecr_sts_endpoint = \"{}\"", aws.sts_url()),
            format!("ecr_api_endpoint = \"{}\"", aws.ecr_url()),
        ],
        Some(AwsCredentials {
            access_key_id: account.access_key_id.clone(),
            secret_access_key: account.secret_access_key.clone(),
            session_token: None,
            expires_at: None,
        }),
    );
    EcrSetup {
        work,
        registry,
        built,
        account,
        aws,
        facade,
        _rt: rt,
    }
}

impl EcrSetup {
    fn connect(&self) {
        let host = self.registry.host();
        let (code, _, err) = meshctl(
            &self.facade,
            &[
                "registry",
                "add",
                &host,
                "--ecr-role-arn",
                &self.account.role_arn,
                "--external-id",
                "ext-77",
                "--region",
                "eu-west-1",
                "--plain-http",
            ],
        );
        assert_eq!(code, 0, "{err}");
    }

    fn pull(&self, into: &str) -> Result<(), String> {
        device_pull(
            &self.facade,
            &self.registry,
            self.built.index.digest.as_ref(),
            &self.work.path().join(into),
        )
    }
}

#[test]
fn an_ecr_connection_assumes_the_role_and_pulls() {
    let password = "ecr-fixed-password-for-the-registry";
    let setup = ecr_setup(password);
    setup.connect();
    setup.pull("pulled").unwrap();
    let (aws, facade) = (&setup.aws, &setup.facade);
    assert_eq!(aws.assume_calls(), 1);
    assert_eq!(aws.token_calls(), 1);
    assert!(aws.refusals().is_empty(), "{:?}", aws.refusals());
    assert_nowhere(password, facade, &[]);
    assert_nowhere("base-secret-key-never-logged", facade, &[]);
    assert_nowhere("ext-77", facade, &[]);
}

#[test]
fn a_cloud_token_the_registry_refuses_is_dropped_and_the_next_pull_exchanges_again() {
    let password = "ecr-fixed-password-for-the-registry";
    let setup = ecr_setup(password);
    // The first token ECR hands out is one the registry does not take (revoked, say).
    setup.aws.set_fixed_password(Some("revoked-ecr-password"));
    setup.connect();
    assert!(
        setup.pull("refused").is_err(),
        "pulled with a refused token"
    );
    let exchanges = setup.aws.token_calls();
    assert!(exchanges >= 1);
    setup.aws.set_fixed_password(Some(password));
    setup.pull("pulled").unwrap();
    assert_eq!(setup.aws.token_calls(), exchanges + 1);
}

#[test]
fn a_cloud_connection_removed_and_added_again_with_another_key_exchanges_the_new_key() {
    let work = tempfile::tempdir().unwrap();
    let access_token = "ya29.fixed-access-token-for-the-registry";
    let (registry, built) = registry_with_image(work.path(), "oauth2accesstoken", access_token);
    let facade = facade_without_cache(vec![]);
    let mut servers = Vec::new();
    for name in ["first", "second"] {
        let account = ServiceAccount::generate(
            work.path(),
            &format!("{name}@meshanics-test.iam.gserviceaccount.com"),
        )
        .unwrap();
        let server = facade
            .block_on(GcpTokenServer::start(account.clone()))
            .unwrap();
        server.set_fixed_token(Some(access_token));
        servers.push((account, server));
    }
    let host = registry.host();
    let digest = built.index.digest.as_ref();
    for (i, (account, server)) in servers.iter().enumerate() {
        if i > 0 {
            let (code, _, err) = meshctl(&facade, &["registry", "remove", &host]);
            assert_eq!(code, 0, "{err}");
        }
        add_gcp_connection(
            &facade,
            work.path(),
            &host,
            &account.key_json(&server.token_uri()),
        );
        device_pull(
            &facade,
            &registry,
            digest,
            &work.path().join(format!("pull-{i}")),
        )
        .unwrap();
        assert_eq!(
            server.requests(),
            1,
            "connection {i} did not exchange its own key"
        );
    }
}
