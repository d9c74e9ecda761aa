//! The facade under test, started in-process from a config file the fixture writes, on
//! 127.0.0.1 port 0, with a fresh PKI: a server CA for the facade's certificate, a device
//! CA with a good, an expired and a revoked device, and a foreign CA with a device of its own.
//!
//! It runs on the fixture's own tokio runtime, so tests stay plain `#[test]` functions that
//! also run `skopeo`. Dropping the fixture shuts the facade down (gracefully) and removes
//! every file.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshanics_facade::{Config, ConfiguredUpstreams, Running};
use meshanics_shared::devpki::{DevCa, Issued};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{FixtureError, io_err};

/// An upstream to approve in the facade's config.
#[derive(Debug, Clone)]
pub struct UpstreamEntry {
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP.
    pub plain_http: bool,
    /// Username and token.
    pub credentials: Option<(String, String)>,
    /// A private CA bundle (PEM file) for this upstream.
    pub ca_file: Option<PathBuf>,
    /// Hosts its redirects may lead to on any address (`storage_hosts`): tests list the
    /// loopback servers that play blob storage.
    pub storage_hosts: Vec<String>,
}

/// How to start the facade.
#[derive(Debug, Clone, Default)]
pub struct FacadeOptions {
    /// The approved upstreams.
    pub upstreams: Vec<UpstreamEntry>,
    /// Extra lines for the `[limits]` table.
    pub limits: Vec<String>,
    /// Files to put in the metadata folder (name, contents).
    pub metadata: Vec<(String, Vec<u8>)>,
    /// Run the connection store and the operator socket (with a fresh master key); the
    /// config's upstreams become the fallback.
    pub connections: bool,
    /// Extra lines for the `[cloud]` table.
    pub cloud: Vec<String>,
    /// The facade's base AWS credentials for ECR connections.
    pub aws: Option<meshanics_facade::cloud::ecr::AwsCredentials>,
    /// Extra lines for the `[cache]` table (`max_bytes = 1048576`); none writes no table, so
    /// the facade runs its default cache (under the state folder).
    pub cache: Vec<String>,
    /// Lines for a `[state]` table (the PostgreSQL backend); none writes no table.
    pub state: Vec<String>,
    /// With `connections`: this master key (hex) instead of a fresh one, so that replicas
    /// on one state database open each other's records.
    pub master_key_hex: Option<String>,
}

/// Which client certificate a client presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// A valid device of the device CA.
    Device,
    /// A device whose certificate expired.
    Expired,
    /// A device on the CRL.
    Revoked,
    /// A device of another CA.
    Foreign,
    /// No certificate at all.
    Nobody,
}

/// What a device got for one request: the status, the headers, the body bytes until it
/// ended, and whether it ended cleanly (not aborted).
#[derive(Debug)]
pub struct DeviceResponse {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: http::HeaderMap,
    /// The body, as far as it came.
    pub body: Vec<u8>,
    /// Whether the body ended cleanly rather than being cut off.
    pub clean: bool,
}

/// A running facade; shut down on drop.
#[derive(Debug)]
pub struct FacadeFixture {
    running: Option<Running>,
    runtime: tokio::runtime::Runtime,
    config: Config,
    device_addr: SocketAddr,
    operator_addr: SocketAddr,
    dir: tempfile::TempDir,
    server_ca_pem: String,
    devices: Vec<(Who, Issued)>,
    admin_socket: Option<PathBuf>,
    admin_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

// === impl UpstreamEntry ===

impl UpstreamEntry {
    /// A plain-HTTP upstream without credentials.
    pub fn anonymous(host: &str) -> Self {
        UpstreamEntry {
            host: host.to_owned(),
            plain_http: true,
            credentials: None,
            ca_file: None,
            storage_hosts: Vec::new(),
        }
    }

    /// An HTTPS upstream without credentials, trusted through `ca_file` when given (the public
    /// web roots otherwise).
    pub fn https(host: &str, ca_file: Option<PathBuf>) -> Self {
        UpstreamEntry {
            host: host.to_owned(),
            plain_http: false,
            credentials: None,
            ca_file,
            storage_hosts: Vec::new(),
        }
    }

    /// A plain-HTTP upstream with a username and token.
    pub fn with_credentials(host: &str, username: &str, token: &str) -> Self {
        UpstreamEntry {
            host: host.to_owned(),
            plain_http: true,
            credentials: Some((username.to_owned(), token.to_owned())),
            ca_file: None,
            storage_hosts: Vec::new(),
        }
    }

    /// This entry, with `host` (`HOST:PORT`) listed as its blob storage.
    pub fn storage(mut self, host: &str) -> Self {
        self.storage_hosts.push(host.to_owned());
        self
    }
}

// === impl FacadeFixture ===

impl FacadeFixture {
    /// A facade with `entry` as its one approved upstream, and default options else.
    pub fn with_upstream(entry: UpstreamEntry) -> Result<Self, FixtureError> {
        Self::start(&FacadeOptions {
            upstreams: vec![entry],
            ..FacadeOptions::default()
        })
    }

    /// A facade running the connection store and the operator socket, and default options
    /// else.
    pub fn with_connections() -> Result<Self, FixtureError> {
        Self::start(&FacadeOptions {
            connections: true,
            ..FacadeOptions::default()
        })
    }

    /// Writes the PKI and config, and starts the facade.
    pub fn start(options: &FacadeOptions) -> Result<Self, FixtureError> {
        let pki_err =
            |e: meshanics_shared::devpki::DevPkiError| FixtureError::Invalid(e.to_string());
        let dir = tempfile::tempdir().map_err(io_err("creating a temp dir", Path::new("/tmp")))?;
        let write = |name: &str, contents: &[u8]| -> Result<PathBuf, FixtureError> {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).map_err(io_err("writing", &path))?;
            Ok(path)
        };
        let mut server_ca = DevCa::new("facade server CA").map_err(pki_err)?;
        let server = server_ca
            .issue_server(&["localhost", "127.0.0.1"])
            .map_err(pki_err)?;
        let mut device_ca = DevCa::new("device CA").map_err(pki_err)?;
        let device = device_ca.issue_device("device-1").map_err(pki_err)?;
        let revoked = device_ca.issue_device("device-revoked").map_err(pki_err)?;
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let expired = device_ca
            .issue_device_valid("device-expired", now - 30 * day, now - day)
            .map_err(pki_err)?;
        let mut foreign_ca = DevCa::new("foreign CA").map_err(pki_err)?;
        let foreign = foreign_ca.issue_device("device-1").map_err(pki_err)?;
        let crl = device_ca.crl(&[&revoked]).map_err(pki_err)?;

        let cert = write("server.crt", server.cert_pem.as_bytes())?;
        let key = write("server.key", server.key_pem.as_bytes())?;
        let ca = write("device-ca.crt", device_ca.cert_pem().as_bytes())?;
        let crl = write("devices.crl", crl.as_bytes())?;
        let state = dir.path().join("state");
        let metadata = dir.path().join("metadata");
        for folder in [&state, &metadata] {
            std::fs::create_dir(folder).map_err(io_err("creating", folder))?;
        }
        for (name, contents) in &options.metadata {
            let path = metadata.join(name);
            std::fs::write(&path, contents).map_err(io_err("writing", &path))?;
        }

        let master_key = if options.connections {
            use std::os::unix::fs::PermissionsExt as _;
            let path = dir.path().join("master-key");
            let hex = match &options.master_key_hex {
                Some(hex) => hex.clone(),
                None => meshanics_facade::seal::MasterKey::generate_hex()
                    .map_err(|e| FixtureError::Invalid(e.to_string()))?,
            };
            std::fs::write(&path, hex).map_err(io_err("writing", &path))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err("protecting", &path))?;
            format!("master_key_file = \"{}\"\n", path.display())
        } else {
            String::new()
        };
        let mut toml = format!(
            "listen = \"127.0.0.1:0\"\noperator_listen = \"127.0.0.1:0\"\n{master_key}\
             state_dir = \"{}\"\nmetadata_dir = \"{}\"\n\n[tls]\ncertificate = \"{}\"\n\
             private_key = \"{}\"\ndevice_ca = \"{}\"\ncrls = [\"{}\"]\n\n[limits]\nshutdown_grace = 10\n",
            state.display(),
            metadata.display(),
            cert.display(),
            key.display(),
            ca.display(),
            crl.display()
        );
        for line in &options.limits {
            let _ = writeln!(toml, "{line}");
        }
        if !options.cache.is_empty() {
            let _ = writeln!(toml, "\n[cache]");
            for line in &options.cache {
                let _ = writeln!(toml, "{line}");
            }
        }
        if !options.state.is_empty() {
            let _ = writeln!(toml, "\n[state]");
            for line in &options.state {
                let _ = writeln!(toml, "{line}");
            }
        }
        if !options.cloud.is_empty() {
            let _ = writeln!(toml, "\n[cloud]");
            for line in &options.cloud {
                let _ = writeln!(toml, "{line}");
            }
        }
        for (i, upstream) in options.upstreams.iter().enumerate() {
            let _ = write!(
                toml,
                "\n[[upstreams]]\nhost = \"{}\"\nplain_http = {}\n",
                upstream.host, upstream.plain_http
            );
            if let Some(ca_file) = &upstream.ca_file {
                let _ = writeln!(toml, "ca_file = \"{}\"", ca_file.display());
            }
            if !upstream.storage_hosts.is_empty() {
                let hosts: Vec<String> = upstream
                    .storage_hosts
                    .iter()
                    .map(|h| format!("\"{h}\""))
                    .collect();
                let _ = writeln!(toml, "storage_hosts = [{}]", hosts.join(", "));
            }
            if let Some((username, token)) = &upstream.credentials {
                let token_file = write(&format!("upstream-{i}.token"), token.as_bytes())?;
                let _ = write!(
                    toml,
                    "username = \"{username}\"\ntoken_file = \"{}\"\n",
                    token_file.display()
                );
            }
        }
        let config_path = write("facade.toml", toml.as_bytes())?;
        let config =
            Config::load(&config_path).map_err(|e| FixtureError::Invalid(e.to_string()))?;
        let upstreams = ConfiguredUpstreams::new(
            &config.upstreams,
            config.limits.upstream(),
            &config.own_listeners(),
        )
        .map_err(|e| FixtureError::Invalid(e.to_string()))?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(io_err("starting a runtime for", Path::new("facade")))?;
        let configured: Arc<dyn meshanics_facade::ApprovedUpstreams> = Arc::new(upstreams);
        let mut admin_socket = None;
        let mut admin_stop = None;
        let mut metadata = None;
        let upstreams: Arc<dyn meshanics_facade::ApprovedUpstreams> = if options.connections {
            let key =
                meshanics_facade::seal::MasterKey::load(config.master_key_file.as_deref(), None)
                    .map_err(|e| FixtureError::Invalid(e.to_string()))?;
            let connections = meshanics_facade::connections::Connections::open(
                &config,
                key,
                options.aws.clone(),
                Some(configured),
            )
            .map_err(|e| FixtureError::Invalid(e.to_string()))?;
            let socket = state.join(meshanics_facade::connections::ADMIN_SOCKET);
            let listener = {
                let _entered = runtime.enter();
                meshanics_facade::admin::bind(&socket).map_err(io_err("binding", &socket))?
            };
            // `/meta/` serves what the operator API publishes into.
            let published = Arc::new(meshanics_facade::publish::Metadata::new(
                &config,
                Some(connections.store.clone()),
            ));
            let admin_state = Arc::new(meshanics_facade::admin::AdminState {
                store: connections.store.clone(),
                browser: connections.browser.clone(),
                metadata: published.clone(),
            });
            metadata = Some(published);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            runtime.spawn(meshanics_facade::admin::serve(
                listener,
                admin_state,
                async move {
                    let _ = stopped.await;
                },
            ));
            admin_socket = Some(socket);
            admin_stop = Some(stop);
            connections.upstreams
        } else {
            configured
        };
        let metadata = metadata
            .unwrap_or_else(|| Arc::new(meshanics_facade::publish::Metadata::folder(&config)));
        let running = runtime
            .block_on(meshanics_facade::start_with(&config, upstreams, metadata))
            .map_err(|e| FixtureError::Invalid(e.to_string()))?;
        Ok(FacadeFixture {
            device_addr: running.device_addr(),
            operator_addr: running.operator_addr(),
            running: Some(running),
            runtime,
            config,
            dir,
            server_ca_pem: server_ca.cert_pem(),
            devices: vec![
                (Who::Device, device),
                (Who::Expired, expired),
                (Who::Revoked, revoked),
                (Who::Foreign, foreign),
            ],
            admin_socket,
            admin_stop,
        })
    }

    /// The operator socket, when started with connections.
    pub fn admin_socket(&self) -> Option<&Path> {
        self.admin_socket.as_deref()
    }

    /// The facade's state folder.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `127.0.0.1:PORT` of the device listener.
    pub fn host(&self) -> String {
        self.device_addr.to_string()
    }

    /// `https://127.0.0.1:PORT{path}` on the device listener.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.device_addr)
    }

    /// `http://127.0.0.1:PORT{path}` on the operator listener.
    pub fn operator_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.operator_addr)
    }

    /// The metrics text, straight from the facade.
    pub fn metrics(&self) -> String {
        self.running
            .as_ref()
            .map(|r| r.metrics().render())
            .unwrap_or_default()
    }

    /// Runs a future on the facade's runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// A folder for `skopeo --src-cert-dir`: the server CA as `ca.crt`, and the client
    /// certificate of `who` as `client.cert` and `client.key`.
    pub fn cert_dir(&self, who: Who) -> Result<PathBuf, FixtureError> {
        let dir = self.dir.path().join(format!("certs-{who:?}"));
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, &self.server_ca_pem).map_err(io_err("writing", &ca))?;
        if let Some(issued) = self.issued(who) {
            let cert = dir.join("client.cert");
            std::fs::write(&cert, &issued.cert_pem).map_err(io_err("writing", &cert))?;
            let key = dir.join("client.key");
            std::fs::write(&key, &issued.key_pem).map_err(io_err("writing", &key))?;
        }
        Ok(dir)
    }

    /// An HTTPS client presenting `who`'s certificate; HTTP/2 when `http2`, else HTTP/1.1.
    pub fn client(&self, who: Who, http2: bool) -> Result<reqwest::Client, FixtureError> {
        let invalid = |e: &dyn std::fmt::Display| FixtureError::Invalid(e.to_string());
        let mut tls = self.tls_config(who)?;
        if http2 {
            tls.alpn_protocols = vec![b"h2".to_vec()];
        }
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        if !http2 {
            builder = builder.http1_only();
        }
        builder.build().map_err(|e| invalid(&e))
    }

    /// `method` on `path` of the device listener with `headers`, as the good device (over
    /// HTTP/2 when `http2`, else HTTP/1.1); the body is read until it ends or breaks off.
    pub fn device_request(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        http2: bool,
    ) -> Result<DeviceResponse, FixtureError> {
        let client = self.client(Who::Device, http2)?;
        self.block_on(send(&client, method, self.url(path), headers))
    }

    /// The rustls client configuration of `who` (ALPN `http/1.1`), for tests that speak TLS
    /// themselves.
    pub fn tls_config(&self, who: Who) -> Result<rustls::ClientConfig, FixtureError> {
        let invalid = |e: &dyn std::fmt::Display| FixtureError::Invalid(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.server_ca_pem.as_bytes())
            .map_err(|e| invalid(&e))?;
        roots.add(ca).map_err(|e| invalid(&e))?;
        let identity = match self.issued(who) {
            Some(issued) => Some((
                vec![
                    CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
                        .map_err(|e| invalid(&e))?,
                ],
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
                    .map_err(|e| invalid(&e))?,
            )),
            None => None,
        };
        let mut tls =
            meshanics_shared::tls::client_config_from(roots, identity).map_err(|e| invalid(&e))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tls)
    }

    /// The folder the facade serves `GET /meta/<file>` from (read at every request, so a
    /// test may publish new metadata while it runs).
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.path().join("metadata")
    }

    /// The facade's config file (for running the real binary on the same PKI and upstreams:
    /// see [`crate::facade_process`]).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("facade.toml")
    }

    /// The device listener's address.
    pub fn device_addr(&self) -> SocketAddr {
        self.device_addr
    }

    /// A plain-HTTP client (for the operator listener); its TLS side, unused, is built on the
    /// workspace's ring provider, as reqwest has no default provider here.
    pub fn plain_client(&self) -> Result<reqwest::Client, FixtureError> {
        let invalid = |e: &dyn std::fmt::Display| FixtureError::Invalid(e.to_string());
        let tls = meshanics_shared::tls::client_config_from(rustls::RootCertStore::empty(), None)
            .map_err(|e| invalid(&e))?;
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .build()
            .map_err(|e| invalid(&e))
    }

    /// Shuts the facade down gracefully and waits for it.
    pub fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            self.runtime.block_on(running.shutdown());
        }
    }

    /// Stops the facade abruptly, as a crash or a SIGKILL would (its runtime is shut down:
    /// every connection is cut mid-stream, nothing drains), then starts it again on the
    /// same device port with the same configuration and PKI (the upstreams of the config
    /// file). The operator listener gets a new port.
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        let old = std::mem::replace(&mut self.runtime, facade_runtime()?);
        drop(self.running.take());
        // Shutting a runtime down drops its tasks without polling them again (no draining);
        // the wait is for its threads to finish dropping them, which closes the listener.
        old.shutdown_timeout(Duration::from_secs(5));
        let mut config = self.config.clone();
        config.listen = self.device_addr;
        config.operator_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let upstreams = ConfiguredUpstreams::new(
            &config.upstreams,
            config.limits.upstream(),
            &config.own_listeners(),
        )
        .map_err(|e| FixtureError::Invalid(e.to_string()))?;
        let upstreams = Arc::new(upstreams);
        let mut tries = 0;
        let running = loop {
            // The old listener's socket may linger a moment after its task is dropped.
            match self
                .runtime
                .block_on(meshanics_facade::start(&config, upstreams.clone()))
            {
                Ok(running) => break running,
                Err(_) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(FixtureError::Invalid(e.to_string())),
            }
        };
        self.operator_addr = running.operator_addr();
        self.running = Some(running);
        Ok(())
    }

    /// Starts a graceful shutdown on the runtime and returns at once.
    pub fn begin_shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            self.runtime.spawn(running.shutdown());
        }
    }

    /// `skopeo copy --all --preserve-digests` of `repository@digest` (a repository the facade
    /// serves: [`device_repository`]) through the facade with `who`'s certificate, into the OCI
    /// layout `out` as tag `pulled`. Returns skopeo's output.
    pub fn skopeo_pull(
        &self,
        who: Who,
        repository: &str,
        digest: &str,
        out: &Path,
    ) -> Result<String, FixtureError> {
        let cert_dir = self.cert_dir(who)?;
        let cert_dir = cert_dir.display().to_string();
        crate::skopeo::run(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-cert-dir",
            &cert_dir,
            &format!("docker://{}/{repository}@{digest}", self.host()),
            &format!("oci:{}:pulled", out.display()),
        ])
    }

    fn issued(&self, who: Who) -> Option<&Issued> {
        self.devices
            .iter()
            .find(|(w, _)| *w == who)
            .map(|(_, issued)| issued)
    }
}

/// The device listener's path of `kind` (`blobs` or `manifests`) `reference` in
/// `repository` of upstream `host`: `/v2/127.0.0.1_PORT/<repository>/<kind>/<reference>`.
pub fn device_path(host: &str, repository: &str, kind: &str, reference: &str) -> String {
    format!(
        "/v2/{}/{kind}/{reference}",
        device_repository(host, repository)
    )
}

/// A request to connect `registry` over plain HTTP (no CA, GCP key or AWS role) through
/// `provider` with `credentials` (username, token), following redirects to `storage_hosts`;
/// connected by `test`.
pub fn plain_http_connection(
    registry: String,
    provider: meshanics_operator_api::ProviderKind,
    credentials: Option<(&str, &str)>,
    storage_hosts: Vec<String>,
) -> meshanics_operator_api::AddRegistry {
    meshanics_operator_api::AddRegistry {
        registry,
        provider,
        username: credentials.map(|(username, _)| username.to_owned()),
        token: credentials.map(|(_, token)| token.to_owned()),
        gcp_key_json: None,
        role_arn: None,
        external_id: None,
        region: None,
        plain_http: true,
        ca_pem: None,
        storage_hosts,
        connected_by: "test".into(),
    }
}

/// The name devices pull `repository` of upstream `host` (`127.0.0.1:PORT`) by:
/// `127.0.0.1_PORT/<repository>`.
pub fn device_repository(host: &str, repository: &str) -> String {
    format!("{}/{repository}", host.replace(':', "_"))
}

fn facade_runtime() -> Result<tokio::runtime::Runtime, FixtureError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("starting a runtime for", Path::new("facade")))
}

impl Drop for FacadeFixture {
    fn drop(&mut self) {
        if let Some(stop) = self.admin_stop.take() {
            let _ = stop.send(());
        }
        self.shutdown();
    }
}

/// `method` on `url` with `headers` through `client`, the body read until it ends or breaks
/// off (a reset is `clean: false`, not an error).
pub async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    headers: &[(&str, &str)],
) -> Result<DeviceResponse, FixtureError> {
    let mut request = client.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| FixtureError::Invalid(e.to_string()))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    let clean = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    Ok(DeviceResponse {
        status,
        headers,
        body,
        clean,
    })
}
