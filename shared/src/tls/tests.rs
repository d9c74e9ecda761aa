//! Mutual TLS end to end over an in-memory pipe: the server config refuses every client that a
//! facade must refuse.

use std::fs;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::devpki::{DevCa, Issued};

struct Pki {
    dir: tempfile::TempDir,
    ca: DevCa,
    server: Issued,
}

impl Pki {
    fn new() -> Self {
        let mut ca = DevCa::new("Test Device CA").unwrap();
        let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir, ca, server };
        pki.write("ca.pem", &pki.ca.cert_pem());
        pki.write("server.pem", &pki.server.cert_pem);
        pki.write("server.key", &pki.server.key_pem);
        pki
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, contents).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_files(&self, crls: Vec<PathBuf>) -> ServerFiles {
        ServerFiles {
            certificate: self.path("server.pem"),
            private_key: self.path("server.key"),
            client_ca: self.path("ca.pem"),
            crls,
        }
    }

    fn client(&self, device: Option<&Issued>) -> ClientConfig {
        let identity = device.map(|d| {
            let cert = self.write("device.pem", &d.cert_pem);
            let key = self.write("device.key", &d.key_pem);
            (cert, key)
        });
        client_config(
            &self.path("ca.pem"),
            identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .unwrap()
    }
}

/// Runs one handshake plus a byte each way; returns the server's view of the outcome.
async fn handshake(server: ServerConfig, client: ClientConfig) -> Result<(), String> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let server_task = tokio::spawn(async move {
        let mut tls = acceptor
            .accept(server_io)
            .await
            .map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        tls.write_all(&byte).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    });
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let client_result = async {
        let mut tls = connector
            .connect(name, client_io)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    }
    .await;
    let server_result = server_task.await.unwrap();
    server_result.and(client_result)
}

#[tokio::test]
async fn accepts_a_device_certificate_from_the_device_ca() {
    let mut pki = Pki::new();
    let device = pki.ca.issue_device("device-0001").unwrap();
    let server = server_config(&pki.server_files(vec![])).unwrap();
    assert_eq!(
        server.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    handshake(server, pki.client(Some(&device))).await.unwrap();
}

#[tokio::test]
async fn refuses_a_client_without_a_certificate() {
    let pki = Pki::new();
    let server = server_config(&pki.server_files(vec![])).unwrap();
    let err = handshake(server, pki.client(None)).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn refuses_a_certificate_from_another_ca() {
    let pki = Pki::new();
    let mut other = DevCa::new("Someone Else's CA").unwrap();
    let intruder = other.issue_device("device-0001").unwrap();
    let server = server_config(&pki.server_files(vec![])).unwrap();
    let err = handshake(server, pki.client(Some(&intruder)))
        .await
        .unwrap_err();
    assert!(
        err.to_lowercase().contains("issuer") || err.contains("UnknownIssuer"),
        "{err}"
    );
}

#[tokio::test]
async fn refuses_an_expired_device_certificate() {
    let mut pki = Pki::new();
    let now = SystemTime::now();
    let expired = pki
        .ca
        .issue_device_valid(
            "device-old",
            now - Duration::from_secs(30 * 86_400),
            now - Duration::from_secs(86_400),
        )
        .unwrap();
    let server = server_config(&pki.server_files(vec![])).unwrap();
    let err = handshake(server, pki.client(Some(&expired)))
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
}

#[tokio::test]
async fn refuses_a_revoked_device_certificate_and_accepts_others() {
    let mut pki = Pki::new();
    let revoked = pki.ca.issue_device("device-stolen").unwrap();
    let good = pki.ca.issue_device("device-good").unwrap();
    let crl = pki.write("devices.crl", &pki.ca.crl(&[&revoked]).unwrap());
    let files = pki.server_files(vec![crl]);
    let err = handshake(server_config(&files).unwrap(), pki.client(Some(&revoked)))
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("revoked"), "{err}");
    handshake(server_config(&files).unwrap(), pki.client(Some(&good)))
        .await
        .unwrap();
}

#[test]
fn errors_name_the_file_that_is_missing() {
    let pki = Pki::new();
    let mut files = pki.server_files(vec![]);
    files.private_key = pki.path("nope.key");
    let err = server_config(&files).unwrap_err().to_string();
    assert!(err.contains("nope.key"), "{err}");
}

#[test]
fn errors_say_when_a_file_holds_no_certificate() {
    let pki = Pki::new();
    let empty = pki.write("empty.pem", "not pem at all\n");
    let err = load_certificates(&empty).unwrap_err();
    assert!(matches!(err, TlsError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("empty.pem"));
    let err = load_private_key(&pki.path("server.pem")).unwrap_err();
    assert!(matches!(err, TlsError::Missing { .. }), "{err}");
}

#[test]
fn refuses_a_key_that_does_not_match_the_certificate() {
    let mut pki = Pki::new();
    let other = pki.ca.issue_device("x").unwrap();
    pki.write("server.key", &other.key_pem);
    let err = server_config(&pki.server_files(vec![])).unwrap_err();
    assert!(
        matches!(err, TlsError::Config { side: "server", .. }),
        "{err}"
    );
}

#[test]
fn reads_der_and_pem_crls() {
    let mut pki = Pki::new();
    let revoked = pki.ca.issue_device("d").unwrap();
    let pem_text = pki.ca.crl(&[&revoked]).unwrap();
    let pem_path = pki.write("a.crl", &pem_text);
    let der = CertificateRevocationListDer::from_pem_slice(pem_text.as_bytes()).unwrap();
    let der_path = pki.path("b.crl");
    fs::write(&der_path, der.as_ref()).unwrap();
    let crls = load_crls(&[pem_path, der_path]).unwrap();
    assert_eq!(crls.len(), 2);
    assert_eq!(crls[0].as_ref(), crls[1].as_ref());
}

#[test]
fn names_the_file_of_a_crl_that_does_not_parse() {
    let pki = Pki::new();
    let good = pki.write("good.crl", &pki.ca.crl(&[]).unwrap());
    // DER, but a SEQUENCE holding one INTEGER: no revocation list.
    let bad = pki.path("bad.crl");
    fs::write(&bad, [0x30, 0x03, 0x02, 0x01, 0x01]).unwrap();

    let error = load_crls(&[good, bad.clone()]).unwrap_err();

    assert!(
        matches!(&error, TlsError::BadCrl { path, index: 1, .. } if *path == bad),
        "{error:?}"
    );
    assert!(error.to_string().contains("bad.crl"), "{error}");
}
