//! The device listener's revocation lists and their reloads ([`crate::device_tls`]), end to
//! end: a facade on 127.0.0.1:0, devices connecting with certificates from a development CA.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use meshanics_shared::devpki::{DevCa, Issued};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsConnector;

use super::*;
use crate::ConfiguredUpstreams;
use crate::config::tests::toml_in;

const DAY: Duration = Duration::from_secs(86_400);

/// A device CA, a server certificate, two devices and a CRL file, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: DevCa,
    devices: [Issued; 2],
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = DevCa::new("device CA").unwrap();
        let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        let devices = [
            ca.issue_device("device-1").unwrap(),
            ca.issue_device("device-2").unwrap(),
        ];
        let pki = Pki { dir, ca, devices };
        pki.write("ca.crt", &pki.ca.cert_pem());
        pki.write("server.crt", &server.cert_pem);
        pki.write("server.key", &server.key_pem);
        pki.write_crl(&[]);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.path(name), contents).unwrap();
    }

    /// Replaces `devices.crl` with a current CRL revoking `revoked`.
    fn write_crl(&self, revoked: &[&Issued]) {
        self.write("devices.crl", &self.ca.crl(revoked).unwrap());
    }

    fn config(&self) -> Config {
        let crl = self.path("devices.crl");
        let text = toml_in(self.dir.path(), &format!(r#"crls = ["{}"]"#, crl.display()));
        Config::parse(&text, Path::new("facade.toml")).unwrap()
    }

    fn client(&self, device: usize) -> Arc<ClientConfig> {
        let name = format!("device-{device}");
        self.write(&format!("{name}.crt"), &self.devices[device].cert_pem);
        self.write(&format!("{name}.key"), &self.devices[device].key_pem);
        let config = meshanics_shared::tls::client_config(
            &self.path("ca.crt"),
            Some((
                &self.path(&format!("{name}.crt")),
                &self.path(&format!("{name}.key")),
            )),
        )
        .unwrap();
        Arc::new(config)
    }
}

async fn start_facade(config: &Config) -> Running {
    let upstreams =
        ConfiguredUpstreams::new(&[], config.limits.upstream(), &config.own_listeners()).unwrap();
    start(config, Arc::new(upstreams)).await.unwrap()
}

/// `GET /v2/` over mutual TLS: the status line, or why the connection failed (a refused
/// client certificate shows up as an alert on the first read).
async fn ping(addr: SocketAddr, client: Arc<ClientConfig>) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

fn sighup_this_process() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_crl_reloaded_on_sighup_revokes_a_device_without_a_restart() {
    // Held so that a SIGHUP never takes the default action (ending the test process), with
    // or without the facade's own handler.
    let _hangup = signal(SignalKind::hangup()).unwrap();
    let pki = Pki::new();
    let facade = start_facade(&pki.config()).await;
    let addr = facade.device_addr();
    assert_eq!(ping(addr, pki.client(0)).await.unwrap(), "HTTP/1.1 200 OK");

    pki.write_crl(&[&pki.devices[0]]);
    sighup_this_process();

    // The reload happens in the background: wait for it, a bounded number of tries.
    let mut outcome = ping(addr, pki.client(0)).await;
    for _ in 0..50 {
        if outcome.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        outcome = ping(addr, pki.client(0)).await;
    }
    let error = outcome.unwrap_err();
    assert!(error.contains("CertificateRevoked"), "{error}");
    // Another device is still let in, by the same listener.
    assert_eq!(ping(addr, pki.client(1)).await.unwrap(), "HTTP/1.1 200 OK");
    facade.shutdown().await;
}

/// A facade started with `devices.crl` replaced by one revoking device 0 that expired a day
/// ago (issued eight days ago).
async fn facade_with_an_expired_crl(pki: &Pki) -> Running {
    let now = SystemTime::now();
    let expired = pki
        .ca
        .crl_valid(&[&pki.devices[0]], now - 8 * DAY, now - DAY)
        .unwrap();
    pki.write("devices.crl", &expired);
    start_facade(&pki.config()).await
}

#[tokio::test]
async fn an_expired_crl_is_reported() {
    let pki = Pki::new();
    let facade = facade_with_an_expired_crl(&pki).await;

    let metrics = facade.metrics().render();
    let file = pki.path("devices.crl").display().to_string();
    assert!(
        metrics.contains(&format!("facade_crl_expired{{file=\"{file}\"}} 1\n")),
        "{metrics}"
    );
    facade.shutdown().await;
}

#[tokio::test]
async fn an_expired_crl_still_revokes_and_lets_other_devices_in() {
    let pki = Pki::new();
    let facade = facade_with_an_expired_crl(&pki).await;

    let addr = facade.device_addr();
    let error = ping(addr, pki.client(0)).await.unwrap_err();
    assert!(error.contains("CertificateRevoked"), "{error}");
    assert_eq!(ping(addr, pki.client(1)).await.unwrap(), "HTTP/1.1 200 OK");
    facade.shutdown().await;
}

/// Waits, a bounded number of short sleeps, until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen");
}

/// The device TLS of `config` watched for changes every 50 ms (no signal), until the
/// returned sender is dropped or sent `true`.
fn watch_for_changes(config: &Config, metrics: &Arc<Metrics>) -> watch::Sender<bool> {
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(config.tls.clone().watch(
        metrics.clone(),
        None,
        Duration::from_millis(50),
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    ));
    stop
}

/// Waits until the device TLS of `config` is no longer `before`, and checks that the reload
/// was counted as the one good one; returns the metrics rendered then.
async fn a_good_reload(
    config: &Config,
    before: &Arc<rustls::ServerConfig>,
    metrics: &Metrics,
) -> String {
    eventually("a reload", || !Arc::ptr_eq(before, &config.tls.config())).await;
    let text = metrics.render();
    assert!(
        text.contains("facade_tls_reloads_total{outcome=\"ok\"} 1\n"),
        "{text}"
    );
    text
}

#[tokio::test]
async fn a_changed_crl_file_is_reloaded_without_a_signal() {
    let pki = Pki::new();
    let config = pki.config();
    let before = config.tls.config();
    let metrics = Arc::new(Metrics::default());
    let _watching = watch_for_changes(&config, &metrics);

    pki.write_crl(&[&pki.devices[0]]);

    a_good_reload(&config, &before, &metrics).await;
}

#[tokio::test]
async fn a_crl_that_fails_to_load_on_reload_keeps_the_old_one() {
    let pki = Pki::new();
    let config = pki.config();
    let before = config.tls.config();
    let crls = config.tls.crls();
    pki.write(
        "devices.crl",
        "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n",
    );

    let error = config.tls.reload().unwrap_err().to_string();

    assert!(error.contains("tls.crls"), "{error}");
    assert!(error.contains("devices.crl"), "{error}");
    assert!(Arc::ptr_eq(&before, &config.tls.config()));
    assert_eq!(config.tls.crls(), crls);
}

#[tokio::test]
async fn a_reload_that_failed_is_counted_and_the_fixed_file_is_taken_next() {
    let pki = Pki::new();
    let config = pki.config();
    let before = config.tls.config();
    let metrics = Arc::new(Metrics::default());
    let _watching = watch_for_changes(&config, &metrics);

    // Half written: what a reload may meet while a CRL is being copied into place.
    pki.write("devices.crl", "-----BEGIN X509 CRL-----\n");
    eventually("a failed reload", || {
        metrics
            .render()
            .contains("facade_tls_reloads_total{outcome=\"failed\"} 1\n")
    })
    .await;
    assert!(Arc::ptr_eq(&before, &config.tls.config()));

    pki.write_crl(&[&pki.devices[0]]);
    let text = a_good_reload(&config, &before, &metrics).await;
    assert!(
        text.contains("facade_tls_reloads_total{outcome=\"failed\"} 1\n"),
        "{text}"
    );
}
