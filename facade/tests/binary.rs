//! The `meshanics-facade` binary: a bad configuration exits with code 64 and names the key
//! and the file; a good one serves until SIGTERM and then exits cleanly.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions: a failed setup is a failed test"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use meshanics_shared::devpki::DevCa;

const BIN: &str = env!("CARGO_BIN_EXE_meshanics-facade");

fn write_config(dir: &Path, key_file: &str) -> std::path::PathBuf {
    let mut ca = DevCa::new("device CA").unwrap();
    let server = ca.issue_server(&["127.0.0.1"]).unwrap();
    let device = ca.issue_device("device-7").unwrap();
    std::fs::write(dir.join("device.crt"), &device.cert_pem).unwrap();
    std::fs::write(dir.join("device.key"), &device.key_pem).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(dir.join("server.crt"), &server.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &server.key_pem).unwrap();
    std::fs::write(
        dir.join("broken.key"),
        "-----BEGIN PRIVATE KEY-----\nnot base64\n",
    )
    .unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\noperator_listen = \"127.0.0.1:0\"\nstate_dir = \"{d}\"\n\
         [tls]\ncertificate = \"{d}/server.crt\"\nprivate_key = \"{d}/{key_file}\"\n\
         device_ca = \"{d}/ca.crt\"\n",
        d = dir.display()
    );
    let path = dir.join("facade.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn a_bad_private_key_exits_64_naming_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "broken.key");
    let output = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls.private_key"), "{stderr}");
    assert!(stderr.contains("broken.key"), "{stderr}");
}

#[test]
fn a_missing_config_file_exits_64() {
    let output = Command::new(BIN)
        .args(["--config", "/nonexistent/facade.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/facade.toml"));
}

#[test]
fn serves_until_sigterm_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "server.key");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Other start-up lines (a warning about a missing master key) may come first.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let listening = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the facade never said it was listening");
        if line.contains("facade listening") {
            break line;
        }
    };
    let addr = listening
        .split("device_addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let status = ping(dir.path(), &addr);
    assert_eq!(status, 200);
    // The shell's builtin `kill`: no dependency on a procps binary being installed.
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    reader.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("SIGTERM")), "{rest:?}");
    // The device is named in the request's log line.
    assert!(
        rest.iter()
            .any(|l| l.contains("request") && l.contains("CN=device-7") && l.contains("/v2/")),
        "{rest:?}"
    );
}

/// `GET /v2/` with the device certificate; the facade's server certificate is issued by the
/// same development CA in this test.
fn ping(dir: &Path, addr: &str) -> u16 {
    let tls = meshanics_shared::tls::client_config(
        &dir.join("ca.crt"),
        Some((&dir.join("device.crt"), &dir.join("device.key"))),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = client
            .get(format!("https://{addr}/v2/"))
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    })
}

#[test]
fn a_wrong_master_key_exits_64_naming_the_connection_record() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::UNIX_EPOCH;

    use meshanics_facade::connections::{ConnectionCredentials, NewConnection, Store};
    use meshanics_facade::seal::MasterKey;

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "server.key");
    // A connection sealed under one key...
    Store::open(dir.path(), MasterKey::from_bytes(&[1u8; 32]).unwrap())
        .unwrap()
        .add(
            NewConnection {
                registry: "ghcr.io".into(),
                credentials: ConnectionCredentials::Static {
                    username: "robot".into(),
                    token: "ghp_token".into(),
                },
                plain_http: false,
                ca_pem: None,
                storage_hosts: Vec::new(),
                connected_by: "alice".into(),
            },
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )
        .unwrap();
    // ...and the facade started with another.
    let key_file = dir.path().join("master-key");
    std::fs::write(&key_file, [2u8; 32]).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("master_key_file = \"{}\"\n{text}", key_file.display()),
    )
    .unwrap();

    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A facade that does not notice serves on: stop it rather than hang the test.
    let status = (0..300).find_map(|_| {
        let status = child.try_wait().unwrap();
        if status.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        status
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(64),
        "the facade started with a master key that opens no record: {stderr}"
    );
    assert!(
        stderr.contains("ghcr.io.json") && stderr.contains("master key"),
        "{stderr}"
    );
}
