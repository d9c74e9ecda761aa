//! The distribution registry behind mutual TLS, standing in for the facade in agent tests.
//!
//! The facade serves the OCI distribution API by digest under `<upstream path form>/<repo>`
//! and requires a device certificate; the real registry does both when images are pushed
//! under such names and it is configured with client CAs. [`TlsRegistry`] makes a PKI with
//! `devpki` (a CA, a server certificate for 127.0.0.1, a device certificate), starts the
//! registry with it, and writes the certificate folder skopeo needs to push.

use std::path::{Path, PathBuf};

use meshanics_agent::pull::PullTarget;
use meshanics_shared::devpki::DevCa;
use meshanics_shared::{Descriptor, Repository, tls};

use crate::oci_layout::{BuiltImage, SampleImage};
use crate::registry::{Options, RegistryServer};
use crate::{FixtureError, io_err};

/// A registry that requires client certificates, and the files to talk to it.
#[derive(Debug)]
pub struct TlsRegistry {
    /// The running registry (HTTPS).
    pub registry: RegistryServer,
    /// The CA that signed the server and the device (PEM).
    pub ca: PathBuf,
    /// The device certificate (PEM).
    pub device_cert: PathBuf,
    /// The device key (PEM).
    pub device_key: PathBuf,
    /// A containers-certs.d folder (`ca.crt`, `client.cert`, `client.key`) for skopeo.
    pub cert_dir: PathBuf,
    dir: tempfile::TempDir,
}

// === impl TlsRegistry ===

impl TlsRegistry {
    /// Makes the PKI and starts the registry.
    pub fn start() -> Result<Self, FixtureError> {
        let dir = tempfile::tempdir().map_err(io_err("creating a temp dir", Path::new("/tmp")))?;
        let pki = |e: meshanics_shared::devpki::DevPkiError| FixtureError::Invalid(e.to_string());
        let mut ca = DevCa::new("meshanics test CA").map_err(pki)?;
        let server = ca.issue_server(&["localhost", "127.0.0.1"]).map_err(pki)?;
        let device = ca.issue_device("device-0001").map_err(pki)?;
        let write = |name: &str, contents: &str| -> Result<PathBuf, FixtureError> {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).map_err(io_err("writing", &path))?;
            Ok(path)
        };
        let ca_path = write("ca.pem", &ca.cert_pem())?;
        let server_cert = write("server.pem", &server.cert_pem)?;
        let server_key = write("server.key", &server.key_pem)?;
        let device_cert = write("device.pem", &device.cert_pem)?;
        let device_key = write("device.key", &device.key_pem)?;
        let cert_dir = dir.path().join("certs.d");
        std::fs::create_dir(&cert_dir).map_err(io_err("creating", &cert_dir))?;
        for (name, contents) in [
            ("ca.crt", ca.cert_pem()),
            ("client.cert", device.cert_pem.clone()),
            ("client.key", device.key_pem),
        ] {
            let path = cert_dir.join(name);
            std::fs::write(&path, contents).map_err(io_err("writing", &path))?;
        }
        let registry = RegistryServer::start(&Options {
            tls: Some((server_cert, server_key)),
            client_cas: vec![ca_path.clone()],
            ..Options::default()
        })?;
        Ok(TlsRegistry {
            registry,
            ca: ca_path,
            device_cert,
            device_key,
            cert_dir,
            dir,
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.registry.base_url()
    }

    /// The repository name the facade would serve `repository` of this registry under:
    /// `127.0.0.1_PORT/<repository>`.
    pub fn facade_repository(&self, repository: &str) -> String {
        crate::facade::device_repository(&self.registry.host(), repository)
    }

    /// Pushes every platform of an OCI layout under the facade-style name of `repository`,
    /// presenting the device certificate.
    pub fn push(&self, layout: &Path, tag: &str, repository: &str) -> Result<(), FixtureError> {
        let src = format!("oci:{}:{tag}", layout.display());
        let dst = format!(
            "docker://{}/{}:{tag}",
            self.registry.host(),
            self.facade_repository(repository)
        );
        let cert_dir = self.cert_dir.display().to_string();
        crate::skopeo::run(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-cert-dir",
            &cert_dir,
            &src,
            &dst,
        ])
        .map(|_| ())
    }

    /// The rustls configuration of the device: trusts the CA, presents the device certificate.
    pub fn device_tls(&self) -> Result<rustls::ClientConfig, FixtureError> {
        tls::client_config(&self.ca, Some((&self.device_cert, &self.device_key)))
            .map_err(|e| FixtureError::Invalid(e.to_string()))
    }

    /// Writes `image` as an OCI layout in `dir/<tag>` and pushes it as `tag` of `repository`.
    pub fn push_image(
        &self,
        image: &SampleImage,
        dir: &Path,
        tag: &str,
        repository: &str,
    ) -> Result<BuiltImage, FixtureError> {
        let built = image.write_layout(&dir.join(tag), tag)?;
        self.push(&built.dir, tag, repository)?;
        Ok(built)
    }

    /// What the agent pulls as target `name`: `descriptor` in `repository` of this registry.
    pub fn pull_target(
        &self,
        name: &str,
        repository: &str,
        descriptor: &Descriptor,
    ) -> Result<PullTarget, FixtureError> {
        Ok(PullTarget {
            name: name.to_owned(),
            repository: Repository::parse(&self.facade_repository(repository))
                .map_err(|e| FixtureError::Invalid(e.to_string()))?,
            digest: descriptor.digest.clone(),
            size: descriptor.size,
            media_type: descriptor.media_type.clone(),
            rollout: None,
            apply: None,
        })
    }

    /// An agent configuration (TOML) for the device, talking to `url` (this registry, or a
    /// proxy in front of it), keeping its state in `state`: platform `linux/amd64`, two
    /// downloads at once, `agent_keys` added to `[agent]`, `attempts` tries per request.
    pub fn agent_config(&self, url: &str, state: &Path, agent_keys: &str, attempts: u32) -> String {
        format!(
            r#"
[facade]
url = "{url}"
ca = "{ca}"
[device]
certificate = "{cert}"
key = "{key}"
class = "test-rig"
platform = "linux/amd64"
[trust]
anchor = "{ca}"
[agent]
state_dir = "{state}"
concurrency = 2
{agent_keys}
[network]
attempts = {attempts}
"#,
            ca = self.ca.display(),
            cert = self.device_cert.display(),
            key = self.device_key.display(),
            state = state.display(),
        )
    }

    /// The folder holding the PKI files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
